"""``MobileViTV2Config``: the documented fields of transformers' config, and the widths they imply.

The network's widths are decided here and nowhere else: ``config.stem_channels`` and
``config.stages`` (one ``StageSpec`` per encoder stage) hold every stage's channel widths,
strides and dilations, computed once with ``make_divisible`` exactly as transformers computes
them (an inverted residual's hidden width follows from them: ``architecture.expanded_channels``).
``numpy_mvit2.architecture.describe`` turns them into the list of layers that the expected
shapes, the summary, the parameter cap and the fast plan read; the forward passes
(``numpy_mvit2.blocks``, ``numpy_mvit2.fast``) read the stages from here.
"""

from __future__ import annotations

import copy
import json
import math
import numbers
import os
import re
import reprlib
import warnings
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

import numpy as np

from .architecture import StageSpec, describe, expanded_channels, feature_map_sizes, make_divisible  # noqa: F401 - re-exported
from .errors import CheckpointNotFoundError, ConfigError, is_finite_number, show  # noqa: F401 - re-exported
from .ops import ACTIVATIONS
from .safeio import MAX_JSON_DEPTH, read_settings_json

PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")
PATCH_REMAINDERS = ("zero", "resize")  # transformers' behaviour, timm's and ml-cvnets' (see MobileViTV2Config)


@dataclass(frozen=True)
class FrameworkChoices:
    """Where transformers, timm and ml-cvnets compute different functions with the same weights.

    ``patch_remainder``: what a MobileViT block does with a feature map the patch size does not
    divide. "zero" (transformers): unfold drops the last rows/columns and fold leaves them zero.
    "resize" (timm, ml-cvnets): the map is first resized (bilinear, ``align_corners=True``) up to
    the next multiple of ``patch_size``, and the block's output keeps that size.

    ``dilate_local_conv``: whether the local-representation depthwise k x k conv (``conv_kxk``) of
    a dilated stage (output stride 16 or 8) is dilated by the stage's dilation. transformers builds
    it undilated; ml-cvnets (``MobileViTv2._make_mit_layer`` passes ``dilation=self.dilation`` to
    ``MobileViTBlockv2``, whose ``local_rep.0`` takes it) and timm (``create_model(...,
    output_stride=16)``) dilate it: 2 for stage 5 at output stride 16; 2 and 4 for stages 4 and 5
    at output stride 8. Classification (output stride 32) has no dilated stage."""

    patch_remainder: str
    dilate_local_conv: bool


# One switch, ``MobileViTV2Config.behavior``, picks a framework's complete set of choices.
BEHAVIORS = {
    "transformers": FrameworkChoices(patch_remainder="zero", dilate_local_conv=False),
    "timm": FrameworkChoices(patch_remainder="resize", dilate_local_conv=True),
    "ml-cvnets": FrameworkChoices(patch_remainder="resize", dilate_local_conv=True),
}
DEFAULT_BEHAVIOR = "transformers"  # a config with behavior=None, e.g. one from transformers' config.json

# -- limits -------------------------------------------------------------------------------------
# A config.json of 40 bytes must not make us allocate gigabytes, so every field that sets a size
# has a cap, checked before anything is built from it. Each cap is far above what any published
# MobileViTV2 uses (noted after it); MAX_PARAMETERS then bounds the model the fields imply together.
MAX_LABELS = 32768  # ImageNet-21k has 21841 classes, ADE20k 150
MAX_PARAMETERS = 64_000_000  # the largest published model (width 2.0, 21841 labels) holds 39.8 million numbers;
#                              a float32 model of 63 million with random weights peaks at 0.64 GB
#                              resident (measured: width 3.0, segmentation)
MAX_WIDTH_MULTIPLIER = 8.0  # published: 0.5 to 2.0 (weights.shapes.infer_config tries up to 4)
MAX_IMAGE_SIZE = 4064  # published: 256 and 512; the processor derived from it (shortest edge image_size + 32)
#                        stays within processing.MAX_IMAGE_SIDE = 4096
MAX_CHANNELS = 4096  # base_attn_unit_dims and aspp_out_channels (published: 256 and 512 at most)
MAX_NUM_CHANNELS = 64  # image channels (3)
MAX_PATCH_SIZE = 64  # (2)
MAX_KERNEL_SIZE = 31  # conv_kernel_size (3)
MAX_ATTN_BLOCKS = 64  # transformer layers per stage (4 at most)
MAX_MULTIPLIER = 64  # expand_ratio and ffn_multiplier (2)
MAX_ATROUS_RATE = 64  # (6, 12, 18; 12, 24, 36 at output stride 8)

