"""MobileViTV2's building blocks as pure functions over parameter dicts.

Parameters are nested dicts whose keys are transformers' checkpoint names split at the dots
(``encoder.layer.2.transformer.layer.0.attention.qkv_proj.convolution.weight`` is
``params["encoder"]["layer"][2]["transformer"]["layer"][0]["attention"]["qkv_proj"]["convolution"]["weight"]``),
and each block takes its sub-dicts as keyword arguments (``inverted_residual(x, **params)``), so
the argument names below are the checkpoint's own names. Hyper-parameters that the weights do not
carry (strides, dilations, activation) come from ``MobileViTV2Config`` and its ``StageSpec``.

Shapes: ``B`` batch, ``C`` channels, ``H x W`` feature map, ``d`` attention width,
``P = patch_size**2`` pixels per patch, ``N`` patches.
"""

from __future__ import annotations

import numpy as np

from .config import MobileViTV2Config, StageSpec
from .ops import (
    ACTIVATIONS,
    batch_norm,
    conv2d,
    fold_patches,
    global_avg_pool,
    group_norm,
    interpolate_bilinear,
    separable_attention,
    unfold_patches,
)


def conv_layer(x, convolution, normalization=None, *, stride=1, dilation=1, activation=None):  # [B, Cin, H, W] -> [B, Cout, Ho, Wo]
    """``MobileViTV2ConvLayer``: conv (padding ``(k-1)/2 * dilation``, groups read off the weight's
    shape) -> batch norm (absent once folded into the conv at load) -> activation (a name of
    ``ops.ACTIVATIONS`` or None)."""
    weight = convolution["weight"]
    kernel = weight.shape[-1]
    groups = x.shape[1] // weight.shape[1]
    x = conv2d(x, weight, convolution.get("bias"), stride=stride, padding=(kernel - 1) // 2 * dilation, dilation=dilation, groups=groups)
    if normalization is not None:
        x = batch_norm(x, **normalization)
    if activation is not None:
        x = ACTIVATIONS[activation](x)
    return x


def inverted_residual(x, expand_1x1, conv_3x3, reduce_1x1, *, stride, act, dilation=1):  # [B, Cin, H, W] -> [B, Cout, H/s, W/s]
    """MobileNetV2's inverted residual: 1x1 expand (+act) -> 3x3 depthwise, strided or dilated (+act)
    -> 1x1 reduce (linear), plus the input when the shape is unchanged."""
    y = conv_layer(x, **expand_1x1, activation=act)
    y = conv_layer(y, **conv_3x3, stride=stride, dilation=dilation, activation=act)
    y = conv_layer(y, **reduce_1x1)
    return x + y if y.shape == x.shape and stride == 1 else y


def linear_self_attention(x, qkv_proj, out_proj):  # [B, d, P, N] -> [B, d, P, N], [B, 1, P, N]
    """Separable self-attention: one 1x1 conv gives the query (1 channel), keys and values (d each);
    ``ops.separable_attention`` mixes them in O(N); a 1x1 conv projects the result. Returns the
    output and the context scores."""
    qkv = conv_layer(x, **qkv_proj)
    d = x.shape[1]
    query, key, value = qkv[:, :1], qkv[:, 1 : 1 + d], qkv[:, 1 + d :]
    out, scores = separable_attention(query, key, value)
    return conv_layer(out, **out_proj), scores


def feed_forward(x, conv1, conv2, *, act):  # [B, d, P, N] -> [B, d, P, N]
    """Position-wise feed-forward network as two 1x1 convs: d -> ffn_dim (+act) -> d."""
    return conv_layer(conv_layer(x, **conv1, activation=act), **conv2)


def transformer_layer(x, layernorm_before, attention, layernorm_after, ffn, *, act, eps, attentions=None):  # [B, d, P, N] -> [B, d, P, N]
    """Pre-norm transformer layer: ``x + attention(norm(x))``, then ``x + ffn(norm(x))``, the norms
    being group norms with one group. If ``attentions`` is a list, the layer's context scores
    ([B, 1, P, N]) are appended to it."""
    attn_out, scores = linear_self_attention(group_norm(x, 1, **layernorm_before, eps=eps), **attention)
    if attentions is not None:
        attentions.append(scores)
    x = x + attn_out
    return x + feed_forward(group_norm(x, 1, **layernorm_after, eps=eps), **ffn, act=act)


def resize_to_patch_multiple(x, patch_size):  # [B, C, H, W] -> [B, C, ceil(H/p)*p, ceil(W/p)*p]
    """timm's and ml-cvnets' way with a map the patch size does not divide: resize it (bilinear,
    ``align_corners=True``) up to the next multiple of ``patch_size``. A no-op when it divides."""
    height, width = x.shape[-2:]
    size = (-(-height // patch_size) * patch_size, -(-width // patch_size) * patch_size)
    return x if size == (height, width) else interpolate_bilinear(x, size, align_corners=True)


def mobilevit_layer(x, downsampling_layer, conv_kxk, conv_1x1, transformer, layernorm, conv_projection, *, spec: StageSpec, config: MobileViTV2Config, attentions=None):  # [B, Cin, H, W] -> [B, Cout, H/s, W/s]
    """The MobileViTV2 block (``MobileViTV2Layer``): downsample with an inverted residual; local
    representation with a depthwise k x k conv (+BN+act) and a 1x1 projection to d channels;
    global representation with transformer layers over unfolded patches ([B, d, P, N]); a group
    norm; fold the patches back to a map; a 1x1 conv (+BN) back to Cout channels.

    Where the frameworks differ (``config.choices``): with ``patch_remainder == "resize"`` (timm,
    ml-cvnets) the downsampled map is first resized up to a multiple of the patch size, while
    transformers' unfold drops the remainder and fold leaves it zero; the local conv is dilated by
    ``spec.local_dilation`` (timm, ml-cvnets: the stage's dilation; transformers: 1).
    ``attentions``: a list to collect each transformer layer's context scores in, or None."""
    act = config.hidden_act
    x = inverted_residual(x, **downsampling_layer, stride=spec.stride, dilation=spec.downsample_dilation, act=act)
    if config.choices.patch_remainder == "resize":
        x = resize_to_patch_multiple(x, config.patch_size)
    x = conv_layer(x, **conv_kxk, dilation=spec.local_dilation, activation=act)
    x = conv_layer(x, **conv_1x1)
    height, width = x.shape[-2:]
    patches = unfold_patches(x, config.patch_size)
    for layer in transformer["layer"]:
        patches = transformer_layer(patches, **layer, act=act, eps=config.layer_norm_eps, attentions=attentions)
    patches = group_norm(patches, 1, **layernorm, eps=config.layer_norm_eps)
    x = fold_patches(patches, (height, width), config.patch_size)
    return conv_layer(x, **conv_projection)


def mobilenet_layer(x, layer, *, spec: StageSpec, config: MobileViTV2Config):  # [B, Cin, H, W] -> [B, Cout, H/s, W/s]
    """A stack of inverted residuals; only the first one strides."""
    for i, block in enumerate(layer):
        x = inverted_residual(x, **block, stride=spec.stride if i == 0 else 1, act=config.hidden_act)
    return x


def run_encoder(x, layer, *, config: MobileViTV2Config, attentions=None):  # [B, C0, H/2, W/2] -> list of 5 x [B, Ci, Hi, Wi]
    """The five stages in order; returns every stage's output (the last is ``last_hidden_state``).
    If ``attentions`` is a list, every transformer layer of stages 3 to 5 appends its context
    scores ([B, 1, P, N]) to it, in order."""
    hidden_states = []
    for spec, stage in zip(config.stages, layer):
        if spec.kind == "mobilenet":
            x = mobilenet_layer(x, **stage, spec=spec, config=config)
        else:
            x = mobilevit_layer(x, **stage, spec=spec, config=config, attentions=attentions)
        hidden_states.append(x)
    return hidden_states


def backbone(pixel_values, conv_stem, encoder, *, config: MobileViTV2Config, attentions=None):  # [B, C, H, W] -> list of 5 x [B, Ci, Hi, Wi]
    """``MobileViTV2Model`` without pooling: a stride-2 3x3 conv stem (+BN+act), then the encoder.
    ``attentions``: None, or a list that receives each transformer layer's context scores."""
    x = conv_layer(pixel_values, **conv_stem, stride=2, activation=config.hidden_act)
    return run_encoder(x, **encoder, config=config, attentions=attentions)


def atrous_pyramid(x, convs, project, *, config: MobileViTV2Config):  # [B, C, H, W] -> [B, A, H, W]
    """Atrous spatial pyramid pooling: a 1x1 conv, three 3x3 convs dilated by ``atrous_rates``, and
    global average pooling -> 1x1 conv -> bilinear upsampling back to H x W (all +BN+ReLU),
    concatenated (5A channels) and projected to A = ``aspp_out_channels`` (+BN+ReLU)."""
    branches = [conv_layer(x, **convs[0], activation="relu")]
    for conv, rate in zip(convs[1:4], config.atrous_rates):
        branches.append(conv_layer(x, **conv, dilation=rate, activation="relu"))
    pooled = global_avg_pool(x)[:, :, None, None]
    pooled = conv_layer(pooled, **convs[4]["conv_1x1"], activation="relu")
    branches.append(interpolate_bilinear(pooled, x.shape[-2:]))
    return conv_layer(np.concatenate(branches, axis=1), **project, activation="relu")


def deeplabv3(x, aspp, classifier, *, config: MobileViTV2Config):  # [B, C, H, W] -> [B, num_labels, H, W]
    """DeepLabV3 head on the last feature map: ASPP, then a 1x1 conv (with bias) to class logits."""
    return conv_layer(atrous_pyramid(x, **aspp, config=config), **classifier)
