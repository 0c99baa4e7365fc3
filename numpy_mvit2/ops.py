"""The kernels of MobileViTV2, one NumPy function each.

Every function here is pure: arrays in, arrays out, no state. Each docstring gives the equation it
computes and the shapes it takes, and ``tests/test_ops.py`` pins each one against its
``torch.nn.functional`` twin. Layout is NCHW throughout: ``B`` batch, ``C`` channels, ``H x W``
spatial size. Arrays keep the dtype they arrive in (float32 or float64); nothing is upcast behind
the reader's back except where a comment says so.

Backward passes. Each forward ``f`` that training needs has its vector-Jacobian product
``f_backward`` directly below it, in the same notation: ``f_backward(grad_output, *inputs, **options)``
takes the gradient of a scalar loss ``L`` with respect to ``f``'s output (``dL/dy``, shaped like
``y``; a forward with two outputs takes one gradient for each, the second may be None), then the
inputs the forward read (only their shape, ``input_shape``, where the backward needs no more) and
the forward's own options, and returns ``dL/d(input)`` for each array input a loss can train, in
the order of the forward's arguments, each shaped like its input (``None`` for one that is absent,
such as a missing bias; buffers such as batch norm's running statistics get none). Where the backward needs values
that only the forward computes (batch statistics, a dropout mask), the forward returns them
alongside its output and the backward takes them in place of the inputs. A loss's backward
takes the loss's own inputs and ``grad`` (``dL/dloss``, 1 by default) and returns the gradient
with respect to its prediction or logits. Docstrings give the
derivation; ``tests/test_backward_*.py`` check each backward against ``torch.autograd`` and
against central finite differences.

``@primitive`` (``numpy_mvit2.autodiff``) marks the kernels the model is built from: called with
arrays, as everywhere here, a marked kernel is just the function; called by
``numpy_mvit2.training`` with values on a tape, it is recorded with its backward.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .autodiff import primitive

# --------------------------------------------------------------------------------------------
# Convolution
# --------------------------------------------------------------------------------------------


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Output length of a convolution along one axis, as ``torch.nn.Conv2d`` computes it:
    ``floor((size + 2*padding - dilation*(kernel-1) - 1) / stride) + 1``."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _taps(x, kernel, stride, dilation, out_hw):  # [..., Hp, Wp] -> kernel*kernel views [..., Ho, Wo]
    """The strided windows a kernel tap (kh, kw) sees: ``x[..., kh*d + s*i, kw*d + s*j]``."""
    ho, wo = out_hw
    for kh in range(kernel):
        for kw in range(kernel):
            h0, w0 = kh * dilation, kw * dilation
            yield kh, kw, x[..., h0 : h0 + stride * (ho - 1) + 1 : stride, w0 : w0 + stride * (wo - 1) + 1 : stride]


@primitive
def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):  # [B, Cin, H, W] -> [B, Cout, Ho, Wo]
    """2-D cross-correlation, as ``torch.nn.functional.conv2d`` with square kernels and zero padding.

    ``y[b, o, i, j] = bias[o] + sum_{c, kh, kw} weight[o, c, kh, kw] * xpad[b, g*Cg + c, s*i + d*kh, s*j + d*kw]``
    where ``g = o // (Cout / groups)`` is the group of output channel ``o``, ``Cg = Cin / groups``
    the input channels per group, ``s`` the stride, ``d`` the dilation and ``xpad`` the input with
    ``padding`` zeros on each side.

    weight: ``[Cout, Cin / groups, k, k]``; bias: ``[Cout]`` or None.

    Three paths compute the same sum: a 1x1 convolution is one matrix product over channels; a
    depthwise convolution (one input channel per group) is ``k*k`` shifted multiply-adds; the
    general case gathers the ``k*k`` taps (im2col) and does one matrix product per group.
    """
    batch, cin, height, width = x.shape
    cout, cin_g, kernel, kernel_w = weight.shape
    if kernel != kernel_w:
        raise ValueError(f"conv2d: only square kernels are supported, got weight of shape {weight.shape}")
    if cin != cin_g * groups or cout % groups:
        raise ValueError(
            f"conv2d: input has {cin} channels and weight {tuple(weight.shape)} with groups={groups}; "
            f"expected {cin_g * groups} input channels and output channels divisible by {groups}"
        )
    ho = conv_output_size(height, kernel, stride, padding, dilation)
    wo = conv_output_size(width, kernel, stride, padding, dilation)
    if ho <= 0 or wo <= 0:
        raise ValueError(
            f"conv2d: input of size {height}x{width} is too small for kernel {kernel}, dilation {dilation}, "
            f"padding {padding}"
        )

    if kernel == 1 and padding == 0 and groups == 1:  # a matrix product over the channel axis
        xs = x[:, :, ::stride, ::stride] if stride > 1 else x
        y = np.matmul(weight.reshape(cout, cin), xs.reshape(batch, cin, -1)).reshape(batch, cout, ho, wo)
    else:
        if padding:
            x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
        if cin_g == 1 and cout == groups:  # depthwise: each channel has its own k x k filter
            y = np.zeros((batch, cout, ho, wo), dtype=np.result_type(x, weight))
            product = np.empty(y.shape[1:], dtype=y.dtype)
            # image by image: the k*k passes over one image's output and product stay in the CPU cache
            for image, out in zip(x, y):
                for kh, kw, tap in _taps(image, kernel, stride, dilation, (ho, wo)):
                    out += np.multiply(weight[:, 0, kh, kw, None, None], tap, out=product)
        else:  # im2col: [B, groups, Cg * k * k, Ho * Wo], then one matmul per group
            cols = np.empty((batch, cin, kernel, kernel, ho, wo), dtype=x.dtype)
            for kh, kw, tap in _taps(x, kernel, stride, dilation, (ho, wo)):
                cols[:, :, kh, kw] = tap
            cols = cols.reshape(batch, groups, cin_g * kernel * kernel, ho * wo)
            w = weight.reshape(groups, cout // groups, cin_g * kernel * kernel)
            y = np.matmul(w, cols).reshape(batch, cout, ho, wo)
    if bias is not None:
        y += bias[None, :, None, None]
    return y


def conv2d_backward(grad_output, x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    # [B, Cout, Ho, Wo], [B, Cin, H, W], [Cout, Cin/g, k, k] -> [B, Cin, H, W], [Cout, Cin/g, k, k], [Cout] | None
    """Vector-Jacobian product of ``conv2d``: ``(dL/dx, dL/dweight, dL/dbias)`` from ``g = dL/dy``.

    The forward is linear in ``x`` and in ``weight`` separately, so each gradient is the sum in
    ``conv2d``'s docstring with the roles swapped. Differentiating
    ``y[b, o, i, j] = bias[o] + sum_{c, kh, kw} weight[o, c, kh, kw] * xpad[b, g*Cg + c, s*i + d*kh, s*j + d*kw]``:

    - ``dL/dbias[o] = sum_{b, i, j} g[b, o, i, j]``;
    - ``dL/dweight[o, c, kh, kw] = sum_{b, i, j} g[b, o, i, j] * xpad[b, g*Cg + c, s*i + d*kh, s*j + d*kw]``:
      the output gradient correlated with the tap ``(kh, kw)`` of the input, the same windows
      (im2col columns) the forward multiplies;
    - ``dL/dxpad[b, g*Cg + c, s*i + d*kh, s*j + d*kw] += sum_{o in group g} weight[o, c, kh, kw] * g[b, o, i, j]``:
      every input pixel collects the gradient of every output that read it (col2im, a scatter-add
      of each tap's window back to where it was read); ``dL/dx`` is ``dL/dxpad`` without the
      padding. Rows and columns the forward never reads (when the stride does not divide the
      padded size) get zero.

    ``bias``: the forward's (an array, or True: ``dL/dbias`` is returned; None or False: None is).
    The three paths mirror the forward's: one matrix product for 1x1 (unpadded, one group), ``k*k`` shifted
    multiply-adds for depthwise (image by image, as there), im2col / col2im around one matrix product
    per group otherwise.
    """
    batch, cin, height, width = x.shape
    cout, cin_g, kernel, _ = weight.shape
    ho, wo = grad_output.shape[2:]
    if grad_output.shape != (batch, cout, conv_output_size(height, kernel, stride, padding, dilation),
                             conv_output_size(width, kernel, stride, padding, dilation)):
        raise ValueError(f"conv2d_backward: grad_output of shape {grad_output.shape} does not match the output "
                         f"of conv2d on {x.shape} with weight {weight.shape}")
    dtype = np.result_type(grad_output, x, weight)
    grad_bias = None if bias is None or bias is False else grad_output.sum(axis=(0, 2, 3))

    if kernel == 1 and padding == 0 and groups == 1:  # y = W x over channels: dW = g x^T, dx = W^T g
        xs = x[:, :, ::stride, ::stride] if stride > 1 else x
        g = grad_output.reshape(batch, cout, ho * wo)
        grad_weight = np.matmul(g, xs.reshape(batch, cin, -1).swapaxes(1, 2)).sum(axis=0).reshape(weight.shape)
        grad_weight = grad_weight.astype(dtype, copy=False)
        grad_xs = np.matmul(weight.reshape(cout, cin).T, g).reshape(batch, cin, ho, wo)
        if stride == 1:
            return grad_xs.astype(dtype, copy=False), grad_weight, grad_bias
        grad_x = np.zeros(x.shape, dtype=dtype)
        grad_x[:, :, ::stride, ::stride] = grad_xs  # the pixels between strides were never read
        return grad_x, grad_weight, grad_bias

    xpad = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding))) if padding else x
    grad_xpad = np.zeros(xpad.shape, dtype=dtype)
    # _taps yields views: adding into a tap of grad_xpad scatters into the pixels that tap read
    if cin_g == 1 and cout == groups:  # depthwise: per channel, dW[c, kh, kw] = <g, tap>, dtap += W[c, kh, kw] g
        grad_weight = np.zeros(weight.shape, dtype=dtype)
        product = np.empty(grad_output.shape[1:], dtype=dtype)
        for g, image, grad_image in zip(grad_output, xpad, grad_xpad):  # image by image, as the forward
            for (kh, kw, tap), (_, _, grad_tap) in zip(_taps(image, kernel, stride, dilation, (ho, wo)),
                                                       _taps(grad_image, kernel, stride, dilation, (ho, wo))):
                grad_weight[:, 0, kh, kw] += np.einsum("chw,chw->c", g, tap)
                grad_tap += np.multiply(weight[:, 0, kh, kw, None, None], g, out=product)
    else:  # im2col: dW = sum_b g cols^T per group; dcols = W^T g, scattered back tap by tap (col2im)
        cols = np.empty((batch, cin, kernel, kernel, ho, wo), dtype=x.dtype)
        for kh, kw, tap in _taps(xpad, kernel, stride, dilation, (ho, wo)):
            cols[:, :, kh, kw] = tap
        cols = cols.reshape(batch, groups, cin_g * kernel * kernel, ho * wo)
        g = grad_output.reshape(batch, groups, cout // groups, ho * wo)
        w = weight.reshape(groups, cout // groups, cin_g * kernel * kernel)
        grad_weight = np.matmul(g, cols.swapaxes(-1, -2)).sum(axis=0).reshape(weight.shape)
        del cols  # (the largest array here: gone before grad_cols, its size, is made)
        grad_cols = np.matmul(w.swapaxes(-1, -2), g).reshape(batch, cin, kernel, kernel, ho, wo)
        for kh, kw, grad_tap in _taps(grad_xpad, kernel, stride, dilation, (ho, wo)):
            grad_tap += grad_cols[:, :, kh, kw]
    grad_x = grad_xpad[:, :, padding : padding + height, padding : padding + width] if padding else grad_xpad
    return np.ascontiguousarray(grad_x), grad_weight.astype(dtype, copy=False), grad_bias


@primitive
def linear(x, weight, bias=None):  # [..., in] -> [..., out]
    """Affine map ``y = x W^T + b`` as ``torch.nn.functional.linear``; weight ``[out, in]``."""
    y = x @ weight.T
    return y + bias if bias is not None else y


def linear_backward(grad_output, x, weight, bias=None):  # [..., out], [..., in], [out, in] -> [..., in], [out, in], [out] | None
    """Vector-Jacobian product of ``linear``. From ``y[n, o] = sum_i x[n, i] W[o, i] + b[o]``
    (``n`` running over all leading axes): ``dL/dx = g W``, ``dL/dW = g^T x`` summed over ``n``,
    ``dL/db = sum_n g[n]`` (None when the forward had no bias)."""
    out_features, in_features = weight.shape
    g = grad_output.reshape(-1, out_features)
    grad_x = grad_output @ weight
    grad_weight = g.T @ x.reshape(-1, in_features)
    return grad_x, grad_weight, (None if bias is None else g.sum(axis=0))


# --------------------------------------------------------------------------------------------
# Dropout (training only; the inference model has none)
# --------------------------------------------------------------------------------------------


def dropout(x, p, generator):  # [...], float, np.random.Generator -> [...], bool [...]
    """Inverted dropout, as ``torch.nn.functional.dropout(training=True)``: each value is kept
    with probability ``1 - p`` and scaled by ``1 / (1 - p)``, so that ``E[y] = x``:
    ``y = x * m / (1 - p)``, ``m ~ Bernoulli(1 - p)``. Returns ``(y, m)``, the mask as booleans.

    The randomness comes only from ``generator`` (an ``np.random.Generator``), never from global
    state: the same generator state gives the same mask. ``p = 0`` is the identity and draws
    nothing; ``p = 1`` zeros everything (as PyTorch does). The draws are NumPy's, so the masks are
    not PyTorch's for the same seed; the rule that turns a mask into ``y`` is.
    """
    if not 0 <= p <= 1:
        raise ValueError(f"dropout: probability must be in [0, 1], got {p}")
    if p == 0:
        return x.copy(), np.ones(x.shape, dtype=bool)
    if p == 1:
        return np.zeros_like(x), np.zeros(x.shape, dtype=bool)
    mask = generator.random(x.shape) >= p
    return x * _dropout_scale(mask, p, x.dtype), mask


def _dropout_scale(mask, p, dtype):  # bool [...] -> [...]
    """The multiplier ``m / (1 - p)``, with ``1 / (1 - p)`` rounded to ``dtype`` first, as PyTorch
    rounds it (its noise tensor holds ``0`` or ``1 / (1 - p)`` in the input's dtype)."""
    dtype = dtype if np.issubdtype(dtype, np.floating) else np.float64
    return np.where(mask, np.asarray(1 / (1 - p), dtype=dtype), np.asarray(0, dtype=dtype))


def dropout_backward(grad_output, mask, p):  # [...], bool [...], float -> [...]
    """Vector-Jacobian product of ``dropout``: ``y`` is ``x`` times a constant, so
    ``dL/dx = g * m / (1 - p)`` with the forward's mask ``m`` (zero everywhere for ``p = 1``)."""
    if p == 1:
        return np.zeros_like(grad_output)
    return grad_output * _dropout_scale(mask, p, grad_output.dtype)


# --------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------


@primitive
def batch_norm(x, running_mean, running_var, weight, bias, eps=1e-5):  # [B, C, H, W] -> [B, C, H, W]
    """Batch norm in inference form: ``y = (x - mean[c]) / sqrt(var[c] + eps) * gamma[c] + beta[c]``,
    with the running statistics, as ``torch.nn.functional.batch_norm(training=False)``."""
    scale = weight / np.sqrt(running_var + eps)
    shift = bias - running_mean * scale
    return x * scale[None, :, None, None] + shift[None, :, None, None]


def batch_norm_backward(grad_output, x, running_mean, running_var, weight, bias, eps=1e-5):
    # [B, C, H, W] x 2, [C] x 4 -> [B, C, H, W], [C], [C]
    """Vector-Jacobian product of ``batch_norm`` (inference form): ``(dL/dx, dL/dgamma, dL/dbeta)``.

    With fixed statistics ``y = gamma[c] * xhat + beta[c]``, ``xhat = (x - mean[c]) * r[c]``,
    ``r = 1 / sqrt(var + eps)``, the map is affine per channel: ``dL/dx = g * gamma * r``,
    ``dL/dgamma[c] = sum_{b,h,w} g * xhat``, ``dL/dbeta[c] = sum_{b,h,w} g``. The running
    statistics are buffers, not parameters, and get no gradient; ``bias`` is not read (it is
    taken so the call mirrors the forward's)."""
    inv_std = 1 / np.sqrt(running_var + eps)
    x_hat = (x - running_mean[None, :, None, None]) * inv_std[None, :, None, None]
    grad_x = grad_output * (weight * inv_std)[None, :, None, None]
    return grad_x, np.sum(grad_output * x_hat, axis=(0, 2, 3)), grad_output.sum(axis=(0, 2, 3))


class BatchNormSaved(NamedTuple):
    """What ``batch_norm_train`` keeps for its backward: the normalised input ``xhat`` ``[B, C, H, W]``,
    ``r = 1 / sqrt(var_batch + eps)`` ``[C]`` and ``gamma`` ``[C]``, in the dtype ``batch_norm_train``
    computed in (float64 for a float32 input with few values per channel)."""

    x_hat: np.ndarray
    inv_std: np.ndarray
    weight: np.ndarray


FLOAT64_BELOW = 4096
"""A float32 batch norm with fewer values per channel (``B*H*W``) than this is computed in float64.
With few values ``xhat`` is close to +-1 (the ASPP's pooled branch sees one per image) and the
backward's ``g - mean(g) - xhat * mean(g * xhat)`` cancels to a small difference, which float32
would leave with a few per cent of error; with many, the difference is in practice as large as
``g`` (it is small only for a ``g`` nearly affine in ``xhat``), and float32 loses no more than
PyTorch's float32 does, while float64 would double the memory of every saved ``xhat``."""


def _per_channel_sum(x):  # [B, C, H, W] -> [C] float64
    """``sum over (b, h, w)``: the sum along each contiguous ``H*W`` row (pairwise, in the array's
    dtype, so its error grows as log(H*W)), then over the batch in float64."""
    batch, channels = x.shape[:2]
    return x.reshape(batch, channels, -1).sum(axis=2).sum(axis=0, dtype=np.float64)


def _per_channel(values, dtype):  # [C] -> [1, C, 1, 1] in dtype, to broadcast over a [B, C, H, W] map
    return values.astype(dtype)[None, :, None, None]


def batch_norm_train(x, running_mean, running_var, weight, bias, eps=1e-5, momentum=0.1):
    # [B, C, H, W], [C] x 4 -> [B, C, H, W], [C], [C], BatchNormSaved
    """Batch norm in training form, as ``torch.nn.functional.batch_norm(training=True)`` and
    ``torch.nn.BatchNorm2d`` in ``train()`` mode.

    Statistics of the batch, per channel over the ``n = B*H*W`` values:
    ``mu = mean(x)``, ``var = mean((x - mu)^2)`` (biased), and
    ``y = (x - mu) / sqrt(var + eps) * gamma[c] + beta[c]``. The running statistics move towards
    the batch's: ``new_mean = (1 - momentum) * running_mean + momentum * mu`` and
    ``new_var = (1 - momentum) * running_var + momentum * var * n / (n - 1)`` (the unbiased
    variance, as PyTorch keeps it). Nothing is modified in place: the new running statistics are
    returned (None when ``running_mean`` / ``running_var`` are None, PyTorch's
    ``track_running_stats=False``), with what the backward needs (``BatchNormSaved``).

    The statistics are summed in float64, as PyTorch's CPU kernel accumulates them; the
    normalisation runs in the input's dtype, or in float64 for a float32 input with fewer than
    ``FLOAT64_BELOW`` values per channel (see there). The variance is that of the centred values
    (two passes), never ``mean(x^2) - mu^2``, which cancels.
    """
    batch, channels, height, width = x.shape
    n = batch * height * width
    if n <= 1:
        raise ValueError(f"batch_norm_train: expected more than 1 value per channel when training, got input of shape {x.shape}")
    dtype = x.dtype
    work = np.float64 if dtype == np.float32 and n < FLOAT64_BELOW else dtype
    x = x.astype(work, copy=False)
    mean = _per_channel_sum(x) / n
    x_hat = x - _per_channel(mean, work)  # centred, then scaled in place below
    y = np.square(x_hat)  # (y's buffer holds the squares first)
    var = _per_channel_sum(y) / n
    inv_std = 1 / np.sqrt(var + eps)
    x_hat *= _per_channel(inv_std, work)
    np.multiply(x_hat, _per_channel(weight, work), out=y)
    y += _per_channel(bias, work)
    new_mean = None if running_mean is None else (1 - momentum) * running_mean + momentum * mean
    new_var = None if running_var is None else (1 - momentum) * running_var + momentum * (var * (n / (n - 1)))
    if new_mean is not None:
        new_mean = new_mean.astype(running_mean.dtype, copy=False)
    if new_var is not None:
        new_var = new_var.astype(running_var.dtype, copy=False)
    return y.astype(dtype, copy=False), new_mean, new_var, BatchNormSaved(x_hat, inv_std, weight)


def batch_norm_train_backward(grad_output, saved):  # [B, C, H, W], BatchNormSaved -> [B, C, H, W], [C], [C]
    """Vector-Jacobian product of ``batch_norm_train``: ``(dL/dx, dL/dgamma, dL/dbeta)``.

    Per channel, with ``g = dL/dy``, ``n`` values, ``xhat = (x - mu) r`` and ``r = (var + eps)^(-1/2)``:
    ``dL/dbeta = sum g`` and ``dL/dgamma = sum g * xhat``, as in the inference form. For ``x`` the
    statistics depend on ``x`` too. Write ``u = g * gamma = dL/dxhat``. Then
    ``dxhat_k/dx_j = r * (delta_kj - 1/n) - xhat_k * r * xhat_j / n``, because
    ``dmu/dx_j = 1/n`` and ``dr/dx_j = -r^3 (x_j - mu) / n = -r^2 xhat_j / n``. Summing
    ``u_k dxhat_k/dx_j`` over ``k``:

    ``dL/dx_j = r * (u_j - mean(u) - xhat_j * mean(u * xhat))
              = r * gamma * (g_j - mean(g) - xhat_j * mean(g * xhat))``,

    and the two means are ``dL/dbeta / n`` and ``dL/dgamma / n``: two sums over the batch give all
    three gradients.

    The running-statistics update is not differentiated (PyTorch updates them outside autograd).
    """
    x_hat, inv_std, weight = saved
    dtype = np.result_type(grad_output, np.float32)
    work = x_hat.dtype  # float64 for a float32 input with few values per channel (see batch_norm_train)
    n = x_hat.size // x_hat.shape[1]
    g = grad_output.astype(work, copy=False)
    grad_bias = _per_channel_sum(g)
    batch, channels = g.shape[:2]
    grad_weight = np.einsum("bci,bci->bc", g.reshape(batch, channels, -1), x_hat.reshape(batch, channels, -1))
    grad_weight = grad_weight.sum(axis=0, dtype=np.float64)  # (each image's dot products, then their sum)
    # grad_x = r * gamma * (g - mean(g) - xhat * mean(g * xhat)), in one buffer
    grad_x = x_hat * _per_channel(grad_weight / n, work)
    np.subtract(g, grad_x, out=grad_x)
    grad_x -= _per_channel(grad_bias / n, work)
    grad_x *= _per_channel(inv_std * weight, work)
    return grad_x.astype(dtype, copy=False), grad_weight.astype(dtype), grad_bias.astype(dtype)


def fold_batch_norm(conv_weight, conv_bias, running_mean, running_var, weight, bias, eps=1e-5):
    """Fold an inference batch norm into the convolution before it.

    ``BN(conv(x)) = conv'(x)`` with ``W'[o] = W[o] * s[o]`` and ``b'[o] = (b[o] - mean[o]) * s[o] + beta[o]``
    where ``s = gamma / sqrt(var + eps)``. Shapes: ``[Cout, Cin/g, k, k]`` and ``[Cout]`` in and out.
    Computed in float64 whatever the inputs' dtype, so folding adds no round-off of its own.
    """
    scale = weight.astype(np.float64) / np.sqrt(running_var.astype(np.float64) + eps)
    b = np.zeros(conv_weight.shape[0]) if conv_bias is None else conv_bias.astype(np.float64)
    new_weight = conv_weight.astype(np.float64) * scale[:, None, None, None]
    new_bias = (b - running_mean.astype(np.float64)) * scale + bias.astype(np.float64)
    return new_weight, new_bias


@primitive
def group_norm(x, num_groups, weight, bias, eps=1e-5):  # [B, C, *] -> [B, C, *]
    """Group norm, as ``torch.nn.functional.group_norm``: the channels are split into ``num_groups``
    groups; each sample's group is normalised by its own mean and biased variance,
    ``y = (x - mu) / sqrt(var + eps) * gamma[c] + beta[c]``. MobileViTV2 uses one group over
    ``[C, P, N]`` patches, which makes it a layer norm over channels and positions together."""
    batch, channels = x.shape[:2]
    xg = x.reshape(batch, num_groups, -1)
    mean = xg.mean(axis=-1, keepdims=True)
    centred = xg - mean
    var = np.mean(centred * centred, axis=-1, keepdims=True)
    y = (centred / np.sqrt(var + eps)).reshape(x.shape)
    affine_shape = (1, channels) + (1,) * (x.ndim - 2)
    return y * weight.reshape(affine_shape) + bias.reshape(affine_shape)


def group_norm_backward(grad_output, x, num_groups, weight, bias, eps=1e-5):  # [B, C, *] -> [B, C, *], [C], [C]
    """Gradients of ``group_norm`` w.r.t. ``(x, weight, bias)``, given ``g = dL/dy`` (``grad_output``).

    In one group of ``M = (C / num_groups) * prod(*)`` values ``x_i``, with ``mu = mean_i x_i``,
    ``var = mean_i (x_i - mu)^2``, ``r = 1 / sqrt(var + eps)`` and ``xhat_i = (x_i - mu) * r``,
    the forward is ``y_i = xhat_i * gamma[c(i)] + beta[c(i)]``. Then

    - ``dL/dbeta[c] = sum_{b, *} g``, ``dL/dgamma[c] = sum_{b, *} g * xhat`` (sums over the
      batch and the positions of channel c);
    - with ``h_i = g_i * gamma[c(i)]`` (the gradient reaching ``xhat``): ``d xhat_i / d x_j =
      r * (delta_ij - 1/M - xhat_i xhat_j / M)``, because ``d mu / d x_j = 1/M`` and
      ``d r / d x_j = -r^3 (x_j - mu) / M = -r^2 xhat_j / M``. Summing ``h_i`` against it:
      ``dL/dx_j = r * (h_j - mean_i h_i - xhat_j * mean_i (h_i xhat_i))``.

    ``bias`` is not read (the gradient does not depend on it); it is taken to keep the forward's
    signature.
    """
    batch, channels = x.shape[:2]
    affine_shape = (1, channels) + (1,) * (x.ndim - 2)
    xg = x.reshape(batch, num_groups, -1)
    mean = xg.mean(axis=-1, keepdims=True)
    centred = xg - mean
    rstd = 1 / np.sqrt(np.mean(centred * centred, axis=-1, keepdims=True) + eps)
    xhat = centred * rstd  # [B, G, M]
    reduce_axes = (0,) + tuple(range(2, x.ndim))
    grad_bias = grad_output.sum(axis=reduce_axes)
    grad_weight = (grad_output * xhat.reshape(x.shape)).sum(axis=reduce_axes)
    h = (grad_output * weight.reshape(affine_shape)).reshape(batch, num_groups, -1)
    grad_x = rstd * (h - h.mean(axis=-1, keepdims=True) - xhat * np.mean(h * xhat, axis=-1, keepdims=True))
    return grad_x.reshape(x.shape), grad_weight, grad_bias


# --------------------------------------------------------------------------------------------
# Activations (names as transformers' ACT2FN spells them)
# --------------------------------------------------------------------------------------------


@primitive
def relu(x):  # [...] -> [...]
    """``max(x, 0)``."""
    return np.maximum(x, 0)


def relu_backward(grad_output, x):  # [...], [...] -> [...]
    """``relu'(x) = 1 if x > 0 else 0``; at the kink ``x = 0`` the derivative is 0, as in PyTorch."""
    return grad_output * (x > 0)


@primitive
def relu6(x):  # [...] -> [...]
    """``min(max(x, 0), 6)``."""
    return np.clip(x, 0, 6)


def relu6_backward(grad_output, x):  # [...], [...] -> [...]
    """``relu6'(x) = 1 if 0 < x < 6 else 0``: zero at both kinks, as PyTorch's ``relu6`` (a
    ``hardtanh(x, 0, 6)``, whose backward passes the gradient only strictly inside the range)."""
    return grad_output * ((x > 0) & (x < 6))


@primitive
def sigmoid(x):  # [...] -> [...]
    """``1 / (1 + exp(-x))``, written so that nothing overflows: ``exp(min(x, 0)) / (1 + exp(-|x|))``,
    which is ``1 / (1 + e)`` for ``x >= 0`` and ``e / (1 + e)`` for ``x < 0``, ``e = exp(-|x|) <= 1``.
    (The same numbers, bit for bit, as choosing between those two branches with ``np.where``; computed
    in two buffers, updated in place, rather than in eight arrays: sigmoid is in every SiLU.)"""
    x = np.asarray(x)
    dtype = _float_dtype(x)
    denominator, numerator = np.empty(x.shape, dtype), np.empty(x.shape, dtype)
    np.exp(np.negative(np.abs(x, out=denominator, dtype=dtype), out=denominator), out=denominator)
    denominator += 1
    np.exp(np.minimum(x, 0, out=numerator, dtype=dtype), out=numerator)
    numerator /= denominator
    return numerator


def _float_dtype(x):  # -> the dtype np.exp gives x: its own for a float array (float16 for int8, float64 for int64)
    return np.result_type(x.dtype, np.float16)


def _half(x):  # [...] -> [...]: x / 2, a new array, in the dtype np.exp gives x
    x = np.asarray(x)
    dtype = _float_dtype(x)
    return np.multiply(x, 0.5, out=np.empty(x.shape, dtype), dtype=dtype)


def sigmoid_backward(grad_output, x):  # [...], [...] -> [...]
    """``sigmoid'(x) = s (1 - s)`` with ``s = sigmoid(x)``."""
    s = sigmoid(x)
    return grad_output * (s * (1 - s))


@primitive
def silu(x):  # [...] -> [...]
    """SiLU, also called swish: ``x * sigmoid(x)``, computed as ``u (1 + tanh u)`` with ``u = x / 2``
    (``sigmoid(x) = (1 + tanh(x / 2)) / 2``): one transcendental and four passes where ``sigmoid``
    takes two and seven, and no overflow for any x. The fast path computes it the same way. Its
    round-off is absolute: at most about ``|x| * 6e-8`` in float32, so where SiLU is tiny (x below
    -10, SiLU above -5e-4) the relative error can be large; it is ``1 + tanh u`` that rounds."""
    u = _half(x)
    t = np.tanh(u)
    t += 1
    t *= u
    return t


def silu_backward(grad_output, x):  # [...], [...] -> [...]
    """``d/dx [x s(x)] = s + x s (1 - s) = s (1 + x (1 - s))`` with ``s = sigmoid(x)``, times
    ``grad_output``. Here ``s`` is ``(1 + tanh(x / 2)) / 2``, the same function with one
    transcendental instead of ``sigmoid``'s two (its float32 round-off is absolute, about 6e-8,
    against a derivative of size 1), and the products are taken in place, in the order written."""
    s = _half(x)
    np.tanh(s, out=s)
    s *= 0.5
    s += 0.5
    t = 1 - s
    t *= x
    t += 1
    t *= s
    return grad_output * t


@primitive
def hardswish(x):  # [...] -> [...]
    """``x * relu6(x + 3) / 6``."""
    return x * relu6(x + 3) / 6


def hardswish_backward(grad_output, x):  # [...], [...] -> [...]
    """``0`` for ``x <= -3``, ``x/3 + 1/2`` for ``-3 < x < 3``, ``1`` for ``x >= 3``. The kinks belong
    to the outer pieces, as in PyTorch's kernel (2.14): the derivative is 0 at -3 and 1 at 3."""
    middle = x / 3 + 0.5
    return grad_output * np.where(x <= -3, 0, np.where(x < 3, middle, 1)).astype(middle.dtype)


@primitive
def tanh(x):  # [...] -> [...]
    return np.tanh(x)


def tanh_backward(grad_output, x):  # [...], [...] -> [...]
    """``tanh'(x) = 1 - tanh(x)^2``."""
    t = np.tanh(x)
    return grad_output * (1 - t * t)


@primitive
def identity(x):  # [...] -> [...]
    return x


def identity_backward(grad_output, x):  # [...], [...] -> [...]
    """The gradient passes unchanged."""
    return grad_output


def erf(x):  # [...] -> [...]
    """The error function ``erf(x) = 2/sqrt(pi) * integral_0^x exp(-t^2) dt``, to float64 round-off.

    NumPy has none, so we sum the everywhere-positive series
    ``erf(x) = 2/sqrt(pi) * exp(-x^2) * sum_n 2^n x^(2n+1) / (1*3*...*(2n+1))``
    for ``|x| < 6`` (positive terms: no cancellation) and use ``erf(x) = sign(x)`` beyond, where
    ``1 - |erf(x)| < 3e-17``. Evaluated in float64, returned in the input's dtype.
    """
    x = np.asarray(x)
    z = np.clip(np.abs(x.astype(np.float64)), 0, 6.0)
    term = z.copy()
    total = z.copy()
    z2 = z * z
    n_terms = int(2 * float(z2.max(initial=0.0)) + 60)
    for n in range(1, n_terms):
        term = term * (2 * z2 / (2 * n + 1))
        total += term
    result = 2 / math.sqrt(math.pi) * np.exp(-z2) * total
    result = np.where(z >= 6.0, 1.0, np.minimum(result, 1.0))
    return (np.sign(x) * result).astype(x.dtype)


@primitive
def gelu(x):  # [...] -> [...]
    """Exact GELU: ``x * Phi(x) = x/2 * (1 + erf(x / sqrt(2)))``."""
    return x * 0.5 * (1 + erf(x / math.sqrt(2)))


def gelu_backward(grad_output, x):  # [...], [...] -> [...]
    """``d/dx [x Phi(x)] = Phi(x) + x phi(x)``, with ``Phi(x) = (1 + erf(x / sqrt 2)) / 2`` and the
    normal density ``phi(x) = exp(-x^2 / 2) / sqrt(2 pi)``."""
    cdf = 0.5 * (1 + erf(x / math.sqrt(2)))
    pdf = np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    return grad_output * (cdf + x * pdf)


@primitive
def gelu_tanh(x):  # [...] -> [...]
    """GELU's tanh approximation: ``x/2 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))``
    (``gelu_new``, ``gelu_pytorch_tanh`` and ``gelu_python_tanh`` in transformers)."""
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x * x * x)))


