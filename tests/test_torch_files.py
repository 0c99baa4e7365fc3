"""The torch-free reader of PyTorch checkpoint files (numpy_mvit2/weights/torch_files.py).

Files come from ``torch.save`` itself, then are edited the ways real files differ (record folder
name, byteorder, optional records) or broken the ways files get broken. Hostile pickles are built
opcode by opcode and must be refused, naming the global, before any payload runs.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import require
from import_blocker import BLOCKER
from numpy_mvit2 import MobileViTV2Config
from numpy_mvit2.weights import CheckpointError, read_sharded_torch, read_torch_checkpoint
from numpy_mvit2.weights.torch_files import RestrictedUnpickler
from reference import make_reference

torch = require("torch")


# ---------------------------------------------------------------------------------------------
# Helpers


def expected(tensor) -> np.ndarray:
    """What the reader should give for a tensor: ``t.numpy()``, bfloat16 widened to float32."""
    tensor = tensor.detach()
    return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()


def assert_same(arrays: dict, state: dict) -> None:
    assert list(arrays) == list(state)
    for name, tensor in state.items():
        want, got = expected(tensor), arrays[name]
        assert got.dtype == want.dtype and got.shape == want.shape, (name, got.dtype, got.shape, want.dtype, want.shape)
        assert np.array_equal(got, want), name
        assert got.flags.c_contiguous and got.flags.writeable and got.dtype.isnative, name


def mixed_state() -> dict:
    """Every case the reader must handle: dtypes, views with offsets and strides, shared storages."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=g)
    return {
        "float32": torch.randn(3, 5, generator=g),
        "transposed": torch.randn(5, 3, generator=g).t(),
        "stepped": torch.randn(4, 8, generator=g)[1:, ::3],
        "base": base,
        "row": base[2],  # views of `base`: one storage for three tensors
        "block": base[1:3, 2:5],
        "float16": torch.randn(2, 3, generator=g).half(),
        "bfloat16": torch.randn(7, generator=g).bfloat16(),
        "float64": torch.randn(2, 2, generator=g, dtype=torch.float64),
        "int64": torch.arange(-5, 5),
        "int32": torch.arange(6, dtype=torch.int32).reshape(2, 3),
        "int16": torch.tensor([-300, 7], dtype=torch.int16),
        "int8": torch.tensor([-100, 3], dtype=torch.int8),
        "uint8": torch.tensor([0, 200, 255], dtype=torch.uint8),
        "bool": torch.tensor([[True, False, True], [False, False, True]]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
        "expanded": torch.randn(3, 1, generator=g).expand(3, 4),
        "parameter": torch.nn.Parameter(torch.randn(2, 2, generator=g)),
    }


def storage_itemsizes(state: dict) -> dict[str, int]:
    """Record key -> element size, numbering storages in first-use order as ``torch.save`` does."""
    keys: dict[int, str] = {}
    sizes = {}
    for tensor in state.values():
        key = keys.setdefault(tensor.untyped_storage()._cdata, str(len(keys)))
        sizes[key] = tensor.element_size()
    return sizes


def rewrite_zip(src: Path, dst: Path, edit=lambda name, data: (name, data), add: dict | None = None) -> Path:
    """Copy a zip record by record through ``edit(name, data) -> (name, data) | None`` (None drops
    the record), then add the records in ``add``; stored uncompressed, as torch writes them."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for name in zin.namelist():
            edited = edit(name, zin.read(name))
            if edited is not None:
                zout.writestr(*edited)
        for name, data in (add or {}).items():
            zout.writestr(name, data)
    return dst


def torch_style_zip(path: Path, data_pkl: bytes, folder: str = "archive", records: dict | None = None) -> Path:
    """A zip laid out as ``torch.save`` lays it out, around a pickle of our own making."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{folder}/data.pkl", data_pkl)
        z.writestr(f"{folder}/byteorder", "little")
        for name, data in (records or {}).items():
            z.writestr(f"{folder}/{name}", data)
        z.writestr(f"{folder}/version", "3\n")
    return path


def raises_checkpoint_error(path: Path, *fragments: str) -> str:
    with pytest.raises(CheckpointError) as info:
        read_torch_checkpoint(path)
    message = str(info.value)
    for fragment in (str(path), *fragments):
        assert fragment in message, (fragment, message)
    return message


