"""Checkpoint files -> ``dict[str, ndarray]`` under the file's own tensor names.

safetensors
-----------
A ``.safetensors`` file is an 8-byte little-endian header length ``n``, ``n`` bytes of JSON
(``{name: {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}}``)
and the tensors' bytes, little-endian and C-ordered, ``data_offsets`` counted from the end of the
header. We read it ourselves rather than through the ``safetensors`` package: its ``safe_open``
takes a path and opens it again itself (so our regular-file check on the opened file would not
cover what it reads, and a FIFO would block it), and its errors name neither the file nor, often,
the tensor. The header is checked the way the package checks it, with the bounds of the rest of
this library:

- the header is at most ``MAX_SAFETENSORS_HEADER`` bytes (the largest real ones are a few MB)
  and inside the file; its JSON is parsed with ``NaN`` and ``Infinity`` refused, and nesting is
  bounded by the parser's recursion limit and then by the fixed shape of a header;
- every tensor has a known dtype, a shape of at most 64 sizes below 2**62, and offsets whose span
  is exactly its elements' bytes; sorted by offset, the tensors tile the data with no gap and no
  overlap, ending at the end of the file.

So each tensor is checked against bytes that are present, and the arrays returned hold no more
bytes than the file (bfloat16, widened to float32 as the torch reader widens it, twice as many).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

# This module reads weights files and, by a file's name, dispatches to the right reader (read_weights,
# read_checkpoint_folder); the PyTorch reader (torch_files) lies below it and does not import it.
# The file names, the one a folder holds and the shard index are numpy_mvit2.layout's, below both.
from ..errors import CheckpointError, CheckpointNotFoundError, shown  # noqa: F401 - re-exported: weights.files was their home
from ..layout import (  # noqa: F401 - re-exported: weights.files was their home
    MAX_SHARD_NAME,
    SAFETENSORS_INDEX_NAME,
    SAFETENSORS_NAME,
    TORCH_INDEX_NAME,
    TORCH_NAME,
    WEIGHT_FILES,
    find_weights,
    read_sharded,
    shard_names,
)
from ..safeio import open_regular_file, refuse_constant
from .torch_files import read_sharded_torch, read_torch_checkpoint


# safetensors dtype -> NumPy's little-endian dtype; "BF16" is widened to float32 by hand. The
# float8 types (F8_E4M3, F8_E5M2...) have no NumPy dtype and are refused.
SAFETENSORS_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
    "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "u1",
}
ITEMSIZES = {name: np.dtype(dtype).itemsize for name, dtype in SAFETENSORS_DTYPES.items()}
MAX_SAFETENSORS_HEADER = 16 * 2**20
MAX_SAFETENSORS_TENSORS = 2**18  # in one file; large language models hold a few thousand
MAX_SAFETENSORS_RANK = 64
MAX_SAFETENSORS_SIZE = 2**62


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of one ``.safetensors`` file, as NumPy arrays (C-contiguous, native byte order,
    writeable; bfloat16 widened to float32), by name in sorted order as ``safe_open`` lists them.
    The file is checked as the module docstring says before any tensor is read."""
    path = Path(path)
    with open_regular_file(path) as f:
        file_size = os.fstat(f.fileno()).st_size
        try:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: {file_size} bytes, too short for a safetensors file (8-byte header length first)")
            (length,) = struct.unpack("<Q", head)
            if length > MAX_SAFETENSORS_HEADER:
                raise CheckpointError(f"{path}: declares a safetensors header of {length} bytes, more than the {MAX_SAFETENSORS_HEADER} allowed")
            if 8 + length > file_size:
                raise CheckpointError(f"{path}: declares a safetensors header of {length} bytes, past the end of the file ({file_size} bytes)")
            header = f.read(length)
            tensors = safetensors_layout(header, file_size - 8 - length, path)
            return {name: read_tensor(f, 8 + length, name, dtype, shape, begin, end, path)
                    for name, (dtype, shape, begin, end) in sorted(tensors.items())}
        except OSError as e:
            raise CheckpointError(f"{path}: cannot read ({e.strerror or e})") from None
        except MemoryError:
            raise CheckpointError(f"{path}: its tensors do not fit in memory") from None


