"""Layer-by-layer comparison of a ``numpy_mvit2`` model with transformers' PyTorch model.

Both models run on the same pixels; every named layer's output is recorded on both sides and
compared, in float32 and in float64. The names are transformers' module names (the head model's
``mobilevitv2.`` prefix left out), so a row points at one module of ``modeling_mobilevitv2.py`` and
one call in ``numpy_mvit2.blocks``::

    >>> from numpy_mvit2.crosscheck import crosscheck
    >>> report = crosscheck(checkpoint="path/to/checkpoint-folder")    # or crosscheck(ours, theirs)
    >>> print(report)                   # a table: layer, shape, max |error| and relative error
    >>> report.first_divergence         # None, or the first layer beyond the tolerance
    >>> report.rows                     # the same table as a list of dicts

PyTorch and transformers are needed only here, and are imported inside the functions that use
them: ``import numpy_mvit2`` never loads them.

Our side is the model's readable path with its ``record`` hook (:func:`trace`): the values
``numpy_mvit2.blocks`` computes on the way, not a re-run of our own. :func:`crosscheck` also
compares the model's own output (its ``__call__``, whatever path that takes, fast by default)
with PyTorch's, as the table's last row.

The relative error of a layer is the project's measure ``max|ours - torch| / (1 + max|torch|)``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .architecture import describe
from .ops import global_avg_pool

DEFAULT_TOLERANCE = {"float32": 1e-4, "float64": 1e-10}
"""Relative error beyond which a layer is said to diverge: float32 round-off through the whole
network stays near 1e-6 on randomized weights, float64 near 1e-14."""


def _require(name: str):
    """Import PyTorch or transformers for a cross-check, saying how to get them when missing."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise ImportError(f"numpy_mvit2.crosscheck compares against transformers' PyTorch model and needs {name}: "
                          f"pip install torch transformers ({error})") from None


_TORCH_CLASSES = {
    "base": "MobileViTV2Model",
    "classification": "MobileViTV2ForImageClassification",
    "segmentation": "MobileViTV2ForSemanticSegmentation",
}


# --------------------------------------------------------------------------------------------
# The layers, by name
# --------------------------------------------------------------------------------------------


# The compared outputs: for each layer of ``architecture.describe``, the module whose output is
# compared (the parts of an inverted residual, of an attention or of a feed-forward network are
# compared as one); after a transformer layer's ``ffn``, the layer itself; after a stage's
# ``layernorm``, ``fold``; the pooled features and the classifier (an identity without labels).
_UNITS = (".expand_1x1", ".conv_3x3", ".reduce_1x1", ".qkv_proj", ".out_proj", ".conv1", ".conv2")


def _unit(name: str) -> str | None:
    if name.endswith((".layernorm_before", ".layernorm_after")):
        return None  # inside the attention and ffn branches
    if name.startswith("segmentation_head.aspp."):
        return "segmentation_head.aspp"
    return name.rsplit(".", 1)[0] if name.endswith(_UNITS) else name


def layer_names(config, head: str = "base", expand_output: bool = True) -> list[tuple[str, str]]:
    """``(name, stage label)`` of every compared output, in forward order: the names
    ``numpy_mvit2.blocks`` records them under, derived from the layers of
    ``architecture.describe``.

    Per MobileViT stage: ``downsampling_layer``, the local representation (``conv_kxk``, then
    ``conv_1x1``), each transformer layer's ``attention`` and ``ffn`` branches and its output,
    ``layernorm``, ``fold`` (the patches folded back to a map: the input of ``conv_projection``)
    and ``conv_projection`` (the stage's output). Per MobileNet stage: each inverted residual.
    """
    names: dict[str, str] = {}
    for layer in describe(config, head):
        unit = None if layer.kind == "linear" else _unit(layer.name)
        if unit is None or unit in names:
            continue
        if unit.endswith(".conv_projection"):
            names[unit[: -len("conv_projection")] + "fold"] = layer.stage
        names[unit] = layer.stage
        if unit.endswith(".ffn"):
            names[unit[: -len(".ffn")]] = layer.stage
    if head == "base" and expand_output or head == "classification":
        names["pooler"] = "head"
    if head == "classification":  # a linear layer, or nn.Identity without labels
        names["classifier"] = "head"
    return list(names.items())


