"""Every tensor a checkpoint must hold, with its shape, as the config implies it.

Names are transformers' ``state_dict`` keys. ``expected_shapes(config, head)``, the tensors of
the layers ``architecture.describe`` lists, is the single list both the strict loader (missing /
unexpected / wrong-shape keys) and the seeded random initialisation read from.
"""

from __future__ import annotations

from ..architecture import HEADS, describe
from ..config import MobileViTV2Config
from ..errors import CheckpointError, ConfigError

BASE_PREFIX = "mobilevitv2."


def _tensors(layers) -> dict[str, tuple]:
    return {f"{layer.name}.{tensor}": shape for layer in layers for tensor, shape in layer.tensors.items()}


def backbone_shapes(config: MobileViTV2Config) -> dict[str, tuple]:
    """``MobileViTV2Model``'s tensors (no prefix), in forward order."""
    return _tensors(describe(config, "base"))


def head_shapes(config: MobileViTV2Config, head: str) -> dict[str, tuple]:
    """The head's tensors (the names a checkpoint gives them, at the top level)."""
    return _tensors(layer for layer in describe(config, head) if not layer.in_backbone)


def expected_shapes(config: MobileViTV2Config, head: str) -> dict[str, tuple]:
    """All tensor names and shapes of a checkpoint for ``head`` in ("base", "classification",
    "segmentation"), as transformers names them, in forward order (``architecture.describe``'s
    layers, each layer's tensors as ``Layer.tensors`` lists them): the backbone under
    ``mobilevitv2.`` for the models with a head, at the top level for the bare ``MobileViTV2Model``."""
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    prefix = "" if head == "base" else BASE_PREFIX
    return {(prefix if layer.in_backbone else "") + f"{layer.name}.{tensor}": shape
            for layer in describe(config, head) for tensor, shape in layer.tensors.items()}


def folded_shapes(shapes: dict[str, tuple]) -> dict[str, tuple]:
    """The same list after batch-norm folding: each ``X.normalization.{weight,bias,running_mean,running_var}``
    is gone and ``X.convolution.bias`` takes its place (the layout of ``model.state_dict()`` when
    batch norm was folded at load)."""
    out = {}
    for name, shape in shapes.items():
        if ".normalization." in name:
            layer = name.split(".normalization.")[0]
            out.setdefault(f"{layer}.convolution.bias", shape)
        else:
            out[name] = shape
    return out


# widths tried, in order, when a checkpoint comes without a config: the published ones first
_WIDTHS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0) + tuple(w / 8 for w in range(1, 33) if w / 8 not in (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0))


def infer_config(state: dict, head: str, *, source: str = "checkpoint", **overrides) -> MobileViTV2Config:
    """The config a state dict (transformers' names, laid out for ``head``) was built from, read off
    its shapes: the width multiplier (the one, among multiples of 1/8 up to 4, whose every backbone
    shape matches), the number of transformer layers per stage, the number of labels and the ASPP
    width. What shapes cannot tell (``output_stride``, ``atrous_rates``, ``hidden_act``, label names)
    stays at the defaults unless given in ``overrides``."""
    names = {(k[len(BASE_PREFIX):] if k.startswith(BASE_PREFIX) else k): v for k, v in state.items()}
    kwargs: dict = {}
    depth = []
    for stage in (2, 3, 4):
        layers = {k.split(".")[5] for k in names if k.startswith(f"encoder.layer.{stage}.transformer.layer.")}
        depth.append(len(layers))
    if all(depth):
        kwargs["n_attn_blocks"] = depth
    if head == "classification" and "classifier.weight" in names:
        kwargs["num_labels"] = int(names["classifier.weight"].shape[0])
    if head == "segmentation":
        if "segmentation_head.classifier.convolution.weight" in names:
            kwargs["num_labels"] = int(names["segmentation_head.classifier.convolution.weight"].shape[0])
        if "segmentation_head.aspp.project.convolution.weight" in names:
            kwargs["aspp_out_channels"] = int(names["segmentation_head.aspp.project.convolution.weight"].shape[0])
    kwargs.update(overrides)
    wanted = {k: tuple(v.shape) for k, v in names.items() if k.endswith(".weight") and not k.startswith(("classifier.", "segmentation_head."))}
    given = "width_multiplier" in kwargs
    too_large = None
    for width in ([kwargs.pop("width_multiplier")] if given else _WIDTHS):
        try:
            # the values read off the shapes (a hostile file's shapes too) are checked like any
            # config's; a width whose model would exceed the parameter cap is skipped, not fatal
            config = MobileViTV2Config(width_multiplier=width, **kwargs)
        except ConfigError as e:
            if given or e.field != "parameter_count":
                raise CheckpointError(f"{source}: cannot build a config from its shapes: {e}") from None
            too_large = too_large or e
            continue
        shapes = backbone_shapes(config)
        if wanted and all(shapes.get(k) == s for k, s in wanted.items()):
            return config
    stem = names.get("conv_stem.convolution.weight")
    raise CheckpointError(
        f"{source}: no config.json, and no MobileViTV2 width multiplier matches its tensor shapes "
        f"(stem {tuple(stem.shape) if stem is not None else 'missing'}); pass config=MobileViTV2Config(...)"
        + (f" (the widest were not tried: {too_large})" if too_large else "")
    )
