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
anything (``os.system``...). Here the pickle is not given to ``pickle`` at all: a small interpreter
of our own (``RestrictedUnpickler``, pure Python over ``pickletools.genops``) runs the opcodes a
state dict needs and nothing else. It admits a fixed list of globals, the ones a plain state dict
needs, and hands the pickle our own stand-ins for them: small functions that check their arguments
and return plain records, never torch's functions. Any other global is refused with an error naming
it, and so are the opcodes a state dict never uses: those that make instances of a class (``INST``,
``OBJ``, ``NEWOBJ``), the ``copyreg`` extension codes and out-of-band buffers. Our stand-ins refuse
``BUILD`` (state set on an object after it is made) except the harmless ``_metadata`` attribute
torch gives a state dict (each module's version), which is dropped, as are a parameter's Python
attributes and the ``metadata`` argument newer torch may pass to ``_rebuild_tensor_v2``.

Bounds: work and memory follow the bytes present
------------------------------------------------
A hostile file of a few hundred bytes must not cost more than a few hundred bytes' worth of work.
Every failure below is a ``CheckpointError`` naming the file and what is wrong; nothing else
escapes (no other exception type, no signal, no hang).

- Only regular files are opened, without blocking (``safeio.open_regular_file``): a FIFO would
  block ``open()`` forever, a device never ends.
- The zip: every record we read must be *stored* (torch.save never compresses, so a deflate,
  bzip2 or lzma record, whose 1 kB can inflate to gigabytes, is refused before any decompressor
  runs), unencrypted, with equal declared and stored sizes that end inside the file. Whatever
  ``zipfile`` raises on a malformed archive (it has many failure modes: ``NotImplementedError``,
  ``struct.error``, ``UnicodeDecodeError``, ``ValueError``...) becomes a ``CheckpointError``.
  ``zipfile`` turns every entry of the central directory into a Python object before we can look
  at any (about 9 microseconds and 0.5 kB each: a 56 MB directory of a million one-byte names took
  over 10 CPU seconds), so the directory may hold at most ``MAX_CENTRAL_DIRECTORY`` bytes, read from
  its end record first; torch.save writes about 80 bytes per storage.
- The pickle interpreter (why not ``pickle.Unpickler``: its C stack overflows on deep nesting, its
  memo grows to the largest index named, and it hashes whatever a pickle makes a dict key):
  at most ``MAX_OPCODES`` opcodes (a call counted as the items of the containers it is given),
  ``MAX_TENSORS`` tensors, ``MAX_STACK`` items on its stack, ``MAX_DEPTH`` levels of
  marks and of containers inside containers, memo indexes below ``MAX_MEMO_INDEX`` kept in a dict
  (so an index costs one entry, not a table that long), integers of at most ``MAX_INT_BYTES``
  bytes, and dict keys only ``str``, ``bytes``, ``bool``, ``None`` or an ``int`` below 2**60 (whose
  hashes cannot be made to collide; optimizer states key by int). A real state dict needs a few
  dozen opcodes per tensor, nesting under 10 and stacks of at most a few thousand items.
- Storages: every persistent id naming one record must agree on its element type and count; the
  bytes it declares must be in its record (checked against the record's size before anything is
  allocated), and all storages together must fit in the file. Every tensor is checked against the
  storage it is built from: sizes, strides and offsets below 2**62, its last element inside the
  storage's decoded elements, and strides of size-1 dimensions ignored (torch gives them any value).
- Output: views can repeat a storage's elements (``expand`` gives stride 0, and views of one storage
  are copied apart), so the arrays returned may hold more bytes than the file, but never more than
  ``OUTPUT_FACTOR`` times the file's size plus ``OUTPUT_SLACK``: enough for tied weights, views
  and small expanded tensors; far from the gigabyte one stride-0 view of a tiny file could ask for.

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

from ..errors import CheckpointError, cut, shown
from ..layout import read_sharded
from ..safeio import open_regular_file

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

