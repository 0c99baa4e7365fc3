"""The fast path's kernels: in-place bias + activation, depthwise convolution over strided views,
per-thread scratch buffers, and the group norm computed from per-position partial sums.

Pure functions of arrays (and of a plan's ``Conv``); nothing here starts threads or processes:
``scratch`` keeps one buffer per calling thread, and ``GroupNorm`` is handed a barrier object to
meet its other parts at.
"""

from __future__ import annotations

import itertools
import math
import threading

import numpy as np

from ..ops import ACTIVATIONS, interpolate_bilinear
from .plan import Conv

TILE_ELEMENTS = 1 << 13
"""Length of a tiled bias row (``add_bias_act_``): adding a ``[C]`` bias to ``[R, C]`` broadcasts it
over R short rows, slower than adding a contiguous ``[n*C]`` row to ``[R/n, n*C]``."""

SCRATCH_ELEMENTS = 1 << 22
"""Most elements (16 MB in float32) a thread keeps between calls in its scratch buffer."""


# --------------------------------------------------------------------------------------------
# In-place elementwise steps
# --------------------------------------------------------------------------------------------


def bias_act_(x, bias, act, tmp=None, out=None):  # [..., C] -> out (default x) = act(x + bias)
    """``x = act(x + bias)`` in place (``tmp``: a scratch array of x's shape, or None); with
    ``out``, the last pass writes ``act(x + bias)`` there instead (x then holds an intermediate).

    SiLU: the convolution before it was scaled by 1/2 at load (``plan.act_scale``), so ``x + bias``
    is ``u = z / 2`` and ``silu(z) = z sigmoid(z) = u (1 + tanh u)``: three passes (tanh, product,
    sum). ``tanh`` is faster than ``exp`` and, unlike ``exp(-z)``, never overflows (NumPy's exp takes
    a slow path for lanes that do). ReLU is a clamp; other activations fall back to ``ops.ACTIVATIONS``."""
    if bias is not None:
        x += bias
    if out is None:
        out, last = x, x
    else:
        last = x.reshape(out.shape)  # x's values in out's shape (x is contiguous)
    if act is None or act == "linear":
        if out is not x:
            out[...] = last
    elif act in ("swish", "silu"):
        t = np.tanh(x, out=tmp)
        t *= x
        np.add(last, t.reshape(out.shape), out=out)
    elif act == "relu":
        np.maximum(last, 0, out=out)
    else:
        out[...] = ACTIVATIONS[act](last)
    return out