def nested_at_most(value, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether lists, tuples and dicts nest at most ``limit`` deep in ``value``. Walked without
    recursion, stopping as soon as the limit is passed (so a structure that contains itself ends)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, tuple, dict)):
            if depth >= limit:
                return False
            stack.extend((x, depth + 1) for x in (item.values() if isinstance(item, dict) else item))
    return True


def is_integer(value) -> bool:
    """A Python or NumPy integer; ``bool`` is not one (True is no count of anything)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


# -- what each field may hold ------------------------------------------------------------------
# One checker per field: it returns the value to keep (lists for JSON's arrays and transformers'
# tuples, Python numbers for NumPy scalars) or raises _Invalid with the words for what is allowed.
# Types are transformers 5's: its strict config refuses 3.0 for an int field, and so do we (JSON
# writes every int a config holds without a fraction); an int for a float field is fine.


class _Invalid(Exception):
    """Internal: a field's value is not allowed; ``args[0]`` says what is."""


def _integer(low: int, high: int, odd: bool = False):
    allowed = (f"a positive {'odd ' if odd else ''}integer, at most {high}" if low == 1
               else f"an integer from {low} to {high}")

    def check(value):
        if not (is_integer(value) and low <= value <= high and (not odd or value % 2 == 1)):
            raise _Invalid(allowed)
        return int(value)
    return check


def _number(high: float | None = None, *, positive: bool = True, allowed: str | None = None):
    if allowed is None:
        allowed = ("a positive number" if positive else "a finite number, at least 0") + (
            f", at most {high:g}" if high is not None else "")

    def check(value):
        if not (is_finite_number(value) and (value > 0 if positive else value >= 0)
                and (high is None or value <= high)):
            raise _Invalid(allowed)
        return value if type(value) in (int, float) else float(value)
    return check


def _probability(value):
    if not (is_finite_number(value) and 0 <= value <= 1):
        raise _Invalid("a probability, a number from 0 to 1")
    return value if type(value) in (int, float) else float(value)


def _three(high: int):
    def check(value):
        if not (isinstance(value, (list, tuple)) and len(value) == 3
                and all(is_integer(v) and 1 <= v <= high for v in value)):
            raise _Invalid(f"a list of 3 positive integers, each at most {high}")
        return [int(v) for v in value]
    return check


def _one_of(choices, none: bool = False):
    allowed = ("None, " if none else "") + ", ".join(repr(c) for c in choices)

    def check(value):
        if not ((none and value is None) or (isinstance(value, str) and value in choices)):
            raise _Invalid(allowed)
        return value
    return check


def _flag(value):
    if not isinstance(value, (bool, np.bool_)):
        raise _Invalid("true or false")
    return bool(value)


def _flag_or_none(value):
    if value is None:
        return None
    try:
        return _flag(value)
    except _Invalid:
        raise _Invalid("None, true or false") from None


def _stride(value):
    if not (is_integer(value) and value in (8, 16, 32)):
        raise _Invalid("8, 16 or 32")
    return int(value)


def _image_size(value):
    if not (is_integer(value) and 1 <= value <= MAX_IMAGE_SIZE):
        raise _Invalid(f"a positive integer, at most {MAX_IMAGE_SIZE} (the side of a square image; "
                       "a (height, width) pair is not supported)")
    return int(value)


