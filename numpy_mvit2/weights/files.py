"""Checkpoint files -> ``dict[str, ndarray]`` under the file's own tensor names."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..errors import CheckpointError, CheckpointNotFoundError  # noqa: F401 - re-exported: weights.files was their home

SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
TORCH_NAME = "pytorch_model.bin"
TORCH_INDEX_NAME = "pytorch_model.bin.index.json"


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


def shard_names(index_path: str | os.PathLike) -> list[str]:
    """The shard file names a sharded checkpoint's ``.index.json`` lists (each checked to be a plain
    file name in the index's folder)."""
    return sorted(set(_weight_map(Path(index_path)).values()))


def _weight_map(index_path: Path) -> dict[str, str]:
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        weight_map = index["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
    except OSError as e:
        raise CheckpointError(f"{index_path}: cannot read ({e.strerror or e})") from None
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{index_path}: not a valid shard index ({e!r})") from None
    for shard in weight_map.values():
        if not isinstance(shard, str) or Path(shard).name != shard or shard in (".", ".."):
            raise CheckpointError(f"{index_path}: shard name {shard!r} must be a file name in the same folder")
    return weight_map


def read_sharded_safetensors(index_path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The tensors of a sharded safetensors checkpoint, following ``weight_map`` in its ``.index.json``."""
    return read_sharded(index_path, read_safetensors)


def read_sharded(index_path: str | os.PathLike, read_shard) -> dict[str, np.ndarray]:
    """Each shard named in the index's ``weight_map`` read with ``read_shard``; the tensors each
    shard is listed for are kept (an index that lists a tensor its shard lacks is an error)."""
    index_path = Path(index_path)
    weight_map = _weight_map(index_path)
    state: dict[str, np.ndarray] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = index_path.parent / shard
        tensors = read_shard(shard_path)
        wanted = {name for name, file in weight_map.items() if file == shard}
        absent = sorted(wanted - tensors.keys())
        if absent:
            raise CheckpointError(f"{shard_path}: the index lists tensors this shard does not hold: {', '.join(absent[:10])}")
        state.update({name: tensors[name] for name in wanted})
    return state


# transformers' order of preference when a folder or repo holds several weight files
WEIGHT_FILES = (SAFETENSORS_NAME, SAFETENSORS_INDEX_NAME, TORCH_NAME, TORCH_INDEX_NAME)


def read_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The tensors of one weights file, by its name: ``*.safetensors``, a sharded index
    (``*.safetensors.index.json`` or ``*.bin.index.json``), or a PyTorch file (``.bin``, ``.pt``,
    ``.pth``, ``.ckpt``; read without PyTorch, see ``torch_files``)."""
    from .torch_files import read_sharded_torch, read_torch_checkpoint  # torch_files builds on this module

    path = Path(path)
    name = path.name
    if name.endswith(".safetensors"):
        return read_safetensors(path)
    if name.endswith(".safetensors.index.json"):
        return read_sharded_safetensors(path)
    if name.endswith(".index.json"):
        return read_sharded_torch(path)
    return read_torch_checkpoint(path)


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
    raise CheckpointError(
        f"{folder}: no weights found; expected one of {', '.join(WEIGHT_FILES)} "
        f"(the folder holds: {', '.join(present[:20]) or 'nothing'})"
    )


def read_checkpoint_folder(folder: str | os.PathLike) -> tuple[dict[str, np.ndarray], Path]:
    """The state dict held in a checkpoint folder and the file it came from (see ``find_weights``)."""
    path = find_weights(folder)
    return read_weights(path), path