def _tanh_gelu_derivative(x, k):  # [...] -> [...]
    """``d/dx [x/2 (1 + tanh(u))]`` with ``u = k (x + 0.044715 x^3)``:
    ``(1 + t)/2 + x/2 (1 - t^2) k (1 + 3 * 0.044715 x^2)``, ``t = tanh(u)``."""
    t = np.tanh(k * (x + 0.044715 * x * x * x))
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * k * (1 + 3 * 0.044715 * x * x)


def gelu_tanh_backward(grad_output, x):  # [...], [...] -> [...]
    """The derivative of ``gelu_tanh`` (``_tanh_gelu_derivative`` with ``k = sqrt(2/pi)``)."""
    return grad_output * _tanh_gelu_derivative(x, math.sqrt(2 / math.pi))


@primitive
def gelu_fast(x):  # [...] -> [...]
    """The same approximation as ``gelu_tanh``, with transformers' rounded constant 0.7978845608."""
    return 0.5 * x * (1 + np.tanh(x * 0.7978845608 * (1 + 0.044715 * x * x)))


def gelu_fast_backward(grad_output, x):  # [...], [...] -> [...]
    """The derivative of ``gelu_fast``: ``u = 0.7978845608 x (1 + 0.044715 x^2)`` is the same
    polynomial as in ``gelu_tanh`` with ``k = 0.7978845608``."""
    return grad_output * _tanh_gelu_derivative(x, 0.7978845608)