# ---------------------------------------------------------------------------------------------
# Files written by torch.save


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_transformers_state_dict(tmp_path, dtype):
    model = make_reference(MobileViTV2Config(width_multiplier=0.5, num_labels=5), "classification", seed=3, dtype=getattr(torch, dtype))
    state = model.state_dict()
    torch.save(state, tmp_path / "pytorch_model.bin")
    arrays = read_torch_checkpoint(tmp_path / "pytorch_model.bin")
    assert_same(arrays, state)
    assert arrays["classifier.weight"].dtype == dtype
    assert arrays["mobilevitv2.conv_stem.normalization.num_batches_tracked"].dtype == np.int64


def test_timm_state_dict(tmp_path):
    timm = require("timm")
    state = timm.create_model("mobilevitv2_050", pretrained=False).state_dict()
    torch.save(state, tmp_path / "mobilevitv2_050.pth")
    assert_same(read_torch_checkpoint(tmp_path / "mobilevitv2_050.pth"), state)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_views_dtypes_and_shared_storages(tmp_path, protocol):
    state = mixed_state()
    torch.save(state, tmp_path / "mixed.pt", pickle_protocol=protocol)
    with zipfile.ZipFile(tmp_path / "mixed.pt") as z:
        n_records = sum("/data/" in n for n in z.namelist())
    assert n_records == len(storage_itemsizes(state)) < len(state)  # the views really share storages
    assert_same(read_torch_checkpoint(tmp_path / "mixed.pt"), state)


def test_parameters_and_ordered_dict_metadata(tmp_path):
    module = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 1), torch.nn.BatchNorm2d(3))
    state = module.state_dict(keep_vars=True)  # nn.Parameters, and the OrderedDict's _metadata (a BUILD)
    assert isinstance(state["0.weight"], torch.nn.Parameter) and hasattr(state, "_metadata")
    torch.save(state, tmp_path / "module.pt")
    assert_same(read_torch_checkpoint(tmp_path / "module.pt"), state)


@pytest.mark.parametrize("key", ["state_dict", "model_state_dict", "model"])
def test_training_checkpoint_wrappers(tmp_path, key):
    state = {"weight": torch.randn(3, 2), "bias": torch.randn(3)}
    torch.save({"epoch": 7, "arch": "mobilevitv2_050", "best": 0.5, key: state, "flags": [True, None]}, tmp_path / "ckpt.pth")
    arrays = read_torch_checkpoint(tmp_path / "ckpt.pth")
    assert_same(arrays, state)  # epoch, arch, ... dropped


def test_no_state_dict_in_file(tmp_path):
    torch.save({"epoch": 7, "weights": [torch.ones(2)]}, tmp_path / "a.pt")
    raises_checkpoint_error(tmp_path / "a.pt", "holds no state dict", "'epoch'")
    torch.save(torch.ones(2), tmp_path / "b.pt")
    raises_checkpoint_error(tmp_path / "b.pt", "holds no state dict")


def test_sharded_checkpoint(tmp_path):
    state = mixed_state()
    names = list(state)
    shards = {"pytorch_model-00001-of-00002.bin": names[:7], "pytorch_model-00002-of-00002.bin": names[7:]}
    for shard, keys in shards.items():
        torch.save({k: state[k] for k in keys}, tmp_path / shard)
    index = {"metadata": {}, "weight_map": {k: shard for shard, keys in shards.items() for k in keys}}
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    arrays = read_sharded_torch(tmp_path / "pytorch_model.bin.index.json")
    assert_same({k: arrays[k] for k in state}, state)

    index["weight_map"]["absent"] = "pytorch_model-00002-of-00002.bin"
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="absent"):
        read_sharded_torch(tmp_path / "pytorch_model.bin.index.json")


# ---------------------------------------------------------------------------------------------
# How zips differ


def _rename_folder(name, data):
    return "my checkpoint-v2/" + name.split("/", 1)[1], data


def _drop(*records):
    return lambda name, data: None if name.split("/", 1)[1] in records else (name, data)


@pytest.mark.parametrize(
    "edit",
    [
        _rename_folder,
        _drop("byteorder"),
        _drop(".data/serialization_id"),
        _drop(".data/serialization_id", ".format_version", ".storage_alignment", "version", "byteorder"),
    ],
    ids=["renamed-folder", "no-byteorder", "no-serialization-id", "bare"],
)
def test_archive_variants(tmp_path, edit):
    state = mixed_state()
    torch.save(state, tmp_path / "saved.pt")
    with zipfile.ZipFile(tmp_path / "saved.pt") as z:
        assert {"saved/byteorder", "saved/.data/serialization_id", "saved/version"} <= set(z.namelist())
    assert_same(read_torch_checkpoint(rewrite_zip(tmp_path / "saved.pt", tmp_path / "edited.pt", edit)), state)


