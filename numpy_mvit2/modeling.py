"""The public models, with transformers' class names, call signatures and output fields.

``MobileViTV2Model``, ``MobileViTV2ForImageClassification`` and
``MobileViTV2ForSemanticSegmentation`` hold a config and a nested dict of NumPy parameters, and
run their head's pixels -> output function: the readable one of ``numpy_mvit2.blocks``
(``fast=False``) or its twin in ``numpy_mvit2.fast`` (the default), chosen in one place,
``MobileViTV2PreTrainedModel._forward``. Inference only: every dropout is the identity.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, fields

import numpy as np

from . import blocks
from . import fast as fast_path
from .config import MobileViTV2Config
from .ops import (
    binary_cross_entropy_with_logits,
    cross_entropy,
    global_avg_pool,
    interpolate_bilinear,
    mse_loss,
)
from .weights import (
    align_prefix,
    check_state_dict,
    flatten,
    to_params,
)
from .weights.convert import is_folded
from .weights.files import read_weights
from .weights.init import random_state_dict
from .weights.names import SOURCE_BEHAVIORS, to_transformers_names
from .weights.shapes import infer_config

# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------


@dataclass
class ModelOutput:
    """A dataclass that also reads like transformers' ``ModelOutput``: by attribute, by key
    (``out["logits"]``), or by position over the fields that are not None (``out[0]``,
    ``out.to_tuple()``)."""

    def to_tuple(self) -> tuple:
        return tuple(getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None)

    def keys(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def __getitem__(self, key):
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(key)
            return getattr(self, key)
        return self.to_tuple()[key]

    def __contains__(self, key) -> bool:
        return key in self.keys()

    def __len__(self) -> int:
        return len(self.keys())


@dataclass
class BaseModelOutputWithPoolingAndNoAttention(ModelOutput):
    """``last_hidden_state`` [B, C5, H/32, W/32]; ``pooler_output`` [B, C5] (None without
    ``expand_output``); ``hidden_states``: the five stages' outputs when asked for;
    ``attentions``: with ``output_attentions=True``, the context scores [B, 1, P, N] of every
    transformer layer of stages 3 to 5 in order (an addition of ours: transformers has none for
    MobileViTV2, hence the class name)."""

    last_hidden_state: np.ndarray | None = None
    pooler_output: np.ndarray | None = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None


@dataclass
class ImageClassifierOutputWithNoAttention(ModelOutput):
    """``loss`` (a scalar, when labels are given), ``logits`` [B, num_labels], ``hidden_states``;
    ``attentions``: the per-layer context scores with ``output_attentions=True`` (ours only, as in
    ``BaseModelOutputWithPoolingAndNoAttention``)."""

    loss: np.ndarray | None = None
    logits: np.ndarray | None = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None


@dataclass
class SemanticSegmenterOutput(ModelOutput):
    """``loss`` (when labels are given), ``logits`` [B, num_labels, H/os, W/os], ``hidden_states``;
    ``attentions``: the per-layer context scores [B, 1, P, N] with ``output_attentions=True``
    (transformers always leaves it None for MobileViTV2)."""

    loss: np.ndarray | None = None
    logits: np.ndarray | None = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------

_DTYPES = {np.dtype(np.float32): np.float32, np.dtype(np.float64): np.float64}

_PROCESSOR_HINT = ("turn images into pixel_values with MobileViTImageProcessor: "
                   "processor(images, return_tensors='np')['pixel_values'] "
                   "(processor = MobileViTImageProcessor.from_pretrained(checkpoint))")


def _is_image_or_path(value) -> bool:
    """A PIL image, a file name, or a list of them: what a processor takes, not the model."""
    if isinstance(value, (list, tuple)) and value:
        value = value[0]
    return isinstance(value, (str, bytes, os.PathLike)) or type(value).__module__.startswith("PIL.")


def _what_it_is(value) -> str:
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} whose first item is {_what_it_is(value[0])}"
    if isinstance(value, (str, bytes, os.PathLike)):
        return f"a file name ({value!r})" if len(str(value)) <= 200 else "a file name"
    return f"a PIL image ({type(value).__name__})"


def _resolve_dtype(dtype):
    if dtype is None:
        return np.float32
    try:
        resolved = _DTYPES.get(np.dtype(dtype))
    except TypeError:
        resolved = None
    if resolved is None:
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    return resolved


class MobileViTV2PreTrainedModel:
    """What the three models share: a config, parameters, loading, input checks.

    ``Model(config)`` draws seeded random weights (``seed=``; not pretrained, see
    ``numpy_mvit2.weights.init``); ``Model(config, state_dict=...)`` takes tensors under
    transformers' names; ``Model.from_pretrained(folder)`` reads a checkpoint folder.
    ``dtype`` is float32 (default) or float64: the whole forward pass then runs in that precision.
    Batch norms are folded into their convolutions unless ``fold_batch_norm=False``.

    ``fast`` (default True) runs the forward pass of ``numpy_mvit2.fast`` (NHWC, fused row bands;
    its weight layout is built once, here, and kept in ``model._plan``); ``fast=False`` runs the
    readable reference of ``numpy_mvit2.blocks``. Both compute the same function to round-off;
    switch at any time with ``model.fast = ...``. With ``fold_batch_norm=False`` the fast path folds
    the batch norms into its own copy of the weights. After changing ``model.params`` in place, call
    ``model.rebuild_fast_plan()``.
    """

    head = "base"
    _function = "backbone"  # of numpy_mvit2.blocks and numpy_mvit2.fast: pixels -> this model's output
    base_model_prefix = "mobilevitv2"
    main_input_name = "pixel_values"

    def __init__(self, config: MobileViTV2Config, *, state_dict: dict | None = None, dtype=np.float32, seed: int = 0,
                 fold_batch_norm: bool = True, fast: bool = True, _source: str = "state_dict"):
        if not isinstance(config, MobileViTV2Config):
            raise TypeError(f"config must be a MobileViTV2Config, got {type(config).__name__}")
        config.validate()  # again: a field set after the config was made is checked only here
        self.config = config
        self.dtype = _resolve_dtype(dtype)
        if state_dict is None:
            state_dict, _source = random_state_dict(config, self.head, seed), f"random weights (seed {seed})"
        state_dict = align_prefix(dict(state_dict), self.head)
        check_state_dict(state_dict, config, self.head, _source)
        self.batch_norm_folded = fold_batch_norm or is_folded(state_dict)
        # state_dict is our own dict (align_prefix made it): emptied layer by layer as it is cast,
        # which frees seeded random weights (drawn in float64) before the fast plan's copy is made
        self.params = to_params(state_dict, self.dtype, fold=fold_batch_norm, consume=True)
        self._plan = None
        self.fast = fast
        if fast:
            self.rebuild_fast_plan()
        self.checkpoint_source = "transformers"  # whose tensor names the weights came under
        self.name_or_path = None  # what from_pretrained was given, and the file it read
        self.weights_file = None

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *, dtype=np.float32,
                        config: MobileViTV2Config | None = None, fold_batch_norm: bool = True, fast: bool = True,
                        revision: str | None = None, cache_dir: str | os.PathLike | None = None,
                        source: str | None = None, behavior: str | None = None, **config_overrides):
        """Load a checkpoint from a folder, a weights file, or a Hugging Face repo id.

        - weights: ``model.safetensors``, a sharded ``model.safetensors.index.json``,
          ``pytorch_model.bin`` (read without PyTorch, through a restricted unpickler) or a sharded
          ``pytorch_model.bin.index.json``, in that order of preference, as transformers prefers
          them; a path to one file (``.safetensors``, ``.bin``, ``.pt``, ``.pth``) is read as it is.
        - names: transformers', timm's (``stem.conv.weight``, ``stages.3.1.transformer.0...``) or
          ml-cvnets' (``conv_1.block.conv.weight``, ``layer_4.1.global_rep...``), recognised by the
          names (or forced with ``source="transformers" | "timm" | "cvnets"``) and renamed to
          transformers' (see ``numpy_mvit2.weights.names``).
        - config: ``config=`` (a ``MobileViTV2Config``, or the path of a ``config.json`` or of an
          ml-cvnets YAML config) if given, else the checkpoint's ``config.json`` (transformers', timm's
          or ours), else an ml-cvnets YAML config beside the weights (see ``hub.resolve_checkpoint``),
          else inferred from the tensor shapes; keyword arguments override its fields.
        - behavior: whose function the model computes, "transformers", "timm" or "ml-cvnets" (see
          ``config.BEHAVIORS``). ``behavior=`` wins; else the config's, when it records one (a
          ``config.json`` saved by this project does; transformers' has none); else the
          checkpoint's own framework's, from its tensor names. ``model.config.behavior`` says
          which was chosen. ``patch_remainder=`` and ``dilate_local_conv=`` override one choice each.
        - repo ids are resolved through ``huggingface_hub`` (``revision=`` picks a branch, tag, commit
          or ``"refs/pr/N"``); with ``HF_HUB_OFFLINE=1`` only the local cache is read.

        Strict: every tensor the config implies must be present with its shape, and nothing else
        (BN's ``num_batches_tracked`` aside); all problems are reported in one error."""
        from .hub import resolve_checkpoint

        if behavior is not None:  # checked before any file is read
            MobileViTV2Config(behavior=behavior)
            # the behavior's whole set of choices: overrides stored in a config.json give way,
            # those given in this call stay
            config_overrides = {"patch_remainder": None, "dilate_local_conv": None, **config_overrides, "behavior": behavior}
        if config is not None and not isinstance(config, MobileViTV2Config):
            config = MobileViTV2Config.from_file(config)
        checkpoint = resolve_checkpoint(pretrained_model_name_or_path, revision=revision, cache_dir=cache_dir,
                                        config_given=config is not None)
        state, source = to_transformers_names(read_weights(checkpoint.weights), source)
        described = str(checkpoint.weights) + ("" if source == "transformers" else f" ({source} names, renamed to transformers')")
        if config is None and checkpoint.config is not None:
            config = MobileViTV2Config.from_file(checkpoint.config)
        if config is not None:
            chosen = config_overrides.get("behavior") or config.behavior or SOURCE_BEHAVIORS[source]
            config = MobileViTV2Config.from_dict(config.to_dict(), **{**config_overrides, "behavior": chosen})
        else:
            config_overrides.setdefault("behavior", SOURCE_BEHAVIORS[source])
            if source == "cvnets" and cls.head == "segmentation" and "output_stride" not in config_overrides:
                warnings.warn(f"{checkpoint.weights}: ml-cvnets weights without their YAML config; the output stride "
                              "cannot be read off the weights, so the backbone is undilated (output stride 32). "
                              "ml-cvnets' DeepLabV3 models are trained at 16 or 8: pass output_stride= (and "
                              "atrous_rates=), config='path/to/config.yaml', or put the YAML beside the weights",
                              stacklevel=2)
            config = infer_config(align_prefix(state, cls.head), cls.head, source=described, **config_overrides)
        model = cls(config, state_dict=state, dtype=dtype, fold_batch_norm=fold_batch_norm, fast=fast, _source=described)
        model.checkpoint_source = source
        model.name_or_path = os.fspath(pretrained_model_name_or_path)
        model.weights_file = checkpoint.weights
        return model

    def state_dict(self) -> dict[str, np.ndarray]:
        """The parameters under transformers' names. With batch norm folded (the default), each
        layer's four ``normalization`` tensors are replaced by a ``convolution.bias``: such a dict
        loads back into these models (``Model(config, state_dict=...)``) but not into transformers;
        load with ``fold_batch_norm=False`` for a dict transformers accepts."""
        return flatten(self.params)

    def num_parameters(self) -> int:
        return sum(v.size for v in self.state_dict().values())

    def _pixels(self, pixel_values) -> np.ndarray:
        if pixel_values is None:
            raise ValueError("You have to specify pixel_values")
        if _is_image_or_path(pixel_values):  # np.asarray would make it an array of shape () or (H, W, 3)
            raise ValueError(f"pixel_values must be an array (batch, channels, height, width), got "
                             f"{_what_it_is(pixel_values)}; {_PROCESSOR_HINT}")
        x = np.asarray(pixel_values)
        if x.ndim != 4:
            raise ValueError(f"pixel_values must be a 4-D array (batch, channels, height, width), got shape {x.shape}"
                             + (f"; {_PROCESSOR_HINT}" if x.ndim in (2, 3) else ""))
        if x.shape[1] != self.config.num_channels:
            raise ValueError(
                f"pixel_values has {x.shape[1]} channel{'' if x.shape[1] == 1 else 's'} (shape {x.shape}) but the "
                f"config expects num_channels={self.config.num_channels}; arrays are channels-first (B, C, H, W)"
            )
        if x.shape[0] == 0:
            raise ValueError("pixel_values holds an empty batch")
        if x.dtype.kind not in "biuf":
            raise ValueError(f"pixel_values must hold numbers, got dtype {x.dtype}")
        self.config.check_input_size(*x.shape[-2:])
        if x.dtype == np.float64 and self.dtype is np.float32:
            # once per calling line (Python's default warning filter): float64 input is computed in
            # float32, and a user who wanted double precision needs to know how to get it
            warnings.warn("pixel_values are float64 but the model runs in float32: the input is cast to float32 "
                          "and the outputs are float32; load the model with dtype=np.float64 to run in double "
                          "precision", UserWarning, stacklevel=4)  # the caller of model(...)
        return np.ascontiguousarray(x, dtype=self.dtype)

    def rebuild_fast_plan(self) -> None:
        """(Re)build the fast path's weight layout from ``self.params``."""
        self._plan = fast_path.build_plan(self.params, self.config, self.dtype, self.head)

    def _forward(self, pixel_values, record=None, fast=None):
        """The head's pixels -> output function (``blocks.backbone``, ``blocks.image_classification``
        or ``blocks.semantic_segmentation``, or its twin in ``numpy_mvit2.fast``), on checked pixels:
        the one place that picks the fast or the readable path. ``record``: None, or the hook that
        receives the named intermediate values (see ``numpy_mvit2.blocks``; the fast path records
        the stage outputs, the context scores and the pooled features). ``fast``: the path, when not
        ``self.fast``'s."""
        pixels = self._pixels(pixel_values)
        if self.fast if fast is None else fast:
            if self._plan is None or self._plan.choices != fast_path.plan_choices(self.config):
                self.rebuild_fast_plan()  # built for other choices (config.behavior set since)
            return getattr(fast_path, self._function)(pixels, self._plan, record=record)
        return self._readable(pixels, self.params, record or blocks.ignore)

    def _readable(self, pixels, params, record=blocks.ignore):
        """The readable path: this head's function of ``numpy_mvit2.blocks`` on ``params``.
        ``numpy_mvit2.training`` calls it with the pixels and parameters on its tape."""
        return getattr(blocks, self._function)(pixels, **params, config=self.config, record=record)

    def _run(self, pixel_values, output_hidden_states, output_attentions):
        """``_forward``, keeping what the caller asked for: (output, hidden_states, attentions),
        the last two tuples or None (the five stage outputs; each transformer layer's context
        scores [B, 1, P, N], stages 3 to 5 in order)."""
        if output_attentions is None:
            output_attentions = getattr(self.config, "output_attentions", False)
        stages = [f"encoder.layer.{spec.index}" for spec in self.config.stages] if output_hidden_states else []
        kept, scores = {}, []

        def record(name, array):
            if name in stages:
                kept[name] = array
            elif output_attentions and name.endswith(".attention.scores"):
                scores.append(array)

        output = self._forward(pixel_values, record if stages or output_attentions else None)
        hidden_states = tuple(kept[name] for name in stages) if output_hidden_states else None
        return output, hidden_states, (tuple(scores) if output_attentions else None)

    def _flags(self, output_hidden_states, return_dict):
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        if return_dict is None:
            return_dict = self.config.return_dict
        return output_hidden_states, return_dict

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r}, dtype={np.dtype(self.dtype).name})"


