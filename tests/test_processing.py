"""MobileViTImageProcessor and the post-processing against transformers' PIL processor.

The reference is ``transformers.MobileViTImageProcessorPil`` (the PIL/NumPy backend). Every case
runs both processors on the same input with the same settings and requires the same shape and
dtype and values within 1e-6 (in practice they are equal: the same Pillow calls in the same order).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import quick, require
from PIL import Image

from numpy_mvit2 import CheckpointError, MobileViTImageProcessor
from numpy_mvit2.processing import (
    ImageLoadError,
    center_crop,
    load_image,
    open_image,
    post_process_image_classification,
    post_process_semantic_segmentation,
    voc_palette,
)

transformers = require("transformers")
torch = require("torch")
cbook = require("matplotlib.cbook")

transformers.logging.set_verbosity_error()
TOLERANCE = 1e-6
# the apple/mobilevitv2 imagenet checkpoints' preprocessor_config.json
APPLE = {"size": {"shortest_edge": 288}, "crop_size": {"height": 256, "width": 256}, "resample": 2}


def reference(**settings):
    return transformers.MobileViTImageProcessorPil(**settings)


def ours(**settings):
    return MobileViTImageProcessor(**settings)


def assert_same(a, b, tol=TOLERANCE):
    """``a`` from transformers (a BatchFeature or an array), ``b`` ours."""
    a = np.asarray(a)
    b = np.asarray(b)
    assert a.shape == b.shape, (a.shape, b.shape)
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    if a.size:
        assert np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))) <= tol


def compare(reference_input, our_input=None, *, reference_kwargs=None, settings=None, **call_kwargs):
    settings = APPLE if settings is None else settings
    our_input = reference_input if our_input is None else our_input
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = reference(**settings)(reference_input, return_tensors="np", **{**call_kwargs, **(reference_kwargs or {})})
    mine = ours(**settings)(our_input, return_tensors="np", **call_kwargs)
    assert_same(theirs["pixel_values"], mine["pixel_values"])
    return mine["pixel_values"]


# --------------------------------------------------------------------------------------------
# Test images: a real photograph and awkward variants of it
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def photo_path():
    return cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)


@pytest.fixture(scope="module")
def photo(photo_path):
    image = Image.open(photo_path)
    image.load()
    assert image.mode == "RGB" and image.size == (512, 600)
    return image


def awkward_images(photo: Image.Image) -> dict[str, Image.Image]:
    """Modes and sizes that trip processors up, all made from the photograph."""
    small = photo.resize((160, 187))
    grey = np.asarray(small.convert("L"))
    rgba = small.convert("RGBA")
    alpha = np.asarray(rgba).copy()
    alpha[..., 3] = np.linspace(0, 255, alpha.shape[1], dtype=np.uint8)[None, :]  # a horizontal fade
    palette_transparent = small.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    palette_transparent.info["transparency"] = 0
    return {
        "grayscale": small.convert("L"),
        "palette": small.convert("P", palette=Image.Palette.ADAPTIVE, colors=64),
        "palette_transparent": palette_transparent,
        "rgba": Image.fromarray(alpha, "RGBA"),
        "la": Image.fromarray(alpha, "RGBA").convert("LA"),
        "cmyk": small.convert("CMYK"),
        "bilevel": small.convert("1"),
        "int32": small.convert("I"),
        "16bit": Image.fromarray(grey.astype(np.uint16) * 257),  # mode I;16, values to 65535
        "16bit_low": Image.fromarray(grey.astype(np.uint16)),  # I;16 whose values fit in 8 bits
        "tiny": photo.resize((3, 5)),
        "one_pixel": photo.resize((1, 1)),
        "very_wide": photo.resize((1500, 9)),
        "very_tall": photo.resize((7, 900)),
    }


@pytest.fixture(scope="module")
def awkward(photo):
    return awkward_images(photo)


@pytest.fixture(scope="module")
def exif_rotated(photo, tmp_path_factory):
    """The photo stored sideways with EXIF orientation 6 (turn 90 degrees clockwise to view)."""
    path = tmp_path_factory.mktemp("exif") / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    photo.transpose(Image.Transpose.ROTATE_90).save(path, exif=exif, quality=95)
    return path


# --------------------------------------------------------------------------------------------
# Parity: the real photograph, each input kind
# --------------------------------------------------------------------------------------------


def test_photo_path_pil_and_arrays(photo_path, photo):
    out = compare(photo_path)  # a path (str): opened, EXIF-transposed and converted by both
    assert out.shape == (1, 3, 256, 256) and out.dtype == np.float32
    compare(photo)
    array = np.asarray(photo)
    compare(array)  # HWC uint8
    compare(array.transpose(2, 0, 1).astype(np.float32))  # CHW float, 0..255
    compare(array.transpose(2, 0, 1).astype(np.float32) / 255)  # CHW float in [0, 1]: rescaled twice, as transformers
    compare(np.stack([array, array[::-1]]))  # a 4-D batch
    batch = compare([photo, array, photo_path])  # a list of mixed kinds
    assert batch.shape == (3, 3, 256, 256)
    assert np.array_equal(batch[0], batch[1]) and np.array_equal(batch[0], batch[2])


def test_pathlike_is_a_path(photo_path):
    mine = ours(**APPLE)(Path(photo_path), return_tensors="np")["pixel_values"]
    assert_same(ours(**APPLE)(photo_path, return_tensors="np")["pixel_values"], mine)


def test_values_are_bgr_in_unit_range(photo):
    out = ours(**APPLE)(photo, return_tensors="np")["pixel_values"][0]
    rgb = ours(**APPLE, do_flip_channel_order=False)(photo, return_tensors="np")["pixel_values"][0]
    assert np.array_equal(out, rgb[::-1])
    assert 0.0 <= out.min() and out.max() <= 1.0


def test_list_without_return_tensors(photo):
    out = ours(**APPLE)([photo, photo.resize((300, 200))], do_center_crop=False)["pixel_values"]
    assert isinstance(out, list) and [o.shape for o in out] == [(3, 337, 288), (3, 288, 432)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = reference(**APPLE)([photo, photo.resize((300, 200))], do_center_crop=False)["pixel_values"]
    for a, b in zip(theirs, out):
        assert_same(a, b)


# --------------------------------------------------------------------------------------------
# Parity: settings
# --------------------------------------------------------------------------------------------

SETTINGS = {
    "apple": APPLE,
    "defaults": {},
    "height_width": {**APPLE, "size": {"height": 200, "width": 330}},
    "size_pair": {**APPLE, "size": (123, 77)},
    "size_int": {**APPLE, "size": 300, "crop_size": 224},
    "shortest_longest": {**APPLE, "size": {"shortest_edge": 288, "longest_edge": 320}},
    "no_center_crop": {**APPLE, "do_center_crop": False},
    "no_flip": {**APPLE, "do_flip_channel_order": False},
    "no_resize": {**APPLE, "do_resize": False},
    "no_rescale": {**APPLE, "do_rescale": False},
    "rescale_factor": {**APPLE, "rescale_factor": 0.5},
    "crop_larger_than_image": {**APPLE, "size": {"shortest_edge": 100}, "crop_size": {"height": 257, "width": 131}},
    "odd_crop": {**APPLE, "crop_size": {"height": 255, "width": 101}},
    "nearest": {**APPLE, "resample": 0},
    "bicubic": {**APPLE, "resample": 3},
    "lanczos": {**APPLE, "resample": 1},
    "box": {**APPLE, "resample": 4},
    "hamming": {**APPLE, "resample": 5},
    "voc": {"size": {"shortest_edge": 544}, "crop_size": {"height": 512, "width": 512}, "resample": 2},
}


@pytest.mark.parametrize("name", SETTINGS)
def test_settings(name, photo):
    compare(photo, settings=SETTINGS[name])
    compare(np.asarray(photo).transpose(2, 0, 1).astype(np.float32) / 255, settings=SETTINGS[name])


def test_call_overrides(photo):
    compare(photo, do_center_crop=False, size={"height": 64, "width": 48})
    compare(photo, do_flip_channel_order=False, crop_size={"height": 31, "width": 17}, resample=0)
    with pytest.raises(TypeError, match="unexpected"):
        ours()(photo, do_normalise=True)


# --------------------------------------------------------------------------------------------
# Parity: awkward images
# --------------------------------------------------------------------------------------------

NOT_RGB = ("grayscale", "palette", "palette_transparent", "rgba", "la", "cmyk", "bilevel", "int32", "16bit", "16bit_low")


@pytest.mark.parametrize("name", NOT_RGB)
def test_non_rgb_pil_images_are_converted_as_transformers_converts_them(name, awkward):
    image = awkward[name]
    # do_convert_rgb=True: transformers' convert_to_rgb (alpha composited onto white)
    out = compare(image, do_convert_rgb=True)
    assert out.shape == (1, 3, 256, 256)
    # our default (None) converts exactly the images transformers' default leaves without 3 channels
    mine = ours(**APPLE)(image, return_tensors="np")["pixel_values"]
    assert_same(out, mine)


@pytest.mark.parametrize("name", NOT_RGB)
def test_non_rgb_pil_images_unconverted_as_transformers_default(name, awkward):
    image = awkward[name]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = reference(**APPLE)(image, return_tensors="np")["pixel_values"]
    except ValueError:  # 16-bit values over 255: transformers refuses them, and so do we
        with pytest.raises(ValueError):
            ours(**APPLE)(image, return_tensors="np", do_convert_rgb=False)
        return
    mine = ours(**APPLE)(image, return_tensors="np", do_convert_rgb=False)["pixel_values"]
    assert_same(theirs, mine)
    assert mine.shape[1] in (1, 2, 4)


@pytest.mark.parametrize("name", quick(["tiny", "one_pixel", "very_wide", "very_tall"], 0, 1))
def test_odd_sizes(name, awkward):
    image = awkward[name]
    compare(image)
    compare(image, settings={**APPLE, "do_resize": False})  # smaller than the crop: zero padding
    compare(image, settings={**APPLE, "do_center_crop": False})
    compare(np.asarray(image), settings=SETTINGS["height_width"], input_data_format="channels_last")


@pytest.mark.parametrize("name", quick(NOT_RGB + ("tiny", "very_wide"), *range(len(NOT_RGB) + 1)))  # very_wide: slow
def test_awkward_files_by_path(name, awkward, tmp_path):
    """Saved to a file and passed by path: both processors open, EXIF-transpose and convert("RGB")."""
    image = awkward[name]
    suffix = {"cmyk": ".tif", "int32": ".tif"}.get(name, ".png")
    path = tmp_path / f"{name}{suffix}"
    image.save(path)
    out = compare(str(path))
    assert out.shape == (1, 3, 256, 256)


def test_sixteen_bit_png_file(tmp_path, photo):
    grey = np.asarray(photo.convert("L")).astype(np.uint16) * 257
    path = tmp_path / "sixteen.png"
    Image.fromarray(grey).save(path)
    assert Image.open(path).mode.startswith("I")
    compare(str(path))
    compare(Image.open(path), do_convert_rgb=True)


def test_exif_rotated(exif_rotated, photo):
    # by path, both turn it upright (transformers' load_image does exif_transpose)
    upright = compare(str(exif_rotated))
    # a PIL image is taken as it is, by both: still sideways
    sideways = compare(Image.open(exif_rotated))
    assert not np.allclose(upright, sideways)
    # upright equals the unrotated photo, up to JPEG loss
    direct = ours(**APPLE)(photo, return_tensors="np")["pixel_values"]
    assert np.abs(upright - direct).mean() < 0.02
    assert load_image(exif_rotated).size == photo.size
    assert open_image(exif_rotated).size == photo.size[::-1]


def test_arrays_of_one_and_four_channels(awkward):
    grey = np.asarray(awkward["grayscale"])[..., None]  # HW1
    rgba = np.asarray(awkward["rgba"])  # HW4
    for array in (grey, rgba, grey.transpose(2, 0, 1), rgba.transpose(2, 0, 1), rgba.astype(np.float32) / 255):
        out = compare(array, do_convert_rgb=True)
        assert out.shape[1] == 3
        assert_same(out, ours(**APPLE)(array, return_tensors="np")["pixel_values"])
        compare(array, do_convert_rgb=False)


def test_input_data_format(photo):
    # a 3x4 image is ambiguous; both take channels first unless told
    tiny = np.asarray(photo.resize((3, 4)))  # [4, 3, 3] = H, W, C
    compare(tiny, input_data_format="channels_last")
    compare(tiny.transpose(2, 0, 1), input_data_format="channels_first")


def test_bad_inputs(photo):
    processor = ours()
    with pytest.raises(ValueError, match="channel axis"):
        processor(np.zeros((5, 6, 7), np.uint8))
    with pytest.raises(ValueError, match="dimensions"):
        processor(np.zeros((5, 6), np.uint8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        processor(np.full((3, 8, 8), 1.5, np.float32))
    with pytest.raises(TypeError, match="PIL image"):
        processor(42)
    with pytest.raises(ValueError, match="empty"):
        processor([])
    with pytest.raises(ValueError, match="stack"):
        processor([photo, photo.resize((100, 50))], do_center_crop=False, return_tensors="np")
    with pytest.raises(ValueError, match="return_tensors"):
        processor(photo, return_tensors="pt")
    with pytest.raises(ImageLoadError, match="no such file"):
        processor("/no/such/image.jpg")
    with pytest.raises(ValueError, match="size"):
        ours(size={"width": 3})
    with pytest.raises(ValueError, match="resample"):
        ours(resample="sharpest")


# --------------------------------------------------------------------------------------------
# Segmentation maps
# --------------------------------------------------------------------------------------------


def label_map(height=187, width=160, classes=21, seed=0):
    """Blocky labels 0..classes-1 and some 255 (ignore), as VOC annotations look."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, classes, size=(height // 16 + 1, width // 16 + 1)).astype(np.uint8)
    labels = np.kron(coarse, np.ones((16, 16), np.uint8))[:height, :width]
    labels[rng.random((height, width)) < 0.02] = 255
    return labels


