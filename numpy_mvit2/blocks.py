"""MobileViTV2's building blocks as pure functions over parameter dicts.

Parameters are nested dicts whose keys are transformers' checkpoint names split at the dots
(``encoder.layer.2.transformer.layer.0.attention.qkv_proj.convolution.weight`` is
``params["encoder"]["layer"][2]["transformer"]["layer"][0]["attention"]["qkv_proj"]["convolution"]["weight"]``),
and each block takes its sub-dicts as keyword arguments (``inverted_residual(x, **params)``), so
the argument names below are the checkpoint's own names. Hyper-parameters that the weights do not
carry (strides, dilations, activation) come from ``MobileViTV2Config`` and its ``StageSpec``.

Read top-down, from the three whole models at the end of the file: ``backbone`` (pixels -> the
last stage's feature map, each stage's recorded on the way), ``image_classification`` (pixels -> class logits) and
``semantic_segmentation`` (pixels -> per-pixel class logits), each composing the blocks above it.
The layers with weights, with their channels, kernels, strides and dilations, are listed once in
``numpy_mvit2.architecture``; the functions here read the same ``config.stages``.

Intermediate values are observed through one optional hook, ``record(name, array)``, called at
every named output, in forward order, under transformers' module names (backbone prefix left out):
``conv_stem``; ``encoder.layer.{i}.layer.{j}`` (inverted residuals); ``encoder.layer.{i}.
downsampling_layer``, ``.conv_kxk``, ``.conv_1x1``, ``.transformer.layer.{j}.attention.scores``
(the context scores), ``.attention``, ``.ffn``, ``.transformer.layer.{j}`` (the layer's output),
``.layernorm``, ``.fold`` (the input of ``conv_projection``), ``.conv_projection``; each stage's
output ``encoder.layer.{i}``; ``pooler``, ``classifier``; ``segmentation_head.aspp``,
``segmentation_head.classifier``. The models' ``output_hidden_states`` and ``output_attentions``
and ``numpy_mvit2.crosscheck`` read them there, so nothing else repeats the forward pass (the fast
path's twins record the subset those need: the stage outputs, the context scores, ``pooler``).

Shapes: ``B`` batch, ``C`` channels, ``H x W`` feature map, ``d`` attention width,
``P = patch_size**2`` pixels per patch, ``N`` patches.
"""

from __future__ import annotations

import numpy as np

from .architecture import StageSpec
from .autodiff import primitive
from .config import MobileViTV2Config
from .ops import (
    ACTIVATIONS,
    batch_norm,
    conv2d,
    fold_patches,
    global_avg_pool,
    group_norm,
    interpolate_bilinear,
    linear,
    separable_attention,
    unfold_patches,
)


def ignore(name, array):
    """The default ``record``: keeps nothing."""


@primitive
def dropout(x, p, channels=False):  # [B, C, ...] -> [B, C, ...]
    """``nn.Dropout`` (``nn.Dropout2d`` with ``channels``: whole channels at once) with probability
    ``p``: the identity, as in ``model.eval()``. While training (``numpy_mvit2.training``), the
    tape draws the mask (``ops.dropout``) instead."""
    return x


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


def linear_self_attention(x, qkv_proj, out_proj, *, attn_dropout=0.0):  # [B, d, P, N] -> [B, d, P, N], [B, 1, P, N]
    """Separable self-attention: one 1x1 conv gives the query (1 channel), keys and values (d each);
    ``ops.separable_attention`` mixes them in O(N) (dropping scores with ``attn_dropout`` while
    training); a 1x1 conv projects the result. Returns the output and the context scores."""
    qkv = conv_layer(x, **qkv_proj)
    d = x.shape[1]
    query, key, value = qkv[:, :1], qkv[:, 1 : 1 + d], qkv[:, 1 + d :]
    out, scores = separable_attention(query, key, value, dropout=attn_dropout)
    return conv_layer(out, **out_proj), scores


def feed_forward(x, conv1, conv2, *, act, ffn_dropout=0.0):  # [B, d, P, N] -> [B, d, P, N]
    """Position-wise feed-forward network as two 1x1 convs: d -> ffn_dim (+act) -> d, each
    followed by dropout (``ffn_dropout``, while training)."""
    x = dropout(conv_layer(x, **conv1, activation=act), ffn_dropout)
    return dropout(conv_layer(x, **conv2), ffn_dropout)