class MobileViTV2Model(MobileViTV2PreTrainedModel):
    """The backbone: conv stem and five stages; ``pooler_output`` is the spatial mean of the last
    stage (left out with ``expand_output=False``)."""

    def __init__(self, config: MobileViTV2Config, expand_output: bool = True, **kwargs):
        super().__init__(config, **kwargs)
        self.expand_output = expand_output

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *, expand_output: bool = True, **kwargs):
        model = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        model.expand_output = expand_output
        return model

    def __call__(self, pixel_values=None, output_hidden_states=None, return_dict=None, output_attentions=None):
        """``output_attentions=True`` adds ``attentions``: each transformer layer's context scores
        [B, 1, P, N] (softmax over the N patches), stages 3 to 5 in order. transformers offers no
        attentions for MobileViTV2; this is ours. With ``return_dict=False`` they come last."""
        output_hidden_states, return_dict = self._flags(output_hidden_states, return_dict)
        last, hidden_states, attentions = self._run(pixel_values, output_hidden_states, output_attentions)
        pooled = global_avg_pool(last) if self.expand_output else None
        if not return_dict:
            return tuple(v for v in (last, pooled, hidden_states, attentions) if v is not None)
        return BaseModelOutputWithPoolingAndNoAttention(last_hidden_state=last, pooler_output=pooled, hidden_states=hidden_states,
                                                        attentions=attentions)


