"""A fast CPU forward pass: the same network as ``blocks.py``, arranged for speed.

``blocks.py`` is the readable reference; this module computes the same sums in another order.
``model.fast`` (default True) selects this path; ``tests/test_fast.py`` pins it to the reference
path and ``tests/test_parity.py`` runs both against transformers.

What is different, and why (measured on the 2-core machine of ``benchmarks/README.md``):

- **Layout NHWC** ``[B, H, W, C]``, channels contiguous. A 1x1 convolution is then one
  ``[B*H*W, Cin] @ [Cin, Cout]`` matrix product with no transposes (2.3x faster than the NCHW
  ``[Cout, Cin] @ [Cin, H*W]`` product for the early, tall maps), and a depthwise tap multiplies
  whole rows ``W*C`` by a weight row tiled once per call.
- **Row bands.** An inverted residual (1x1 expand -> 3x3 depthwise -> 1x1 reduce) runs band by band
  of output rows: the expanded rows of a band (a few hundred kB, so they stay in the CPU cache)
  are computed, activated, convolved depthwise and reduced before the next band. The full
  expanded map (the largest array of the network, 2x to 4x the block's input) never exists;
  each band keeps the rows the next one shares with it instead of recomputing them. (Width 1.0,
  one core: 72 ms of CPU per image with 256 kB bands, 99 ms with whole maps.)
- **Depthwise as one fused call.** ``np.einsum`` over a strided view of the padded band sums the
  ``k*k`` taps with multiply-adds in one pass and no temporaries (ufuncs would need a product and
  an add per tap: about 1.6x slower in cache, 2.5x on whole maps).
- **Folding at load.** Batch norms are folded into the convolutions (``fold_batch_norm``, or here
  when the model kept them apart), the transformer's group-norm scale and shift into the 1x1 conv
  that follows them, and each weight is laid out as the matrix product wants it. This happens once,
  in ``build_plan``; ``MobileViTV2PreTrainedModel`` caches the plan.
- **Few temporaries.** Bias and activation are applied in place (``out=``) while the band is in
  cache; buffers are allocated per block and reused across bands. SiLU is ``u (1 + tanh u)``
  with ``u = z/2`` folded into the convolution before it: three passes, and ``tanh`` costs 0.3 ns
  an element where ``exp`` costs 0.5, and 3 on inputs where it overflows (NumPy's slow path).
- **Own threads and processes** (see "Threads" below): a batch is split into parts, one per
  thread, each run through the whole network. One image is split by rows (convolutions) and by
  pixel-in-patch position (transformer) among a team of processes (``numpy_mvit2.team``; threads
  where there is none): members that meet once per block instead of at a barrier inside every
  matrix product, and, being processes, never wait for each other's GIL. OpenBLAS runs on one
  thread meanwhile. The blocks are written against a small interface (``Threads``; the team's
  ``Rank``) that says how the pieces are run and where shared outputs live.

The transformer runs on ``[B, P, N, d]`` (pixel-in-patch, patch, channel): the 1x1 convolutions
are ``[B*P*N, d]`` products, the context scores a softmax over N, and the context vector the
batched product ``scores[B, P, 1, N] @ keys[B, P, N, d]``.
"""

from __future__ import annotations

import ctypes
import itertools
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import numpy as np

from .config import MobileViTV2Config
from .ops import ACTIVATIONS, fold_batch_norm, interpolate_bilinear
from .ops import linear as ops_linear

BAND_ELEMENTS = 1 << 16
"""Target size (in elements) of one band of an expanded map: 256 kB in float32, small enough to
stay in L2 cache while it is activated, convolved and reduced."""


# --------------------------------------------------------------------------------------------
# The plan: weights laid out once per model
# --------------------------------------------------------------------------------------------


@dataclass
class Conv:
    """A convolution ready for NHWC: ``w`` is ``[Cin*k*k, Cout]`` for dense convolutions (rows in
    (kh, kw, c) order; ``[Cin, Cout]`` for 1x1) or ``[k, k, C]`` for depthwise ones; ``b`` ``[Cout]``."""

    w: np.ndarray
    b: np.ndarray | None
    k: int = 1
    tiled: dict = field(default_factory=dict, repr=False, compare=False)
    """Copies of ``b`` (``("b", n)``: tiled n times) and of a depthwise ``w`` (``("w", n)``: see
    ``_tile``) made on first use; a plan's arrays are never edited in place (``rebuild_fast_plan``
    builds a new plan), so they stay valid."""


@dataclass
class InvertedResidual:
    expand: Conv
    depthwise: Conv
    reduce: Conv
    stride: int = 1
    dilation: int = 1


@dataclass
class TransformerLayer:
    qkv: Conv  # group-norm scale and shift folded in
    out: Conv
    ffn1: Conv  # group-norm scale and shift folded in
    ffn2: Conv


@dataclass
class MobileViTBlock:
    down: InvertedResidual
    local: Conv  # depthwise k x k
    local_dilation: int  # StageSpec.local_dilation
    to_d: Conv  # 1x1, no bias
    layers: list
    projection: Conv  # final group norm's scale and shift folded in
    projection_bias: np.ndarray  # the unfolded bias: what uncovered border pixels get


@dataclass
class Plan:
    dtype: type
    act: str
    eps: float
    patch_size: int
    patch_remainder: str  # config.choices.patch_remainder
    choices: tuple  # plan_choices(config) when built: a model rebuilds its plan when they change
    stem: Conv
    stages: list = field(default_factory=list)  # list[list[InvertedResidual]] or MobileViTBlock


def _conv(node, dtype) -> tuple[np.ndarray, np.ndarray | None]:
    """(weight, bias) of a ``{"convolution": ..., "normalization": ...}`` node, in float64, batch
    norm folded in when the model kept it apart (``fold_batch_norm=False``)."""
    conv = node["convolution"]
    w, b = conv["weight"], conv.get("bias")
    if node.get("normalization") is not None:
        w, b = fold_batch_norm(w, b, **node["normalization"])
    w = np.asarray(w, dtype=np.float64)
    return w, (None if b is None else np.asarray(b, dtype=np.float64))


def _cast(a, dtype):
    return None if a is None else np.ascontiguousarray(a, dtype=dtype)


