"""A state dict under transformers' names -> the nested parameter dict the blocks take.

Steps, in order: drop BN step counters; put the backbone under the prefix the model class expects;
check every name and shape against ``expected_shapes`` (all problems reported at once); fold
each batch norm into the convolution before it (in float64); cast to the run dtype; nest.
"""

from __future__ import annotations

import numpy as np

from ..config import MobileViTV2Config
from ..errors import CheckpointError, cut
from ..ops import fold_batch_norm
from .shapes import BASE_PREFIX, expected_shapes, folded_shapes

HEAD_PREFIXES = ("classifier.", "segmentation_head.")
MAX_LISTED = 50  # unexpected keys named in an error (a file may hold hundreds of thousands)


def align_prefix(state: dict, head: str) -> dict:
    """Match the checkpoint's layout to the model class, as transformers does when it loads a
    checkpoint of one class into another: a bare ``MobileViTV2Model`` takes the backbone of a
    classification or segmentation checkpoint (the prefix stripped, the other head's tensors left
    out); a model with a head takes a bare backbone's tensors under ``mobilevitv2.``."""
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    has_prefix = any(k.startswith(BASE_PREFIX) for k in state)
    if head == "base" and has_prefix:
        return {k[len(BASE_PREFIX):]: v for k, v in state.items() if k.startswith(BASE_PREFIX)}
    if head != "base" and not has_prefix:
        return {(k if k.startswith(HEAD_PREFIXES) else BASE_PREFIX + k): v for k, v in state.items()}
    return state


def is_folded(state: dict) -> bool:
    """True for a state dict whose batch norms were folded into the convolutions (no
    ``normalization`` tensors, a bias on every convolution), as ``model.state_dict()`` gives it."""
    return not any(".normalization." in k for k in state) and "conv_stem.convolution.bias" in {
        k[len(BASE_PREFIX):] if k.startswith(BASE_PREFIX) else k for k in state
    }


def check_state_dict(state: dict, config: MobileViTV2Config, head: str, source: str) -> None:
    """Raise one ``CheckpointError`` listing every missing key, unexpected key and shape mismatch.
    A batch-norm-folded state dict is checked against the folded layout."""
    expected = expected_shapes(config, head)
    if is_folded(state):
        expected = folded_shapes(expected)
    missing = [k for k in expected if k not in state]
    unexpected = sorted(k for k in state if k not in expected)
    mismatched = [
        f"  {k}: expected {expected[k]}, found {tuple(state[k].shape)}"
        for k in expected
        if k in state and tuple(state[k].shape) != expected[k]
    ]
    if not (missing or unexpected or mismatched):
        return
    lines = [f"{source} does not match the config (width_multiplier={config.width_multiplier}, "
             f"num_labels={config.num_labels}, head={head}):"]
    other = _other_head(state, head)
    if other is not None:  # the first thing to say: the rest of the list follows from it
        lines.append(f" this is {HEAD_CLASSES[other][0]} checkpoint (it holds {other}* tensors and no "
                     f"{HEAD_PREFIX[head]}*): load it with {HEAD_CLASSES[other][1]}")
    if missing:
        lines.append(f" {len(missing)} missing key(s):")
        lines += [f"  {k} {expected[k]}" for k in missing]
    if unexpected:
        lines.append(f" {len(unexpected)} unexpected key(s):")  # the file's names: cut, and only the first ones
        lines += [f"  {cut(k)} {tuple(state[k].shape)}" for k in unexpected[:MAX_LISTED]]
        if len(unexpected) > MAX_LISTED:
            lines.append(f"  ... and {len(unexpected) - MAX_LISTED} more")
    if mismatched:
        lines.append(f" {len(mismatched)} shape mismatch(es):")
        lines += mismatched
    raise CheckpointError("\n".join(lines))


# The prefix of each head's tensors, and how a message names the head and the class that loads it.
HEAD_PREFIX = {"classification": "classifier.", "segmentation": "segmentation_head."}
HEAD_CLASSES = {"classifier.": ("an image classification", "MobileViTV2ForImageClassification"),
                "segmentation_head.": ("a semantic segmentation", "MobileViTV2ForSemanticSegmentation")}


