"""Small hostile checkpoint files, each built from bytes (no torch needed), for
tests/test_hostile_checkpoints.py and the fuzzing seed corpus (fuzz/corpus/).

Each builder returns the file's bytes; ``TORCH_CASES`` and ``SAFETENSORS_CASES`` map a case name to
``(builder, fragment)``, the fragment being what the reader's error must say. A fragment of
``None`` marks a file that must read correctly (a hostile-looking but valid one).
"""

from __future__ import annotations

import io
import json
import struct
import zipfile

import numpy as np

# ---------------------------------------------------------------------------------------------
# Pickles, written opcode by opcode


REBUILD = b"ctorch._utils\n_rebuild_tensor_v2\n"


def storage_pid(key: str = "0", numel: int = 4, storage: str = "FloatStorage") -> bytes:
    """The persistent id of a storage, protocol 0: ('storage', torch.<storage>, key, 'cpu', numel)."""
    return b"(Vstorage\nctorch\n" + storage.encode() + b"\nV" + key.encode() + b"\nVcpu\nI" + str(numel).encode() + b"\ntQ"


def int_tuple(values) -> bytes:
    return b"(" + b"".join(b"I" + str(v).encode() + b"\n" for v in values) + b"t"


def tensor(pid: bytes, offset: int, size, stride) -> bytes:
    """``_rebuild_tensor_v2(storage, offset, size, stride, False, {})``, protocol 0."""
    return REBUILD + b"(" + pid + b"I" + str(offset).encode() + b"\n" + int_tuple(size) + int_tuple(stride) + b"I00\n(dtR"


def state_dict_pkl(tensors: dict[str, bytes]) -> bytes:
    """A protocol-0 pickle of ``{name: tensor}``."""
    return b"(d" + b"".join(b"V" + name.encode() + b"\n" + t + b"s" for name, t in tensors.items()) + b"."