def _head_of(model) -> str:
    return getattr(model, "head", "base")


def trace(model, pixel_values) -> dict[str, np.ndarray]:
    """Run ``model`` (a ``numpy_mvit2`` model) on ``pixel_values`` on its readable path
    (``numpy_mvit2.blocks``, whatever ``model.fast`` says) and return every output of
    :func:`layer_names`, in forward order, as ``blocks``' ``record`` hook receives them."""
    recorded: dict[str, np.ndarray] = {}
    output = model._forward(pixel_values, recorded.__setitem__, fast=False)
    head = _head_of(model)
    if head == "base" and getattr(model, "expand_output", True):
        recorded["pooler"] = global_avg_pool(output)  # MobileViTV2Model's pooler_output
    return {name: recorded[name] for name, _ in layer_names(model.config, head, getattr(model, "expand_output", True))}


def reference_trace(torch_model, pixel_values, config=None) -> dict[str, np.ndarray]:
    """Run a transformers ``MobileViTV2*`` model on ``pixel_values`` with forward hooks on the
    modules of :func:`layer_names` and return their outputs as NumPy arrays, in the model's dtype.
    ``fold`` is read as the input of ``conv_projection``, ``pooler`` as the input of the classifier
    (or the base model's ``pooler_output``). ``config``: our ``MobileViTV2Config`` for the model
    (read off the torch model's config when not given)."""
    torch = _require("torch")

    head = {v: k for k, v in _TORCH_CLASSES.items()}.get(type(torch_model).__name__, "base")
    prefix = "" if head == "base" else f"{torch_model.base_model_prefix}."
    modules = dict(torch_model.named_modules())
    if config is None:
        config = _our_config(torch_model)
    names = [name for name, _ in layer_names(config, head, getattr(torch_model, "expand_output", True))]
    recorded: dict[str, np.ndarray] = {}

    def keep(name):
        def hook(module, inputs, output):
            recorded[name] = output.detach().cpu().numpy().copy()
        return hook

    def keep_input(name):
        def hook(module, inputs):
            recorded[name] = inputs[0].detach().cpu().numpy().copy()
        return hook

    handles = []
    for name in names:
        if name.endswith(".fold"):
            handles.append(modules[prefix + name[: -len("fold")] + "conv_projection"].register_forward_pre_hook(keep_input(name)))
        elif name == "pooler" and head == "classification":
            handles.append(modules["classifier"].register_forward_pre_hook(keep_input(name)))
        elif name == "pooler":
            continue  # read off the output below
        else:
            module_name = name if name.startswith(("classifier", "segmentation_head")) else prefix + name
            handles.append(modules[module_name].register_forward_hook(keep(name)))
    dtype = next(torch_model.parameters()).dtype
    try:
        with torch.no_grad():
            output = torch_model(torch.from_numpy(np.asarray(pixel_values)).to(dtype))
    finally:
        for h in handles:
            h.remove()
    if head == "base" and "pooler" in names:
        recorded["pooler"] = output.pooler_output.detach().cpu().numpy().copy()
    return {name: recorded[name] for name in names}


# --------------------------------------------------------------------------------------------
# timm's and ml-cvnets' choices, applied to transformers' PyTorch model
# --------------------------------------------------------------------------------------------


def _our_config(torch_model):
    from .config import MobileViTV2Config

    fields = MobileViTV2Config.__dataclass_fields__
    return MobileViTV2Config(**{k: v for k, v in torch_model.config.to_dict().items() if k in fields and k != "label2id"})


