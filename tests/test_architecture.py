"""``numpy_mvit2.architecture``: the one description of the network, held to transformers' modules
(every layer's kernel, stride, dilation, groups, bias, norm, activation and output size, under
every behavior) and to our own forward pass (every recorded output has the size it gives)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import quick, require
from reference import make_reference

from numpy_mvit2 import MobileViTV2Config, MobileViTV2ForImageClassification, MobileViTV2ForSemanticSegmentation
from numpy_mvit2.architecture import describe
from numpy_mvit2.crosscheck import apply_behavior, layer_names, trace
from numpy_mvit2.weights.shapes import expected_shapes

torch = require("torch")

CASES = [  # (head, config, input size): odd sizes, dilated stages, each behavior
    ("classification", {"width_multiplier": 0.5, "num_labels": 7}, (97, 130)),
    ("segmentation", {"width_multiplier": 0.75, "output_stride": 8, "num_labels": 4, "behavior": "timm"}, (70, 90)),
    ("segmentation", {"width_multiplier": 0.5, "output_stride": 16, "num_labels": 3, "behavior": "ml-cvnets",
                      "conv_kernel_size": 5}, (75, 61)),
    ("base", {"width_multiplier": 0.5, "n_attn_blocks": [1, 2, 1], "patch_size": 3}, (67, 67)),
]
IDS = [f"{c[0]}-{c[1].get('behavior', 'transformers')}-{c[2][0]}x{c[2][1]}" for c in CASES]

ACTIVATIONS = {"swish": torch.nn.SiLU, "silu": torch.nn.SiLU, "relu": torch.nn.ReLU}


def torch_module_name(layer, head):
    return layer.name if head == "base" or not layer.in_backbone else "mobilevitv2." + layer.name


@pytest.mark.parametrize(("head", "settings", "size"), quick(CASES, 2), ids=IDS)
def test_every_layer_is_transformers_module(head, settings, size):
    """Each described layer is the module of that name in transformers' model (with the
    behavior's changes applied): same kind, channels, kernel, stride, dilation, padding, groups,
    bias, batch norm and activation; and its output, for one image of ``size``, has the size the
    description gives."""
    config = MobileViTV2Config(**settings)
    reference = apply_behavior(make_reference(config, head), config=config)
    modules = dict(reference.named_modules())
    layers = describe(config, head, *size)
    outputs = {}
    handles = [modules[torch_module_name(layer, head)].register_forward_hook(
        lambda module, inputs, output, name=layer.name: outputs.__setitem__(name, tuple(output.shape[1:])))
        for layer in layers]
    with torch.no_grad():
        reference(torch.zeros(1, config.num_channels, *size))
    for h in handles:
        h.remove()
    for layer in layers:
        module = modules[torch_module_name(layer, head)]
        assert outputs[layer.name] == layer.output_shape, layer.name
        if layer.kind == "group_norm":
            assert isinstance(module, torch.nn.GroupNorm) and module.num_groups == 1
            assert module.num_channels == layer.in_channels == layer.out_channels
            continue
        if layer.kind == "linear":
            assert isinstance(module, torch.nn.Linear) and (module.in_features, module.out_features) == (
                layer.in_channels, layer.out_channels)
            continue
        conv = module.convolution
        assert (conv.in_channels, conv.out_channels, conv.groups) == (layer.in_channels, layer.out_channels, layer.groups)
        assert conv.kernel_size == (layer.kernel_size,) * 2, layer.name
        assert conv.stride == (layer.stride,) * 2, layer.name
        assert conv.dilation == (layer.dilation,) * 2, layer.name
        assert conv.padding == (layer.padding,) * 2, layer.name
        assert (conv.bias is not None) == layer.bias, layer.name
        assert isinstance(module.normalization, torch.nn.BatchNorm2d) == layer.norm, layer.name
        activation = getattr(module, "activation", None)
        if layer.activation is None:
            assert activation is None, layer.name
        else:
            assert isinstance(activation, ACTIVATIONS[layer.activation]), layer.name


@pytest.mark.parametrize(("head", "settings", "size"), quick(CASES, 2), ids=IDS)
def test_the_checkpoint_is_the_layers_tensors(head, settings, size):
    """The tensors a checkpoint must hold are the described layers' tensors, in forward order,
    and exactly transformers' state dict (BN's num_batches_tracked aside)."""
    config = MobileViTV2Config(**settings)
    state = {k: tuple(v.shape) for k, v in make_reference(config, head).state_dict().items()
             if not k.endswith("num_batches_tracked")}
    assert list(expected_shapes(config, head).items()) == list(state.items())  # the same order too


MODELS = {"classification": MobileViTV2ForImageClassification, "segmentation": MobileViTV2ForSemanticSegmentation}


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize(("head", "settings", "size"), quick(CASES[:3], 2), ids=IDS[:3])
def test_recorded_outputs_have_the_described_sizes(head, settings, size, fast):
    """Every output the forward pass records under a layer's name (or a unit the layer ends)
    has the layer's size; the stage outputs (hidden states) have the last layer's of their stage;
    the readable trace holds every compared name."""
    config = MobileViTV2Config(**settings)
    model = MODELS[head](config, seed=1, fast=fast)
    x = np.random.default_rng(0).uniform(0, 1, (2, config.num_channels, *size)).astype(np.float32)
    layers = describe(config, head, *size)
    recorded = trace(model, x)
    assert list(recorded) == [name for name, _ in layer_names(config, head)]
    for layer in layers:
        if layer.name in recorded:
            assert recorded[layer.name].shape == (2, *layer.output_shape), layer.name
    out = model(x, output_hidden_states=True)
    last = {}
    for layer in layers:
        if layer.in_backbone:
            last[layer.stage] = layer.output_shape
    stage_shapes = [last[f"stage {i}"] for i in range(1, 6)]
    assert [tuple(h.shape[1:]) for h in out.hidden_states] == stage_shapes
    assert out.logits.shape[1:] == layers[-1].output_shape


def test_params_and_macs_from_the_facts():
    """A layer's counts follow from its facts alone: a 3x3 depthwise conv with batch norm, a
    1x1 conv with bias on patches, a group norm, the classifier."""
    config = MobileViTV2Config(width_multiplier=0.5, num_labels=10)
    layers = {layer.name: layer for layer in describe(config, "classification", 64, 64)}
    dw = layers["encoder.layer.1.layer.0.conv_3x3"]
    assert dw.depthwise and dw.stride == 2 and dw.activation == config.hidden_act
    assert dw.params == dw.in_channels * 9 + 2 * dw.in_channels and dw.params_folded == dw.in_channels * 10
    assert dw.macs == dw.in_channels * 9 * dw.output_shape[1] * dw.output_shape[2]
    qkv = layers["encoder.layer.2.transformer.layer.0.attention.qkv_proj"]
    d = qkv.in_channels
    assert qkv.out_channels == 2 * d + 1 and qkv.bias and not qkv.norm and qkv.input == "patches"
    assert qkv.output_shape == (2 * d + 1, 4, 16) and qkv.macs == d * (2 * d + 1) * 4 * 16  # 8x8 map: 16 patches of 2x2
    norm = layers["encoder.layer.2.layernorm"]
    assert norm.kind == "group_norm" and norm.params == 2 * d and norm.macs == 0
    classifier = layers["classifier"]
    assert classifier.tensors == {"weight": (10, classifier.in_channels), "bias": (10,)}
    assert describe(config, "classification")[0].output_shape is None
    with pytest.raises(ValueError, match="input size"):
        describe(config, "classification")[0].macs  # noqa: B018
    with pytest.raises(ValueError, match="head"):
        describe(config, "detection")


@pytest.mark.parametrize(("field", "value"), [("expand_ratio", float("inf")), ("num_channels", "3"), ("aspp_out_channels", None),
                                              ("atrous_rates", None), ("conv_kernel_size", None), ("patch_size", "2"),
                                              ("n_attn_blocks", [10**9] * 3)])
def test_fields_set_later_are_checked_by_the_walk(field, value):
    """A field set after the config was made is checked where the network is walked: the
    description, the parameter count, the input-size check all raise ``ConfigError`` naming it."""
    from numpy_mvit2.errors import ConfigError

    for walk in (lambda c: describe(c, "segmentation", 128, 128), lambda c: c.parameter_count("segmentation"),
                 lambda c: c.check_input_size(128, 128)):
        config = MobileViTV2Config()
        setattr(config, field, value)
        with pytest.raises(ConfigError, match=field):
            walk(config)