def torch_zip(data_pkl: bytes, records: dict[str, bytes] | None = None, folder: str = "archive",
              compression: int = zipfile.ZIP_STORED, records_compression: int = zipfile.ZIP_STORED) -> bytes:
    """A zip laid out as ``torch.save`` lays it out, around the given pickle and storage records."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{folder}/data.pkl", data_pkl, compress_type=compression)
        z.writestr(f"{folder}/byteorder", "little")
        for name, data in (records or {}).items():
            z.writestr(f"{folder}/{name}", data, compress_type=records_compression)
        z.writestr(f"{folder}/version", "3\n")
    return out.getvalue()


def valid_checkpoint() -> bytes:
    """Two float32 tensors and a transposed view of a shared storage: a small good file."""
    pid = storage_pid("0", 6)
    pkl = state_dict_pkl({"w": tensor(pid, 0, (2, 3), (3, 1)), "wt": tensor(pid, 0, (3, 2), (1, 3)),
                          "b": tensor(storage_pid("1", 2), 0, (2,), (1,))})
    return torch_zip(pkl, {"data/0": np.arange(6, dtype="<f4").tobytes(), "data/1": np.ones(2, "<f4").tobytes()})


def valid_checkpoint_arrays() -> dict[str, np.ndarray]:
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    return {"w": w, "wt": w.T.copy(), "b": np.ones(2, np.float32)}


# ---------------------------------------------------------------------------------------------
# Zip surgery: rewrite the central directory entries


def central_entries(data: bytes) -> tuple[int, list[dict]]:
    """(offset of the central directory, its entries as dicts of raw fields)."""
    end = data.rindex(b"PK\x05\x06")
    count, _, cd_offset = struct.unpack("<HII", data[end + 10: end + 20])
    entries, pos = [], cd_offset
    for _ in range(count):
        fields = struct.unpack("<4sHHHHHHIIIHHHHHII", data[pos: pos + 46])
        keys = ("sig", "made", "needed", "flags", "method", "time", "date", "crc", "csize", "usize",
                "nlen", "elen", "clen", "disk", "iattr", "eattr", "offset")
        entry = dict(zip(keys, fields))
        entry["name"] = data[pos + 46: pos + 46 + entry["nlen"]]
        entry["extra"] = data[pos + 46 + entry["nlen"]: pos + 46 + entry["nlen"] + entry["elen"]]
        pos += 46 + entry["nlen"] + entry["elen"] + entry["clen"]
        entries.append(entry)
    return cd_offset, entries


def rewrite_central(data: bytes, edit) -> bytes:
    """The zip ``data`` with each central directory entry passed through ``edit(entry)`` (which
    changes the dict in place); the directory is written again, the records left as they were."""
    cd_offset, entries = central_entries(data)
    cd = b""
    for entry in entries:
        edit(entry)
        entry["nlen"], entry["elen"], entry["clen"] = len(entry["name"]), len(entry["extra"]), 0
        cd += struct.pack("<4sHHHHHHIIIHHHHHII", *(entry[k] for k in (
            "sig", "made", "needed", "flags", "method", "time", "date", "crc", "csize", "usize",
            "nlen", "elen", "clen", "disk", "iattr", "eattr", "offset"))) + entry["name"] + entry["extra"]
    eocd = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(entries), len(entries), len(cd), cd_offset, 0)
    return data[:cd_offset] + cd + eocd


def edit_member(suffix: bytes, **fields):
    def edit(entry):
        if entry["name"].endswith(suffix):
            entry.update(fields)
    return edit


def zip64_offset(entry):
    if entry["name"].endswith(b"data.pkl"):
        entry["offset"] = 0xFFFFFFFF
        entry["extra"] = struct.pack("<HHQ", 1, 8, 2**63 + 5)


def bad_utf8_name(entry):
    if entry["name"].endswith(b"version"):
        entry["name"] = b"\xff\xfe" + entry["name"][2:]
        entry["flags"] |= 0x800


# ---------------------------------------------------------------------------------------------
# The hostile PyTorch files


def _shared_key_counts() -> bytes:
    # Two persistent ids name storage "0" with 4 and 1 000 000 elements; the second tensor would
    # read 4 MB past the 16 bytes present.
    pkl = state_dict_pkl({"a": tensor(storage_pid("0", 4), 0, (4,), (1,)),
                          "b": tensor(storage_pid("0", 1_000_000), 0, (1_000_000,), (1,))})
    return torch_zip(pkl, {"data/0": np.arange(4, dtype="<f4").tobytes()})


def _shared_key_types() -> bytes:
    pkl = state_dict_pkl({"a": tensor(storage_pid("0", 2), 0, (2,), (1,)),
                          "b": tensor(storage_pid("0", 2, "DoubleStorage"), 0, (2,), (1,))})
    return torch_zip(pkl, {"data/0": np.arange(2, dtype="<f4").tobytes()})


def _tensor_file(offset, size, stride, numel=4, data=None) -> bytes:
    pkl = state_dict_pkl({"w": tensor(storage_pid("0", numel), offset, size, stride)})
    return torch_zip(pkl, {"data/0": data if data is not None else np.arange(numel, dtype="<f4").tobytes()})


def _nested_tuples() -> bytes:
    # Admitted opcodes only: {(((...),),): None}; hashing the key recursed 200 000 deep in C.
    pkl = b"\x80\x02}" + b")" + b"\x85" * 200_000 + b"Ns."
    return torch_zip(pkl)


def _nested_lists() -> bytes:
    return torch_zip(b"\x80\x02" + b"]" * 100_000 + b"a" * 99_999 + b".")


def _nested_marks() -> bytes:
    return torch_zip(b"(" * 100_000 + b".")


def _memo_bomb() -> bytes:
    # One LONG_BINPUT at index 2**26 made pickle's memo table 2**26 entries long (1 GB).
    return torch_zip(b"\x80\x02}r" + struct.pack("<I", 2**26) + b".")


def _storage_size_lie() -> bytes:
    # A storage of 2**29 float32 elements whose record claims 2 GiB in the zip directory.
    data = _tensor_file(0, (2**29,), (1,), numel=2**29, data=b"\0" * 16)
    return rewrite_central(data, edit_member(b"data/0", csize=2**31, usize=2**31))


def _storage_count_lie() -> bytes:
    return _tensor_file(0, (2**29,), (1,), numel=2**29, data=b"\0" * 16)


def _none_flood() -> bytes:
    return torch_zip(b"\x80\x02" + b"N" * 486_000 + b".")


def _equal_hash_keys() -> bytes:
    # Integer keys k * (2**61 - 1) all hash to 0: a dict of them costs n**2 comparisons.
    keys = b"".join(b"\x8a\x0a" + (k * (2**61 - 1)).to_bytes(10, "little", signed=True) + b"N" for k in range(1, 60_000))
    return torch_zip(b"\x80\x02}(" + keys + b"u.")


def _float_keys() -> bytes:
    return torch_zip(b"\x80\x02}G?\xf0\x00\x00\x00\x00\x00\x00Ns.")


def _huge_long4() -> bytes:
    # A 1 MB integer as a tensor's size.
    big = b"\x8b" + struct.pack("<I", 2**20) + b"\x01" * 2**20
    pkl = b"(dVw\n" + REBUILD + b"(" + storage_pid() + b"I0\n(" + big + b"t(I1\ntI00\n(dtRs."
    return torch_zip(pkl, {"data/0": np.arange(4, dtype="<f4").tobytes()})


def _global(module: str, name: str) -> bytes:
    return torch_zip(b"c" + module.encode() + b"\n" + name.encode() + b"\n(Vtouch /tmp/numpy_mvit2_pwned\ntR.")


def _compressed(method: int) -> bytes:
    return torch_zip(state_dict_pkl({}), compression=method)


def _compressed_storage(method: int) -> bytes:
    pkl = state_dict_pkl({"w": tensor(storage_pid("0", 1024), 0, (1024,), (1,))})
    return torch_zip(pkl, {"data/0": b"\0" * 4096}, records_compression=method)


def _truncated(fraction: float) -> bytes:
    data = valid_checkpoint()
    return data[: int(len(data) * fraction)]


def _overlapping_records() -> bytes:
    # Two storage records pointing at the same bytes: together they declare more than the file.
    data = 64 * 1024
    pkl = state_dict_pkl({"a": tensor(storage_pid("0", data // 4), 0, (data // 4,), (1,)),
                          "b": tensor(storage_pid("1", data // 4), 0, (data // 4,), (1,))})
    raw = torch_zip(pkl, {"data/0": b"\0" * data, "data/1": b""})
    _, entries = central_entries(raw)
    first = next(e for e in entries if e["name"].endswith(b"data/0"))
    return rewrite_central(raw, edit_member(b"data/1", offset=first["offset"], csize=first["csize"], usize=first["usize"], crc=first["crc"], name=first["name"][:-1] + b"1"))


def _persid_text() -> bytes:
    return torch_zip(b"P0\n.")


def _stack_global_non_str() -> bytes:
    return torch_zip(b"\x80\x04K\x01K\x02\x93.")


def _self_append() -> bytes:
    return torch_zip(b"\x80\x02]q\x00" + b"h\x00a" * 200 + b".")


def _ordered_dict_replayed() -> bytes:
    # One list of 20 000 (key, value) pairs, memoized, handed to OrderedDict 200 times: four bytes
    # of pickle per call, 20 000 items of work each (a 200 kB file of such calls ran for hours).
    pkl = b"\x80\x02ccollections\nOrderedDict\nq\x010(VA\nNtq\x020]q\x03"
    pkl += b"".join(b"(" + b"h\x02" * 1000 + b"e" for _ in range(20)) + b"\x85q\x040"
    return torch_zip(pkl + b"h\x01h\x04R0" * 200 + b"}.")


LONG_NAME = "N" * 2**16  # a name from the file, in an error message: cut, its length said


def _long_name_view_past_storage() -> bytes:
    pkl = state_dict_pkl({LONG_NAME: tensor(storage_pid("0", 4), 3, (2,), (1,))})
    return torch_zip(pkl, {"data/0": np.arange(4, dtype="<f4").tobytes()})


def _long_storage_key() -> bytes:
    return torch_zip(state_dict_pkl({"w": tensor(storage_pid("k" * 2**16, 4), 0, (2,), (1,))}))


TORCH_CASES = {
    "valid": (valid_checkpoint, None),
    "shared-key-element-counts": (_shared_key_counts, "storage '0' is declared as 4 x torch.FloatStorage and, for tensor 'b', as 1000000"),
    "shared-key-types": (_shared_key_types, "one storage has one type and one size"),
    "huge-stride-size-1-dim": (lambda: _tensor_file(0, (1, 2), (2**62 - 1, 1)), None),
    "huge-offset-size-1-dims": (lambda: _tensor_file(2**61, (1, 1), (2**61, 2**61)), "reaches element"),
    "stride-over-int64": (lambda: _tensor_file(0, (2, 2), (2**63, 1)), "ints in [0, 2**62)"),
    "offset-over-int64": (lambda: _tensor_file(2**64, (1,), (1,)), "in [0, 2**62)"),
    "view-past-storage": (lambda: _tensor_file(3, (2,), (1,)), "reaches element 5"),
    "stride-0-expansion": (lambda: _tensor_file(0, (2**28,), (0,), numel=1), "views that repeat"),
    "stride-0-small": (lambda: _tensor_file(0, (3, 4), (1, 0), numel=3), None),
    "nested-tuples": (_nested_tuples, "nested more than 64 deep"),
    "nested-lists": (_nested_lists, "nested more than 64 deep"),
    "nested-marks": (_nested_marks, "MARKs open at once"),
    "self-append": (_self_append, "nested more than 64 deep"),
    "memo-index-2**26": (_memo_bomb, None),  # an empty state dict, memoized far away
    "memo-get-missing": (lambda: torch_zip(b"\x80\x02h\x05."), "memo entry 5 was never stored"),
    "storage-size-lie": (_storage_size_lie, "past the end of the file"),
    "storage-count-lie": (_storage_count_lie, "expected 2147483648 bytes"),
    "overlapping-records": (_overlapping_records, "more than the file's"),
    "none-flood": (_none_flood, "holds no state dict"),
    "equal-hash-int-keys": (_equal_hash_keys, "dict key"),
    "float-key": (_float_keys, "dict key 1.0 (float) refused"),
    "tuple-key": (lambda: torch_zip(b"\x80\x02})Ns."), "dict key () (tuple) refused"),
    "huge-long4": (_huge_long4, "an integer of"),
    "os-system": (lambda: _global("os", "system"), "refused pickle global os.system"),
    "posix-system": (lambda: _global("posix", "system"), "refused pickle global posix.system"),
    "persid-text": (_persid_text, "not a torch storage id"),
    "stack-global-ints": (_stack_global_non_str, "two strings"),
    "no-stop": (lambda: torch_zip(b"\x80\x02}"), "damaged pickle"),
    "empty-pickle": (lambda: torch_zip(b""), "damaged pickle"),
    "deflate-data-pkl": (lambda: _compressed(zipfile.ZIP_DEFLATED), "compressed (deflate)"),
    "bzip2-data-pkl": (lambda: _compressed(zipfile.ZIP_BZIP2), "compressed (bzip2)"),
    "lzma-data-pkl": (lambda: _compressed(zipfile.ZIP_LZMA), "compressed (lzma)"),
    "deflate-storage": (lambda: _compressed_storage(zipfile.ZIP_DEFLATED), "compressed (deflate)"),
    "bzip2-storage": (lambda: _compressed_storage(zipfile.ZIP_BZIP2), "compressed (bzip2)"),
    "unknown-method": (lambda: rewrite_central(valid_checkpoint(), edit_member(b"data.pkl", method=99)), "compressed (method 99)"),
    "encrypted-flag": (lambda: rewrite_central(valid_checkpoint(), edit_member(b"data.pkl", flags=1)), "encrypted"),
    "patched-flag": (lambda: rewrite_central(valid_checkpoint(), edit_member(b"data/0", flags=0x20)), "compressed patched data"),
    "strong-encryption-flag": (lambda: rewrite_central(valid_checkpoint(), edit_member(b"data/0", flags=0x40)), "strongly encrypted"),
    "zip-version-99": (lambda: rewrite_central(valid_checkpoint(), edit_member(b"data.pkl", needed=99)), "malformed zip archive (NotImplementedError: zip file version 9.9)"),
    "bad-utf8-name": (lambda: rewrite_central(valid_checkpoint(), bad_utf8_name), "malformed zip archive"),
    "zip64-offset-2**63": (lambda: rewrite_central(valid_checkpoint(), zip64_offset), "zip"),
    "sizes-differ": (lambda: rewrite_central(valid_checkpoint(), edit_member(b"data.pkl", usize=5)), "declares 5 bytes but stores"),
    "truncated-half": (lambda: _truncated(0.5), "zip archive"),
    "truncated-end": (lambda: _truncated(0.99), "zip archive"),
    "empty-file": (lambda: b"", "empty file"),
    "bare-pickle": (lambda: b"\x80\x02}q\x00.", "a bare pickle"),
    "ordered-dict-replayed": (_ordered_dict_replayed, "counting the items given to calls"),
    "long-tensor-name": (_long_name_view_past_storage, "NNN'... (65,536 characters) (size (2,)"),
    "long-storage-key": (_long_storage_key, "kkk... (65,549 characters) is missing"),
    "long-global-name": (lambda: _global("os", "s" * 2**16), "refused pickle global os.sss"),
}


# ---------------------------------------------------------------------------------------------
# The hostile safetensors files


def safetensors_bytes(header: dict | bytes, data: bytes = b"", length: int | None = None) -> bytes:
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(body) if length is None else length) + body + data


def valid_safetensors() -> bytes:
    return safetensors_bytes({"__metadata__": {"format": "np"},
                              "a": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]},
                              "b": {"dtype": "BF16", "shape": [2], "data_offsets": [16, 20]}},
                             np.arange(4, dtype="<f4").tobytes() + b"\x80\x3f\x00\x40")


def valid_safetensors_arrays() -> dict[str, np.ndarray]:
    return {"a": np.arange(4, dtype=np.float32).reshape(2, 2), "b": np.array([1.0, 2.0], np.float32)}


def _one(dtype="F32", shape=(2,), offsets=(0, 8), data=b"\0" * 8) -> bytes:
    return safetensors_bytes({"t": {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}}, data)


SAFETENSORS_CASES = {
    "valid": (valid_safetensors, None),
    "header-length-past-end": (lambda: safetensors_bytes(b'{"t": {}}', length=10_000), "past the end of the file"),
    "header-length-huge": (lambda: safetensors_bytes(b"{}", length=2**62), "more than the"),
    "header-not-json": (lambda: safetensors_bytes(b"{not json"), "not valid JSON"),
    "header-not-object": (lambda: safetensors_bytes(b"[1, 2]"), "not a safetensors file"),
    "header-not-utf8": (lambda: safetensors_bytes(b'{"\xff": 1}'), "not UTF-8"),
    "header-deep": (lambda: safetensors_bytes(b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"), "nested"),
    "header-many-lists": (lambda: safetensors_bytes(b'{"a": [' + b"[]," * 1_000_000 + b"[]]}"), "more lists and objects"),
    "short-file": (lambda: b"\x01\x00\x00", "too short"),
    "offsets-out-of-range": (lambda: _one(offsets=(0, 2**40)), "data_offsets"),
    "offsets-reversed": (lambda: _one(offsets=(8, 0)), "data_offsets"),
    "offsets-overlapping": (lambda: safetensors_bytes(
        {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
         "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12), "overlaps"),
    "offsets-gap": (lambda: _one(offsets=(4, 12), data=b"\0" * 12), "unused"),
    "data-past-tensors": (lambda: _one(data=b"\0" * 100), "cover 8 of the 100"),
    "dtype-unknown": (lambda: _one(dtype="F8_E4M3", shape=(8,)), "dtype 'F8_E4M3'"),
    "dtype-not-string": (lambda: _one(dtype=[1]), "dtype"),
    "shape-times-dtype-wrong": (lambda: _one(shape=(3,)), "takes 12 bytes"),
    "shape-huge": (lambda: _one(shape=(2**40, 2**40)), "takes"),
    "shape-negative": (lambda: _one(shape=(-2,)), "shape must be"),
    "shape-float": (lambda: _one(shape=(2.0,)), "shape must be"),
    "metadata-not-strings": (lambda: safetensors_bytes({"__metadata__": {"a": 1}}), "__metadata__"),
    "entry-not-object": (lambda: safetensors_bytes({"t": 5}), "not an object"),
    "empty-file": (lambda: b"", "too short"),
    "empty-but-huge-shape": (lambda: _one(dtype="F64", shape=(0, 2**61, 2**61), offsets=(0, 0), data=b""), "too large for an array"),
    "long-name": (lambda: safetensors_bytes({"N" * 2**16: {"dtype": "U8", "shape": [2], "data_offsets": [0, 1]}}, b"x"),
                  "NNN'... (65,536 characters): shape"),
}
