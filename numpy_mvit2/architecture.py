"""The network written down once: every layer that holds weights, with its facts, from the config.

``describe(config, head)`` lists the layers of a ``MobileViTV2Model`` (``head="base"``), of a
``...ForImageClassification`` ("classification") or of a ``...ForSemanticSegmentation``
("segmentation") in forward order, one ``Layer`` each: its checkpoint name, what it is, its
channels, kernel, stride, dilation (under the config's behavior), groups, bias, batch norm and
activation; given an input size, also its output size. Everything that needs to know the network
without running it reads this list:

- ``weights.shapes.expected_shapes``: the tensors a checkpoint must hold (``Layer.tensors``), the
  list the strict loader checks and the seeded initialisation (``weights.init``) draws;
- ``summary``: parameters and multiply-accumulates per layer (``Layer.params``, ``Layer.macs``);
- ``crosscheck.layer_names``: the points where both libraries' outputs are compared;
- ``fast.build_plan``: each convolution's stride, dilation and activation, read by name.

The forward passes (``blocks`` and the ``fast`` package) compose the same layers from the same
``config.stages``; ``tests/test_architecture.py`` holds them to this list (every layer here is a
tensor of the model, and every recorded output has the size given here).

Names are transformers' module names without the backbone's ``mobilevitv2.`` prefix (``Layer.in_backbone``
says whether a checkpoint of a model with a head puts it there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config import MobileViTV2Config, StageSpec, expanded_channels

HEADS = ("base", "classification", "segmentation")


@dataclass(frozen=True)
class Layer:
    """One layer with weights.

    ``kind``: "conv" (a ``MobileViTV2ConvLayer``: convolution, then batch norm if ``norm``, then
    ``activation``), "group_norm" (one group, over ``[d, P, N]`` patches) or "linear" (the
    classifier). ``input``: what the layer runs on: "map" ``[C, H, W]``, "patches" ``[d, P, N]``
    (P pixels per patch, N patches) or "pooled" (a ``[C, 1, 1]`` map, or a ``[C]`` vector for the
    linear classifier). ``output_shape``: one image's output, channels first, when ``describe``
    was given an input size, else None."""

    name: str
    stage: str  # "stem", "stage 1" ... "stage 5", "head"
    kind: str
    in_channels: int
    out_channels: int
    kernel_size: int = 1
    stride: int = 1
    dilation: int = 1
    groups: int = 1
    bias: bool = False
    norm: bool = False
    activation: str | None = None
    input: str = "map"
    output_shape: tuple | None = None

    @property
    def in_backbone(self) -> bool:
        return self.stage != "head"

    @property
    def padding(self) -> int:
        """What keeps a stride-1 map's size: ``(k - 1) / 2 * dilation`` (every conv of the network)."""
        return (self.kernel_size - 1) // 2 * self.dilation

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.in_channels == self.out_channels

    @property
    def tensors(self) -> dict[str, tuple]:
        """The checkpoint's tensors of this layer, under their names relative to ``name``."""
        if self.kind == "group_norm":
            return {"weight": (self.out_channels,), "bias": (self.out_channels,)}
        if self.kind == "linear":
            return {"weight": (self.out_channels, self.in_channels), "bias": (self.out_channels,)}  # always has a bias
        k = self.kernel_size
        out = {"convolution.weight": (self.out_channels, self.in_channels // self.groups, k, k)}
        if self.bias:
            out["convolution.bias"] = (self.out_channels,)
        if self.norm:
            out.update({f"normalization.{n}": (self.out_channels,) for n in ("weight", "bias", "running_mean", "running_var")})
        return out

    @property
    def weights(self) -> int:
        """Values of the weight matrix or kernel alone."""
        return math.prod(self.tensors["weight" if self.kind != "conv" else "convolution.weight"])

    @property
    def params(self) -> int:
        """Parameters as transformers counts them: batch norm's running statistics are buffers."""
        if self.kind == "group_norm":
            return 2 * self.out_channels
        return self.weights + (self.out_channels if self.bias else 0) + (2 * self.out_channels if self.norm else 0)

    @property
    def params_folded(self) -> int:
        """Parameters once the batch norm is folded into the conv before it (a bias of C values)."""
        if self.kind == "group_norm":
            return 2 * self.out_channels
        return self.weights + (self.out_channels if self.bias or self.norm else 0)

    @property
    def macs(self) -> int:
        """Multiply-accumulates for one image: ``C_out * C_in / groups * k * k`` per output
        position (none for a group norm). Needs ``output_shape``."""
        if self.kind == "group_norm":
            return 0
        if self.output_shape is None:
            raise ValueError(f"{self.name}: macs need an input size (describe(config, head, height, width))")
        return self.weights * math.prod(self.output_shape[1:])


def _stride(size: tuple, stride: int) -> tuple:
    """A 3x3 conv padded to keep the size, at ``stride``: n -> (n - 1) // stride + 1."""
    return None if size is None else tuple((n - 1) // stride + 1 for n in size)


class _Writer:
    """Appends ``Layer`` rows and follows the feature map's size (None when no input size is given)."""

    def __init__(self, config: MobileViTV2Config, size: tuple | None):
        self.config, self.size, self.rows = config, size, []
        self.patches = None  # (P, N) inside a MobileViT block

    def conv(self, name, stage, cin, cout, kernel=1, *, stride=1, dilation=1, groups=1, bias=False, norm=True,
             activation=None, input="map"):
        if input == "patches":
            shape = None if self.patches is None else (cout, *self.patches)
        elif input == "pooled":
            shape = (cout, 1, 1)
        else:
            self.size = _stride(self.size, stride)
            shape = None if self.size is None else (cout, *self.size)
        self.rows.append(Layer(name, stage, "conv", cin, cout, kernel, stride, dilation, groups, bias, norm, activation,
                               input, shape))

    def group_norm(self, name, stage, channels):
        shape = None if self.patches is None else (channels, *self.patches)
        self.rows.append(Layer(name, stage, "group_norm", channels, channels, input="patches", output_shape=shape))


def _inverted_residual(w: _Writer, prefix, stage, cin, cout, *, stride, dilation=1):
    hidden, act = expanded_channels(cin, w.config.expand_ratio), w.config.hidden_act
    w.conv(f"{prefix}.expand_1x1", stage, cin, hidden, activation=act)
    w.conv(f"{prefix}.conv_3x3", stage, hidden, hidden, 3, stride=stride, dilation=dilation, groups=hidden, activation=act)
    w.conv(f"{prefix}.reduce_1x1", stage, hidden, cout)


def _mobilevit_block(w: _Writer, spec: StageSpec, prefix, stage):
    config, c, d, p = w.config, spec.out_channels, spec.attn_unit_dim, w.config.patch_size
    act = config.hidden_act
    _inverted_residual(w, f"{prefix}.downsampling_layer", stage, spec.in_channels, c, stride=spec.stride,
                       dilation=spec.downsample_dilation)
    if config.choices.patch_remainder == "resize" and w.size is not None:  # timm, ml-cvnets: up to a multiple of p
        w.size = tuple(-(-n // p) * p for n in w.size)
    w.conv(f"{prefix}.conv_kxk", stage, c, c, config.conv_kernel_size, dilation=spec.local_dilation, groups=c,
           activation=act)
    w.conv(f"{prefix}.conv_1x1", stage, c, d, norm=False)
    # the transformer runs on [d, P, N]: a border no whole patch covers is left out (or was resized away)
    w.patches = None if w.size is None else (p * p, (w.size[0] // p) * (w.size[1] // p))
    for j in range(spec.n_attn_blocks):
        layer = f"{prefix}.transformer.layer.{j}"
        w.group_norm(f"{layer}.layernorm_before", stage, d)
        w.conv(f"{layer}.attention.qkv_proj", stage, d, 1 + 2 * d, bias=True, norm=False, input="patches")
        w.conv(f"{layer}.attention.out_proj", stage, d, d, bias=True, norm=False, input="patches")
        w.group_norm(f"{layer}.layernorm_after", stage, d)
        w.conv(f"{layer}.ffn.conv1", stage, d, spec.ffn_dim, bias=True, norm=False, activation=act, input="patches")
        w.conv(f"{layer}.ffn.conv2", stage, spec.ffn_dim, d, bias=True, norm=False, input="patches")
    w.group_norm(f"{prefix}.layernorm", stage, d)
    w.patches = None
    w.conv(f"{prefix}.conv_projection", stage, d, c)


def _backbone(w: _Writer):
    config = w.config
    w.conv("conv_stem", "stem", config.num_channels, config.stem_channels, 3, stride=2, activation=config.hidden_act)
    for spec in config.stages:
        stage, prefix = f"stage {spec.index + 1}", f"encoder.layer.{spec.index}"
        if spec.kind == "mobilevit":
            _mobilevit_block(w, spec, prefix, stage)
            continue
        cin = spec.in_channels
        for j in range(spec.num_blocks):  # only the first block strides
            _inverted_residual(w, f"{prefix}.layer.{j}", stage, cin, spec.out_channels, stride=spec.stride if j == 0 else 1)
            cin = spec.out_channels


def _head(w: _Writer, head: str):
    config, width = w.config, w.config.hidden_sizes[-1]
    if head == "classification" and config.num_labels > 0:  # global average pool, then a linear layer
        w.rows.append(Layer("classifier", "head", "linear", width, config.num_labels, bias=True, input="pooled",
                            output_shape=(config.num_labels,)))
    elif head == "segmentation":  # DeepLabV3: ASPP (a 1x1, three dilated 3x3s, pooling), projection, classifier
        a, prefix = config.aspp_out_channels, "segmentation_head.aspp"
        w.conv(f"{prefix}.convs.0", "head", width, a, activation="relu")
        for i, rate in enumerate(config.atrous_rates, start=1):
            w.conv(f"{prefix}.convs.{i}", "head", width, a, 3, dilation=rate, activation="relu")
        w.conv(f"{prefix}.convs.4.conv_1x1", "head", width, a, activation="relu", input="pooled")
        w.conv(f"{prefix}.project", "head", 5 * a, a, activation="relu")
        w.conv("segmentation_head.classifier", "head", a, config.num_labels, bias=True, norm=False)


def describe(config: MobileViTV2Config, head: str = "base", height: int | None = None,
             width: int | None = None) -> list[Layer]:
    """Every layer with weights of the model for ``head`` ("base", "classification",
    "segmentation"), in forward order; with ``height`` and ``width``, each with its output size
    for one image of that size (checked as the models check it)."""
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    if (height is None) != (width is None):
        raise ValueError("describe: give both height and width, or neither")
    if height is not None:
        config.check_input_size(height, width)
    w = _Writer(config, None if height is None else (int(height), int(width)))
    _backbone(w)
    _head(w, head)
    return w.rows


__all__ = ["HEADS", "Layer", "describe"]
