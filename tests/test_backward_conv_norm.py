"""The backward passes of ``numpy_mvit2.ops``' convolution, linear, pooling, batch-norm and dropout
kernels, against ``torch.autograd`` and against central finite differences.

Each autograd test draws a random output gradient ``g``, asks PyTorch for the vector-Jacobian
product of the ``torch.nn.functional`` twin (``torch.autograd.grad(y, inputs, g)``) and compares
it with ours: ``max|ours - torch| / (1 + max|torch|)`` at most 1e-10 in float64 and 1e-4 in
float32. Each finite-difference test, in float64 on tiny shapes, checks the definition itself:
for the scalar ``f = sum(g * forward(inputs))`` and a few random directions ``v``,
``<grad, v>`` equals ``(f(inputs + h v) - f(inputs - h v)) / 2h``.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import require
from numpy_mvit2 import ops

torch = require("torch")
F = torch.nn.functional

DTYPES = [np.float32, np.float64]
TOL = {np.float32: 1e-4, np.float64: 1e-10}
FD_TOL = 1e-7  # central differences in float64, relative to 1 + |<grad, v>|
FD_STEP = 1e-5


def randn(gen, *shape, dtype=np.float64):
    return gen.standard_normal(shape).astype(dtype)


def T(a, grad=False):
    """NumPy -> torch, same dtype, sharing nothing with the input."""
    return torch.from_numpy(np.array(a, copy=True)).requires_grad_(grad)


def assert_grad_close(ours, ref, dtype, what):
    """``max|ours - ref| / (1 + max|ref|) <= TOL[dtype]``, with the same shape and dtype."""
    ref = ref.detach().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
    ours = np.asarray(ours)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} != {ref.shape}"
    assert ours.dtype == dtype, f"{what}: dtype {ours.dtype} != {np.dtype(dtype)}"
    err = float(np.max(np.abs(ours.astype(np.float64) - ref.astype(np.float64)), initial=0.0))
    rel = err / (1 + float(np.max(np.abs(ref.astype(np.float64)), initial=0.0)))
    assert rel <= TOL[dtype], f"{what}: relative error {rel:.3e} > {TOL[dtype]:.0e}"


def torch_vjp(fn, inputs, grad_output):
    """``torch.autograd.grad`` of ``fn(*inputs)`` against ``grad_output``, for the inputs that are arrays."""
    tensors = [T(a, grad=True) if isinstance(a, np.ndarray) else a for a in inputs]
    y = fn(*tensors)
    wanted = [t for t in tensors if isinstance(t, torch.Tensor)]
    return y, torch.autograd.grad(y, wanted, T(grad_output))


def check_finite_differences(forward, inputs, grads, grad_output, seed=0, directions=3):
    """For ``f(inputs) = sum(grad_output * forward(*inputs))``: ``<grads, v>`` against the central
    difference along ``directions`` random ``v`` (one entry of ``v`` per input, all moved together),
    and along each input alone."""
    gen = np.random.default_rng(seed)

    def f(arrays):
        return float(np.sum(grad_output * forward(*arrays)))

    moves = [[randn(gen, *a.shape) for a in inputs] for _ in range(directions)]
    for i in range(len(inputs)):  # each input alone
        moves.append([randn(gen, *a.shape) if j == i else np.zeros_like(a) for j, a in enumerate(inputs)])
    for v in moves:
        plus = f([a + FD_STEP * d for a, d in zip(inputs, v)])
        minus = f([a - FD_STEP * d for a, d in zip(inputs, v)])
        numeric = (plus - minus) / (2 * FD_STEP)
        analytic = sum(float(np.sum(g * d)) for g, d in zip(grads, v))
        assert abs(numeric - analytic) <= FD_TOL * (1 + abs(analytic)), (numeric, analytic)


# --------------------------------------------------------------------------------------------
# conv2d
# --------------------------------------------------------------------------------------------

# id, batch, in channels, out channels, height, width, kernel, stride, padding, dilation, groups, bias
CONV_CASES = [
    ("1x1", 2, 5, 6, 7, 9, 1, 1, 0, 1, 1, True),
    ("1x1-stride2-odd", 2, 4, 3, 7, 9, 1, 2, 0, 1, 1, False),
    ("1x1-stride3-13x5", 1, 3, 4, 13, 5, 1, 3, 0, 1, 1, True),
    ("1x1-padded", 1, 3, 4, 5, 6, 1, 1, 1, 1, 1, True),
    ("1x1-groups2", 2, 4, 6, 7, 9, 1, 1, 0, 1, 2, True),
    ("3x3-pad1", 2, 3, 5, 7, 9, 3, 1, 1, 1, 1, True),
    ("3x3-nopad-stride2-13x5", 1, 3, 4, 13, 5, 3, 2, 0, 1, 1, True),
    ("3x3-stride3-pad2", 2, 3, 4, 13, 5, 3, 3, 2, 1, 1, False),
    ("3x3-dilation2-pad2", 1, 4, 3, 7, 9, 3, 1, 2, 2, 1, True),
    ("3x3-dilation3-stride2", 1, 2, 3, 13, 11, 3, 2, 1, 3, 1, True),
    ("3x3-groups2-stride2", 2, 4, 6, 7, 9, 3, 2, 1, 1, 2, True),
    ("3x3-channel-multiplier", 1, 3, 6, 7, 9, 3, 1, 1, 1, 3, True),
    ("5x5-groups2-stride2-dil2", 1, 4, 4, 13, 11, 5, 2, 2, 2, 2, True),
    ("5x5-nopad-stride3", 1, 2, 3, 13, 9, 5, 3, 0, 1, 1, True),
    ("depthwise", 2, 4, 4, 7, 9, 3, 1, 1, 1, 4, True),
    ("depthwise-stride2-odd", 1, 3, 3, 13, 5, 3, 2, 1, 1, 3, False),
    ("depthwise-dilation3-pad2", 1, 3, 3, 11, 9, 3, 1, 2, 3, 3, True),
    ("depthwise-5x5-stride3", 1, 4, 4, 13, 11, 5, 3, 2, 1, 4, True),
    ("depthwise-1x1-input", 2, 3, 3, 1, 1, 3, 2, 1, 1, 3, True),
]
CONV_PARAMS = pytest.mark.parametrize(
    "batch, cin, cout, height, width, kernel, stride, padding, dilation, groups, with_bias",
    [case[1:] for case in CONV_CASES], ids=[case[0] for case in CONV_CASES])


def conv_inputs(gen, batch, cin, cout, height, width, kernel, groups, with_bias, dtype):
    x = randn(gen, batch, cin, height, width, dtype=dtype)
    weight = randn(gen, cout, cin // groups, kernel, kernel, dtype=dtype)
    bias = randn(gen, cout, dtype=dtype) if with_bias else None
    return x, weight, bias


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@CONV_PARAMS
def test_conv2d_backward(batch, cin, cout, height, width, kernel, stride, padding, dilation, groups, with_bias,
                         dtype):
    gen = np.random.default_rng(1)
    x, weight, bias = conv_inputs(gen, batch, cin, cout, height, width, kernel, groups, with_bias, dtype)
    options = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    grad_output = randn(gen, *ops.conv2d(x, weight, bias, **options).shape, dtype=dtype)
    _, ref = torch_vjp(lambda *a: F.conv2d(*a, **options), (x, weight, bias), grad_output)
    copies = [a.copy() for a in (grad_output, x, weight)]

    grad_x, grad_weight, grad_bias = ops.conv2d_backward(grad_output, x, weight, bias=with_bias, **options)

    assert_grad_close(grad_x, ref[0], dtype, "dL/dx")
    assert_grad_close(grad_weight, ref[1], dtype, "dL/dweight")
    if with_bias:
        assert_grad_close(grad_bias, ref[2], dtype, "dL/dbias")
    else:
        assert grad_bias is None
    for a, c in zip((grad_output, x, weight), copies):
        np.testing.assert_array_equal(a, c)


def test_conv2d_backward_unread_pixels_get_zero():
    """Stride 2 on a 3x3 kernel without padding over 8 columns reads columns 0..6: column 7 never."""
    gen = np.random.default_rng(3)
    x, weight = randn(gen, 1, 2, 8, 8), randn(gen, 3, 2, 3, 3)
    grad_output = randn(gen, *ops.conv2d(x, weight, stride=2).shape)
    grad_x, _, _ = ops.conv2d_backward(grad_output, x, weight, stride=2, bias=False)
    assert np.all(grad_x[..., 7, :] == 0) and np.all(grad_x[..., :, 7] == 0)
    assert np.all(grad_x[..., :7, :7] != 0)


def test_conv2d_backward_rejects_a_mismatched_grad_output():
    x, weight = np.zeros((1, 2, 7, 7)), np.zeros((3, 2, 3, 3))
    with pytest.raises(ValueError, match="grad_output of shape"):
        ops.conv2d_backward(np.zeros((1, 3, 7, 7)), x, weight)


@pytest.mark.parametrize("case", ["1x1-stride2-odd", "3x3-stride3-pad2", "5x5-groups2-stride2-dil2",
                                  "depthwise-dilation3-pad2"])
def test_conv2d_backward_finite_differences(case):
    _, batch, cin, cout, height, width, kernel, stride, padding, dilation, groups, _ = next(
        c for c in CONV_CASES if c[0] == case)
    gen = np.random.default_rng(4)
    x, weight, bias = conv_inputs(gen, batch, cin, cout, height, width, kernel, groups, True, np.float64)
    options = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    grad_output = randn(gen, *ops.conv2d(x, weight, bias, **options).shape)
    grads = ops.conv2d_backward(grad_output, x, weight, bias, **options)
    check_finite_differences(lambda *a: ops.conv2d(*a, **options), (x, weight, bias), grads, grad_output)


# --------------------------------------------------------------------------------------------
# linear, global average pooling
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("x_shape, out_features", [((7,), 3), ((5, 9), 4), ((2, 3, 13), 5), ((2, 1, 3, 7), 6)])
def test_linear_backward(x_shape, out_features, dtype):
    gen = np.random.default_rng(5)
    x, weight, bias = randn(gen, *x_shape, dtype=dtype), randn(gen, out_features, x_shape[-1], dtype=dtype), \
        randn(gen, out_features, dtype=dtype)
    grad_output = randn(gen, *x_shape[:-1], out_features, dtype=dtype)
    _, ref = torch_vjp(F.linear, (x, weight, bias), grad_output)
    grads = ops.linear_backward(grad_output, x, weight, bias)
    for ours, theirs, what in zip(grads, ref, ("dL/dx", "dL/dweight", "dL/dbias")):
        assert_grad_close(ours, theirs, dtype, what)


def test_linear_backward_finite_differences():
    gen = np.random.default_rng(6)
    x, weight, bias = randn(gen, 2, 3, 5), randn(gen, 4, 5), randn(gen, 4)
    grad_output = randn(gen, 2, 3, 4)
    check_finite_differences(ops.linear, (x, weight, bias), ops.linear_backward(grad_output, x, weight, bias),
                             grad_output)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("shape", [(2, 3, 7, 9), (1, 4, 13, 5), (3, 2, 1, 1)])
def test_global_avg_pool_backward(shape, dtype):
    gen = np.random.default_rng(7)
    x = randn(gen, *shape, dtype=dtype)
    grad_output = randn(gen, *shape[:2], dtype=dtype)
    _, (ref,) = torch_vjp(lambda t: F.adaptive_avg_pool2d(t, 1)[..., 0, 0], (x,), grad_output)
    assert_grad_close(ops.global_avg_pool_backward(grad_output, x.shape), ref, dtype, "dL/dx")


def test_global_avg_pool_backward_finite_differences():
    gen = np.random.default_rng(8)
    x = randn(gen, 2, 3, 5, 3)
    grad_output = randn(gen, 2, 3)
    check_finite_differences(ops.global_avg_pool, (x,), (ops.global_avg_pool_backward(grad_output, x.shape),),
                             grad_output)


# --------------------------------------------------------------------------------------------
# Batch norm: inference form and training form
# --------------------------------------------------------------------------------------------


def bn_inputs(gen, shape, dtype):
    """Input, running mean and variance, gamma and beta, all of O(1) effect."""
    channels = shape[1]
    x = (randn(gen, *shape) * 2 + 0.5).astype(dtype)
    mean, var = randn(gen, channels, dtype=dtype), gen.uniform(0.3, 3.0, channels).astype(dtype)
    gamma, beta = gen.uniform(0.5, 2.0, channels).astype(dtype), randn(gen, channels, dtype=dtype)
    return x, mean, var, gamma, beta


BN_SHAPES = [(2, 3, 7, 9), (3, 4, 13, 5), (1, 2, 3, 1)]
# and with at least ops.FLOAT64_BELOW values per channel, where a float32 batch norm trains in float32
BN_TRAIN_SHAPES = BN_SHAPES + [(2, 3, 40, 60), (8, 2, 64, 64)]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("eps", [1e-5, 1e-3])
@pytest.mark.parametrize("shape", BN_SHAPES)
def test_batch_norm_backward(shape, eps, dtype):
    gen = np.random.default_rng(9)
    x, mean, var, gamma, beta = bn_inputs(gen, shape, dtype)
    grad_output = randn(gen, *shape, dtype=dtype)
    _, ref = torch_vjp(lambda t, w, b: F.batch_norm(t, T(mean), T(var), w, b, training=False, eps=eps),
                       (x, gamma, beta), grad_output)
    grads = ops.batch_norm_backward(grad_output, x, mean, var, gamma, beta, eps)
    for ours, theirs, what in zip(grads, ref, ("dL/dx", "dL/dgamma", "dL/dbeta")):
        assert_grad_close(ours, theirs, dtype, what)


def test_batch_norm_backward_finite_differences():
    gen = np.random.default_rng(10)
    x, mean, var, gamma, beta = bn_inputs(gen, (2, 3, 3, 2), np.float64)
    grad_output = randn(gen, *x.shape)
    check_finite_differences(lambda a, w, b: ops.batch_norm(a, mean, var, w, b, eps=1e-3), (x, gamma, beta),
                             ops.batch_norm_backward(grad_output, x, mean, var, gamma, beta, 1e-3), grad_output)


def assert_stats_close(ours, ref, what):
    ref = ref.detach().numpy()
    assert ours.dtype == ref.dtype and ours.shape == ref.shape, what
    rel = float(np.max(np.abs(ours.astype(np.float64) - ref)) / np.max(np.abs(ref.astype(np.float64))))
    assert rel <= 1e-6, f"{what}: relative error {rel:.3e} > 1e-6"


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("momentum", [0.1, 0.3])
@pytest.mark.parametrize("shape", BN_TRAIN_SHAPES)
def test_batch_norm_train(shape, momentum, dtype):
    """Output, input gradients and the running statistics after one step, against
    ``F.batch_norm(training=True)``, which updates its running-statistics tensors in place."""
    gen = np.random.default_rng(11)
    eps = 1e-5
    x, mean, var, gamma, beta = bn_inputs(gen, shape, dtype)
    grad_output = randn(gen, *shape, dtype=dtype)
    copies = [a.copy() for a in (x, mean, var, gamma, beta)]
    torch_mean, torch_var = T(mean), T(var)
    y_ref, ref = torch_vjp(
        lambda t, w, b: F.batch_norm(t, torch_mean, torch_var, w, b, training=True, momentum=momentum, eps=eps),
        (x, gamma, beta), grad_output)

    y, new_mean, new_var, saved = ops.batch_norm_train(x, mean, var, gamma, beta, eps=eps, momentum=momentum)
    grads = ops.batch_norm_train_backward(grad_output, saved)

    assert_grad_close(y, y_ref, dtype, "y")
    assert_stats_close(new_mean, torch_mean, "running mean")
    assert_stats_close(new_var, torch_var, "running var")
    for ours, theirs, what in zip(grads, ref, ("dL/dx", "dL/dgamma", "dL/dbeta")):
        assert_grad_close(ours, theirs, dtype, what)
    for a, c in zip((x, mean, var, gamma, beta), copies):  # nothing updated in place
        np.testing.assert_array_equal(a, c)
    values_per_channel = shape[0] * shape[2] * shape[3]
    assert saved.x_hat.dtype == (np.float64 if dtype == np.float32 and values_per_channel < ops.FLOAT64_BELOW else dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_batch_norm_train_against_batchnorm2d_module(dtype):
    """``torch.nn.BatchNorm2d`` in train mode, two steps: the output, the parameter and input
    gradients, and the running statistics (and that eval mode then matches the inference form)."""
    gen = np.random.default_rng(12)
    x, mean, var, gamma, beta = bn_inputs(gen, (3, 5, 7, 9), dtype)
    module = torch.nn.BatchNorm2d(5, eps=1e-5, momentum=0.1).to(torch.float64 if dtype == np.float64 else torch.float32)
    with torch.no_grad():
        module.weight.copy_(T(gamma))
        module.bias.copy_(T(beta))
        module.running_mean.copy_(T(mean))
        module.running_var.copy_(T(var))
    module.train()
    for step in range(2):
        x_step = x if step == 0 else (randn(gen, *x.shape) * 0.5 - 1).astype(dtype)
        grad_output = randn(gen, *x.shape, dtype=dtype)
        module.zero_grad()
        x_torch = T(x_step, grad=True)
        y_ref = module(x_torch)
        y_ref.backward(T(grad_output))

        y, mean, var, saved = ops.batch_norm_train(x_step, mean, var, gamma, beta, eps=1e-5, momentum=0.1)
        grad_x, grad_gamma, grad_beta = ops.batch_norm_train_backward(grad_output, saved)

        assert_grad_close(y, y_ref, dtype, f"step {step}: y")
        assert_grad_close(grad_x, x_torch.grad, dtype, f"step {step}: dL/dx")
        assert_grad_close(grad_gamma, module.weight.grad, dtype, f"step {step}: dL/dweight")
        assert_grad_close(grad_beta, module.bias.grad, dtype, f"step {step}: dL/dbias")
        assert_stats_close(mean, module.running_mean, f"step {step}: running_mean")
        assert_stats_close(var, module.running_var, f"step {step}: running_var")
    module.eval()
    with torch.no_grad():
        assert_grad_close(ops.batch_norm(x, mean, var, gamma, beta, eps=1e-5), module(T(x)), dtype, "eval after")


def test_batch_norm_train_without_running_statistics():
    gen = np.random.default_rng(13)
    x, _, _, gamma, beta = bn_inputs(gen, (2, 3, 4, 5), np.float64)
    y, new_mean, new_var, _ = ops.batch_norm_train(x, None, None, gamma, beta)
    ref = F.batch_norm(T(x), None, None, T(gamma), T(beta), training=True)
    assert new_mean is None and new_var is None
    assert_grad_close(y, ref, np.float64, "y")


def test_batch_norm_train_needs_more_than_one_value_per_channel():
    x = np.ones((1, 3, 1, 1))
    with pytest.raises(ValueError):
        F.batch_norm(T(x), None, None, training=True)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        ops.batch_norm_train(x, np.zeros(3), np.ones(3), np.ones(3), np.zeros(3))


def test_batch_norm_train_backward_finite_differences():
    gen = np.random.default_rng(14)
    x, mean, var, gamma, beta = bn_inputs(gen, (2, 3, 3, 2), np.float64)
    grad_output = randn(gen, *x.shape)
    _, _, _, saved = ops.batch_norm_train(x, mean, var, gamma, beta, eps=1e-3)
    check_finite_differences(lambda a, w, b: ops.batch_norm_train(a, mean, var, w, b, eps=1e-3)[0],
                             (x, gamma, beta), ops.batch_norm_train_backward(grad_output, saved), grad_output)


# --------------------------------------------------------------------------------------------
# Dropout
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_against_torch(p, dtype):
    """PyTorch draws its own mask; given that mask (read off its output), our rule for ``y`` and
    our backward give PyTorch's output and its autograd gradient."""
    gen = np.random.default_rng(15)
    x = randn(gen, 3, 4, 13, 5, dtype=dtype) + dtype(3)  # no zeros: the mask is where y != 0
    grad_output = randn(gen, *x.shape, dtype=dtype)
    torch.manual_seed(0)
    y_ref, (ref,) = torch_vjp(lambda t: F.dropout(t, p, training=True), (x,), grad_output)
    mask = y_ref.detach().numpy() != 0
    # the same rounding as PyTorch's (the scale 1/(1-p) in the input's dtype): equal to the last bit
    np.testing.assert_array_equal(x * ops._dropout_scale(mask, p, x.dtype), y_ref.detach().numpy())
    np.testing.assert_array_equal(ops.dropout_backward(grad_output, mask, p), ref.numpy())

    y, ours_mask = ops.dropout(x, p, np.random.default_rng(16))
    assert y.dtype == dtype and ours_mask.dtype == bool
    np.testing.assert_array_equal(y[~ours_mask], 0)
    np.testing.assert_allclose(y[ours_mask], x[ours_mask] / (1 - p), rtol=TOL[dtype])
    kept = ours_mask.mean()  # 780 draws: 5 standard deviations of the kept fraction
    assert abs(kept - (1 - p)) <= 5 * np.sqrt(p * (1 - p) / x.size)