@primitive
def quick_gelu(x):  # [...] -> [...]
    """``x * sigmoid(1.702 x)``."""
    return x * sigmoid(1.702 * x)


def quick_gelu_backward(grad_output, x):  # [...], [...] -> [...]
    """``d/dx [x s(a x)] = s + a x s (1 - s)`` with ``s = sigmoid(a x)``, ``a = 1.702``."""
    s = sigmoid(1.702 * x)
    return grad_output * (s + 1.702 * x * s * (1 - s))


ACTIVATIONS = {
    "swish": silu,
    "silu": silu,
    "relu": relu,
    "relu6": relu6,
    "gelu": gelu,
    "gelu_python": gelu,
    "gelu_new": gelu_tanh,
    "gelu_pytorch_tanh": gelu_tanh,
    "gelu_python_tanh": gelu_tanh,
    "gelu_fast": gelu_fast,
    "quick_gelu": quick_gelu,
    "hardswish": hardswish,
    "sigmoid": sigmoid,
    "tanh": tanh,
    "linear": identity,
}
"""Activation name (as in ``config.hidden_act``) -> function."""


ACTIVATION_BACKWARDS = {
    "swish": silu_backward,
    "silu": silu_backward,
    "relu": relu_backward,
    "relu6": relu6_backward,
    "gelu": gelu_backward,
    "gelu_python": gelu_backward,
    "gelu_new": gelu_tanh_backward,
    "gelu_pytorch_tanh": gelu_tanh_backward,
    "gelu_python_tanh": gelu_tanh_backward,
    "gelu_fast": gelu_fast_backward,
    "quick_gelu": quick_gelu_backward,
    "hardswish": hardswish_backward,
    "sigmoid": sigmoid_backward,
    "tanh": tanh_backward,
    "linear": identity_backward,
}
"""Activation name -> its backward ``fn(grad_output, x) -> grad_x``, one for every entry of
``ACTIVATIONS``."""