class MobileViTV2ForImageClassification(MobileViTV2PreTrainedModel):
    """The backbone, its pooled features, and a linear classifier (the identity when num_labels is 0)."""

    head = "classification"
    _function = "image_classification"
    _head_function = "classification_head"  # of numpy_mvit2.blocks: the backbone's output -> this model's

    def __call__(self, pixel_values=None, output_hidden_states=None, labels=None, return_dict=None, output_attentions=None):
        """``output_attentions=True`` adds the per-layer context scores (see ``MobileViTV2Model``;
        not offered by transformers)."""
        output_hidden_states, return_dict = self._flags(output_hidden_states, return_dict)
        logits, hidden_states, attentions = self._run(pixel_values, output_hidden_states, output_attentions)
        loss = None if labels is None else self.loss_function(labels, logits)
        if not return_dict:
            return tuple(v for v in (loss, logits, hidden_states, attentions) if v is not None)
        return ImageClassifierOutputWithNoAttention(loss=loss, logits=logits, hidden_states=hidden_states, attentions=attentions)

    def loss_function(self, labels, logits):
        """transformers' ``ForSequenceClassificationLoss``. If ``config.problem_type`` is unset it is
        chosen, and written into the config as transformers does: "regression" for one label,
        "single_label_classification" for integer labels, else "multi_label_classification".
        (transformers accepts only int32/int64 labels as class indices; any integer dtype is accepted here.)"""
        config = self.config
        labels = np.asarray(labels)
        if config.problem_type is None:
            if config.num_labels == 1:
                config.problem_type = "regression"
            elif config.num_labels > 1 and np.issubdtype(labels.dtype, np.integer):
                config.problem_type = "single_label_classification"
            else:
                config.problem_type = "multi_label_classification"
        if config.problem_type == "regression":
            labels = labels.astype(logits.dtype)
            if config.num_labels == 1:
                return mse_loss(logits.squeeze(), labels.squeeze())
            return mse_loss(logits, labels)
        if config.problem_type == "single_label_classification":
            return cross_entropy(logits.reshape(-1, config.num_labels), labels.reshape(-1))
        if labels.dtype.kind not in "biuf":
            raise ValueError(f"multi-label targets must be numbers, got dtype {labels.dtype}")
        return binary_cross_entropy_with_logits(logits, labels.astype(logits.dtype))


