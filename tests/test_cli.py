"""The ``numpy-mvit2`` command line, run as a user runs it: ``python -m numpy_mvit2`` in a subprocess.

The checkpoints are small generated ones (random weights, not pretrained), written by
``numpy_mvit2.generate`` (what ``python -m numpy_mvit2.generate`` writes: ``config.json``,
``model.safetensors`` in transformers' layout, ``preprocessor_config.json``, ``README.md``).
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import quick
from PIL import Image

from numpy_mvit2 import (
    MobileViTImageProcessor,
    MobileViTV2Config,
    MobileViTV2ForImageClassification,
    MobileViTV2ForSemanticSegmentation,
    load_image,
    post_process_semantic_segmentation,
)
from numpy_mvit2.generate import generate_checkpoint

LABELS = {i: name for i, name in enumerate(["cat", "dog", "bird", "fish", "horse", "sheep", "cow"])}
VOC = {i: name for i, name in enumerate(["background", "aeroplane", "bicycle", "bird", "boat"])}


def run_cli(*args, env=None, timeout=300):
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    environment.pop("NUMPY_MVIT2_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "numpy_mvit2", *map(str, args)], capture_output=True, text=True,
                          check=False, env=environment, timeout=timeout)


def assert_no_traceback(result):
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr


def small_processor() -> MobileViTImageProcessor:
    return MobileViTImageProcessor(size={"shortest_edge": 72}, crop_size=64, resample="bilinear")


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """A small generated classifier (width 0.5, 64x64 crops, 7 named labels)."""
    return generate_checkpoint(tmp_path_factory.mktemp("classifier"), "classification", width=0.5, seed=1, image_size=64,
                               id2label=LABELS, processor=small_processor())


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    return generate_checkpoint(tmp_path_factory.mktemp("segmenter"), "segmentation", width=0.5, seed=2, image_size=64,
                               id2label=VOC, output_stride=16, aspp_out_channels=32, processor=small_processor())


def photo_array(seed: int, height: int, width: int) -> np.ndarray:
    """A smooth synthetic photo (gradients and a disc) with a little noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    r = np.clip(255 * (x + 0.3 * rng.random()), 0, 255)
    g = np.clip(255 * (y * rng.random() + 0.2), 0, 255)
    b = 255 * (((x - 0.5) ** 2 + (y - 0.4) ** 2) < 0.1)
    noise = rng.normal(0, 8, (height, width, 3))
    return np.clip(np.stack([r, g, b], -1) + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A folder with good images, broken ones, and files that are not images."""
    folder = tmp_path_factory.mktemp("photos")
    Image.fromarray(photo_array(0, 120, 90)).save(folder / "a_portrait.jpg", quality=92)
    Image.fromarray(photo_array(1, 70, 150)).save(folder / "b_landscape.png")
    Image.fromarray(photo_array(2, 80, 80)).convert("L").save(folder / "c_grey.PNG")
    Image.fromarray(photo_array(3, 100, 60)).convert("RGBA").save(folder / "d_rgba.webp")
    good = (folder / "a_portrait.jpg").read_bytes()
    (folder / "e_truncated.jpg").write_bytes(good[: len(good) // 2])
    (folder / "f_not_an_image.png").write_text("this is text, not a PNG\n")
    (folder / "g_empty.jpg").write_bytes(b"")
    (folder / "notes.txt").write_text("ignored: not an image extension\n")
    (folder / ".hidden.jpg").write_bytes(good)  # hidden files are skipped
    (folder / "subfolder").mkdir()  # folders are not recursed into
    Image.fromarray(photo_array(4, 50, 50)).save(folder / "subfolder" / "nested.jpg")
    return folder


GOOD = ["a_portrait.jpg", "b_landscape.png", "c_grey.PNG", "d_rgba.webp"]
BROKEN = ["e_truncated.jpg", "f_not_an_image.png", "g_empty.jpg"]


# --------------------------------------------------------------------------------------------
# classify
# --------------------------------------------------------------------------------------------


def test_classify_json_folder_with_broken_files(classifier, photos):
    result = run_cli("classify", photos, "--model", classifier, "--json", "--top-k", "3", "--batch-size", "3")
    assert_no_traceback(result)
    assert result.returncode == 1, result.stderr
    records = json.loads(result.stdout)
    assert [Path(r["file"]).name for r in records] == sorted(GOOD + BROKEN)  # sorted by name, one per image file
    for record in records:
        name = Path(record["file"]).name
        if name in GOOD:
            assert set(record) == {"file", "predictions"}
            predictions = record["predictions"]
            assert len(predictions) == 3
            assert all(set(p) == {"label", "index", "score"} for p in predictions)
            assert all(p["label"] == LABELS[p["index"]] for p in predictions)
            scores = [p["score"] for p in predictions]
            assert scores == sorted(scores, reverse=True) and all(0 < s <= 1 for s in scores)
        else:
            assert set(record) == {"file", "error"} and record["error"]
    # every broken file is named on stderr with a reason; nothing else is
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == len(BROKEN), result.stderr
    for name in BROKEN:
        assert any(name in line and "error" in line for line in errors), (name, result.stderr)
    assert "truncated" in next(line for line in errors if "e_truncated" in line)
    assert "not an image" in next(line for line in errors if "f_not_an_image" in line)


def test_classify_matches_the_library(classifier, photos):
    files = [photos / name for name in GOOD]
    result = run_cli("classify", *files, "--model", classifier, "--json", "--top-k", "7")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # stderr is not a terminal: no progress bar, and nothing went wrong
    model = MobileViTV2ForImageClassification.from_pretrained(classifier)
    processor = MobileViTImageProcessor.from_pretrained(classifier)
    for record, path in zip(json.loads(result.stdout), files):
        logits = model(processor(load_image(path), return_tensors="np")["pixel_values"]).logits[0].astype(np.float64)
        probabilities = np.exp(logits - logits.max())
        probabilities /= probabilities.sum()
        got = {p["index"]: p["score"] for p in record["predictions"]}
        assert len(got) == 7
        assert np.allclose([got[i] for i in range(7)], probabilities, atol=1e-6)
        assert record["predictions"][0]["index"] == int(np.argmax(logits))


def test_classify_text_output(classifier, photos):
    result = run_cli("classify", photos / "a_portrait.jpg", photos / "b_landscape.png", "--model", classifier, "-k", "2")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{photos / 'a_portrait.jpg'}:" and lines[3] == f"{photos / 'b_landscape.png'}:"
    assert len(lines) == 6
    score, label, index = lines[1].split()[0], lines[1].split()[1], lines[1].split()[-1]
    assert 0 < float(score) <= 1 and label in LABELS.values() and index.startswith("[")


@pytest.mark.slow
def test_classify_exif_orientation(classifier, tmp_path):
    """A photo stored sideways with an EXIF orientation is classified upright."""
    upright = Image.fromarray(photo_array(5, 120, 80))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "sideways.png", exif=exif)
    upright.save(tmp_path / "upright.png")
    result = run_cli("classify", tmp_path / "sideways.png", tmp_path / "upright.png", "--model", classifier, "--json", "-k", "7")
    assert result.returncode == 0, result.stderr
    sideways, straight = json.loads(result.stdout)
    assert sideways["predictions"] == straight["predictions"]


def test_missing_inputs_are_reported_and_the_rest_processed(classifier, photos, tmp_path):
    (tmp_path / "empty_folder").mkdir()
    result = run_cli("classify", tmp_path / "nope.jpg", photos / "a_portrait.jpg", tmp_path / "empty_folder",
                     "--model", classifier, "--json")
    assert_no_traceback(result)
    assert result.returncode == 1
    records = json.loads(result.stdout)
    assert records[0] == {"file": str(tmp_path / "nope.jpg"), "error": "no such file or folder"}
    assert "predictions" in records[1]
    assert "no image files" in records[2]["error"]
    assert "nope.jpg" in result.stderr and "empty_folder" in result.stderr


def test_pixel_limit(classifier, photos):
    result = run_cli("classify", photos / "a_portrait.jpg", photos / "c_grey.PNG", "--model", classifier,
                     "--max-pixels", "7000")
    assert_no_traceback(result)
    assert result.returncode == 1
    assert "a_portrait.jpg" in result.stderr and "over the limit of 7,000" in result.stderr  # 90x120 = 10,800
    assert f"{photos / 'c_grey.PNG'}:" in result.stdout  # 80x80 = 6,400 is fine


@pytest.mark.slow
def test_decompression_bomb_is_refused(classifier, tmp_path):
    """A tiny file declaring a huge image: refused from its header, before any decoding."""
    Image.new("1", (12_000, 10_000)).save(tmp_path / "bomb.png")  # 120 megapixels, a few kB on disk
    assert (tmp_path / "bomb.png").stat().st_size < 100_000
    result = run_cli("classify", tmp_path / "bomb.png", "--model", classifier)
    assert_no_traceback(result)
    assert result.returncode == 1
    assert "bomb.png" in result.stderr and "refused" in result.stderr and "120,000,000" in result.stderr


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


def test_missing_model(photos, tmp_path):
    result = run_cli("classify", photos / "a_portrait.jpg", "--model", tmp_path / "no_such_model")
    assert_no_traceback(result)
    assert result.returncode == 1
    first, *details = result.stderr.rstrip().splitlines()  # one error: its first line, then indented details
    assert first.startswith("numpy-mvit2: error: cannot load model") and "no_such_model: no such folder" in first
    assert all(line.startswith("  ") for line in details), result.stderr
    assert result.stdout == ""


@pytest.mark.slow
def test_default_model_offline_gives_one_clear_message(photos, tmp_path):
    result = run_cli("classify", photos / "a_portrait.jpg", env={"HF_HOME": str(tmp_path / "hf")})
    assert_no_traceback(result)
    assert result.returncode == 1
    first, *details = result.stderr.rstrip().splitlines()  # one error: its first line, then indented details
    assert first.startswith("numpy-mvit2: error:") and "apple/mobilevitv2-1.0-imagenet1k-256" in first, result.stderr
    assert details and all(line.startswith("  ") for line in details), result.stderr
    assert any("there is no local folder or file named apple/mobilevitv2-1.0-imagenet1k-256" in line for line in details)
    result = run_cli("segment", photos / "a_portrait.jpg", "-o", tmp_path / "out", env={"HF_HOME": str(tmp_path / "hf")})
    assert result.returncode == 1 and "apple/mobilevitv2-1.0-voc-deeplabv3" in result.stderr
    assert not (tmp_path / "out").exists()  # nothing written when the model cannot be loaded


@pytest.mark.slow
def test_unusable_model_files(classifier, segmenter, photos, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((classifier / "config.json").read_text())
    (broken / "model.safetensors").write_bytes(b"\x00" * 100)
    result = run_cli("classify", photos / "a_portrait.jpg", "--model", broken)
    assert_no_traceback(result)
    assert result.returncode == 1 and "cannot load model" in result.stderr and "model.safetensors" in result.stderr
    # a segmentation checkpoint is not a classifier, and the other way round
    result = run_cli("classify", photos / "a_portrait.jpg", "--model", segmenter)
    assert_no_traceback(result)
    assert result.returncode == 1 and "is a semantic segmentation checkpoint" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = run_cli("segment", photos / "a_portrait.jpg", "--model", classifier, "-o", tmp_path / "out")
    assert result.returncode == 1 and "is an image classification checkpoint" in result.stderr
    assert "needs a semantic segmentation one" in result.stderr
    # without architectures in config.json, the strict loader says what does not match
    unnamed = tmp_path / "unnamed"
    unnamed.mkdir()
    config = json.loads((segmenter / "config.json").read_text())
    del config["architectures"]
    (unnamed / "config.json").write_text(json.dumps(config))
    (unnamed / "model.safetensors").write_bytes((segmenter / "model.safetensors").read_bytes())
    result = run_cli("classify", photos / "a_portrait.jpg", "--model", unnamed)
    assert_no_traceback(result)
    assert result.returncode == 1 and "cannot load model" in result.stderr and "missing key" in result.stderr


@pytest.mark.slow
def test_model_without_preprocessor_config(classifier, photos, tmp_path):
    """A folder with weights but no preprocessor_config.json: the apple recipe from image_size, with a note."""
    folder = tmp_path / "bare"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        (folder / name).write_bytes((classifier / name).read_bytes())
    result = run_cli("classify", photos / "a_portrait.jpg", "--model", folder, "--json")
    assert result.returncode == 0, result.stderr
    assert "preprocessor_config.json" in result.stderr and "shortest edge 96" in result.stderr
    quiet = run_cli("classify", photos / "a_portrait.jpg", "--model", folder, "--json", "--quiet")
    assert quiet.stderr == "" and json.loads(quiet.stdout) == json.loads(result.stdout)


# --------------------------------------------------------------------------------------------
# Usage errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args", quick([
    [],
    ["classify"],
    ["classify", "x.jpg", "--top-k", "0"],
    ["classify", "x.jpg", "--batch-size", "many"],
    ["classify", "x.jpg", "--no-such-option"],
    ["segment", "x.jpg"],  # --out-dir is required
    ["segment", "x.jpg", "-o", "out", "--alpha", "2"],
    ["frobnicate"],
    ["info", "--image-size", "256"],
], 2, 6))
def test_usage_errors_exit_2(args):
    result = run_cli(*args)
    assert result.returncode == 2, (args, result.stderr)
    assert "usage:" in result.stderr
    assert_no_traceback(result)


@pytest.mark.slow
def test_help_documents_the_json_shape():
    result = run_cli("classify", "--help")
    assert result.returncode == 0
    assert '"predictions"' in result.stdout and '"error"' in result.stdout and "apple/mobilevitv2-1.0-imagenet1k-256" in result.stdout
    result = run_cli("segment", "--help")
    assert "_labels.png" in result.stdout and "apple/mobilevitv2-1.0-voc-deeplabv3" in result.stdout
    assert run_cli("--version").stdout.startswith("numpy-mvit2 ")


# --------------------------------------------------------------------------------------------
# segment
# --------------------------------------------------------------------------------------------


def test_segment(segmenter, photos, tmp_path):
    out = tmp_path / "masks"
    result = run_cli("segment", photos / "a_portrait.jpg", photos / "b_landscape.png", photos / "e_truncated.jpg",
                     "--model", segmenter, "--out-dir", out, "--json")
    assert_no_traceback(result)
    assert result.returncode == 1 and "e_truncated.jpg" in result.stderr
    records = json.loads(result.stdout)
    assert "error" in records[2]
    model = MobileViTV2ForSemanticSegmentation.from_pretrained(segmenter)
    processor = MobileViTImageProcessor.from_pretrained(segmenter)
    for record, name in zip(records[:2], ["a_portrait", "b_landscape"]):
        photo = load_image(record["file"])
        assert record["labels"] == str(out / f"{name}_labels.png") and record["overlay"] == str(out / f"{name}_overlay.png")
        labels = Image.open(record["labels"])
        overlay = Image.open(record["overlay"])
        assert labels.mode == "P" and overlay.mode == "RGB"
        assert labels.size == overlay.size == photo.size and record["size"] == list(photo.size)
        assert labels.getpalette()[:9] == [0, 0, 0, 128, 0, 0, 0, 128, 0]  # PASCAL VOC colours
        processor.do_center_crop = False  # segment labels the whole photo
        logits = model(processor(photo, return_tensors="np")["pixel_values"]).logits
        expected = post_process_semantic_segmentation(logits, target_sizes=[photo.size[::-1]])[0]
        assert np.array_equal(np.asarray(labels), expected)
        fractions = {c["index"]: c["fraction"] for c in record["classes"]}
        assert abs(sum(fractions.values()) - 1) < 1e-4
        assert all(VOC[c["index"]] == c["label"] for c in record["classes"])
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{n}_{kind}.png" for n in ("a_portrait", "b_landscape") for kind in ("labels", "overlay"))  # no temporary files left


@pytest.mark.slow
def test_segment_same_stem_twice_and_exif(segmenter, tmp_path):
    upright = Image.fromarray(photo_array(6, 90, 60))
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 90 degrees counter-clockwise to view
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    upright.transpose(Image.Transpose.ROTATE_270).save(tmp_path / "a" / "photo.jpg", exif=exif, quality=95)
    upright.save(tmp_path / "b" / "photo.jpg", quality=95)
    result = run_cli("segment", tmp_path / "a", tmp_path / "b", "--model", segmenter, "-o", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "photo-2_labels.png", "photo-2_overlay.png", "photo_labels.png", "photo_overlay.png"]
    assert Image.open(tmp_path / "out" / "photo_labels.png").size == (60, 90)  # upright, original size
    assert "photo_labels.png" in result.stdout and "photo-2_overlay.png" in result.stdout


@pytest.mark.slow
def test_segment_out_dir_is_a_file(segmenter, photos, tmp_path):
    (tmp_path / "file").write_text("x")
    result = run_cli("segment", photos / "a_portrait.jpg", "--model", segmenter, "-o", tmp_path / "file")
    assert result.returncode == 2 and "not a folder" in result.stderr
    assert_no_traceback(result)


# --------------------------------------------------------------------------------------------
# info
# --------------------------------------------------------------------------------------------


def test_info(classifier, segmenter):
    model = MobileViTV2ForImageClassification.from_pretrained(classifier)
    result = run_cli("info", "--model", classifier, "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["head"] == "classification" and info["input_shape"] == [3, 64, 64]
    assert info["params_folded"] == model.num_parameters()
    assert [r["stage"] for r in info["rows"]] == ["stem"] + [f"stage {i}" for i in range(1, 6)] + ["head"]
    hidden = model(np.zeros((1, 3, 96, 128), np.float32), output_hidden_states=True).hidden_states
    result = run_cli("info", "--model", classifier, "--image-size", "96", "128", "--json")
    rows = json.loads(result.stdout)["rows"]
    assert [tuple(r["output_shape"]) for r in rows[1:6]] == [h.shape[1:] for h in hidden]

    text = run_cli("info", "--model", segmenter, "--image-size", "100", "150")
    assert text.returncode == 0, text.stderr
    segmentation = MobileViTV2ForSemanticSegmentation.from_pretrained(segmenter)
    assert "segmentation head" in text.stdout and f"{segmentation.num_parameters():,}" in text.stdout
    assert "MACs" in text.stdout and "3x100x150" in text.stdout
    per_layer = run_cli("info", "--model", segmenter, "--per-layer", "--json")
    assert any(r["name"].endswith("attention.qkv_proj") for r in json.loads(per_layer.stdout)["rows"])
    too_small = run_cli("info", "--model", classifier, "--image-size", "8", "8")
    assert too_small.returncode == 2 and "too small" in too_small.stderr
    assert_no_traceback(too_small)


# --------------------------------------------------------------------------------------------
# The terminal
# --------------------------------------------------------------------------------------------


def run_with_terminal_stderr(*args) -> tuple[int, str, str]:
    """Run the CLI with stderr on a pseudo-terminal (stdout a pipe); return (status, stdout, stderr)."""
    main, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 24 rows, 100 columns
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "numpy_mvit2", *map(str, args)], stdout=subprocess.PIPE,
                               stderr=secondary, env=environment)
    os.close(secondary)
    chunks = []
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    stdout = process.stdout.read().decode()
    process.wait(timeout=300)
    os.close(main)
    return process.returncode, stdout, b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
def test_progress_bar_on_a_terminal_only(classifier, photos):
    status, stdout, stderr = run_with_terminal_stderr("classify", photos, "--model", classifier, "--json")
    assert status == 1
    assert "classify" in stderr and "img" in stderr  # tqdm's bar: "classify: 100%|...| 4/4 [..., img/s]"
    assert len(json.loads(stdout)) == len(GOOD + BROKEN)  # stdout stays clean JSON
    status, stdout, stderr = run_with_terminal_stderr("classify", photos, "--model", classifier, "--json", "--quiet")
    assert "img/s" not in stderr and "%|" not in stderr
    assert all(name in stderr for name in BROKEN)  # errors are still reported


def test_cli_runs_without_torch(classifier, photos):
    """The command line needs no deep-learning framework: torch and transformers refused at import."""
    child = textwrap.dedent(
        """
        import importlib.abc, sys

        class Blocker(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "transformers", "timm"):
                    raise ImportError(f"{name} is blocked in this test")
                return None

        sys.meta_path.insert(0, Blocker())
        from numpy_mvit2.cli import main
        sys.exit(main(sys.argv[1:]))
        """
    )
    result = subprocess.run([sys.executable, "-c", child, "classify", str(photos / "a_portrait.jpg"), "--model",
                             str(classifier), "--json"], capture_output=True, text=True, check=False,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["predictions"]


@pytest.mark.slow
def test_cli_agrees_with_transformers_end_to_end(photos, tmp_path):
    """transformers' own pipeline on the same files: its PIL processor on the path, its model, softmax /
    its post-processing, against the command line on a checkpoint transformers saved itself."""
    from conftest import require
    from reference import make_reference, save_reference

    torch = require("torch")
    transformers = require("transformers")
    transformers.logging.set_verbosity_error()
    settings = {"size": {"shortest_edge": 80}, "crop_size": {"height": 64, "width": 64}, "resample": 2}
    files = [photos / name for name in GOOD]
    for head, command in (("classification", "classify"), ("segmentation", "segment")):
        config = MobileViTV2Config(width_multiplier=0.5, image_size=64, num_labels=6, output_stride=16, aspp_out_channels=32)
        reference = make_reference(config, head, seed=3)
        folder = tmp_path / head
        save_reference(reference, folder)
        processor = transformers.MobileViTImageProcessorPil(**settings)
        processor.save_pretrained(str(folder))
        extra = ["--top-k", "6"] if command == "classify" else ["--out-dir", tmp_path / "masks"]
        result = run_cli(command, *files, "--model", folder, "--json", *extra)
        assert result.returncode == 0, result.stderr
        for record, path in zip(json.loads(result.stdout), files):
            crop = {} if command == "classify" else {"do_center_crop": False}  # segment labels the whole photo
            with torch.no_grad():
                logits = reference(**processor(str(path), return_tensors="pt", **crop)).logits
            if command == "classify":
                expected = torch.softmax(logits.double(), -1)[0].numpy()
                got = {p["index"]: p["score"] for p in record["predictions"]}
                assert np.abs(np.array([got[i] for i in range(6)]) - expected).max() < 1e-4
            else:
                size = Image.open(path).size[::-1]
                expected = processor.post_process_semantic_segmentation(Outputs(logits), target_sizes=[size])[0].numpy()
                assert np.mean(np.asarray(Image.open(record["labels"])) == expected) >= 0.999


class Outputs:
    def __init__(self, logits):
        self.logits = logits
