"""``numpy_mvit2.safeio``: files from the internet are read only when they are regular files, within
their size bound; JSON only within its nesting bound and with finite numbers. Every refusal is the
error asked for, names the file, and never blocks (a FIFO with no writer is refused at once)."""

from __future__ import annotations

import json
import os
import socket

import pytest

from numpy_mvit2.errors import CheckpointError
from numpy_mvit2.safeio import (
    json_depth,
    open_regular_file,
    parse_json,
    read_bounded,
    read_json,
)


def test_a_regular_file_is_read(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"a": [1, 2.5, {"b": None}]}))
    with open_regular_file(path) as f:
        assert f.read() == path.read_bytes()
    assert read_bounded(path, 1000) == path.read_bytes()
    assert read_json(path) == {"a": [1, 2.5, {"b": None}]}


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"x": 1}')
    assert read_json(path) == {"x": 1}


@pytest.mark.parametrize("kind", ["missing", "folder", "fifo", "socket", "device"])
def test_anything_but_a_regular_file_is_refused_at_once(tmp_path, kind):
    path = tmp_path / kind
    if kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)  # no writer: a plain open() would block forever
    elif kind == "socket":
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(path))
    elif kind == "device":
        path = "/dev/zero"  # never ends
    try:
        with pytest.raises(CheckpointError, match=str(path)):
            open_regular_file(path)
        with pytest.raises(KeyError, match="regular|folder|no such|cannot open"):  # the error asked for
            read_json(path, error=KeyError)
    finally:
        if kind == "socket":
            server.close()


def test_sizes_are_bounded(tmp_path):
    path = tmp_path / "big.json"
    path.write_bytes(b"[" + b"0," * 100 + b"0]")
    assert len(read_bounded(path, 1000)) == 203
    with pytest.raises(CheckpointError, match="203 bytes, more than the 100"):
        read_bounded(path, 100)
    with pytest.raises(ValueError, match="more than the 100"):
        read_json(path, max_bytes=100)


def test_nesting_is_bounded_without_recursion():
    assert json_depth(1) == 0 and json_depth([]) == 1 and json_depth({"a": [[{}]]}) == 4
    deep = "[" * 10_000 + "]" * 10_000
    with pytest.raises(ValueError, match="nested"):
        parse_json(deep, "deep.json")
    with pytest.raises(ValueError, match="deep.json: JSON nested 5 levels deep, more than the 4"):
        parse_json("[[[[[]]]]]", "deep.json", max_depth=4)
    assert parse_json("[[[[]]]]", "ok.json", max_depth=4) == [[[[]]]]


@pytest.mark.parametrize("text", ["NaN", "[Infinity]", '{"x": -Infinity}', "1e999", "{", "[1,]"])
def test_what_json_does_not_allow_is_refused(text):
    with pytest.raises(ValueError, match="where.json: not valid JSON"):
        parse_json(text, "where.json")


def test_text_that_is_not_utf8_is_refused(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes('{"caf\u00e9": 1}'.encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8"):
        read_json(path)
