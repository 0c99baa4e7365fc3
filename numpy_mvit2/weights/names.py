"""Checkpoint names from other sources -> transformers' names.

The same MobileViTV2 weights are published under three naming schemes:

==============================  ===============================================================
source                          example
==============================  ===============================================================
transformers (``apple/...``)    ``mobilevitv2.encoder.layer.3.transformer.layer.1.attention.qkv_proj.convolution.weight``
timm (``timm/mobilevitv2_*``)   ``stages.3.1.transformer.1.attn.qkv_proj.weight``
ml-cvnets / CoreNet (``.pt``)   ``layer_4.1.global_rep.1.pre_norm_attn.1.qkv_proj.block.conv.weight``
==============================  ===============================================================

Each mapping below renames one tensor at a time, block by block, and never changes a tensor's
values or shape: the three models compute the same function with the same parameters (except for
feature maps the patch size does not divide; see ``MobileViTV2Config.patch_remainder``). The
ml-cvnets mapping follows transformers' own conversion script
(``convert_mlcvnets_to_pytorch.py``): the outer ``encoder.`` of segmentation checkpoints and every
``.block.`` level are dropped, ``conv``/``norm`` become ``convolution``/``normalization``, and the
auxiliary segmentation head (``seg_head.aux_head.*``, used only in training) is left out.
"""

from __future__ import annotations

import re

from ..errors import CheckpointError, cut
from .shapes import BASE_PREFIX

SOURCES = ("transformers", "timm", "cvnets")
# the behavior (``MobileViTV2Config.behavior``) a checkpoint computes by default: its own framework's
SOURCE_BEHAVIORS = {"transformers": "transformers", "timm": "timm", "cvnets": "ml-cvnets"}

# --------------------------------------------------------------------------------------------
# Which scheme a state dict uses
# --------------------------------------------------------------------------------------------


def detect_source(names) -> str:
    """"transformers", "timm" or "cvnets", from the tensor names alone."""
    names = list(names)
    if any(n.startswith(("stem.conv.", "stages.", "head.fc.")) for n in names):
        return "timm"
    if any(re.match(r"(encoder\.)?(conv_1|layer_[1-5])\.", n) or n.startswith(("classifier.1.", "seg_head.")) for n in names):
        return "cvnets"
    return "transformers"


def to_transformers_names(state: dict, source: str | None = None) -> tuple[dict, str]:
    """``state`` renamed to transformers' names, and the source it was detected as (or given)."""
    if state and all(k.startswith("module.") for k in state):  # saved from a DistributedDataParallel wrapper
        state = {k[len("module."):]: v for k, v in state.items()}
    source = "cvnets" if source == "ml-cvnets" else (source or detect_source(state))
    if source == "transformers":
        return dict(state), source
    rename = {"timm": timm_name, "cvnets": cvnets_name}.get(source)
    if rename is None:
        raise ValueError(f"unknown checkpoint source {source!r}; expected one of {SOURCES}")
    out, unknown = {}, []
    for name, value in state.items():
        if name.endswith("num_batches_tracked") or (source == "cvnets" and name.startswith("seg_head.aux_head.")):
            continue
        new = rename(name)
        if new is None:
            unknown.append(name)
        elif new in out:
            raise CheckpointError(f"{source} checkpoint: two tensors map to {cut(new)} (the second is {cut(name)})")
        else:
            out[new] = value
    if unknown:
        raise CheckpointError(f"{len(unknown)} tensor name(s) of this {source} checkpoint have no MobileViTV2 "
                              f"counterpart: {', '.join(map(cut, unknown[:10]))}{' ...' if len(unknown) > 10 else ''}")
    return out, source


# --------------------------------------------------------------------------------------------
# timm
# --------------------------------------------------------------------------------------------

# within a block: timm's module names -> transformers' (conv+bn layers gain .convolution/.normalization)
_TIMM_CONV_BN = {"conv1_1x1": "expand_1x1", "conv2_kxk": "conv_3x3", "conv3_1x1": "reduce_1x1",
                 "conv_kxk": "conv_kxk", "conv_proj": "conv_projection"}
