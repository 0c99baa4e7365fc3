"""The fast path's plan: a model's weights laid out once for the NHWC kernels.

Every field is named after the checkpoint key it is built from (``conv_stem``,
``encoder.layer.{i}.layer.{j}.expand_1x1``, ``...transformer.layer.{j}.attention.qkv_proj``,
``segmentation_head.aspp.convs.{n}``), so a reader finds each tensor of the checkpoint at one
field. What changes on the way:

- batch norms are folded into the convolution before them (``ops.fold_batch_norm``; here when the
  model kept them apart, ``fold_batch_norm=False``);
- a group norm's scale and shift are folded into the 1x1 convolution that follows it;
- a convolution followed by SiLU is scaled by 1/2 (``act_scale``; exact: a power of two);
- each weight is laid out as the matrix product wants it: ``[Cin, Cout]`` for 1x1 convolutions,
  ``[k*k*Cin, Cout]`` (rows in (kh, kw, c) order) for dense ones, ``[k, k, C]`` for depthwise ones.

Each convolution keeps its ``Layer``'s stride, dilation and activation (``Conv.stride``,
``.dilation``, ``.act``), read off ``architecture.describe(config, head)``, the network's one
description, by the same name: the kernels in ``layers`` apply what the conv says, so the scale
folded in for an activation and the activation applied come from one place. ``plan_choices``
gives the config fields a plan was built from (all but the label names and the output flags).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

from ..architecture import HEADS, Layer, describe
from ..config import MobileViTV2Config
from ..ops import fold_batch_norm


@dataclass
class Conv:
    """A convolution ready for NHWC: ``w`` is ``[k*k*Cin, Cout]`` for dense convolutions (rows in
    (kh, kw, c) order; ``[Cin, Cout]`` for 1x1) or ``[k, k, C]`` for depthwise ones; ``b`` ``[Cout]``;
    ``stride``, ``dilation`` and ``act`` (the activation after it, or None) are its ``Layer``'s."""

    w: np.ndarray
    b: np.ndarray | None
    k: int = 1
    stride: int = 1
    dilation: int = 1
    act: str | None = None
    tiled: dict = field(default_factory=dict, repr=False, compare=False)
    """Copies of ``b`` (``("b", n)``: tiled n times) and of a depthwise ``w`` (``("w", n)``: see
    ``kernels.tile``) made on first use; a plan's arrays are never edited in place (``rebuild_fast_plan``
    builds a new plan), so they stay valid."""


@dataclass
class InvertedResidual:  # encoder.layer.{i}.layer.{j}, or a MobileViT block's downsampling_layer
    expand_1x1: Conv  # [Cin, hidden], act scale folded in
    conv_3x3: Conv  # depthwise [k, k, hidden]; strided in a stage's first block, dilated in a dilated stage's downsampling_layer
    reduce_1x1: Conv  # [hidden, Cout]


@dataclass
class TransformerLayer:  # encoder.layer.{i}.transformer.layer.{j}
    qkv_proj: Conv  # attention.qkv_proj, [d, 1 + 2d]; layernorm_before's scale and shift folded in
    out_proj: Conv  # attention.out_proj, [d, d]
    conv1: Conv  # ffn.conv1, [d, ffn]; layernorm_after's scale and shift (and the act scale) folded in
    conv2: Conv  # ffn.conv2, [ffn, d]


@dataclass
class MobileViTBlock:  # encoder.layer.{i} of a transformer stage
    downsampling_layer: InvertedResidual
    conv_kxk: Conv  # depthwise k x k, [k, k, C] (C: the stage's out_channels); dilated under the behaviors that dilate it
    conv_1x1: Conv  # [C, d], no bias
    transformer: list  # list[TransformerLayer]: transformer.layer.{j}
    conv_projection: Conv  # [d, Cout]; the block's final group norm (``layernorm``) folded in
    projection_bias: np.ndarray  # conv_projection's unfolded bias: what uncovered border pixels get


@dataclass
class Linear:  # classifier: ``ops.linear(x, weight, bias)`` as the reference computes it
    weight: np.ndarray  # [num_labels, C5]
    bias: np.ndarray | None


@dataclass
class DeepLabHead:  # segmentation_head
    convs: list  # aspp.convs.0 (1x1, [C, A]) and aspp.convs.1-3 (3x3, [9*C, A], each Conv.dilation its atrous rate)
    pooling: Conv  # aspp.convs.4.conv_1x1, [C, A]
    project: Conv  # aspp.project, [5A, A]
    classifier: Conv  # classifier, [A, num_labels]


