"""Hostile checkpoint files (issue 11): each is refused with a ``CheckpointError`` that names the
file and says what is wrong, within the bar's 1 GiB of memory and 10 CPU seconds, or, if it is a
valid file in disguise, read correctly.

The files are built from bytes in tests/hostile_files.py (the same builders seed the fuzzing
corpus). Each group of files is read in one child process under ``tests/bounded.py``'s caps, which
prints one JSON line per file: the caps then hold for the whole group, and the price of starting a
Python is paid once per group, not once per file.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import numpy as np
import pytest
from bounded import MEMORY_LIMIT, run_python_bounded
from hostile_files import (
    SAFETENSORS_CASES,
    TORCH_CASES,
    safetensors_bytes,
    state_dict_pkl,
    storage_pid,
    tensor,
    torch_zip,
    valid_checkpoint,
    valid_checkpoint_arrays,
    valid_safetensors,
    valid_safetensors_arrays,
)

from numpy_mvit2.weights import CheckpointError, read_safetensors, read_torch_checkpoint
from numpy_mvit2.weights.files import read_sharded_safetensors
from numpy_mvit2.weights.torch_files import read_sharded_torch

REPO = Path(__file__).resolve().parents[1]

# Reads each (reader, path) of argv[1] and prints what became of it, catching everything: the
# parent asserts the class. Arrays that came back are summed, so a lie about the bytes behind a
# view would read (and count) them.
CHILD = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from numpy_mvit2.weights import read_safetensors, read_torch_checkpoint
    from numpy_mvit2.weights.files import read_sharded_safetensors
    from numpy_mvit2.weights.torch_files import read_sharded_torch

    readers = {"torch": read_torch_checkpoint, "safetensors": read_safetensors,
               "sharded-torch": read_sharded_torch, "sharded-safetensors": read_sharded_safetensors}
    for name, reader, path in json.loads(sys.argv[1]):
        try:
            arrays = readers[reader](path)
            result = {"class": None, "names": sorted(arrays), "total": float(sum(float(a.sum()) for a in arrays.values()))}
        except BaseException as e:
            result = {"class": type(e).__name__, "message": str(e)[:2000], "length": len(str(e))}
        print(json.dumps({"name": name, **result}), flush=True)
    """
)


def read_in_bounded_child(jobs: list[tuple[str, str, Path]]) -> dict[str, dict]:
    """name -> what the child reported for it; the child must exit cleanly under the caps."""
    code = f"import sys; sys.argv[1:] = [{json.dumps(json.dumps([(n, r, str(p)) for n, r, p in jobs]))}]\n" + CHILD
    result = run_python_bounded(code, cwd=REPO, env={"PYTHONPATH": str(REPO)})
    assert result.returncode == 0, (result.returncode, result.stderr[-3000:])
    assert result.max_rss < MEMORY_LIMIT, result.max_rss
    reports = {r["name"]: r for r in map(json.loads, result.stdout.splitlines())}
    assert set(reports) == {name for name, _, _ in jobs}, result.stderr[-3000:]
    return reports


# An error message quotes names from the file (tensors, records, globals) cut short: never longer than this.
MAX_MESSAGE = 2000


def refused(report: dict, path: Path, fragment: str) -> bool:
    return (report["class"] == "CheckpointError" and str(path) in report["message"] and fragment in report["message"]
            and report["length"] <= MAX_MESSAGE)


def assert_refused(report: dict, path: Path, fragment: str) -> None:
    assert refused(report, path, fragment), (fragment, report)


def assert_cases(cases: dict, paths: dict, reports: dict) -> None:
    """Every case as its fragment says (all mismatches listed at once)."""
    wrong = [(name, fragment, reports[name]) for name, (_, fragment) in cases.items()
             if not (reports[name]["class"] is None if fragment is None else refused(reports[name], paths[name], fragment))]
    assert not wrong, "\n".join(map(repr, wrong))


def write_cases(folder: Path, cases: dict, suffix: str) -> dict[str, Path]:
    folder.mkdir(exist_ok=True)
    paths = {}
    for name, (build, _) in cases.items():
        paths[name] = folder / f"{name}{suffix}"
        paths[name].write_bytes(build())
    return paths


def test_hostile_torch_files(tmp_path):
    paths = write_cases(tmp_path / "torch", TORCH_CASES, ".pt")
    reports = read_in_bounded_child([(name, "torch", path) for name, path in paths.items()])
    assert_cases(TORCH_CASES, paths, reports)


def test_hostile_safetensors_files(tmp_path):
    paths = write_cases(tmp_path / "safetensors", SAFETENSORS_CASES, ".safetensors")
    reports = read_in_bounded_child([(name, "safetensors", path) for name, path in paths.items()])
    assert_cases(SAFETENSORS_CASES, paths, reports)


