"""``python -m numpy_mvit2.generate``: generated checkpoints (random weights, never presented as pretrained),
and ``numpy_mvit2.demo``, which finds or makes them for the notebooks.

The command runs in a subprocess, as a user runs it. Small widths and inputs keep each case to a
second or two; the full-size checkpoints are what the notebooks and the README use.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import quick, require
from import_blocker import BLOCKER
from PIL import Image
from reference import relative_error

from numpy_mvit2 import (
    MobileViTImageProcessor,
    MobileViTV2Config,
    MobileViTV2ForImageClassification,
    MobileViTV2ForSemanticSegmentation,
    MobileViTV2Model,
)
from numpy_mvit2 import demo as demo_module
from numpy_mvit2.generate import (
    FILES,
    MARKER,
    GenerateError,
    generate_checkpoint,
    is_generated,
)

SMALL = ["--width", "0.5", "--image-size", "64"]


def generate(*args, env=None):
    return subprocess.run([sys.executable, "-m", "numpy_mvit2.generate", *map(str, args)], capture_output=True,
                          text=True, check=False, timeout=300, env={**os.environ, **(env or {})})


def pixels(seed=0, size=64):
    return np.random.default_rng(seed).uniform(0, 1, (1, 3, size, size)).astype(np.float32)


def leftovers(parent: Path) -> list[str]:
    """Staging or moved-aside folders the command leaves behind (it must leave none)."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_command_writes_a_checkpoint_that_says_it_is_random(tmp_path):
    folder = tmp_path / "mvit2-generated"
    result = generate(folder, *SMALL, "--seed", "3", "--num-labels", "5")
    assert result.returncode == 0, result.stderr
    assert "NOT pretrained" in result.stdout and "RANDOM" in result.stdout
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES)
    assert leftovers(tmp_path) == []

    config = json.loads((folder / "config.json").read_text())
    assert config[MARKER]["pretrained"] is False and config[MARKER]["seed"] == 3
    assert config["architectures"] == ["MobileViTV2ForImageClassification"]
    assert config["width_multiplier"] == 0.5 and config["image_size"] == 64 and len(config["id2label"]) == 5
    card = (folder / "README.md").read_text()
    assert "NOT pretrained" in card and "random" in card
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "np") as f:
        assert "NOT pretrained" in f.metadata()[MARKER]
        names = set(f.keys())
    # transformers' layout: batch norms unfolded, with num_batches_tracked as PyTorch saves them
    assert "mobilevitv2.conv_stem.normalization.running_var" in names
    assert "mobilevitv2.conv_stem.normalization.num_batches_tracked" in names
    processor = json.loads((folder / "preprocessor_config.json").read_text())
    assert processor["size"] == {"shortest_edge": 96} and processor["crop_size"] == {"height": 64, "width": 64}

    # the weights are Model(config, seed=3)'s, rounded to float32
    model = MobileViTV2ForImageClassification.from_pretrained(folder)
    assert is_generated(model.config)
    drawn = MobileViTV2ForImageClassification(MobileViTV2Config(width_multiplier=0.5, image_size=64, num_labels=5), seed=3)
    assert relative_error(model(pixels()).logits, drawn(pixels()).logits) <= 1e-5


@pytest.mark.parametrize("head, cls, architecture", [
    ("segmentation", MobileViTV2ForSemanticSegmentation, "MobileViTV2ForSemanticSegmentation"),
    ("base", MobileViTV2Model, "MobileViTV2Model"),
])
def test_other_heads(tmp_path, head, cls, architecture):
    result = generate(tmp_path / head, "--head", head, *SMALL)
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / head / "config.json").read_text())
    assert config["architectures"] == [architecture]
    model = cls.from_pretrained(tmp_path / head)
    if head == "segmentation":  # the VOC checkpoints' shape: 21 labels at output stride 16
        assert model.config.num_labels == 21 and model.config.output_stride == 16
        assert model(pixels()).logits.shape == (1, 21, 4, 4)
    else:
        assert model(pixels()).pooler_output.shape == (1, 256)


