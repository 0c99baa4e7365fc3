"""``MobileViTV2Config``: the documented fields of transformers' config, and the widths they imply.

The network's shape is decided here and nowhere else: ``config.stem_channels`` and
``config.stages`` (one ``StageSpec`` per encoder stage) hold every channel width, stride and
dilation, computed once with ``make_divisible`` exactly as transformers computes them. The
weights' expected shapes (``numpy_mvit2.weights.shapes``) and the forward pass
(``numpy_mvit2.blocks``) both read them from here.
"""

from __future__ import annotations

import copy
import json
import os
import re
import warnings
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

import numpy as np

from .ops import ACTIVATIONS

PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")
PATCH_REMAINDERS = ("zero", "resize")  # transformers' behaviour, timm's and ml-cvnets' (see MobileViTV2Config)


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` (at least ``min_value``), rounding up
    once more if that lost over 10%: the channel rounding MobileNet, timm and transformers share."""
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
    over patches, and a 1x1 projection back to ``out_channels``.
    """

    index: int
    kind: str
    in_channels: int
    out_channels: int
    stride: int
    num_blocks: int = 1
    downsample_dilation: int = 1
    attn_unit_dim: int = 0
    n_attn_blocks: int = 0
    ffn_dim: int = 0


def expanded_channels(in_channels: int, expand_ratio: float) -> int:
    """Hidden width of an inverted residual: ``make_divisible(round(in * expand_ratio), 8)``."""
    return make_divisible(int(round(in_channels * expand_ratio)), 8)


@dataclass(init=False, eq=False)
class MobileViTV2Config:
    """Configuration of a MobileViTV2 model, with transformers' field names and defaults.

    Unknown keyword arguments (and unknown keys of a ``config.json``) are kept as attributes, as
    transformers keeps them. ``num_labels`` is derived from ``id2label`` (2 labels by default).
    """

    num_channels: int = 3
    image_size: int = 256
    patch_size: int = 2
    expand_ratio: float = 2.0
    hidden_act: str = "swish"
    conv_kernel_size: int = 3
    output_stride: int = 32
    classifier_dropout_prob: float = 0.1
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-5
    aspp_out_channels: int = 512
    atrous_rates: list = field(default_factory=lambda: [6, 12, 18])
    aspp_dropout_prob: float = 0.1
    semantic_loss_ignore_index: int = 255
    n_attn_blocks: list = field(default_factory=lambda: [2, 4, 3])
    base_attn_unit_dims: list = field(default_factory=lambda: [128, 192, 256])
    width_multiplier: float = 1.0
    ffn_multiplier: int = 2
    attn_dropout: float = 0.0
    ffn_dropout: float = 0.0
    id2label: dict = None
    label2id: dict = None
    problem_type: str = None
    output_hidden_states: bool = False
    output_attentions: bool = False  # numpy_mvit2 only: per-layer context scores (transformers returns none)
    return_dict: bool = True
    # Not in transformers: what a MobileViT block does with a feature map the patch size does not
    # divide. "zero" (transformers): unfold drops the last rows/columns and fold leaves them zero.
    # "resize" (timm, ml-cvnets): the map is first resized (bilinear, align_corners=True) up to the
    # next multiple of patch_size, and the block's output keeps that size.
    patch_remainder: str = "zero"

    model_type = "mobilevitv2"

    def __init__(self, **kwargs):
        num_labels = kwargs.pop("num_labels", None)
        for f in fields(self):
            if f.name in kwargs:
                value = kwargs.pop(f.name)
            elif f.default_factory is not MISSING:
                value = f.default_factory()
            else:
                value = f.default
            setattr(self, f.name, value)
        kwargs.pop("model_type", None)
        self.extra = kwargs  # keys we do not use (architectures, transformers_version, mlp_ratio, ...)
        for key, value in kwargs.items():
            if not isinstance(getattr(type(self), key, None), property):  # never shadow a derived width
                setattr(self, key, value)

        if self.id2label is None:
            self.num_labels = 2 if num_labels is None else num_labels
        elif num_labels is not None and isinstance(self.id2label, dict) and len(self.id2label) != num_labels:
            # transformers warns, then lets num_labels win: the labels become LABEL_0 .. LABEL_{n-1}
            warnings.warn(
                f"MobileViTV2Config: num_labels={num_labels} does not match the {len(self.id2label)} entries "
                f"of id2label; the labels are reset to LABEL_0..LABEL_{num_labels - 1}",
                stacklevel=2,
            )
            self.id2label = None
            self.num_labels = num_labels
        else:
            if not isinstance(self.id2label, dict):
                raise ValueError(f"MobileViTV2Config: id2label must be a dict of class index -> label, got {self.id2label!r:.80}")
            try:
                self.id2label = {int(k): v for k, v in self.id2label.items()}
            except (TypeError, ValueError):
                raise ValueError("MobileViTV2Config: id2label keys must be class indices (integers)") from None
            if self.label2id is None:
                self.label2id = {v: k for k, v in self.id2label.items()}
            else:
                self.label2id = {k: int(v) for k, v in self.label2id.items()}
        self.validate()

    # -- labels, as transformers derives them ---------------------------------------------------

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @num_labels.setter
    def num_labels(self, num_labels: int) -> None:
        if not isinstance(num_labels, int) or isinstance(num_labels, bool) or num_labels < 0:
            raise ValueError(f"MobileViTV2Config: num_labels must be a non-negative integer, got {num_labels!r}")
        if self.id2label is None or len(self.id2label) != num_labels:
            self.id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
            self.label2id = {v: k for k, v in self.id2label.items()}

    # -- validation ---------------------------------------------------------------------------

    def validate(self) -> None:
        """Raise ValueError naming the first field whose value we cannot build a model from."""

        def bad(name, allowed):
            raise ValueError(f"MobileViTV2Config: {name}={getattr(self, name)!r} is invalid; allowed: {allowed}")

        def positive_int(value):
            return isinstance(value, int) and not isinstance(value, bool) and value > 0

        def positive_number(value):
            return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0

        for name in ("num_channels", "patch_size", "aspp_out_channels", "ffn_multiplier"):
            if not positive_int(getattr(self, name)):
                bad(name, "a positive integer")
        if not (positive_int(self.conv_kernel_size) and self.conv_kernel_size % 2 == 1):
            bad("conv_kernel_size", "a positive odd integer")
        if self.output_stride not in (8, 16, 32) or isinstance(self.output_stride, bool):
            bad("output_stride", "8, 16 or 32")
        if self.hidden_act not in ACTIVATIONS:
            bad("hidden_act", ", ".join(sorted(ACTIVATIONS)))
        for name in ("expand_ratio", "width_multiplier", "layer_norm_eps"):
            if not positive_number(getattr(self, name)):
                bad(name, "a positive number")
        for name, count in (("atrous_rates", 3), ("n_attn_blocks", 3), ("base_attn_unit_dims", 3)):
            value = getattr(self, name)
            if not (isinstance(value, (list, tuple)) and len(value) == count and all(positive_int(v) for v in value)):
                bad(name, f"{count} positive integers")
            setattr(self, name, list(value))
        if self.problem_type is not None and self.problem_type not in PROBLEM_TYPES:
            bad("problem_type", "None, " + ", ".join(PROBLEM_TYPES))
        if self.problem_type == "single_label_classification" and self.num_labels == 1:
            raise ValueError(
                'MobileViTV2Config: problem_type="single_label_classification" requires num_labels > 1; '
                'use num_labels=2, or problem_type="regression" for a single output'
            )
        if isinstance(self.semantic_loss_ignore_index, bool) or not isinstance(self.semantic_loss_ignore_index, int):
            bad("semantic_loss_ignore_index", "an integer")
        if self.patch_remainder not in PATCH_REMAINDERS:
            bad("patch_remainder", ", ".join(repr(v) for v in PATCH_REMAINDERS))

    # -- derived widths: computed here and nowhere else ---------------------------------------

    @property
    def stem_channels(self) -> int:
        """Output width of ``conv_stem``: 32 * width, clipped to [16, 64], rounded to 8."""
        return make_divisible(min(max(32 * self.width_multiplier, 16), 64), divisor=8, min_value=16)

    @property
    def stages(self) -> list[StageSpec]:
        """The five encoder stages with every width, stride and dilation resolved."""
        w = self.width_multiplier
        widths = [
            self.stem_channels,
            make_divisible(64 * w, divisor=16),
            make_divisible(128 * w, divisor=8),
            make_divisible(256 * w, divisor=8),
            make_divisible(384 * w, divisor=8),
            make_divisible(512 * w, divisor=8),
        ]
        # output_stride 16 dilates stage 5, output_stride 8 stages 4 and 5 (transformers' rule:
        # a dilated stage's downsampling block keeps stride 1 and uses dilation // 2).
        dilations = {32: (1, 1), 16: (1, 2), 8: (2, 4)}[self.output_stride]
        specs = [
            StageSpec(0, "mobilenet", widths[0], widths[1], stride=1, num_blocks=1),
            StageSpec(1, "mobilenet", widths[1], widths[2], stride=2, num_blocks=2),
        ]
        for i, dilation in zip(range(3), (1,) + dilations):
            attn_dim = make_divisible(self.base_attn_unit_dims[i] * w, divisor=8)
            specs.append(
                StageSpec(
                    index=2 + i,
                    kind="mobilevit",
                    in_channels=widths[2 + i],
                    out_channels=widths[3 + i],
                    stride=2 if dilation == 1 else 1,
                    downsample_dilation=dilation // 2 if dilation > 1 else 1,
                    attn_unit_dim=attn_dim,
                    n_attn_blocks=self.n_attn_blocks[i],
                    ffn_dim=int((self.ffn_multiplier * attn_dim) // 16 * 16),
                )
            )
        return specs

    def feature_map_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """Spatial size of the stem's output and of each stage's output for an input of
        ``height x width``: every stride-2 step (3x3 kernel, padding 1) maps n to ``(n - 1) // 2 + 1``."""
        sizes = [((height - 1) // 2 + 1, (width - 1) // 2 + 1)]
        p = self.patch_size
        for spec in self.stages:
            h, w = sizes[-1]
            if spec.stride == 2:
                h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
            if spec.kind == "mobilevit" and self.patch_remainder == "resize":  # resized up to a multiple of p
                h, w = -(-h // p) * p, -(-w // p) * p
            sizes.append((h, w))
        return sizes

    def check_input_size(self, height: int, width: int) -> None:
        """Raise ValueError if some MobileViT stage would see a feature map smaller than a patch
        (with ``patch_remainder="resize"`` such maps are resized up, so any size is accepted)."""
        if isinstance(height, bool) or not isinstance(height, (int, np.integer)) or height < 1 or \
                isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 1:
            raise ValueError(f"input size must be positive integers, got {height}x{width}")
        if self.patch_remainder == "resize":
            return
        sizes = self.feature_map_sizes(height, width)
        for spec, (h, w) in zip(self.stages, sizes[1:]):
            if spec.kind == "mobilevit" and min(h, w) < self.patch_size:
                smallest = 1 + (self.patch_size - 1) * 2 ** (1 + sum(s.stride == 2 for s in self.stages))
                raise ValueError(
                    f"input of {height}x{width} pixels is too small: stage {spec.index + 1} would see a {h}x{w} "
                    f"feature map, smaller than patch_size={self.patch_size} (each side needs at least {smallest} pixels)"
                )

    @property
    def hidden_sizes(self) -> list[int]:
        """Channel width of each encoder stage's output (the entries of ``hidden_states``)."""
        return [s.out_channels for s in self.stages]

    # -- reading and writing --------------------------------------------------------------------

    @classmethod
    def from_dict(cls, config_dict: dict, **overrides) -> "MobileViTV2Config":
        return cls(**{**copy.deepcopy(config_dict), **overrides})

    @classmethod
    def from_timm_dict(cls, data: dict, **overrides) -> "MobileViTV2Config":
        """The config of a timm checkpoint (its ``config.json``: ``"architecture": "mobilevitv2_100"``,
        ``num_classes``, optionally ``label_names`` and ``pretrained_cfg``). The width comes from the
        architecture's name (``_050`` -> 0.5, ..., ``_200`` -> 2.0); the rest are MobileViTV2's
        defaults, as timm builds them. timm's ``pretrained_cfg`` (its preprocessing) is kept in
        ``config.extra["timm_pretrained_cfg"]``."""
        arch = str(data.get("architecture", ""))
        match = re.fullmatch(r"mobilevitv2_(\d{3})(?:\..*)?", arch)
        if not match:
            raise ValueError(f"timm architecture {arch!r} is not a MobileViTV2 (expected mobilevitv2_050 ... mobilevitv2_200)")
        kwargs: dict = {"width_multiplier": int(match[1]) / 100}
        num_classes = data.get("num_classes", 1000)
        names = data.get("label_names")
        if isinstance(names, list) and len(names) == num_classes:
            kwargs["id2label"] = {i: str(n) for i, n in enumerate(names)}
        else:
            kwargs["num_labels"] = num_classes
        if "pretrained_cfg" in data:
            kwargs["timm_pretrained_cfg"] = copy.deepcopy(data["pretrained_cfg"])
        kwargs["timm_architecture"] = arch
        return cls(**{**kwargs, **overrides})

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "MobileViTV2Config":
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise OSError(f"cannot read config file {path}: {e.strerror or e}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a JSON object, found {type(data).__name__}")
        model_type = data.get("model_type")
        if "architecture" in data and model_type is None:  # timm's config.json
            try:
                return cls.from_timm_dict(data)
            except ValueError as e:
                raise ValueError(f"{path}: {e}") from None
        if model_type not in (None, cls.model_type):
            raise ValueError(f"{path}: model_type is {model_type!r}, expected {cls.model_type!r}")
        try:
            return cls.from_dict(data)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *, revision: str | None = None,
                        cache_dir=None, **overrides) -> "MobileViTV2Config":
        """Read ``config.json`` from a checkpoint folder, a path to the JSON file itself, or a Hub
        repo id (through the Hugging Face cache; see ``numpy_mvit2.hub``). transformers' and timm's
        ``config.json`` are both understood. Keyword arguments override fields."""
        path = Path(pretrained_model_name_or_path)
        if not (path.is_file() and path.suffix == ".json"):
            from .hub import resolve_file

            path = resolve_file(pretrained_model_name_or_path, "config.json", revision=revision, cache_dir=cache_dir)
        config = cls.from_json_file(path)
        if overrides:
            config = cls.from_dict({**config.to_dict(), **overrides})
        return config

    def to_dict(self) -> dict:
        out = {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self)}
        out["id2label"] = {str(k): v for k, v in self.id2label.items()}
        out.update(copy.deepcopy(self.extra))
        out["model_type"] = self.model_type
        return out

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(self.to_json_string(), encoding="utf-8")

    def __eq__(self, other) -> bool:
        return isinstance(other, MobileViTV2Config) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        changed = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in ("id2label", "label2id") and getattr(self, f.name) != MobileViTV2Config.__dataclass_fields__[f.name].default
            and not (f.default_factory is not MISSING and getattr(self, f.name) == f.default_factory())
        }
        args = ", ".join(f"{k}={v!r}" for k, v in changed.items())
        return f"MobileViTV2Config({args}{', ' if args else ''}num_labels={self.num_labels})"
