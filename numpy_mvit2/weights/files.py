"""Checkpoint files -> ``dict[str, ndarray]`` under the file's own tensor names."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"


class CheckpointError(ValueError):
    """A checkpoint file or folder that cannot be loaded; the message names the file and the reason."""


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of one ``.safetensors`` file, as NumPy arrays."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="numpy") as f:
            return {name: f.get_tensor(name) for name in f.keys()}
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except Exception as e:  # safetensors raises its own SafetensorError (and TypeError for dtypes NumPy lacks)
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def read_sharded_safetensors(index_path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The tensors of a sharded checkpoint, following ``weight_map`` in its ``.index.json``."""
    return read_sharded(index_path, read_safetensors)


def read_sharded(index_path: str | os.PathLike, read_shard: Callable[[Path], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The tensors of a sharded checkpoint whose shards ``read_shard`` reads, following
    ``weight_map`` (tensor name -> shard file name) in its ``.index.json``."""
    index_path = Path(index_path)
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        weight_map = index["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
    except OSError as e:
        raise CheckpointError(f"{index_path}: cannot read ({e.strerror or e})") from None
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{index_path}: not a valid shard index ({e!r})") from None
    state: dict[str, np.ndarray] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = index_path.parent / shard
        if Path(shard).name != shard:
            raise CheckpointError(f"{index_path}: shard name {shard!r} must be a file name in the same folder")
        tensors = read_shard(shard_path)
        wanted = {name for name, file in weight_map.items() if file == shard}
        absent = sorted(wanted - tensors.keys())
        if absent:
            raise CheckpointError(f"{shard_path}: the index lists tensors this shard does not hold: {', '.join(absent[:10])}")
        state.update({name: tensors[name] for name in wanted})
    return state


def read_checkpoint_folder(folder: str | os.PathLike) -> tuple[dict[str, np.ndarray], Path]:
    """The state dict held in a checkpoint folder and the file it came from, preferring a single
    ``model.safetensors``, then a sharded ``model.safetensors.index.json``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a folder (expected a checkpoint folder with config.json and weights)")
    single, index = folder / SAFETENSORS_NAME, folder / SAFETENSORS_INDEX_NAME
    if single.is_file():
        return read_safetensors(single), single
    if index.is_file():
        return read_sharded_safetensors(index), index
    present = sorted(p.name for p in folder.iterdir())
    raise CheckpointError(
        f"{folder}: no weights found; expected {SAFETENSORS_NAME} or {SAFETENSORS_INDEX_NAME} "
        f"(the folder holds: {', '.join(present[:20]) or 'nothing'})"
    )
