"""PyTorch checkpoint files (``pytorch_model.bin``, ``*.pth``, ``*.pt``) -> ``dict[str, ndarray]``,
read with the standard library and NumPy only: no torch, and no code from the file ever runs.

The file
--------
Since PyTorch 1.6, ``torch.save`` writes a zip archive whose records are stored uncompressed. All
records sit in one top-level folder. Its name is whatever the file was called when it was saved
(``archive/``, ``pytorch_model/``, ...) and carries no meaning: we find it as the one folder that
holds a ``data.pkl``. Inside it::

    data.pkl                  the saved Python object (here: a state dict), as a pickle
    data/0, data/1, ...       one record per storage: the raw bytes of a block of tensor memory
    byteorder                 "little" or "big": the byte order of those bytes (files from older
                              torch versions lack it; they are read as little-endian)
    version                   the serialization version ("3" today)
    .format_version           bookkeeping from newer torch versions ("1"; .storage_alignment
    .storage_alignment        says each storage's bytes start at a multiple of 64 in the file,
    .data/serialization_id    .data/serialization_id is a random id); none of it is needed here

Every record is optional to us except ``data.pkl`` and the storages it names.

What data.pkl holds
-------------------
A pickle is a small program for a stack machine: opcodes push strings, numbers and tuples, look up
a global by ``module.name`` (``GLOBAL``) and call it with a tuple of arguments (``REDUCE``). A state
dict pickles as ``collections.OrderedDict()`` filled with ``name -> tensor`` items, and each tensor
as the call ::

    torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks)

(wrapped in ``torch._utils._rebuild_parameter(tensor, requires_grad, backward_hooks)`` for an
``nn.Parameter``). Element ``(i0, i1, ...)`` of the tensor is element
``storage_offset + i0 * stride[0] + i1 * stride[1] + ...`` of the storage, counted in elements,
not bytes. Views (a transpose, a slice with a step, several tensors that are views of one tensor)
keep their own offset and strides and share the storage.

The storage itself is not in the pickle. It appears as a *persistent id*, a tuple the unpickler
hands back to its loader (``persistent_load``)::

    ("storage", torch.FloatStorage, "0",  "cpu",  6)
     kind        element type       key   device  number of elements

and the key names the record ``data/0``. Keys count storages in the order the pickle first meets
them: "0", "1", ...; a storage shared by several tensors is written once. The storage type carries the dtype (``FloatStorage`` is
float32, ``HalfStorage`` float16, ``LongStorage`` int64, ...). torch 2.x still writes these typed
names for the classic dtypes; only dtypes added later (uint16/32/64, the float8 family) are written
as ``torch.storage.UntypedStorage`` plus a dtype global through ``_rebuild_tensor_v3``, which no
MobileViTV2 checkpoint uses and this reader refuses.

Safety
------
Unpickling runs the calls the pickle names, so ``pickle.load`` on a file from the internet can run
anything (``os.system``...). Here a restricted unpickler admits a fixed list of globals, the ones a
plain state dict needs, and hands the pickle our own stand-ins for them: small functions that
check their arguments and return plain records, never torch's functions. Any other global is
refused with an error naming it. Before unpickling, a scan of the opcodes (``pickletools``)
refuses the globals the same way and the opcodes a state dict never uses: those that make
instances of a class (``INST``, ``OBJ``, ``NEWOBJ``), the ``copyreg`` extension codes and
out-of-band buffers. Our stand-ins refuse ``BUILD`` (state set on an object after it is made)
except the harmless ``_metadata`` attribute torch gives a state dict (each module's version),
which is dropped, as are a parameter's Python attributes and the ``metadata`` argument newer
torch may pass to ``_rebuild_tensor_v2``.

What comes back
---------------
A dict ``name -> ndarray``, C-contiguous, native byte order, writeable, each array owning its
memory or viewing a storage no other tensor uses. bfloat16 becomes float32, exactly (NumPy has no
bfloat16: the 16 bits are the top half of a float32). If the file holds a training checkpoint, a
dict with the state dict under ``"state_dict"``, ``"model_state_dict"`` or ``"model"``, that state
dict is returned and the rest (epoch, optimizer state, ...) is dropped; any other object is an
error (a whole pickled ``nn.Module`` fails on its first refused global). The device a tensor was
saved from (``cpu``, ``cuda:0``) is ignored.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import pickletools
import reprlib
import zipfile
from pathlib import Path

import numpy as np

from .files import CheckpointError, read_sharded

# Storage type (torch.<name>) -> element type as NumPy spells it; "bfloat16" is decoded by hand.
STORAGE_DTYPES = {
    "FloatStorage": "float32",
    "DoubleStorage": "float64",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
}

# Keys under which training checkpoints keep the model's state dict, in the order we look.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")

# The first bytes of the pre-1.6 format: a protocol-2 pickle of torch's magic number 0x1950a86a20f9469cfc6c.
LEGACY_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")

CONVERT_HINT = (
    "convert it on a machine with torch: torch.save(torch.load(path), path, _use_new_zipfile_serialization=True), "
    "or save it as safetensors (safetensors.torch.save_file(torch.load(path), 'model.safetensors'))"
)

# The opcodes torch.save can write for a state dict, at any pickle protocol. Left out: INST, OBJ, NEWOBJ, NEWOBJ_EX
# (make an instance of a class), EXT1/2/4 (globals from the copyreg registry), NEXT_BUFFER and
# READONLY_BUFFER (out-of-band data), and the set and bytearray opcodes, which no state dict uses.
ADMITTED_OPCODES = frozenset((
    "PROTO", "FRAME", "STOP", "MARK", "POP", "POP_MARK", "DUP",
    "PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE", "GET", "BINGET", "LONG_BINGET",
    "NONE", "NEWTRUE", "NEWFALSE", "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT",
    "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8",
    "BINBYTES", "SHORT_BINBYTES", "BINBYTES8",
    "EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "EMPTY_LIST", "LIST", "APPEND", "APPENDS",
    "EMPTY_DICT", "DICT", "SETITEM", "SETITEMS",
    "GLOBAL", "STACK_GLOBAL", "REDUCE", "BUILD", "PERSID", "BINPERSID",
))


# ---------------------------------------------------------------------------------------------
# What the pickle gets instead of torch: inert records and our own functions.


class _Inert:
    """Base of the objects we hand the pickle: no ``__dict__``, and ``BUILD`` on them is refused."""

    __slots__ = ()

    def __setstate__(self, state):
        raise pickle.UnpicklingError(f"BUILD on {self!r} refused (it would set state on an object of ours)")


class StorageType(_Inert):
    """Stand-in for ``torch.FloatStorage`` and its kin: only a name and an element type."""

    __slots__ = ("dtype", "name")

    def __init__(self, name: str, dtype: str):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "dtype", dtype)

    def __setattr__(self, key, value):
        raise AttributeError(f"{self!r} is read-only")

    def __repr__(self):
        return f"torch.{self.name}"

    @property
    def itemsize(self) -> int:
        return 2 if self.dtype == "bfloat16" else np.dtype(self.dtype).itemsize


class StorageRef(_Inert):
    """A storage as ``data.pkl`` names it: record key, element type, element count."""

    __slots__ = ("key", "numel", "type")

    def __init__(self, key: str, type: StorageType, numel: int):
        self.key, self.type, self.numel = key, type, numel

    def __repr__(self):
        return f"storage {self.key!r} ({self.type}, {self.numel} elements)"


class TensorRecord(_Inert):
    """A tensor as ``data.pkl`` describes it: a view ``(offset, size, stride)`` of a storage."""

    __slots__ = ("offset", "size", "storage", "stride")

    def __init__(self, storage: StorageRef, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def __repr__(self):
        return f"tensor(size={self.size}, stride={self.stride}, offset={self.offset}, {self.storage})"


class StateDict(dict):
    """Stand-in for ``collections.OrderedDict`` (plain dicts keep order). The only state BUILD may
    give it is a dict of attributes, torch's ``_metadata`` (per-module versions): dropped."""

    __slots__ = ()

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"BUILD on an OrderedDict with {type(state).__name__} state refused")