# Bounds on the pickle interpreter (see "Bounds" above). torch.save writes about 33 opcodes per
# tensor; 2**21 opcodes is a state dict of 60 000 tensors (a large language model has a few
# thousand), and about 3 CPU seconds and 300 MB at worst (a memo filled with empty lists).
MAX_OPCODES = 2**21
# A call (REDUCE) costs more than an opcode: our function checks its arguments, and a tensor is
# later checked and copied. Calls are charged the items of the lists, tuples and dicts they are
# given (a list of pairs handed to OrderedDict again and again, from the memo, would otherwise cost
# its length per four bytes of pickle), and tensors are counted: torch.save writes one rebuild per
# tensor, so MAX_OPCODES already allows at most 60 000 of them.
MAX_TENSORS = 2**17
MAX_STACK = 2**20  # pickle batches items by 1000, so real stacks stay near 2000
MAX_DEPTH = 64  # marks open at once, and containers inside containers
MAX_MEMO_INDEX = 2**32  # LONG_BINPUT's own range
MAX_INT_BYTES = 256  # pickle writes ints below 2**2040 with LONG1; a size needs 8 bytes
MAX_DIMENSION = 2**62  # sizes, strides, offsets, element counts: int64 with room to add them
MAX_KEY_INT = 2**60  # below it int hashes are the ints themselves: no collisions to craft

# The zip's central directory: 2**24 bytes is 200 000 storages as torch.save names them.
MAX_CENTRAL_DIRECTORY = 2**24

# Bounds on what the storages may become.
OUTPUT_FACTOR = 4
OUTPUT_SLACK = 16 * 2**20

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
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < MAX_DIMENSION


def rebuild_tensor(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None) -> TensorRecord:
    """Our ``torch._utils._rebuild_tensor_v2``: checks the arguments, returns a ``TensorRecord``."""
    if not isinstance(storage, StorageRef):
        raise TypeError(f"storage must be a storage persistent id, got {type(storage).__name__}")
    if not _is_index(storage_offset):
        raise ValueError(f"storage_offset must be an int in [0, 2**62), got {reprlib.repr(storage_offset)}")
    if not (isinstance(size, (tuple, list)) and isinstance(stride, (tuple, list)) and len(size) == len(stride) <= 64):
        raise ValueError(f"size and stride must be tuples of one length (at most 64), got {reprlib.repr(size)} and {reprlib.repr(stride)}")
    if not all(_is_index(n) for n in (*size, *stride)):
        raise ValueError(f"size and stride must hold ints in [0, 2**62), got {reprlib.repr(size)} and {reprlib.repr(stride)}")
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
    for key, _ in items:
        check_key(key)
    return StateDict(items)


def check_key(key) -> None:
    """Refuse a dict key whose hash a pickle could make expensive: a nested tuple hashes
    recursively (deep enough, it overflows the C stack), and ints or floats of equal hash are
    easy to make, turning a dict of n items into n**2 work. ``str`` and ``bytes`` hash with a
    per-process random key; ints below 2**60 hash to themselves."""
    if key is None or isinstance(key, (str, bytes, bool)):
        return
    if isinstance(key, int) and -MAX_KEY_INT < key < MAX_KEY_INT:
        return
    raise pickle.UnpicklingError(f"dict key {reprlib.repr(key)} ({type(key).__name__}) refused: keys must be str, bytes, bool, None or an int below 2**60")


ADMITTED_GLOBALS = {
    ("collections", "OrderedDict"): Admitted("collections.OrderedDict", ordered_dict),
    ("torch._utils", "_rebuild_tensor_v2"): Admitted("torch._utils._rebuild_tensor_v2", rebuild_tensor),
    ("torch._utils", "_rebuild_parameter"): Admitted("torch._utils._rebuild_parameter", rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): Admitted("torch._utils._rebuild_parameter_with_state", rebuild_parameter),
    **{("torch", name): StorageType(name, dtype) for name, dtype in STORAGE_DTYPES.items()},
}


def refusal(module: str, name: str) -> str:
    """Why the global ``module.name`` is refused, with a hint for torch names we know."""
    what = f"refused pickle global {cut(module)}.{cut(name)}"
    if module == "torch" and name.endswith("Storage") and name.isidentifier():
        return f"{what}: a storage type numpy_mvit2 does not read (it reads {', '.join(STORAGE_DTYPES)})"
    if (module, name) in (("torch._utils", "_rebuild_tensor_v3"), ("torch.storage", "UntypedStorage")):
        return f"{what}: tensors of the dtypes torch saves this way (uint16/32/64, float8, ...) are not supported"
    admitted = ", ".join(f"{m}.{n}" for m, n in ADMITTED_GLOBALS if not n.endswith("Storage"))
    return f"{what}: numpy_mvit2 reads only plain state dicts of tensors (admitted globals: {admitted}, torch.<dtype>Storage)"