@dataclass
class Plan:
    dtype: type
    head: str  # "base", "classification" or "segmentation"
    eps: float  # config.layer_norm_eps
    patch_size: int
    patch_remainder: str  # config.choices.patch_remainder
    choices: tuple  # plan_choices(config) when built (the config's fields): a model rebuilds its plan when they change
    conv_stem: Conv  # dense 3x3, stride 2
    stages: list = field(default_factory=list)  # encoder.layer.{i}: list[InvertedResidual] or MobileViTBlock
    classifier: Linear | None = None  # head "classification" with num_labels > 0
    segmentation_head: DeepLabHead | None = None  # head "segmentation"

    def __getstate__(self):  # pickle, copy: without the token a team of processes gave this plan (its own, not the plan's)
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_team")}


# the config's fields a plan does not depend on: the label names and the flags of the outputs
_NOT_IN_THE_PLAN = ("id2label", "label2id", "problem_type", "output_hidden_states", "output_attentions", "return_dict")


def plan_choices(config: MobileViTV2Config) -> tuple:
    """What a plan was built from besides the weights: every field of the config but the label
    names and the output flags. A model rebuilds its plan when they change (``config.behavior``,
    ``output_stride`` or ``hidden_act`` set after the model was built)."""
    return tuple((f.name, tuple(v) if isinstance(v := getattr(config, f.name), list) else v)
                 for f in fields(config) if f.name not in _NOT_IN_THE_PLAN)


def act_scale(act) -> float:
    """The factor a convolution followed by ``act`` is scaled by at load: 1/2 for SiLU, whose
    fast form ``silu(z) = u (1 + tanh u)`` takes ``u = z / 2`` (see ``kernels.bias_act_``); 1 otherwise.
    Scaling by a power of two is exact, so the convolution then computes exactly ``z / 2``."""
    return 0.5 if act in ("swish", "silu") else 1.0


def build_plan(params: dict, config: MobileViTV2Config, dtype, head: str = "base") -> Plan:
    """Lay out a model's parameters (``model.params``) for the fast path. ``head`` "base": ``params``
    is the backbone (``conv_stem``, ``encoder``); "classification" / "segmentation": the backbone is
    ``params["mobilevitv2"]`` and the head ``params["classifier"]`` (absent when num_labels is 0) /
    ``params["segmentation_head"]``. Weights are copied once, here; nothing is copied per call."""
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    backbone = params if head == "base" else params["mobilevitv2"]
    layers = {layer.name: layer for layer in describe(config, head)}  # each conv's facts, by its name
    plan = Plan(dtype=dtype, head=head, eps=config.layer_norm_eps, patch_size=config.patch_size,
                patch_remainder=config.choices.patch_remainder, choices=plan_choices(config),
                conv_stem=_dense(backbone["conv_stem"], layers["conv_stem"], dtype))
    for spec, stage in zip(config.stages, backbone["encoder"]["layer"]):
        name = f"encoder.layer.{spec.index}"
        if spec.kind == "mobilenet":
            plan.stages.append([_inverted_residual(block, layers, f"{name}.layer.{j}", dtype)
                                for j, block in enumerate(stage["layer"])])
        else:
            plan.stages.append(_mobilevit_block(stage, layers, name, dtype))
    if head == "classification" and config.num_labels > 0 and params.get("classifier") is not None:
        classifier = params["classifier"]
        plan.classifier = Linear(_cast(classifier["weight"], dtype), _cast(classifier.get("bias"), dtype))
    if head == "segmentation":
        plan.segmentation_head = _deeplab_head(params["segmentation_head"], layers, dtype)
    return plan