class Admitted(_Inert):
    """An admitted global: the pickle may call it (REDUCE); the call runs our ``function``."""

    __slots__ = ("function", "name")

    def __init__(self, name: str, function):
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "function", function)

    def __setattr__(self, key, value):
        raise AttributeError(f"{self!r} is read-only")

    def __repr__(self):
        return self.name

    def __call__(self, *args):
        try:
            return self.function(*args)
        except (TypeError, ValueError) as e:
            raise pickle.UnpicklingError(f"{self.name} called with unusable arguments: {e}") from None


def _is_index(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def rebuild_tensor(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None) -> TensorRecord:
    """Our ``torch._utils._rebuild_tensor_v2``: checks the arguments, returns a ``TensorRecord``."""
    if not isinstance(storage, StorageRef):
        raise TypeError(f"storage must be a storage persistent id, got {type(storage).__name__}")
    if not _is_index(storage_offset):
        raise ValueError(f"storage_offset must be an int >= 0, got {reprlib.repr(storage_offset)}")
    if not (isinstance(size, (tuple, list)) and isinstance(stride, (tuple, list)) and len(size) == len(stride) <= 64):
        raise ValueError(f"size and stride must be tuples of one length (at most 64), got {reprlib.repr(size)} and {reprlib.repr(stride)}")
    if not all(_is_index(n) for n in (*size, *stride)):
        raise ValueError(f"size and stride must hold ints >= 0, got {reprlib.repr(size)} and {reprlib.repr(stride)}")
    if not isinstance(requires_grad, bool):
        raise TypeError(f"requires_grad must be a bool, got {type(requires_grad).__name__}")
    if not isinstance(backward_hooks, dict) or backward_hooks:
        raise ValueError("backward hooks are not supported (expected an empty OrderedDict)")
    if metadata is not None and not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict or None, got {type(metadata).__name__}")
    return TensorRecord(storage, storage_offset, tuple(size), tuple(stride))


def rebuild_parameter(data, requires_grad, backward_hooks, state=None) -> TensorRecord:
    """Our ``torch._utils._rebuild_parameter`` (and ``..._with_state``): the tensor itself; the
    Python attributes in ``state``, if any, are dropped."""
    if not isinstance(data, TensorRecord):
        raise TypeError(f"data must be a tensor, got {type(data).__name__}")
    if not isinstance(requires_grad, bool):
        raise TypeError(f"requires_grad must be a bool, got {type(requires_grad).__name__}")
    if not isinstance(backward_hooks, dict) or backward_hooks:
        raise ValueError("backward hooks are not supported (expected an empty OrderedDict)")
    if state is not None and not isinstance(state, (dict, tuple)):
        raise TypeError(f"state must be a dict, a tuple or None, got {type(state).__name__}")
    return data


def ordered_dict(items=()) -> StateDict:
    """Our ``collections.OrderedDict``: called with no arguments (as pickle does) or with a list of
    ``[key, value]`` pairs (as old pickles do)."""
    if not isinstance(items, (list, tuple)) or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in items):
        raise TypeError("expects no argument or a list of (key, value) pairs")
    return StateDict(items)