def add_bias_act_(x, conv: Conv, act, tmp=None, out=None):  # [..., C] -> out (default x) = act(x + conv.b)
    """``bias_act_(x, conv.b, act, tmp, out)`` with the bias tiled ``n`` times (cached on ``conv``)
    and ``x`` seen as ``[R/n, n*C]`` rows, n dividing R and ``n*C <= TILE_ELEMENTS``; the same sums.
    ``x`` (and ``tmp``) must be C-contiguous for that; otherwise the bias is broadcast. ``out``
    (x's shape, any strides) is written in x's shape."""
    channels = x.shape[-1]
    n = math.gcd(x.size // channels, max(1, TILE_ELEMENTS // channels)) if x.size else 1
    if conv.b is None or n == 1 or not x.flags.c_contiguous or (tmp is not None and not tmp.flags.c_contiguous):
        return bias_act_(x, conv.b, act, tmp, out)
    bias = conv.tiled.get(("b", n))
    if bias is None:
        bias = conv.tiled[("b", n)] = np.tile(conv.b, n)
    rows = (-1, n * channels)
    result = bias_act_(x.reshape(rows), bias, act, None if tmp is None else tmp.reshape(rows), out)
    return x if out is None else result


# --------------------------------------------------------------------------------------------
# Depthwise convolution over strided views
# --------------------------------------------------------------------------------------------


def tap_view(buf, rows, cols, k, stride, dilation):  # [nb, Hp, Wp, C] -> [nb, rows, cols, k, k, C] (no copy)
    """The window each output pixel of a depthwise convolution sees, as a strided view of the
    padded input: ``view[b, i, j, kh, kw] = buf[b, s*i + d*kh, s*j + d*kw]``."""
    sb, sh, sw, sc = buf.strides
    return np.lib.stride_tricks.as_strided(
        buf, shape=(buf.shape[0], rows, cols, k, k, buf.shape[3]),
        strides=(sb, stride * sh, stride * sw, dilation * sh, dilation * sw, sc), writeable=False)


def band_view(padded, rows, cols, k, stride, dilation, row_form):  # -> the view ``depthwise_band`` sums over
    """``tap_view(padded, ...)``, or with ``row_form`` (stride 1, weights tiled along j) the same
    windows as ``[nb, rows, k, k, cols*C]`` whole-row runs. ``view[:nb, :r]`` is the view of
    ``padded[:nb]`` for ``r`` rows, so a band loop builds it once per buffer."""
    if not row_form:
        return tap_view(padded, rows, cols, k, stride, dilation)
    sb, sh, sw, sc = padded.strides
    return np.lib.stride_tricks.as_strided(
        padded, shape=(padded.shape[0], rows, k, k, cols * padded.shape[3]),
        strides=(sb, sh, dilation * sh, dilation * sw, sc), writeable=False)


def depthwise_band(padded, out, conv: Conv, stride, dilation, tiled=None, view=None):  # [nb, Hp, Wp, C] -> out [nb, rows, cols, C]
    """``out[b, i, j, c] = sum_{kh, kw} padded[b, s*i + d*kh, s*j + d*kw, c] * w[kh, kw, c]`` in one
    ``einsum`` (a multiply-add per tap, no temporaries). With stride 1 the (j, c) axes of the view
    and of the output are one contiguous run, so the taps are summed over whole rows with the
    weights ``tiled`` along j. ``view``: ``band_view(padded, ...)`` built beforehand (``padded`` is
    then not read)."""
    nb, rows, cols, channels = out.shape
    row_form = stride == 1 and tiled is not None
    if view is None:
        view = band_view(padded, rows, cols, conv.k, stride, dilation, row_form)
    if row_form:
        np.einsum("bhijx,ijx->bhx", view, tiled, out=out.reshape(nb, rows, cols * channels))
    else:
        np.einsum("bhwijc,ijc->bhwc", view, conv.w, out=out)
    return out


def tile(conv: Conv, cols):  # [k, k, C] -> [k, k, cols*C] (cached on conv)
    """A depthwise weight repeated along a row of ``cols`` pixels, for ``depthwise_band``'s row form."""
    tiled = conv.tiled.get(("w", cols))
    if tiled is None:
        tiled = conv.tiled[("w", cols)] = np.ascontiguousarray(
            np.broadcast_to(conv.w[:, :, None, :], (conv.k, conv.k, cols, conv.w.shape[2]))).reshape(conv.k, conv.k, -1)
    return tiled


def resize_to_patch_multiple(x, patch_size):  # [B, H, W, C] -> [B, ceil(H/p)*p, ceil(W/p)*p, C]
    """``blocks.resize_to_patch_multiple`` on a channels-last map (bilinear, align_corners=True)."""
    height, width = x.shape[1:3]
    size = (-(-height // patch_size) * patch_size, -(-width // patch_size) * patch_size)
    if size == (height, width):
        return x
    resized = interpolate_bilinear(x.transpose(0, 3, 1, 2), size, align_corners=True)
    return np.ascontiguousarray(resized.transpose(0, 2, 3, 1))


# --------------------------------------------------------------------------------------------
# Work pieces and scratch memory
# --------------------------------------------------------------------------------------------


def split(n, parts):  # -> [(start, stop), ...]: range(n) in up to `parts` contiguous, near-equal pieces
    parts = max(1, min(parts, n))
    bounds = [n * i // parts for i in range(parts + 1)]
    return list(itertools.pairwise(bounds))


_scratch = threading.local()


def scratch(dtype, *shapes):  # -> one uninitialised array per shape, views of this thread's scratch buffer
    """Work arrays for one call on this thread, carved out of one buffer that the thread keeps
    (up to ``SCRATCH_ELEMENTS``) and grows as needed: allocating the bands' arrays afresh on every
    call made the kernel map and zero their pages again (thousands of page faults per forward
    pass, all of it system time). The arrays are only valid until the thread's next call."""
    dtype = np.dtype(dtype)
    align = max(1, 64 // dtype.itemsize)
    sizes = [-(-math.prod(shape) // align) * align for shape in shapes]
    total = sum(sizes)
    key = dtype.str
    buf = getattr(_scratch, "buffers", {}).get(key)
    if buf is None or buf.size < total:
        buf = np.empty(total, dtype)
        if total <= SCRATCH_ELEMENTS:
            _scratch.__dict__.setdefault("buffers", {})[key] = buf
    out, offset = [], 0
    for shape, size in zip(shapes, sizes):
        out.append(buf[offset : offset + math.prod(shape)].reshape(shape))
        offset += size
    return out


# --------------------------------------------------------------------------------------------
# Group norm from per-position partial sums
# --------------------------------------------------------------------------------------------


class GroupNorm:
    """Group norm with one group and without its affine part (folded into the next convolution)
    of tokens ``[B, P, N, d]``, per sample, from partial sums *per pixel position* q of the patch:
    the mean ``a_q`` of ``x[:, q]`` (rounded to x's dtype), the centred values ``x - a_q`` (written
    once, into ``out``) and their sum of squares (a batched dot product). The P partials then give
    the mean ``m`` and the sum of squares about it, ``sum_q [S_q + 2 (a_q - m) sum (x_q - a_q) +
    n_q (a_q - m)^2]`` (in float64, as in Chan et al.'s parallel variance), and each position's
    values are shifted by ``a_q - m`` and scaled by ``1 / sqrt(var + eps)``.

    The positions may be split among ``parts`` threads or processes, each calling
    ``norm(part, x[:, p0:p1], out[:, p0:p1], p0)``; they meet at ``barrier`` (an object with
    ``wait(part)`` and ``abort()``; needed when ``parts > 1``) between the partial sums and the
    scaling. The partials are always per position and always combined in the same order, so the
    result does not depend on the split: one image gives the same bits on one thread, several
    threads or a team of processes. ``partial``: where the partial sums live (memory the parts
    share; default: this process's)."""

    def __init__(self, parts, batch, positions, count, eps, barrier=None, partial=None):
        if parts > 1 and barrier is None:
            raise ValueError("a group norm split into parts needs a barrier for them to meet at")
        self.parts, self.barrier = parts, barrier
        # n, sum x, a, sum (x - a)^2 per position; two sets, used by turns: a part can be one norm
        # ahead of another (past the barrier) but not two, so it never writes the set the other reads
        self.partial = np.zeros((2, positions, batch, 4)) if partial is None else partial
        self.calls = [0] * parts
        self.count, self.eps = count, eps

    def __call__(self, part, x, out, p0=0):  # x, out: [B, p1 - p0, N, d] -> out
        partial = self.partial[self.calls[part] % 2]
        self.calls[part] += 1
        o3 = self._centre(x, out, partial, p0)
        if self.barrier is not None:
            self.barrier.wait(part)
        n, sums, a, squares = (partial[:, :, i] for i in range(4))  # [P, batch]
        mean = sums.sum(axis=0) / self.count
        delta = a - mean
        var = (squares + 2 * delta * (sums - n * a) + n * delta * delta).sum(axis=0) / self.count
        inv = (1 / np.sqrt(var + self.eps)).astype(x.dtype)
        o3 += delta[p0 : p0 + x.shape[1]].T.astype(x.dtype)[:, :, None]
        o3 *= inv[:, None, None]
        return out

    @staticmethod
    def _centre(x, out, partial, p0):  # -> out as [B, Pp, N*d], holding x - a_q; partial[p0:p0+Pp] filled
        """This part's partial sums, one call per step for all its positions: per position (row of
        x3), the same reductions as on that position alone."""
        batch, positions = x.shape[:2]
        x3, o3 = x.reshape(batch, positions, -1), out.reshape(batch, positions, -1)
        total = x3.sum(axis=2)  # [B, Pp]
        local = (total / x3.shape[2]).astype(x.dtype)  # a_q
        np.subtract(x3, local[:, :, None], out=o3)
        mine = partial[p0 : p0 + positions]  # [Pp, B, 4]
        mine[:, :, 0], mine[:, :, 1], mine[:, :, 2] = x3.shape[2], total.T, local.T
        mine[:, :, 3] = np.matmul(o3[:, :, None, :], o3[:, :, :, None])[:, :, 0, 0].T
        return o3

    def abort(self):
        """Tell the other parts to stop waiting (this part failed)."""
        if self.barrier is not None:
            self.barrier.abort()