def test_dropout_is_reproducible_from_the_generator():
    x = np.arange(1.0, 101.0)
    y1, m1 = ops.dropout(x, 0.5, np.random.default_rng(17))
    y2, m2 = ops.dropout(x, 0.5, np.random.default_rng(17))
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(m1, m2)
    _, m3 = ops.dropout(x, 0.5, np.random.default_rng(18))
    assert not np.array_equal(m1, m3)


def test_dropout_p0_is_the_identity_and_p1_zeros():
    gen = np.random.default_rng(19)
    x, g = randn(gen, 2, 3, 7), randn(gen, 2, 3, 7)
    state = gen.bit_generator.state
    y, mask = ops.dropout(x, 0.0, gen)
    assert gen.bit_generator.state == state  # nothing drawn
    np.testing.assert_array_equal(y, x)
    assert mask.all()
    np.testing.assert_array_equal(ops.dropout_backward(g, mask, 0.0), g)
    y, mask = ops.dropout(x, 1.0, gen)
    np.testing.assert_array_equal(y, F.dropout(T(x), 1.0, training=True).numpy())
    np.testing.assert_array_equal(ops.dropout_backward(g, mask, 1.0), np.zeros_like(g))
    with pytest.raises(ValueError, match="probability"):
        ops.dropout(x, 1.5, gen)