ADMITTED_GLOBALS = {
    ("collections", "OrderedDict"): Admitted("collections.OrderedDict", ordered_dict),
    ("torch._utils", "_rebuild_tensor_v2"): Admitted("torch._utils._rebuild_tensor_v2", rebuild_tensor),
    ("torch._utils", "_rebuild_parameter"): Admitted("torch._utils._rebuild_parameter", rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): Admitted("torch._utils._rebuild_parameter_with_state", rebuild_parameter),
    **{("torch", name): StorageType(name, dtype) for name, dtype in STORAGE_DTYPES.items()},
}


def refusal(module: str, name: str) -> str:
    """Why the global ``module.name`` is refused, with a hint for torch names we know."""
    what = f"refused pickle global {module}.{name}"
    if module == "torch" and name.endswith("Storage") and name.isidentifier():
        return f"{what}: a storage type numpy_mvit2 does not read (it reads {', '.join(STORAGE_DTYPES)})"
    if (module, name) in (("torch._utils", "_rebuild_tensor_v3"), ("torch.storage", "UntypedStorage")):
        return f"{what}: tensors of the dtypes torch saves this way (uint16/32/64, float8, ...) are not supported"
    admitted = ", ".join(f"{m}.{n}" for m, n in ADMITTED_GLOBALS if not n.endswith("Storage"))
    return f"{what}: numpy_mvit2 reads only plain state dicts of tensors (admitted globals: {admitted}, torch.<dtype>Storage)"


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves globals only from ``ADMITTED_GLOBALS`` and persistent ids
    only to ``StorageRef``s."""

    def find_class(self, module, name):
        admitted = ADMITTED_GLOBALS.get((module, name))
        if admitted is None:
            raise pickle.UnpicklingError(refusal(module, name))
        return admitted

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"persistent id {reprlib.repr(pid)} is not a torch storage id ('storage', type, key, location, numel)")
        _, storage_type, key, location, numel = pid
        if not isinstance(storage_type, StorageType):
            raise pickle.UnpicklingError(f"persistent id names {reprlib.repr(storage_type)}, not a storage type")
        if not (isinstance(key, str) and isinstance(location, str) and _is_index(numel)):
            raise pickle.UnpicklingError(f"persistent id {reprlib.repr(pid)}: expected a str key, a str location and an element count")
        return StorageRef(key, storage_type, numel)


def check_opcodes(data: bytes) -> None:
    """Refuse a pickle that uses an opcode outside ``ADMITTED_OPCODES`` or names a global (with
    ``GLOBAL``/``INST``) outside ``ADMITTED_GLOBALS``, before any of it runs."""
    for opcode, arg, pos in pickletools.genops(data):
        if opcode.name in ("GLOBAL", "INST"):
            module, _, name = arg.partition(" ")
            if (module, name) not in ADMITTED_GLOBALS:
                raise pickle.UnpicklingError(refusal(module, name))
        if opcode.name not in ADMITTED_OPCODES:
            raise pickle.UnpicklingError(
                f"pickle opcode {opcode.name} at byte {pos} refused (torch.save never writes it for a state dict)"
            )


def unpickle(data: bytes, where: str):
    """The object in ``data.pkl``, rebuilt from our stand-ins; any failure -> ``CheckpointError``."""
    try:
        check_opcodes(data)
        return RestrictedUnpickler(io.BytesIO(data), encoding="utf-8").load()
    except pickle.UnpicklingError as e:  # our refusals, and the unpickler's own complaints
        raise CheckpointError(f"{where}: {e}") from None
    except Exception as e:  # noqa: BLE001 -- a hostile or damaged pickle can fail in many ways; all are the file's fault
        raise CheckpointError(f"{where}: damaged pickle ({type(e).__name__}: {e})") from None


# ---------------------------------------------------------------------------------------------
# The zip archive.


def check_signature(path: Path) -> None:
    """Tell apart, by the first bytes, a zip archive from a legacy torch file, another pickle, an
    empty file or anything else, and raise a ``CheckpointError`` for all but the zip."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(LEGACY_MAGIC))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: a folder, not a PyTorch checkpoint file") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror or e})") from None
    if head.startswith(b"PK"):
        return
    if not head:
        raise CheckpointError(f"{path}: empty file (0 bytes), not a PyTorch checkpoint")
    if head == LEGACY_MAGIC:
        raise CheckpointError(f"{path}: a PyTorch checkpoint in the legacy format (torch < 1.6), which numpy_mvit2 does not read; {CONVERT_HINT}")
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise CheckpointError(f"{path}: a bare pickle, not the zip archive torch.save writes (since torch 1.6); {CONVERT_HINT}")
    if head[8:9] == b"{":
        raise CheckpointError(f"{path}: looks like a safetensors file, not a PyTorch checkpoint; read it with read_safetensors")
    raise CheckpointError(f"{path}: not a PyTorch checkpoint (neither the zip archive torch.save writes nor a legacy file; it starts with {head!r})")