class RestrictedUnpickler:
    """A pickle interpreter for state dicts: the opcodes of ``ADMITTED_OPCODES`` only, globals from
    ``ADMITTED_GLOBALS`` only, persistent ids only as ``StorageRef``s, and the bounds of the module
    docstring. Used like ``pickle.Unpickler(file).load()``; every refusal and every sign of damage is
    a ``pickle.UnpicklingError``.

    Pure Python over ``pickletools.genops`` (which decodes each opcode and its argument, bounded by
    the bytes present) rather than ``pickle.Unpickler``, whose C code recurses when it hashes a
    nested key, sizes its memo by the largest index named and calls ``find_class`` for ``INST`` and
    ``OBJ`` with classes of its choosing. The stack machine is pickle's own: ``MARK`` saves the
    stack and starts a fresh one, the opcodes that close a mark (``TUPLE``, ``APPENDS``...) take it
    and restore the saved one.
    """

    def __init__(self, file, *, encoding: str = "utf-8"):
        self.data = file.read()
        self.encoding = encoding  # of protocol-0/1 ``str`` (Python 2 byte strings), as pickle's
        self.stack: list = []
        self.marks: list[list] = []  # the stacks saved by MARK
        self.memo: dict[int, object] = {}
        self.depth: dict[int, int] = {}  # id(container) -> how deep containers nest in it, where over 1
        self.items = 0  # on all stacks together
        self.work = 0  # opcodes run, and the items the calls were given (see MAX_OPCODES)
        self.tensors = 0

    def charge(self, work: int) -> None:
        self.work += work
        if self.work > MAX_OPCODES:
            raise pickle.UnpicklingError(f"more than {MAX_OPCODES} opcodes (counting the items given to calls), far more than a state dict needs")

    # --- the machine

    def load(self):
        ops = pickletools.genops(self.data)
        while True:
            try:
                opcode, arg, pos = next(ops)
            except StopIteration:
                raise pickle.UnpicklingError("damaged pickle: it ends before its STOP opcode") from None
            except Exception as e:  # noqa: BLE001 -- genops on damaged bytes: ValueError, UnicodeDecodeError, ...
                raise pickle.UnpicklingError(f"damaged pickle ({type(e).__name__}: {cut(e)})") from None
            self.charge(1)
            name = opcode.name
            if name in ("GLOBAL", "INST"):  # name the refused global before the refused opcode
                module, _, attribute = arg.partition(" ")
                self.find_class(module, attribute)
            if name not in ADMITTED_OPCODES:
                raise pickle.UnpicklingError(f"pickle opcode {name} at byte {pos} refused (torch.save never writes it for a state dict)")
            if name == "STOP":
                return self.pop()
            try:
                getattr(self, "op_" + name)(arg)
            except pickle.UnpicklingError as e:
                raise pickle.UnpicklingError(f"{e} (opcode {name} at byte {pos})") from None

    def push(self, value) -> None:
        self.items += 1
        if self.items > MAX_STACK:
            raise pickle.UnpicklingError(f"more than {MAX_STACK} items on the stack")
        self.stack.append(value)

    def pop(self):
        if not self.stack:
            raise pickle.UnpicklingError("damaged pickle: pops an empty stack")
        self.items -= 1
        return self.stack.pop()

    def top(self):
        if not self.stack:
            raise pickle.UnpicklingError("damaged pickle: reads an empty stack")
        return self.stack[-1]

    def pop_mark(self) -> list:
        """The items pushed since the last MARK; the stack before it comes back."""
        if not self.marks:
            raise pickle.UnpicklingError("damaged pickle: closes a MARK it never opened")
        items, self.stack = self.stack, self.marks.pop()
        self.items -= len(items)
        return items

    def depth_of(self, value) -> int:
        return self.depth.get(id(value), 1) if isinstance(value, (tuple, list, dict)) else 0

    def container(self, value, children) -> object:
        """Record how deep ``value`` (a new tuple, list or dict of ``children``) nests."""
        depth = 1 + max((self.depth_of(c) for c in children), default=0)
        if depth > MAX_DEPTH:
            raise pickle.UnpicklingError(f"containers nested more than {MAX_DEPTH} deep")
        if depth > 1:
            self.depth[id(value)] = depth
        else:  # the default; and forget what a freed container with this id had
            self.depth.pop(id(value), None)
        return value

    def grow(self, container, children) -> None:
        """Record that ``children`` were added to ``container`` (which may now nest deeper)."""
        depth = max(self.depth_of(container), 1 + max((self.depth_of(c) for c in children), default=0))
        if depth > MAX_DEPTH:
            raise pickle.UnpicklingError(f"containers nested more than {MAX_DEPTH} deep")
        self.depth[id(container)] = depth

    def find_class(self, module, name):
        if not (isinstance(module, str) and isinstance(name, str)):
            raise pickle.UnpicklingError("STACK_GLOBAL names a global with something other than two strings")
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

    # --- the opcodes, each as ``pickle``'s own Python implementation runs it

    def op_PROTO(self, arg):
        pass

    def op_FRAME(self, arg):  # framing only groups bytes for reading; genops reads through it
        pass

    def op_MARK(self, arg):
        if len(self.marks) >= MAX_DEPTH:
            raise pickle.UnpicklingError(f"more than {MAX_DEPTH} MARKs open at once")
        self.marks.append(self.stack)
        self.stack = []

    def op_POP(self, arg):
        if self.stack:
            self.pop()
        else:
            self.pop_mark()

    def op_POP_MARK(self, arg):
        self.pop_mark()

    def op_DUP(self, arg):
        self.push(self.top())

    def op_PUT(self, arg):
        if not (isinstance(arg, int) and 0 <= arg < MAX_MEMO_INDEX):
            raise pickle.UnpicklingError(f"memo index {reprlib.repr(arg)} out of range")
        self.memo[arg] = self.top()

    op_BINPUT = op_LONG_BINPUT = op_PUT

    def op_MEMOIZE(self, arg):
        self.memo[len(self.memo)] = self.top()

    def op_GET(self, arg):
        try:
            self.push(self.memo[arg])
        except (KeyError, TypeError):
            raise pickle.UnpicklingError(f"damaged pickle: memo entry {reprlib.repr(arg)} was never stored") from None

    op_BINGET = op_LONG_BINGET = op_GET

    def op_NONE(self, arg):
        self.push(None)

    def op_NEWTRUE(self, arg):
        self.push(True)

    def op_NEWFALSE(self, arg):
        self.push(False)

    def op_INT(self, arg):  # also LONG, LONG1, LONG4 (genops decodes them all to an int; INT 00/01 to a bool)
        if isinstance(arg, int) and not isinstance(arg, bool) and arg.bit_length() > 8 * MAX_INT_BYTES:
            raise pickle.UnpicklingError(f"an integer of {arg.bit_length()} bits, more than a checkpoint holds")
        self.push(arg)

    op_BININT = op_BININT1 = op_BININT2 = op_LONG = op_LONG1 = op_LONG4 = op_INT

    def op_FLOAT(self, arg):
        self.push(arg)

    op_BINFLOAT = op_FLOAT
    op_UNICODE = op_BINUNICODE = op_SHORT_BINUNICODE = op_BINUNICODE8 = op_FLOAT
    op_BINBYTES = op_SHORT_BINBYTES = op_BINBYTES8 = op_FLOAT

    def op_STRING(self, arg):
        """A Python 2 ``str``: genops hands its bytes as latin-1 text; decoded as pickle would
        decode them with ``encoding``."""
        try:
            self.push(arg.encode("latin-1").decode(self.encoding))
        except UnicodeError as e:
            raise pickle.UnpicklingError(f"damaged pickle: a string that is not {self.encoding} ({e})") from None

    op_BINSTRING = op_SHORT_BINSTRING = op_STRING

    def op_EMPTY_TUPLE(self, arg):
        self.push(())

    def op_TUPLE(self, arg):
        items = tuple(self.pop_mark())
        self.push(self.container(items, items))

    def op_TUPLE1(self, arg):
        items = (self.pop(),)
        self.push(self.container(items, items))

    def op_TUPLE2(self, arg):
        b, a = self.pop(), self.pop()
        self.push(self.container((a, b), (a, b)))

    def op_TUPLE3(self, arg):
        c, b, a = self.pop(), self.pop(), self.pop()
        self.push(self.container((a, b, c), (a, b, c)))

    def op_EMPTY_LIST(self, arg):
        self.push(self.container([], ()))

    def op_LIST(self, arg):
        items = self.pop_mark()
        self.push(self.container(items, items))

    def target(self, kind):
        target = self.top()
        if type(target) is not kind and not (kind is dict and isinstance(target, StateDict)):
            raise pickle.UnpicklingError(f"adds items to a {type(target).__name__}, not a {kind.__name__}")
        return target

    def op_APPEND(self, arg):
        value = self.pop()
        target = self.target(list)
        self.grow(target, (value,))
        target.append(value)

    def op_APPENDS(self, arg):
        items = self.pop_mark()
        target = self.target(list)
        self.grow(target, items)
        target.extend(items)

    def op_EMPTY_DICT(self, arg):
        self.push(self.container({}, ()))

    def op_DICT(self, arg):
        items = self.pop_mark()
        if len(items) % 2:
            raise pickle.UnpicklingError("damaged pickle: DICT of an odd number of items")
        value = self.container({}, ())
        self.set_items(value, items)
        self.push(value)

    def set_items(self, target: dict, items: list) -> None:
        keys, values = items[0::2], items[1::2]
        for key in keys:
            check_key(key)
        self.grow(target, values)
        target.update(zip(keys, values))

    def op_SETITEM(self, arg):
        value, key = self.pop(), self.pop()
        self.set_items(self.target(dict), [key, value])

    def op_SETITEMS(self, arg):
        items = self.pop_mark()
        if len(items) % 2:
            raise pickle.UnpicklingError("damaged pickle: SETITEMS of an odd number of items")
        self.set_items(self.target(dict), items)

    def op_GLOBAL(self, arg):
        module, _, name = arg.partition(" ")
        self.push(self.find_class(module, name))

    def op_STACK_GLOBAL(self, arg):
        name, module = self.pop(), self.pop()
        self.push(self.find_class(module, name))

    def op_REDUCE(self, arg):
        args = self.pop()
        function = self.pop()
        if not isinstance(function, Admitted):
            raise pickle.UnpicklingError(f"REDUCE calls {reprlib.repr(function)}, which is not callable")
        if not isinstance(args, tuple):
            raise pickle.UnpicklingError(f"REDUCE calls {function!r} with {type(args).__name__} arguments, not a tuple")
        self.charge(len(args) + sum(len(a) for a in args if isinstance(a, (tuple, list, dict))))
        if function.function is rebuild_tensor:
            self.tensors += 1
            if self.tensors > MAX_TENSORS:
                raise pickle.UnpicklingError(f"more than {MAX_TENSORS} tensors, far more than a state dict holds")
        result = function(*args)
        if isinstance(result, dict):  # a state dict made from pairs: as deep as its values make it
            self.container(result, result.values())
        self.push(result)

    def op_BUILD(self, arg):
        state = self.pop()
        target = self.top()
        if not isinstance(target, (_Inert, StateDict)):
            raise pickle.UnpicklingError(f"BUILD on a {type(target).__name__} refused")
        target.__setstate__(state)  # ours: refuses, or (a state dict's _metadata) drops it

    def op_PERSID(self, arg):
        self.push(self.persistent_load(arg))

    def op_BINPERSID(self, arg):
        self.push(self.persistent_load(self.pop()))


