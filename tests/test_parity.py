"""Whole-model parity with transformers' MobileViTV2 in PyTorch.

Each case writes a randomized transformers checkpoint to disk (``save_pretrained``), loads it with
``numpy_mvit2``'s ``from_pretrained``, runs both on the same array and compares logits, pooled
output and every hidden state on the bar's measure ``max|ours - torch| / (1 + max|torch|)``.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import quick, require
from reference import OURS, make_reference, relative_error, run_reference, save_reference

torch = require("torch")
transformers = require("transformers")

from numpy_mvit2 import (  # noqa: E402
    MobileViTV2Config,
    MobileViTV2ForImageClassification,
    MobileViTV2Model,
)

FLOAT32_BAR = 2e-5
FLOAT64_BAR = 1e-10


def pixels(batch, height, width, channels=3, seed=0):
    return np.random.default_rng(seed).uniform(-1.5, 1.5, size=(batch, channels, height, width)).astype(np.float32)


def load_pair(tmp_path, config, head, seed=0, dtype=np.float32, fast=True):
    ref = make_reference(config, head, seed=seed)
    save_reference(ref, tmp_path)
    ours = OURS[head].from_pretrained(tmp_path, dtype=dtype, fast=fast)
    if dtype == np.float64:
        ref = ref.double()
    return ours, ref


def compare_outputs(ours, ref, head, bar):
    """Every array field of the two outputs, and each hidden state, within ``bar``."""
    errors = {}
    fields = {"base": ["last_hidden_state", "pooler_output"], "classification": ["logits"], "segmentation": ["logits"]}[head]
    for name in fields:
        errors[name] = relative_error(getattr(ours, name), getattr(ref, name))
    assert len(ours.hidden_states) == len(ref.hidden_states) == 5
    for i, (a, b) in enumerate(zip(ours.hidden_states, ref.hidden_states)):
        errors[f"hidden_states[{i}]"] = relative_error(a, b)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= bar, f"{worst}: {errors[worst]:.3g} > {bar} (all: {errors})"
    return errors


# width, head, output_stride, batch, height, width (pixels), extra config
CASES = [
    (0.5, "classification", 32, 3, 64, 64, {}),
    (1.0, "classification", 32, 1, 256, 256, {}),
    (1.5, "segmentation", 16, 1, 96, 160, {}),
    (2.0, "base", 32, 1, 100, 70, {}),  # not divisible by 32: odd feature maps, patches that don't tile
    (1.0, "segmentation", 8, 3, 64, 48, {}),
    (0.75, "segmentation", 32, 1, 33, 47, {}),
    (0.5, "base", 16, 3, 72, 120, {}),
    (1.0, "classification", 8, 1, 80, 80, {"num_labels": 7}),
    (0.5, "classification", 32, 1, 96, 64, {"num_channels": 1}),
    (0.5, "segmentation", 16, 1, 64, 64, {"num_channels": 4, "num_labels": 3, "atrous_rates": [2, 3, 5], "aspp_out_channels": 64}),
    (0.5, "classification", 32, 1, 128, 128, {"hidden_act": "gelu", "patch_size": 3, "conv_kernel_size": 5}),
    (0.5, "base", 32, 1, 64, 96, {"n_attn_blocks": [1, 2, 1], "base_attn_unit_dims": [64, 96, 160], "ffn_multiplier": 3, "expand_ratio": 3.0}),
]


PATHS = pytest.mark.parametrize("fast", [True, pytest.param(False, marks=pytest.mark.slow)], ids=["fast", "reference"])
"""model.fast: both paths (the quick subset: the fast path, which test_fast.py checks against the reference path)."""


@PATHS
@pytest.mark.parametrize("width,head,output_stride,batch,height,image_width,extra", quick(CASES, 0, 5, 6))  # one per head
def test_float32_parity(tmp_path, width, head, output_stride, batch, height, image_width, extra, fast):
    config = MobileViTV2Config(width_multiplier=width, output_stride=output_stride, **extra)
    ours, ref = load_pair(tmp_path, config, head, seed=int(width * 10) + output_stride, fast=fast)
    x = pixels(batch, height, image_width, channels=config.num_channels)
    out = ours(x, output_hidden_states=True)
    expected = run_reference(ref, x, output_hidden_states=True)
    assert out[0].dtype == np.float32
    compare_outputs(out, expected, head, FLOAT32_BAR)


@PATHS
@pytest.mark.parametrize(
    "width,head,output_stride,height,image_width",
    quick([(1.0, "classification", 32, 128, 96), (0.5, "segmentation", 8, 64, 80), (2.0, "base", 16, 70, 100)], 1),
)
def test_float64_parity(tmp_path, width, head, output_stride, height, image_width, fast):
    config = MobileViTV2Config(width_multiplier=width, output_stride=output_stride)
    ours, ref = load_pair(tmp_path, config, head, seed=3, dtype=np.float64, fast=fast)
    x = pixels(2, height, image_width).astype(np.float64)
    out = ours(x, output_hidden_states=True)
    expected = run_reference(ref, x, output_hidden_states=True)
    assert out[0].dtype == np.float64
    compare_outputs(out, expected, head, FLOAT64_BAR)


def test_float32_error_is_round_off(tmp_path):
    """The float64 model is a high-precision reference: float32 error against it is of the order
    of float32 round-off, and the same whether measured against torch or against float64."""
    config = MobileViTV2Config(width_multiplier=1.0)
    ref = make_reference(config, "classification", seed=11)
    save_reference(ref, tmp_path)
    x = pixels(1, 128, 128)
    f32 = MobileViTV2ForImageClassification.from_pretrained(tmp_path)(x).logits
    f64 = MobileViTV2ForImageClassification.from_pretrained(tmp_path, dtype=np.float64)(x).logits
    torch32 = run_reference(ref, x).logits
    assert 0 < relative_error(f32, f64) < FLOAT32_BAR
    assert relative_error(torch32, f64) < FLOAT32_BAR


def test_expand_output_false(tmp_path):
    config = MobileViTV2Config(width_multiplier=0.5)
    ref_full = make_reference(config, "base", seed=5)
    save_reference(ref_full, tmp_path)
    ref = transformers.MobileViTV2Model.from_pretrained(str(tmp_path), expand_output=False).eval()
    ours = MobileViTV2Model.from_pretrained(tmp_path, expand_output=False)
    x = pixels(2, 64, 64)
    out, expected = ours(x), run_reference(ref, x)
    assert out.pooler_output is None and expected.pooler_output is None
    assert relative_error(out.last_hidden_state, expected.last_hidden_state) <= FLOAT32_BAR
    assert len(ours(x, return_dict=False)) == len(run_reference(ref, x, return_dict=False)) == 1


# --------------------------------------------------------------------------------------------
# Tuples and output flags, in transformers' order
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_pairs(tmp_path_factory):
    config = MobileViTV2Config(width_multiplier=0.5, num_labels=4)
    pairs = {}
    for head in OURS:
        folder = tmp_path_factory.mktemp(head)
        pairs[head] = load_pair(folder, config, head, seed=7)
    return pairs


@pytest.mark.parametrize(
    "head,with_labels", [("base", False), ("classification", False), ("classification", True), ("segmentation", False), ("segmentation", True)]
)
@pytest.mark.parametrize("output_hidden_states", [False, True])
def test_tuple_outputs_match_transformers_order(small_pairs, head, output_hidden_states, with_labels):
    ours, ref = small_pairs[head]
    x = pixels(2, 64, 64)
    kwargs = {"output_hidden_states": output_hidden_states, "return_dict": False}
    if with_labels:
        rng = np.random.default_rng(1)
        labels = rng.integers(0, 4, size=(2,) if head == "classification" else (2, 64, 64))
        ours_out = ours(x, labels=labels, **kwargs)
        ref_out = run_reference(ref, x, labels=torch.from_numpy(labels), **kwargs)
    else:
        ours_out, ref_out = ours(x, **kwargs), run_reference(ref, x, **kwargs)
    assert isinstance(ours_out, tuple) and len(ours_out) == len(ref_out)
    for a, b in zip(ours_out, ref_out):
        if isinstance(b, tuple):
            assert isinstance(a, tuple) and len(a) == len(b)
            for ai, bi in zip(a, b):
                assert relative_error(ai, bi) <= FLOAT32_BAR
        else:
            assert np.shape(a) == tuple(b.shape)
            assert relative_error(a, b) <= FLOAT32_BAR


def test_config_output_hidden_states_default(small_pairs):
    ours, _ = small_pairs["classification"]
    x = pixels(1, 64, 64)
    assert ours(x).hidden_states is None
    ours.config.output_hidden_states = True
    try:
        assert len(ours(x).hidden_states) == 5
    finally:
        ours.config.output_hidden_states = False


# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------


def loss_pair(tmp_path, head, labels, dtype=np.float32, **config_kwargs):
    config = MobileViTV2Config(width_multiplier=0.5, **config_kwargs)
    ours, ref = load_pair(tmp_path, config, head, seed=13, dtype=dtype)
    x = pixels(3, 64, 64, seed=4).astype(dtype)
    ours_out = ours(x, labels=labels)
    ref_out = run_reference(ref, x, labels=torch.from_numpy(labels))
    return ours, ref, float(ours_out.loss), float(ref_out.loss)


LOSS_CASES = [
    # (problem_type in the config, num_labels, labels) -> transformers picks the same loss
    (None, 5, np.array([0, 4, 2])),  # int labels -> cross-entropy
    (None, 5, np.array([1, -100, 3])),  # cross-entropy ignores -100
    (None, 1, np.array([0.5, -1.2, 2.0], dtype=np.float32)),  # one label -> MSE
    (None, 4, np.array([[1, 0, 1, 0], [0, 0, 0, 1], [1, 1, 1, 1]], dtype=np.float32)),  # float -> BCE
    ("regression", 3, np.random.default_rng(0).normal(size=(3, 3)).astype(np.float32)),
    ("multi_label_classification", 3, np.array([[0.2, 0.9, 0.0], [1, 0, 1], [0, 1, 0]], dtype=np.float32)),
    ("single_label_classification", 3, np.array([2, 0, 1])),
]


@pytest.mark.parametrize("problem_type,num_labels,labels", LOSS_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_classification_losses(tmp_path, problem_type, num_labels, labels, dtype):
    ours, ref, loss, expected = loss_pair(tmp_path, "classification", labels, dtype=dtype, num_labels=num_labels, problem_type=problem_type)
    assert abs(loss - expected) <= 1e-5 * abs(expected)
    assert ours.config.problem_type == ref.config.problem_type  # chosen, and recorded, the same way


@pytest.mark.parametrize("label_size", [(64, 64), (50, 70)])
def test_segmentation_loss_upsamples_and_ignores(tmp_path, label_size):
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 6, size=(3,) + label_size)
    labels[rng.random(labels.shape) < 0.3] = 255
    _, _, loss, expected = loss_pair(tmp_path, "segmentation", labels, num_labels=6)
    assert abs(loss - expected) <= 1e-5 * abs(expected)


def test_segmentation_loss_custom_ignore_index(tmp_path):
    labels = np.random.default_rng(3).integers(0, 4, size=(3, 32, 32))
    _, _, loss, expected = loss_pair(tmp_path, "segmentation", labels, num_labels=4, semantic_loss_ignore_index=2)
    assert abs(loss - expected) <= 1e-5 * abs(expected)