def record_folder(archive: zipfile.ZipFile, path: Path) -> str:
    """The top-level folder of the archive's records (``"archive/"``...): the one holding ``data.pkl``."""
    folders = [n[: -len("data.pkl")] for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(folders) != 1:
        names = archive.namelist()
        found = f"{len(folders)} of them ({', '.join(folders)})" if folders else f"none (the archive holds: {', '.join(names[:10]) or 'nothing'})"
        raise CheckpointError(f"{path}: a zip archive but not a PyTorch checkpoint: expected one <folder>/data.pkl, found {found}")
    return folders[0]


def read_byteorder(archive: zipfile.ZipFile, folder: str, path: Path) -> str:
    """``"little"`` or ``"big"`` from the ``byteorder`` record; little when the record is absent."""
    try:
        value = archive.read(folder + "byteorder")
    except KeyError:
        return "little"
    order = value.decode("ascii", "replace").strip()
    if order not in ("little", "big"):
        raise CheckpointError(f"{path}: {folder}byteorder record holds {value[:20]!r}, expected 'little' or 'big'")
    return order


def read_record(archive: zipfile.ZipFile, member: str, nbytes: int) -> bytearray:
    """The first ``nbytes`` bytes of a zip member into a fresh (writeable) buffer; fewer if the
    member is shorter. Reading stops at ``nbytes``: a lying header cannot make us read more."""
    info = archive.getinfo(member)
    buffer = bytearray(min(nbytes, info.file_size))
    view, filled = memoryview(buffer), 0
    with archive.open(info) as f:
        while filled < len(buffer):
            n = f.readinto(view[filled:])
            if not n:
                break
            filled += n
    return buffer[:filled] if filled < len(buffer) else buffer


def decode_storage(buffer, dtype: str, byteorder: str) -> np.ndarray:
    """Raw storage bytes -> a 1-D array in native byte order. bfloat16 is widened to float32 exactly
    (its bits are the upper half of a float32); bool bytes other than 0 read as True."""
    end = "<" if byteorder == "little" else ">"
    if dtype == "bfloat16":
        return (np.frombuffer(buffer, dtype=end + "u2").astype(np.uint32) << 16).view(np.float32)
    if dtype == "bool":
        return np.frombuffer(buffer, dtype=np.uint8).astype(bool)
    native = np.dtype(dtype)
    array = np.frombuffer(buffer, dtype=native.newbyteorder(end))
    return array.view(native) if array.dtype.isnative else array.astype(native)


def elements_needed(offset: int, size: tuple, stride: tuple) -> int:
    """How many storage elements a view ``(offset, size, stride)`` reaches into (0 if empty)."""
    if 0 in size:
        return 0
    return offset + sum((n - 1) * s for n, s in zip(size, stride)) + 1


def view_of_storage(storage: np.ndarray, offset: int, size: tuple, stride: tuple, sole_user: bool) -> np.ndarray:
    """The tensor ``storage[offset + sum(i_k * stride[k])]``, as an array of shape ``size``: the
    storage reshaped when the tensor is its only, contiguous, full-length user, else a copy."""
    if sole_user and offset == 0 and math.prod(size) == storage.size and list(stride) == _c_strides(size):
        return storage.reshape(size)
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size, strides=[s * storage.itemsize for s in stride], writeable=False
    )
    return np.array(view, order="C")


