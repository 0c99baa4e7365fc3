"""Opening files that come from the internet: regular files only, sizes and JSON nesting bounded.

Why each rule:

- ``open()`` on a FIFO blocks until a writer appears (forever, for a planted one), and a device
  such as ``/dev/zero`` never ends. So a file is opened with ``O_NONBLOCK`` (which makes opening a
  FIFO return at once) and refused unless ``fstat`` says it is a regular file; the check is made on
  the opened descriptor, so the file cannot be swapped between the check and the read. Symbolic
  links are followed: the Hugging Face cache is made of them.
- JSON files are read whole, so their size is bounded (``MAX_JSON_BYTES``: a config is a few kB,
  the shard index of a very large model a few MB). Their nesting is bounded (``MAX_JSON_DEPTH``): past
  Python's recursion limit the parser gives up with ``RecursionError``, and a nest just under it
  would cost the same again in every recursive walk after it (``copy.deepcopy``, ``==``). ``NaN`` and
  ``Infinity``, which ``json`` accepts but JSON does not, are refused, and so is a number such as
  ``1e999`` that only parses as infinity.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np

from .errors import CheckpointError

MAX_JSON_BYTES = 16 * 2**20  # the shard index of a very large model is a few MB; 64 MB of empty lists parsed to 1.2 GB
MAX_JSON_DEPTH = 64
# Values (numbers, strings, lists, objects, each key's value) a JSON file may hold. Parsing is fast,
# but each walk after it (this module's, the config's checks, copy.deepcopy) costs about a
# microsecond a value: a 6 MB config.json of two million empty lists ran past 10 CPU seconds.
# Parsing is not free either (5.5 million empty lists, 16 MB, took 8 CPU seconds and 800 MB), so a
# text with more than twice as many separators (``,``, ``[``, ``{``; each value but the first
# follows one) is refused before it is parsed. A shard index of 2**19 values lists 250 000 tensors;
# a config.json with ImageNet-21k's labels both ways holds 44 000 values, hence the bound for
# settings files (MAX_SETTINGS_*).
MAX_JSON_VALUES = 2**19
MAX_SETTINGS_BYTES = 16 * 2**20
MAX_SETTINGS_VALUES = 2**18

def current_umask() -> int:
    """The process's umask: the permissions a file written through ``mkstemp`` (0600) or a folder
    made by ``mkdtemp`` (0700) is given before it is renamed into place, so that it ends up as an
    ordinarily created one would. Reading it means setting it: put back at once."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_BINARY = getattr(os, "O_BINARY", 0)


def open_regular_file(path: str | os.PathLike, error=CheckpointError, what: str = "file"):
    """``open(path, "rb")`` for a regular file; anything else (missing, a folder, a FIFO, a device,
    a socket, unreadable) raises ``error`` with a message naming ``path``. Never blocks."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | _NONBLOCK | _BINARY)
    except FileNotFoundError:
        raise error(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise error(f"{path}: a folder, not a {what}") from None
    except OSError as e:
        raise error(f"{path}: cannot open ({e.strerror or e})") from None
    except ValueError:  # a NUL byte in the name (a shard name from an index, say): no file has it
        raise error(f"{path}: cannot open (the name holds a NUL byte)") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise error(f"{path}: a folder, not a {what}")
        if not stat.S_ISREG(mode):
            raise error(f"{path}: not a regular file ({_kind(mode)}); only regular files are read")
        if _NONBLOCK:
            import fcntl  # POSIX only, as O_NONBLOCK is

            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a plain file"


def read_bounded(path: str | os.PathLike, limit: int, error=CheckpointError, what: str = "file") -> bytes:
    """The bytes of the regular file ``path``, refused with ``error`` if it holds more than ``limit``."""
    with open_regular_file(path, error, what) as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise error(f"{path}: {size} bytes, more than the {limit} a {what} may hold")
        try:
            data = f.read(limit + 1)
        except OSError as e:
            raise error(f"{path}: cannot read ({e.strerror or e})") from None
    if len(data) > limit:  # grew while we read
        raise error(f"{path}: more than the {limit} bytes a {what} may hold")
    return data


def json_depth(value) -> int:
    """How deeply lists and dicts nest in a parsed JSON value (a scalar is depth 0), walked without
    recursion."""
    return json_size(value)[0]


def json_size(value, max_values: int | None = None) -> tuple[int, int]:
    """(depth as ``json_depth`` gives it, number of values) of a parsed JSON value; the walk stops
    once it has counted more than ``max_values``."""
    deepest, stack, count = 0, [(value, 0)], 0
    while stack:
        item, depth = stack.pop()
        count += 1
        if max_values is not None and count > max_values:
            break
        if isinstance(item, (list, dict)):
            deepest = max(deepest, depth + 1)
            stack.extend((x, depth + 1) for x in (item.values() if isinstance(item, dict) else item))
    return deepest, count


def _finite(token: str) -> float:
    value = float(token)
    if not np.isfinite(value):
        raise ValueError(f"number {token[:40]} is out of range (not a finite float)")
    return value


def refuse_constant(token: str):
    raise ValueError(f"{token} is not a JSON number")


def parse_json(text: str, where: str, error=ValueError, max_depth: int = MAX_JSON_DEPTH,
               max_values: int = MAX_JSON_VALUES):
    """``json.loads(text)`` with the nesting and the number of values bounded and only finite
    numbers; failures raise ``error`` naming ``where``."""
    if text.count(",") + text.count("[") + text.count("{") > 2 * max_values:
        raise error(f"{where}: JSON of more than {max_values} values, the most allowed")
    try:
        value = json.loads(text, parse_float=_finite, parse_constant=refuse_constant)
    except RecursionError:  # the parser's own bound (Python's recursion limit), well past ours
        raise error(f"{where}: JSON nested more than {max_depth} levels deep") from None
    except ValueError as e:  # JSONDecodeError, our number checks, ints over Python's digit limit
        raise error(f"{where}: not valid JSON ({e})") from None
    except MemoryError:
        raise error(f"{where}: its JSON does not fit in memory") from None
    depth, count = json_size(value, max_values)
    if count > max_values:
        raise error(f"{where}: JSON of more than {max_values} values, the most allowed")
    if depth > max_depth:
        raise error(f"{where}: JSON nested {depth} levels deep, more than the {max_depth} allowed")
    return value


def read_json(path: str | os.PathLike, error=ValueError, what: str = "JSON file", max_bytes: int = MAX_JSON_BYTES,
              max_depth: int = MAX_JSON_DEPTH, max_values: int = MAX_JSON_VALUES):
    """The JSON value in the regular file ``path`` (UTF-8, at most ``max_bytes``, nested at most
    ``max_depth`` deep, at most ``max_values`` values); every failure raises ``error`` naming ``path``."""
    data = read_bounded(path, max_bytes, error, what)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text ({e})") from None
    return parse_json(text, str(path), error, max_depth, max_values)


def read_settings_json(path: str | os.PathLike, error=ValueError, what: str = "settings file"):
    """``read_json`` with the bounds of a settings file (config.json, preprocessor_config.json)."""
    return read_json(path, error, what, max_bytes=MAX_SETTINGS_BYTES, max_values=MAX_SETTINGS_VALUES)