def safetensors_layout(header: bytes, data_size: int, path: Path) -> dict[str, tuple[str, tuple, int, int]]:
    """The header's tensors as ``name -> (dtype, shape, begin, end)``, each checked against the
    ``data_size`` bytes after the header (see the module docstring)."""
    try:
        text = header.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path}: the safetensors header is not UTF-8 ({e})") from None
    if not text.lstrip().startswith("{"):
        raise CheckpointError(f"{path}: not a safetensors file (its header does not start with a JSON object: {header[:20]!r})")
    entries = _parse_header(text, path)
    if not isinstance(entries, dict):
        raise CheckpointError(f"{path}: the safetensors header is not a JSON object")
    metadata = entries.pop("__metadata__", None)
    if metadata is not None and not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise CheckpointError(f"{path}: the safetensors __metadata__ must map names to strings")
    tensors = {}
    for name, entry in entries.items():
        if not isinstance(entry, dict):
            raise CheckpointError(f"{path}: tensor {shown(name)}: its header entry is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not (isinstance(dtype, str) and dtype in SAFETENSORS_DTYPES):
            raise CheckpointError(f"{path}: tensor {shown(name)}: dtype {str(dtype)[:40]!r} is not one numpy_mvit2 reads ({', '.join(SAFETENSORS_DTYPES)})")
        if not (isinstance(shape, list) and len(shape) <= MAX_SAFETENSORS_RANK
                and all(type(n) is int and 0 <= n < MAX_SAFETENSORS_SIZE for n in shape)):
            raise CheckpointError(f"{path}: tensor {shown(name)}: shape must be a list of at most {MAX_SAFETENSORS_RANK} sizes >= 0, got {str(shape)[:80]}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(n) is int for n in offsets)
                and 0 <= offsets[0] <= offsets[1] <= data_size):
            raise CheckpointError(f"{path}: tensor {shown(name)}: data_offsets {str(offsets)[:80]} must be [begin, end] with 0 <= begin <= end <= {data_size}, the bytes after the header")
        begin, end = offsets
        nbytes = ITEMSIZES[dtype] * _prod(shape)
        if nbytes != end - begin:
            raise CheckpointError(f"{path}: tensor {shown(name)}: shape {shape} of {dtype} takes {nbytes} bytes, but its data_offsets span {end - begin}")
        if _prod(max(n, 1) for n in shape) * ITEMSIZES[dtype] >= MAX_SAFETENSORS_SIZE:  # an empty one: NumPy's limit
            raise CheckpointError(f"{path}: tensor {shown(name)}: shape {shape} of {dtype} is too large for an array, even empty")
        tensors[name] = (dtype, tuple(shape), begin, end)
    position = 0
    for name, (_, _, begin, end) in sorted(tensors.items(), key=lambda item: item[1][2:]):
        if begin != position:
            what = "overlaps the tensor before it" if begin < position else f"leaves bytes {position}..{begin} unused"
            raise CheckpointError(f"{path}: tensor {shown(name)} (data_offsets [{begin}, {end}]) {what}; safetensors data is tiled by its tensors")
        position = end
    if position != data_size:
        raise CheckpointError(f"{path}: its tensors cover {position} of the {data_size} data bytes after the header")
    return tensors


def _parse_header(text: str, path: Path):
    """The header's JSON. Not ``safeio.parse_json``: its walk to measure nesting costs more than the
    parse on a header of many small entries, and is not needed here, since every value in a valid
    header has a fixed place and type (checked next), so a nest of any depth is refused anyway. The
    parser's own bound on depth (Python's recursion limit) keeps parsing itself safe. Its cost is
    bounded by a count of the brackets first (a valid header has three per tensor), at C speed: 8 MB
    of empty lists took 1.7 CPU seconds and 250 MB to parse."""
    if text.count("[") + text.count("{") > 3 * MAX_SAFETENSORS_TENSORS + 2:
        raise CheckpointError(f"{path}: the safetensors header holds more lists and objects than "
                              f"{MAX_SAFETENSORS_TENSORS} tensors would (three each)")
    try:
        return json.loads(text, parse_constant=refuse_constant)
    except RecursionError:
        raise CheckpointError(f"{path}: the safetensors header is JSON nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, NaN/Infinity, ints over Python's digit limit
        raise CheckpointError(f"{path}: the safetensors header is not valid JSON ({e})") from None


def _prod(shape) -> int:
    product = 1
    for n in shape:
        product *= n
    return product


def read_tensor(f, data_start: int, name: str, dtype: str, shape: tuple, begin: int, end: int, path: Path) -> np.ndarray:
    """One tensor's bytes (checked by ``safetensors_layout``) -> a native-order array of ``shape``."""
    buffer = bytearray(end - begin)
    if buffer and (f.seek(data_start + begin) < 0 or f.readinto(buffer) != len(buffer)):
        raise CheckpointError(f"{path}: tensor {shown(name)}: the file ends inside its data (it shrank while read?)")
    array = np.frombuffer(buffer, dtype=SAFETENSORS_DTYPES[dtype]).reshape(shape)
    if dtype == "BF16":
        return (array.astype(np.uint32) << 16).view(np.float32)
    if dtype == "BOOL":
        return array != 0
    return array if array.dtype.isnative else array.astype(array.dtype.newbyteorder("="))


def read_sharded_safetensors(index_path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The tensors of a sharded safetensors checkpoint, following ``weight_map`` in its ``.index.json``."""
    return read_sharded(index_path, read_safetensors)


def read_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The tensors of one weights file, by its name: ``*.safetensors``, a sharded index
    (``*.safetensors.index.json`` or ``*.bin.index.json``), or a PyTorch file (``.bin``, ``.pt``,
    ``.pth``, ``.ckpt``; read without PyTorch, see ``torch_files``)."""
    path = Path(path)
    name = path.name
    if name.endswith(".safetensors"):
        return read_safetensors(path)
    if name.endswith(".safetensors.index.json"):
        return read_sharded_safetensors(path)
    if name.endswith(".index.json"):
        return read_sharded_torch(path)
    return read_torch_checkpoint(path)


def read_checkpoint_folder(folder: str | os.PathLike) -> tuple[dict[str, np.ndarray], Path]:
    """The state dict held in a checkpoint folder and the file it came from (see ``find_weights``)."""
    path = find_weights(folder)
    return read_weights(path), path
