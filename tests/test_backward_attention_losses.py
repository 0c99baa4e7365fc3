"""The backward of each kernel in ``numpy_mvit2.ops`` (group norm, activations, softmax, bilinear
resize, patches, separable attention, losses) against ``torch.autograd``, and against central
finite differences of our own forward.

Each test draws seeded random inputs and a random ``grad_output``, runs our backward and
``torch.autograd.grad`` through the ``torch.nn.functional`` twin of the forward on the same values,
and compares with ``relative = max|ours - torch| / (1 + max|torch|)``: at most 1e-10 in float64 and
1e-4 in float32. Pure data movement (patches) must agree exactly. The finite-difference checks
compare ``<grad, v>`` with ``(f(x + h v) - f(x - h v)) / 2h`` for a random direction ``v``, in
float64 on tiny shapes, so that a backward is checked against its own forward and not only against
PyTorch.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import require
from numpy_mvit2 import ops

torch = require("torch")
transformers = require("transformers")
F = torch.nn.functional
from transformers.activations import ACT2FN  # noqa: E402  (after the require above)

DTYPES = [np.float32, np.float64]
IDS = ["f32", "f64"]
TOL = {np.float32: 1e-4, np.float64: 1e-10}


def randn(gen, *shape, dtype=np.float64, scale=1.0):
    return (gen.standard_normal(shape) * scale).astype(dtype)


def T(a, grad=False):
    """NumPy -> torch, same dtype, sharing nothing with the input."""
    t = torch.from_numpy(np.array(a, copy=True))
    return t.requires_grad_(True) if grad else t


def assert_close(ours, ref, tol, what=""):
    """``max|ours - ref| / (1 + max|ref|) <= tol``, with matching shapes and dtypes."""
    ref = ref.detach().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
    ours = np.asarray(ours)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} != {ref.shape}"
    assert ours.dtype == ref.dtype, f"{what}: dtype {ours.dtype} != {ref.dtype}"
    err = float(np.max(np.abs(ours.astype(np.float64) - ref.astype(np.float64)), initial=0.0))
    rel = err / (1 + float(np.max(np.abs(ref.astype(np.float64)), initial=0.0)))
    assert rel <= tol, f"{what}: relative error {rel:.3e} > {tol:.1e}"


def torch_grads(forward, inputs, grad_outputs):
    """``torch.autograd.grad`` of ``forward(*inputs)`` (one output or a tuple) against ``grad_outputs``."""
    leaves = [T(a, grad=True) for a in inputs]
    outs = forward(*leaves)
    outs = outs if isinstance(outs, tuple) else (outs,)
    pairs = [(o, T(g)) for o, g in zip(outs, grad_outputs) if g is not None]
    return torch.autograd.grad([o for o, _ in pairs], leaves, [g for _, g in pairs], allow_unused=True)


def finite_difference_check(loss, inputs, grads, seed=0, h=1e-5, tol=1e-7):
    """``<grads, v> ~ (loss(inputs + h v) - loss(inputs - h v)) / 2h`` for one random direction v."""
    gen = np.random.default_rng(seed)
    v = [gen.standard_normal(a.shape) for a in inputs]
    plus = loss(*[a + h * d for a, d in zip(inputs, v)])
    minus = loss(*[a - h * d for a, d in zip(inputs, v)])
    numeric = (plus - minus) / (2 * h)
    analytic = sum(float(np.sum(g * d)) for g, d in zip(grads, v))
    assert abs(numeric - analytic) <= tol * (1 + abs(analytic)), f"finite difference {numeric!r} != {analytic!r}"


# --------------------------------------------------------------------------------------------
# Group norm
# --------------------------------------------------------------------------------------------

GN_CASES = [((2, 6, 5, 3), 3), ((3, 4, 9, 7), 1), ((2, 5, 1, 1), 5), ((1, 4, 3), 2)]


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("shape, groups", GN_CASES, ids=[f"{s}-g{g}" for s, g in GN_CASES])
def test_group_norm_backward(shape, groups, dtype):
    gen = np.random.default_rng(1)
    x = randn(gen, *shape, dtype=dtype, scale=3.0) + dtype(1.5)
    weight, bias = randn(gen, shape[1], dtype=dtype), randn(gen, shape[1], dtype=dtype)
    g = randn(gen, *shape, dtype=dtype)
    ours = ops.group_norm_backward(g, x, groups, weight, bias, eps=1e-5)
    ref = torch_grads(lambda a, w, b: F.group_norm(a, groups, w, b, eps=1e-5), (x, weight, bias), (g,))
    for name, o, r in zip(("x", "weight", "bias"), ours, ref):
        assert_close(o, r, TOL[dtype], f"grad_{name}")


def test_group_norm_backward_finite_difference():
    gen = np.random.default_rng(2)
    x, w, b, g = randn(gen, 2, 4, 3, 2), randn(gen, 4), randn(gen, 4), randn(gen, 2, 4, 3, 2)
    grads = ops.group_norm_backward(g, x, 2, w, b, eps=1e-3)
    finite_difference_check(lambda a, ww, bb: float(np.sum(ops.group_norm(a, 2, ww, bb, eps=1e-3) * g)), (x, w, b), grads)


# --------------------------------------------------------------------------------------------
# Activations
# --------------------------------------------------------------------------------------------

KINKS = [-6.0, -3.0, 0.0, 3.0, 6.0]


def test_every_activation_has_a_backward():
    assert set(ops.ACTIVATION_BACKWARDS) == set(ops.ACTIVATIONS)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("name", sorted(ops.ACTIVATIONS))
def test_activation_backward_matches_transformers(name, dtype):
    """Random points spread over [-12, 12] and the kinks of relu, relu6 and hardswish exactly."""
    gen = np.random.default_rng(3)
    x = np.concatenate([randn(gen, 3, 17, dtype=dtype, scale=4.0).ravel(), np.array(KINKS, dtype=dtype)]).reshape(4, 14)
    g = randn(gen, *x.shape, dtype=dtype)
    (ref,) = torch_grads(ACT2FN[name], (x,), (g,))
    assert_close(ops.ACTIVATION_BACKWARDS[name](g, x), ref, TOL[dtype], name)


@pytest.mark.parametrize("name", sorted(ops.ACTIVATIONS))
def test_activation_backward_finite_difference(name):
    gen = np.random.default_rng(4)
    x, g = randn(gen, 3, 5, scale=3.0), randn(gen, 3, 5)
    fn = ops.ACTIVATIONS[name]
    finite_difference_check(lambda a: float(np.sum(fn(a) * g)), (x,), (ops.ACTIVATION_BACKWARDS[name](g, x),))


# --------------------------------------------------------------------------------------------
# Softmax
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("axis", [1, -1])
def test_softmax_and_log_softmax_backward(axis, dtype):
    gen = np.random.default_rng(5)
    x, g = randn(gen, 3, 7, 5, dtype=dtype, scale=4.0), randn(gen, 3, 7, 5, dtype=dtype)
    (ref,) = torch_grads(lambda a: torch.softmax(a, dim=axis), (x,), (g,))
    assert_close(ops.softmax_backward(g, x, axis=axis), ref, TOL[dtype], "softmax")
    (ref,) = torch_grads(lambda a: torch.log_softmax(a, dim=axis), (x,), (g,))
    assert_close(ops.log_softmax_backward(g, x, axis=axis), ref, TOL[dtype], "log_softmax")


def test_softmax_backward_finite_difference():
    gen = np.random.default_rng(6)
    x, g = randn(gen, 2, 5), randn(gen, 2, 5)
    finite_difference_check(lambda a: float(np.sum(ops.softmax(a) * g)), (x,), (ops.softmax_backward(g, x),))
    finite_difference_check(lambda a: float(np.sum(ops.log_softmax(a) * g)), (x,), (ops.log_softmax_backward(g, x),))


# --------------------------------------------------------------------------------------------
# Bilinear resize
# --------------------------------------------------------------------------------------------

INTERP_CASES = [((5, 7), (11, 9)), ((7, 5), (3, 2)), ((4, 4), (4, 4)), ((9, 6), (9, 13)), ((3, 5), (1, 1)), ((1, 3), (4, 7))]


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("align_corners", [False, True], ids=["centres", "corners"])
@pytest.mark.parametrize("in_size, out_size", INTERP_CASES, ids=[f"{a[0]}x{a[1]}-{b[0]}x{b[1]}" for a, b in INTERP_CASES])
def test_interpolate_bilinear_backward(in_size, out_size, align_corners, dtype):
    gen = np.random.default_rng(7)
    x = randn(gen, 2, 3, *in_size, dtype=dtype)
    g = randn(gen, 2, 3, *out_size, dtype=dtype)
    (ref,) = torch_grads(lambda a: F.interpolate(a, size=out_size, mode="bilinear", align_corners=align_corners), (x,), (g,))
    assert_close(ops.interpolate_bilinear_backward(g, x.shape, align_corners=align_corners), ref, TOL[dtype])


@pytest.mark.parametrize("align_corners", [False, True], ids=["centres", "corners"])
def test_interpolate_bilinear_backward_finite_difference(align_corners):
    gen = np.random.default_rng(8)
    for in_size, out_size in [((3, 5), (7, 4)), ((5, 4), (2, 3))]:
        x, g = randn(gen, 1, 2, *in_size), randn(gen, 1, 2, *out_size)
        grad = ops.interpolate_bilinear_backward(g, x.shape, align_corners=align_corners)
        finite_difference_check(
            lambda a: float(np.sum(ops.interpolate_bilinear(a, out_size, align_corners=align_corners) * g)), (x,), (grad,)
        )


# --------------------------------------------------------------------------------------------
# Patches
# --------------------------------------------------------------------------------------------

PATCH_CASES = [(7, 8, 2), (8, 7, 2), (7, 5, 3), (8, 10, 3), (6, 6, 3), (4, 6, 2)]
PATCH_IDS = [f"{h}x{w}-p{p}" for h, w, p in PATCH_CASES]


def torch_unfold(a, p):  # [B, C, H, W] -> [B, C, P, N]
    b, c = a.shape[:2]
    return F.unfold(a, kernel_size=p, stride=p).reshape(b, c, p * p, -1)


def torch_fold(patches, size, p):  # [B, C, P, N] -> [B, C, H, W]
    b, c, pp, n = patches.shape
    return F.fold(patches.reshape(b, c * pp, n), output_size=size, kernel_size=p, stride=p)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("height, width, p", PATCH_CASES, ids=PATCH_IDS)
def test_unfold_and_fold_patches_backward(height, width, p, dtype):
    gen = np.random.default_rng(9)
    x = randn(gen, 2, 3, height, width, dtype=dtype)
    n = (height // p) * (width // p)
    g_patches = randn(gen, 2, 3, p * p, n, dtype=dtype)
    (ref,) = torch_grads(lambda a: torch_unfold(a, p), (x,), (g_patches,))
    ours = ops.unfold_patches_backward(g_patches, x.shape, p)
    np.testing.assert_array_equal(ours, ref.numpy())
    assert ours.dtype == dtype
    assert not ours[:, :, (height // p) * p :].any() and not ours[:, :, :, (width // p) * p :].any()

    g_map = randn(gen, 2, 3, height, width, dtype=dtype)
    (ref,) = torch_grads(lambda a: torch_fold(a, (height, width), p), (g_patches,), (g_map,))
    ours = ops.fold_patches_backward(g_map, p)
    np.testing.assert_array_equal(ours, ref.numpy())
    assert ours.dtype == dtype


def test_patches_backward_finite_difference():
    gen = np.random.default_rng(10)
    x, g_patches, g_map = randn(gen, 1, 2, 5, 7), randn(gen, 1, 2, 4, 6), randn(gen, 1, 2, 5, 7)
    finite_difference_check(lambda a: float(np.sum(ops.unfold_patches(a, 2) * g_patches)), (x,),
                            (ops.unfold_patches_backward(g_patches, x.shape, 2),))
    patches = randn(gen, 1, 2, 4, 6)
    finite_difference_check(lambda a: float(np.sum(ops.fold_patches(a, (5, 7), 2) * g_map)), (patches,),
                            (ops.fold_patches_backward(g_map, 2),))


# --------------------------------------------------------------------------------------------
# Separable self-attention
# --------------------------------------------------------------------------------------------


def torch_separable_attention(query, key, value):
    """transformers' MobileViTV2LinearSelfAttention between its qkv split and its out_proj."""
    scores = F.softmax(query, dim=-1)
    context = torch.sum(key * scores, dim=-1, keepdim=True)
    return F.relu(value) * context.expand_as(value), scores