def test_disguised_valid_files_read_correctly(tmp_path):
    """The hostile-looking cases that are valid (a huge stride on a size-1 dimension, a small
    stride-0 view) give the right arrays, in this process too."""
    (tmp_path / "ok.pt").write_bytes(valid_checkpoint())
    arrays = read_torch_checkpoint(tmp_path / "ok.pt")
    assert list(arrays) == ["w", "wt", "b"]
    for name, want in valid_checkpoint_arrays().items():
        np.testing.assert_array_equal(arrays[name], want)
        assert arrays[name].flags.c_contiguous and arrays[name].flags.writeable
    (tmp_path / "size1.pt").write_bytes(TORCH_CASES["huge-stride-size-1-dim"][0]())
    np.testing.assert_array_equal(read_torch_checkpoint(tmp_path / "size1.pt")["w"], [[0, 1]])
    (tmp_path / "expand.pt").write_bytes(TORCH_CASES["stride-0-small"][0]())
    np.testing.assert_array_equal(read_torch_checkpoint(tmp_path / "expand.pt")["w"], np.repeat([[0], [1], [2]], 4, axis=1))
    (tmp_path / "ok.safetensors").write_bytes(valid_safetensors())
    arrays = read_safetensors(tmp_path / "ok.safetensors")
    for name, want in valid_safetensors_arrays().items():
        np.testing.assert_array_equal(arrays[name], want)
        assert arrays[name].dtype == want.dtype and arrays[name].flags.writeable


def test_the_refusals_in_process(tmp_path):
    """The same refusals without a child, as a user sees them (and with the exact class)."""
    for cases, suffix, reader in ((TORCH_CASES, ".pt", read_torch_checkpoint), (SAFETENSORS_CASES, ".safetensors", read_safetensors)):
        for name, (build, fragment) in cases.items():
            if fragment is None or name in ("none-flood", "equal-hash-int-keys"):  # those two: a second each, paid in the child
                continue
            path = tmp_path / f"{name}{suffix}"
            path.write_bytes(build())
            with pytest.raises(CheckpointError) as info:
                reader(path)
            assert type(info.value) is CheckpointError and str(path) in str(info.value) and fragment in str(info.value), (name, info.value)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_fifos_are_refused_not_waited_on(tmp_path):
    """A FIFO blocks ``open()`` until a writer comes: as a checkpoint, as a shard, as an index."""
    for name in ("fifo.pt", "fifo.safetensors", "fifo.index.json", "pytorch_model-00001-of-00001.bin",
                 "model-00001-of-00001.safetensors"):
        os.mkfifo(tmp_path / name)
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {"w": "pytorch_model-00001-of-00001.bin"}}))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "model-00001-of-00001.safetensors"}}))
    jobs = [
        ("checkpoint", "torch", tmp_path / "fifo.pt"),
        ("safetensors", "safetensors", tmp_path / "fifo.safetensors"),
        ("index", "sharded-torch", tmp_path / "fifo.index.json"),
        ("torch-shard", "sharded-torch", tmp_path / "pytorch_model.bin.index.json"),
        ("safetensors-shard", "sharded-safetensors", tmp_path / "model.safetensors.index.json"),
    ]
    reports = read_in_bounded_child(jobs)
    shards = {"torch-shard": "pytorch_model-00001-of-00001.bin", "safetensors-shard": "model-00001-of-00001.safetensors"}
    for name, _, path in jobs:
        assert_refused(reports[name], tmp_path / shards[name] if name in shards else path, "a FIFO")


