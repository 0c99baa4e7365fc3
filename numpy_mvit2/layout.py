"""What a checkpoint folder holds, by name: the weights files transformers writes and the order it
prefers them in, the one a folder holds (``find_weights``), and a sharded checkpoint's index
(``shard_names``, ``read_sharded``).

This module sits below the readers of weights files (``weights.files``, ``weights.torch_files``)
and the resolution of names (``hub``), which all need it, and imports none of them: the shard
index is read the same way whatever the shards' format, with the reader passed in. (Outside the
``weights`` package, so that ``hub``, which ``config`` uses, does not import the package, which
imports ``config``.)
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import CheckpointError, shown
from .safeio import read_json

SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
TORCH_NAME = "pytorch_model.bin"
TORCH_INDEX_NAME = "pytorch_model.bin.index.json"

# transformers' order of preference when a folder or repo holds several weight files
WEIGHT_FILES = (SAFETENSORS_NAME, SAFETENSORS_INDEX_NAME, TORCH_NAME, TORCH_INDEX_NAME)

MAX_SHARD_NAME = 255  # bytes: a file name (NAME_MAX)


def find_weights(folder: str | os.PathLike) -> Path:
    """The weights file of a checkpoint folder, in transformers' order of preference:
    ``model.safetensors``, ``model.safetensors.index.json``, ``pytorch_model.bin``,
    ``pytorch_model.bin.index.json``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a folder (expected a checkpoint folder with config.json and weights)")
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    present = sorted(p.name for p in folder.iterdir())
    # ml-cvnets saves its weights under names of its own (mobilevitv2-1.0.pt, checkpoint_best.pt)
    torch_files = [name for name in present if name.endswith((".pt", ".pth")) and (folder / name).is_file()]
    if len(torch_files) == 1:
        return folder / torch_files[0]
    if torch_files:
        raise CheckpointError(f"{folder}: no {WEIGHT_FILES[0]} and several PyTorch files ({', '.join(torch_files[:10])}); "
                              "pass the one to load")
    raise CheckpointError(
        f"{folder}: no weights found; expected one of {', '.join(WEIGHT_FILES)}, or one .pt / .pth file "
        f"(the folder holds: {', '.join(present[:20]) or 'nothing'})"
    )


def shard_names(index_path: str | os.PathLike) -> list[str]:
    """The shard file names a sharded checkpoint's ``.index.json`` lists (each checked to be a plain
    file name in the index's folder)."""
    return sorted(set(_weight_map(Path(index_path)).values()))


def _weight_map(index_path: Path) -> dict[str, str]:
    """The index's ``weight_map`` (tensor name -> shard file name), read as a bounded JSON file
    (``safeio.read_json``: a regular file, never blocking, size and nesting bounded)."""
    index = read_json(index_path, CheckpointError, what="shard index")
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index_path}: not a valid shard index (expected an object with a \"weight_map\" object)")
    for shard in weight_map.values():
        if (not isinstance(shard, str) or Path(shard).name != shard or shard in ("", ".", "..") or "\0" in shard
                or len(os.fsencode(shard)) > MAX_SHARD_NAME):
            raise CheckpointError(f"{index_path}: shard name {shown(shard)} must be a file name in the same folder "
                                  f"(at most {MAX_SHARD_NAME} bytes, no NUL)")
    return weight_map


def read_sharded(index_path: str | os.PathLike, read_shard) -> dict:
    """Each shard named in the index's ``weight_map`` read with ``read_shard`` (a path -> ``{name:
    array}``); the tensors each shard is listed for are kept (an index that lists a tensor its
    shard lacks is an error)."""
    index_path = Path(index_path)
    weight_map = _weight_map(index_path)
    by_shard: dict[str, set[str]] = {}  # one pass over the map: an index of n shards costs n, not n**2
    for name, file in weight_map.items():
        by_shard.setdefault(file, set()).add(name)
    state: dict = {}
    for shard in sorted(by_shard):
        shard_path = index_path.parent / shard
        tensors = read_shard(shard_path)
        wanted = by_shard.pop(shard)
        absent = sorted(wanted - tensors.keys())
        if absent:
            raise CheckpointError(f"{shard_path}: the index lists tensors this shard does not hold: "
                                  f"{', '.join(map(shown, absent[:10]))}")
        state.update({name: tensors[name] for name in wanted})
    return state