@pytest.mark.parametrize("reduce", [False, True])
@pytest.mark.parametrize("settings", ["apple", "no_center_crop", "height_width", "crop_larger_than_image"])
def test_segmentation_maps(reduce, settings, photo):
    labels = label_map()
    image = photo.resize((160, 187))
    config = {**SETTINGS[settings], "do_reduce_labels": reduce}
    inputs = [
        (image, labels),  # a 2-D uint8 array
        ([image, image], [Image.fromarray(labels), Image.fromarray(labels, "L").convert("P")]),  # PIL "L" and "P"
        (np.stack([np.asarray(image)] * 2), np.stack([labels, labels[::-1]]).astype(np.int64)),  # a batch
    ]
    for images, maps in inputs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = reference(**config)(images, segmentation_maps=maps, return_tensors="np")
        mine = ours(**config)(images, segmentation_maps=maps, return_tensors="np")
        assert_same(theirs["pixel_values"], mine["pixel_values"])
        assert_same(theirs["labels"], mine["labels"], tol=0)
        assert mine["labels"].dtype == np.int64
    if reduce:
        assert 0 not in labels[labels != 255] or (mine["labels"] != 0).any()


def test_segmentation_map_by_path(tmp_path, photo):
    labels = label_map(600, 512)
    path = tmp_path / "labels.png"
    Image.fromarray(labels).save(path)
    mine = ours(**APPLE)(photo, segmentation_maps=str(path), return_tensors="np")
    direct = ours(**APPLE)(photo, segmentation_maps=labels, return_tensors="np")
    assert np.array_equal(mine["labels"], direct["labels"])  # read as stored: the ids, not RGB


