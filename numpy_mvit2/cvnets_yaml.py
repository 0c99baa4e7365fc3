"""ml-cvnets' YAML configs (``config/classification/imagenet/mobilevit_v2.yaml``,
``config/segmentation/pascal_voc/deeplabv3_mobilevitv2.yaml``, ...) -> ``MobileViTV2Config`` fields.

ml-cvnets trains from one YAML file of nested options, which it flattens into dotted names
(``model.segmentation.output_stride``); the weights it saves (``.pt``) say nothing of the output
stride, the atrous rates or the activation, so its YAML is where they are read from. Only the
options that change the function a MobileViTV2 model computes are read; an option we cannot compute
(a separable ASPP, a norm other than ``layer_norm_2d`` in the attention blocks, a head activation
other than ReLU, another model) is refused by name rather than ignored. Defaults are ml-cvnets' own
argument defaults: ReLU where no activation is named, ``aspp_out_channels`` 256 and rates (6, 12, 18) (``DeeplabV3``), 21 segmentation
classes (``BaseSegmentation``), 1000 classification classes and an undilated encoder when the YAML
names no output stride (``SegEncoderDecoder.build_model`` passes ``output_stride=None``).

The file comes from the internet: it is read whole up to ``MAX_YAML_BYTES``, through PyYAML's safe
loader (no Python objects), with aliases refused (``&a [*a, *a]`` nests build exponentially large
values from a few bytes) and nesting bounded.
"""

from __future__ import annotations

import os

from .errors import ConfigError
from .safeio import read_bounded

MAX_YAML_BYTES = 2**16  # ml-cvnets' configs are 2 to 4 kB; PyYAML's safe loader (pure Python) reads about 60 kB a second at worst
MAX_YAML_DEPTH = 32  # theirs nest 5 deep

# ml-cvnets' activation names (it lower-cases them) -> ours; "relu" is its argument default
_ACTIVATIONS = {"swish": "swish", "silu": "swish", "relu": "relu", "relu6": "relu6", "gelu": "gelu",
                "hard_swish": "hardswish", "hardswish": "hardswish"}
_ATTENTION_NORMS = ("layer_norm_2d", "layer_norm_nchw")  # one class in ml-cvnets' registry: a group norm with one group