_TIMM_TRANSFORMER = {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.qkv_proj": "attention.qkv_proj.convolution",
                     "attn.out_proj": "attention.out_proj.convolution", "mlp.fc1": "ffn.conv1.convolution",
                     "mlp.fc2": "ffn.conv2.convolution"}
_CONV_BN_PARAM = {"conv.weight": "convolution.weight", "bn.weight": "normalization.weight", "bn.bias": "normalization.bias",
                  "bn.running_mean": "normalization.running_mean", "bn.running_var": "normalization.running_var"}


def _conv_bn(layer: str, rest: str) -> str | None:
    param = _CONV_BN_PARAM.get(rest)
    return None if param is None else f"{layer}.{param}"


def timm_name(name: str) -> str | None:
    """One timm name -> transformers' name (None if it is not part of MobileViTV2).

    timm's ``stages.i`` is transformers' ``encoder.layer.i``; in stages 0-1 block ``j`` is
    ``layer.j``; in stages 2-4 block 0 is the ``downsampling_layer`` and block 1 the MobileViT block.
    """
    if name.startswith("stem."):
        new = _conv_bn("conv_stem", name[len("stem."):])
        return None if new is None else BASE_PREFIX + new
    if name.startswith("head.fc."):
        return "classifier." + name[len("head.fc."):] if name[len("head.fc."):] in ("weight", "bias") else None
    m = re.fullmatch(r"stages\.(\d)\.(\d+)\.(.+)", name)
    if not m:
        return None
    stage, block, rest = int(m[1]), int(m[2]), m[3]
    prefix = f"{BASE_PREFIX}encoder.layer.{stage}."
    if stage <= 1 or block == 0:
        layer, _, param = rest.partition(".")
        if layer not in ("conv1_1x1", "conv2_kxk", "conv3_1x1"):
            return None
        where = f"layer.{block}." if stage <= 1 else "downsampling_layer."
        new = _conv_bn(_TIMM_CONV_BN[layer], param)
        return None if new is None else prefix + where + new
    if block != 1:
        return None
    if rest == "conv_1x1.weight":
        return prefix + "conv_1x1.convolution.weight"
    if rest in ("norm.weight", "norm.bias"):
        return prefix + "layernorm." + rest.split(".")[1]
    layer, _, param = rest.partition(".")
    if layer in ("conv_kxk", "conv_proj"):
        new = _conv_bn(_TIMM_CONV_BN[layer], param)
        return None if new is None else prefix + new
    m = re.fullmatch(r"transformer\.(\d+)\.(norm1|norm2|attn\.qkv_proj|attn\.out_proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)", rest)
    if not m:
        return None
    return f"{prefix}transformer.layer.{m[1]}.{_TIMM_TRANSFORMER[m[2]]}.{m[3]}"


# --------------------------------------------------------------------------------------------
# ml-cvnets / CoreNet
# --------------------------------------------------------------------------------------------

_CVNETS_IR = {"exp_1x1": "expand_1x1", "conv_3x3": "conv_3x3", "red_1x1": "reduce_1x1"}
_CVNETS_PARAM = {"conv.weight": "convolution.weight", "conv.bias": "convolution.bias",
                 "norm.weight": "normalization.weight", "norm.bias": "normalization.bias",
                 "norm.running_mean": "normalization.running_mean", "norm.running_var": "normalization.running_var"}


def _cvnets_layer(rest: str) -> str | None:
    """``[block.]conv.weight`` / ``[block.]norm.bias`` ... (one ConvLayer) -> transformers' tail."""
    return _CVNETS_PARAM.get(rest.replace("block.", ""))


def _cvnets_conv(target: str, rest: str) -> str | None:
    """One ml-cvnets ConvLayer's tensor (``rest``) under transformers' layer name ``target``."""
    tail = _cvnets_layer(rest)
    return None if tail is None else f"{target}.{tail}"