def test_reduce_labels_does_not_touch_the_input():
    labels = label_map()
    before = labels.copy()
    ours(do_reduce_labels=True)(np.zeros((3, 40, 40), np.uint8), segmentation_maps=labels)
    assert np.array_equal(labels, before)


# --------------------------------------------------------------------------------------------
# Reading and writing preprocessor_config.json
# --------------------------------------------------------------------------------------------


def test_from_pretrained_reads_transformers_files(tmp_path, photo):
    config = {"do_reduce_labels": True, "size": {"height": 300, "width": 280}, "crop_size": {"height": 200, "width": 210},
              "resample": 3, "do_flip_channel_order": False, "rescale_factor": 0.25}
    reference(**config).save_pretrained(str(tmp_path))
    processor = MobileViTImageProcessor.from_pretrained(tmp_path)
    assert processor.do_reduce_labels and processor.size == {"height": 300, "width": 280}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = transformers.MobileViTImageProcessorPil.from_pretrained(str(tmp_path))(photo, return_tensors="np")
    assert_same(theirs["pixel_values"], processor(photo, return_tensors="np")["pixel_values"])


def test_legacy_feature_extractor_file(tmp_path, photo):
    """Older checkpoints store sizes as plain ints (and a feature_extractor_type)."""
    legacy = {"crop_size": 256, "do_center_crop": True, "do_flip_channel_order": True, "do_resize": True,
              "feature_extractor_type": "MobileViTFeatureExtractor", "resample": 2, "size": 288}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(legacy))
    processor = MobileViTImageProcessor.from_pretrained(tmp_path)
    assert processor.size == {"shortest_edge": 288} and processor.crop_size == {"height": 256, "width": 256}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = transformers.MobileViTImageProcessorPil.from_pretrained(str(tmp_path))(photo, return_tensors="np")
    assert_same(theirs["pixel_values"], processor(photo, return_tensors="np")["pixel_values"])


