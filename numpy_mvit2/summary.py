"""Parameters, multiply-accumulates and output shapes of a MobileViTV2, from its config alone.

``summarize(config, height, width, head)`` walks the network as ``MobileViTV2Config.stages``
describes it and returns one ``LayerSummary`` row per stage (stem, stages 1-5, head), or per
layer with ``per_layer=True``. No weights are needed, so a notebook can tabulate any width and
input size. Counting rules:

- ``params``: what transformers counts (``model.num_parameters()`` of the PyTorch model):
  convolution and linear weights and biases, batch-norm and group-norm scales and shifts;
  batch norm's running statistics are buffers, not parameters.
- ``params_folded``: what ``numpy_mvit2`` holds once each batch norm is folded into the
  convolution before it (a bias of ``C`` values instead of four vectors): the count of
  ``model.num_parameters()`` here.
- ``macs``: multiply-accumulates of the convolutions and linear layers for one image,
  ``C_out * C_in / groups * k * k * H_out * W_out`` per convolution. These are the operations
  ``torch.utils.flop_counter.FlopCounterMode`` counts, at 2 FLOPs per MAC. Not counted:
  normalisation, activations, the element-wise products and sums of separable
  attention, pooling, resizing and residual additions.

Inside a MobileViT block the transformer's 1x1 convolutions run on ``[d, P, N]`` (``P =
patch_size**2`` pixels per patch, ``N = (H // p) * (W // p)`` patches): a border that no whole
patch covers skips the transformer, as in transformers; under timm's and ml-cvnets' behavior
(``config.choices.patch_remainder == "resize"``) the block's input is first resized up to a
multiple of the patch size, and the local conv of a dilated stage is dilated.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .config import MobileViTV2Config, expanded_channels

HEADS = ("base", "classification", "segmentation")


@dataclass
class LayerSummary:
    """One row: ``name`` (checkpoint prefix, e.g. ``encoder.layer.2``), ``stage`` ("stem",
    "stage 1".."stage 5", "head"), ``kind`` (what it is), ``output_shape`` (one image's output,
    channels first), ``params``, ``params_folded``, ``macs``."""

    name: str
    stage: str
    kind: str
    output_shape: tuple
    params: int
    params_folded: int
    macs: int

    def to_dict(self) -> dict:
        out = asdict(self)
        out["output_shape"] = list(self.output_shape)
        return out


def _conv(name, stage, cin, cout, kernel, out_hw, *, groups=1, stride=1, dilation=1, bias=False, norm=True, kind=None):
    """A ``MobileViTV2ConvLayer``: its row, counted as above."""
    weights = cout * (cin // groups) * kernel * kernel
    params = weights + (cout if bias else 0) + (2 * cout if norm else 0)
    folded = weights + (cout if (bias or norm) else 0)
    macs = weights * out_hw[0] * out_hw[1]
    if kind is None:
        kind = f"conv {kernel}x{kernel}" + (" depthwise" if groups == cin == cout and groups > 1 else "")
        kind += f" s{stride}" if stride != 1 else ""
        kind += f" d{dilation}" if dilation != 1 else ""
        kind += " +BN" if norm else ""
    return LayerSummary(name, stage, kind, (cout, *out_hw), params, folded, macs)


def _inverted_residual(prefix, stage, cin, cout, hw_in, *, stride, dilation, expand_ratio):
    hidden = expanded_channels(cin, expand_ratio)
    hw_out = ((hw_in[0] - 1) // stride + 1, (hw_in[1] - 1) // stride + 1)
    return [
        _conv(f"{prefix}.expand_1x1", stage, cin, hidden, 1, hw_in),
        _conv(f"{prefix}.conv_3x3", stage, hidden, hidden, 3, hw_out, groups=hidden, stride=stride, dilation=dilation),
        _conv(f"{prefix}.reduce_1x1", stage, hidden, cout, 1, hw_out),
    ], hw_out


def _group_norm(name, stage, channels, shape):
    return LayerSummary(name, stage, "group norm", shape, 2 * channels, 2 * channels, 0)


def layer_rows(config: MobileViTV2Config, height: int, width: int, head: str = "classification") -> list[LayerSummary]:
    """Every layer with weights, in forward order (see ``summarize``)."""
    if head not in HEADS:
        raise ValueError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
    config.check_input_size(height, width)
    rows = []
    hw = ((height - 1) // 2 + 1, (width - 1) // 2 + 1)
    rows.append(_conv("conv_stem", "stem", config.num_channels, config.stem_channels, 3, hw, stride=2))
    for spec in config.stages:
        stage, prefix = f"stage {spec.index + 1}", f"encoder.layer.{spec.index}"
        if spec.kind == "mobilenet":
            cin = spec.in_channels
            for j in range(spec.num_blocks):
                block, hw = _inverted_residual(f"{prefix}.layer.{j}", stage, cin, spec.out_channels, hw,
                                               stride=spec.stride if j == 0 else 1, dilation=1,
                                               expand_ratio=config.expand_ratio)
                rows += block
                cin = spec.out_channels
            continue
        c, d, p = spec.out_channels, spec.attn_unit_dim, config.patch_size
        block, hw = _inverted_residual(f"{prefix}.downsampling_layer", stage, spec.in_channels, c, hw, stride=spec.stride,
                                       dilation=spec.downsample_dilation, expand_ratio=config.expand_ratio)
        rows += block
        if config.choices.patch_remainder == "resize":  # timm / ml-cvnets: resized up to a multiple of p
            hw = (-(-hw[0] // p) * p, -(-hw[1] // p) * p)
        k = config.conv_kernel_size
        rows.append(_conv(f"{prefix}.conv_kxk", stage, c, c, k, hw, groups=c, dilation=spec.local_dilation))
        rows.append(_conv(f"{prefix}.conv_1x1", stage, c, d, 1, hw, norm=False))
        patches = (p * p, (hw[0] // p) * (hw[1] // p))  # [P, N]
        for j in range(spec.n_attn_blocks):
            layer = f"{prefix}.transformer.layer.{j}"
            rows.append(_group_norm(f"{layer}.layernorm_before", stage, d, (d, *patches)))
            rows.append(_conv(f"{layer}.attention.qkv_proj", stage, d, 1 + 2 * d, 1, patches, bias=True, norm=False,
                              kind="separable attention: q, k, v (1x1)"))
            rows.append(_conv(f"{layer}.attention.out_proj", stage, d, d, 1, patches, bias=True, norm=False,
                              kind="separable attention: out (1x1)"))
            rows.append(_group_norm(f"{layer}.layernorm_after", stage, d, (d, *patches)))
            rows.append(_conv(f"{layer}.ffn.conv1", stage, d, spec.ffn_dim, 1, patches, bias=True, norm=False, kind="FFN 1x1"))
            rows.append(_conv(f"{layer}.ffn.conv2", stage, spec.ffn_dim, d, 1, patches, bias=True, norm=False, kind="FFN 1x1"))
        rows.append(_group_norm(f"{prefix}.layernorm", stage, d, (d, *patches)))
        rows.append(_conv(f"{prefix}.conv_projection", stage, d, c, 1, hw))
    width_out = config.hidden_sizes[-1]
    if head == "classification" and config.num_labels > 0:
        n = config.num_labels
        rows.append(LayerSummary("classifier", "head", "global pool + linear", (n,), width_out * n + n,
                                 width_out * n + n, width_out * n))
    elif head == "segmentation":
        a, name = config.aspp_out_channels, "segmentation_head"
        rows.append(_conv(f"{name}.aspp.convs.0", "head", width_out, a, 1, hw, kind="ASPP conv 1x1 +BN"))
        for i, rate in enumerate(config.atrous_rates, start=1):
            rows.append(_conv(f"{name}.aspp.convs.{i}", "head", width_out, a, 3, hw, dilation=rate,
                              kind=f"ASPP conv 3x3 d{rate} +BN"))
        rows.append(_conv(f"{name}.aspp.convs.4.conv_1x1", "head", width_out, a, 1, (1, 1), kind="ASPP pool + conv 1x1 +BN"))
        rows.append(_conv(f"{name}.aspp.project", "head", 5 * a, a, 1, hw, kind="ASPP project 1x1 +BN"))
        rows.append(_conv(f"{name}.classifier", "head", a, config.num_labels, 1, hw, bias=True, norm=False,
                          kind="classifier 1x1"))
    return rows


STAGE_KINDS = {"mobilenet": "inverted residuals", "mobilevit": "MobileViTV2 block"}


def summarize(config: MobileViTV2Config, height: int | None = None, width: int | None = None,
              head: str = "classification", *, per_layer: bool = False) -> list[LayerSummary]:
    """Rows for an input of ``height x width`` (default: ``config.image_size`` square) and
    ``head`` ("base", "classification" or "segmentation"): per stage (stem, stage 1..5, head),
    or per layer with ``per_layer=True``. ``sum(r.params for r in rows)`` is transformers'
    ``num_parameters()``, ``sum(r.params_folded ...)`` numpy_mvit2's, ``sum(r.macs ...)`` the
    multiply-accumulates of one forward pass. The last row of a stage (``output_shape``) is
    that stage's hidden state."""
    height = config.image_size if height is None else int(height)
    width = config.image_size if width is None else int(width)
    rows = layer_rows(config, height, width, head)
    if per_layer:
        return rows
    stages = []
    for row in rows:
        if stages and stages[-1].stage == row.stage:
            last = stages[-1]
            if row.kind != "group norm":  # a stage's output is its last layer with a spatial output
                last.output_shape = row.output_shape
            last.params += row.params
            last.params_folded += row.params_folded
            last.macs += row.macs
            continue
        name = {"stem": "conv_stem", "head": row.name.split(".")[0]}.get(row.stage, ".".join(row.name.split(".")[:3]))
        stages.append(LayerSummary(name, row.stage, row.kind, row.output_shape, row.params, row.params_folded, row.macs))
    specs = {f"stage {s.index + 1}": s for s in config.stages}
    for row in stages:
        if row.stage in specs:
            spec = specs[row.stage]
            row.kind = STAGE_KINDS[spec.kind] + (f" x{spec.num_blocks}" if spec.kind == "mobilenet" else
                                                 f", {spec.n_attn_blocks} attention layers, d={spec.attn_unit_dim}")
            row.kind += f", stride {spec.stride}"
        elif row.stage == "stem":
            row.kind = "conv 3x3 s2 +BN"
        elif row.stage == "head":
            row.kind = {"classification": "global pool + linear", "segmentation": "DeepLabV3 (ASPP) + 1x1 classifier"}[head]
    return stages