def cvnets_name(name: str) -> str | None:
    """One ml-cvnets / CoreNet name -> transformers' name (None if it is not part of MobileViTV2).

    ``conv_1`` is the stem; ``layer_1`` .. ``layer_5`` are ``encoder.layer.0`` .. ``4``; in a
    MobileViT block (``layer_k.1``) ``local_rep.0/1`` are the k x k and 1 x 1 convs, ``global_rep.j``
    the transformer layers followed by the final group norm at the last index, each transformer
    layer being ``pre_norm_attn`` (norm, attention) and ``pre_norm_ffn`` (norm, conv1, act/dropout,
    conv2). Segmentation checkpoints hold the backbone under ``encoder.`` and the head under
    ``seg_head.``, with the ASPP inside ``aspp.aspp_layer`` and its pooling branch in ``aspp_pool``.
    """
    if name.startswith("encoder."):
        name = name[len("encoder."):]
    if name.startswith("conv_1."):
        return _cvnets_conv(f"{BASE_PREFIX}conv_stem", name[len("conv_1."):])
    if name in ("classifier.1.weight", "classifier.1.bias"):
        return "classifier." + name.rsplit(".", 1)[1]
    if name.startswith("seg_head."):
        return _cvnets_seg_head(name[len("seg_head."):])
    m = re.fullmatch(r"layer_([1-5])\.(\d+)\.(.+)", name)
    if not m:
        return None
    stage, block, rest = int(m[1]) - 1, int(m[2]), m[3]
    prefix = f"{BASE_PREFIX}encoder.layer.{stage}."
    if stage <= 1 or block == 0:
        m2 = re.fullmatch(r"block\.(exp_1x1|conv_3x3|red_1x1)\.(.+)", rest)
        where = f"layer.{block}." if stage <= 1 else "downsampling_layer."
        return _cvnets_conv(f"{prefix}{where}{_CVNETS_IR[m2[1]]}", m2[2]) if m2 else None
    if block != 1:
        return None
    m2 = re.fullmatch(r"local_rep\.([01])\.(.+)", rest)
    if m2:
        return _cvnets_conv(f"{prefix}{('conv_kxk', 'conv_1x1')[int(m2[1])]}", m2[2])
    if rest.startswith("conv_proj."):
        return _cvnets_conv(f"{prefix}conv_projection", rest[len("conv_proj."):])
    m2 = re.fullmatch(r"global_rep\.(\d+)\.(weight|bias)", rest)
    if m2:  # the group norm closing global_rep (its index is the number of transformer layers)
        return f"{prefix}layernorm.{m2[2]}"
    m2 = re.fullmatch(r"global_rep\.(\d+)\.(pre_norm_attn|pre_norm_ffn)\.(\d)\.(.+)", rest)
    if not m2:
        return None
    layer, part, index, tail = m2[1], m2[2], int(m2[3]), m2[4]
    base = f"{prefix}transformer.layer.{layer}."
    if index == 0 and tail in ("weight", "bias"):
        return base + ("layernorm_before." if part == "pre_norm_attn" else "layernorm_after.") + tail
    if part == "pre_norm_attn" and index == 1:
        m3 = re.fullmatch(r"(qkv_proj|out_proj)\.(.+)", tail)
        return _cvnets_conv(f"{base}attention.{m3[1]}", m3[2]) if m3 else None
    if part == "pre_norm_ffn" and index in (1, 3):
        return _cvnets_conv(f"{base}ffn.{'conv1' if index == 1 else 'conv2'}", tail)
    return None


def _cvnets_seg_head(rest: str) -> str | None:
    m = re.fullmatch(r"aspp\.aspp_layer\.convs\.4\.aspp_pool\.conv_1x1\.(.+)", rest)
    if m:
        return _cvnets_conv("segmentation_head.aspp.convs.4.conv_1x1", m[1])
    m = re.fullmatch(r"aspp\.aspp_layer\.(convs\.[0-3]|project)\.(.+)", rest)
    if m:
        return _cvnets_conv(f"segmentation_head.aspp.{m[1]}", m[2])
    if rest.startswith("classifier."):
        return _cvnets_conv("segmentation_head.classifier", rest[len("classifier."):])
    return None
