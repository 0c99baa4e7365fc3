"""The fast path's blocks: the same network as ``blocks.py``, on channels-last arrays, each block
run on an ``Executor`` (this process's threads, or a member of the team of processes).

Each block splits its work into pieces (output row ranges of a convolution, pixel-in-patch
positions of a transformer) and hands them to ``executor.run``; the arrays several pieces write
come from ``executor.empty``. Blocks must keep the executor's rule (``executors.Executor``): the
same allocations and ``run`` calls in the same order on every member, whatever a member computes
and whether or not ``record`` is given.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .executors import SERIAL, Executor
from .kernels import (
    GroupNorm,
    add_bias_act_,
    band_view,
    bias_act_,
    depthwise_band,
    resize_to_patch_multiple,
    scratch,
    split,
    tile,
)
from .plan import Conv, DeepLabHead, InvertedResidual, MobileViTBlock, Plan, TransformerLayer

BAND_ELEMENTS = 1 << 16
"""Target size (in elements) of one band of an expanded map: 256 kB in float32, small enough to
stay in L2 cache while it is activated, convolved and reduced."""

IR_PART_DIVISOR = 4
"""An inverted residual (counted in elements of its expanded map) is split among workers from
``part_elements / IR_PART_DIVISOR`` on: its row ranges need no barrier, so smaller maps are worth
splitting (the stage-5 block at width 1.0, 8x8x768, is worth two workers)."""

TRANSFORMER_PART_DIVISOR = 1
"""The same for a MobileViT block's transformer, in elements of its tokens ``[P, N, d]``."""


def run_backbone(pixel_values, plan: Plan, executor: Executor = SERIAL, record=None):  # [B, C, H, W] -> [B, h, w, C5]
    """The stem and the five stages on ``executor``; returns the last stage's output (NHWC).
    ``record(name, array)``, when given, is called after each stage with its output as an NCHW view
    (``encoder.layer.{i}``) and by the transformer stages with their context scores; without it
    each stage's output is freed once the next stage has read it."""
    x = stem(pixel_values, plan.conv_stem, executor)
    for i, stage in enumerate(plan.stages):
        name = f"encoder.layer.{i}"
        if isinstance(stage, MobileViTBlock):
            x = mobilevit_block(x, stage, plan, executor, record, name)
        else:
            for block in stage:
                x = inverted_residual(x, block, executor)
        if record is not None:
            record(name, x.transpose(0, 3, 1, 2))
    return x


def stem(pixels, conv: Conv, executor: Executor = SERIAL):  # [B, C, H, W] (NCHW input) -> [B, H/2, W/2, C0]
    """The stem's k x k convolution (padding (k-1)/2, stride ``conv.stride``) + ``conv.act``, image by image (one image: ``executor.size`` row
    ranges at once): the k*k strided taps of the padded input are gathered into
    ``cols [k*k*Cin, rows*Wo]`` (plane copies) and one product with the transposed columns gives
    the NHWC output rows directly."""
    batch, cin, height, width = pixels.shape
    k, stride, pad = conv.k, conv.stride, (conv.k - 1) // 2
    ho, wo = (height + 2 * pad - k) // stride + 1, (width + 2 * pad - k) // stride + 1
    cout = conv.w.shape[1]
    out = executor.empty((batch, ho, wo, cout), pixels.dtype)
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
        add_bias_act_(y, conv, conv.act, np.empty_like(y))

    for b in range(batch):
        padded[:, pad : pad + height, pad : pad + width] = pixels[b]
        executor.run(rows, [(b, r0, r1) for r0, r1 in split(ho, executor.size)])
    return out


# --------------------------------------------------------------------------------------------
# Inverted residual, in row bands
# --------------------------------------------------------------------------------------------


def inverted_residual(x, block: InvertedResidual, executor: Executor = SERIAL):  # [B, H, W, Cin] -> [B, Ho, Wo, Cout]
    """1x1 expand (+act) -> k x k depthwise, strided or dilated (+act) -> 1x1 reduce, + x when the
    shape is kept; computed in bands of output rows, so that the full expanded map (the largest
    array of the network) never exists: a band's expanded rows (a few hundred kB) stay in cache
    while they are activated, convolved and reduced. With several workers the output rows are
    split into that many ranges, each worked through by a worker with its own buffers.

    A band of output rows ``[r0, r1)`` needs padded input rows ``[s*r0, s*(r1-1) + d*(k-1) + 1)``;
    ``ebuf`` holds the expanded, activated, zero-padded rows of the current band, and the rows it
    shares with the next band are moved to its top rather than recomputed.
    """
    bands = _plan_bands(x.shape, block, executor)
    out = executor.empty((x.shape[0], bands.out_rows, bands.out_cols, block.reduce_1x1.w.shape[1]), x.dtype)
    executor.run(lambda items: _run_bands(x, out, block, bands, items), bands.tasks)
    return out