def test_existing_folders(tmp_path):
    """A non-empty folder is refused without --overwrite; with it, only a generated checkpoint is
    replaced; an empty folder is used; nothing is left behind either way."""
    folder = tmp_path / "checkpoint"
    assert generate(folder, *SMALL, "--seed", "1").returncode == 0
    weights = (folder / "model.safetensors").read_bytes()

    refused = generate(folder, *SMALL, "--seed", "2")
    assert refused.returncode == 1 and "--overwrite" in refused.stderr and "Traceback" not in refused.stderr
    assert (folder / "model.safetensors").read_bytes() == weights

    replaced = generate(folder, *SMALL, "--seed", "2", "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert json.loads((folder / "config.json").read_text())[MARKER]["seed"] == 2
    assert (folder / "model.safetensors").read_bytes() != weights

    mine = tmp_path / "my-photos"
    mine.mkdir()
    (mine / "cat.jpg").write_bytes(b"not generated")
    kept = generate(mine, *SMALL, "--overwrite")
    assert kept.returncode == 1 and "more than a generated checkpoint" in kept.stderr
    assert sorted(p.name for p in mine.iterdir()) == ["cat.jpg"]

    # a generated checkpoint with someone's files beside it, or its config.json a link: kept whole
    (folder / "notes.txt").write_text("mine")
    kept = generate(folder, *SMALL, "--overwrite")
    assert kept.returncode == 1 and (folder / "notes.txt").read_text() == "mine"
    (folder / "notes.txt").unlink()
    linked = tmp_path / "thesis"
    linked.mkdir()
    (linked / "thesis.tex").write_text("years of work")
    (linked / "config.json").symlink_to(folder / "config.json")
    assert generate(linked, *SMALL, "--overwrite").returncode == 1 and (linked / "thesis.tex").is_file()
    # the current folder (or one holding it) is never replaced
    here = subprocess.run([sys.executable, "-m", "numpy_mvit2.generate", ".", *SMALL, "--overwrite"], cwd=folder,
                          capture_output=True, text=True, timeout=600)
    assert here.returncode == 1 and "current folder" in here.stderr and "Traceback" not in here.stderr
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES)

    empty = tmp_path / "empty"
    empty.mkdir()
    assert generate(empty, *SMALL).returncode == 0 and (empty / "model.safetensors").is_file()

    (tmp_path / "a-file").write_text("x")
    not_a_folder = generate(tmp_path / "a-file", *SMALL, "--overwrite")
    assert not_a_folder.returncode == 1 and "not a folder" in not_a_folder.stderr
    assert leftovers(tmp_path) == []


def test_nothing_half_written(tmp_path, monkeypatch):
    """A failure while writing leaves no folder (or the old checkpoint, intact) and no staging folder."""
    def fail(self, folder):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(MobileViTImageProcessor, "save_pretrained", fail)
    with pytest.raises(OSError, match="simulated"):
        generate_checkpoint(tmp_path / "new", width=0.5, image_size=64)
    assert list(tmp_path.iterdir()) == []

    monkeypatch.undo()
    old = generate_checkpoint(tmp_path / "old", width=0.5, image_size=64, seed=1)
    before = {p.name: p.read_bytes() for p in old.iterdir()}
    monkeypatch.setattr(MobileViTImageProcessor, "save_pretrained", fail)
    with pytest.raises(OSError, match="simulated"):
        generate_checkpoint(old, width=0.5, image_size=64, seed=2, overwrite=True)
    assert {p.name: p.read_bytes() for p in old.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]
    with pytest.raises(GenerateError, match="not empty"):
        generate_checkpoint(old, width=0.5, image_size=64)


def test_usage_errors_and_help(tmp_path):
    assert generate(tmp_path / "x", "--width", "100").returncode == 2
    negative = generate(tmp_path / "x", "--seed", "-1")
    assert negative.returncode == 2 and "--seed" in negative.stderr and "Traceback" not in negative.stderr
    assert generate(tmp_path / "x", "--head", "base", "--num-labels", "3").returncode == 2
    assert not (tmp_path / "x").exists()
    shown = generate("--help")
    assert shown.returncode == 0
    for option in ("--head", "--width", "--seed", "--overwrite", "--random-norms", "NOT pretrained"):
        assert option in shown.stdout


def test_needs_no_torch(tmp_path):
    """The command runs where torch and transformers cannot be imported."""
    child = BLOCKER + textwrap.dedent(
        """
        from numpy_mvit2.generate import main
        code = main(sys.argv[1:])
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "timm"))
        assert not loaded, loaded
        sys.exit(code)
        """
    )
    result = subprocess.run([sys.executable, "-c", child, str(tmp_path / "c"), *SMALL, "--random-norms"],
                            capture_output=True, text=True, check=False, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "c" / "model.safetensors").is_file()