def _c_strides(size: tuple) -> list[int]:
    """Element strides of a C-contiguous tensor of ``size`` (as torch gives them, size-1 dims included)."""
    strides, step = [], 1
    for n in reversed(size):
        strides.append(step)
        step *= max(n, 1)
    return strides[::-1]


def find_state_dict(obj, path: Path) -> dict:
    """The dict of tensors in the unpickled object: the object itself, or a wrapper's
    ``WRAPPER_KEYS`` entry (the wrapper's other entries are dropped)."""

    def is_state_dict(x):
        return isinstance(x, dict) and all(isinstance(k, str) and isinstance(v, TensorRecord) for k, v in x.items())

    if is_state_dict(obj):
        return obj
    if isinstance(obj, dict):
        for key in WRAPPER_KEYS:
            if is_state_dict(obj.get(key)):
                return obj[key]
        keys = ", ".join(reprlib.repr(k) for k in list(obj)[:10])
        raise CheckpointError(
            f"{path}: holds no state dict: expected a dict of name -> tensor, or one under "
            f"{' / '.join(map(repr, WRAPPER_KEYS))}; found a dict with keys {keys}"
        )
    raise CheckpointError(f"{path}: holds no state dict: expected a dict of name -> tensor, found {type(obj).__name__}")


def load_storage(archive: zipfile.ZipFile, folder: str, ref: StorageRef, byteorder: str, tensor: str, path: Path) -> np.ndarray:
    """Read and decode the record of one storage, checking it holds all the elements it declares."""
    member = f"{folder}data/{ref.key}"
    nbytes = ref.numel * ref.type.itemsize
    try:
        buffer = read_record(archive, member, nbytes)
    except KeyError:
        raise CheckpointError(f"{path}: storage record {member} is missing (tensor {tensor!r} needs it)") from None
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise CheckpointError(f"{path}: storage record {member} is damaged ({e}; tensor {tensor!r} needs it)") from None
    except (MemoryError, OverflowError):
        raise CheckpointError(f"{path}: storage record {member} ({nbytes} bytes declared for tensor {tensor!r}) does not fit in memory") from None
    if len(buffer) < nbytes:
        raise CheckpointError(
            f"{path}: storage record {member} is too short for tensor {tensor!r}: expected {nbytes} bytes "
            f"({ref.numel} x {ref.type.dtype}), found {len(buffer)}"
        )
    return decode_storage(buffer, ref.type.dtype, byteorder)


