"""Property-based fuzzing of the checkpoint readers (hypothesis): small valid files, mutated the
ways files get damaged or crafted, must read as ``dict[str, ndarray]`` or fail with
``CheckpointError``; never another exception.

Mutations that stay inside a valid zip matter most: a flipped byte in a record mostly meets the
zip's CRC and stops there, so the pickle is also edited opcode by opcode and put back in a zip
with a correct CRC, which takes the mutation all the way to the pickle interpreter and the
storage checks. The longer, coverage-guided runs are in fuzz/ (atheris).
"""

from __future__ import annotations

import functools
import io
import json
import pickletools
import struct
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import fuzz_examples, require
from hostile_files import torch_zip, valid_checkpoint, valid_safetensors
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from numpy_mvit2.weights import CheckpointError, read_safetensors, read_torch_checkpoint

torch = require("torch")

FUZZ = settings(max_examples=fuzz_examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)


@functools.cache
def torch_seeds() -> tuple[bytes, ...]:
    """Small files from torch.save (protocols 2 and 4; views, shared storages, dtypes, a wrapper)
    and one written by hand."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(3, 4, generator=g)
    state = {"w": base, "t": base.t(), "row": base[1], "h": torch.randn(2, generator=g).half(),
             "bf": torch.randn(3, generator=g).bfloat16(), "i": torch.arange(3), "e": torch.randn(2, 1, generator=g).expand(2, 3),
             "b": torch.tensor([True, False])}
    seeds = []
    for obj, protocol in ((state, 2), (state, 4), ({"state_dict": {"w": base}, "epoch": 3, "opt": {0: {"lr": 0.1}}}, 2)):
        f = io.BytesIO()
        torch.save(obj, f, pickle_protocol=protocol)
        seeds.append(f.getvalue())
    return (*seeds, valid_checkpoint())


def records(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return {name: z.read(name) for name in z.namelist()}


def rezip(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return out.getvalue()


# Opcodes worth inserting: the admitted ones, and a few refused.
OPCODE_BYTES = [bytes([b]) for b in b"(.0012a}]e)t\x85\x86\x87NKJMG\x8a\x8cXqhrjQRbsuc\x93\x88\x89\x94\x81o"]


@st.composite
def pickle_edits(draw, data: bytes) -> bytes:
    """``data`` (a pickle) with some opcodes deleted, duplicated, swapped for others or given
    other argument bytes."""
    ops = [pos for _, _, pos in pickletools.genops(data)]
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        if not ops:
            break
        pos = min(draw(st.sampled_from(ops)), len(data))
        action = draw(st.sampled_from(["delete", "duplicate", "replace", "insert", "argument"]))
        if action == "delete":
            del data[pos: pos + 1]
        elif action == "duplicate":
            data[pos:pos] = data[pos: pos + draw(st.integers(1, 12))]
        elif action == "replace" and pos < len(data):
            data[pos: pos + 1] = draw(st.sampled_from(OPCODE_BYTES))
        elif action == "insert":
            data[pos:pos] = draw(st.sampled_from(OPCODE_BYTES)) + draw(st.binary(max_size=8))
        elif pos + 1 < len(data):
            data[pos + 1: pos + 2 + draw(st.integers(0, 7))] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


@st.composite
def byte_edits(draw, data: bytes) -> bytes:
    """``data`` with bytes flipped, a cut, an insertion or a run overwritten with extreme values."""
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        action = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "extreme"]))
        if action == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif action == "truncate":
            del data[pos:]
        elif action == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif action == "delete":
            del data[pos: pos + draw(st.integers(1, 16))]
        else:
            data[pos: pos + 4] = draw(st.sampled_from([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\xff\xff\xff\x7f", b"\x00\x00\x00\x80"]))
    return bytes(data)


@st.composite
def torch_files(draw) -> bytes:
    seed = draw(st.sampled_from(torch_seeds()))
    kind = draw(st.sampled_from(["bytes", "pickle", "record", "random"]))
    if kind == "bytes":
        return draw(byte_edits(seed))
    if kind == "random":
        return draw(st.binary(max_size=512))
    members = records(seed)
    pkl = next(name for name in members if name.endswith("/data.pkl"))
    if kind == "pickle":
        members[pkl] = draw(pickle_edits(members[pkl]))
    else:  # a storage record cut, grown or changed, or a record dropped
        name = draw(st.sampled_from(sorted(members)))
        members[name] = draw(st.one_of(byte_edits(members[name]), st.just(b"")))
        if draw(st.booleans()):
            del members[draw(st.sampled_from(sorted(members)))]
    return rezip(members)


def check_reader(reader, data: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"fuzzed{suffix}"
        path.write_bytes(data)
        try:
            arrays = reader(path)
        except CheckpointError as e:
            assert type(e) is CheckpointError and str(path) in str(e), e
            return
    assert isinstance(arrays, dict)
    for name, array in arrays.items():
        assert isinstance(name, str) and isinstance(array, np.ndarray), name
        assert array.flags.c_contiguous and array.dtype.isnative


@FUZZ
@given(torch_files())
def test_fuzzed_torch_checkpoints(data):
    check_reader(read_torch_checkpoint, data, ".pt")


@FUZZ
@given(st.binary(max_size=4096).map(torch_zip))
def test_random_pickles_in_a_torch_zip(data):
    check_reader(read_torch_checkpoint, data, ".pt")


@st.composite
def safetensors_files(draw) -> bytes:
    seed = valid_safetensors()
    kind = draw(st.sampled_from(["bytes", "header", "random"]))
    if kind == "bytes":
        return draw(byte_edits(seed))
    if kind == "random":
        return draw(st.binary(max_size=512))
    (length,) = struct.unpack("<Q", seed[:8])
    header, data = json.loads(seed[8: 8 + length]), seed[8 + length:]
    value = st.one_of(st.integers(-2**64, 2**64), st.sampled_from(["F32", "BF16", "I64", "BOOL", "X", ""]),
                      st.lists(st.integers(-3, 2**40), max_size=4), st.none(), st.floats(allow_nan=False))
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(sorted(header)))
        if isinstance(header[name], dict) and header[name] and name != "__metadata__":
            field = draw(st.sampled_from(sorted(header[name])))
            header[name][field] = draw(value)
        else:
            header[name] = draw(value)
    body = json.dumps(header).encode()
    return struct.pack("<Q", len(body)) + body + draw(byte_edits(data) | st.just(data))


@FUZZ
@given(safetensors_files())
def test_fuzzed_safetensors(data):
    check_reader(read_safetensors, data, ".safetensors")


@st.composite
def views(draw):
    """A storage and a view of it (offset, size, stride) that may or may not fit in it."""
    numel = draw(st.integers(0, 24))
    rank = draw(st.integers(0, 3))
    size = draw(st.lists(st.integers(0, 4), min_size=rank, max_size=rank))
    stride = draw(st.lists(st.one_of(st.integers(0, 8), st.just(2**62 - 1)), min_size=rank, max_size=rank))
    return numel, draw(st.integers(0, 30)), tuple(size), tuple(stride)


@FUZZ
@given(views(), st.sampled_from(["FloatStorage", "HalfStorage", "BFloat16Storage", "LongStorage", "BoolStorage"]))
def test_views_read_as_their_index_arithmetic_says(view, storage_type):
    """Element ``i`` of a view is element ``offset + sum(i_k * stride_k)`` of its storage; a view
    reaching past the storage's elements is refused."""
    from hostile_files import state_dict_pkl, storage_pid, tensor

    numel, offset, size, stride = view
    dtype = {"FloatStorage": "<f4", "HalfStorage": "<f2", "BFloat16Storage": "<u2", "LongStorage": "<i8", "BoolStorage": "u1"}[storage_type]
    values = np.arange(numel).astype(dtype) if storage_type != "BFloat16Storage" else (np.arange(numel, dtype="<f4").view("<u4") >> 16).astype("<u2")
    data = torch_zip(state_dict_pkl({"v": tensor(storage_pid("0", numel, storage_type), offset, size, stride)}), {"data/0": values.tobytes()})
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "v.pt"
        path.write_bytes(data)
        fits = 0 in size or offset + sum((n - 1) * s for n, s in zip(size, stride)) < numel
        if not fits:
            with pytest.raises(CheckpointError, match="reaches element"):
                read_torch_checkpoint(path)
            return
        got = read_torch_checkpoint(path)["v"]
    flat = np.arange(numel)
    index = offset + sum(i * s for i, s in zip(np.indices(size), stride)) if size else np.array(offset)
    want = flat[index] if numel else np.zeros(size, int)
    if storage_type == "BoolStorage":
        want = want != 0
    assert got.shape == size and got.flags.c_contiguous
    np.testing.assert_array_equal(got, want.astype(got.dtype))