ATTN_CASES = [(2, 5, 4, 7, 1.0), (1, 3, 9, 5, 1.0), (3, 4, 1, 6, 20.0), (1, 1, 2, 1, 1.0)]


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("with_grad_scores", [False, True], ids=["out", "out+scores"])
@pytest.mark.parametrize("batch, d, P, N, query_scale", ATTN_CASES, ids=[f"B{b}-d{d}-P{p}-N{n}-q{s:g}" for b, d, p, n, s in ATTN_CASES])
def test_separable_attention_backward(batch, d, P, N, query_scale, with_grad_scores, dtype):
    gen = np.random.default_rng(11)
    q = randn(gen, batch, 1, P, N, dtype=dtype, scale=query_scale)
    k, v = randn(gen, batch, d, P, N, dtype=dtype), randn(gen, batch, d, P, N, dtype=dtype)
    g_out = randn(gen, batch, d, P, N, dtype=dtype)
    g_scores = randn(gen, batch, 1, P, N, dtype=dtype) if with_grad_scores else None
    ref = torch_grads(torch_separable_attention, (q, k, v), (g_out, g_scores))
    ours = ops.separable_attention_backward(g_out, g_scores, q, k, v)
    for name, o, r in zip(("query", "key", "value"), ours, ref):
        assert_close(o, r, TOL[dtype], f"grad_{name}")


