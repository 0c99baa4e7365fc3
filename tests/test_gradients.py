"""Whole-model gradients (``numpy_mvit2.training.value_and_grad``) against transformers' autograd.

Every parameter's gradient, the input gradient, the loss and (train mode) the running statistics
after the step, per tensor ``max|ours - torch| / max|torch|`` <= 1e-3 in float32 and 1e-8 in
float64, both against PyTorch's float64 autograd (``crosscheck.GRADIENT_TOLERANCE``; a gradient
that is zero in exact arithmetic is measured against ``crosscheck.ZERO_GRADIENT_FLOOR`` of the
largest; an ill-conditioned float32 one passes within ``crosscheck.ROUNDOFF_MARGIN`` of PyTorch's
own float32 error). References are transformers' models
with every tensor randomized (``reference.make_reference``), through ``crosscheck.apply_behavior``
for the timm and ml-cvnets behaviors; in train mode the dropout masks ours drew are applied on
PyTorch's side by forward hooks (``crosscheck.reference_gradients``).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import quick, require
from reference import OURS, make_reference

torch = require("torch")
require("transformers")

from numpy_mvit2 import MobileViTV2Config  # noqa: E402
from numpy_mvit2.crosscheck import crosscheck_gradients, reference_gradients  # noqa: E402
from numpy_mvit2.training import trainable_names, value_and_grad  # noqa: E402

MARGIN = 4.0  # float32 threads: how much farther from the float64 step than the one-thread run's


def _pair(head, seed=0, **fields):
    config = MobileViTV2Config(**fields)
    reference = make_reference(config, head, seed=seed)
    ours = OURS[head](config, state_dict={k: v.numpy() for k, v in reference.state_dict().items()}, dtype=np.float64,
                      fold_batch_norm=False)
    return ours, reference


def _labels(ours, pixels, kind, rng):
    batch = pixels.shape[0]
    config = ours.config
    if ours.head == "base":
        return rng.standard_normal(ours(pixels).last_hidden_state.shape)
    if ours.head == "segmentation":
        labels = rng.integers(0, config.num_labels, (batch, *pixels.shape[-2:]))
        labels[rng.random(labels.shape) < 0.2] = config.semantic_loss_ignore_index
        return labels
    if kind == "single_label_classification":
        return rng.integers(0, config.num_labels, batch)
    if kind == "multi_label_classification":
        return (rng.random((batch, config.num_labels)) < 0.5).astype(np.float64)
    return rng.standard_normal((batch, config.num_labels) if config.num_labels > 1 else (batch,))


def _check(head, *, train, batch, height, width, kind=None, seed=0, **fields):
    if head == "classification":
        fields.setdefault("num_labels", 5)
        fields["problem_type"] = kind
    if head == "segmentation":
        fields.setdefault("num_labels", 4)
        fields.setdefault("aspp_out_channels", 32)
    ours, reference = _pair(head, seed, **fields)
    rng = np.random.default_rng(seed)
    pixels = rng.uniform(-1, 1, (batch, 3, height, width))
    labels = _labels(ours, pixels, kind, rng)
    report = crosscheck_gradients(ours, reference, pixels, labels, train=train)
    assert report.passed, str(report)
    return report


def test_train_mode_float32_two_images_through_the_aspp_pooled_branch():
    """The ASPP's pooled branch normalises two values per channel: its backward cancels to a small
    difference, which float32 holds only if the batch norm works in float64 (as PyTorch's does)."""
    _check("segmentation", train=True, batch=2, height=64, width=64, width_multiplier=0.5, output_stride=16)


def test_train_mode_float32_resized_map():
    """ml-cvnets' resize of a map the patch size does not divide (9x11 -> 10x12), two images in
    train mode: some float32 gradients here are ill-conditioned (stage 4's first qkv_proj bias is
    1e-1 of its scale from float64 in PyTorch's float32 too); ours must stay within
    ``crosscheck.ROUNDOFF_MARGIN`` of PyTorch's own float32 error there, and 1e-8 in float64."""
    _check("classification", kind="single_label_classification", train=True, batch=2, height=72, width=88,
           width_multiplier=0.5, behavior="ml-cvnets")


CASES = [
    # head, problem type, train, batch, height, width, fields
    ("classification", "single_label_classification", True, 3, 64, 64, {}),
    ("classification", "single_label_classification", False, 1, 65, 71, {}),
    ("segmentation", None, True, 3, 64, 64, {"output_stride": 16}),
    ("base", None, True, 3, 64, 80, {}),
    ("base", None, False, 1, 64, 64, {"width_multiplier": 0.75}),
    ("classification", "multi_label_classification", True, 2, 64, 64, {"width_multiplier": 1.0}),
    ("classification", "regression", True, 2, 64, 64, {"num_labels": 1}),
    ("classification", "regression", False, 2, 64, 64, {"num_labels": 3}),
    ("classification", "single_label_classification", True, 2, 64, 64, {"width_multiplier": 1.5}),
    ("classification", "single_label_classification", False, 1, 64, 64, {"width_multiplier": 2.0}),
    ("segmentation", None, False, 1, 64, 64, {"output_stride": 8}),
    ("segmentation", None, True, 3, 71, 65, {"output_stride": 32}),
    ("segmentation", None, False, 2, 96, 64, {"output_stride": 8, "behavior": "ml-cvnets"}),
    ("segmentation", None, True, 2, 80, 72, {"output_stride": 16, "behavior": "timm"}),
    ("base", None, True, 2, 70, 90, {"behavior": "timm", "hidden_act": "gelu"}),
    ("classification", "single_label_classification", False, 2, 64, 64, {"hidden_act": "relu"}),
]


@pytest.mark.parametrize("head, kind, train, batch, height, width, fields", quick(CASES, 0, 1, 2, 3))
def test_gradients_match_autograd(head, kind, train, batch, height, width, fields):
    fields = {"width_multiplier": 0.5, **fields}
    _check(head, kind=kind, train=train, batch=batch, height=height, width=width, **fields)


@pytest.mark.parametrize("head", quick(["classification", "segmentation"], 1))
def test_train_mode_dropout_everywhere(head):
    """Every dropout transformers has, each nonzero: the attention scores', the feed-forward's two,
    the ASPP's and the segmentation head's Dropout2d; PyTorch is handed the masks ours drew."""
    report = _check(head, kind="single_label_classification", train=True, batch=3, height=64, width=64,
                    width_multiplier=0.5, attn_dropout=0.3, ffn_dropout=0.2, aspp_dropout_prob=0.25,
                    classifier_dropout_prob=0.4, output_stride=16 if head == "segmentation" else 32)
    assert report.rows[0]["layer"] == "loss"


@pytest.mark.parametrize("train", [True, False])
def test_a_wrong_backward_is_found_at_its_parameter(monkeypatch, train):
    """A group-norm backward whose weight gradient is 1% off: both dtypes name the first such
    parameter the backward reaches (the last stage's closing norm), however ill-conditioned other
    float32 gradients of the case are (the round-off allowance does not hide a wrong gradient)."""
    from numpy_mvit2 import autodiff, ops

    forward, backward = autodiff.RULES[ops.group_norm]

    def off_by_one_percent(saved, grad):
        grads = backward(saved, grad)
        return {**grads, "weight": grads["weight"] * 1.01}

    monkeypatch.setitem(autodiff.RULES, ops.group_norm, (forward, off_by_one_percent))
    ours, reference = _pair("classification", width_multiplier=0.5, num_labels=3, problem_type="regression")
    rng = np.random.default_rng(1)
    pixels = rng.uniform(-1, 1, (2, 3, 64, 64))
    report = crosscheck_gradients(ours, reference, pixels, rng.standard_normal((2, 3)), train=train)
    name = "mobilevitv2.encoder.layer.4.layernorm.weight"
    assert report.first_divergence == name, str(report)
    row = report.row(name)
    assert row["rel_float32"] > 5e-3 and row["rel_float64"] > 5e-3
    assert row["torch_rel_float32"] < 1e-4  # PyTorch's own float32 error there: far below
    assert not report.row("mobilevitv2.encoder.layer.4.layernorm.bias")["diverged"]


def test_value_and_grad_api():
    ours, reference = _pair("classification", width_multiplier=0.5, num_labels=3)
    pixels = np.random.default_rng(0).uniform(0, 1, (2, 3, 64, 64))
    labels = np.array([0, 2])
    before = {k: v.copy() for k, v in ours.state_dict().items()}
    loss, grads, pixel_grad = value_and_grad(ours, pixels, labels, input_grad=True)
    assert list(grads) == trainable_names(ours) == [n for n, _ in reference.named_parameters()]
    assert all(grads[n].shape == before[n].shape and grads[n].dtype == np.float64 for n in grads)
    assert pixel_grad.shape == pixels.shape and pixel_grad.dtype == np.float64
    assert np.isclose(loss, ours(pixels, labels=labels).loss)
    # eval mode moves nothing; train mode moves the running statistics and nothing else
    assert all(np.array_equal(before[k], v) for k, v in ours.state_dict().items())
    loss2, grads2 = value_and_grad(ours, pixels, labels, train=True, generator=np.random.default_rng(0))
    after = ours.state_dict()
    moved = {k for k in after if not np.array_equal(before[k], after[k])}
    assert moved and all("running_" in k for k in moved)
    _, _, _, buffers = reference_gradients(reference.double(), pixels, labels, train=True)
    for name, value in buffers.items():
        assert np.max(np.abs(after[name] - value)) <= 1e-6 * np.max(np.abs(value)), name
    # the fast path reads the new statistics
    assert np.allclose(ours(pixels).logits, ours._forward(pixels, fast=False), atol=1e-10)


def test_float32_model_gradients_are_float32():
    ours, _ = _pair("segmentation", width_multiplier=0.5, num_labels=3, aspp_out_channels=16)
    model = type(ours)(ours.config, state_dict=ours.state_dict(), fold_batch_norm=False)
    labels = np.zeros((2, 64, 64), dtype=np.int64)
    loss, grads = value_and_grad(model, np.zeros((2, 3, 64, 64), np.float32), labels, train=True,
                                 generator=np.random.default_rng(1))
    assert np.asarray(loss).dtype == np.float32 and all(g.dtype == np.float32 for g in grads.values())


def test_errors_name_the_problem():
    ours, _ = _pair("segmentation", width_multiplier=0.5, num_labels=3, aspp_out_channels=16)
    pixels = np.zeros((1, 3, 64, 64))
    # one image: the ASPP's pooled branch has a single value per channel, as PyTorch refuses too
    with pytest.raises(ValueError, match="aspp.convs.4.conv_1x1.*more than 1 value per channel"):
        value_and_grad(ours, pixels, np.zeros((1, 64, 64), np.int64), train=True)
    with pytest.raises(ValueError, match="needs labels"):
        value_and_grad(ours, pixels, None)
    with pytest.raises(ValueError, match="labels must have shape"):
        value_and_grad(ours, pixels, np.zeros((1, 64)))
    with pytest.raises(TypeError, match="generator"):
        value_and_grad(ours, np.zeros((2, 3, 64, 64)), np.zeros((2, 64, 64), np.int64), train=True, generator=3)
    folded = type(ours)(ours.config, state_dict=ours.state_dict())
    with pytest.raises(ValueError, match="fold_batch_norm=False"):
        value_and_grad(folded, pixels, np.zeros((1, 64, 64), np.int64), train=True)
    base, _ = _pair("base", width_multiplier=0.5)
    with pytest.raises(ValueError, match="gradient of last_hidden_state"):
        value_and_grad(base, pixels, np.zeros((1, 2)))
    # a failed step leaves the running statistics as they were
    before = {k: v.copy() for k, v in ours.state_dict().items()}
    with pytest.raises(ValueError):
        value_and_grad(ours, np.zeros((2, 3, 64, 64)), np.full((2, 64, 64), 7), train=True)
    assert all(np.array_equal(before[k], v) for k, v in ours.state_dict().items())


def test_folded_model_eval_gradient_is_the_unfolded_ones_input_gradient():
    ours, _ = _pair("classification", width_multiplier=0.5, num_labels=3)
    folded = type(ours)(ours.config, state_dict=ours.state_dict(), dtype=np.float64)
    pixels = np.random.default_rng(0).uniform(0, 1, (2, 3, 64, 64))
    labels = np.array([1, 2])
    loss_a, _, grad_a = value_and_grad(ours, pixels, labels, input_grad=True)
    loss_b, grads_b, grad_b = value_and_grad(folded, pixels, labels, input_grad=True)
    assert np.isclose(loss_a, loss_b) and np.allclose(grad_a, grad_b, rtol=1e-9, atol=1e-12)
    assert set(grads_b) == set(folded.state_dict())


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_threads_compute_the_same_step(monkeypatch, dtype):
    """The element-wise kernels run image by image (activations, depthwise convolutions, group
    norms) or channel part by channel part (batch norms) on threads (``training._in_parts``): the
    same loss, the same running statistics and the same gradients as on one thread, to round-off
    (a weight's gradient is summed image by image). Large enough maps that every kind is split."""
    import numpy_mvit2.fast as fast
    from numpy_mvit2 import MobileViTV2ForImageClassification, training
    from numpy_mvit2.fast import executors

    monkeypatch.setattr(fast, "THREADS", 2)
    if executors.threads() < 2:  # no BLAS library threadpoolctl can hold at one thread: nothing is split
        pytest.skip("threadpoolctl finds no BLAS library here, so value_and_grad runs on one thread")

    config = MobileViTV2Config(num_labels=5, width_multiplier=0.5)
    reference = make_reference(config, "classification", seed=3)
    state = {k: v.numpy() for k, v in reference.state_dict().items()}
    rng = np.random.default_rng(3)
    pixels, labels = rng.uniform(-1, 1, (3, 3, 96, 80)), rng.integers(0, 5, 3)
    runs, split = {}, []
    in_parts = training._in_parts
    monkeypatch.setattr(training, "_in_parts", lambda function, pieces, axis, workers:
                        split.append((axis, workers)) or in_parts(function, pieces, axis, workers))
    for threads in (1, 2):
        monkeypatch.setattr(fast, "THREADS", threads)
        model = MobileViTV2ForImageClassification(config, state_dict=state, dtype=dtype, fold_batch_norm=False)
        loss, grads = value_and_grad(model, pixels.astype(dtype), labels, train=True, generator=np.random.default_rng(0))
        runs[threads] = loss, grads, model.state_dict()
    assert {axis for axis, workers in split} == {0, 1} and all(workers == 2 for _, workers in split)
    (loss1, grads1, state1), (loss2, grads2, state2) = runs[1], runs[2]
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert abs(loss1 - loss2) <= tol * abs(loss1)
    if dtype == np.float32:
        # a weight's gradient summed image by image is the one-product sum in another order: in
        # float32 the two differ by the round-off either carries, which where terms cancel (the
        # stem's weight, summed over every pixel; a batch norm's shift before another, zero in exact
        # arithmetic) passes 1e-5 of the gradient. So each is measured against the float64 step:
        # the split run within tol of it, or MARGIN times the one-thread run's own distance.
        monkeypatch.setattr(fast, "THREADS", 1)
        model = MobileViTV2ForImageClassification(config, state_dict=state, dtype=np.float64, fold_batch_norm=False)
        _, exact = value_and_grad(model, pixels, labels, train=True, generator=np.random.default_rng(0))
    for name in grads1:
        if dtype == np.float32:
            scale = max(np.abs(exact[name]).max(), 1e-30)
            own = np.abs(grads1[name] - exact[name]).max()
            assert np.abs(grads2[name] - exact[name]).max() <= max(tol * scale, MARGIN * own), name
        else:
            scale = max(np.abs(grads1[name]).max(), 1e-30)
            assert np.abs(grads2[name] - grads1[name]).max() <= tol * scale, name
        assert grads2[name].dtype == grads1[name].dtype == dtype, name
    for name in state1:  # the running statistics: per channel the same sums, of the same convolution outputs
        # (a channel's mean near zero beside others far from it: relative to the tensor's largest)
        np.testing.assert_allclose(state2[name], state1[name], rtol=tol, atol=tol * np.abs(state1[name]).max(), err_msg=name)