def act_scale(act) -> float:
    """The factor a convolution followed by ``act`` is scaled by at load: 1/2 for SiLU, whose
    fast form ``silu(z) = u (1 + tanh u)`` takes ``u = z / 2`` (see ``bias_act_``); 1 otherwise.
    Scaling by a power of two is exact, so the convolution then computes exactly ``z / 2``."""
    return 0.5 if act in ("swish", "silu") else 1.0


def _scaled(w, b, scale):
    return w * scale, (None if b is None else b * scale)


def _pointwise(node, dtype, scale=None, shift=None, act=None) -> Conv:
    """A 1x1 conv as ``[Cin, Cout]``. ``scale``/``shift`` ``[Cin]`` fold an affine map of the input
    in: ``conv(x * scale + shift) = x @ (scale[:, None] * W^T) + (b + shift @ W^T)``."""
    w, b = _conv(node, dtype)
    w = w.reshape(w.shape[0], -1).T  # [Cin, Cout]
    if shift is not None:
        b = (0 if b is None else b) + shift.astype(np.float64) @ w
    if scale is not None:
        w = scale.astype(np.float64)[:, None] * w
    w, b = _scaled(w, b, act_scale(act))
    return Conv(_cast(w, dtype), _cast(b, dtype))


def _depthwise(node, dtype, act=None) -> Conv:
    w, b = _scaled(*_conv(node, dtype), act_scale(act))
    return Conv(_cast(w[:, 0].transpose(1, 2, 0), dtype), _cast(b, dtype), k=w.shape[-1])  # [k, k, C]


def _dense(node, dtype, act=None) -> Conv:
    w, b = _scaled(*_conv(node, dtype), act_scale(act))
    cout, cin, k, _ = w.shape
    return Conv(_cast(w.transpose(2, 3, 1, 0).reshape(k * k * cin, cout), dtype), _cast(b, dtype), k=k)


def _inverted_residual(node, dtype, act, stride=1, dilation=1) -> InvertedResidual:
    return InvertedResidual(_pointwise(node["expand_1x1"], dtype, act=act), _depthwise(node["conv_3x3"], dtype, act),
                            _pointwise(node["reduce_1x1"], dtype), stride, dilation)


def plan_choices(config: MobileViTV2Config) -> tuple:
    """What a plan fixes of the config's behavior: the patch remainder and each stage's local dilation."""
    return config.choices.patch_remainder, tuple(spec.local_dilation for spec in config.stages)


def build_plan(backbone_params: dict, config: MobileViTV2Config, dtype) -> Plan:
    """Lay out a backbone's parameters (``model.params`` or ``params["mobilevitv2"]``) for the
    fast path. Weights are copied once, here; nothing is copied per call."""
    act = config.hidden_act
    plan = Plan(dtype=dtype, act=act, eps=config.layer_norm_eps, patch_size=config.patch_size,
                patch_remainder=config.choices.patch_remainder, choices=plan_choices(config),
                stem=_dense(backbone_params["conv_stem"], dtype, act))
    for spec, stage in zip(config.stages, backbone_params["encoder"]["layer"]):
        if spec.kind == "mobilenet":
            plan.stages.append([_inverted_residual(block, dtype, act, stride=spec.stride if i == 0 else 1)
                                for i, block in enumerate(stage["layer"])])
            continue
        layers = []
        for layer in stage["transformer"]["layer"]:
            ln1, ln2 = layer["layernorm_before"], layer["layernorm_after"]
            layers.append(TransformerLayer(
                qkv=_pointwise(layer["attention"]["qkv_proj"], dtype, ln1["weight"], ln1["bias"]),
                out=_pointwise(layer["attention"]["out_proj"], dtype),
                ffn1=_pointwise(layer["ffn"]["conv1"], dtype, ln2["weight"], ln2["bias"], act=act),
                ffn2=_pointwise(layer["ffn"]["conv2"], dtype),
            ))
        ln = stage["layernorm"]
        _, projection_bias = _conv(stage["conv_projection"], dtype)
        plan.stages.append(MobileViTBlock(
            down=_inverted_residual(stage["downsampling_layer"], dtype, act, spec.stride, spec.downsample_dilation),
            local=_depthwise(stage["conv_kxk"], dtype, act),
            local_dilation=spec.local_dilation,
            to_d=_pointwise(stage["conv_1x1"], dtype),
            layers=layers,
            projection=_pointwise(stage["conv_projection"], dtype, ln["weight"], ln["bias"]),
            projection_bias=_cast(projection_bias, dtype),
        ))
    return plan


# --------------------------------------------------------------------------------------------
# In-place elementwise steps
# --------------------------------------------------------------------------------------------