FIELD_CHECKS = {
    "num_channels": _integer(1, MAX_NUM_CHANNELS),
    "image_size": _image_size,
    "patch_size": _integer(1, MAX_PATCH_SIZE),
    "expand_ratio": _number(MAX_MULTIPLIER),
    "hidden_act": _one_of(sorted(ACTIVATIONS)),
    "conv_kernel_size": _integer(1, MAX_KERNEL_SIZE, odd=True),
    "output_stride": _stride,
    "classifier_dropout_prob": _probability,
    "initializer_range": _number(positive=False),
    "layer_norm_eps": _number(),
    "aspp_out_channels": _integer(1, MAX_CHANNELS),
    "atrous_rates": _three(MAX_ATROUS_RATE),
    "aspp_dropout_prob": _probability,
    "semantic_loss_ignore_index": _integer(-2**31, 2**31 - 1),
    "n_attn_blocks": _three(MAX_ATTN_BLOCKS),
    "base_attn_unit_dims": _three(MAX_CHANNELS),
    "width_multiplier": _number(MAX_WIDTH_MULTIPLIER),
    "ffn_multiplier": _integer(1, MAX_MULTIPLIER),
    "attn_dropout": _probability,
    "ffn_dropout": _probability,
    "problem_type": _one_of(PROBLEM_TYPES, none=True),
    "output_hidden_states": _flag,
    "output_attentions": _flag,
    "return_dict": _flag,
    "behavior": _one_of(tuple(BEHAVIORS), none=True),
    "patch_remainder": _one_of(PATCH_REMAINDERS, none=True),
    "dilate_local_conv": _flag_or_none,
}


# the fields that set the model's size, named when it is too large
_SIZE_FIELDS = ("width_multiplier", "num_labels", "aspp_out_channels", "n_attn_blocks", "base_attn_unit_dims",
                "expand_ratio", "ffn_multiplier", "num_channels", "conv_kernel_size")
# the fields the derived widths (stem_channels, stages) read
_STAGE_FIELDS = ("width_multiplier", "output_stride", "base_attn_unit_dims", "n_attn_blocks", "ffn_multiplier",
                 "behavior", "dilate_local_conv")


def _checked_num_labels(value) -> int:
    if not (is_integer(value) and 0 <= value <= MAX_LABELS):
        raise ConfigError(f"MobileViTV2Config: num_labels={show(value)} is invalid; allowed: an integer from 0 to {MAX_LABELS}",
                          field="num_labels")
    return int(value)


def _class_index(value):
    """A class index from an int or a string of decimal digits (as JSON object keys are), else None."""
    if type(value) is int:  # the common case, first: a config may hold tens of thousands
        return value if 0 <= value < MAX_LABELS else None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 10:
        value = int(value)
    return int(value) if is_integer(value) and 0 <= value < MAX_LABELS else None


def _checked_id2label(value) -> dict:
    """``{class index: label name}`` with int keys (JSON gives them as strings)."""
    allowed = f"a dict of class index (0 to {MAX_LABELS - 1}) -> label name (a string), at most {MAX_LABELS} entries"
    if not isinstance(value, dict) or len(value) > MAX_LABELS:
        raise ConfigError(f"MobileViTV2Config: id2label={show(value)} is invalid; allowed: {allowed}", field="id2label")
    out = {}
    for key, label in value.items():
        index = _class_index(key)
        if index is None or not isinstance(label, str):
            raise ConfigError(f"MobileViTV2Config: id2label entry {show(key)}: {show(label)} is invalid; allowed: {allowed}", field="id2label")
        if index in out:
            raise ConfigError(f"MobileViTV2Config: id2label gives class {index} twice (key {show(key)})", field="id2label")
        out[index] = label
    return out


def _checked_label2id(value) -> dict | None:
    """``{label name: class index}`` with int values, or None (then derived from id2label)."""
    allowed = f"a dict of label name (a string) -> class index (0 to {MAX_LABELS - 1}), at most {MAX_LABELS} entries"
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) > MAX_LABELS:
        raise ConfigError(f"MobileViTV2Config: label2id={show(value)} is invalid; allowed: {allowed}", field="label2id")
    out = {}
    for label, index in value.items():
        checked = _class_index(index)
        if not isinstance(label, str) or checked is None:
            raise ConfigError(f"MobileViTV2Config: label2id entry {show(label)}: {show(index)} is invalid; allowed: {allowed}", field="label2id")
        out[label] = checked
    return out