def _mobilevit_block(stage: dict, layers: dict[str, Layer], name: str, dtype) -> MobileViTBlock:
    transformer = []
    for j, layer in enumerate(stage["transformer"]["layer"]):
        before, after, prefix = layer["layernorm_before"], layer["layernorm_after"], f"{name}.transformer.layer.{j}"
        transformer.append(TransformerLayer(
            qkv_proj=_pointwise(layer["attention"]["qkv_proj"], layers[f"{prefix}.attention.qkv_proj"], dtype,
                                before["weight"], before["bias"]),
            out_proj=_pointwise(layer["attention"]["out_proj"], layers[f"{prefix}.attention.out_proj"], dtype),
            conv1=_pointwise(layer["ffn"]["conv1"], layers[f"{prefix}.ffn.conv1"], dtype, after["weight"], after["bias"]),
            conv2=_pointwise(layer["ffn"]["conv2"], layers[f"{prefix}.ffn.conv2"], dtype),
        ))
    norm = stage["layernorm"]
    _, projection_bias = _conv(stage["conv_projection"])
    return MobileViTBlock(
        downsampling_layer=_inverted_residual(stage["downsampling_layer"], layers, f"{name}.downsampling_layer", dtype),
        conv_kxk=_depthwise(stage["conv_kxk"], layers[f"{name}.conv_kxk"], dtype),
        conv_1x1=_pointwise(stage["conv_1x1"], layers[f"{name}.conv_1x1"], dtype),
        transformer=transformer,
        conv_projection=_pointwise(stage["conv_projection"], layers[f"{name}.conv_projection"], dtype,
                                   norm["weight"], norm["bias"]),
        projection_bias=_cast(projection_bias, dtype),
    )


def _deeplab_head(head_params: dict, layers: dict[str, Layer], dtype) -> DeepLabHead:
    """``params["segmentation_head"]`` laid out for ``layers.deeplabv3``."""
    convs, prefix = head_params["aspp"]["convs"], "segmentation_head.aspp"
    return DeepLabHead(
        convs=[_pointwise(convs[0], layers[f"{prefix}.convs.0"], dtype)]
        + [_dense(convs[i], layers[f"{prefix}.convs.{i}"], dtype) for i in (1, 2, 3)],
        pooling=_pointwise(convs[4]["conv_1x1"], layers[f"{prefix}.convs.4.conv_1x1"], dtype),
        project=_pointwise(head_params["aspp"]["project"], layers[f"{prefix}.project"], dtype),
        classifier=_pointwise(head_params["classifier"], layers["segmentation_head.classifier"], dtype),
    )


def _conv(node) -> tuple[np.ndarray, np.ndarray | None]:
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


def _scaled(w, b, scale):
    return w * scale, (None if b is None else b * scale)


def _facts(layer: Layer) -> dict:  # what a plan's Conv keeps of its Layer
    return {"stride": layer.stride, "dilation": layer.dilation, "act": layer.activation}


def _pointwise(node, layer: Layer, dtype, scale=None, shift=None) -> Conv:
    """A 1x1 conv as ``[Cin, Cout]``. ``scale``/``shift`` ``[Cin]`` fold an affine map of the input
    in: ``conv(x * scale + shift) = x @ (scale[:, None] * W^T) + (b + shift @ W^T)``."""
    w, b = _conv(node)
    w = w.reshape(w.shape[0], -1).T  # [Cin, Cout]
    if shift is not None:
        b = (0 if b is None else b) + shift.astype(np.float64) @ w
    if scale is not None:
        w = scale.astype(np.float64)[:, None] * w
    w, b = _scaled(w, b, act_scale(layer.activation))
    return Conv(_cast(w, dtype), _cast(b, dtype), **_facts(layer))


def _depthwise(node, layer: Layer, dtype) -> Conv:  # [C, 1, k, k] -> [k, k, C]
    w, b = _scaled(*_conv(node), act_scale(layer.activation))
    return Conv(_cast(w[:, 0].transpose(1, 2, 0), dtype), _cast(b, dtype), k=w.shape[-1], **_facts(layer))


def _dense(node, layer: Layer, dtype) -> Conv:  # [Cout, Cin, k, k] -> [k*k*Cin, Cout]
    w, b = _scaled(*_conv(node), act_scale(layer.activation))
    cout, cin, k, _ = w.shape
    return Conv(_cast(w.transpose(2, 3, 1, 0).reshape(k * k * cin, cout), dtype), _cast(b, dtype), k=k, **_facts(layer))


def _inverted_residual(node, layers: dict[str, Layer], name: str, dtype) -> InvertedResidual:
    return InvertedResidual(_pointwise(node["expand_1x1"], layers[f"{name}.expand_1x1"], dtype),
                            _depthwise(node["conv_3x3"], layers[f"{name}.conv_3x3"], dtype),
                            _pointwise(node["reduce_1x1"], layers[f"{name}.reduce_1x1"], dtype))