@pytest.mark.parametrize("head", quick(["classification", "segmentation"], 0))
def test_transformers_loads_it_and_agrees(tmp_path, head):
    """A generated checkpoint is what save_pretrained writes: transformers loads it strictly and
    computes what numpy_mvit2 computes (random norms, so the batch-norm paths count)."""
    torch = require("torch")
    transformers = require("transformers")
    folder = generate_checkpoint(tmp_path / head, head, width=0.5, image_size=64, random_norms=True)
    cls = {"classification": "MobileViTV2ForImageClassification", "segmentation": "MobileViTV2ForSemanticSegmentation"}[head]
    theirs, info = getattr(transformers, cls).from_pretrained(folder, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    ours = {"classification": MobileViTV2ForImageClassification,
            "segmentation": MobileViTV2ForSemanticSegmentation}[head].from_pretrained(folder)
    state = ours.state_dict()  # folded: the random statistics moved the biases away from zero
    assert np.abs(state["mobilevitv2.conv_stem.convolution.bias"]).max() > 0.05
    with torch.no_grad():
        expected = theirs.eval()(torch.from_numpy(pixels())).logits.numpy()
    assert relative_error(ours(pixels()).logits, expected) <= 2e-5


# --------------------------------------------------------------------------------------------
# numpy_mvit2.demo: the notebooks' preamble
# --------------------------------------------------------------------------------------------


@pytest.fixture
def no_real_checkpoints(monkeypatch, tmp_path):
    """No real checkpoint to find: the variables unset, an empty Hugging Face cache."""
    for task in demo_module.TASKS.values():
        monkeypatch.delenv(task.variable, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("NUMPY_MVIT2_GENERATED_DIR", str(tmp_path / "generated"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def photo():
    y, x = np.mgrid[0:90, 0:70]
    return Image.fromarray(np.stack([x * 3, y * 2, (x + y) % 256], -1).astype(np.uint8))


@pytest.mark.slow  # two full-size checkpoints generated and loaded
def test_load_demo_makes_the_generated_checkpoint_once(no_real_checkpoints, tmp_path, capsys):
    demo = demo_module.load_demo("classification", image=photo())
    assert not demo.pretrained and "NOT pretrained" in capsys.readouterr().out
    assert demo.checkpoint == tmp_path / "generated" / "classification-1.0-seed0"
    assert demo.pixel_values.shape == (1, 3, 256, 256) and demo.rgb.shape == (256, 256, 3) and demo.rgb.dtype == np.uint8
    np.testing.assert_array_equal(demo.rgb, demo.pixel_values[0, ::-1].transpose(1, 2, 0) * 255)  # the same crop, in RGB
    assert "HF_HUB_OFFLINE" not in os.environ  # set only while a real checkpoint is looked up
    made = (demo.checkpoint / "model.safetensors").stat().st_mtime_ns

    again = demo_module.load_demo("classification", image=photo(), quiet=True)
    assert again.checkpoint == demo.checkpoint and (demo.checkpoint / "model.safetensors").stat().st_mtime_ns == made
    np.testing.assert_array_equal(again.model(again.pixel_values).logits, demo.model(demo.pixel_values).logits)

    with open(demo.checkpoint / "model.safetensors", "r+b") as f:  # a damaged copy is made again
        f.truncate(1000)
    repaired = demo_module.load_demo("classification", image=photo(), quiet=True)
    np.testing.assert_array_equal(repaired.model(repaired.pixel_values).logits, demo.model(demo.pixel_values).logits)

    segmentation = demo_module.load_demo("segmentation", image=photo(), quiet=True)
    assert segmentation.pixel_values.shape == (1, 3, 512, 512) and not segmentation.pretrained


def test_a_generated_checkpoint_counts_as_generated_wherever_it_is(no_real_checkpoints, tmp_path, monkeypatch, capsys):
    """Named by NUMPY_MVIT2_IMAGENET_CHECKPOINT, a generated checkpoint is still said to be random."""
    folder = generate_checkpoint(tmp_path / "named", width=0.5, image_size=64)
    monkeypatch.setenv("NUMPY_MVIT2_IMAGENET_CHECKPOINT", str(folder))
    demo = demo_module.load_demo("classification", image=photo())
    assert demo.checkpoint == folder and not demo.pretrained
    assert "NOT pretrained" in capsys.readouterr().out
    assert demo.pixel_values.shape == (1, 3, 64, 64)
    assert not (tmp_path / "generated").exists()  # found, so nothing was generated


def test_a_real_checkpoint_folder_is_used(no_real_checkpoints, tmp_path, monkeypatch, capsys):
    """A folder without the generated marker is a real checkpoint: used, and said to be pretrained;
    without a preprocessor_config.json its settings come from the config."""
    model = MobileViTV2ForSemanticSegmentation(MobileViTV2Config(width_multiplier=0.5, image_size=64), seed=4)
    folder = tmp_path / "real"
    model.config.save_pretrained(folder)
    from safetensors.numpy import save_file

    save_file(model.state_dict(), str(folder / "model.safetensors"))
    monkeypatch.setenv("NUMPY_MVIT2_VOC_CHECKPOINT", str(folder))
    demo = demo_module.load_demo("segmentation", image=photo())
    assert demo.pretrained and demo.checkpoint == folder and "pretrained, from" in capsys.readouterr().out
    assert "for_model_config" in demo.processor_from and demo.pixel_values.shape == (1, 3, 64, 64)
