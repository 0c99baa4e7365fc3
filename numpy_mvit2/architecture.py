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
- ``fast.build_plan``: each convolution's stride, dilation and activation, read by name;
- ``MobileViTV2Config.parameter_count`` (the cap ``validate`` puts on a model's size) and
  ``feature_map_sizes`` (``check_input_size``).

This module sits below ``config`` (it never imports it): ``MobileViTV2Config.stages`` builds its
widths with ``make_divisible`` and holds them as ``StageSpec`` objects, both defined here, and the config
asks ``describe`` for its counts.

The forward passes (``blocks`` and the ``fast`` package) compose the same layers from the same
``config.stages``; ``tests/test_architecture.py`` holds them to this list (every layer here is a
tensor of the model, and every recorded output has the size given here).

Names are transformers' module names without the backbone's ``mobilevitv2.`` prefix (``Layer.in_backbone``
says whether a checkpoint of a model with a head puts it there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import is_finite_number, show

HEADS = ("base", "classification", "segmentation")


# -- channel widths: the rounding the stages' widths (``MobileViTV2Config.stages``) are made with --


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` (at least ``min_value``), rounding up
    once more if that lost over 10%: the channel rounding MobileNet, timm and transformers share."""
    if not is_finite_number(value):
        raise ValueError(f"make_divisible: value must be a finite number, got {show(value)}")
    if min_value is None:
        min_value = divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return int(new_value)


@dataclass(frozen=True)
class StageSpec:
    """One encoder stage, ``encoder.layer.{index}`` in the checkpoint.

    kind "mobilenet": ``num_blocks`` inverted residuals, the first with ``stride``.
    kind "mobilevit": an inverted residual that downsamples (``stride`` 2, or stride 1 with
    ``downsample_dilation`` when the output stride is reduced), a local depthwise k x k conv, a 1x1
    projection to ``attn_unit_dim``, ``n_attn_blocks`` transformer layers (FFN width ``ffn_dim``)
    over patches, and a 1x1 projection back to ``out_channels``. ``local_dilation`` dilates the
    local depthwise conv: the stage's dilation under timm's and ml-cvnets' choices, 1 under
    transformers' (``FrameworkChoices.dilate_local_conv``).
    """

    index: int
    kind: str
    in_channels: int
    out_channels: int
    stride: int
    num_blocks: int = 1
    downsample_dilation: int = 1
    local_dilation: int = 1
    attn_unit_dim: int = 0
    n_attn_blocks: int = 0
    ffn_dim: int = 0


def expanded_channels(in_channels: int, expand_ratio: float) -> int:
    """Hidden width of an inverted residual: ``make_divisible(round(in * expand_ratio), 8)``."""
    return make_divisible(int(round(in_channels * expand_ratio)), 8)


# -- the layers ----------------------------------------------------------------------------------


@dataclass(slots=True)  # (not frozen: a walk makes a hundred of these, and frozen ones cost 6x as much to make)
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
    """Appends ``Layer`` rows and follows the feature map's size (None when no input size is given).
    ``config``: a ``MobileViTV2Config`` (read, never imported here: the config builds its stages
    with this module's ``make_divisible`` and counts its parameters with ``describe``)."""

    def __init__(self, config, size: tuple | None, maps_only: bool = False):
        self.config, self.size, self.rows, self.maps_only = config, size, [], maps_only  # maps_only: no transformer rows
        self.stages, self.choices = config.stages, config.choices  # each computed once per walk
        self.patches = None  # (P, N) inside a MobileViT block

    def conv(self, name, stage, cin, cout, kernel=1, *, stride=1, dilation=1, groups=1, bias=False, norm=True,
             activation=None, input="map"):
        if input == "patches":
            shape = None if self.patches is None else (cout, *self.patches)
        elif input == "pooled":
            shape = (cout, 1, 1)
        else:
            if stride != 1:
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
    if w.choices.patch_remainder == "resize" and w.size is not None:  # timm, ml-cvnets: up to a multiple of p
        w.size = tuple(-(-n // p) * p for n in w.size)
    w.conv(f"{prefix}.conv_kxk", stage, c, c, config.conv_kernel_size, dilation=spec.local_dilation, groups=c,
           activation=act)
    w.conv(f"{prefix}.conv_1x1", stage, c, d, norm=False)
    # the transformer runs on [d, P, N]: a border no whole patch covers is left out (or was resized away)
    w.patches = None if w.size is None else (p * p, (w.size[0] // p) * (w.size[1] // p))
    for j in range(0 if w.maps_only else spec.n_attn_blocks):
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
    for spec in w.stages:
        stage, prefix = f"stage {spec.index + 1}", f"encoder.layer.{spec.index}"
        if spec.kind == "mobilevit":
            _mobilevit_block(w, spec, prefix, stage)
            continue
        cin = spec.in_channels
        for j in range(spec.num_blocks):  # only the first block strides
            _inverted_residual(w, f"{prefix}.layer.{j}", stage, cin, spec.out_channels, stride=spec.stride if j == 0 else 1)
            cin = spec.out_channels


def _head(w: _Writer, head: str):
    config, width = w.config, w.stages[-1].out_channels
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


# the config's fields a walk reads besides those ``config.stages`` and ``config.choices`` check themselves
# (num_labels is checked whenever it is set)
_FIELDS = ("num_channels", "expand_ratio", "hidden_act", "conv_kernel_size", "patch_size",
           "aspp_out_channels", "atrous_rates")


def _walk(config, head: str, size: tuple | None, maps_only: bool = False) -> list[Layer]:
    config.check_fields(_FIELDS)  # again: a field set after the config was made is checked only here
    w = _Writer(config, size, maps_only)
    _backbone(w)
    _head(w, head)
    return w.rows


def describe(config, head: str = "base", height: int | None = None, width: int | None = None) -> list[Layer]:
    """Every layer with weights of the model ``config`` (a ``MobileViTV2Config``) builds for
    ``head`` ("base", "classification", "segmentation"), in forward order; with ``height`` and
    ``width``, each with its output size for one image of that size (checked as the models check
    it: ``config.check_input_size``)."""
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    if (height is None) != (width is None):
        raise ValueError("describe: give both height and width, or neither")
    if height is not None:
        config.check_input_size(height, width)
        return _walk(config, head, (int(height), int(width)))
    return _walk(config, head, None)


def feature_map_sizes(config, height: int, width: int) -> list[tuple[int, int]]:
    """(H, W) of the stem's output and of each stage's output for an input of ``height x width``:
    the output sizes of the stem and of each stage's last layer (not checked: a map smaller than a
    patch gets sizes too)."""
    last = {}
    for layer in _walk(config, "base", (int(height), int(width)), maps_only=True):
        if layer.input == "map":
            last[layer.stage] = layer.output_shape[1:]
    return list(last.values())


__all__ = ["HEADS", "Layer", "StageSpec", "describe", "expanded_channels", "feature_map_sizes", "make_divisible"]
