"""``numpy-mvit2 finetune`` and ``numpy_mvit2.finetune``, end to end.

- The command on small generated image folders (classification and segmentation): the per-epoch
  lines, ``log.jsonl``, ``curves.png``, broken images named and skipped, and the checkpoint in
  ``--out``, which transformers' ``from_pretrained`` loads (``id2label`` from the folder names) and
  runs to our logits.
- ``--resume`` after a SIGINT in the middle of an epoch: status 130, the epochs done kept, and the
  resumed run ending with the uninterrupted run's parameters, optimizer state and log, bit for bit.
- Bad arguments: one clear line and status 2, nothing written.
- A linear probe (``--freeze-backbone``): the backbone, running statistics included, unchanged;
  ``head_value_and_grad`` is ``value_and_grad``'s head part.
- Learning: on a learnable generated folder, the validation top-1 the command reaches against
  transformers + ``torch.optim.AdamW`` trained with the same recipe on the same batches
  (``torch_finetune``): within 5 points.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import require
from PIL import Image
from torch_finetune import class_images, torch_finetune

from numpy_mvit2 import (
    MobileViTImageProcessor,
    MobileViTV2ForImageClassification,
    MobileViTV2ForSemanticSegmentation,
)
from numpy_mvit2.finetune import Recipe, start
from numpy_mvit2.generate import generate_checkpoint
from numpy_mvit2.training import head_value_and_grad, value_and_grad
from numpy_mvit2.weights.files import read_safetensors

CHECKPOINT = ("model.safetensors", "config.json", "preprocessor_config.json")


def run_cli(*args, timeout=600):
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    environment.pop("NUMPY_MVIT2_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "numpy_mvit2", "finetune", *map(str, args)], capture_output=True,
                          text=True, check=False, env=environment, timeout=timeout)


def processor(size=64):
    return MobileViTImageProcessor(size={"shortest_edge": size + size // 8}, crop_size=size, resample="bilinear")


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """A generated width-0.5 classifier with 1000 labels (random weights, not pretrained)."""
    return generate_checkpoint(tmp_path_factory.mktemp("base") / "cls", "classification", width=0.5, seed=1,
                               image_size=64, processor=processor())


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    return generate_checkpoint(tmp_path_factory.mktemp("base") / "seg", "segmentation", width=0.5, seed=2,
                               image_size=64, output_stride=16, aspp_out_channels=32, processor=processor())


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Three classes of 8 images, and one broken file."""
    root = class_images(tmp_path_factory.mktemp("data") / "flat", 3, 8, seed=0)
    (root / "class_1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


def segmentation_folder(root: Path, count: int, seed: int = 0, size=(60, 52)) -> Path:
    """``images/`` and palette ``masks/``: background 0, a rectangle of class 1 or 2 (its colour
    telling which), its border 255 (ignored)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    width, height = size
    for i in range(count):
        pixels = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
        mask = np.zeros((height, width), np.uint8)
        k = 1 + i % 2
        x, y = rng.integers(0, width // 2), rng.integers(0, height // 2)
        pixels[y:y + height // 2, x:x + width // 2, k] = 220
        mask[y:y + height // 2, x:x + width // 2] = k
        mask[y, x:x + width // 2] = 255
        Image.fromarray(pixels).save(root / "images" / f"{i:03d}.jpg", quality=95)
        palette = Image.fromarray(mask, mode="P")
        palette.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [224, 224, 192] * 253)
        palette.save(root / "masks" / f"{i:03d}.png")
    (root / "classes.txt").write_text("background\nred thing\ngreen thing\n")
    return root


def assert_usage_error(result, *words):
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr
    lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert lines, result.stderr
    for word in words:
        assert word in result.stderr, (word, result.stderr)


def log_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def torch_logits(cls_name, out: Path, pixels):
    torch = require("torch")
    transformers = require("transformers")
    model = getattr(transformers, cls_name).from_pretrained(str(out)).eval()
    with torch.no_grad():
        return model, model(torch.from_numpy(pixels)).logits.numpy()


def test_classification_end_to_end(classifier, folder, tmp_path):
    out = tmp_path / "out"
    result = run_cli(folder, "--model", classifier, "--out", out, "--epochs", "2", "--batch-size", "4",
                     "--lr", "1e-3", "--val-fraction", "0.25", "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"], result.stdout
    assert "val top-1" in lines[0] and "train loss" in lines[0]
    assert "broken.png" in result.stderr and "skipped" in result.stderr  # named, and the run went on
    assert sorted(p.name for p in out.iterdir()) == sorted([*CHECKPOINT, "resume.safetensors", "log.jsonl", "curves.png"])

    log = log_of(out)
    assert [r["epoch"] for r in log] == [1, 2]
    for record in log:
        assert {"train_loss", "val_loss", "val_top1", "lr", "steps", "seconds"} <= set(record)
        assert np.isfinite(record["train_loss"]) and 0 <= record["val_top1"] <= 1
    assert log[1]["steps"] == 2 * log[0]["steps"]
    with Image.open(out / "curves.png") as plot:
        assert plot.format == "PNG" and plot.width >= 400 and plot.height >= 200
        assert len(np.unique(np.asarray(plot.convert("L")))) > 2  # lines drawn, not a blank picture

    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "class_0", "1": "class_1", "2": "class_2"}
    assert config["architectures"] == ["MobileViTV2ForImageClassification"]
    ours = MobileViTV2ForImageClassification.from_pretrained(out)
    pixels = MobileViTImageProcessor.from_pretrained(out)(
        [Image.open(p) for p in sorted((folder / "class_2").glob("00*.png"))[:3]], return_tensors="np")["pixel_values"]
    model, theirs = torch_logits("MobileViTV2ForImageClassification", out, pixels)
    assert model.config.id2label == {0: "class_0", 1: "class_1", 2: "class_2"}
    np.testing.assert_allclose(ours(pixels).logits, theirs, atol=1e-4 * max(1.0, np.abs(theirs).max()))
    # the backbone was trained: not the base's any more
    base = MobileViTV2ForImageClassification.from_pretrained(classifier, fold_batch_norm=False)
    weights = read_safetensors(out / "model.safetensors")
    name = "mobilevitv2.conv_stem.convolution.weight"
    assert not np.array_equal(weights[name], base.state_dict()[name])


def test_segmentation_end_to_end(segmenter, tmp_path):
    data = segmentation_folder(tmp_path / "voc", 10)
    Image.new("RGB", (60, 52)).save(data / "images" / "no_mask.jpg")  # a photo without a mask: named
    out = tmp_path / "out"
    result = run_cli(data, "--task", "segmentation", "--model", segmenter, "--out", out, "--epochs", "1",
                     "--batch-size", "3", "--val-fraction", "0.3", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "no_mask.jpg" in result.stderr
    (record,) = log_of(out)
    assert 0 <= record["val_miou"] <= 1 and np.isfinite(record["val_loss"])
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "background", "1": "red thing", "2": "green thing"}
    pixels = MobileViTImageProcessor.from_pretrained(out)(Image.open(data / "images" / "000.jpg"),
                                                          return_tensors="np")["pixel_values"]
    ours = MobileViTV2ForSemanticSegmentation.from_pretrained(out)(pixels).logits
    _, theirs = torch_logits("MobileViTV2ForSemanticSegmentation", out, pixels)
    assert ours.shape == theirs.shape == (1, 3, 4, 4)
    np.testing.assert_allclose(ours, theirs, atol=1e-4 * max(1.0, np.abs(theirs).max()))


class StderrWatch:
    """Reads a process's stderr on a thread; ``wait_for(text)`` waits (with a deadline) until it
    has appeared."""

    def __init__(self, process):
        self.text, self.changed = "", threading.Condition()
        self.thread = threading.Thread(target=self._read, args=(process.stderr,), daemon=True)
        self.thread.start()

    def _read(self, stream):
        for chunk in iter(lambda: stream.read1(4096) if hasattr(stream, "read1") else stream.read(1), b""):
            with self.changed:
                self.text += chunk.decode(errors="replace")
                self.changed.notify_all()

    def wait_for(self, predicate, timeout=600.0):
        with self.changed:
            assert self.changed.wait_for(lambda: predicate(self.text), timeout=timeout), self.text[-2000:]


def _progress_in_epoch(text: str, epoch: int, total: int) -> bool:
    # tqdm's bar "epoch 2/3:  40%|...| 2/5 [...]" after at least one batch of that epoch
    import re

    return re.search(rf"epoch {epoch}/{total}:\s+\d+%\|[^|]*\| [1-9]\d*/\d+", text) is not None


def test_resume_after_sigint_in_an_epoch_ends_as_the_uninterrupted_run(classifier, folder, tmp_path):
    args = [folder, "--model", classifier, "--epochs", "3", "--batch-size", "3", "--lr", "2e-3", "--seed", "5",
            "--val-fraction", "0.25"]
    whole, parted = tmp_path / "whole", tmp_path / "parted"
    assert run_cli(*args, "--out", whole, "--quiet").returncode == 0

    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "numpy_mvit2", "finetune", *map(str, args), "--out", str(parted)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environment)
    try:
        watch = StderrWatch(process)
        watch.wait_for(lambda text: _progress_in_epoch(text, 2, 3))
        process.send_signal(signal.SIGINT)
        process.wait(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    watch.thread.join(timeout=60)
    assert process.returncode == 130, watch.text[-2000:]
    assert "epoch 1 is saved" in watch.text and "--resume" in watch.text and "Traceback" not in watch.text
    assert [r["epoch"] for r in log_of(parted)] == [1]
    assert not [p for p in parted.iterdir() if p.name.startswith(".")]  # no temporary file left

    result = run_cli(folder, "--out", parted, "--resume", "--quiet")
    assert result.returncode == 0, result.stderr
    for name in ("model.safetensors", "resume.safetensors"):
        ours, theirs = read_safetensors(parted / name), read_safetensors(whole / name)
        assert set(ours) == set(theirs)
        for key in theirs:
            assert np.array_equal(ours[key], theirs[key]), (name, key)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in log_of(whole)]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in log_of(parted)] == strip
    assert json.loads((parted / "config.json").read_text())["id2label"] == json.loads((whole / "config.json").read_text())["id2label"]

    # once finished, --resume has nothing left to do, and says the run is complete without changing it
    before = (parted / "model.safetensors").read_bytes()
    again = run_cli(folder, "--out", parted, "--resume", "--quiet")
    assert again.returncode == 0, again.stderr
    assert (parted / "model.safetensors").read_bytes() == before


def test_bad_arguments_exit_2_with_a_clear_message(classifier, folder, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    one = tmp_path / "one"
    class_images(one, 1, 4)
    out = tmp_path / "out"
    base = ["--model", classifier, "--out", out]
    assert_usage_error(run_cli(empty, *base), str(empty))
    assert_usage_error(run_cli(one, *base), "class")
    assert_usage_error(run_cli(tmp_path / "missing", *base), "missing")
    assert_usage_error(run_cli(folder, *base, "--task", "detection"), "--task", "detection")
    assert_usage_error(run_cli(folder, *base, "--epochs", "0"), "--epochs")
    assert_usage_error(run_cli(folder, *base, "--lr", "nan"), "--lr")
    assert_usage_error(run_cli(folder, *base, "--optimizer", "lamb"), "--optimizer")
    assert_usage_error(run_cli(folder, *base, "--image-size", "8"), "image")
    assert_usage_error(run_cli(folder, *base, "--min-crop", "0"), "min_crop")
    assert_usage_error(run_cli(folder, "--model", classifier), "--out")
    assert_usage_error(run_cli(folder, *base, "--resume"), "resume")  # nothing saved there yet
    assert not out.exists()  # nothing written by a refused run

    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert_usage_error(run_cli(folder, *base), "not overwritten")
    assert (out / "notes.txt").read_text() == "mine" and sorted(p.name for p in out.iterdir()) == ["notes.txt"]

    done = tmp_path / "done"
    assert run_cli(folder, "--model", classifier, "--out", done, "--epochs", "1", "--batch-size", "8", "--quiet").returncode == 0
    assert_usage_error(run_cli(folder, "--out", done, "--resume", "--lr", "0.1"), "lr")
    assert_usage_error(run_cli(folder, *base[:2], "--out", done), "--resume")  # a run there: not started over
    other = class_images(tmp_path / "other", 2, 4)
    assert_usage_error(run_cli(other, "--out", done, "--resume"), "not the data")
    assert_usage_error(run_cli(folder, *base[:2], "--out", folder / "class_0" / "000.png" / "out"), "cannot write")


def _rewrite_resume_state(path: Path, change) -> None:
    from safetensors import safe_open
    from safetensors.numpy import save_file

    with safe_open(str(path), framework="numpy") as f:
        state = json.loads(f.metadata()["numpy_mvit2_finetune"])
    tensors = read_safetensors(path)
    change(state, tensors)
    save_file(tensors, str(path), metadata={"numpy_mvit2_finetune": json.dumps(state)})


@pytest.mark.parametrize("change, words", [
    (lambda s, t: s.update(recipe={**s["recipe"], "mystery": 1}), "mystery"),
    (lambda s, t: s.update(config={"hidden_act": 7}), "resume.safetensors"),
    (lambda s, t: s.update(history=[{"epoch": 3}]), "history"),
    (lambda s, t: s["optimizer_groups"][0].update(lr="fast"), "lr"),
    (lambda s, t: s.update(schedule={"last_step": -4}), "last_step"),
    (lambda s, t: t.pop(next(k for k in t if k.startswith("param/mobilevitv2."))), "resume.safetensors"),
    (lambda s, t: s.pop("classes"), "classes"),
], ids=["recipe", "config", "history", "groups", "schedule", "tensor", "classes"])
def test_a_broken_resume_state_is_named(classifier, folder, tmp_path_factory, change, words):
    out = tmp_path_factory.mktemp("broken") / "run"
    run = start(folder, MobileViTV2ForImageClassification.from_pretrained(classifier, fold_batch_norm=False),
                MobileViTImageProcessor.from_pretrained(classifier), out, Recipe(epochs=2, batch_size=8), quiet=True)
    run.train_epoch()
    run.history.append({"epoch": 1, "train_loss": 1.0, "val_loss": None, "val_top1": None})
    run.save()
    _rewrite_resume_state(out / "resume.safetensors", change)
    assert_usage_error(run_cli(folder, "--out", out, "--resume"), words)


def test_a_linear_probe_moves_the_head_alone(classifier, folder, tmp_path):
    base = MobileViTV2ForImageClassification.from_pretrained(classifier, fold_batch_norm=False)
    run = start(folder, base, MobileViTImageProcessor.from_pretrained(classifier), tmp_path / "probe",
                Recipe(epochs=1, batch_size=4, lr=1e-2, freeze_backbone=True), quiet=True)
    before = {k: v.copy() for k, v in run.model.state_dict().items()}
    run.fit()
    after = run.model.state_dict()
    backbone = [k for k in before if k.startswith("mobilevitv2.")]
    assert any(k.endswith("running_mean") for k in backbone)
    for name in backbone:  # parameters and running statistics alike
        assert np.array_equal(after[name], before[name]), name
    assert not np.array_equal(after["classifier.weight"], before["classifier.weight"])
    for name in backbone:
        assert np.array_equal(after[name], base.state_dict()[name].astype(np.float32)), name


@pytest.mark.parametrize("head", ["classification", "segmentation"])
def test_head_value_and_grad_is_the_head_part_of_value_and_grad(head, classifier, segmenter):
    cls = {"classification": MobileViTV2ForImageClassification, "segmentation": MobileViTV2ForSemanticSegmentation}[head]
    model = cls.from_pretrained(classifier if head == "classification" else segmenter, fold_batch_norm=False,
                                dtype=np.float64)
    rng = np.random.default_rng(0)
    pixels = rng.uniform(-1, 1, (2, 3, 64, 64))
    classes = model.config.num_labels
    labels = rng.integers(0, classes, 2) if head == "classification" else rng.integers(0, classes, (2, 64, 64))
    loss, grads = value_and_grad(model, pixels, labels)
    features = model(pixels, output_hidden_states=True).hidden_states[-1]
    head_loss, head_grads = head_value_and_grad(model, features, labels)
    assert np.isclose(head_loss, loss, rtol=1e-12)
    assert set(head_grads) == {k for k in grads if not k.startswith("mobilevitv2.")} and head_grads
    for name, grad in head_grads.items():
        np.testing.assert_allclose(grad, grads[name], rtol=1e-9, atol=1e-12 * np.abs(grads[name]).max(), err_msg=name)


@pytest.mark.slow
def test_learns_as_transformers_and_torch_adamw_do(classifier, tmp_path):
    """The same recipe, data and epochs: our validation top-1 within 5 points of PyTorch's."""
    data = class_images(tmp_path / "data", 3, 30, seed=1)
    recipe = dict(epochs=6, batch_size=8, lr=3e-3, val_fraction=0.3, seed=0)
    out = tmp_path / "out"
    result = run_cli(data, "--model", classifier, "--out", out, "--epochs", recipe["epochs"], "--batch-size",
                     recipe["batch_size"], "--lr", recipe["lr"], "--val-fraction", recipe["val_fraction"], "--quiet")
    assert result.returncode == 0, result.stderr
    ours = log_of(out)
    theirs = torch_finetune(data, classifier, Recipe(**recipe))
    assert theirs[-1]["val_top1"] >= 0.6, theirs  # the folder is learnable in these epochs
    assert abs(ours[-1]["val_top1"] - theirs[-1]["val_top1"]) <= 0.05, (ours, theirs)
    assert abs(ours[-1]["train_loss"] - theirs[-1]["train_loss"]) <= 0.5 * max(theirs[-1]["train_loss"], 0.05), (ours, theirs)


def test_recipe_settings_are_checked_and_a_one_step_run_has_no_warmup(classifier, folder, tmp_path):
    from numpy_mvit2.finetune import FinetuneError

    for bad in (dict(epochs=True), dict(max_grad_norm="x"), dict(flip="no"), dict(lr=float("inf")), dict(min_crop=1.5),
                dict(warmup=1.0), dict(seed=-1), dict(image_size=16), dict(task="detection")):
        with pytest.raises(FinetuneError):
            Recipe(**bad).check()
    base = MobileViTV2ForImageClassification.from_pretrained(classifier, fold_batch_norm=False)
    run = start(folder, base, MobileViTImageProcessor.from_pretrained(classifier), tmp_path / "one",
                Recipe(epochs=1, batch_size=64, warmup=0.9, flip=False, min_crop=0.5), quiet=True)
    assert run.steps_per_epoch == 1 and run.schedule.get_last_lr()[0] == run.recipe.lr  # the one step at the peak
    (record,) = run.fit()
    assert record["lr"] == run.recipe.lr


def test_no_validation_images_and_crops_on_ignored_pixels_alone(classifier, segmenter, tmp_path):
    data = tmp_path / "split"
    class_images(data / "train", 2, 5)
    (data / "val" / "class_0").mkdir(parents=True)
    (data / "val" / "class_1").mkdir()
    result = run_cli(data, "--model", classifier, "--out", tmp_path / "out", "--epochs", "1", "--batch-size", "4", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "no validation images" in result.stdout
    (record,) = log_of(tmp_path / "out")
    assert record["val_loss"] is None and record["val_top1"] is None

    voc = segmentation_folder(tmp_path / "voc", 6)
    void = np.full((52, 60), 255, np.uint8)  # a frame all ignored, in a batch of its own
    for i in range(2):
        Image.new("RGB", (60, 52)).save(voc / "images" / f"void{i}.jpg")
        palette = Image.fromarray(void, mode="P")
        palette.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [224, 224, 192] * 253)
        palette.save(voc / "masks" / f"void{i}.png")
    base = MobileViTV2ForSemanticSegmentation.from_pretrained(segmenter, fold_batch_norm=False)
    run = start(voc, base, MobileViTImageProcessor.from_pretrained(segmenter), tmp_path / "seg",
                Recipe(task="segmentation", epochs=1, batch_size=2, val_fraction=0.25), quiet=True)
    (record,) = run.fit()
    assert np.isfinite(record["train_loss"]) and (record["val_loss"] is None or np.isfinite(record["val_loss"]))