def test_dropout_backward_finite_differences():
    gen = np.random.default_rng(20)
    x, grad_output = randn(gen, 2, 3, 5), randn(gen, 2, 3, 5)
    _, mask = ops.dropout(x, 0.3, np.random.default_rng(21))
    check_finite_differences(lambda a: ops.dropout(a, 0.3, np.random.default_rng(21))[0], (x,),
                             (ops.dropout_backward(grad_output, mask, 0.3),), grad_output)


def test_backward_takes_the_forwards_arguments_and_gives_none_for_an_absent_bias():
    """``f_backward(g, *the forward's arguments)``: a forward without bias gets no bias gradient."""
    gen = np.random.default_rng(9)
    x, weight, bias = randn(gen, 1, 4, 6, 5), randn(gen, 2, 2, 3, 3), randn(gen, 2)
    g = randn(gen, *ops.conv2d(x, weight, bias, 2, 1, 1, 2).shape)
    assert ops.conv2d_backward(g, x, weight, bias, 2, 1, 1, 2)[2].shape == (2,)
    assert ops.conv2d_backward(g, x, weight, None, 2, 1, 1, 2)[2] is None
    x, weight = randn(gen, 3, 5), randn(gen, 4, 5)
    assert ops.linear_backward(randn(gen, 3, 4), x, weight)[2] is None