def test_serialization_id_added_to_a_file_without_one(tmp_path):
    state = mixed_state()
    torch.save(state, tmp_path / "saved.pt")
    bare = rewrite_zip(tmp_path / "saved.pt", tmp_path / "bare.pt", _drop(".data/serialization_id"))
    again = rewrite_zip(bare, tmp_path / "again.pt", add={"saved/.data/serialization_id": "0123456789"})
    assert_same(read_torch_checkpoint(again), state)


def test_big_endian_file(tmp_path):
    state = mixed_state()
    torch.save(state, tmp_path / "little.pt")
    itemsizes = storage_itemsizes(state)

    def to_big_endian(name, data):
        record = name.split("/", 1)[1]
        if record == "byteorder":
            return name, b"big"
        if record.startswith("data/"):
            size = itemsizes[record[len("data/"):]]
            return name, np.frombuffer(data, dtype=f"u{size}").byteswap().tobytes()
        return name, data

    big = rewrite_zip(tmp_path / "little.pt", tmp_path / "big.pt", to_big_endian)
    assert_same(read_torch_checkpoint(big), state)
    assert torch.equal(torch.load(big)["float32"], state["float32"])  # torch reads our rewrite the same way


def test_reads_without_torch_importable(tmp_path):
    """A child process with torch, transformers and timm blocked reads the files; the parent
    compares with the tensors it saved."""
    model_state = make_reference(MobileViTV2Config(width_multiplier=0.5, num_labels=5), "segmentation", seed=5).state_dict()
    files = {"model": (tmp_path / "pytorch_model.bin", model_state), "mixed": (tmp_path / "mixed.pth", mixed_state())}
    for path, state in files.values():
        torch.save(state, path)
    child = BLOCKER + textwrap.dedent(
        """
        import json, sys
        import numpy as np
        from numpy_mvit2.weights import read_torch_checkpoint

        args = json.loads(sys.argv[1])
        for name, (path, out) in args.items():
            arrays = read_torch_checkpoint(path)
            np.savez(out, names=np.array(list(arrays)), **{f"a{i}": a for i, a in enumerate(arrays.values())})
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "timm"))
        assert not loaded, loaded
        print("ok")
        """
    )
    args = {name: (str(path), str(tmp_path / f"{name}.npz")) for name, (path, _) in files.items()}
    repo_root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", child, json.dumps(args)], capture_output=True, text=True, cwd=repo_root, timeout=300, check=False
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
    for name, (_, state) in files.items():
        with np.load(args[name][1]) as out:
            arrays = {str(k): out[f"a{i}"] for i, k in enumerate(out["names"])}
        assert_same(arrays, state)


# ---------------------------------------------------------------------------------------------
# Hostile pickles: refused, naming the global, and no payload runs


def hostile_cases(marker: Path) -> dict[str, tuple[bytes, str]]:
    """name -> (data.pkl bytes, what the error must name). Protocol-0 opcodes unless marked."""
    m = str(marker).encode()
    touch = b"touch " + m
    proto4_os_system = (
        b"\x80\x04\x8c\x02os\x8c\x06system\x93" + b"\x8c" + bytes([len(touch)]) + touch + b"\x85R."
    )  # SHORT_BINUNICODE 'os', 'system', STACK_GLOBAL, the command, TUPLE1, REDUCE
    return {
        "os.system": (b"cos\nsystem\n(V" + touch + b"\ntR.", "os.system"),
        "builtins.eval": (b"cbuiltins\neval\n(V__import__('os').system('" + touch + b"')\ntR.", "builtins.eval"),
        "subprocess.Popen": (b"csubprocess\nPopen\n((Vtouch\nV" + m + b"\nltR.", "subprocess.Popen"),
        "numpy.load": (b"cnumpy\nload\n(V" + m + b"\ntR.", "numpy.load"),
        "collections.Counter": (b"ccollections\nCounter\n)R.", "collections.Counter"),
        "stack-global": (proto4_os_system, "os.system"),
        "allowed-looking-module": (b"ctorch._utils.os\nsystem\n(V" + touch + b"\ntR.", "torch._utils.os.system"),
        "allowed-looking-name": (b"ctorch\n_utils.os.system\n(V" + touch + b"\ntR.", "torch._utils.os.system"),
        "smuggled-in-rebuild-args": (
            b"ctorch._utils\n_rebuild_tensor_v2\n(cos\nsystem\n(V" + touch + b"\ntRI0\n(I1\nt(I1\ntI00\n}tR.",
            "os.system",
        ),
        "inst": (b"(V" + touch + b"\nios\nsystem\n.", "os.system"),
        "obj": (b"(cos\nsystem\nV" + touch + b"\no.", "os.system"),
    }