def test_sharded_index_hostile(tmp_path):
    """The index is bounded JSON (safeio.read_json); shards are plain names in its folder."""
    cases = {
        "deep.index.json": (b'{"weight_map": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", "nested"),
        "nan.index.json": (b'{"weight_map": {"w": NaN}}', "not valid JSON"),
        "list.index.json": (b"[1, 2]", "weight_map"),
        "escape.index.json": (json.dumps({"weight_map": {"w": "../x.bin"}}).encode(), "must be a file name"),
        "latin1.index.json": (b'{"weight_map": {"\xff": "a.bin"}}', "not UTF-8"),
        # a NUL in a name made os.open raise a bare ValueError; a name of megabytes filled the message
        "nul.index.json": (json.dumps({"weight_map": {"w": "a\0b.bin"}}).encode(), "no NUL"),
        "long.index.json": (json.dumps({"weight_map": {"w": "x" * 2**20}}).encode(), "(1,048,576 characters)"),
        "empty.index.json": (json.dumps({"weight_map": {"w": ""}}).encode(), "must be a file name"),
    }
    for name, (data, fragment) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError) as info:
            read_sharded_torch(tmp_path / name)
        assert str(tmp_path / name) in str(info.value) and fragment in str(info.value), (name, info.value)
        assert len(str(info.value)) <= MAX_MESSAGE, name
    (tmp_path / "a.safetensors").write_bytes(safetensors_bytes({"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}, b"\x07"))
    (tmp_path / "m.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "a.safetensors"}}))
    assert read_sharded_safetensors(tmp_path / "m.safetensors.index.json")["w"].tolist() == [7]


def test_every_tensor_checked_against_its_own_storage(tmp_path):
    """A tensor that fits the count its own persistent id declares, but not the bytes of the record,
    is refused before any storage is read, whichever tensor comes first (the first one names the
    count the others must agree with)."""
    small, big = storage_pid("0", 4), storage_pid("0", 1000)
    for order in ((small, big), (big, small)):
        pkl = state_dict_pkl({"a": tensor(order[0], 0, (4,), (1,)), "b": tensor(order[1], 0, (4,), (1,))})
        path = tmp_path / "x.pt"
        path.write_bytes(torch_zip(pkl, {"data/0": np.arange(4, dtype="<f4").tobytes()}))
        with pytest.raises(CheckpointError, match="one storage has one type and one size|expected 4000 bytes"):
            read_torch_checkpoint(path)


def test_devices_folders_and_links(tmp_path):
    """Only regular files are read: a link to /dev/zero (which never ends) or to a folder is refused."""
    (tmp_path / "folder.pt").mkdir()
    (tmp_path / "zero.pt").symlink_to("/dev/zero")
    (tmp_path / "zero.safetensors").symlink_to("/dev/zero")
    (tmp_path / "ok.pt").write_bytes(valid_checkpoint())
    (tmp_path / "link.pt").symlink_to(tmp_path / "ok.pt")  # the Hugging Face cache is made of links
    for path, reader, fragment in ((tmp_path / "folder.pt", read_torch_checkpoint, "a folder"),
                                   (tmp_path / "zero.pt", read_torch_checkpoint, "a character device"),
                                   (tmp_path / "zero.safetensors", read_safetensors, "a character device"),
                                   (tmp_path / "absent.safetensors", read_safetensors, "no such file")):
        with pytest.raises(CheckpointError) as info:
            reader(path)
        assert str(path) in str(info.value) and fragment in str(info.value), info.value
    assert list(read_torch_checkpoint(tmp_path / "link.pt")) == ["w", "wt", "b"]


def test_bounds_on_work_scaled_down(tmp_path, monkeypatch):
    """The bounds that a real-size file would take seconds to reach, checked at a small scale: the
    number of tensors (a 2 MB pickle of 500 000 four-opcode tensors ran past 10 CPU seconds), the
    size of the zip directory before zipfile parses it (a 56 MB directory of a million one-byte
    names did), and an index of many shards costs one pass over its map."""
    from numpy_mvit2.weights import torch_files

    pid = storage_pid("0", 4)
    path = tmp_path / "four.pt"
    path.write_bytes(torch_zip(state_dict_pkl({f"t{i}": tensor(pid, 0, (1,), (1,)) for i in range(4)}),
                               {"data/0": np.arange(4, dtype="<f4").tobytes()}))
    assert len(read_torch_checkpoint(path)) == 4
    monkeypatch.setattr(torch_files, "MAX_TENSORS", 3)
    with pytest.raises(CheckpointError, match="more than 3 tensors"):
        read_torch_checkpoint(path)
    monkeypatch.undo()
    monkeypatch.setattr(torch_files, "MAX_CENTRAL_DIRECTORY", 100)
    with pytest.raises(CheckpointError, match=r"its zip directory holds \d+ bytes, more than the 100 allowed"):
        read_torch_checkpoint(path)
    monkeypatch.undo()
    shards = {}
    for i in range(300):
        (tmp_path / f"s{i}.safetensors").write_bytes(safetensors_bytes({f"t{i}": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}, bytes([i % 256])))
        shards[f"t{i}"] = f"s{i}.safetensors"
    (tmp_path / "m.safetensors.index.json").write_text(json.dumps({"weight_map": shards}))
    state = read_sharded_safetensors(tmp_path / "m.safetensors.index.json")
    assert sorted(state) == sorted(shards) and state["t7"].tolist() == [7]


def test_unexpected_keys_listed_short():
    """The file's names in the does-not-match error: each cut, at most MAX_LISTED of them (a file
    of a 100 kB name, or of 300 000 names, made a message that long)."""
    from numpy_mvit2 import MobileViTV2Config
    from numpy_mvit2.weights.convert import MAX_LISTED, check_state_dict

    state = {f"extra.{i}": np.zeros(1, np.float32) for i in range(MAX_LISTED + 9)}
    state["a" * 100_000] = np.zeros(1, np.float32)  # sorted first: listed, and cut
    with pytest.raises(CheckpointError) as info:
        check_state_dict(state, MobileViTV2Config(width_multiplier=0.5), "classification", "ckpt.safetensors")
    message = str(info.value)
    assert f"{MAX_LISTED + 10} unexpected key(s)" in message and "... and 10 more" in message
    assert "a" * 300 not in message and "(100,000 characters)" in message