def _human(n: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return str(n)


def format_summary(rows: list[LayerSummary], *, title: str | None = None) -> str:
    """A plain-text table of ``rows`` with a total line."""
    header = ("stage    layer", "output (C, H, W)", "params", "folded", "MACs")
    lines = []
    if title:
        lines.append(title)
    body = [(f"{r.stage:<8} {r.name}", "x".join(map(str, r.output_shape)), f"{r.params:,}", f"{r.params_folded:,}", _human(r.macs)) for r in rows]
    total = ("total", "", f"{sum(r.params for r in rows):,}", f"{sum(r.params_folded for r in rows):,}",
             _human(sum(r.macs for r in rows)))
    widths = [max(len(str(row[i])) for row in [header, *body, total]) for i in range(5)]

    def fmt(row):
        return "  ".join([row[0].ljust(widths[0]), row[1].ljust(widths[1])] + [row[i].rjust(widths[i]) for i in (2, 3, 4)])

    lines.append(fmt(header))
    lines.append("  ".join("-" * w for w in widths))
    lines += [fmt(row) for row in body]
    lines.append("  ".join("-" * w for w in widths))
    lines.append(fmt(total))
    lines.append(f"MACs: {sum(r.macs for r in rows):,} multiply-accumulates of the convolutions and linear layers for one image")
    lines.append("  (FLOPs = 2 x MACs; norms, activations, attention's element-wise products and resizing are not counted).")
    lines.append("params: as transformers counts them; folded: each batch norm folded into its convolution, as numpy_mvit2 holds them.")
    return "\n".join(lines)


__all__ = ["LayerSummary", "format_summary", "layer_rows", "summarize"]