class MobileViTV2ForSemanticSegmentation(MobileViTV2PreTrainedModel):
    """The backbone and a DeepLabV3 head (ASPP) on its last stage: per-pixel logits at
    1/output_stride of the input size."""

    head = "segmentation"
    _function = "semantic_segmentation"
    _head_function = "deeplabv3"

    def __call__(self, pixel_values=None, labels=None, output_hidden_states=None, return_dict=None, output_attentions=None):
        """``output_attentions=True`` fills ``attentions`` with the per-layer context scores (see
        ``MobileViTV2Model``; transformers leaves it None)."""
        output_hidden_states, return_dict = self._flags(output_hidden_states, return_dict)
        if labels is not None and self.config.num_labels == 1:
            raise ValueError("The number of labels should be greater than one")
        logits, hidden_states, attentions = self._run(pixel_values, output_hidden_states, output_attentions)
        loss = None if labels is None else self.loss_function(labels, logits)
        if not return_dict:
            return tuple(v for v in (loss, logits, hidden_states, attentions) if v is not None)
        return SemanticSegmenterOutput(loss=loss, logits=logits, hidden_states=hidden_states, attentions=attentions)

    def loss_function(self, labels, logits):
        """transformers': the logits upsampled (bilinear, ``align_corners=False``) to the labels'
        size, then cross-entropy ignoring ``config.semantic_loss_ignore_index``."""
        if self.config.num_labels == 1:
            raise ValueError("The number of labels should be greater than one")
        labels = np.asarray(labels)
        if labels.ndim != 3 or labels.shape[0] != logits.shape[0]:
            raise ValueError(f"labels must have shape (batch, height, width) = ({logits.shape[0]}, H, W), got {labels.shape}")
        upsampled = interpolate_bilinear(logits, labels.shape[-2:])
        return cross_entropy(upsampled, labels, ignore_index=self.config.semantic_loss_ignore_index)