def read_flat_yaml(path: str | os.PathLike) -> dict:
    """The YAML file's nested mappings flattened to dotted keys, as ml-cvnets reads its options."""
    import yaml

    class _Loader(yaml.SafeLoader):
        depth = 0

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                raise yaml.composer.ComposerError(None, None, "aliases (*name) are not accepted", self.peek_event().start_mark)
            if self.depth >= MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested more than {MAX_YAML_DEPTH} levels deep",
                                                  self.peek_event().start_mark)
            self.depth += 1
            try:
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    data = read_bounded(path, MAX_YAML_BYTES, error=ConfigError, what="YAML config")
    try:
        tree = yaml.load(data, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except (yaml.YAMLError, ValueError, TypeError, OverflowError) as e:  # also a date 2024-13-45, an int of 5000 digits
        raise ConfigError(f"{path}: not a YAML file we can read ({' '.join(str(e).split())[:300]})") from None
    except RecursionError:
        raise ConfigError(f"{path}: YAML nested too deeply") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a YAML mapping of options, found {type(tree).__name__}")
    flat: dict = {}

    def walk(node, prefix, depth):
        if depth > MAX_YAML_DEPTH:
            raise ConfigError(f"{path}: YAML nested more than {MAX_YAML_DEPTH} levels deep")
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(value, name + ".", depth + 1)
            else:
                flat[name] = value

    walk(tree, "", 0)
    return flat


def is_cvnets_mobilevitv2(flat: dict) -> bool:
    return flat.get("model.classification.name") == "mobilevit_v2"


def config_fields(flat: dict, where: str) -> dict:
    """``MobileViTV2Config`` keyword arguments from ml-cvnets' flattened options (see the module
    docstring); ``ConfigError`` naming the option for anything we cannot compute."""
    def get(key, default=None):
        return flat.get(key, default)

    def name_at(key, default):  # ml-cvnets lower-cases the names of activations and norms
        value = get(key, default)
        return value.lower() if isinstance(value, str) else value

    def refuse(key, value, allowed):
        raise ConfigError(f"{where}: {key}={value!r} is not supported; numpy_mvit2 computes {allowed}", field=key)

    name = get("model.classification.name")
    if name != "mobilevit_v2":
        raise ConfigError(f"{where}: not a MobileViTV2 config (model.classification.name is {name!r}, "
                          "expected 'mobilevit_v2')", field="model.classification.name")
    kwargs: dict = {"width_multiplier": get("model.classification.mitv2.width_multiplier", 1.0)}
    norm = name_at("model.classification.mitv2.attn_norm_layer", "layer_norm_2d")
    if norm not in _ATTENTION_NORMS:
        refuse("model.classification.mitv2.attn_norm_layer", norm, "'layer_norm_2d' (a group norm with one group)")
    batch_norm = name_at("model.normalization.name", "batch_norm")
    if not (isinstance(batch_norm, str) and "batch_norm" in batch_norm):
        refuse("model.normalization.name", batch_norm, "batch norm ('batch_norm', 'sync_batch_norm')")
    segmentation = bool(get("model.segmentation.name"))
    pool = name_at("model.layer.global_pool", "mean")
    if pool != "mean" and not segmentation:  # a segmentation model has no classifier to pool for
        refuse("model.layer.global_pool", pool, "'mean'")
    # the encoder's activation: model.classification.activation.name overrides the general one,
    # whose default is ReLU
    act_key = next((k for k in ("model.classification.activation.name", "model.activation.name") if get(k) is not None),
                   None)
    act = name_at(act_key, "relu") if act_key else "relu"
    if act not in _ACTIVATIONS:
        refuse(act_key, act, "one of " + ", ".join(sorted(_ACTIVATIONS)))
    kwargs["hidden_act"] = _ACTIVATIONS[act]
    if segmentation:
        head = name_at("model.segmentation.seg_head", "deeplabv3")
        if head != "deeplabv3":
            refuse("model.segmentation.seg_head", head, "'deeplabv3'")
        if get("model.segmentation.deeplabv3.aspp_sep_conv", False):
            refuse("model.segmentation.deeplabv3.aspp_sep_conv", True, "ASPP with full 3x3 convolutions (false)")
        # the head's activation: model.segmentation.activation.name overrides the general one
        head_key = next((k for k in ("model.segmentation.activation.name", "model.activation.name") if get(k) is not None),
                        None)
        head_act = name_at(head_key, "relu") if head_key else "relu"
        if head_act != "relu":
            refuse(head_key, head_act, "ReLU in the DeepLabV3 head ('relu')")
        output_stride = get("model.segmentation.output_stride")
        kwargs["output_stride"] = 32 if output_stride is None else output_stride
        rates = get("model.segmentation.deeplabv3.aspp_rates", [6, 12, 18])
        kwargs["atrous_rates"] = list(rates) if isinstance(rates, (list, tuple)) else rates
        kwargs["aspp_out_channels"] = get("model.segmentation.deeplabv3.aspp_out_channels", 256)
        kwargs["aspp_dropout_prob"] = get("model.segmentation.deeplabv3.aspp_dropout", 0.1)
        kwargs["num_labels"] = get("model.segmentation.n_classes", 21)
        kwargs["architectures"] = ["MobileViTV2ForSemanticSegmentation"]  # as transformers names the head
    else:
        kwargs["num_labels"] = get("model.classification.n_classes", 1000)
        kwargs["architectures"] = ["MobileViTV2ForImageClassification"]
    width, height = get("sampler.bs.crop_size_width"), get("sampler.bs.crop_size_height")
    if isinstance(width, int) and not isinstance(width, bool) and width == height:
        kwargs["image_size"] = width
    return kwargs