def transformer_layer(x, layernorm_before, attention, layernorm_after, ffn, *, act, eps, attn_dropout=0.0, ffn_dropout=0.0,
                      name="", record=ignore):  # [B, d, P, N] -> [B, d, P, N]
    """Pre-norm transformer layer: ``x + attention(norm(x))``, then ``x + ffn(norm(x))``, the norms
    being group norms with one group. ``name``: the layer's checkpoint prefix, under which its
    context scores ([B, 1, P, N]), its two branches and its output are recorded. The dropouts act
    only while training."""
    attn_out, scores = linear_self_attention(group_norm(x, 1, **layernorm_before, eps=eps), **attention, attn_dropout=attn_dropout)
    record(f"{name}.attention.scores", scores)
    record(f"{name}.attention", attn_out)
    x = x + attn_out
    ffn_out = feed_forward(group_norm(x, 1, **layernorm_after, eps=eps), **ffn, act=act, ffn_dropout=ffn_dropout)
    record(f"{name}.ffn", ffn_out)
    x = x + ffn_out
    record(name, x)
    return x


def resize_to_patch_multiple(x, patch_size):  # [B, C, H, W] -> [B, C, ceil(H/p)*p, ceil(W/p)*p]
    """timm's and ml-cvnets' way with a map the patch size does not divide: resize it (bilinear,
    ``align_corners=True``) up to the next multiple of ``patch_size``. A no-op when it divides."""
    height, width = x.shape[-2:]
    size = (-(-height // patch_size) * patch_size, -(-width // patch_size) * patch_size)
    return x if size == (height, width) else interpolate_bilinear(x, size, align_corners=True)


def mobilevit_layer(x, downsampling_layer, conv_kxk, conv_1x1, transformer, layernorm, conv_projection, *, spec: StageSpec, config: MobileViTV2Config, name="", record=ignore):  # [B, Cin, H, W] -> [B, Cout, H/s, W/s]
    """The MobileViTV2 block (``MobileViTV2Layer``): downsample with an inverted residual; local
    representation with a depthwise k x k conv (+BN+act) and a 1x1 projection to d channels;
    global representation with transformer layers over unfolded patches ([B, d, P, N]); a group
    norm; fold the patches back to a map; a 1x1 conv (+BN) back to Cout channels.

    Where the frameworks differ (``config.choices``): with ``patch_remainder == "resize"`` (timm,
    ml-cvnets) the downsampled map is first resized up to a multiple of the patch size, while
    transformers' unfold drops the remainder and fold leaves it zero; the local conv is dilated by
    ``spec.local_dilation`` (timm, ml-cvnets: the stage's dilation; transformers: 1)."""
    act, eps = config.hidden_act, config.layer_norm_eps
    x = inverted_residual(x, **downsampling_layer, stride=spec.stride, dilation=spec.downsample_dilation, act=act)
    record(f"{name}.downsampling_layer", x)
    if config.choices.patch_remainder == "resize":
        x = resize_to_patch_multiple(x, config.patch_size)
    x = conv_layer(x, **conv_kxk, dilation=spec.local_dilation, activation=act)
    record(f"{name}.conv_kxk", x)
    x = conv_layer(x, **conv_1x1)
    record(f"{name}.conv_1x1", x)
    height, width = x.shape[-2:]
    patches = unfold_patches(x, config.patch_size)
    for j, layer in enumerate(transformer["layer"]):
        patches = transformer_layer(patches, **layer, act=act, eps=eps, attn_dropout=config.attn_dropout,
                                    ffn_dropout=config.ffn_dropout, name=f"{name}.transformer.layer.{j}", record=record)
    patches = group_norm(patches, 1, **layernorm, eps=eps)
    record(f"{name}.layernorm", patches)
    x = fold_patches(patches, (height, width), config.patch_size)
    record(f"{name}.fold", x)
    x = conv_layer(x, **conv_projection)
    record(f"{name}.conv_projection", x)
    return x


def mobilenet_layer(x, layer, *, spec: StageSpec, config: MobileViTV2Config, name="", record=ignore):  # [B, Cin, H, W] -> [B, Cout, H/s, W/s]
    """A stack of inverted residuals; only the first one strides."""
    for j, block in enumerate(layer):
        x = inverted_residual(x, **block, stride=spec.stride if j == 0 else 1, act=config.hidden_act)
        record(f"{name}.layer.{j}", x)
    return x


def atrous_pyramid(x, convs, project, *, config: MobileViTV2Config):  # [B, C, H, W] -> [B, A, H, W]
    """Atrous spatial pyramid pooling: a 1x1 conv, three 3x3 convs dilated by ``atrous_rates``, and
    global average pooling -> 1x1 conv -> bilinear upsampling back to H x W (all +BN+ReLU),
    concatenated (5A channels) and projected to A = ``aspp_out_channels`` (+BN+ReLU), then dropout
    (``aspp_dropout_prob``, while training)."""
    branches = [conv_layer(x, **convs[0], activation="relu")]
    for conv, rate in zip(convs[1:4], config.atrous_rates):
        branches.append(conv_layer(x, **conv, dilation=rate, activation="relu"))
    pooled = global_avg_pool(x)[:, :, None, None]
    pooled = conv_layer(pooled, **convs[4]["conv_1x1"], activation="relu")
    branches.append(interpolate_bilinear(pooled, x.shape[-2:]))
    projected = conv_layer(np.concatenate(branches, axis=1), **project, activation="relu")
    return dropout(projected, config.aspp_dropout_prob)


def deeplabv3(x, aspp, classifier, *, config: MobileViTV2Config, record=ignore):  # [B, C, H, W] -> [B, num_labels, H, W]
    """DeepLabV3 head on the last feature map: ASPP, then a 1x1 conv (with bias) to class logits,
    whole channels of the ASPP's output dropped in between while training (``classifier_dropout_prob``)."""
    x = atrous_pyramid(x, **aspp, config=config)
    record("segmentation_head.aspp", x)
    logits = conv_layer(dropout(x, config.classifier_dropout_prob, channels=True), **classifier)
    record("segmentation_head.classifier", logits)
    return logits


# --------------------------------------------------------------------------------------------
# The three models, pixels in
# --------------------------------------------------------------------------------------------


def backbone(pixel_values, conv_stem, encoder, *, config: MobileViTV2Config, record=ignore):  # [B, C, H, W] -> [B, C5, H/os, W/os]
    """``MobileViTV2Model``: a stride-2 3x3 conv stem (+BN+act), then the five stages, two of
    inverted residuals and three of MobileViT blocks; returns the last stage's output
    (``last_hidden_state``) and records each stage's output as ``encoder.layer.{i}``."""
    x = conv_layer(pixel_values, **conv_stem, stride=2, activation=config.hidden_act)
    record("conv_stem", x)
    for spec, stage in zip(config.stages, encoder["layer"]):
        name = f"encoder.layer.{spec.index}"
        run_stage = mobilenet_layer if spec.kind == "mobilenet" else mobilevit_layer
        x = run_stage(x, **stage, spec=spec, config=config, name=name, record=record)
        record(name, x)
    return x


def image_classification(pixel_values, mobilevitv2, classifier=None, *, config: MobileViTV2Config, record=ignore):  # [B, C, H, W] -> [B, num_labels]
    """``MobileViTV2ForImageClassification``: the backbone, then ``classification_head``."""
    features = backbone(pixel_values, **mobilevitv2, config=config, record=record)
    return classification_head(features, classifier, config=config, record=record)


def classification_head(features, classifier=None, *, config: MobileViTV2Config, record=ignore):  # [B, C5, h, w] -> [B, num_labels]
    """Global average pooling of the last stage (``pooler``, [B, C5]), then a linear classifier
    (none when ``num_labels`` is 0: the pooled features are the output)."""
    pooled = global_avg_pool(features)
    record("pooler", pooled)
    if classifier is None:
        record("classifier", pooled)  # transformers' classifier is then an nn.Identity
        return pooled
    logits = linear(pooled, **classifier)
    record("classifier", logits)
    return logits


def semantic_segmentation(pixel_values, mobilevitv2, segmentation_head, *, config: MobileViTV2Config, record=ignore):  # [B, C, H, W] -> [B, num_labels, H/os, W/os]
    """``MobileViTV2ForSemanticSegmentation``: the backbone (its last stages dilated instead of
    strided for ``output_stride`` 16 or 8), then the DeepLabV3 head on its last stage."""
    features = backbone(pixel_values, **mobilevitv2, config=config, record=record)
    return deeplabv3(features, **segmentation_head, config=config, record=record)