# keys transformers writes into every config.json that we keep in ``extra`` and read ourselves
_EXTRA_CHECKS = {
    "architectures": (lambda v: v is None or (isinstance(v, list) and all(isinstance(a, str) for a in v)),
                      "null or a list of class names (strings)"),
}


def _checked_extra(extra: dict) -> dict:
    for key, value in extra.items():
        if not nested_at_most(value, MAX_JSON_DEPTH):
            raise ConfigError(f"MobileViTV2Config: {show(key)} is nested more than {MAX_JSON_DEPTH} levels deep", field=key)
        if key in _EXTRA_CHECKS and not _EXTRA_CHECKS[key][0](value):
            raise ConfigError(f"MobileViTV2Config: {key}={show(value)} is invalid; allowed: {_EXTRA_CHECKS[key][1]}",
                              field=key)
    return extra


@dataclass(init=False, eq=False)
class MobileViTV2Config:
    """Configuration of a MobileViTV2 model, with transformers' field names and defaults.

    Every field is checked when the config is made (``validate``: type and range, then the size
    of the model it implies, against the ``MAX_*`` limits of this module), and a bad one raises
    ``ConfigError`` (a ValueError) naming the field, the value and what is allowed.

    Unknown keyword arguments (and unknown keys of a ``config.json``) are kept in ``config.extra``
    and written back by ``to_dict``. They read as attributes too (``config.architectures``), as
    transformers keeps them, but never in place of what the class defines: a key named
    ``validate``, ``stages``, ``extra`` or ``__class__`` stays in ``extra`` only.
    ``num_labels`` is derived from ``id2label`` (2 labels by default).
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
    # Not in transformers: whose function the model computes, "transformers", "timm" or
    # "ml-cvnets" (see FrameworkChoices and BEHAVIORS). None: not chosen, which computes
    # transformers'; from_pretrained chooses by the checkpoint's source when its config has none.
    behavior: str = None
    # Overrides of one choice of the behavior each (None: the behavior's); see FrameworkChoices.
    patch_remainder: str = None
    dilate_local_conv: bool = None

    model_type = "mobilevitv2"

    def __init__(self, /, **kwargs):  # "/": a config.json key named "self" is a key like any other
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
        # keys we do not use (architectures, transformers_version, mlp_ratio, ...), kept for
        # to_dict; they are never set as attributes (see __getattr__), so a key named validate,
        # extra or __class__ cannot replace what the class defines
        self.extra = _checked_extra(kwargs)
        self._set_labels(num_labels)
        self.validate()

    def __getattr__(self, name):
        # Only reached when the ordinary lookup fails: a field, method or property always wins.
        # An unknown key of config.json reads as an attribute (transformers keeps them as
        # attributes) unless its name starts with "_".
        extra = self.__dict__.get("extra")
        if extra is not None and not name.startswith("_") and name in extra:
            return extra[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # -- labels, as transformers derives them ---------------------------------------------------

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @num_labels.setter
    def num_labels(self, num_labels: int) -> None:
        num_labels = _checked_num_labels(num_labels)
        if self.id2label is None or len(self.id2label) != num_labels:
            self.id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
            self.label2id = {v: k for k, v in self.id2label.items()}

    def _set_labels(self, num_labels) -> None:
        """id2label (keys made ints), label2id and num_labels, each checked before any label is made."""
        if num_labels is not None:
            num_labels = _checked_num_labels(num_labels)
        if self.id2label is not None:
            self.id2label = _checked_id2label(self.id2label)
        if self.label2id is not None:
            self.label2id = _checked_label2id(self.label2id)
        if self.id2label is None:
            self.num_labels = 2 if num_labels is None else num_labels
        elif num_labels is not None and len(self.id2label) != num_labels:
            # transformers warns, then lets num_labels win: the labels become LABEL_0 .. LABEL_{n-1}
            warnings.warn(
                f"MobileViTV2Config: num_labels={num_labels} does not match the {len(self.id2label)} entries "
                f"of id2label; the labels are reset to LABEL_0..LABEL_{num_labels - 1}",
                stacklevel=3,
            )
            self.id2label = None
            self.num_labels = num_labels
        elif self.label2id is None:
            self.label2id = {v: k for k, v in self.id2label.items()}

    # -- validation ---------------------------------------------------------------------------

    def validate(self) -> None:
        """Raise ``ConfigError`` (a ValueError) naming the first field whose value we cannot build
        a model from, the value, and what is allowed; then refuse a config whose model would hold
        more than ``MAX_PARAMETERS`` numbers. Lists are stored as lists."""
        self._check_fields(FIELD_CHECKS)
        self.id2label = _checked_id2label(self.id2label)
        self.label2id = _checked_label2id(self.label2id)
        if self.problem_type == "single_label_classification" and self.num_labels == 1:
            raise ConfigError(
                'MobileViTV2Config: problem_type="single_label_classification" requires num_labels > 1; '
                'use num_labels=2, or problem_type="regression" for a single output'
            )
        for spec in self._stage_specs():
            if spec.kind == "mobilevit" and spec.ffn_dim == 0:  # a layer with no inputs cannot be drawn nor run
                raise ConfigError(
                    f"MobileViTV2Config: stage {spec.index + 1}'s feed-forward width is 0 (ffn_multiplier="
                    f"{self.ffn_multiplier} x attention width {spec.attn_unit_dim}, rounded down to a multiple of 16); "
                    f"allowed: ffn_multiplier x make_divisible(base_attn_unit_dims x width_multiplier, 8) of at least 16",
                    field="ffn_multiplier")
        for head in ("classification", "segmentation"):
            count = self.parameter_count(head)
            if count > MAX_PARAMETERS:
                sizes = ", ".join(f"{name}={show(getattr(self, name))}" for name in _SIZE_FIELDS)
                raise ConfigError(
                    f"MobileViTV2Config: the {head} model of this config would hold {count:,} parameters, more than "
                    f"the {MAX_PARAMETERS:,} allowed; its size is set by {sizes}", field="parameter_count"
                )

    def check_fields(self, names) -> None:
        """Check the fields ``names`` again (one may have been set since the config was made), as
        ``validate`` checks them: ``ConfigError`` naming the first bad one."""
        self._check_fields(names)

    def _check_fields(self, names) -> None:
        for name in names:
            value = getattr(self, name)
            try:
                checked = FIELD_CHECKS[name](value)
            except _Invalid as e:
                raise ConfigError(f"MobileViTV2Config: {name}={show(value)} is invalid; allowed: {e.args[0]}",
                                  field=name) from None
            if checked is not value:
                setattr(self, name, checked)

    def parameter_count(self, head: str = "classification") -> int:
        """How many numbers a checkpoint for ``head`` holds (batch-norm statistics included): the
        sizes of the tensors of ``architecture.describe(config, head)``'s layers (what
        ``weights.shapes.expected_shapes`` lists), so that ``validate`` can bound a model before
        anything is built."""
        return sum(math.prod(shape) for layer in describe(self, head) for shape in layer.tensors.values())

    # -- derived widths: computed here and nowhere else ---------------------------------------

    @property
    def stem_channels(self) -> int:
        """Output width of ``conv_stem``: 32 * width, clipped to [16, 64], rounded to 8."""
        self._check_fields(("width_multiplier",))
        return make_divisible(min(max(32 * self.width_multiplier, 16), 64), divisor=8, min_value=16)

    @property
    def stages(self) -> list[StageSpec]:
        """The five encoder stages with every width, stride and dilation resolved (the fields they
        read are checked again first: an attribute set after construction is not)."""
        self._check_fields(_STAGE_FIELDS)
        return self._stage_specs()

    def _stage_specs(self) -> list[StageSpec]:
        w = self.width_multiplier
        widths = [
            self.stem_channels,
            make_divisible(64 * w, divisor=16),
            make_divisible(128 * w, divisor=8),
            make_divisible(256 * w, divisor=8),
            make_divisible(384 * w, divisor=8),
            make_divisible(512 * w, divisor=8),
        ]
        # output_stride 16 dilates stage 5, output_stride 8 stages 4 and 5; a dilated stage's
        # downsampling block keeps stride 1 and has the previous stage's dilation (dilation // 2),
        # in all three frameworks; its local conv has the stage's own only under some behaviors
        dilations = {32: (1, 1), 16: (1, 2), 8: (2, 4)}[self.output_stride]
        dilate_local = self.choices.dilate_local_conv
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
                    local_dilation=dilation if dilate_local else 1,
                    attn_unit_dim=attn_dim,
                    n_attn_blocks=self.n_attn_blocks[i],
                    ffn_dim=int((self.ffn_multiplier * attn_dim) // 16 * 16),
                )
            )
        return specs

    @property
    def choices(self) -> FrameworkChoices:
        """What this config computes where the frameworks differ: the behavior's choices (
        transformers' when ``behavior`` is None), each overridden by ``patch_remainder`` or
        ``dilate_local_conv`` when that field is set."""
        self._check_fields(("behavior", "patch_remainder", "dilate_local_conv"))
        base = BEHAVIORS[self.behavior or DEFAULT_BEHAVIOR]
        return FrameworkChoices(
            patch_remainder=base.patch_remainder if self.patch_remainder is None else self.patch_remainder,
            dilate_local_conv=base.dilate_local_conv if self.dilate_local_conv is None else self.dilate_local_conv,
        )

    def feature_map_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """Spatial size of the stem's output and of each stage's output for an input of
        ``height x width``, as ``architecture.describe`` sizes the layers (the input size not
        checked; the fields the sizes depend on are, again: one may have been set since)."""
        return feature_map_sizes(self, height, width)

    def check_input_size(self, height: int, width: int) -> None:
        """Raise ValueError if some MobileViT stage would see a feature map smaller than a patch
        (where the patch remainder is resized, timm's and ml-cvnets' way, such maps are resized up,
        so any size is accepted)."""
        if isinstance(height, bool) or not isinstance(height, (int, np.integer)) or height < 1 or \
                isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 1:
            raise ValueError(f"input size must be positive integers, got {height}x{width}")
        if self.choices.patch_remainder == "resize":
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
        if not isinstance(config_dict, dict) or not all(isinstance(k, str) for k in config_dict):
            raise ConfigError(f"MobileViTV2Config.from_dict: expected a dict with string keys, got {show(config_dict)}")
        merged = {**config_dict, **overrides}
        if not nested_at_most(merged, MAX_JSON_DEPTH + 1):  # before deepcopy, which recurses
            raise ConfigError(f"MobileViTV2Config: a value is nested more than {MAX_JSON_DEPTH} levels deep")
        return cls(**copy.deepcopy(merged))

    @classmethod
    def from_timm_dict(cls, data: dict, **overrides) -> "MobileViTV2Config":
        """The config of a timm checkpoint (its ``config.json``: ``"architecture": "mobilevitv2_100"``,
        ``num_classes``, optionally ``label_names`` and ``pretrained_cfg``). The width comes from the
        architecture's name (``_050`` -> 0.5, ..., ``_200`` -> 2.0); the rest are MobileViTV2's
        defaults, as timm builds them. timm's ``pretrained_cfg`` (its preprocessing) is kept in
        ``config.extra["timm_pretrained_cfg"]``."""
        if not isinstance(data, dict) or not nested_at_most(data, MAX_JSON_DEPTH + 1):
            raise ConfigError(f"timm config: expected a dict nested at most {MAX_JSON_DEPTH} deep, got {show(data)}")
        arch = data.get("architecture", "")
        match = re.fullmatch(r"mobilevitv2_(\d{3})(?:\..*)?", arch, flags=re.DOTALL) if isinstance(arch, str) else None
        if not match:
            raise ConfigError(f"timm architecture {show(arch)} is not a MobileViTV2 (expected mobilevitv2_050 ... mobilevitv2_200)",
                              field="architecture")
        kwargs: dict = {"width_multiplier": int(match[1]) / 100}
        num_classes = data.get("num_classes", 1000)
        if not (is_integer(num_classes) and 0 <= num_classes <= MAX_LABELS):
            raise ConfigError(f"timm config: num_classes={show(num_classes)} is invalid; allowed: an integer from 0 to {MAX_LABELS}",
                              field="num_classes")
        names = data.get("label_names")
        if isinstance(names, list) and len(names) == num_classes:
            if not all(isinstance(n, str) for n in names):
                raise ConfigError("timm config: label_names must hold strings", field="label_names")
            kwargs["id2label"] = dict(enumerate(names))
        else:
            kwargs["num_labels"] = num_classes
        if "pretrained_cfg" in data:
            kwargs["timm_pretrained_cfg"] = copy.deepcopy(data["pretrained_cfg"])
        kwargs["timm_architecture"] = arch
        kwargs["behavior"] = "timm"  # a timm checkpoint computes timm's function unless told otherwise
        return cls(**{**kwargs, **overrides})

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "MobileViTV2Config":
        """A config from a ``config.json`` (transformers' or timm's). A missing file raises
        ``CheckpointNotFoundError`` (an OSError); anything else wrong with it, ``ConfigError``
        naming the file: not a regular file, over ``safeio.MAX_SETTINGS_BYTES`` or ``MAX_SETTINGS_VALUES``, not UTF-8, not JSON,
        nested deeper than ``safeio.MAX_JSON_DEPTH``, NaN or infinite numbers, or a field's value."""
        path = Path(path)
        if not path.exists():
            raise CheckpointNotFoundError(f"{path}: no such config file")
        data = read_settings_json(path, error=ConfigError, what="config file")
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a JSON object, found {type(data).__name__}")
        model_type = data.get("model_type")
        if "architecture" in data and model_type is None:  # timm's config.json
            try:
                return cls.from_timm_dict(data)
            except ConfigError as e:
                raise ConfigError(f"{path}: {e}", field=e.field) from None
        if model_type not in (None, cls.model_type):
            raise ConfigError(f"{path}: model_type is {show(model_type)}, expected {cls.model_type!r}", field="model_type")
        try:
            return cls.from_dict(data)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}", field=e.field) from None

    @classmethod
    def from_cvnets_yaml(cls, path: str | os.PathLike, **overrides) -> "MobileViTV2Config":
        """The config of an ml-cvnets model from the YAML file it was trained with (see
        ``numpy_mvit2.cvnets_yaml``): width, activation, and for DeepLabV3 the output stride, atrous
        rates, ASPP width and number of classes; ``behavior`` is ``"ml-cvnets"`` (ml-cvnets' own
        function) unless given."""
        from .cvnets_yaml import config_fields, read_flat_yaml

        path = Path(path)
        if not path.exists():
            raise CheckpointNotFoundError(f"{path}: no such config file")
        kwargs = {"behavior": "ml-cvnets", **config_fields(read_flat_yaml(path), str(path))}
        try:
            return cls(**{**kwargs, **overrides})
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}", field=e.field) from None

    @classmethod
    def from_file(cls, path: str | os.PathLike, **overrides) -> "MobileViTV2Config":
        """A config from a ``config.json`` (transformers', timm's or ours) or an ml-cvnets YAML file
        (``.yaml`` / ``.yml``), told apart by the name's suffix."""
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"config must be a MobileViTV2Config or the path of a config file, got {type(path).__name__}")
        if Path(path).suffix.lower() in (".yaml", ".yml"):
            return cls.from_cvnets_yaml(path, **overrides)
        config = cls.from_json_file(path)
        return cls.from_dict(config.to_dict(), **overrides) if overrides else config

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