def bias_act_(x, bias, act, tmp=None, out=None):  # [..., C] -> out (default x) = act(x + bias)
    """``x = act(x + bias)`` in place (``tmp``: a scratch array of x's shape, or None); with
    ``out``, the last pass writes ``act(x + bias)`` there instead (x then holds an intermediate).

    SiLU: the convolution before it was scaled by 1/2 at load (``act_scale``), so ``x + bias`` is
    ``u = z / 2`` and ``silu(z) = z sigmoid(z) = u (1 + tanh u)``: three passes (tanh, product,
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


TILE_ELEMENTS = 1 << 13
"""Length of a tiled bias row (``add_bias_act_``): adding a ``[C]`` bias to ``[R, C]`` broadcasts it
over R short rows, about 2x slower than adding a contiguous ``[n*C]`` row to ``[R/n, n*C]``."""


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


def _tap_view(buf, rows, cols, k, stride, dilation):  # [nb, Hp, Wp, C] -> [nb, rows, cols, k, k, C] (no copy)
    """The window each output pixel of a depthwise convolution sees, as a strided view of the
    padded input: ``view[b, i, j, kh, kw] = buf[b, s*i + d*kh, s*j + d*kw]``."""
    sb, sh, sw, sc = buf.strides
    return np.lib.stride_tricks.as_strided(
        buf, shape=(buf.shape[0], rows, cols, k, k, buf.shape[3]),
        strides=(sb, stride * sh, stride * sw, dilation * sh, dilation * sw, sc), writeable=False)


def band_view(padded, rows, cols, k, stride, dilation, row_form):  # -> the view ``depthwise_band`` sums over
    """``_tap_view(padded, ...)``, or with ``row_form`` (stride 1, weights tiled along j) the same
    windows as ``[nb, rows, k, k, cols*C]`` whole-row runs. ``view[:nb, :r]`` is the view of
    ``padded[:nb]`` for ``r`` rows, so a band loop builds it once per buffer."""
    if not row_form:
        return _tap_view(padded, rows, cols, k, stride, dilation)
    sb, sh, sw, sc = padded.strides
    return np.lib.stride_tricks.as_strided(
        padded, shape=(padded.shape[0], rows, k, k, cols * padded.shape[3]),
        strides=(sb, sh, dilation * sh, dilation * sw, sc), writeable=False)


def depthwise_band(padded, out, conv: Conv, stride, dilation, tiled=None, view=None):
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


def _tile(conv: Conv, cols):  # [k, k, C] -> [k, k, cols*C] (cached on conv)
    tiled = conv.tiled.get(("w", cols))
    if tiled is None:
        tiled = conv.tiled[("w", cols)] = np.ascontiguousarray(
            np.broadcast_to(conv.w[:, :, None, :], (conv.k, conv.k, cols, conv.w.shape[2]))).reshape(conv.k, conv.k, -1)
    return tiled


# --------------------------------------------------------------------------------------------
# Threads
# --------------------------------------------------------------------------------------------
#
# NumPy's element-wise kernels run on one core, and OpenBLAS splits every matrix product across
# its threads, which then meet at a barrier: hundreds of barriers per forward pass, each a stall
# whenever another process holds a core. So we split the work into independent pieces (the
# images of a batch; for one image the row ranges of a convolution and the pixel-in-patch
# positions of a transformer) and run them in our own threads (NumPy releases the GIL inside its
# kernels), with OpenBLAS on one thread for the whole forward pass: a woken OpenBLAS worker spins
# for a while after each product and takes a core from our threads (measured: with OpenBLAS
# threads in the transformers alone, one image took 80 ms instead of 60). Pieces smaller than
# ``PART_ELEMENTS`` stay on one thread. The thread count is ``THREADS`` (or the environment variable
# NUMPY_MVIT2_THREADS), by default OpenBLAS's own count; 1 turns our threads off. Where NumPy's
# BLAS is not an OpenBLAS whose thread count we can set, our threads stay off. OpenBLAS's thread
# count is process-wide: other threads of the process that multiply matrices during a forward
# pass do so on one thread; the count is restored when the last forward pass in flight ends.
#
# What limits two threads on one image (measured 2026-11-27 on the 2-core VM of benchmarks/README.md,
# width 1.0, 256x256): one core takes ~68 ms, two ~54 ms, with ~80 ms of CPU between them. Waking a
# thread that sleeps on the other core costs ~50-100 us there (a threading.Barrier round trip: 100
# us), and so does every GIL hand-over where one thread finishes a NumPy call while the other runs
# Python between its calls; a parallel() call, a barrier and such a collision each cost that much.
# (Two threads each running a loop of 14-us NumPy calls reach 1.43x one thread; two processes 2x.)
# Splitting the stage-4/5 transformers by pixel position loses (barriers). OpenBLAS's own threads
# for their products alone (ours off there) halve a product run in a loop, but made the pass
# slower: 77 ms instead of 55 idle, 560 instead of 75 with another process on a core.
# Hence the team of processes for single images (numpy_mvit2/team.py): the same split, no GIL
# between the parts, barriers that spin for a few us: ~36 ms where the threads take ~52.

THREADS: int | None = None
"""Threads of the fast path; None: ``NUMPY_MVIT2_THREADS`` or else OpenBLAS's thread count."""


class _OpenBLAS:
    """OpenBLAS's ``*_get_num_threads`` / ``*_set_num_threads``, found in the libraries this
    process has loaded (as threadpoolctl finds them); ``available`` is False where there are none."""

    def __init__(self):
        self.get = self.set = None
        try:
            with open("/proc/self/maps") as f:
                paths = sorted({line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line})
        except OSError:
            paths = []
        for path in paths:
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            for prefix in ("scipy_openblas", "openblas"):
                for suffix in ("64_", ""):
                    get, set_ = (getattr(lib, f"{prefix}_{name}_num_threads{suffix}", None) for name in ("get", "set"))
                    if get is not None and set_ is not None:
                        self.get, self.set = get, set_
                        self.get.restype = ctypes.c_int
                        return

    @property
    def available(self) -> bool:
        return self.get is not None


_blas = None
_local = threading.local()  # each calling thread has its own pool: concurrent calls never wait on each other's workers
_lock = threading.Lock()
_depth = 0
_saved = 1


def _after_fork_in_child():
    """A child made by fork() has only the thread that forked: the pools' threads and whatever
    other threads held are gone, so the pools are made anew and the lock and count start over."""
    global _local, _lock, _depth
    _local, _lock, _depth = threading.local(), threading.Lock(), 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _blas_api() -> _OpenBLAS:
    global _blas
    if _blas is None:
        _blas = _OpenBLAS()
    return _blas


def threads() -> int:
    """How many threads the fast path uses (1 where OpenBLAS's thread count cannot be set)."""
    if not _blas_api().available:
        return 1
    if THREADS is not None:
        return max(1, int(THREADS))
    env = os.environ.get("NUMPY_MVIT2_THREADS")
    return max(1, int(env)) if env else max(1, _blas.get())


@contextmanager
def _blas_single_threaded():
    """OpenBLAS on one thread while our threads run (nested and concurrent calls restore the
    count once, when the last one leaves)."""
    global _depth, _saved
    blas = _blas_api()
    if not blas.available:
        yield
        return
    with _lock:
        if _depth == 0:
            _saved = blas.get()
            blas.set(1)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                blas.set(_saved)


def parallel(fn, items):  # -> [fn(item) for item in items], all items at once
    """``[fn(item) for item in items]``, every item on its own thread at the same time (the first
    on the calling thread, the others on this thread's pool), OpenBLAS on one thread meanwhile.
    All items run concurrently, so they may wait for each other (``GroupNorm``)."""
    if len(items) <= 1:
        return [fn(item) for item in items]
    pool = getattr(_local, "pool", None)
    if pool is None or pool._max_workers < len(items) - 1:
        pool = _local.pool = ThreadPoolExecutor(max_workers=len(items) - 1, thread_name_prefix="numpy_mvit2")
    with _blas_single_threaded():
        futures = [pool.submit(fn, item) for item in items[1:]]
        try:
            first = fn(items[0])
        finally:
            wait(futures)
        return [first] + [f.result() for f in futures]


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------


