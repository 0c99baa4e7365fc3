"""Parameters, multiply-accumulates and output shapes of a MobileViTV2, from its config alone.

``summarize(config, height, width, head)`` reads the network's layers as
``numpy_mvit2.architecture.describe`` lists them and returns one ``LayerSummary`` row per stage (stem, stages 1-5, head), or per
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

from .architecture import HEADS, Layer, describe
from .config import MobileViTV2Config


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


# what a layer is, where its name says more than its kernel (the last parts of the name)
_ROLES = {
    "attention.qkv_proj": "separable attention: q, k, v (1x1)",
    "attention.out_proj": "separable attention: out (1x1)",
    "ffn.conv1": "FFN 1x1",
    "ffn.conv2": "FFN 1x1",
    "convs.0": "ASPP conv 1x1 +BN",
    "convs.4.conv_1x1": "ASPP pool + conv 1x1 +BN",
    "aspp.project": "ASPP project 1x1 +BN",
    "segmentation_head.classifier": "classifier 1x1",
}


def _kind(layer: Layer) -> str:
    if layer.kind == "group_norm":
        return "group norm"
    if layer.kind == "linear":
        return "global pool + linear"
    role = next((role for suffix, role in _ROLES.items() if layer.name.endswith(suffix)), None)
    if role is not None:
        return role
    if layer.name.startswith("segmentation_head.aspp.convs."):
        return f"ASPP conv 3x3 d{layer.dilation} +BN"
    k = layer.kernel_size
    return (f"conv {k}x{k}" + (" depthwise" if layer.depthwise else "") + (f" s{layer.stride}" if layer.stride != 1 else "")
            + (f" d{layer.dilation}" if layer.dilation != 1 else "") + (" +BN" if layer.norm else ""))


def layer_rows(config: MobileViTV2Config, height: int, width: int, head: str = "classification") -> list[LayerSummary]:
    """Every layer with weights, in forward order (``architecture.describe``; see ``summarize``)."""
    if head not in HEADS:
        raise ValueError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
    return [LayerSummary(layer.name, layer.stage, _kind(layer), layer.output_shape, layer.params, layer.params_folded,
                         layer.macs) for layer in describe(config, head, height, width)]


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