def test_hostile_pickles_are_refused(tmp_path):
    marker = tmp_path / "marker"
    for name, (data, refused) in hostile_cases(marker).items():
        path = torch_style_zip(tmp_path / f"{name}.bin", data)
        message = raises_checkpoint_error(path, "data.pkl", f"refused pickle global {refused}")
        assert not marker.exists(), (name, message)


@pytest.mark.parametrize(
    "data, fragment",
    [
        (b"ctorch._utils\n_rebuild_tensor_v2\n(Vstorage\nI0\n(I1\nt(I1\ntI00\n}tR.", "torch._utils._rebuild_tensor_v2 called with unusable arguments"),
        (b"ctorch._utils\n_rebuild_tensor_v2\n(I1\ntR.", "torch._utils._rebuild_tensor_v2 called with unusable arguments"),
        (b"ctorch._utils\n_rebuild_parameter\n(Vx\nI01\n}tR.", "torch._utils._rebuild_parameter called with unusable arguments"),
        (b"ccollections\nOrderedDict\n(I5\ntR.", "collections.OrderedDict called with unusable arguments"),
        (b"ctorch\nFloatStorage\n(I10\ntR.", "not callable"),
        (b"ctorch._utils\n_rebuild_tensor_v2\n(V__defaults__\nI1\ndb.", "BUILD on torch._utils._rebuild_tensor_v2 refused"),
        (b"ctorch\nFloatStorage\n(Vdtype\nVobject\ndb.", "BUILD on torch.FloatStorage refused"),
        (b"ccollections\nOrderedDict\n)R(I1\nI2\ntb.", "BUILD on an OrderedDict with tuple state refused"),
        (b"\x80\x02ccollections\nOrderedDict\n)\x81.", "opcode NEWOBJ"),
        (b"(ccollections\nOrderedDict\no.", "opcode OBJ"),
        (b"(icollections\nOrderedDict\n.", "opcode INST"),
        (b"\x80\x02\x82\x01.", "opcode EXT1"),
        (b"(Vstorage\nVos.system\nV0\nVcpu\nI4\ntQ.", "not a storage type"),
        (b"Vhello\nQ.", "not a torch storage id"),
        (b"cos\nsystem", "damaged pickle"),  # truncated
    ],
    ids=[
        "rebuild-str-storage", "rebuild-arg-count", "parameter-str-data", "ordered-dict-int", "storage-called",
        "build-on-function", "build-on-storage-type", "build-on-ordered-dict", "newobj", "obj-admitted",
        "inst-admitted", "ext1", "persid-fake-type", "persid-str", "truncated-pickle",
    ],
)
def test_malformed_or_tricky_pickles_fail_cleanly(tmp_path, data, fragment):
    raises_checkpoint_error(torch_style_zip(tmp_path / "x.bin", data), "data.pkl", fragment)


def test_build_on_our_stand_ins_leaves_them_intact(tmp_path):
    hostile = torch_style_zip(tmp_path / "h.bin", b"ctorch._utils\n_rebuild_tensor_v2\n(V__defaults__\n(I1\ntdb.")
    raises_checkpoint_error(hostile, "BUILD on torch._utils._rebuild_tensor_v2 refused")
    state = mixed_state()
    torch.save(state, tmp_path / "ok.pt")
    assert_same(read_torch_checkpoint(tmp_path / "ok.pt"), state)


def test_the_unpickler_alone_refuses_globals(tmp_path):
    """The opcode scan runs first; the unpickler's own gate (find_class) holds without it."""
    marker = tmp_path / "marker"
    for name, (data, refused) in hostile_cases(marker).items():
        with pytest.raises(pickle.UnpicklingError, match=f"refused pickle global {refused}"):
            RestrictedUnpickler(io.BytesIO(data), encoding="utf-8").load()
        assert not marker.exists(), name


def test_reduce_class_payload(tmp_path):
    marker = tmp_path / "marker"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    data = pickle.dumps({"weight": Payload()}, protocol=2)
    path = torch_style_zip(tmp_path / "payload.bin", data)
    raises_checkpoint_error(path, f"refused pickle global {os.system.__module__}.system")
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# Broken and foreign files


def saved_mixed(tmp_path) -> Path:
    torch.save(mixed_state(), tmp_path / "saved.pt")
    return tmp_path / "saved.pt"