def unpickle(data: bytes, where: str):
    """The object in ``data.pkl``, rebuilt from our stand-ins; any failure -> ``CheckpointError``."""
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="utf-8").load()
    except pickle.UnpicklingError as e:  # our refusals, and the signs of damage
        raise CheckpointError(f"{where}: {e}") from None
    except RecursionError:  # not expected: nothing here recurses on the pickle's structure
        raise CheckpointError(f"{where}: a pickle nested too deeply") from None
    except MemoryError:
        raise CheckpointError(f"{where}: does not fit in memory") from None
    except Exception as e:  # noqa: BLE001 -- not expected either; a hostile pickle's fault all the same
        raise CheckpointError(f"{where}: damaged pickle ({type(e).__name__}: {cut(e)})") from None


# ---------------------------------------------------------------------------------------------
# The zip archive.


def check_signature(head: bytes, path: Path) -> None:
    """Tell apart, by the first bytes, a zip archive from a legacy torch file, another pickle, an
    empty file or anything else, and raise a ``CheckpointError`` for all but the zip."""
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


def check_central_directory(f, path: Path) -> None:
    """Refuse a zip whose central directory (its size from the end record, found as ``zipfile``
    finds it) is over ``MAX_CENTRAL_DIRECTORY`` bytes, before ``zipfile`` parses it. A damaged end
    record is left to ``zipfile`` to report."""
    try:
        end = zipfile._EndRecData(f)  # zipfile's own reader of the end record (private, stable since Python 2)
    finally:
        f.seek(0)
    if end and end[zipfile._ECD_SIZE] > MAX_CENTRAL_DIRECTORY:
        raise CheckpointError(f"{path}: its zip directory holds {end[zipfile._ECD_SIZE]} bytes, more than the "
                              f"{MAX_CENTRAL_DIRECTORY} allowed (torch.save writes about 80 bytes per storage)")