PART_ELEMENTS = 1 << 16
"""Smallest piece of work (in elements of the largest array it writes) worth a thread of its own:
below it, handing work to another thread and waiting for it costs more than it saves (measured on
the stage-4 and stage-5 blocks of width 1.0, whose maps are 16x16 and 8x8)."""


IR_PART_DIVISOR = 4
"""An inverted residual (counted in elements of its expanded map) is split from
``PART_ELEMENTS / IR_PART_DIVISOR`` on: its row ranges need no barrier, so smaller maps are worth
splitting (the stage-5 block at width 1.0, 8x8x768, takes 2.5 ms on one thread)."""


TRANSFORMER_PART_DIVISOR = 1
"""The same for a MobileViT block's transformer, in elements of its tokens ``[P, N, d]``."""


def _split(n, parts):  # -> [(start, stop), ...]: range(n) in up to `parts` contiguous, near-equal pieces
    parts = max(1, min(parts, n))
    bounds = [n * i // parts for i in range(parts + 1)]
    return list(itertools.pairwise(bounds))


class Threads:
    """How the pieces of one forward pass are run: by this process's threads (``parallel``).

    The blocks below are written against this small interface, which ``numpy_mvit2.team.Rank``
    also implements for a team of processes: ``size`` workers; ``run(fn, tasks)`` runs
    ``fn(task)`` for every task and returns when all are done; ``empty(shape, dtype)`` allocates
    an array every worker can write (a block's output, whose row ranges different workers fill);
    ``group_norm(...)`` makes a ``GroupNorm`` whose parts meet at a barrier; ``parts(n,
    divisor)`` says how many workers a piece of work of ``n`` elements is worth."""

    def __init__(self, size=1):
        self.size = max(1, int(size))

    def run(self, fn, tasks):
        return parallel(fn, tasks)

    def empty(self, shape, dtype):
        return np.empty(shape, dtype)

    def group_norm(self, parts, batch, positions, count, eps):
        return GroupNorm(parts, batch, positions, count, eps)

    def parts(self, elements, divisor=1) -> int:
        return max(1, min(self.size, elements * divisor // PART_ELEMENTS))


def _team(team):  # an int (a thread count), None (1) or a team -> a team
    return team if hasattr(team, "run") else Threads(team or 1)


def stem(pixels, conv: Conv, act, team=1):  # [B, C, H, W] (NCHW input) -> [B, H/2, W/2, C0]
    """3x3 stride-2 convolution (padding 1) + act, image by image (one image: ``team.size`` row
    ranges at once): the 9 strided taps of the padded input are gathered into
    ``cols [k*k*Cin, rows*Wo]`` (plane copies) and one product with the transposed columns gives
    the NHWC output rows directly."""
    batch, cin, height, width = pixels.shape
    k, stride, pad = conv.k, 2, (conv.k - 1) // 2
    ho, wo = (height + 2 * pad - k) // stride + 1, (width + 2 * pad - k) // stride + 1
    cout = conv.w.shape[1]
    team = _team(team)
    out = team.empty((batch, ho, wo, cout), pixels.dtype)
    padded = np.zeros((cin, height + 2 * pad, width + 2 * pad), pixels.dtype)

    def rows(task):
        b, r0, r1 = task
        n = r1 - r0
        cols = np.empty((k, k, cin, n, wo), pixels.dtype)
        for kh in range(k):
            for kw in range(k):
                h0 = kh + stride * r0
                cols[kh, kw] = padded[:, h0 : h0 + stride * (n - 1) + 1 : stride, kw : kw + stride * (wo - 1) + 1 : stride]
        y = out[b, r0:r1].reshape(n * wo, cout)
        np.matmul(cols.reshape(k * k * cin, n * wo).T, conv.w, out=y)
        add_bias_act_(y, conv, act, np.empty_like(y))

    for b in range(batch):
        padded[:, pad : pad + height, pad : pad + width] = pixels[b]
        team.run(rows, [(b, r0, r1) for r0, r1 in _split(ho, team.size)])
    return out


SCRATCH_ELEMENTS = 1 << 22
"""Most elements (16 MB in float32) a thread keeps between calls in its scratch buffer."""

_scratch = threading.local()


def scratch(dtype, *shapes):  # -> one uninitialised array per shape, views of this thread's scratch buffer
    """Work arrays for one call on this thread, carved out of one buffer that the thread keeps
    (up to ``SCRATCH_ELEMENTS``) and grows as needed: allocating the bands' arrays afresh on every
    call made the kernel map and zero their pages again (thousands of page faults per forward
    pass, several ms of system time). The arrays are only valid until the thread's next call."""
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


def inverted_residual(x, block: InvertedResidual, act, team=1):  # [B, H, W, Cin] -> [B, Ho, Wo, Cout]
    """1x1 expand (+act) -> k x k depthwise, strided or dilated (+act) -> 1x1 reduce, + x when the
    shape is kept; computed in bands of output rows (see the module docstring). With a team of
    several workers (``Threads`` or processes) the output rows are split into that many ranges,
    each worked through by a worker with its own buffers.

    A band of output rows ``[r0, r1)`` needs padded input rows ``[s*r0, s*(r1-1) + d*(k-1) + 1)``;
    ``ebuf`` holds the expanded, activated, zero-padded rows of the current band, and the rows it
    shares with the next band are moved to its top rather than recomputed.
    """
    batch, height, width, cin = x.shape
    k, s, d = block.depthwise.k, block.stride, block.dilation
    pad = (k - 1) // 2 * d
    ho, wo = (height + 2 * pad - d * (k - 1) - 1) // s + 1, (width + 2 * pad - d * (k - 1) - 1) // s + 1
    hidden, cout = block.expand.w.shape[1], block.reduce.w.shape[1]
    dtype = x.dtype
    residual = s == 1 and cin == cout and (ho, wo) == (height, width)
    team = _team(team)
    out = team.empty((batch, ho, wo, cout), dtype)

    per_image = ho * wo * hidden
    if per_image <= BAND_ELEMENTS:  # small maps: whole images, several at once
        images, rows = max(1, min(batch, BAND_ELEMENTS // per_image)), ho
    else:
        images, rows = 1, max(1, min(ho, BAND_ELEMENTS // (wo * hidden)))
    groups = [(b0, min(images, batch - b0)) for b0 in range(0, batch, images)]
    # work items: (first image, images, first output row, end row)
    threads = team.parts(batch * per_image, IR_PART_DIVISOR)
    if threads > 1 and len(groups) < threads:
        images, rows = 1, min(rows, -(-ho // threads))
        tasks = [[(b, 1, r0, r1)] for b in range(batch) for r0, r1 in _split(ho, threads)]
    else:
        tasks = [[(b0, nb, 0, ho) for b0, nb in groups[i:j]] for i, j in _split(len(groups), threads)]
    span = s * (rows - 1) + d * (k - 1) + 1  # padded input rows one band needs
    tiled = _tile(block.depthwise, wo) if s == 1 else None

    def work(items):
        # two work buffers besides ebuf, each used twice: the expanded rows before they are
        # activated into ebuf, then the depthwise output; and the activation's temporary (a small
        # working set: the band's arrays stay in L2)
        work_rows = max(images * span * width, images * rows * wo)
        ebuf, wbuf, tbuf = scratch(dtype, (images, span, width + 2 * pad, hidden), (work_rows, hidden), (work_rows, hidden))
        gbuf, dbuf = wbuf, wbuf[: images * rows * wo].reshape(images, rows, wo, hidden)
        dtmp = tbuf[: images * rows * wo].reshape(images, rows, wo, hidden)
        if pad:  # the width padding stays zero (rows outside the image are zeroed below)
            ebuf[:, :, :pad] = 0
            ebuf[:, :, pad + width :] = 0
        view = band_view(ebuf, rows, wo, k, s, d, tiled is not None)  # once: as_strided costs ~10 us
        for b0, nb, r_start, r_end in items:
            held = (0, 0)  # padded rows [q0, q1) now in ebuf[:, : q1 - q0]
            for r0 in range(r_start, r_end, rows):
                r1 = min(r_end, r0 + rows)
                n0, n1 = s * r0, s * (r1 - 1) + d * (k - 1) + 1
                q0, q1 = held
                if q0 < n0 < q1:  # keep the shared rows
                    ebuf[:nb, : q1 - n0] = ebuf[:nb, n0 - q0 : q1 - q0]
                start = max(q1, n0)
                # padded rows [start, n1): zero outside the image, expanded + activated inside
                i0, i1 = min(max(start - pad, 0), height), min(max(n1 - pad, 0), height)
                for q in range(start, n1):
                    if not pad <= q < pad + height:
                        ebuf[:nb, q - n0] = 0
                if i1 > i0:
                    m = nb * (i1 - i0) * width
                    g = gbuf[:m]
                    np.matmul(x[b0 : b0 + nb, i0:i1].reshape(m, cin), block.expand.w, out=g)
                    # the last pass of the activation writes into the band buffer (no copy)
                    add_bias_act_(g.reshape(nb, i1 - i0, width, hidden), block.expand, act,
                                  tbuf[:m].reshape(nb, i1 - i0, width, hidden),
                                  ebuf[:nb, i0 + pad - n0 : i1 + pad - n0, pad : pad + width])
                held = (n0, n1)
                # depthwise, act, reduce (+ residual)
                dw = depthwise_band(None, dbuf[:nb, : r1 - r0], block.depthwise, s, d, tiled, view[:nb, : r1 - r0])
                dw2 = dw.reshape(-1, hidden)
                add_bias_act_(dw2, block.depthwise, act, dtmp[:nb, : r1 - r0].reshape(-1, hidden))
                y = out[b0 : b0 + nb, r0:r1].reshape(-1, cout)
                np.matmul(dw2, block.reduce.w, out=y)
                add_bias_act_(y, block.reduce, None)
                if residual:
                    y += x[b0 : b0 + nb, r0:r1].reshape(-1, cout)

    team.run(work, tasks)
    return out


def depthwise(x, conv: Conv, act, team=1, dilation=1):  # [B, H, W, C] -> [B, H, W, C]
    """Stride-1 depthwise k x k convolution dilated by ``dilation`` (+act), padded to keep the size;
    one image is split by rows among the team, each part padding the input rows it needs."""
    batch, height, width, channels = x.shape
    pad = (conv.k - 1) // 2 * dilation
    team = _team(team)
    out = team.empty(x.shape, x.dtype)
    tiled = _tile(conv, width)

    def rows(span):
        r0, r1 = span
        padded = np.zeros((batch, r1 - r0 + 2 * pad, width + 2 * pad, channels), x.dtype)
        i0, i1 = max(0, r0 - pad), min(height, r1 + pad)
        padded[:, i0 - (r0 - pad) : i1 - (r0 - pad), pad : pad + width] = x[:, i0:i1]
        o = depthwise_band(padded, out[:, r0:r1], conv, 1, dilation, tiled)
        add_bias_act_(o, conv, act, np.empty_like(o))

    team.run(rows, _split(height, team.parts(x.size) if batch == 1 else 1))
    return out


class GroupNorm:
    """Group norm with one group and without its affine part (folded into the next convolution)
    of tokens ``[B, P, N, d]``, per sample, from partial sums *per pixel position* q of the patch:
    the mean ``a_q`` of ``x[:, q]`` (rounded to x's dtype), the centred values ``x - a_q`` (written
    once, into ``out``) and their sum of squares (a batched dot product). The P partials then give
    the mean ``m`` and the sum of squares about it, ``sum_q [S_q + 2 (a_q - m) sum (x_q - a_q) +
    n_q (a_q - m)^2]`` (in float64, as in Chan et al.'s parallel variance), and each position's
    values are shifted by ``a_q - m`` and scaled by ``1 / sqrt(var + eps)``.

    The positions may be split among ``parts`` threads or processes, each calling
    ``norm(part, x[:, p0:p1], out[:, p0:p1], p0)``; they meet at one barrier (``wait(part)``,
    ``abort()``) between the partial sums and the scaling. The partials are always per position
    and always combined in the same order, so the result does not depend on the split: one image
    gives the same bits on one thread, several threads or a team of processes."""

    def __init__(self, parts, batch, positions, count, eps, barrier=None, partial=None):
        self.parts = parts
        self.barrier = barrier or (_ThreadBarrier(parts) if parts > 1 else None)
        # n, sum x, a, sum (x - a)^2 per position; two sets, used by turns: a part can be one norm
        # ahead of another (past the barrier) but not two, so it never writes the set the other reads
        self.partial = np.zeros((2, positions, batch, 4)) if partial is None else partial
        self.calls = [0] * parts
        self.count, self.eps = count, eps

    def __call__(self, part, x, out, p0=0):  # x, out: [B, p1 - p0, N, d]
        batch, positions = x.shape[:2]
        partial = self.partial[self.calls[part] % 2]
        self.calls[part] += 1
        # one call per step for all of this part's positions: per position (row of x3), the
        # same reductions as on that position alone
        x3, o3 = x.reshape(batch, positions, -1), out.reshape(batch, positions, -1)
        total = x3.sum(axis=2)  # [B, Pp]
        local = (total / x3.shape[2]).astype(x.dtype)  # a_q
        np.subtract(x3, local[:, :, None], out=o3)
        mine = partial[p0 : p0 + positions]  # [Pp, B, 4]
        mine[:, :, 0], mine[:, :, 1], mine[:, :, 2] = x3.shape[2], total.T, local.T
        mine[:, :, 3] = np.matmul(o3[:, :, None, :], o3[:, :, :, None])[:, :, 0, 0].T
        if self.barrier is not None:
            self.barrier.wait(part)
        n, sums, a, squares = (partial[:, :, i] for i in range(4))  # [P, batch]
        mean = sums.sum(axis=0) / self.count
        delta = a - mean
        var = (squares + 2 * delta * (sums - n * a) + n * delta * delta).sum(axis=0) / self.count
        inv = (1 / np.sqrt(var + self.eps)).astype(x.dtype)
        o3 += delta[p0 : p0 + positions].T.astype(x.dtype)[:, :, None]
        o3 *= inv[:, None, None]
        return out

    def abort(self):
        if self.barrier is not None:
            self.barrier.abort()


class _ThreadBarrier:
    def __init__(self, parts):
        self._barrier = threading.Barrier(parts)

    def wait(self, part):
        self._barrier.wait()

    def abort(self):
        self._barrier.abort()


def transformer_layer(x, layer: TransformerLayer, act, eps, bufs, attentions=None, norm=None):  # [B, P, N, d] in place
    """``x += attention(norm(x))``; ``x += ffn(norm(x))`` (MobileViTV2's pre-norm layer), in place.
    ``bufs``: scratch arrays allocated once per MobileViT block (``mobilevit_block``); ``norm(x,
    out)``: a ``GroupNorm`` bound to this part's positions (default: one part holding them all)."""
    batch, p, n, dim = x.shape
    rows = batch * p * n
    x2 = x.reshape(rows, dim)
    normed, qkv, mixed, hidden, tmp, y = bufs
    if norm is None:
        whole = GroupNorm(1, batch, p, p * n * dim, eps)

        def norm(x, out):
            return whole(0, x, out)

    x2 += separable_attention(norm(x, normed), layer, qkv, mixed, y, attentions)
    norm(x, normed)
    np.matmul(normed.reshape(rows, dim), layer.ffn1.w, out=hidden)
    add_bias_act_(hidden, layer.ffn1, act, tmp)
    np.matmul(hidden, layer.ffn2.w, out=y)
    add_bias_act_(y, layer.ffn2, None)
    x2 += y
    return x


def separable_attention(normed, layer: TransformerLayer, qkv, mixed, out, attentions=None):  # [B, P, N, d] -> out [B*P*N, d]
    """``out_proj(relu(value) * context)`` with ``qkv = qkv_proj(normed)`` (``normed``: the group-normed
    tokens, the norm's scale and shift being folded into ``qkv_proj``). ``qkv``, ``mixed`` and
    ``out`` are ``[B*P*N, 2d+1]``, ``[B*P*N, d]`` and ``[B*P*N, d]`` buffers. O(N) in the tokens.

    ``qkv`` holds one query channel, d key and d value channels; ``scores = softmax_N(query)``
    ([B, P, N], appended to ``attentions`` as [B, 1, P, N]); the context vector is the batched
    product ``scores[B, P, 1, N] @ key[B, P, N, d]``; ``relu(value) * context`` goes through ``out_proj``."""
    batch, p, n, dim = normed.shape
    rows = batch * p * n
    np.matmul(normed.reshape(rows, dim), layer.qkv.w, out=qkv)
    add_bias_act_(qkv, layer.qkv, None)
    q = qkv.reshape(batch, p, n, 2 * dim + 1)
    scores = q[..., 0] - q[..., 0].max(axis=-1, keepdims=True)  # [B, P, N]
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    if attentions is not None:
        attentions.append(scores.reshape(batch, 1, p, n))
    context = np.matmul(scores[:, :, None, :], q[..., 1 : 1 + dim])  # [B, P, 1, d]
    m = mixed.reshape(batch, p, n, dim)
    np.maximum(q[..., 1 + dim :], 0, out=m)
    m *= context
    np.matmul(mixed, layer.out.w, out=out)
    add_bias_act_(out, layer.out, None)
    return out


def resize_to_patch_multiple(x, patch_size):  # [B, H, W, C] -> [B, ceil(H/p)*p, ceil(W/p)*p, C]
    """``blocks.resize_to_patch_multiple`` on a channels-last map (bilinear, align_corners=True)."""
    height, width = x.shape[1:3]
    size = (-(-height // patch_size) * patch_size, -(-width // patch_size) * patch_size)
    if size == (height, width):
        return x
    resized = interpolate_bilinear(x.transpose(0, 3, 1, 2), size, align_corners=True)
    return np.ascontiguousarray(resized.transpose(0, 2, 3, 1))


def mobilevit_block(x, block: MobileViTBlock, plan: Plan, attentions=None, team=1):  # [B, H, W, Cin] -> [B, Ho, Wo, Cout]
    """Downsample (inverted residual); local representation (depthwise k x k + act, 1x1 to d);
    unfold into ``[B, P, N, d]``; transformer layers; group norm; 1x1 projection to Cout on the
    patches; fold back, pixels no patch covers getting the projection's bias (= conv of zeros).

    One image: the P pixel positions of a patch are split among the team (the attention is
    independent per position; only the group norms need the other parts' sums). Each part
    unfolds, transforms, projects and folds back its own positions."""
    act, ps = plan.act, plan.patch_size
    team = _team(team)
    x = inverted_residual(x, block.down, act, team)
    if plan.patch_remainder == "resize":  # timm / ml-cvnets: see blocks.resize_to_patch_multiple
        x = resize_to_patch_multiple(x, ps)
    x = depthwise(x, block.local, act, team, block.local_dilation)
    batch, height, width, cin = x.shape
    nh, nw = height // ps, width // ps
    dim, cout, p, n = block.to_d.w.shape[1], block.projection.w.shape[1], ps * ps, nh * nw
    parts = _split(p, team.parts(p * n * dim, TRANSFORMER_PART_DIVISOR)) if batch == 1 else [(0, p)]
    shared = team.group_norm(len(parts), batch, p, p * n * dim, plan.eps)
    lists = [None if attentions is None else [] for _ in parts]
    scores = None if attentions is None else team.empty((len(block.layers), batch, 1, p, n), x.dtype)
    dtype = x.dtype
    # one part on this thread: the input map is dropped once unfolded and the output allocated
    # after the transformer (a batch's arrays are large); parts write one shared output
    alone = len(parts) == 1 and isinstance(team, Threads)
    out = [None if alone else team.empty((batch, height, width, cout), dtype)]
    local = [x]
    del x

    def work(i):
        p0, p1 = parts[i]
        rows = batch * (p1 - p0) * n
        # unfold first (on the input channels), so that the 1x1 conv writes the patches directly:
        # position q = (i, j) of every patch is the strided map x[:, i::ps, j::ps]
        patches = np.empty((batch, p1 - p0, nh, nw, cin), dtype)
        for q in range(p0, p1):
            qi, qj = divmod(q, ps)
            patches[:, q - p0] = local[0][:, qi : nh * ps : ps, qj : nw * ps : ps]
        if alone:
            local.clear()
        tokens = np.matmul(patches.reshape(rows, cin), block.to_d.w).reshape(batch, p1 - p0, n, dim)
        del patches
        ffn = block.layers[0].ffn1.w.shape[1] if block.layers else dim
        bufs = (np.empty_like(tokens), np.empty((rows, 2 * dim + 1), tokens.dtype), np.empty((rows, dim), tokens.dtype),
                np.empty((rows, ffn), tokens.dtype), np.empty((rows, ffn), tokens.dtype), np.empty((rows, dim), tokens.dtype))
        def norm(x, out):
            return shared(i, x, out, p0)

        try:
            for layer in block.layers:
                transformer_layer(tokens, layer, act, plan.eps, bufs, lists[i], norm)
            normed = norm(tokens, bufs[0])
        except BaseException:
            shared.abort()  # the other parts stop waiting
            raise
        if scores is not None:
            for layer_scores, part_scores in zip(scores, lists[i]):
                layer_scores[:, :, p0:p1] = part_scores
        projected = np.empty((batch, p1 - p0, nh, nw, cout), dtype)
        np.matmul(normed.reshape(rows, dim), block.projection.w, out=projected.reshape(rows, cout))
        add_bias_act_(projected, block.projection, None)
        del tokens, bufs, normed
        if alone:
            out[0] = np.empty((batch, height, width, cout), dtype)
        folded = out[0]
        for q in range(p0, p1):  # fold
            qi, qj = divmod(q, ps)
            folded[:, qi : nh * ps : ps, qj : nw * ps : ps] = projected[:, q - p0]
        if i == 0 and (nh * ps, nw * ps) != (height, width):
            folded[:, nh * ps :] = block.projection_bias
            folded[:, :, nw * ps :] = block.projection_bias

    team.run(work, list(range(len(parts))))
    if attentions is not None:
        attentions.extend(scores)
    return out[0]


def backbone(pixel_values, plan: Plan, attentions=None, keep_hidden_states=True):  # [B, C, H, W] -> 5 x [B, Ci, Hi, Wi]
    """The stem and the five stages. Returns the stage outputs as NCHW views of the NHWC arrays
    (``.transpose(0, 3, 1, 2)``, no copy); without ``keep_hidden_states`` only the last one is kept
    (the others are None) so that each stage's output can be freed once the next has read it.

    With several threads (``threads()``) a batch is split into that many parts, each run through
    the whole network by its own thread. A single image is split by rows (convolutions) and by
    pixel-in-patch position (transformers) among a team of processes (``numpy_mvit2.team``; see
    "Threads" above for why), or among threads where there is no such team."""
    n_threads = threads()
    batch = pixel_values.shape[0]
    if n_threads == 1:
        return _backbone(pixel_values, plan, attentions, keep_hidden_states, Threads(1))
    if batch == 1:
        from . import team

        states = team.backbone(pixel_values, plan, keep_hidden_states, n_threads, attentions)
        if states is not None:
            return states
    with _blas_single_threaded():  # all of it: an OpenBLAS thread woken once spins for a while after
        if batch == 1:
            return _backbone(pixel_values, plan, attentions, keep_hidden_states, Threads(n_threads))
        return _batch_parts(pixel_values, plan, attentions, keep_hidden_states, n_threads)


def _batch_parts(pixel_values, plan: Plan, attentions, keep_hidden_states, n_threads):
    batch = pixel_values.shape[0]
    parts = _split(batch, n_threads)
    lists = [None if attentions is None else [] for _ in parts]
    results = parallel(lambda i: _backbone(pixel_values[parts[i][0] : parts[i][1]], plan, lists[i], keep_hidden_states,
                                           Threads(1)), list(range(len(parts))))
    if attentions is not None:
        attentions.extend(np.concatenate(scores) for scores in zip(*lists))
    return [None if states[0] is None else np.concatenate([s.transpose(0, 2, 3, 1) for s in states]).transpose(0, 3, 1, 2)
            for states in zip(*results)]


def _backbone(pixel_values, plan: Plan, attentions, keep_hidden_states, team):
    """``backbone`` on one team (``Threads`` or a process team's ``Rank``): NHWC stage outputs
    (the last one, or all of them with ``keep_hidden_states``) as NCHW views."""
    x = stem(pixel_values, plan.stem, plan.act, team)
    hidden_states = []
    for stage in plan.stages:
        if isinstance(stage, MobileViTBlock):
            x = mobilevit_block(x, stage, plan, attentions, team)
        else:
            for block in stage:
                x = inverted_residual(x, block, plan.act, team)
        hidden_states.append(x.transpose(0, 3, 1, 2) if keep_hidden_states else None)
    hidden_states[-1] = x.transpose(0, 3, 1, 2)
    return hidden_states


# --------------------------------------------------------------------------------------------
# Segmentation head
# --------------------------------------------------------------------------------------------


@dataclass
class DeepLabHead:
    pointwise: Conv  # ASPP branch 0 (1x1)
    atrous: list  # three dense 3x3 convs, [9*C, A]
    pool: Conv  # the pooling branch's 1x1
    project: Conv  # [5A, A]
    classifier: Conv
    rates: list


def build_head_plan(head_params: dict, config: MobileViTV2Config, dtype) -> DeepLabHead:
    """``params["segmentation_head"]`` laid out for ``deeplabv3``."""
    convs = head_params["aspp"]["convs"]
    return DeepLabHead(
        pointwise=_pointwise(convs[0], dtype),
        atrous=[_dense(c, dtype) for c in convs[1:4]],
        pool=_pointwise(convs[4]["conv_1x1"], dtype),
        project=_pointwise(head_params["aspp"]["project"], dtype),
        classifier=_pointwise(head_params["classifier"], dtype),
        rates=list(config.atrous_rates),
    )


def linear(x, weight, bias=None):  # [..., in] -> [..., out]
    """``ops.linear`` (the classifier) with OpenBLAS kept on one thread when our threads are on."""
    with _blas_single_threaded() if threads() > 1 else nullcontext():
        return ops_linear(x, weight, bias)


def deeplabv3(x, head: DeepLabHead):  # [B, H, W, C] -> [B, num_labels, H, W]
    with _blas_single_threaded() if threads() > 1 else nullcontext():
        return _deeplabv3(x, head)


def _deeplabv3(x, head: DeepLabHead):  # [B, H, W, C] -> [B, num_labels, H, W]
    """ASPP and the classifier, as ``blocks.deeplabv3``. The five branches write their ReLU'd
    outputs side by side into one ``[B*H*W, 5A]`` array (the concatenation, never copied); a dilated
    3x3 branch is a sum over its taps of shifted-input products, and a tap that sees only padding
    (dilation >= the map size) adds exact zeros, so it is skipped."""
    batch, height, width, cin = x.shape
    rows = batch * height * width
    a = head.project.w.shape[1]
    x2 = x.reshape(rows, cin)
    cat = np.empty((rows, 5 * a), x.dtype)
    tmp = np.empty((rows, a), x.dtype)
    np.matmul(x2, head.pointwise.w, out=tmp)
    cat[:, :a] = bias_act_(tmp, head.pointwise.b, "relu")
    shifted = None
    for i, (conv, rate) in enumerate(zip(head.atrous, head.rates), start=1):
        acc = cat[:, i * a : (i + 1) * a]
        np.matmul(x2, conv.w[4 * cin : 5 * cin], out=tmp)  # centre tap
        acc[...] = tmp
        for kh in range(3):
            for kw in range(3):
                dh, dw = (kh - 1) * rate, (kw - 1) * rate
                if (dh, dw) == (0, 0) or abs(dh) >= height or abs(dw) >= width:
                    continue
                if shifted is None:
                    shifted = np.empty_like(x)
                shifted.fill(0)  # shifted[i, j] = x[i + dh, j + dw], zero outside
                shifted[:, max(0, -dh) : height - max(0, dh), max(0, -dw) : width - max(0, dw)] = (
                    x[:, max(0, dh) : height - max(0, -dh), max(0, dw) : width - max(0, -dw)])
                t = 3 * kh + kw
                np.matmul(shifted.reshape(rows, cin), conv.w[t * cin : (t + 1) * cin], out=tmp)
                acc += tmp
        acc += conv.b
        np.maximum(acc, 0, out=acc)
    pooled = x.reshape(batch, height * width, cin).mean(axis=1)  # [B, C]
    pooled = bias_act_(pooled @ head.pool.w, head.pool.b, "relu")
    cat.reshape(batch, height * width, 5 * a)[:, :, 4 * a :] = pooled[:, None, :]  # bilinear from 1x1: constant
    del tmp, shifted
    projected = bias_act_(cat @ head.project.w, head.project.b, "relu")
    del cat
    logits = bias_act_(projected @ head.classifier.w, head.classifier.b, None)
    return np.ascontiguousarray(logits.reshape(batch, height, width, -1).transpose(0, 3, 1, 2))


# ---- TEMPORARY shim (replaced by the fast package): the whole-model interface modeling calls
_build_backbone_plan = build_plan


@dataclass
class _ModelPlan:
    backbone: Plan
    head: str
    classifier: dict | None
    segmentation: DeepLabHead | None
    choices: tuple


def build_plan(params, config, dtype, head="base"):  # noqa: F811
    backbone_params = params if head == "base" else params["mobilevitv2"]
    plan = _build_backbone_plan(backbone_params, config, dtype)
    seg = build_head_plan(params["segmentation_head"], config, dtype) if head == "segmentation" else None
    return _ModelPlan(plan, head, params.get("classifier") if head == "classification" else None, seg, plan.choices)


def _last(pixel_values, plan, record):
    attentions = None if record is None else []
    states = backbone(pixel_values, plan.backbone, attentions, keep_hidden_states=record is not None)
    if record is not None:
        names = iter([f"encoder.layer.{i}.transformer.layer.{j}.attention.scores" for i, stage in enumerate(plan.backbone.stages)
                      if isinstance(stage, MobileViTBlock) for j in range(len(stage.layers))])
        for name, a in zip(names, attentions):
            record(name, a)
        for i, s in enumerate(states):
            record(f"encoder.layer.{i}", s)
    return states[-1]


def mobilevitv2(pixel_values, plan, *, record=None):
    return _last(pixel_values, plan, record)


def image_classification(pixel_values, plan, *, record=None):
    pooled = _last(pixel_values, plan, record).mean(axis=(2, 3))
    if record is not None:
        record("pooler", pooled)
    return pooled if plan.classifier is None else linear(pooled, **plan.classifier)


def semantic_segmentation(pixel_values, plan, *, record=None):
    return deeplabv3(_last(pixel_values, plan, record).transpose(0, 2, 3, 1), plan.segmentation)


backbone_model = mobilevitv2