def test_separable_attention_backward_by_hand():
    """The docstring's worked example: N = 2, d = 1, q = (0, 0), k = (1, 3), v = (1, -1), g = (1, 1)."""
    q, k, v = (np.array(a, dtype=np.float64).reshape(1, 1, 1, 2) for a in ([0, 0], [1, 3], [1, -1]))
    gq, gk, gv = ops.separable_attention_backward(np.ones((1, 1, 1, 2)), None, q, k, v)
    np.testing.assert_allclose(gv.ravel(), [2, 0])
    np.testing.assert_allclose(gk.ravel(), [0.5, 0.5])
    np.testing.assert_allclose(gq.ravel(), [-0.5, 0.5])


def test_separable_attention_backward_finite_difference():
    gen = np.random.default_rng(12)
    q, k, v = randn(gen, 1, 1, 2, 5), randn(gen, 1, 3, 2, 5), randn(gen, 1, 3, 2, 5)
    g_out, g_scores = randn(gen, 1, 3, 2, 5), randn(gen, 1, 1, 2, 5)

    def loss(a, b, c):
        out, scores = ops.separable_attention(a, b, c)
        return float(np.sum(out * g_out) + np.sum(scores * g_scores))

    finite_difference_check(loss, (q, k, v), ops.separable_attention_backward(g_out, g_scores, q, k, v))


# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------

CE_CASES = [((6, 5), 0.0), ((6, 5), 0.1), ((2, 4, 3, 5), 0.0), ((2, 4, 3, 5), 0.25), ((3, 1), 0.0)]


def ce_inputs(gen, shape, dtype, ignore_fraction=0.3):
    logits = randn(gen, *shape, dtype=dtype, scale=3.0)
    target_shape = shape[:1] + shape[2:]
    target = gen.integers(0, shape[1], size=target_shape)
    target[gen.random(target_shape) < ignore_fraction] = -100
    target.flat[0] = 0  # at least one kept
    return logits, target


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("shape, smoothing", CE_CASES, ids=[f"{s}-ls{e:g}" for s, e in CE_CASES])
def test_cross_entropy_and_backward(shape, smoothing, dtype):
    gen = np.random.default_rng(13)
    logits, target = ce_inputs(gen, shape, dtype)
    leaf = T(logits, grad=True)
    loss = F.cross_entropy(leaf, torch.from_numpy(target), ignore_index=-100, label_smoothing=smoothing)
    (ref,) = torch.autograd.grad(loss * 0.7, leaf)
    ours_loss = ops.cross_entropy(logits, target, label_smoothing=smoothing)
    assert np.asarray(ours_loss).dtype == dtype
    assert abs(float(ours_loss) - loss.item()) <= TOL[dtype] * (1 + abs(loss.item()))
    assert_close(ops.cross_entropy_backward(logits, target, label_smoothing=smoothing, grad=0.7), ref, TOL[dtype])


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy_all_ignored(smoothing):
    """Nothing kept: the loss is NaN and its gradient 0, as PyTorch returns them."""
    logits = np.random.default_rng(14).standard_normal((2, 3, 4))
    target = np.full((2, 4), 7)
    leaf = T(logits, grad=True)
    loss = F.cross_entropy(leaf, torch.from_numpy(target), ignore_index=7, label_smoothing=smoothing)
    (ref,) = torch.autograd.grad(loss, leaf)
    assert np.isnan(ops.cross_entropy(logits, target, ignore_index=7, label_smoothing=smoothing)) and np.isnan(loss.item())
    np.testing.assert_array_equal(ops.cross_entropy_backward(logits, target, ignore_index=7, label_smoothing=smoothing), ref.numpy())