def _other_head(state: dict, head: str) -> str | None:
    """The prefix of the other head's tensors, when the state dict holds that head and not this one
    (a segmentation checkpoint given to the classifier, or the other way round)."""
    if head not in HEAD_PREFIX:
        return None
    own = HEAD_PREFIX[head]
    other = next(p for p in HEAD_PREFIX.values() if p != own)
    if any(k.startswith(other) for k in state) and not any(k.startswith(own) for k in state):
        return other
    return None


def fold_all_batch_norms(state: dict, eps: float = 1e-5) -> dict:
    """Replace every ``X.convolution.weight`` followed by ``X.normalization.*`` by a folded
    ``X.convolution.weight`` and ``X.convolution.bias`` (float64)."""
    out = dict(state)
    for key in [k for k in state if k.endswith(".normalization.weight")]:
        layer = key[: -len(".normalization.weight")]
        bn = {name: out.pop(f"{layer}.normalization.{name}") for name in ("weight", "bias", "running_mean", "running_var")}
        out[f"{layer}.convolution.weight"], out[f"{layer}.convolution.bias"] = fold_batch_norm(
            out[f"{layer}.convolution.weight"], out.get(f"{layer}.convolution.bias"), eps=eps, **bn
        )
    return out


def nest(state: dict) -> dict:
    """``{"a.0.b": x}`` -> ``{"a": [{"b": x}]}``: dotted names become nested dicts, and numbered
    components become lists."""
    root: dict = {}
    for key, value in state.items():
        node = root
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return _lists(root)


def _lists(node):
    if not isinstance(node, dict):
        return node
    if node and all(k.isdigit() for k in node):
        return [_lists(node[str(i)]) for i in range(len(node))]
    return {k: _lists(v) for k, v in node.items()}


def flatten(params, prefix: str = "") -> dict:
    """The inverse of ``nest``."""
    items = enumerate(params) if isinstance(params, list) else params.items()
    out = {}
    for k, v in items:
        name = f"{prefix}{k}"
        if isinstance(v, (dict, list)):
            out.update(flatten(v, name + "."))
        else:
            out[name] = v
    return out


def assign(params, name: str, value) -> None:
    """``params`` (nested dicts and lists, as ``nest`` makes them) at the dotted ``name`` <- ``value``."""
    *path, last = name.split(".")
    node = params
    for key in path:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[int(last) if isinstance(node, list) else last] = value


def to_params(state: dict, dtype, fold: bool = True, *, consume: bool = False) -> dict:
    """A checked state dict -> nested params in ``dtype`` (BN folded unless ``fold=False``), the
    same numbers as ``fold_all_batch_norms`` then a cast. Done one layer at a time; with
    ``consume`` the dict is emptied as it goes, so that tensors no one else holds (seeded random
    weights, drawn in float64) are freed layer by layer: the peak is about one copy of the model,
    not three."""
    if not consume:
        state = dict(state)
    out = {}
    for key in list(state):
        if key not in state:  # a batch norm or bias already folded into its layer
            continue
        if fold and ".normalization." in key and f"{key.split('.normalization.')[0]}.convolution.weight" in state:
            continue  # folded when its convolution's weight comes (it may come later in the file)
        layer = key[: -len(".convolution.weight")] if key.endswith(".convolution.weight") else None
        if fold and layer is not None and f"{layer}.normalization.weight" in state:
            bn = {name: state.pop(f"{layer}.normalization.{name}") for name in ("weight", "bias", "running_mean", "running_var")}
            weight, bias = fold_batch_norm(state.pop(key), state.pop(f"{layer}.convolution.bias", None), eps=1e-5, **bn)
            del bn
            out[key] = np.ascontiguousarray(weight, dtype=dtype)
            out[f"{layer}.convolution.bias"] = np.ascontiguousarray(bias, dtype=dtype)
        else:
            out[key] = np.ascontiguousarray(state.pop(key), dtype=dtype)
    return nest(out)