@dataclass
class _Bands:
    """How an inverted residual's output is cut into bands and among workers."""

    k: int
    stride: int
    dilation: int
    pad: int
    out_rows: int
    out_cols: int
    images: int  # images per band (small maps: several whole images at once)
    rows: int  # output rows per band
    tasks: list  # one list per worker of (first image, images, first output row, end row)
    residual: bool  # the block keeps the shape: + x
    tiled: np.ndarray | None  # the depthwise weight tiled along a row (stride 1)

    @property
    def span(self) -> int:  # padded input rows one band needs
        return self.stride * (self.rows - 1) + self.dilation * (self.k - 1) + 1


def _plan_bands(shape, block: InvertedResidual, executor: Executor) -> _Bands:
    batch, height, width, cin = shape
    k, s, d = block.conv_3x3.k, block.conv_3x3.stride, block.conv_3x3.dilation
    pad = (k - 1) // 2 * d
    ho, wo = (height + 2 * pad - d * (k - 1) - 1) // s + 1, (width + 2 * pad - d * (k - 1) - 1) // s + 1
    hidden, cout = block.expand_1x1.w.shape[1], block.reduce_1x1.w.shape[1]
    per_image = ho * wo * hidden
    if per_image <= BAND_ELEMENTS:  # small maps: whole images, several at once
        images, rows = max(1, min(batch, BAND_ELEMENTS // per_image)), ho
    else:
        images, rows = 1, max(1, min(ho, BAND_ELEMENTS // (wo * hidden)))
    groups = [(b0, min(images, batch - b0)) for b0 in range(0, batch, images)]
    workers = executor.parts(batch * per_image, IR_PART_DIVISOR)
    if workers > 1 and len(groups) < workers:
        images, rows = 1, min(rows, -(-ho // workers))
        tasks = [[(b, 1, r0, r1)] for b in range(batch) for r0, r1 in split(ho, workers)]
    else:
        tasks = [[(b0, nb, 0, ho) for b0, nb in groups[i:j]] for i, j in split(len(groups), workers)]
    residual = s == 1 and cin == cout and (ho, wo) == (height, width)
    return _Bands(k, s, d, pad, ho, wo, images, rows, tasks, residual, tile(block.conv_3x3, wo) if s == 1 else None)


def _run_bands(x, out, block: InvertedResidual, bands: _Bands, items):  # one worker's items -> out rows
    """Two work buffers besides ``ebuf``, each used twice: ``gbuf`` holds the expanded rows before
    they are activated into ebuf, then the depthwise output; ``tbuf`` the activation's temporary
    (a small working set: the band's arrays stay in L2)."""
    images, rows, pad, wo = bands.images, bands.rows, bands.pad, bands.out_cols
    width, hidden = x.shape[2], block.expand_1x1.w.shape[1]
    work_rows = max(images * bands.span * width, images * rows * wo)
    ebuf, gbuf, tbuf = scratch(x.dtype, (images, bands.span, width + 2 * pad, hidden), (work_rows, hidden),
                               (work_rows, hidden))
    if pad:  # the width padding stays zero (rows outside the image are zeroed per band)
        ebuf[:, :, :pad] = 0
        ebuf[:, :, pad + width :] = 0
    view = band_view(ebuf, rows, wo, bands.k, bands.stride, bands.dilation, bands.tiled is not None)  # once per worker: as_strided is slow beside a band's work
    depthwise_out = gbuf[: images * rows * wo].reshape(images, rows, wo, hidden)
    depthwise_tmp = tbuf[: images * rows * wo].reshape(images, rows, wo, hidden)
    for b0, nb, r_start, r_end in items:
        held = (0, 0)  # padded rows [q0, q1) now in ebuf[:, : q1 - q0]
        for r0 in range(r_start, r_end, rows):
            r1 = min(r_end, r0 + rows)
            held = _expand_band(x, block, bands, (ebuf, gbuf, tbuf), b0, nb, r0, r1, held)
            dw = depthwise_band(None, depthwise_out[:nb, : r1 - r0], block.conv_3x3, bands.stride, bands.dilation,
                                bands.tiled, view[:nb, : r1 - r0])
            _activate_reduce(dw, depthwise_tmp[:nb, : r1 - r0], x, out, block, bands.residual, b0, nb, r0, r1)


def _expand_band(x, block: InvertedResidual, bands: _Bands, bufs, b0, nb, r0, r1, held):  # -> padded rows held
    """Padded input rows ``[n0, n1)`` of output rows ``[r0, r1)`` into ``ebuf[:nb, : n1 - n0]``: those
    ``held`` from the previous band moved to the top, the others zero outside the image and
    expanded (1x1 + act, the activation's last pass writing into the band buffer) inside."""
    ebuf, gbuf, tbuf = bufs
    height, width, cin = x.shape[1:]
    hidden, pad = block.expand_1x1.w.shape[1], bands.pad
    n0, n1 = bands.stride * r0, bands.stride * (r1 - 1) + bands.dilation * (bands.k - 1) + 1
    q0, q1 = held
    if q0 < n0 < q1:  # keep the shared rows
        ebuf[:nb, : q1 - n0] = ebuf[:nb, n0 - q0 : q1 - q0]
    start = max(q1, n0)
    i0, i1 = min(max(start - pad, 0), height), min(max(n1 - pad, 0), height)
    for q in range(start, n1):
        if not pad <= q < pad + height:
            ebuf[:nb, q - n0] = 0
    if i1 > i0:
        m = nb * (i1 - i0) * width
        g = gbuf[:m]
        np.matmul(x[b0 : b0 + nb, i0:i1].reshape(m, cin), block.expand_1x1.w, out=g)
        add_bias_act_(g.reshape(nb, i1 - i0, width, hidden), block.expand_1x1, block.expand_1x1.act,
                      tbuf[:m].reshape(nb, i1 - i0, width, hidden),
                      ebuf[:nb, i0 + pad - n0 : i1 + pad - n0, pad : pad + width])
    return n0, n1


def _activate_reduce(dw, tmp, x, out, block: InvertedResidual, residual, b0, nb, r0, r1):  # dw [nb, r, Wo, hidden] -> out rows
    """The depthwise output's bias + act, the 1x1 reduce into ``out[b0 : b0 + nb, r0:r1]``, + x."""
    hidden, cout = dw.shape[-1], block.reduce_1x1.w.shape[1]
    dw2 = dw.reshape(-1, hidden)
    add_bias_act_(dw2, block.conv_3x3, block.conv_3x3.act, tmp.reshape(-1, hidden))
    y = out[b0 : b0 + nb, r0:r1].reshape(-1, cout)
    np.matmul(dw2, block.reduce_1x1.w, out=y)
    add_bias_act_(y, block.reduce_1x1, block.reduce_1x1.act)
    if residual:
        y += x[b0 : b0 + nb, r0:r1].reshape(-1, cout)


def depthwise(x, conv: Conv, executor: Executor = SERIAL):  # [B, H, W, C] -> [B, H, W, C]
    """Stride-1 depthwise k x k convolution dilated by ``conv.dilation`` (+ ``conv.act``), padded to
    keep the size; one image is split by rows among the workers, each part padding the input rows
    it needs."""
    batch, height, width, channels = x.shape
    dilation = conv.dilation
    pad = (conv.k - 1) // 2 * dilation
    out = executor.empty(x.shape, x.dtype)
    tiled = tile(conv, width)

    def rows(span):
        r0, r1 = span
        padded = np.zeros((batch, r1 - r0 + 2 * pad, width + 2 * pad, channels), x.dtype)
        i0, i1 = max(0, r0 - pad), min(height, r1 + pad)
        padded[:, i0 - (r0 - pad) : i1 - (r0 - pad), pad : pad + width] = x[:, i0:i1]
        o = depthwise_band(padded, out[:, r0:r1], conv, 1, dilation, tiled)
        add_bias_act_(o, conv, conv.act, np.empty_like(o))

    executor.run(rows, split(height, executor.parts(x.size) if batch == 1 else 1))
    return out


# --------------------------------------------------------------------------------------------
# Transformer
# --------------------------------------------------------------------------------------------


def transformer_layer(x, layer: TransformerLayer, eps, bufs, scores=None, norm=None):  # [B, P, N, d] in place
    """``x += attention(norm(x))``; ``x += ffn(norm(x))`` (MobileViTV2's pre-norm layer), in place.
    ``bufs``: scratch arrays allocated once per MobileViT block (``_BlockPass``); ``norm(x, out)``:
    a ``GroupNorm`` bound to this part's positions (default: one part holding them all);
    ``scores``: where the context scores go (``[B, 1, P, N]``), or None."""
    batch, p, n, dim = x.shape
    rows = batch * p * n
    x2 = x.reshape(rows, dim)
    normed, qkv, mixed, hidden, tmp, y = bufs
    if norm is None:
        whole = GroupNorm(1, batch, p, p * n * dim, eps)

        def norm(x, out):
            return whole(0, x, out)

    x2 += separable_attention(norm(x, normed), layer, qkv, mixed, y, scores)
    norm(x, normed)
    np.matmul(normed.reshape(rows, dim), layer.conv1.w, out=hidden)
    add_bias_act_(hidden, layer.conv1, layer.conv1.act, tmp)
    np.matmul(hidden, layer.conv2.w, out=y)
    add_bias_act_(y, layer.conv2, layer.conv2.act)
    x2 += y
    return x


def separable_attention(normed, layer: TransformerLayer, qkv, mixed, out, scores=None):  # [B, P, N, d] -> out [B*P*N, d]
    """``out_proj(relu(value) * context)`` with ``qkv = qkv_proj(normed)`` (``normed``: the group-normed
    tokens, the norm's scale and shift being folded into ``qkv_proj``). ``qkv``, ``mixed`` and
    ``out`` are ``[B*P*N, 2d+1]``, ``[B*P*N, d]`` and ``[B*P*N, d]`` buffers. O(N) in the tokens.

    ``qkv`` holds one query channel, d key and d value channels; ``scores = softmax_N(query)``
    ([B, P, N], written to ``scores`` as [B, 1, P, N] when given); the context vector is the batched
    product ``scores[B, P, 1, N] @ key[B, P, N, d]``; ``relu(value) * context`` goes through ``out_proj``."""
    batch, p, n, dim = normed.shape
    rows = batch * p * n
    np.matmul(normed.reshape(rows, dim), layer.qkv_proj.w, out=qkv)
    add_bias_act_(qkv, layer.qkv_proj, layer.qkv_proj.act)
    q = qkv.reshape(batch, p, n, 2 * dim + 1)
    softmax = q[..., 0] - q[..., 0].max(axis=-1, keepdims=True)  # [B, P, N]
    np.exp(softmax, out=softmax)
    softmax /= softmax.sum(axis=-1, keepdims=True)
    if scores is not None:
        scores[...] = softmax.reshape(batch, 1, p, n)
    context = np.matmul(softmax[:, :, None, :], q[..., 1 : 1 + dim])  # [B, P, 1, d]
    m = mixed.reshape(batch, p, n, dim)
    np.maximum(q[..., 1 + dim :], 0, out=m)
    m *= context
    np.matmul(mixed, layer.out_proj.w, out=out)
    add_bias_act_(out, layer.out_proj, layer.out_proj.act)
    return out


def mobilevit_block(x, block: MobileViTBlock, plan: Plan, executor: Executor = SERIAL, record=None,
                    name="encoder.layer"):  # [B, H, W, Cin] -> [B, Ho, Wo, Cout]
    """Downsample (inverted residual); local representation (depthwise k x k + act, 1x1 to d);
    unfold into ``[B, P, N, d]``; transformer layers; group norm; 1x1 projection to Cout on the
    patches; fold back, pixels no patch covers getting the projection's bias (= conv of zeros).

    One image: the P pixel positions of a patch are split among the workers (the attention is
    independent per position; only the group norms need the other parts' sums). Each part
    unfolds, transforms, projects and folds back its own positions. ``record``: called with each
    layer's context scores as ``{name}.transformer.layer.{j}.attention.scores`` ([B, 1, P, N])."""
    x = inverted_residual(x, block.downsampling_layer, executor)
    if plan.patch_remainder == "resize":  # timm / ml-cvnets: see blocks.resize_to_patch_multiple
        x = resize_to_patch_multiple(x, plan.patch_size)
    x = depthwise(x, block.conv_kxk, executor)
    work = _BlockPass(x, block, plan, executor, record is not None)
    del x  # (the pass holds the map only until it is unfolded)
    executor.run(work.part, list(range(len(work.parts))))
    if record is not None:
        for j, layer_scores in enumerate(work.scores):
            record(f"{name}.transformer.layer.{j}.attention.scores", layer_scores)
    return work.out


class _BlockPass:
    """One MobileViT block's transformer, from the local map to the folded output, in parts of
    the pixel positions (``part(i)``, run by ``executor.run``)."""

    def __init__(self, local, block: MobileViTBlock, plan: Plan, executor: Executor, with_scores):
        self.block, self.eps, self.ps = block, plan.eps, plan.patch_size
        batch, height, width, cin = self.shape = local.shape
        self.nh, self.nw = height // self.ps, width // self.ps
        self.dim, self.cout, p, self.n = block.conv_1x1.w.shape[1], block.conv_projection.w.shape[1], self.ps**2, self.nh * self.nw
        elements = p * self.n * self.dim
        self.parts = split(p, executor.parts(elements, TRANSFORMER_PART_DIVISOR)) if batch == 1 else [(0, p)]
        self.norm = executor.group_norm(len(self.parts), batch, p, elements, plan.eps)
        self.scores = executor.empty((len(block.transformer), batch, 1, p, self.n), local.dtype) if with_scores else None
        # one part on private memory: the input map is dropped once unfolded and the output
        # allocated after the transformer (a batch's arrays are large); otherwise the parts write
        # one output, allocated now (shared memory: every member, in the same order)
        self.alone = len(self.parts) == 1 and not executor.shares_memory
        self.out = None if self.alone else executor.empty((batch, height, width, self.cout), local.dtype)
        self.local = [local]

    def part(self, i):  # the positions [p0, p1) of parts[i]: unfold, transform, project, fold
        p0, p1 = self.parts[i]
        normed = self._transform(i, self._unfold(p0, p1), p0)
        batch, rows = self.shape[0], self.shape[0] * (p1 - p0) * self.n
        projected = np.empty((batch, p1 - p0, self.nh, self.nw, self.cout), normed.dtype)
        np.matmul(normed.reshape(rows, self.dim), self.block.conv_projection.w, out=projected.reshape(rows, self.cout))
        add_bias_act_(projected, self.block.conv_projection, self.block.conv_projection.act)
        del normed
        self._fold(i, projected, p0, p1)

    def _unfold(self, p0, p1):  # -> tokens [B, p1 - p0, N, d]
        """Unfold first (on the input channels), so that the 1x1 conv writes the patches directly:
        position q = (i, j) of every patch is the strided map ``x[:, i::ps, j::ps]``."""
        local, ps, nh, nw = self.local[0], self.ps, self.nh, self.nw
        batch, cin = self.shape[0], self.shape[3]
        patches = np.empty((batch, p1 - p0, nh, nw, cin), local.dtype)
        for q in range(p0, p1):
            qi, qj = divmod(q, ps)
            patches[:, q - p0] = local[:, qi : nh * ps : ps, qj : nw * ps : ps]
        if self.alone:
            self.local.clear()
        del local
        rows = batch * (p1 - p0) * self.n
        return np.matmul(patches.reshape(rows, cin), self.block.conv_1x1.w).reshape(batch, p1 - p0, self.n, self.dim)

    def _transform(self, i, tokens, p0):  # tokens [B, Pp, N, d] -> the group-normed tokens after the layers
        rows, dim, dtype = tokens.size // self.dim, self.dim, tokens.dtype
        ffn = self.block.transformer[0].conv1.w.shape[1] if self.block.transformer else dim
        bufs = (np.empty_like(tokens), np.empty((rows, 2 * dim + 1), dtype), np.empty((rows, dim), dtype),
                np.empty((rows, ffn), dtype), np.empty((rows, ffn), dtype), np.empty((rows, dim), dtype))
        p1 = p0 + tokens.shape[1]

        def norm(x, out):
            return self.norm(i, x, out, p0)

        try:
            for j, layer in enumerate(self.block.transformer):
                scores = None if self.scores is None else self.scores[j][:, :, p0:p1]
                transformer_layer(tokens, layer, self.eps, bufs, scores, norm)
            return norm(tokens, bufs[0])
        except BaseException:
            self.norm.abort()  # the other parts stop waiting
            raise

    def _fold(self, i, projected, p0, p1):  # projected [B, Pp, nh, nw, Cout] -> self.out's positions
        batch, height, width, _ = self.shape
        ps, nh, nw = self.ps, self.nh, self.nw
        if self.out is None:
            self.out = np.empty((batch, height, width, self.cout), projected.dtype)
        for q in range(p0, p1):
            qi, qj = divmod(q, ps)
            self.out[:, qi : nh * ps : ps, qj : nw * ps : ps] = projected[:, q - p0]
        if i == 0 and (nh * ps, nw * ps) != (height, width):
            self.out[:, nh * ps :] = self.block.projection_bias
            self.out[:, :, nw * ps :] = self.block.projection_bias


# --------------------------------------------------------------------------------------------
# Segmentation head
# --------------------------------------------------------------------------------------------


def deeplabv3(x, head: DeepLabHead):  # [B, H, W, C] -> [B, num_labels, H, W]
    """ASPP and the classifier, as ``blocks.deeplabv3``. The five branches write their ReLU'd
    outputs side by side into one ``[B*H*W, 5A]`` array (the concatenation, never copied); the
    pooling branch, bilinearly upsampled from 1x1, is a constant per image."""
    batch, height, width, cin = x.shape
    rows = batch * height * width
    a = head.project.w.shape[1]
    x2 = x.reshape(rows, cin)
    cat = np.empty((rows, 5 * a), x.dtype)
    tmp = np.empty((rows, a), x.dtype)
    np.matmul(x2, head.convs[0].w, out=tmp)
    cat[:, :a] = bias_act_(tmp, head.convs[0].b, head.convs[0].act)
    shifted = []  # one buffer for the shifted inputs, made when a branch first needs it
    for i, conv in enumerate(head.convs[1:], start=1):
        _atrous(x, conv, cat[:, i * a : (i + 1) * a], tmp, shifted)
    pooled = x.reshape(batch, height * width, cin).mean(axis=1)  # [B, C]
    pooled = bias_act_(pooled @ head.pooling.w, head.pooling.b, head.pooling.act)
    cat.reshape(batch, height * width, 5 * a)[:, :, 4 * a :] = pooled[:, None, :]
    del tmp, shifted
    projected = bias_act_(cat @ head.project.w, head.project.b, head.project.act)
    del cat
    logits = bias_act_(projected @ head.classifier.w, head.classifier.b, head.classifier.act)
    return np.ascontiguousarray(logits.reshape(batch, height, width, -1).transpose(0, 3, 1, 2))


def _atrous(x, conv: Conv, acc, tmp, shifted):  # x [B, H, W, C] -> acc [B*H*W, A] = act(conv(x))
    """A 3x3 branch dilated by ``conv.dilation`` (the atrous rate) as a sum over its taps of shifted-input products
    (``conv.w`` rows in (kh, kw, c) order); a tap that sees only padding (dilation >= the map
    size) adds exact zeros, so it is skipped."""
    batch, height, width, cin = x.shape
    rows, rate = batch * height * width, conv.dilation
    np.matmul(x.reshape(rows, cin), conv.w[4 * cin : 5 * cin], out=tmp)  # centre tap
    acc[...] = tmp
    for kh in range(3):
        for kw in range(3):
            dh, dw = (kh - 1) * rate, (kw - 1) * rate
            if (dh, dw) == (0, 0) or abs(dh) >= height or abs(dw) >= width:
                continue
            if not shifted:
                shifted.append(np.empty_like(x))
            s = shifted[0]
            s.fill(0)  # s[i, j] = x[i + dh, j + dw], zero outside
            s[:, max(0, -dh) : height - max(0, dh), max(0, -dw) : width - max(0, dw)] = (
                x[:, max(0, dh) : height - max(0, -dh), max(0, dw) : width - max(0, -dw)])
            t = 3 * kh + kw
            np.matmul(s.reshape(rows, cin), conv.w[t * cin : (t + 1) * cin], out=tmp)
            acc += tmp
    bias_act_(acc, conv.b, conv.act)