@pytest.mark.parametrize("keep", [0.5, 0.98])
def test_truncated_zip(tmp_path, keep):
    data = saved_mixed(tmp_path).read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: int(len(data) * keep)])
    raises_checkpoint_error(tmp_path / "cut.pt", "damaged or truncated zip")


def test_missing_data_pkl(tmp_path):
    path = rewrite_zip(saved_mixed(tmp_path), tmp_path / "x.pt", _drop("data.pkl"))
    raises_checkpoint_error(path, "expected one <folder>/data.pkl")
    with zipfile.ZipFile(tmp_path / "two.pt", "w") as z:
        z.writestr("a/data.pkl", b"}.")
        z.writestr("b/data.pkl", b"}.")
    raises_checkpoint_error(tmp_path / "two.pt", "found 2 of them")


def test_storage_record_short_or_missing(tmp_path):
    state = mixed_state()
    torch.save(state, tmp_path / "saved.pt")  # storage 0 holds the 3x5 float32 "float32": 60 bytes
    short = rewrite_zip(tmp_path / "saved.pt", tmp_path / "short.pt", lambda n, d: (n, d[:-8] if n.endswith("/data/0") else d))
    raises_checkpoint_error(short, "saved/data/0", "'float32'", "expected 60 bytes", "found 52")
    missing = rewrite_zip(tmp_path / "saved.pt", tmp_path / "missing.pt", _drop("data/1"))
    raises_checkpoint_error(missing, "saved/data/1 is missing", "'transposed'")


def test_view_reaching_past_its_storage(tmp_path):
    g = b"ctorch._utils\n_rebuild_tensor_v2\n"
    storage = b"(Vstorage\nctorch\nFloatStorage\nV0\nVcpu\nI4\ntQ"
    data = b"(dVw\n" + g + b"(" + storage + b"I2\n(I3\nt(I1\ntI00\n(dtRs."
    path = torch_style_zip(tmp_path / "x.bin", data, records={"data/0": np.arange(4, dtype="<f4").tobytes()})
    raises_checkpoint_error(path, "tensor 'w'", "reaches element 5", "declares 4")
    ok = b"(dVw\n" + g + b"(" + storage + b"I1\n(I3\nt(I1\ntI00\n(dtRs."
    path = torch_style_zip(tmp_path / "ok.bin", ok, records={"data/0": np.arange(4, dtype="<f4").tobytes()})
    np.testing.assert_array_equal(read_torch_checkpoint(path)["w"], [1, 2, 3])


def test_damaged_storage_bytes(tmp_path):
    path = saved_mixed(tmp_path)
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("saved/data/0")
    raw = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + int.from_bytes(raw[info.header_offset + 28: info.header_offset + 30], "little")
    raw[start] ^= 0xFF
    path.write_bytes(bytes(raw))
    raises_checkpoint_error(path, "saved/data/0 is damaged", "'float32'")


def test_unsupported_dtypes(tmp_path):
    torch.save({"c": torch.ones(2, dtype=torch.complex64)}, tmp_path / "complex.pt")
    raises_checkpoint_error(tmp_path / "complex.pt", "refused pickle global torch.ComplexFloatStorage", "storage type")
    torch.save({"u": torch.ones(2, dtype=torch.uint16)}, tmp_path / "uint16.pt")
    raises_checkpoint_error(tmp_path / "uint16.pt", "refused pickle global torch._utils._rebuild_tensor_v3", "not supported")


def test_bad_byteorder_record(tmp_path):
    path = rewrite_zip(saved_mixed(tmp_path), tmp_path / "x.pt", lambda n, d: (n, b"middle" if n.endswith("/byteorder") else d))
    raises_checkpoint_error(path, "byteorder", "middle")


def test_legacy_format(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    raises_checkpoint_error(tmp_path / "legacy.pt", "legacy format", "_use_new_zipfile_serialization=True", "safetensors")


def test_foreign_files(tmp_path):
    (tmp_path / "pytorch_model.bin").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\n")
    raises_checkpoint_error(tmp_path / "pytorch_model.bin", "not a PyTorch checkpoint")
    (tmp_path / "empty.bin").write_bytes(b"")
    raises_checkpoint_error(tmp_path / "empty.bin", "empty file")
    (tmp_path / "plain.pkl").write_bytes(pickle.dumps({"w": [1.0]}, protocol=4))
    raises_checkpoint_error(tmp_path / "plain.pkl", "a bare pickle")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
        z.writestr("readme.txt", "hello")
    raises_checkpoint_error(tmp_path / "other.zip", "not a PyTorch checkpoint", "readme.txt")
    raises_checkpoint_error(tmp_path / "absent.bin", "no such file")