def materialize(state: dict, archive: zipfile.ZipFile, folder: str, byteorder: str, path: Path) -> dict[str, np.ndarray]:
    """Tensor records -> arrays; each storage read once, and let go after the last tensor using it."""
    users: dict[str, int] = {}
    types: dict[str, StorageType] = {}
    for name, record in state.items():
        ref = record.storage
        users[ref.key] = users.get(ref.key, 0) + 1
        if types.setdefault(ref.key, ref.type) is not ref.type:
            raise CheckpointError(f"{path}: storage {ref.key!r} is typed both {types[ref.key]} and {ref.type} (tensor {name!r})")
    shared = {key for key, n in users.items() if n > 1}
    storages: dict[str, np.ndarray] = {}
    out = {}
    for name, record in state.items():
        ref = record.storage
        needed = elements_needed(record.offset, record.size, record.stride)
        if needed > ref.numel:
            raise CheckpointError(
                f"{path}: tensor {name!r} (size {record.size}, stride {record.stride}, offset {record.offset}) "
                f"reaches element {needed} of storage {ref.key!r}, which declares {ref.numel}"
            )
        if ref.key not in storages:
            storages[ref.key] = load_storage(archive, folder, ref, byteorder, name, path)
        try:
            out[name] = view_of_storage(storages[ref.key], record.offset, record.size, record.stride, ref.key not in shared)
        except (ValueError, MemoryError) as e:
            raise CheckpointError(f"{path}: tensor {name!r} cannot be built ({type(e).__name__}: {e})") from None
        users[ref.key] -= 1
        if users[ref.key] == 0:
            del storages[ref.key]
    return out


def read_torch_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of a PyTorch checkpoint file (the zip format of ``torch.save``) as NumPy arrays,
    under the state dict's own names; see the module docstring for the format and what is dropped."""
    path = Path(path)
    check_signature(path)
    try:
        with zipfile.ZipFile(path) as archive:
            folder = record_folder(archive, path)
            byteorder = read_byteorder(archive, folder, path)
            obj = unpickle(archive.read(folder + "data.pkl"), f"{path}: {folder}data.pkl")
            return materialize(find_state_dict(obj, path), archive, folder, byteorder, path)
    except zipfile.BadZipFile as e:
        raise CheckpointError(f"{path}: a damaged or truncated zip archive ({e})") from None
    except (OSError, EOFError) as e:
        raise CheckpointError(f"{path}: cannot read the zip archive ({e})") from None


def read_sharded_torch(index_path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The tensors of a sharded PyTorch checkpoint (``pytorch_model.bin.index.json`` and its
    ``pytorch_model-0000k-of-0000n.bin`` shards), following ``weight_map`` in the index."""
    return read_sharded(index_path, read_torch_checkpoint)