# --------------------------------------------------------------------------------------------
# Softmax, pooling, resizing
# --------------------------------------------------------------------------------------------


@primitive
def softmax(x, axis=-1):  # [...] -> [...]
    """``exp(x_i - max x) / sum_j exp(x_j - max x)`` along ``axis``."""
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def softmax_backward(grad_output, x, axis=-1):  # [...], [...] -> [...]
    """Vector-Jacobian product of ``softmax``: with ``s = softmax(x)``, ``ds_i / dx_j = s_i (delta_ij - s_j)``,
    so ``dL/dx_j = sum_i g_i s_i (delta_ij - s_j) = s_j (g_j - <g, s>)``, ``<g, s> = sum_i g_i s_i``
    along ``axis``."""
    s = softmax(x, axis=axis)
    return s * (grad_output - np.sum(grad_output * s, axis=axis, keepdims=True))


@primitive
def log_softmax(x, axis=-1):  # [...] -> [...]
    """``x_i - max x - log sum_j exp(x_j - max x)`` along ``axis``."""
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def log_softmax_backward(grad_output, x, axis=-1):  # [...], [...] -> [...]
    """Vector-Jacobian product of ``log_softmax``: ``d log s_i / dx_j = delta_ij - s_j``, so
    ``dL/dx_j = g_j - s_j * sum_i g_i`` along ``axis``."""
    return grad_output - softmax(x, axis=axis) * np.sum(grad_output, axis=axis, keepdims=True)


