"""Every tensor a checkpoint must hold, with its shape, as the config implies it.

Names are transformers' ``state_dict`` keys. ``expected_shapes(config, head)`` is the single list
both the strict loader (missing / unexpected / wrong-shape keys) and the seeded random
initialisation read from.
"""

from __future__ import annotations

from ..config import MobileViTV2Config, expanded_channels
from ..errors import ConfigError

HEADS = ("base", "classification", "segmentation")
BASE_PREFIX = "mobilevitv2."


def _conv(out: dict, prefix: str, cin: int, cout: int, kernel: int, *, groups: int = 1, bias: bool = False, norm: bool = True):
    out[f"{prefix}.convolution.weight"] = (cout, cin // groups, kernel, kernel)
    if bias:
        out[f"{prefix}.convolution.bias"] = (cout,)
    if norm:
        for name in ("weight", "bias", "running_mean", "running_var"):
            out[f"{prefix}.normalization.{name}"] = (cout,)


def _inverted_residual(out: dict, prefix: str, cin: int, cout: int, expand_ratio: float):
    hidden = expanded_channels(cin, expand_ratio)
    _conv(out, f"{prefix}.expand_1x1", cin, hidden, 1)
    _conv(out, f"{prefix}.conv_3x3", hidden, hidden, 3, groups=hidden)
    _conv(out, f"{prefix}.reduce_1x1", hidden, cout, 1)


def _group_norm(out: dict, prefix: str, channels: int):
    out[f"{prefix}.weight"] = (channels,)
    out[f"{prefix}.bias"] = (channels,)


def backbone_shapes(config: MobileViTV2Config) -> dict[str, tuple]:
    """``MobileViTV2Model``'s tensors (no prefix)."""
    out: dict[str, tuple] = {}
    _conv(out, "conv_stem", config.num_channels, config.stem_channels, 3)
    for spec in config.stages:
        stage = f"encoder.layer.{spec.index}"
        if spec.kind == "mobilenet":
            cin = spec.in_channels
            for j in range(spec.num_blocks):
                _inverted_residual(out, f"{stage}.layer.{j}", cin, spec.out_channels, config.expand_ratio)
                cin = spec.out_channels
            continue
        c, d = spec.out_channels, spec.attn_unit_dim
        _inverted_residual(out, f"{stage}.downsampling_layer", spec.in_channels, c, config.expand_ratio)
        _conv(out, f"{stage}.conv_kxk", c, c, config.conv_kernel_size, groups=c)
        _conv(out, f"{stage}.conv_1x1", c, d, 1, norm=False)
        for j in range(spec.n_attn_blocks):
            layer = f"{stage}.transformer.layer.{j}"
            _group_norm(out, f"{layer}.layernorm_before", d)
            _conv(out, f"{layer}.attention.qkv_proj", d, 1 + 2 * d, 1, bias=True, norm=False)
            _conv(out, f"{layer}.attention.out_proj", d, d, 1, bias=True, norm=False)
            _group_norm(out, f"{layer}.layernorm_after", d)
            _conv(out, f"{layer}.ffn.conv1", d, spec.ffn_dim, 1, bias=True, norm=False)
            _conv(out, f"{layer}.ffn.conv2", spec.ffn_dim, d, 1, bias=True, norm=False)
        _group_norm(out, f"{stage}.layernorm", d)
        _conv(out, f"{stage}.conv_projection", d, c, 1)
    return out


def head_shapes(config: MobileViTV2Config, head: str) -> dict[str, tuple]:
    """The head's tensors (the names a checkpoint gives them, at the top level)."""
    out: dict[str, tuple] = {}
    width = config.hidden_sizes[-1]
    if head == "classification" and config.num_labels > 0:
        out["classifier.weight"] = (config.num_labels, width)
        out["classifier.bias"] = (config.num_labels,)
    elif head == "segmentation":
        a = config.aspp_out_channels
        prefix = "segmentation_head.aspp"
        _conv(out, f"{prefix}.convs.0", width, a, 1)
        for i in range(1, 4):
            _conv(out, f"{prefix}.convs.{i}", width, a, 3)
        _conv(out, f"{prefix}.convs.4.conv_1x1", width, a, 1)
        _conv(out, f"{prefix}.project", 5 * a, a, 1)
        _conv(out, "segmentation_head.classifier", a, config.num_labels, 1, bias=True, norm=False)
    return out


def expected_shapes(config: MobileViTV2Config, head: str) -> dict[str, tuple]:
    """All tensor names and shapes of a checkpoint for ``head`` in ("base", "classification",
    "segmentation"), as transformers names them: the backbone under ``mobilevitv2.`` for the models
    with a head, at the top level for the bare ``MobileViTV2Model``."""
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    prefix = "" if head == "base" else BASE_PREFIX
    shapes = {prefix + name: shape for name, shape in backbone_shapes(config).items()}
    shapes.update(head_shapes(config, head))
    return shapes


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
    from .files import CheckpointError

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