def record_folder(archive: zipfile.ZipFile, path: Path) -> str:
    """The top-level folder of the archive's records (``"archive/"``...): the one holding ``data.pkl``."""
    folders = [n[: -len("data.pkl")] for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(folders) != 1:
        names = archive.namelist()
        found = f"{len(folders)} of them ({cut(', '.join(folders[:10]))})" if folders else f"none (the archive holds: {cut(', '.join(names[:10])) or 'nothing'})"
        raise CheckpointError(f"{path}: a zip archive but not a PyTorch checkpoint: expected one <folder>/data.pkl, found {found}")
    return folders[0]


# Zip flag bits zipfile cannot read or that mean encryption: encrypted, compressed patched data,
# strong encryption. (Bit 3, sizes after the data, and bit 11, UTF-8 names, are fine.)
REFUSED_FLAGS = {0x1: "encrypted", 0x20: "compressed patched data", 0x40: "strongly encrypted"}
ZIP_LOCAL_HEADER = 30  # bytes before a record's name in its local header


def record_info(archive: zipfile.ZipFile, member: str, file_size: int, path: Path) -> zipfile.ZipInfo:
    """The directory entry of ``member``, checked to be readable as torch writes records: stored
    (not compressed), not encrypted, its data inside the file. ``KeyError`` if it is absent."""
    info = archive.getinfo(member)
    if info.compress_type != zipfile.ZIP_STORED:
        method = {zipfile.ZIP_DEFLATED: "deflate", zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "lzma"}.get(info.compress_type, f"method {info.compress_type}")
        raise CheckpointError(f"{path}: record {cut(member)} is compressed ({method}); torch.save stores records uncompressed, and numpy_mvit2 reads only those")
    for bit, what in REFUSED_FLAGS.items():
        if info.flag_bits & bit:
            raise CheckpointError(f"{path}: record {cut(member)} is {what}, which torch.save never writes")
    if info.compress_size != info.file_size:
        raise CheckpointError(f"{path}: record {cut(member)} declares {info.file_size} bytes but stores {info.compress_size}")
    if info.header_offset + ZIP_LOCAL_HEADER + info.compress_size > file_size:
        raise CheckpointError(f"{path}: record {cut(member)} declares {info.file_size} bytes at offset {info.header_offset}, past the end of the file ({file_size} bytes)")
    return info


def read_record(archive: zipfile.ZipFile, info: zipfile.ZipInfo, nbytes: int) -> bytearray:
    """The first ``nbytes`` bytes of a (checked) zip record into a fresh, writeable buffer; fewer
    if the record is shorter. Reading stops at ``nbytes``: a lying header cannot make us read more,
    and the buffer is never larger than the record's bytes in the file."""
    buffer = bytearray(min(nbytes, info.file_size))
    view, filled = memoryview(buffer), 0
    with archive.open(info) as f:
        while filled < len(buffer):
            n = f.readinto(view[filled:])
            if not n:
                break
            filled += n
    return buffer[:filled] if filled < len(buffer) else buffer


def read_small_record(archive: zipfile.ZipFile, member: str, file_size: int, limit: int, path: Path) -> bytes | None:
    """A whole record of at most ``limit`` bytes (``None`` if absent), checked as ``record_info`` checks."""
    try:
        info = record_info(archive, member, file_size, path)
    except KeyError:
        return None
    if info.file_size > limit:
        raise CheckpointError(f"{path}: record {cut(member)} holds {info.file_size} bytes, more than the {limit} it may")
    return bytes(read_record(archive, info, info.file_size))


def read_byteorder(archive: zipfile.ZipFile, folder: str, file_size: int, path: Path) -> str:
    """``"little"`` or ``"big"`` from the ``byteorder`` record; little when the record is absent."""
    value = read_small_record(archive, folder + "byteorder", file_size, 64, path)
    if value is None:
        return "little"
    order = value.decode("ascii", "replace").strip()
    if order not in ("little", "big"):
        raise CheckpointError(f"{path}: {cut(folder)}byteorder record holds {value[:20]!r}, expected 'little' or 'big'")
    return order


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
    storage reshaped when the tensor is its only, contiguous, full-length user, else a copy.
    ``storage`` must hold ``elements_needed(offset, size, stride)`` elements (checked here too:
    ``as_strided`` reads whatever memory the strides point at)."""
    if sole_user and offset == 0 and math.prod(size) == storage.size and list(stride) == _c_strides(size):
        return storage.reshape(size)
    if 0 in size:
        return np.zeros(size, dtype=storage.dtype)
    if elements_needed(offset, size, stride) > storage.size:
        raise ValueError(f"the view reaches past the {storage.size} elements of its storage")
    # A size-1 dimension is never stepped along, so its stride is irrelevant; torch writes any
    # value there, and a large one would overflow NumPy's byte strides.
    strides = [0 if n == 1 else s * storage.itemsize for n, s in zip(size, stride)]
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=size, strides=strides, writeable=False)
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


def check_storages(state: dict, archive: zipfile.ZipFile, folder: str, file_size: int, path: Path) -> dict[str, zipfile.ZipInfo]:
    """Before anything is allocated: each storage is named alike by all its persistent ids and its
    record holds the bytes they declare; each tensor lies inside its storage; and the storages,
    and the arrays to be made of them, fit the bounds of the module docstring. Returns each
    storage key's record."""
    refs: dict[str, StorageRef] = {}
    records: dict[str, zipfile.ZipInfo] = {}
    stored = output = 0
    budget = OUTPUT_FACTOR * file_size + OUTPUT_SLACK
    for name, record in state.items():
        ref = record.storage
        first = refs.setdefault(ref.key, ref)
        if first.type is not ref.type or first.numel != ref.numel:
            raise CheckpointError(
                f"{path}: storage {shown(ref.key)} is declared as {first.numel} x {first.type} and, for tensor {shown(name)}, "
                f"as {ref.numel} x {ref.type}; one storage has one type and one size"
            )
        if ref.key not in records:
            member = f"{folder}data/{ref.key}"
            try:
                info = records[ref.key] = record_info(archive, member, file_size, path)
            except KeyError:
                raise CheckpointError(f"{path}: storage record {cut(member)} is missing (tensor {shown(name)} needs it)") from None
            nbytes = ref.numel * ref.type.itemsize
            if nbytes > info.file_size:
                raise CheckpointError(
                    f"{path}: storage record {cut(member)} is too short for tensor {shown(name)}: expected {nbytes} bytes "
                    f"({ref.numel} x {ref.type.dtype}), found {info.file_size}"
                )
            stored += nbytes
            if stored > file_size:  # overlapping records: real storages are disjoint parts of the file
                raise CheckpointError(f"{path}: its storages declare {stored} bytes in all, more than the file's {file_size}")
        needed = elements_needed(record.offset, record.size, record.stride)
        if needed > ref.numel:
            raise CheckpointError(
                f"{path}: tensor {shown(name)} (size {record.size}, stride {record.stride}, offset {record.offset}) "
                f"reaches element {needed} of storage {shown(ref.key)}, which declares {ref.numel}"
            )
        output += math.prod(record.size) * (4 if ref.type.dtype == "bfloat16" else ref.type.itemsize)
        if output > budget:
            raise CheckpointError(
                f"{path}: its tensors would take more than {budget} bytes ({OUTPUT_FACTOR} x the file's {file_size} bytes "
                f"+ {OUTPUT_SLACK}) by tensor {shown(name)} (size {record.size}, stride {record.stride}): views that repeat "
                f"their storage's elements this much are refused"
            )
    return records


def load_storage(archive: zipfile.ZipFile, info: zipfile.ZipInfo, ref: StorageRef, byteorder: str, tensor: str, path: Path) -> np.ndarray:
    """Read and decode the (checked) record of one storage, checking it holds all the elements it declares."""
    nbytes = ref.numel * ref.type.itemsize
    try:
        buffer = read_record(archive, info, nbytes)
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise CheckpointError(f"{path}: storage record {cut(info.filename)} is damaged ({cut(e)}; tensor {shown(tensor)} needs it)") from None
    if len(buffer) < nbytes:
        raise CheckpointError(
            f"{path}: storage record {cut(info.filename)} is too short for tensor {shown(tensor)}: expected {nbytes} bytes "
            f"({ref.numel} x {ref.type.dtype}), found {len(buffer)}"
        )
    return decode_storage(buffer, ref.type.dtype, byteorder)


def materialize(state: dict, archive: zipfile.ZipFile, folder: str, byteorder: str, file_size: int, path: Path) -> dict[str, np.ndarray]:
    """Tensor records -> arrays; each storage read once, and let go after the last tensor using it."""
    records = check_storages(state, archive, folder, file_size, path)
    users: dict[str, int] = {}
    for record in state.values():
        users[record.storage.key] = users.get(record.storage.key, 0) + 1
    storages: dict[str, np.ndarray] = {}
    out = {}
    for name, record in state.items():
        ref = record.storage
        if ref.key not in storages:
            storages[ref.key] = load_storage(archive, records[ref.key], ref, byteorder, name, path)
        try:
            out[name] = view_of_storage(storages[ref.key], record.offset, record.size, record.stride, users[ref.key] == 1)
        except (ValueError, MemoryError) as e:
            raise CheckpointError(f"{path}: tensor {shown(name)} cannot be built ({type(e).__name__}: {cut(e)})") from None
        users[ref.key] -= 1
        if users[ref.key] == 0:
            del storages[ref.key]
    return out


def read_torch_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of a PyTorch checkpoint file (the zip format of ``torch.save``) as NumPy arrays,
    under the state dict's own names; see the module docstring for the format, what is dropped and
    what is bounded."""
    path = Path(path)
    with open_regular_file(path) as f:
        file_size = os.fstat(f.fileno()).st_size
        try:
            head = f.read(len(LEGACY_MAGIC))
            f.seek(0)
        except OSError as e:
            raise CheckpointError(f"{path}: cannot read ({e.strerror or e})") from None
        check_signature(head, path)
        try:
            check_central_directory(f, path)
            with zipfile.ZipFile(f) as archive:
                folder = record_folder(archive, path)
                byteorder = read_byteorder(archive, folder, file_size, path)
                data = read_small_record(archive, folder + "data.pkl", file_size, file_size, path)
                obj = unpickle(data, f"{path}: {cut(folder)}data.pkl")
                return materialize(find_state_dict(obj, path), archive, folder, byteorder, file_size, path)
        except CheckpointError:
            raise
        except zipfile.BadZipFile as e:
            raise CheckpointError(f"{path}: a damaged or truncated zip archive ({cut(e)})") from None
        except (OSError, EOFError) as e:
            raise CheckpointError(f"{path}: cannot read the zip archive ({cut(e) or type(e).__name__})") from None
        except MemoryError:
            raise CheckpointError(f"{path}: the zip archive does not fit in memory") from None
        except Exception as e:  # noqa: BLE001 -- zipfile on a malformed archive: NotImplementedError, struct.error, ValueError, ...
            raise CheckpointError(f"{path}: a malformed zip archive ({type(e).__name__}: {cut(e)})") from None


def read_sharded_torch(index_path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The tensors of a sharded PyTorch checkpoint (``pytorch_model.bin.index.json`` and its
    ``pytorch_model-0000k-of-0000n.bin`` shards), following ``weight_map`` in the index."""
    return read_sharded(index_path, read_torch_checkpoint)