@primitive
def global_avg_pool(x):  # [B, C, H, W] -> [B, C]
    """Mean over the spatial axes (``adaptive_avg_pool2d(x, 1)`` without the trailing 1 x 1)."""
    return x.mean(axis=(-2, -1))


def global_avg_pool_backward(grad_output, input_shape):  # [B, C], (B, C, H, W) -> [B, C, H, W]
    """Vector-Jacobian product of ``global_avg_pool``: each of the ``H*W`` pixels contributed
    ``1/(H*W)`` of the mean, so ``dL/dx[b, c, h, w] = g[b, c] / (H*W)``."""
    height, width = input_shape[-2:]
    scaled = grad_output / np.asarray(height * width, dtype=grad_output.dtype)
    return np.ascontiguousarray(np.broadcast_to(scaled[..., None, None], tuple(input_shape)))


def _bilinear_weights(in_size: int, out_size: int, dtype, align_corners: bool = False):  # -> (i0 [out], i1 [out], lam [out])
    """Source indices and weights along one axis, as PyTorch computes them. ``align_corners=False``:
    ``src = max((dst + 0.5) * in/out - 0.5, 0)``; ``align_corners=True``: ``src = dst * (in-1)/(out-1)``
    (corner pixels map onto corner pixels). Then ``i0 = floor(src)``, ``i1 = min(i0 + 1, in - 1)``,
    ``lam = src - i0``. The arithmetic is done in the array's own precision, as PyTorch's CPU kernel does."""
    if align_corners:
        scale = np.asarray((in_size - 1) / (out_size - 1) if out_size > 1 else 0, dtype=dtype)
        src = np.arange(out_size, dtype=dtype) * scale
    else:
        scale = np.asarray(in_size / out_size, dtype=dtype)
        src = (np.arange(out_size, dtype=dtype) + dtype(0.5)) * scale - dtype(0.5)
        src = np.maximum(src, 0)
    i0 = np.minimum(src.astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    lam = (src - i0).astype(dtype)
    return i0, i1, lam


@primitive
def interpolate_bilinear(x, size, align_corners: bool = False):  # [B, C, H, W] -> [B, C, Ho, Wo]
    """Bilinear resize with the semantics of
    ``torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)``.

    Separable: first along the height, ``y = (1 - lam_h) x[i0] + lam_h x[i1]``, then the same
    along the width. Each output pixel samples the input at ``(dst + 0.5) * in/out - 0.5``
    (pixel centres aligned, clamped at the top-left border).
    """
    out_h, out_w = size
    dtype = x.dtype.type if x.dtype.kind == "f" else np.float32
    x = x.astype(dtype, copy=False)
    if (out_h, out_w) == x.shape[-2:]:
        return x.copy()
    i0, i1, lam = _bilinear_weights(x.shape[-2], out_h, dtype, align_corners)
    x = x[..., i0, :] * (1 - lam)[:, None] + x[..., i1, :] * lam[:, None]
    j0, j1, mu = _bilinear_weights(x.shape[-1], out_w, dtype, align_corners)
    return x[..., j0] * (1 - mu) + x[..., j1] * mu


def _bilinear_matrix(in_size: int, out_size: int, dtype, align_corners: bool):  # -> [out, in]
    """The forward's resize along one axis as a matrix: ``A[o, i0[o]] += 1 - lam[o]``,
    ``A[o, i1[o]] += lam[o]`` (the two add up where ``i0 = i1`` at the far border)."""
    i0, i1, lam = _bilinear_weights(in_size, out_size, dtype, align_corners)
    a = np.zeros((out_size, in_size), dtype=dtype)
    rows = np.arange(out_size)
    np.add.at(a, (rows, i0), 1 - lam)
    np.add.at(a, (rows, i1), lam)
    return a


def interpolate_bilinear_backward(grad_output, input_shape, align_corners: bool = False):  # [B, C, Ho, Wo] -> [B, C, H, W]
    """Gradient of ``interpolate_bilinear`` w.r.t. its input of shape ``input_shape``.

    The forward is linear and separable: ``y = A_h x A_w^T`` per channel, with ``A_h`` ``[Ho, H]``
    and ``A_w`` ``[Wo, W]`` holding the weights ``1 - lam`` and ``lam`` at the columns ``i0`` and
    ``i1`` of each output row (``_bilinear_matrix``). Its vector-Jacobian product is the
    transpose, ``dL/dx = A_h^T g A_w``: each output pixel's gradient goes back to the (up to) four
    input pixels it was blended from, with the same weights. Sizes equal: the forward copies, and
    so does this.
    """
    height, width = input_shape[-2:]
    out_h, out_w = grad_output.shape[-2:]
    dtype = grad_output.dtype.type if grad_output.dtype.kind == "f" else np.float32
    g = grad_output.astype(dtype, copy=False)
    if (out_h, out_w) == (height, width):
        return g.copy()
    a_h = _bilinear_matrix(height, out_h, dtype, align_corners)
    a_w = _bilinear_matrix(width, out_w, dtype, align_corners)
    return np.matmul(np.matmul(a_h.T, g), a_w)


# --------------------------------------------------------------------------------------------
# Patches and separable self-attention
# --------------------------------------------------------------------------------------------


@primitive
def unfold_patches(x, patch_size):  # [B, C, H, W] -> [B, C, P, N]
    """Cut a feature map into non-overlapping ``p x p`` patches, as
    ``torch.nn.functional.unfold(x, kernel_size=p, stride=p).reshape(B, C, p*p, -1)``.

    ``out[b, c, ph*p + pw, nh*Nw + nw] = x[b, c, nh*p + ph, nw*p + pw]``: axis 2 is the position
    inside a patch (P = p*p pixels), axis 3 the patch (N = floor(H/p) * floor(W/p) patches, in
    row-major order). Rows and columns beyond the last whole patch are dropped, as unfold drops them.
    """
    batch, channels, height, width = x.shape
    nh, nw = height // patch_size, width // patch_size
    x = x[:, :, : nh * patch_size, : nw * patch_size]
    x = x.reshape(batch, channels, nh, patch_size, nw, patch_size)
    return x.transpose(0, 1, 3, 5, 2, 4).reshape(batch, channels, patch_size * patch_size, nh * nw)


def unfold_patches_backward(grad_patches, input_shape, patch_size):  # [B, C, P, N] -> [B, C, H, W]
    """Gradient of ``unfold_patches`` w.r.t. its input of shape ``input_shape``. Unfolding only moves
    pixels, each to exactly one place, so its vector-Jacobian product moves every gradient back:
    ``fold_patches``. The rows and columns unfolding dropped reach no output; their gradient is 0."""
    return fold_patches(grad_patches, tuple(input_shape[-2:]), patch_size)


@primitive
def fold_patches(patches, output_size, patch_size):  # [B, C, P, N] -> [B, C, H, W]
    """The inverse of ``unfold_patches``, as ``torch.nn.functional.fold`` with kernel = stride = p:
    every patch goes back to where it came from; pixels no patch covered (the rows and columns
    ``unfold_patches`` dropped) are zero."""
    batch, channels = patches.shape[:2]
    height, width = output_size
    nh, nw = height // patch_size, width // patch_size
    x = patches.reshape(batch, channels, patch_size, patch_size, nh, nw).transpose(0, 1, 4, 2, 5, 3)
    x = x.reshape(batch, channels, nh * patch_size, nw * patch_size)
    if (nh * patch_size, nw * patch_size) == (height, width):
        return np.ascontiguousarray(x)
    out = np.zeros((batch, channels, height, width), dtype=patches.dtype)
    out[:, :, : nh * patch_size, : nw * patch_size] = x
    return out


def fold_patches_backward(grad_output, patch_size):  # [B, C, H, W] -> [B, C, P, N]
    """Gradient of ``fold_patches`` w.r.t. the patches. Folding puts each patch value at one pixel
    (and fills the uncovered border with zeros, which depend on no input), so the vector-Jacobian
    product reads each patch's gradient back from its pixel: ``unfold_patches``, which ignores the
    border's gradient."""
    return unfold_patches(grad_output, patch_size)


@primitive
def separable_attention(query, key, value, dropout=0.0, keep=None):  # [B, 1, P, N], [B, d, P, N], [B, d, P, N] -> [B, d, P, N], [B, 1, P, N]
    """Separable self-attention (MobileViTV2 paper, section 3.2), for every pixel position p of a patch.

    1. Context scores: ``c_s = softmax over the N patches of the query`` ([B, 1, P, N]); a single
       latent token ``L`` is compared against every patch, so this costs O(N) rather than O(N^2).
    2. Context vector: ``c_v = sum_n c_s[n] * key[:, :, :, n]`` ([B, d, P, 1]), a weighted mean of keys.
    3. Output: ``relu(value) * c_v``, the context vector broadcast to every patch.

    Returns the output and the context scores.

    ``dropout``, ``keep``: transformers' ``attn_dropout`` on the scores, between steps 1 and 2,
    while training: ``keep`` is the boolean mask of the scores kept ([B, 1, P, N], drawn as
    ``dropout`` draws one), those kept scaled by ``1 / (1 - dropout)``. Without ``keep``
    (inference, or ``attn_dropout`` 0) the scores are used as they are. The scores returned are
    the softmax's, before dropout.
    """
    scores = softmax(query, axis=-1)
    weights = scores if keep is None else scores * _dropout_scale(keep, dropout, scores.dtype)
    context = np.sum(key * weights, axis=-1, keepdims=True)
    return relu(value) * context, scores


def separable_attention_backward(grad_out, grad_scores, query, key, value, dropout=0.0, keep=None):  # -> [B, 1, P, N], [B, d, P, N], [B, d, P, N]
    """Gradients of ``separable_attention`` w.r.t. ``(query, key, value)``.

    ``grad_out`` ``[B, d, P, N]`` is ``dL/dout``; ``grad_scores`` ``[B, 1, P, N]`` is ``dL/dscores``
    when the scores returned by the forward are used downstream, or None (0). For one pixel
    position p, with ``s_n = softmax_n(q)``, ``c_j = sum_n s_n k_jn`` and
    ``out_jn = relu(v_jn) c_j``, the chain rule runs the forward backwards:

    1. ``out_jn = relu(v_jn) c_j``:
       ``dL/dv_jn = g_jn * c_j * [v_jn > 0]`` (relu'(0) = 0, as in PyTorch) and
       ``dL/dc_j = sum_n g_jn relu(v_jn)`` ([B, d, P, 1]: ``c_j`` is broadcast over n, so its
       gradient is the sum over n).
    2. ``c_j = sum_n s_n k_jn``:
       ``dL/dk_jn = dL/dc_j * s_n`` and
       ``dL/ds_n = sum_j dL/dc_j k_jn + grad_scores_n`` ([B, 1, P, N]: ``s_n`` is shared by the d
       channels, and also leaves the forward as ``scores``).
    3. ``s = softmax(q)`` over n: ``ds_n / dq_m = s_n (delta_nm - s_m)``, so with ``h = dL/ds``,
       ``dL/dq_m = s_m (h_m - <h, s>)``, ``<h, s> = sum_n h_n s_n`` (``softmax_backward``).

    A check by hand: N = 2, d = 1, ``q = (0, 0)`` (so ``s = (1/2, 1/2)``), ``k = (1, 3)``
    (``c = 2``), ``v = (1, -1)``, ``g = (1, 1)``, no ``grad_scores``. Then ``dL/dv = (2, 0)``,
    ``dL/dc = 1``, ``dL/dk = (1/2, 1/2)``, ``h = (1, 3)``, ``<h, s> = 2`` and
    ``dL/dq = (1/2 * (1 - 2), 1/2 * (3 - 2)) = (-1/2, 1/2)``: raising q_2 moves weight to the
    larger key.

    With dropout on the scores (``keep``), step 2 reads ``w_n = s_n m_n / (1 - p)`` in place of
    ``s_n``: ``dL/dk_jn = dL/dc_j * w_n`` and the sum over j is multiplied by ``m_n / (1 - p)``
    before ``grad_scores`` (which is the softmax's own output's) is added.
    """
    scores = softmax(query, axis=-1)
    scale = None if keep is None else _dropout_scale(keep, dropout, scores.dtype)
    weights = scores if scale is None else scores * scale
    context = np.sum(key * weights, axis=-1, keepdims=True)  # [B, d, P, 1]
    grad_value = grad_out * context * (value > 0)
    grad_context = np.sum(grad_out * relu(value), axis=-1, keepdims=True)  # [B, d, P, 1]
    grad_key = grad_context * weights
    grad_s = np.sum(grad_context * key, axis=1, keepdims=True)  # [B, 1, P, N]
    if scale is not None:
        grad_s = grad_s * scale
    if grad_scores is not None:
        grad_s = grad_s + grad_scores
    grad_query = scores * (grad_s - np.sum(grad_s * scores, axis=-1, keepdims=True))
    return grad_query, grad_key, grad_value


# --------------------------------------------------------------------------------------------
# Losses (mean reduction, as transformers calls them)
# --------------------------------------------------------------------------------------------


def _check_class_targets(logits, target, ignore_index):  # -> target as an array, keep [B, ...] bool
    """The integer targets of ``cross_entropy``: their shape and values, checked."""
    target = np.asarray(target)
    if not np.issubdtype(target.dtype, np.integer):
        raise ValueError(f"cross_entropy: targets must be integer class indices, got dtype {target.dtype}")
    num_classes = logits.shape[1]
    if logits.shape[:1] + logits.shape[2:] != target.shape:
        raise ValueError(f"cross_entropy: logits of shape {logits.shape} do not match targets of shape {target.shape}")
    keep = target != ignore_index
    bad = keep & ((target < 0) | (target >= num_classes))
    if bad.any():
        raise ValueError(
            f"cross_entropy: target values {sorted(set(np.unique(target[bad]).tolist()))[:10]} are outside "
            f"[0, {num_classes}) and are not the ignore index {ignore_index}"
        )
    return target, keep


@primitive
def cross_entropy(logits, target, ignore_index=-100, label_smoothing=0.0):  # [B, C, ...], [B, ...] int -> scalar
    """Mean negative log-likelihood ``-mean_i log softmax(logits_i)[target_i]`` over the positions whose
    target is not ``ignore_index``, as ``torch.nn.functional.cross_entropy``. The class axis is 1.
    If every target is ignored the mean is over nothing and the result is NaN, as in PyTorch.

    With ``label_smoothing = e`` the target of position i is the mixture ``(1 - e) onehot(t_i) + e/C``,
    which PyTorch computes as ``(1 - e) * nll + e/C * mean_i (-sum_c log softmax(logits_i)[c])``,
    both means over the non-ignored positions."""
    target, keep = _check_class_targets(logits, target, ignore_index)
    num_classes = logits.shape[1]
    logp = log_softmax(logits, axis=1)
    safe = np.where(keep, target, 0)
    picked = np.take_along_axis(logp, np.expand_dims(safe, 1), axis=1)[:, 0]
    count = np.asarray(keep.sum(), dtype=logits.dtype)
    with np.errstate(invalid="ignore", divide="ignore"):
        nll = -(picked * keep).sum() / count
        if not label_smoothing:
            return nll
        smooth = -(logp.sum(axis=1) * keep).sum() / count
        return (1 - label_smoothing) * nll + smooth * (label_smoothing / num_classes)


def cross_entropy_backward(logits, target, ignore_index=-100, label_smoothing=0.0, grad=1.0):  # [B, C, ...], [B, ...] int -> [B, C, ...]
    """Gradient of ``cross_entropy`` w.r.t. the logits, times ``grad`` (``dL/dloss``).

    Per kept position i, the loss term is ``-sum_c q_ic log p_ic`` with ``p_i = softmax(logits_i)``
    and the target distribution ``q_i = (1 - e) onehot(t_i) + e/C`` (``e`` the label smoothing; q_i
    sums to 1). Since ``d log p_ic / d z_ij = delta_cj - p_ij``, ``d/dz_ij = sum_c q_ic (p_ij - delta_cj)
    = p_ij - q_ij``. The mean divides by the number K of kept positions; ignored positions get 0:
    ``dL/dz_i = grad * (p_i - q_i) * [t_i != ignore_index] / K``. When every target is ignored
    (K = 0) the loss is NaN but its gradient is 0 everywhere, as PyTorch returns it: nothing
    reaches the logits.
    """
    target, keep = _check_class_targets(logits, target, ignore_index)
    count = np.asarray(keep.sum(), dtype=logits.dtype)
    if count == 0:
        return np.zeros_like(logits)
    # p - q in place, in one array the size of the logits (a segmentation map's logits are large)
    g = softmax(logits, axis=1)
    g -= np.asarray(label_smoothing / logits.shape[1], dtype=g.dtype)
    at_target = np.expand_dims(np.where(keep, target, 0), 1)
    np.put_along_axis(g, at_target, np.take_along_axis(g, at_target, axis=1) - (1 - label_smoothing), axis=1)
    g *= (np.expand_dims(keep, 1) * (grad / count)).astype(g.dtype)
    return g


@primitive
def mse_loss(prediction, target):  # [...], [...] -> scalar
    """``mean((prediction - target)^2)``; shapes must match exactly."""
    if prediction.shape != np.shape(target):
        raise ValueError(f"mse_loss: prediction of shape {prediction.shape} and target of shape {np.shape(target)} differ")
    d = prediction - target
    return np.mean(d * d)


def mse_loss_backward(prediction, target, grad=1.0):  # [...], [...] -> [...]
    """Gradient of ``mse_loss`` w.r.t. the prediction, times ``grad``: ``2 (prediction - target) / n``
    with ``n`` the number of elements (the target's gradient is its negative)."""
    if prediction.shape != np.shape(target):
        raise ValueError(f"mse_loss: prediction of shape {prediction.shape} and target of shape {np.shape(target)} differ")
    return (prediction - target) * np.asarray(2 * grad / prediction.size, dtype=prediction.dtype)


@primitive
def binary_cross_entropy_with_logits(logits, target):  # [...], [...] -> scalar
    """``mean(max(x, 0) - x*y + log(1 + exp(-|x|)))``, the stable form of
    ``-mean(y log sigmoid(x) + (1 - y) log(1 - sigmoid(x)))``."""
    if logits.shape != np.shape(target):
        raise ValueError(
            f"binary_cross_entropy_with_logits: logits of shape {logits.shape} and targets of shape "
            f"{np.shape(target)} differ"
        )
    return np.mean(np.maximum(logits, 0) - logits * target + np.log1p(np.exp(-np.abs(logits))))


def binary_cross_entropy_with_logits_backward(logits, target, grad=1.0):  # [...], [...] -> [...]
    """Gradient of ``binary_cross_entropy_with_logits`` w.r.t. the logits, times ``grad``. Per element
    ``l(x) = -y log s(x) - (1 - y) log(1 - s(x))`` with ``s = sigmoid``; since ``d log s / dx = 1 - s``
    and ``d log(1 - s) / dx = -s``, ``l'(x) = -y (1 - s) + (1 - y) s = s - y``; the mean divides by n."""
    if logits.shape != np.shape(target):
        raise ValueError(
            f"binary_cross_entropy_with_logits: logits of shape {logits.shape} and targets of shape "
            f"{np.shape(target)} differ"
        )
    return (sigmoid(logits) - target) * np.asarray(grad / logits.size, dtype=logits.dtype)