def apply_behavior(torch_model, behavior: str | None = None, *, config=None):
    """A copy of transformers' PyTorch ``MobileViTV2*`` model that computes another framework's
    function with the same weights: the choices of ``behavior`` ("transformers", "timm",
    "ml-cvnets"), or those of ``config`` (a ``MobileViTV2Config``, its overrides included).
    Two changes, the only ones between the three (see ``config.FrameworkChoices``):

    - the local conv (``conv_kxk``) of each dilated stage gets the stage's dilation, and padding
      ``(k - 1) // 2 * dilation`` to keep the size (ml-cvnets: ``MobileViTv2._make_mit_layer``
      passes ``dilation=self.dilation`` to ``MobileViTBlockv2``, whose ``local_rep.0`` is a
      ``ConvLayer2d(..., dilation=dilation, groups=in_channels)`` padded ``(k - 1) / 2 * dilation``);
    - the input of ``conv_kxk`` is resized (bilinear, ``align_corners=True``) up to a multiple of
      the patch size (``MobileViTBlockv2.resize_input_if_needed``, called first in
      ``forward_spatial``), by a forward pre-hook; transformers' unfold and fold then see the
      resized size, as ml-cvnets' do.

    The model given is not modified. This is how the tests build the ml-cvnets reference (ml-cvnets
    cannot be installed from the package index); the tests check it against timm's own models,
    which make both changes themselves."""
    torch = _require("torch")
    from .config import BEHAVIORS

    if config is None:
        if behavior not in BEHAVIORS:
            raise ValueError(f"behavior must be one of {tuple(BEHAVIORS)}, got {behavior!r}")
        config = _our_config(torch_model)
        config.behavior = behavior
    elif behavior is not None:
        raise ValueError("apply_behavior: pass behavior or config, not both")
    choices = config.choices
    model = copy.deepcopy(torch_model)
    base = getattr(model, model.base_model_prefix, model) if hasattr(model, "base_model_prefix") else model
    p = config.patch_size

    def resize(module, inputs):  # marked below, so that a later apply_behavior can take it away
        x = inputs[0]
        height, width = x.shape[-2:]
        size = (-(-height // p) * p, -(-width // p) * p)
        if size == (height, width):
            return None
        return (torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=True),)

    resize.numpy_mvit2_resize = True
    for spec in config.stages:
        if spec.kind != "mobilevit":
            continue
        layer = base.encoder.layer[spec.index]
        conv = layer.conv_kxk.convolution
        d, k = spec.local_dilation, conv.kernel_size[0]
        conv.dilation, conv.padding = (d, d), ((k - 1) // 2 * d, (k - 1) // 2 * d)
        hooks = layer.conv_kxk._forward_pre_hooks  # an earlier apply_behavior's resize, if any, goes
        for key in [key for key, hook in hooks.items() if getattr(hook, "numpy_mvit2_resize", False)]:
            del hooks[key]
        if choices.patch_remainder == "resize":
            layer.conv_kxk.register_forward_pre_hook(resize)
    model.config.behavior = config.behavior
    return model.eval()


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------


@dataclass
class CrosscheckReport:
    """The result of :func:`crosscheck`.

    ``rows``: one dict per layer in forward order, with keys ``layer``, ``stage``, ``shape`` and,
    per compared dtype ``dt``, ``max_abs_{dt}`` (``max|ours - torch|``), ``rel_{dt}``
    (``max|ours - torch| / (1 + max|torch|)``) and ``scale_{dt}`` (``max|torch|``); ``diverged``
    says whether some dtype's relative error exceeds its tolerance. ``first_divergence`` is the
    first such layer's name, or None. ``str(report)`` is a fixed-width table."""

    rows: list[dict]
    dtypes: tuple[str, ...]
    tolerance: dict[str, float]
    first_divergence: str | None
    head: str
    input_shape: tuple[int, ...]
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.first_divergence is None

    def row(self, layer: str) -> dict:
        for row in self.rows:
            if row["layer"] == layer:
                return row
        raise KeyError(layer)

    def max_error(self, dtype: str = "float32") -> float:
        """The largest relative error of any layer in ``dtype``."""
        return max(row[f"rel_{dtype}"] for row in self.rows)

    def table(self) -> str:
        width = max(len(r["layer"]) for r in self.rows)
        header = f"{'layer':<{width}}  {'shape':<20}"
        # crosscheck_gradients adds, for float32, PyTorch's own float32 error (against its float64)
        torch_own = [dt for dt in self.dtypes if any(f"torch_rel_{dt}" in r for r in self.rows)]
        for dt in self.dtypes:
            header += f"  {'max|err| ' + dt:>17}  {'rel ' + dt:>12}"
            header += f"  {'torch rel ' + dt:>17}" if dt in torch_own else ""
        lines = [header, "-" * len(header)]
        for r in self.rows:
            line = f"{r['layer']:<{width}}  {tuple(r['shape'])!s:<20}"
            for dt in self.dtypes:
                line += f"  {r[f'max_abs_{dt}']:>17.3e}  {r[f'rel_{dt}']:>12.3e}"
                line += f"  {r.get(f'torch_rel_{dt}', float('nan')):>17.3e}" if dt in torch_own else ""
            lines.append(line + ("  <- diverges" if r["layer"] == self.first_divergence else ""))
        return "\n".join(lines)

    def summary(self) -> str:
        tol = ", ".join(f"{dt} {self.tolerance[dt]:g}" for dt in self.dtypes)
        head = f"{self.head} model, input {tuple(self.input_shape)}, {len(self.rows)} layers, tolerance (relative): {tol}"
        worst = "; ".join(f"largest {dt} error {self.max_error(dt):.2e}" for dt in self.dtypes)
        verdict = "no layer diverges" if self.passed else f"first divergence: {self.first_divergence}"
        return "\n".join([head, f"{verdict}; {worst}", *self.notes])

    def __str__(self) -> str:
        return self.table() + "\n\n" + self.summary()


def _errors(ours: np.ndarray, theirs: np.ndarray) -> tuple[float, float, float]:
    if ours.shape != theirs.shape:
        return float("inf"), float("inf"), float("nan")
    ours, theirs = ours.astype(np.float64), theirs.astype(np.float64)
    diff = np.abs(ours - theirs)
    max_abs = float(diff.max()) if diff.size else 0.0
    if not np.isfinite(max_abs):
        max_abs = float("inf")
    scale = float(np.abs(theirs).max()) if theirs.size else 0.0
    return max_abs, max_abs / (1.0 + scale), scale


def _main_output(output, head):
    return output.last_hidden_state if head == "base" else output.logits


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def _with_behavior(model, behavior):
    """The same model computing ``behavior``'s function (its config copied, the parameters shared)."""
    from .config import MobileViTV2Config

    config = MobileViTV2Config.from_dict(model.config.to_dict(), behavior=behavior, patch_remainder=None,
                                         dilate_local_conv=None)
    kwargs = {"expand_output": model.expand_output} if _head_of(model) == "base" else {}
    return type(model)(config, state_dict=model.state_dict(), dtype=model.dtype, fold_batch_norm=model.batch_norm_folded,
                       **kwargs)


def _with_dtype(model, dtype):
    """The same model (same parameters, BN folded or not as it is) in another precision."""
    if model.dtype == dtype:
        return model
    kwargs = {"expand_output": model.expand_output} if _head_of(model) == "base" else {}
    return type(model)(model.config, state_dict=model.state_dict(), dtype=dtype,
                       fold_batch_norm=model.batch_norm_folded, **kwargs)


def load_pair(checkpoint, head: str | None = None, behavior: str | None = None):
    """Load a checkpoint (a folder) into both libraries: ours in float64 (float32 is derived from it
    exactly) with ``behavior`` (by default the checkpoint's own, see ``from_pretrained``),
    transformers' in eval mode, as transformers computes it (``crosscheck`` applies our behavior to
    a copy). ``head`` is "base", "classification" or "segmentation"; by default it is read off
    ``config.json``'s ``architectures`` (``MobileViTV2Model`` when absent)."""
    transformers = _require("transformers")

    from . import modeling
    from .config import MobileViTV2Config

    if head is None:
        config = MobileViTV2Config.from_pretrained(checkpoint) if Path(checkpoint).is_dir() else None
        architectures = (config.extra.get("architectures") if config is not None else None) or []
        by_class = {v: k for k, v in _TORCH_CLASSES.items()}
        head = next((by_class[a] for a in architectures if a in by_class), "base")
    ours_class = {"base": modeling.MobileViTV2Model, "classification": modeling.MobileViTV2ForImageClassification,
                  "segmentation": modeling.MobileViTV2ForSemanticSegmentation}[head]
    ours = ours_class.from_pretrained(checkpoint, dtype=np.float64, behavior=behavior)
    theirs = getattr(transformers, _TORCH_CLASSES[head]).from_pretrained(str(checkpoint)).eval()
    return ours, theirs


def crosscheck(ours=None, theirs=None, *, checkpoint=None, head: str | None = None, pixel_values=None,
               height: int | None = None, width: int | None = None, batch_size: int = 1, seed: int = 0,
               dtypes=("float32", "float64"), tolerance: dict | None = None, behavior: str | None = None) -> CrosscheckReport:
    """Compare ``ours`` (a ``numpy_mvit2`` model) with ``theirs`` (a transformers ``MobileViTV2*``
    model of the same head), layer by layer, in float32 and float64.

    Either pass both models, or ``checkpoint=`` (a checkpoint folder) to load both from it.
    ``behavior`` ("transformers", "timm", "ml-cvnets"): the framework whose function both sides
    compute; by default ours' (``ours.config.behavior``, as loaded). Where it is not transformers',
    ``theirs`` is compared through ``apply_behavior`` (a copy with that framework's choices). The
    input is ``pixel_values`` or, by default, seeded uniform [0, 1) pixels of
    ``batch_size x num_channels x height x width`` (``config.image_size`` square by default).

    The float64 comparison is exact only if ours can be run in float64 on the checkpoint's own
    numbers: a float64 model, a checkpoint folder, or a float32 model loaded with
    ``fold_batch_norm=False``. A float32 model with folded batch norms carries float32-rounded
    folded weights; then the float64 column is left out and a note says so.

    Neither model is modified; ``theirs`` is copied before it is cast to float64.
    """
    torch = _require("torch")

    if checkpoint is not None:
        if ours is not None or theirs is not None:
            raise ValueError("crosscheck: pass either checkpoint= or both models, not both")
        ours, theirs = load_pair(checkpoint, head, behavior)
    if ours is None or theirs is None:
        raise ValueError("crosscheck: pass both models (ours, theirs) or checkpoint=")
    if not isinstance(theirs, torch.nn.Module):
        raise TypeError(f"crosscheck: theirs must be a transformers (PyTorch) model, got {type(theirs).__name__}")
    head = _head_of(ours)
    if type(theirs).__name__ != _TORCH_CLASSES[head]:
        raise TypeError(f"crosscheck: ours is a {type(ours).__name__} but theirs a {type(theirs).__name__}; "
                        f"compare {_TORCH_CLASSES[head]} with it")
    tolerance = {**DEFAULT_TOLERANCE, **(tolerance or {})}
    notes = []
    if behavior is not None and behavior != ours.config.behavior:
        ours = _with_behavior(ours, behavior)
    config = ours.config
    behavior = config.behavior or "transformers"
    if config.choices != _our_config(theirs).choices:
        theirs = apply_behavior(theirs, config=config)
        notes.append(f"behavior {behavior!r} ({config.choices}); transformers' model compared through "
                     "crosscheck.apply_behavior")
    if pixel_values is None:
        height = height or config.image_size
        width = width or height
        pixel_values = np.random.default_rng(seed).uniform(0, 1, (batch_size, config.num_channels, height, width))
    pixel_values = np.asarray(pixel_values)

    dtypes = tuple(np.dtype(d).name for d in dtypes)
    if "float64" in dtypes and ours.dtype == np.float32 and ours.batch_norm_folded:
        dtypes = tuple(d for d in dtypes if d != "float64")
        notes.append("float64 left out: this float32 model holds float32-rounded folded weights; pass a float64 "
                     "model, a checkpoint folder, or a model loaded with fold_batch_norm=False")
    if not dtypes:
        raise ValueError("crosscheck: no dtype left to compare")

    names = layer_names(config, head, getattr(ours, "expand_output", True))
    rows = [{"layer": name, "stage": stage} for name, stage in names]
    rows.append({"layer": f"output ({type(ours).__name__}.__call__)", "stage": "head"})
    for dt in dtypes:
        np_dtype = np.dtype(dt).type
        model = _with_dtype(ours, np_dtype)
        reference = copy.deepcopy(theirs).eval().to(getattr(torch, dt))
        x = pixel_values.astype(np_dtype)
        ours_trace = trace(model, x)
        theirs_trace = reference_trace(reference, x, config)
        with torch.no_grad():
            theirs_output = _main_output(reference(torch.from_numpy(x)), head).numpy()
        ours_output = _main_output(model(x), head)
        pairs = [(ours_trace[name], theirs_trace[name]) for name, _ in names] + [(ours_output, theirs_output)]
        for row, (a, b) in zip(rows, pairs):
            row["shape"] = tuple(b.shape)
            row[f"max_abs_{dt}"], row[f"rel_{dt}"], row[f"scale_{dt}"] = _errors(a, b)
    first = None
    for row in rows:
        row["diverged"] = any(not row[f"rel_{dt}"] <= tolerance[dt] for dt in dtypes)
        if row["diverged"] and first is None:
            first = row["layer"]
    return CrosscheckReport(rows=rows, dtypes=dtypes, tolerance={dt: tolerance[dt] for dt in dtypes},
                            first_divergence=first, head=head, input_shape=tuple(pixel_values.shape), notes=notes)


# --------------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------------

GRADIENT_TOLERANCE = {"float32": 1e-3, "float64": 1e-8}
"""Per tensor, ``max|ours - torch| / max|torch|`` beyond which a gradient is said to diverge."""

ZERO_GRADIENT_FLOOR = {"float32": 1e-3, "float64": 1e-6}
"""A gradient that is zero in exact arithmetic (the shift of a layer feeding a training-mode batch
norm, which subtracts it again, e.g. each MobileViT block's ``conv_projection.normalization.bias``
before the next stage's first conv) is round-off on both sides; each tensor's error is measured
against its own scale or this fraction of the model's largest gradient, whichever is larger."""

ROUNDOFF_MARGIN = 4.0
"""In float32 a gradient also passes when ``max|ours - torch64|`` is within this factor of
``max|torch32 - torch64|``, PyTorch's own float32 error. Train-mode batch norms over a few values
per channel (a 2x2 map, two images) and a softmax over one or two patches make some gradients
ill-conditioned: there PyTorch's float32 answer is itself a few per cent of its tensor's scale
from the exact one, and no float32 implementation can do much better. Ours measured within 1.3x
of PyTorch's own float32 error on every such tensor of the tests' cases; a wrong backward is off
by the tensor's scale, many times more, and float64 (1e-8) has no such allowance."""


def reference_gradients(torch_model, pixel_values, labels, *, train: bool = False, masks=()):
    """PyTorch autograd's answer to ``training.value_and_grad``: ``(loss, grads, pixel_grad,
    buffers)`` for a copy of ``torch_model`` (in its own dtype) in ``train()`` or ``eval()`` mode.
    ``masks``: the dropout masks ours drew (booleans, in the order the forward reaches its dropouts
    with a nonzero probability), applied in place of PyTorch's own draws by forward hooks.
    ``buffers``: the state dict's running statistics after the step. The model given is not
    modified."""
    torch = _require("torch")
    model = copy.deepcopy(torch_model).train(train)
    dtype = next(model.parameters()).dtype
    pending = list(masks)

    def replace(module, inputs, output):
        if not module.training or module.p == 0:
            return None
        if not pending:
            raise ValueError("reference_gradients: more dropouts with a nonzero probability than masks given (pass the "
                             "masks ours drew, or set the dropout probabilities to 0)")
        keep = torch.from_numpy(np.asarray(pending.pop(0)))
        return inputs[0] * torch.where(keep, torch.tensor(1 / (1 - module.p), dtype=dtype), torch.tensor(0, dtype=dtype))

    for module in model.modules():
        if isinstance(module, (torch.nn.Dropout, torch.nn.Dropout2d)):
            module.register_forward_hook(replace)
    x = torch.tensor(np.asarray(pixel_values), dtype=dtype, requires_grad=True)
    head = next((h for h, name in _TORCH_CLASSES.items() if name == type(model).__name__), "base")
    if head == "base":
        output = model(x).last_hidden_state
        loss = (output * torch.as_tensor(np.asarray(labels), dtype=dtype)).sum()
    else:
        target = torch.as_tensor(np.asarray(labels))
        loss = model(x, labels=target if not target.is_floating_point() else target.to(dtype)).loss
    loss.backward()
    grads = {name: p.grad.detach().numpy() if p.grad is not None else np.zeros(p.shape, dtype=p.detach().numpy().dtype)
             for name, p in model.named_parameters()}
    buffers = {name: value.detach().numpy() for name, value in model.state_dict().items() if "running_" in name}
    return float(loss.detach()), grads, x.grad.detach().numpy(), buffers


def _gradient_errors(ours, theirs, floor):
    if ours.shape != theirs.shape:
        return float("inf"), float("inf"), float("nan")
    diff = np.abs(ours.astype(np.float64) - theirs.astype(np.float64))
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(theirs).max()) if theirs.size else 0.0
    return max_abs, (max_abs / max(scale, floor) if max_abs else 0.0), scale


def _in_row_order(names, buffer_names, loss, grads, pixel_grad, state):
    """``[(row name, value)]`` in the report's order: the loss, the parameters ``names`` reversed
    (the order the backward reaches them), the input gradient, the running statistics
    ``buffer_names`` after the step (``state``: where they are read)."""
    rows = [("loss", loss), *((name, grads[name]) for name in reversed(names)),
            ("pixel_values (input gradient)", pixel_grad),
            *((f"{name} (after the step)", state[name]) for name in buffer_names)]
    return [(name, np.asarray(value)) for name, value in rows]


def crosscheck_gradients(ours, theirs, pixel_values, labels, *, train: bool = False, dtypes=("float32", "float64"),
                         tolerance: dict | None = None, seed: int = 0) -> CrosscheckReport:
    """Compare ``training.value_and_grad(ours, ...)`` with PyTorch autograd on ``theirs`` (the
    transformers model of the same head, through ``apply_behavior`` when ours computes another
    framework's function): every parameter's gradient, the input's, the loss, and in train mode
    the running statistics after the step, ours in float32 and in float64, each against
    PyTorch's float64 gradients (the exact answer to round-off). PyTorch's float32 ones are not
    always within 1e-3 of it: float32 rows also carry PyTorch's own float32 error
    (``torch_max_abs_float32``, ``torch_rel_float32``), and a float32 gradient within
    ``ROUNDOFF_MARGIN`` of it passes. ``ours`` must hold unfolded
    batch norms (``fold_batch_norm=False``); neither model is modified (ours runs on a copy).

    The rows are in the order the backward pass reaches them: the loss, then the head's
    parameters, the last stage's, ... the stem's, the input gradient last; ``first_divergence``
    is thus the parameter nearest the loss whose gradient is beyond ``tolerance``
    (``GRADIENT_TOLERANCE``): where an error starts, since it spreads to all before it. Each
    row's ``rel_{dt}`` is ``max|ours - torch| / max|torch|`` (see ``ZERO_GRADIENT_FLOOR``); the
    running statistics are compared the same way."""
    from . import training

    torch = _require("torch")
    if ours.batch_norm_folded:
        raise ValueError("crosscheck_gradients: load ours with fold_batch_norm=False (transformers' gradients are "
                         "those of its unfolded batch norms)")
    head = _head_of(ours)
    if type(theirs).__name__ != _TORCH_CLASSES[head]:
        raise TypeError(f"crosscheck_gradients: ours is a {type(ours).__name__} but theirs a {type(theirs).__name__}")
    tolerance = {**GRADIENT_TOLERANCE, **(tolerance or {})}
    notes = []
    config = ours.config
    if config.choices != _our_config(theirs).choices:
        theirs = apply_behavior(theirs, config=config)
        notes.append(f"behavior {config.behavior!r}; transformers' model compared through crosscheck.apply_behavior")
    dtypes = tuple(np.dtype(d).name for d in dtypes)
    reference = copy.deepcopy(theirs).to(torch.float64)
    rows = None
    for dt in dtypes:
        kwargs = {"expand_output": ours.expand_output} if head == "base" else {}
        model = type(ours)(config, state_dict=ours.state_dict(), dtype=np.dtype(dt).type, fold_batch_norm=False,
                           fast=False, **kwargs)  # a copy: a training step moves its running statistics
        masks = []
        loss, grads, pixel_grad = training._value_and_grad(model, pixel_values, labels, train=train, input_grad=True,
                                                           generator=np.random.default_rng(seed), masks=masks)
        # against PyTorch in float64 (on the same, rounded, pixels) whatever ours' dtype: the exact
        # answer to round-off. In float32, PyTorch's own float32 answer too (see ROUNDOFF_MARGIN).
        rounded = np.asarray(pixel_values).astype(dt)
        theirs_loss, theirs_grads, theirs_pixel_grad, buffers = reference_gradients(
            reference, rounded.astype(np.float64), labels, train=train, masks=masks)
        names, buffer_names = list(theirs_grads), list(buffers) if train else []
        exact = _in_row_order(names, buffer_names, theirs_loss, theirs_grads, theirs_pixel_grad, buffers)
        mine = _in_row_order(names, buffer_names, loss, grads, pixel_grad, model.state_dict())
        own = None
        if dt == "float32":
            own = _in_row_order(names, buffer_names, *reference_gradients(
                copy.deepcopy(theirs).to(torch.float32), rounded, labels, train=train, masks=masks))
        floor = ZERO_GRADIENT_FLOOR[dt] * max(float(np.abs(g).max()) for g in theirs_grads.values() if g.size)
        if rows is None:
            rows = [{"layer": name, "stage": name.split(".")[2] if ".encoder.layer." in f".{name}" else "",
                     "shape": tuple(np.shape(b))} for name, b in exact]
        for i, (row, (_, b)) in enumerate(zip(rows, exact)):
            row[f"max_abs_{dt}"], row[f"rel_{dt}"], row[f"scale_{dt}"] = _gradient_errors(mine[i][1], b, floor)
            if own is not None:
                row[f"torch_max_abs_{dt}"], row[f"torch_rel_{dt}"], _ = _gradient_errors(own[i][1], b, floor)
    first = None
    for row in rows:
        row["diverged"] = any(not (row[f"rel_{dt}"] <= tolerance[dt]
                                   or row[f"max_abs_{dt}"] <= ROUNDOFF_MARGIN * row.get(f"torch_max_abs_{dt}", -1.0))
                              for dt in dtypes)
        if row["diverged"] and first is None:
            first = row["layer"]
    notes.append(f"{'train' if train else 'eval'} mode; rows in the order the backward pass reaches them; "
                 "rel = max|ours - torch| / max|torch|")
    return CrosscheckReport(rows=rows, dtypes=dtypes, tolerance={dt: tolerance[dt] for dt in dtypes},
                            first_divergence=first, head=head, input_shape=tuple(np.shape(pixel_values)), notes=notes)
