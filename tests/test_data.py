"""Image folders for fine-tuning (``numpy_mvit2.data``): the layouts, the held-out split, the
augmentation (torchvision's random resized crop box, the flip), deterministic batches, broken
files named and skipped, and folders that cannot be used named with the reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from numpy_mvit2 import MobileViTImageProcessor
from numpy_mvit2.data import DataError, ImageFolder, SegmentationFolder, batch_count, batches, prepare, random_resized_crop_box

PROCESSOR = MobileViTImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 32}, resample=2)


def _write_images(folder: Path, count: int, seed: int, size=(48, 40)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:02d}.png")


@pytest.fixture
def flat(tmp_path):
    for k, name in enumerate(("cat", "dog", "owl")):
        _write_images(tmp_path / "data" / name, 10, seed=k)
    return tmp_path / "data"


def test_a_flat_folder_holds_out_a_fraction_of_every_class(flat):
    data = ImageFolder(flat, val_fraction=0.2, seed=3)
    assert data.classes == ["cat", "dog", "owl"] and data.id2label == {0: "cat", 1: "dog", 2: "owl"}
    assert len(data.train) == 24 and len(data.val) == 6
    assert sorted(set(data.train.files) | set(data.val.files)) == sorted(flat.glob("*/*.png"))
    assert not set(data.train.files) & set(data.val.files)
    assert [data.val.labels.count(c) for c in range(3)] == [2, 2, 2]
    for files, labels in ((data.train.files, data.train.labels), (data.val.files, data.val.labels)):
        assert all(data.classes[label] == path.parent.name for path, label in zip(files, labels))
    again = ImageFolder(flat, val_fraction=0.2, seed=3)
    assert again.val.files == data.val.files  # the seed decides
    assert ImageFolder(flat, val_fraction=0.2, seed=4).val.files != data.val.files


def test_train_and_val_folders_are_used_as_they_are(tmp_path):
    for split, count in (("train", 4), ("validation", 2)):
        for k, name in enumerate(("a", "b")):
            _write_images(tmp_path / split / name, count, seed=k)
    data = ImageFolder(tmp_path)
    assert data.classes == ["a", "b"] and len(data.train) == 8 and len(data.val) == 4
    assert all(p.parts[-3] == "validation" for p in data.val.files)


def test_batches_are_deterministic_and_augmented(flat):
    data = ImageFolder(flat, seed=0)
    first = list(batches(data.train, PROCESSOR, batch_size=5, train=True, seed=7, epoch=2, workers=3))
    again = list(batches(data.train, PROCESSOR, batch_size=5, train=True, seed=7, epoch=2, workers=1))
    other_epoch = list(batches(data.train, PROCESSOR, batch_size=5, train=True, seed=7, epoch=3))
    assert [b[0].shape for b in first] == [(5, 3, 32, 32)] * 5 + [(2, 3, 32, 32)]
    assert all(b[0].dtype == np.float32 and b[1].dtype == np.int64 for b in first)
    for (x1, y1), (x2, y2) in zip(first, again):  # the same draws on three threads as on one
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(first[0][0], other_epoch[0][0])
    labels = np.concatenate([y for _, y in first])
    assert sorted(labels.tolist()) == sorted(data.train.labels)  # every image once, shuffled
    assert labels.tolist() != data.train.labels
    assert all(0 <= x.min() and x.max() <= 1 for x, _ in first)  # rescaled by 1/255


def test_validation_batches_are_the_processor_s_own(flat):
    data = ImageFolder(flat, seed=0)
    (pixels, labels), *_ = batches(data.val, PROCESSOR, batch_size=64, train=False)
    assert labels.tolist() == data.val.labels
    expected = PROCESSOR([Image.open(p).convert("RGB") for p in data.val.files], return_tensors="np")["pixel_values"]
    np.testing.assert_array_equal(pixels, expected)


def test_the_augmentation_flips_and_crops_then_prepares_as_the_processor():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8))
    rng = np.random.default_rng(5)
    out = prepare(image, PROCESSOR, rng)
    rng = np.random.default_rng(5)
    left, top, w, h = random_resized_crop_box(rng, 60, 40)
    crop = image.resize((32, 32), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h))
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    expected = np.asarray(crop, dtype=np.float32).transpose(2, 0, 1)[::-1] / 255  # RGB -> BGR, 1/255
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)


def test_the_crop_box_is_torchvision_s():
    """The same distribution of boxes as torchvision's RandomResizedCrop.get_params: within the
    image, area 8% to 100%, aspect ratio 3/4 to 4/3 (bar rounding), or the centred fallback."""
    rng = np.random.default_rng(0)
    for width, height in ((60, 40), (300, 20), (20, 300), (1, 1)):
        for _ in range(200):
            left, top, w, h = random_resized_crop_box(rng, width, height)
            assert 0 <= left and left + w <= width and 0 <= top and top + h <= height and w > 0 and h > 0
    box = random_resized_crop_box(rng, 300, 20, scale=(0.99, 1.0))  # no box of that area fits: the fallback
    assert box == ((300 - 27) // 2, 0, 27, 20)


def test_a_broken_file_is_named_and_skipped(flat):
    (flat / "cat" / "img00.png").write_bytes(b"not an image at all")
    data = ImageFolder(flat, seed=0)
    seen = sum(len(y) for _, y in batches(data.train, PROCESSOR, batch_size=4, train=True))
    seen += sum(len(y) for _, y in batches(data.val, PROCESSOR, batch_size=4, train=False))
    assert seen == 29
    skipped = data.train.skipped + data.val.skipped
    assert len(skipped) == 1 and "img00.png" in skipped[0] and "cat" in skipped[0]


def test_folders_that_cannot_be_used(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        ImageFolder(tmp_path / "missing")
    _write_images(tmp_path / "one" / "only", 3, seed=0)
    with pytest.raises(DataError, match="at least two"):
        ImageFolder(tmp_path / "one")
    _write_images(tmp_path / "two" / "a", 3, seed=0)
    (tmp_path / "two" / "b").mkdir()
    with pytest.raises(DataError, match="without images: b"):
        ImageFolder(tmp_path / "two")
    _write_images(tmp_path / "three" / "a", 3, seed=0)
    _write_images(tmp_path / "three" / "b", 1, seed=1)
    with pytest.raises(DataError, match="one image"):
        ImageFolder(tmp_path / "three")
    with pytest.raises(DataError, match="val_fraction"):
        ImageFolder(tmp_path / "three", val_fraction=1.5)


def _write_pairs(root: Path, count: int, seed: int, photos="images", masks="masks", size=(48, 40), ids=(0, 1, 2)):
    """Photos whose red channel is 80 x the class id of their palette mask (blocks of 8x8 pixels)."""
    rng = np.random.default_rng(seed)
    (root / photos).mkdir(parents=True, exist_ok=True)
    (root / masks).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        blocks = rng.choice(ids, (size[1] // 8, size[0] // 8))
        mask = np.kron(blocks, np.ones((8, 8), int)).astype(np.uint8)
        pixels = np.zeros((*mask.shape, 3), np.uint8)
        pixels[..., 0] = 80 * mask
        Image.fromarray(pixels).save(root / photos / f"p{i:02d}.png")
        palette = Image.fromarray(mask, mode="P")
        # a palette of distinct colours: Pillow saves a P image without one as if its indices were grey levels
        palette.putpalette([c for k in range(256) for c in (k, (37 * k) % 256, (101 * k) % 256)])
        palette.save(root / masks / f"p{i:02d}.png")


def test_segmentation_layouts_and_classes(tmp_path):
    _write_pairs(tmp_path / "flat", 10, seed=0)
    data = SegmentationFolder(tmp_path / "flat", val_fraction=0.2, seed=1)
    assert data.classes == ["0", "1", "2"] and len(data.train) == 8 and len(data.val) == 2
    assert [m.stem for m in data.train.masks] == [p.stem for p in data.train.files]
    assert not set(data.train.files) & set(data.val.files)

    for split, count in (("train", 4), ("val", 2)):  # VOC's folder names, under train/ and val/
        _write_pairs(tmp_path / "voc" / split, count, seed=len(split), photos="JPEGImages", masks="SegmentationClass")
    (tmp_path / "voc" / "classes.txt").write_text("background\ncat\ndog\nowl\n")
    data = SegmentationFolder(tmp_path / "voc")
    assert data.classes == ["background", "cat", "dog", "owl"] and len(data.train) == 4 and len(data.val) == 2
    assert data.id2label[3] == "owl"

    _write_pairs(tmp_path / "ignored", 3, seed=0, ids=(0, 1, 255))  # 255 marks ignored pixels, not a class
    assert SegmentationFolder(tmp_path / "ignored").classes == ["0", "1"]


def test_segmentation_pairs_that_cannot_be_used_are_named(tmp_path):
    root = tmp_path / "data"
    _write_pairs(root, 6, seed=0)
    Image.new("RGB", (48, 40)).save(root / "images" / "lonely.png")  # no mask
    Image.new("RGB", (48, 40)).save(root / "masks" / "p00.png")  # a colour mask
    Image.new("L", (20, 20)).save(root / "masks" / "p01.png")  # another size
    data = SegmentationFolder(root, val_fraction=0.3)
    skipped = " ".join(data.train.skipped + data.val.skipped)
    assert "lonely.png" in skipped and "p00.png" in skipped and "RGB" in skipped and "p01.png" in skipped
    assert len(data.train) + len(data.val) == 4
    with pytest.raises(DataError, match="images/"):
        SegmentationFolder(tmp_path)  # neither images/ nor masks/
    _write_pairs(tmp_path / "one", 3, seed=0, ids=(0,))
    with pytest.raises(DataError, match="one class"):
        SegmentationFolder(tmp_path / "one")
    (tmp_path / "short").mkdir()
    _write_pairs(tmp_path / "short", 3, seed=0, ids=(0, 1, 2))
    (tmp_path / "short" / "classes.txt").write_text("background\ncat\n")
    with pytest.raises(DataError, match="class id 2"):
        SegmentationFolder(tmp_path / "short")


def test_a_mask_is_cropped_and_flipped_with_its_photo(tmp_path):
    _write_pairs(tmp_path / "data", 12, seed=3)
    data = SegmentationFolder(tmp_path / "data", val_fraction=0.25)
    for pixels, labels in batches(data.train, PROCESSOR, batch_size=4, train=True, seed=2):
        assert labels.shape == (len(pixels), 32, 32) and labels.dtype == np.int64
        red = pixels[:, 2] * 255  # BGR: the red channel is the last
        # inside a block, away from its edges (where bilinear pixels blend two classes), the photo tells the class
        padded = np.pad(labels, ((0, 0), (1, 1), (1, 1)), mode="edge")
        clear = np.all([padded[:, 1 + dy:33 + dy, 1 + dx:33 + dx] == labels
                        for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0)
        assert clear.mean() > 0.3
        np.testing.assert_array_equal(np.round(red / 80)[clear], labels[clear])
    (pixels, labels), = batches(data.val, PROCESSOR, batch_size=8, train=False)
    assert labels.shape == (3, 32, 32)


def test_a_lone_last_training_image_joins_the_batch_before(flat):
    data = ImageFolder(flat, val_fraction=0.1, seed=0)  # 27 training images
    assert len(data.train) == 27
    sizes = [len(y) for _, y in batches(data.train, PROCESSOR, batch_size=13, train=True)]
    assert sizes == [13, 14] and batch_count(27, 13, train=True) == 2
    sizes = [len(y) for _, y in batches(data.train, PROCESSOR, batch_size=13, train=False)]
    assert sizes == [13, 13, 1] and batch_count(27, 13, train=False) == 3
    assert batch_count(1, 4, train=True) == 1 and batch_count(8, 4, train=True) == 2


def test_the_augmentation_can_keep_the_whole_image_and_its_handedness():
    """``crop_scale=(1, 1)`` on an image of a ratio within 3/4..4/3 crops all of it; ``flip=False``
    never flips, and draws the same crops as with flips."""
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (36, 40, 3), dtype=np.uint8))
    whole = PROCESSOR(image.resize((32, 32), Image.Resampling.BILINEAR), do_resize=False, do_center_crop=False,
                      return_tensors="np")["pixel_values"][0]
    for seed in range(8):
        out = prepare(image, PROCESSOR, np.random.default_rng(seed), crop_scale=(1.0, 1.0), flip=False)
        np.testing.assert_allclose(out, whole, atol=1e-6)
        flipped = prepare(image, PROCESSOR, np.random.default_rng(seed), crop_scale=(1.0, 1.0))
        assert np.allclose(flipped, whole, atol=1e-6) or np.allclose(flipped, whole[..., ::-1], atol=1e-6)


def test_hostile_segmentation_folders_are_named(tmp_path):
    root = tmp_path / "wild"
    _write_pairs(root, 5, seed=0)
    Image.fromarray(np.full((40, 48), 70000, np.int32), mode="I").save(root / "masks" / "p00.tif")
    (root / "masks" / "p00.png").unlink()  # p00's mask is now a 32-bit TIFF holding class id 70000
    data = SegmentationFolder(root, val_fraction=0.3)
    assert any("p00" in line and "70000" in line for line in data.train.skipped + data.val.skipped)
    assert data.classes == ["0", "1", "2"]
    (root / "classes.txt").write_bytes("\ufeffbackground\n\ncat\ndog\n".encode())
    with pytest.raises(DataError, match="line 2 is blank"):
        SegmentationFolder(root)
    (root / "classes.txt").write_bytes("\ufeffbackground\ncat\ndog\n\n\n".encode())
    assert SegmentationFolder(root).classes == ["background", "cat", "dog"]  # no BOM in the first name


def test_a_mac_zip_s_folder_is_not_a_class_and_batch_size_one(flat):
    (flat / "__MACOSX" / "cat").mkdir(parents=True)
    (flat / "__MACOSX" / "cat" / "._img00.png").write_bytes(b"\x00\x05\x16\x07")
    data = ImageFolder(flat)
    assert data.classes == ["cat", "dog", "owl"]
    sizes = [len(y) for _, y in batches(data.train, PROCESSOR, batch_size=1, train=True)]
    assert len(sizes) == batch_count(len(data.train), 1, train=True) and sizes[-1] == 2