@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_cross_entropy_backward_finite_difference(smoothing):
    gen = np.random.default_rng(15)
    logits, target = ce_inputs(gen, (2, 3, 2, 2), np.float64)
    finite_difference_check(lambda a: float(ops.cross_entropy(a, target, label_smoothing=smoothing)), (logits,),
                            (ops.cross_entropy_backward(logits, target, label_smoothing=smoothing),))


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("shape", [(7,), (3, 5, 2)])
def test_mse_and_bce_backward(shape, dtype):
    gen = np.random.default_rng(16)
    x, y = randn(gen, *shape, dtype=dtype, scale=3.0), randn(gen, *shape, dtype=dtype)
    p = gen.random(shape).astype(dtype)
    leaf = T(x, grad=True)
    (ref,) = torch.autograd.grad(F.mse_loss(leaf, T(y)) * 1.3, leaf)
    assert_close(ops.mse_loss_backward(x, y, grad=1.3), ref, TOL[dtype], "mse")
    (ref,) = torch.autograd.grad(F.binary_cross_entropy_with_logits(leaf, T(p)) * 1.3, leaf)
    assert_close(ops.binary_cross_entropy_with_logits_backward(x, p, grad=1.3), ref, TOL[dtype], "bce")


def test_mse_and_bce_backward_finite_difference():
    gen = np.random.default_rng(17)
    x, y, p = randn(gen, 2, 3), randn(gen, 2, 3), gen.random((2, 3))
    finite_difference_check(lambda a: float(ops.mse_loss(a, y)), (x,), (ops.mse_loss_backward(x, y),))
    finite_difference_check(lambda a: float(ops.binary_cross_entropy_with_logits(a, p)), (x,),
                            (ops.binary_cross_entropy_with_logits_backward(x, p),))
