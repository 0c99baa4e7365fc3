"""``numpy_mvit2.crosscheck``: the layer-by-layer comparison with transformers finds the layer
where the two models part, and only that one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import quick, require
from reference import OURS, make_reference, save_reference

torch = require("torch")
transformers = require("transformers")

from numpy_mvit2 import (
    MobileViTV2Config,
    MobileViTV2ForImageClassification,
)
from numpy_mvit2.crosscheck import crosscheck, layer_names, reference_trace, trace

CONFIG = {"width_multiplier": 0.5, "num_labels": 4, "aspp_out_channels": 32, "n_attn_blocks": [2, 2, 2]}
SIZE = {"height": 64, "width": 96}
PERTURBED = "encoder.layer.3.transformer.layer.1.ffn"  # stage 4, second transformer layer, its FFN


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    config = MobileViTV2Config(**CONFIG)
    out = {}
    for head in OURS:
        folder = tmp_path_factory.mktemp(head)
        save_reference(make_reference(config, head, seed=3), folder)
        out[head] = folder
    return out


def pair(folders, head="classification"):
    ours = OURS[head].from_pretrained(folders[head], dtype=np.float64)
    theirs = getattr(transformers, type(ours).__name__).from_pretrained(str(folders[head])).eval()
    return ours, theirs


@pytest.mark.parametrize("head", quick(sorted(OURS), 1))  # (classification in the quick subset)
def test_clean_checkpoint_passes(folders, head):
    report = crosscheck(checkpoint=folders[head], **SIZE)
    assert report.head == head
    assert report.passed and report.first_divergence is None
    assert report.dtypes == ("float32", "float64")
    names = [name for name, _ in layer_names(MobileViTV2Config(**CONFIG), head)]
    assert [r["layer"] for r in report.rows[:-1]] == names
    assert report.rows[-1]["layer"].startswith("output (")
    assert report.max_error("float32") < 2e-5
    assert report.max_error("float64") < 1e-12
    text = str(report)
    assert "no layer diverges" in text and "encoder.layer.4.conv_projection" in text


def test_layer_names_cover_every_module_kind():
    names = dict(layer_names(MobileViTV2Config(**CONFIG), "classification"))
    assert next(iter(names)) == "conv_stem" and names["conv_stem"] == "stem"
    for stage in (2, 3, 4):
        for part in ("downsampling_layer", "conv_kxk", "conv_1x1", "transformer.layer.1", "transformer.layer.1.attention",
                     "transformer.layer.1.ffn", "layernorm", "fold", "conv_projection"):
            assert names[f"encoder.layer.{stage}.{part}"] == f"stage {stage + 1}"
    assert names["classifier"] == "head"


@pytest.mark.slow
def test_perturbed_weight_is_reported_at_its_layer(folders):
    ours, theirs = pair(folders)
    weight = ours.params["mobilevitv2"]["encoder"]["layer"][3]["transformer"]["layer"][1]["ffn"]["conv1"]["convolution"]["weight"]
    weight *= 1.05
    report = crosscheck(ours, theirs, **SIZE)
    assert report.first_divergence == PERTURBED
    index = [r["layer"] for r in report.rows].index(PERTURBED)
    assert not any(r["diverged"] for r in report.rows[:index])
    assert all(r["diverged"] for r in report.rows[index:])  # everything downstream inherits it
    for dt in ("float32", "float64"):
        assert report.row(PERTURBED)[f"rel_{dt}"] > 1e-3
        assert report.row("encoder.layer.3.transformer.layer.1.attention")[f"rel_{dt}"] <= report.tolerance[dt]
    assert f"first divergence: {PERTURBED}" in str(report)


@pytest.mark.slow
def test_tiny_perturbation_found_by_float64(folders):
    """One weight changed in its 8th digit: invisible in float32, located exactly in float64."""
    ours, theirs = pair(folders)
    ours.params["mobilevitv2"]["encoder"]["layer"][3]["transformer"]["layer"][1]["ffn"]["conv2"]["convolution"]["weight"][0, 0] *= 1 + 1e-7
    report = crosscheck(ours, theirs, **SIZE)
    assert report.first_divergence == PERTURBED
    assert all(r["rel_float32"] <= report.tolerance["float32"] for r in report.rows)


@pytest.mark.slow
def test_perturbed_reference_is_reported_too(folders):
    """A change on the PyTorch side (a batch-norm statistic of stage 3's k x k conv) is found as well."""
    ours, theirs = pair(folders)
    with torch.no_grad():
        theirs.mobilevitv2.encoder.layer[2].conv_kxk.normalization.running_var[5] *= 1.5
    report = crosscheck(ours, theirs, **SIZE)
    assert report.first_divergence == "encoder.layer.2.conv_kxk"


@pytest.mark.slow
def test_models_are_not_modified(folders):
    ours, theirs = pair(folders)
    before = {k: v.clone() for k, v in theirs.state_dict().items()}
    ours_before = {k: v.copy() for k, v in ours.state_dict().items()}
    crosscheck(ours, theirs, **SIZE)
    assert all(v.dtype == torch.float32 for v in theirs.state_dict().values() if v.is_floating_point())
    assert all(torch.equal(before[k], v) for k, v in theirs.state_dict().items())
    assert all(np.array_equal(ours_before[k], v) for k, v in ours.state_dict().items())
    assert ours.dtype == np.float64


@pytest.mark.slow
def test_float32_folded_model_leaves_out_float64(folders):
    ours = MobileViTV2ForImageClassification.from_pretrained(folders["classification"])
    theirs = transformers.MobileViTV2ForImageClassification.from_pretrained(str(folders["classification"])).eval()
    report = crosscheck(ours, theirs, **SIZE)
    assert report.dtypes == ("float32",) and report.passed
    assert "float64 left out" in report.summary()
    unfolded = MobileViTV2ForImageClassification.from_pretrained(folders["classification"], fold_batch_norm=False)
    report = crosscheck(unfolded, theirs, **SIZE)
    assert report.dtypes == ("float32", "float64") and report.passed


@pytest.mark.slow
def test_trace_agrees_with_the_model(folders):
    """The instrumented re-run is the model: its stage outputs are the reference path's hidden
    states exactly (it composes the same blocks functions), and the fast path's to float32 round-off."""
    for head, model_class in OURS.items():
        model = model_class.from_pretrained(folders[head])
        x = np.random.default_rng(0).uniform(0, 1, (2, 3, 64, 96)).astype(np.float32)
        traced = trace(model, x)
        fast_hidden = model(x, output_hidden_states=True).hidden_states
        model.fast = False
        hidden = model(x, output_hidden_states=True).hidden_states
        for spec, h, f in zip(model.config.stages, hidden, fast_hidden):
            last = f"layer.{spec.num_blocks - 1}" if spec.kind == "mobilenet" else "conv_projection"
            np.testing.assert_array_equal(traced[f"encoder.layer.{spec.index}.{last}"], h)
            assert np.abs(f - h).max() <= 2e-5 * (1 + np.abs(h).max())


def test_reference_trace_without_our_config(folders):
    theirs = transformers.MobileViTV2ForSemanticSegmentation.from_pretrained(str(folders["segmentation"])).eval()
    x = np.zeros((1, 3, 64, 64), np.float32)
    recorded = reference_trace(theirs, x)
    assert list(recorded) == [name for name, _ in layer_names(MobileViTV2Config(**CONFIG), "segmentation")]
    assert recorded["encoder.layer.2.fold"].shape == recorded["encoder.layer.2.conv_1x1"].shape


def test_bad_arguments(folders):
    ours, _ = pair(folders, "classification")
    _, theirs_seg = pair(folders, "segmentation")
    with pytest.raises(TypeError, match="MobileViTV2ForSemanticSegmentation"):
        crosscheck(ours, theirs_seg)
    with pytest.raises(TypeError, match="PyTorch"):
        crosscheck(ours, ours)
    with pytest.raises(ValueError, match="both"):
        crosscheck(ours)
    with pytest.raises(ValueError, match="either"):
        crosscheck(ours, theirs_seg, checkpoint=folders["classification"])


def test_importing_crosscheck_does_not_import_torch():
    """The module imports without PyTorch; calling it without PyTorch says what to install."""
    code = (
        "import importlib.abc, sys\n"
        "class Blocker(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'transformers'):\n"
        "            raise ImportError(name + ' is blocked')\n"
        "sys.meta_path.insert(0, Blocker())\n"
        "import numpy_mvit2, numpy_mvit2.crosscheck\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
        "try:\n"
        "    numpy_mvit2.crosscheck.crosscheck(checkpoint='nowhere')\n"
        "except ImportError as e:\n"
        "    assert 'pip install torch transformers' in str(e), e\n"
        "else:\n"
        "    raise SystemExit('no ImportError')\n"
    )
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, env={"PYTHONPATH": str(root), "PATH": ""})