def test_save_pretrained_is_read_by_transformers(tmp_path, photo):
    processor = MobileViTImageProcessor(size={"shortest_edge": 300}, crop_size=(240, 250), resample="bilinear",
                                        do_reduce_labels=True)
    processor.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = transformers.MobileViTImageProcessorPil.from_pretrained(str(tmp_path))
        assert theirs.do_reduce_labels
        expected = theirs(photo, return_tensors="np")["pixel_values"]
    assert_same(expected, processor(photo, return_tensors="np")["pixel_values"])
    assert MobileViTImageProcessor.from_pretrained(tmp_path / "preprocessor_config.json").to_dict() == processor.to_dict()


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(CheckpointError, match="preprocessor_config.json"):
        MobileViTImageProcessor.from_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        MobileViTImageProcessor.from_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text('{"size": {"longest": 3}}')
    with pytest.raises(ValueError, match="preprocessor_config.json: size"):
        MobileViTImageProcessor.from_pretrained(tmp_path)


def test_defaults_match_transformers():
    theirs, mine = reference(), ours()
    assert dict(theirs.size) == mine.size and dict(theirs.crop_size) == mine.crop_size
    assert int(theirs.resample) == int(mine.resample)
    for name in ("do_resize", "do_rescale", "rescale_factor", "do_center_crop", "do_flip_channel_order", "do_reduce_labels"):
        assert getattr(theirs, name) == getattr(mine, name), name


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def test_open_image_errors(tmp_path, photo_path):
    with pytest.raises(ImageLoadError, match="no such file"):
        open_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageLoadError, match="folder"):
        open_image(tmp_path)
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ImageLoadError, match="not an image"):
        open_image(tmp_path / "text.png")
    data = Path(photo_path).read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageLoadError, match="truncated") as error:
        load_image(tmp_path / "truncated.jpg")
    assert error.value.path == str(tmp_path / "truncated.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageLoadError):
        open_image(tmp_path / "empty.jpg")
    with pytest.raises(ImageLoadError, match="over the limit"):
        open_image(photo_path, max_pixels=512 * 600 - 1)
    assert open_image(photo_path, max_pixels=512 * 600).size == (512, 600)


# --------------------------------------------------------------------------------------------
# Post-processing
# --------------------------------------------------------------------------------------------


class Outputs:
    def __init__(self, logits):
        self.logits = logits


@pytest.mark.parametrize("target_sizes", [None, [(512, 512), (600, 512)], [(37, 501), (1, 1)], [(8, 8), (700, 20)]])
def test_post_process_semantic_segmentation(target_sizes):
    logits = np.random.default_rng(0).normal(size=(2, 21, 32, 32)).astype(np.float32)
    theirs = transformers.MobileViTImageProcessorPil().post_process_semantic_segmentation(
        Outputs(torch.from_numpy(logits)), target_sizes=target_sizes)
    mine = post_process_semantic_segmentation(Outputs(logits), target_sizes=target_sizes, rows_per_chunk=100)
    for a, b in zip(theirs, mine):
        a = a.numpy()
        assert a.shape == b.shape and b.dtype == np.int64
        assert np.mean(a == b) >= 0.999, np.mean(a == b)
    # and the whole-image path (no chunks) agrees with the chunked one exactly
    whole = post_process_semantic_segmentation(logits, target_sizes=target_sizes, rows_per_chunk=10**6)
    assert all(np.array_equal(a, b) for a, b in zip(whole, mine))


def test_post_process_semantic_segmentation_scores():
    logits = np.random.default_rng(1).normal(size=(1, 5, 16, 24)).astype(np.float32)
    theirs = transformers.MobileViTImageProcessorPil().post_process_semantic_segmentation(
        Outputs(torch.from_numpy(logits)), target_sizes=torch.tensor([[100, 75]]), return_segmentation_scores=True)
    mine = MobileViTImageProcessor().post_process_semantic_segmentation(
        Outputs(logits), target_sizes=np.array([[100, 75]]), return_segmentation_scores=True)
    assert np.abs(theirs[0].segmentation_scores.numpy() - mine[0].segmentation_scores).max() < 1e-5
    assert np.mean(theirs[0].segmentation.numpy() == mine[0].segmentation) >= 0.999
    with pytest.raises(ValueError, match="target_sizes"):
        post_process_semantic_segmentation(logits, target_sizes=[(4, 4), (5, 5)])


def test_post_process_image_classification():
    logits = np.random.default_rng(0).normal(size=(3, 10)).astype(np.float32)
    id2label = {i: f"class {i}" for i in range(10)}
    results = post_process_image_classification(Outputs(logits), top_k=4, id2label=id2label)
    probabilities = torch.softmax(torch.from_numpy(logits).double(), -1)
    values, indices = probabilities.topk(4)
    for row, v, i in zip(results, values, indices):
        assert [p["index"] for p in row] == i.tolist()
        assert [p["label"] for p in row] == [f"class {k}" for k in i.tolist()]
        assert np.allclose([p["score"] for p in row], v.numpy(), atol=1e-12)
    assert len(post_process_image_classification(logits, top_k=50)[0]) == 10
    assert post_process_image_classification(logits[0], top_k=1)[0][0]["label"] == f"LABEL_{int(np.argmax(logits[0]))}"
    sig = post_process_image_classification(logits, top_k=1, function="sigmoid")[0][0]["score"]
    assert np.isclose(sig, 1 / (1 + np.exp(-logits[0].max())))


def test_center_crop_padding_matches_transformers():
    from transformers.image_transforms import center_crop as reference_crop

    image = np.arange(3 * 5 * 8, dtype=np.float32).reshape(3, 5, 8) + 1
    for size in [(2, 3), (5, 8), (6, 8), (7, 9), (4, 11), (9, 2), (1, 1)]:
        assert np.array_equal(reference_crop(image, size, input_data_format="channels_first"), center_crop(image, size)), size


def test_voc_palette():
    palette = voc_palette()
    assert palette.shape == (256, 3) and palette.dtype == np.uint8
    assert palette[:4].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    assert palette[15].tolist() == [192, 128, 128]  # person
    assert palette[255].tolist() == [224, 224, 192]  # the VOC "ignore" border
    assert len({tuple(c) for c in palette}) == 256
