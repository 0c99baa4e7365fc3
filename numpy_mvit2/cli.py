"""``numpy-mvit2``: classify and segment photos with MobileViTV2 on the CPU, and describe a model.

    numpy-mvit2 classify photo.jpg photos/ [--model ID_OR_FOLDER] [--top-k 5] [--json]
    numpy-mvit2 segment photo.jpg --out-dir masks/ [--model ID_OR_FOLDER]
    numpy-mvit2 classify --paths-from list.txt --output records.jsonl [--resume] [--engine dask --workers N]
    numpy-mvit2 info [--model ID_OR_FOLDER] [--image-size H W]

(also ``python -m numpy_mvit2 ...``). Results go to stdout; errors, notes and the progress bar to
stderr. A bad image is named on stderr with the reason and the others are still processed. Exit
status: 0 all done, 1 some input (or the model) failed, 2 usage error, 130 interrupted (SIGINT,
Ctrl-C), 141 stdout closed (``| head`` exited: the run stops at once, quietly), 143 terminated
(SIGTERM): 128 + the signal's number, as a shell reports a process the signal killed (141 is
SIGPIPE's, which kills other Unix tools in a pipe); temporary files are removed first.

File names and labels come from strangers: in text output (and on stderr) control characters are
shown escaped (``\\n``, ``\\x1b``) so that a name cannot forge a line or drive the terminal, and
``--json`` is always valid UTF-8 (see ``to_json``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import re
import select
import signal
import stat
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ._version import __version__
from .config import BEHAVIORS, DEFAULT_BEHAVIOR, MobileViTV2Config
from .errors import CheckpointNotFoundError
from .fast.executors import configured_threads
from .hub import PROBE_TIMEOUT
from .inference import (  # noqa: F401 - the command line's names of the building block's pieces
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_PREPARED_PIXELS,
    DEFAULT_MODELS,
    HEAD_WORDS,
    LOAD_ERRORS,
    Job,
    ModelError,
    Predictor,
    _reason,
    guess_head,
    input_key,
    label_image,
    load_model,
    load_processor,
    made_from,
    overlay_image,
    photo_classes,
    usable_cpus,
)
from .modeling import (
    MobileViTV2ForImageClassification,
    MobileViTV2ForSemanticSegmentation,
)
from .processing import PREPROCESSOR_CONFIG
from .safeio import current_umask
from .streaming import (
    EngineError,
    RecordFile,
    StreamError,
    quiet_dask_logs,
    read_path_list,
    run_dask,
    run_local,
    to_json,
)
from .summary import format_summary, summarize

PROG = "numpy-mvit2"
DEFAULT_CLASSIFIER, DEFAULT_SEGMENTER = DEFAULT_MODELS["classify"], DEFAULT_MODELS["segment"]
# What a folder expands to (case-insensitive); a file named on the command line is always tried.
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".jpe", ".jfif", ".png", ".pbm", ".pgm", ".ppm", ".pnm",
                    ".tif", ".tiff", ".webp")
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
# stdout's reader has gone (`numpy-mvit2 classify photos/ | head -2`): 128 + SIGPIPE, the status a
# shell reports for the Unix tools SIGPIPE kills in such a pipe (Python ignores SIGPIPE and gets
# EPIPE instead, so the status is given by hand).
EXIT_BROKEN_PIPE = 141

# The help texts below are filled to the terminal's width by HelpFormatter: lines that start with
# a space (examples, JSON shapes) are kept as they are, the others are joined into paragraphs.
LIMITS_HELP = """\
An image is refused, from its header before it is decoded, when it has more pixels than
--max-pixels, or more than --max-prepared-pixels once resized as the checkpoint says (a 1x20000
strip becomes 288x5,760,000 at shortest edge 288). Only regular files are read: a FIFO or a device
is named and skipped. Formats: JPEG, PNG, GIF, BMP, TIFF, WebP, PNM (not ICO/ICNS, whose header
may hide a larger image)."""

MODEL_HELP = f"""\
MODEL (--model) is a checkpoint folder (config.json, model.safetensors, preprocessor_config.json),
a weights file (with the config.json and preprocessor_config.json beside it, if any), the folder's
config.json, or a Hugging Face repo id: read from the Hugging Face cache, downloaded if missing
unless HF_HUB_OFFLINE=1. A Hub that does not answer within {PROBE_TIMEOUT:g} s (or HF_HUB_ETAG_TIMEOUT) is taken
as out of reach: only the cache is read."""

EXIT_HELP = """\
Exit status:
  0    all done
  1    some input, or the model, failed
  2    usage error
  130  interrupted (SIGINT, Ctrl-C)
  141  stdout closed (`| head` exited): the run stops at once, quietly
  143  terminated (SIGTERM)"""

STREAM_TEXT = """\

--output FILE.jsonl writes the same records, one a line, as each batch of --batch-size completes
(nothing on stdout then). --resume skips the inputs FILE has records of and redoes a last line cut
short by a crash: a run killed at any moment, resumed, ends with every input once. - among the
inputs (or --paths-from FILE) reads paths, one a line or NUL-separated. --engine dask computes the
same records on a Dask cluster.
  find photos -name '*.jpg' -print0 | numpy-mvit2 classify - --output records.jsonl
"""

JSON_TEXT = """\

The JSON is UTF-8. Characters of a file name that are not valid UTF-8 (bytes Python holds as lone
surrogates, os.fsdecode) are written as \\udcXX escapes: json.loads then gives back the name
os.fsencode turns into the original bytes; control characters are escaped as \\uXXXX. In text
output (and on stderr) control characters of file names and labels are shown as \\n, \\x1b, ...,
and undecodable bytes as \\xNN."""

CLASSIFY_JSON = LIMITS_HELP + """

--json prints one JSON array to stdout, one object per input image, in input order:
  {"file": "cat.jpg", "predictions": [
    {"label": "tabby, tabby cat", "index": 281, "score": 0.61}, ...]}
or, for an input that failed,
  {"file": "broken.jpg", "error": "truncated or corrupt image data (...)"}
The predictions are the top-k, best first; score is the softmax probability (a sigmoid for a
multi-label model). Errors are also named on stderr, and the exit status is 1 if any input failed.
""" + STREAM_TEXT + JSON_TEXT

SEGMENT_JSON = LIMITS_HELP + """

Writes, per image, <stem>_labels.png (a palette PNG whose pixel values are the class ids, PASCAL
VOC colours) and <stem>_overlay.png (the photo with the class colours blended over it), both at
the photo's own size (after EXIF rotation). Names are given in input order: a stem whose names are
already taken in this run (compared without case, as on a case-insensitive disk) gets -2, -3, ...
appended (x-2.jpg, x.jpg, x.png -> x-2, x, x-3); a result of the same run is never replaced. An
existing file is replaced only with --overwrite (atomically: a symbolic link there is replaced,
never followed); without it the image is named on stderr and skipped. Files are written through
temporary files in DIR (.NAME.XXXXXXXX.tmp), removed if the run fails or is interrupted.

--json prints one JSON array to stdout, one object per input image, in input order:
  {"file": "cat.jpg", "labels": "out/cat_labels.png",
   "overlay": "out/cat_overlay.png", "size": [width, height],
   "classes": [{"label": "cat", "index": 8, "fraction": 0.41}, ...]}
(the classes present, largest area first) or {"file": "broken.jpg", "error": "..."}.
""" + STREAM_TEXT + JSON_TEXT


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, for descriptions and epilogs that hold paragraphs and examples: blank
    lines separate paragraphs; a line that starts with a space is an example, kept as it is (and
    broken at a space, with a deeper indent, only where it is wider than the terminal); the other
    lines of a paragraph are joined and filled to the terminal's width (COLUMNS), as argparse
    fills the options' help."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        width = max(width, 20)
        out: list[str] = []
        for paragraph in re.split(r"\n[ \t]*\n", text.strip("\n")):
            words: list[str] = []
            for line in paragraph.split("\n") + [" "]:  # a last " " flushes the words
                if line.startswith((" ", "\t")):
                    if words:
                        out.append(textwrap.fill(" ".join(words), width, initial_indent=indent,
                                                 subsequent_indent=indent, break_on_hyphens=False))
                        words = []
                    if line.strip():
                        lead = line[: len(line) - len(line.lstrip())]
                        out.append(textwrap.fill(line.strip(), width, initial_indent=indent + lead,
                                                 subsequent_indent=indent + lead + "    ", break_long_words=False,
                                                 break_on_hyphens=False))
                else:
                    words.append(line.strip())
            out.append("")
        return "\n".join(out).rstrip("\n")


class UsageError(Exception):
    """Bad arguments found after parsing: reported like argparse's errors, exit status 2."""


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


@dataclass
class Item:
    """One input image (or an input that failed before it became one)."""

    file: str
    error: str | None = None
    outputs: tuple | None = None  # segment: the (labels, overlay) paths claimed for it
    replace: bool = False  # segment: its files are to be replaced (--overwrite, or made by the run resumed)
    recorded: bool = False  # the output resumed has its record: skipped


def expand_inputs(inputs: list[str]) -> list[Item]:
    """Files as given; folders -> their image files (by extension, sorted by name, not recursive,
    hidden files skipped); missing paths and folders without images -> failed items."""
    items = []
    for name in inputs:
        path = Path(name)
        try:
            path.stat()
        except FileNotFoundError:
            items.append(Item(name, error="no such file or folder"))
            continue
        except (OSError, ValueError) as e:  # a name too long, a loop of links, no permission
            items.append(Item(name, error=f"cannot open ({getattr(e, 'strerror', None) or e})"))
            continue
        if path.is_dir():
            try:
                found = sorted(p for p in path.iterdir()
                               if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and not p.is_dir())
            except OSError as e:
                items.append(Item(name, error=f"cannot list folder ({e.strerror or e})"))
                continue
            if not found:
                items.append(Item(name, error=f"folder holds no image files ({' '.join(IMAGE_EXTENSIONS)})"))
            items += [Item(str(p)) for p in found]
        elif path.exists():
            items.append(Item(name))
        else:
            items.append(Item(name, error="no such file or folder"))
    return items


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------

# Characters a terminal acts on instead of showing: C0 controls (newline, carriage return, escape),
# DEL, C1 controls (U+0080..U+009F, a one-character CSI among them), and the bidirectional overrides
# and isolates that reorder a line; and lone surrogates, which is how Python holds the bytes of a
# file name that are not valid UTF-8 (os.fsdecode) and which no encoder writes.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match) -> str:
    char = match.group()
    code = ord(char)
    if char in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[char]
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte of a file name: shown as that byte
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def printable(text) -> str:
    """``text`` with its control characters and undecodable bytes shown as Python-style escapes
    (``\\n``, ``\\x1b``, ``\\xff``): one line, shown as it is, whatever a file name or label holds.
    Backslashes are left alone (Windows paths stay readable)."""
    return _UNPRINTABLE.sub(_escape, str(text))


def printable_lines(text) -> str:
    """``printable`` line by line: a message of several lines (the library's: a first line, then
    indented details) keeps its line breaks, and nothing else in it can break a line."""
    return "\n".join(printable(line) for line in str(text).split("\n"))


def write_json(text: str) -> None:
    """JSON to stdout as UTF-8 bytes, whatever the locale's encoding."""
    sys.stdout.flush()
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:  # a replaced sys.stdout (tests, notebooks): it takes text
        print(text, flush=True)
        return
    buffer.write(text.encode("utf-8") + b"\n")
    buffer.flush()


class Reporter:
    """stdout for results, stderr for errors, and a tqdm progress bar on stderr that is shown only
    when stderr is a terminal and --quiet is off."""

    def __init__(self, total: int, quiet: bool, desc: str):
        self.quiet = quiet
        self.failed = 0
        self.bar = None
        if not quiet and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="img", file=sys.stderr, dynamic_ncols=True, leave=False)

    def _write(self, text: str, stream) -> None:
        try:
            if self.bar is not None:
                self.bar.clear()
            print(text, file=stream, flush=True)
            if self.bar is not None:
                self.bar.refresh()
        except BrokenPipeError:  # a BaseException, so that no per-image handler takes it for the image's error
            raise OutputClosed from None

    def out(self, text: str) -> None:
        self._write(text, sys.stdout)

    def error(self, item: Item) -> None:
        self.failed += 1
        self._write(f"{PROG}: error: {printable(item.file)}: {printable(item.error)}", sys.stderr)

    def step(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class OutputClosed(BaseException):
    """stdout (or stderr) is a pipe whose reader has gone (``| head -1`` has exited). Like
    ``Interrupted``, not an Exception: it unwinds past the per-image handlers (which would otherwise
    report each image as failed with "Broken pipe"), and the run stops at once."""


def reader_gone(stream) -> bool:
    """True when ``stream`` is a pipe whose reading end is closed. Checked before each image, so
    that a run whose output nobody reads stops before the next image rather than after it (and
    ``--json``, written at the end, does not process every image for nothing): the kernel flags the
    writing end of such a pipe (POLLERR on Linux, POLLHUP on the BSDs) without a write."""
    try:
        fd = stream.fileno()
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return False
        poller = select.poll()
        poller.register(fd, 0)  # no events asked for: only the error and hang-up flags, always reported
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (AttributeError, ValueError, OSError):  # no fileno (a replaced stream), no poll (Windows)
        return False


def check_output() -> None:
    if reader_gone(sys.stdout):
        raise OutputClosed


def note(text: str, quiet: bool) -> None:
    if not quiet:
        print(f"{PROG}: {printable(text)}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Loading the model
# --------------------------------------------------------------------------------------------


def model_location(name: str) -> str:
    """--model as given, with a checkpoint's config.json or preprocessor_config.json standing for
    the folder it lies in (the weights are there too). An empty name is refused: Path("") is the
    current folder, which nobody means by it."""
    if not name:
        raise UsageError("--model '': an empty name; give a checkpoint folder (--model . for the current one), "
                         "a weights file or a Hugging Face repo id")
    path = Path(name)
    if path.is_file() and path.name in ("config.json", PREPROCESSOR_CONFIG):
        return str(path.parent)
    return name


# --------------------------------------------------------------------------------------------
# Running a model over the inputs
# --------------------------------------------------------------------------------------------


def input_names(args) -> list[str]:
    """The command line's inputs, with ``-`` (stdin) and --paths-from FILE read as lists of paths."""
    names: list[str] = []
    stdin_read = False
    sources = [("-", name) if name == "-" else (None, name) for name in args.inputs]
    sources += [("list", name) for name in args.paths_from or []]
    for kind, name in sources:
        if kind is None:
            names.append(name)
            continue
        if name == "-":
            if stdin_read:
                raise UsageError("stdin (-) is given twice as a list of paths")
            stdin_read = True
        try:
            names += read_path_list(name)
        except StreamError as e:
            raise UsageError(str(e)) from None
    if not names:
        if args.inputs or args.paths_from:  # lists, all empty
            raise UsageError("no inputs: the lists of paths given are empty")
        args.subparser.error("the following arguments are required: IMAGE_OR_FOLDER (or - or --paths-from FILE)")
    return names


MAX_WORKERS_PER_CORE = 4


def check_run_flags(args) -> None:
    if args.output is not None and args.json:
        raise UsageError("--json and --output are two outputs; give one (--output - writes JSON lines to stdout)")
    if args.resume and args.output in (None, "-"):
        raise UsageError("--resume continues the run recorded in --output FILE; give that file")
    try:
        configured_threads()
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.engine == "ray":
        raise UsageError("--engine ray is not offered: the engine is dask, chosen by measurement (README, "
                         "'Many images'); Predictor serves Ray Data's map_batches from Python")
    if args.engine is None:
        for flag, value in (("--address", args.address), ("--workers", args.workers), ("--send-bytes", args.send_bytes or None)):
            if value is not None:
                raise UsageError(f"{flag} is a setting of --engine; give --engine dask too")
    elif args.address is not None and args.workers is not None:
        raise UsageError("--workers sets the size of a local cluster; a cluster at --address has its own workers")
    elif args.workers is not None and args.workers > (most := MAX_WORKERS_PER_CORE * usable_cpus()):
        # each is a process holding the model: more than a few a core only costs memory
        raise UsageError(f"--workers {args.workers}: at most {MAX_WORKERS_PER_CORE} a usable core ({most} here)")


class Sink:
    """Where a run's records go, batch by batch, in input order: the --output file (or JSON lines on
    stdout), the text on stdout, or, with --json, one array at the end; errors on stderr as they
    come; the progress bar stepped. ``prepare(item, record)`` turns a worker's record into the one
    written (segment writes its PNGs there); when it raises OutputError, the record is the error."""

    def __init__(self, args, items: list[Item], reporter: Reporter, text, prepare, file: RecordFile | None):
        self.args, self.items, self.reporter, self.text, self.prepare, self.file = args, items, reporter, text, prepare, file
        self.position = 0  # the next item whose record is due
        self.kept: list[dict] = []  # --json's records
        self.failed = 0

    def emit(self, records: list[dict]) -> None:
        if self.file is None:  # records or text on stdout: a reader gone ends the run (status 141)
            check_output()
        finished = []
        for record in records:
            item = self.items[self.position]
            self.position += 1
            if "error" not in record and self.prepare is not None:
                try:
                    record = self.prepare(item, record)
                except OutputError as e:
                    record = {"file": record["file"], "error": str(e)}
            if "error" in record:
                self.failed += 1
                self.reporter.error(Item(record["file"], error=record["error"]))
            elif self.args.output is None and not self.args.json:
                self.reporter.out(self.text(record))
            finished.append(record)
        if self.file is not None:
            self.file.write(finished)
        elif self.args.output == "-" and finished:
            write_json("\n".join(to_json(r) for r in finished))
        elif self.args.json:
            self.kept += finished
        self.reporter.step(len(records))


def run_images(args, task: str, text, prepare_outputs=None) -> int:
    """classify's and segment's run: inputs -> records, streamed, on this machine or a cluster.
    ``prepare_outputs(items)``: segment's claim of its file names, before anything runs,
    which returns the ``prepare`` of ``Sink``."""
    check_run_flags(args)
    items = expand_inputs(input_names(args))
    try:
        record_file = RecordFile(args.output, args.resume) if args.output not in (None, "-") else None
    except StreamError as e:
        raise UsageError(str(e)) from None
    settings = dict(top_k=getattr(args, "top_k", 5), behavior=args.behavior, max_pixels=args.max_pixels,
                    max_prepared_pixels=args.max_prepared_pixels, alpha=getattr(args, "alpha", 0.5))
    predictor = reporter = None
    finished = False
    try:
        predictor = Predictor(args.model, task, note=lambda words: note(words, args.quiet), **settings)
        config = predictor.model.config
        if task == "classify" and args.top_k > config.num_labels:  # capped by the model, and said so
            note(f"--top-k {args.top_k}: the model has {config.num_labels} labels; showing all "
                 f"{config.num_labels}", args.quiet)
        # An input named n times in the list has n records: the first ones the output holds are skipped.
        unclaimed = Counter(record_file.done) if record_file is not None else Counter()
        for item in items:
            if unclaimed[item.file] > 0:
                unclaimed[item.file] -= 1
                item.recorded = True
        prepare = prepare_outputs(items) if prepare_outputs is not None else None
        todo = [item for item in items if not item.recorded]
        if record_file is not None and (len(todo) < len(items) or record_file.torn):
            torn = "; its last line, cut short, was cut off and its input is redone" if record_file.torn else ""
            note(f"resuming {args.output}: {len(items) - len(todo):,} inputs have records, {len(todo):,} to go{torn}",
                 args.quiet)
        reporter = Reporter(len(todo), args.quiet, task)
        sink = Sink(args, todo, reporter, text, prepare, record_file)
        started = time.monotonic()
        if args.engine is None:
            run_local(predictor, todo, args.batch_size, sink.emit)
        else:
            predictor.close()
            quiet_dask_logs()
            # the workers read the checkpoint themselves: a local one by its absolute path
            model = str(Path(args.model).resolve()) if Path(args.model).exists() else args.model
            run_dask(Job(model, task, threads=1, **settings), todo, args.batch_size, sink.emit, address=args.address,
                     workers=args.workers or usable_cpus(), send_bytes=args.send_bytes,
                     note=lambda words: note(words, args.quiet))
        reporter.close()
        if args.json:
            write_json(json_lines(sink.kept))
        if record_file is not None:
            seconds = time.monotonic() - started
            rate = f", {len(todo) / seconds:.2f} images/s" if todo and seconds > 0 else ""
            note(f"{len(todo):,} records written to {args.output} in {seconds:.1f} s{rate}"
                 + (f", {sink.failed:,} of them errors" if sink.failed else ""), args.quiet)
        # a resumed run ends as the uninterrupted one would: failed if an input's record is an error
        failed_before = record_file is not None and any(item.file in record_file.failed for item in items)
        finished = True
        return EXIT_FAILED if sink.failed or failed_before else EXIT_OK
    except (EngineError, StreamError) as e:  # the run failed as it went: status 1
        raise ModelError(str(e)) from None
    finally:
        if reporter is not None:
            reporter.close()
        if predictor is not None:
            predictor.close()
        if record_file is not None:
            if not finished:
                record_file.discard()  # if this run made it and wrote nothing: not left behind
            record_file.close()


def json_lines(records: list[dict]) -> str:
    """A JSON array with one record per line: valid JSON, and readable with grep and head."""
    if not records:
        return "[]"
    return "[\n" + ",\n".join("  " + to_json(r) for r in records) + "\n]"


# --------------------------------------------------------------------------------------------
# classify
# --------------------------------------------------------------------------------------------


def classify_text(record: dict) -> str:
    return "\n".join([f"{printable(record['file'])}:"] + [f"  {p['score']:7.4f}  {printable(p['label'])}  [{p['index']}]"
                                                        for p in record["predictions"]])


def cmd_classify(args) -> int:
    return run_images(args, "classify", classify_text)


# --------------------------------------------------------------------------------------------
# segment
# --------------------------------------------------------------------------------------------


# Temporary files being written, removed on the way out of an interrupted run (see main).
_TEMPORARY: set[str] = set()
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class OutputError(OSError):
    """A result file that cannot be written (it exists, or the write failed): this image's error."""


class Outputs:
    """Where ``segment`` writes: names unique within the run, existing files replaced only with
    ``overwrite``, every file written whole through a temporary file and moved into place."""

    def __init__(self, folder: Path, overwrite: bool):
        self.folder, self.overwrite = folder, overwrite
        self.claimed: set[str] = set()  # this run's file names, casefolded (a case-insensitive disk)
        self.mode = 0o666 & ~current_umask()  # mkstemp makes 0600 files; results get the usual mode

    def claim(self, stem: str) -> tuple[Path, Path]:
        """The (labels, overlay) paths for ``stem``: the first of stem, stem-2, stem-3, ... whose
        files no earlier image of this run has claimed."""
        for n in itertools.count(1):
            name = stem if n == 1 else f"{stem}-{n}"
            paths = (self.folder / f"{name}_labels.png", self.folder / f"{name}_overlay.png")
            keys = {path.name.casefold() for path in paths}
            if not keys & self.claimed:
                self.claimed |= keys
                return paths
        raise AssertionError("unreachable")

    def refuse_existing(self, paths, inputs: frozenset = frozenset(), resumed: str | None = None) -> bool:
        """Refuse paths that exist (unless ``overwrite``) and, always, paths that are one of this
        run's input files (``inputs``: their (device, inode)): with the output folder among the
        inputs, x.jpg's x_labels.png could replace the photo x_labels.png before it is read.
        ``resumed``: the input of a resumed run; files that an earlier run made from that input
        (``made_from``) may be replaced. Returns whether the files are to be replaced."""
        for path in paths:
            try:
                found = os.lstat(path)
            except OSError:
                continue
            if (found.st_dev, found.st_ino) in inputs:
                raise OutputError(f"{path} is one of this run's input images; not replaced")
        if self.overwrite:
            return True
        existing = [path for path in paths if os.path.lexists(path)]  # a link counts, dangling or not
        if resumed is not None and existing and all(made_from(path) == input_key(resumed) for path in existing):
            return True
        if existing:
            raise OutputError(f"{existing[0]} exists; not replaced without --overwrite")
        return False

    def save(self, data: bytes, path: Path, replace: bool = False) -> None:
        """Write ``data`` (a PNG) at ``path``, whole or not at all. The temporary file is made by
        mkstemp in the same folder (a fresh random name, O_CREAT | O_EXCL: a file or link planted
        there is never opened) and renamed or linked into place; a rename replaces a link at
        ``path`` itself, never its target."""
        mask = getattr(signal, "pthread_sigmask", None)  # POSIX: no signal between create and record
        blocked = mask(signal.SIG_BLOCK, _SIGNALS) if mask else None
        try:
            fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{path.name}.", suffix=".tmp")
            _TEMPORARY.add(tmp)
        except OSError as e:  # a name too long, a folder not writable
            raise OutputError(f"cannot write {path} ({e.strerror or e})") from None
        finally:
            if mask:
                mask(signal.SIG_SETMASK, blocked)
        try:
            with os.fdopen(fd, "wb") as file:
                if hasattr(os, "fchmod"):
                    os.fchmod(file.fileno(), self.mode)
                file.write(data)
            self._move(tmp, path, replace)
        except OSError as e:
            if isinstance(e, OutputError):
                raise
            raise OutputError(f"cannot write {path} ({e.strerror or e})") from None
        finally:
            if os.path.lexists(tmp):
                os.unlink(tmp)
            _TEMPORARY.discard(tmp)

    def _move(self, tmp: str, path: Path, replace: bool) -> None:
        if self.overwrite or replace:
            os.replace(tmp, path)
            return
        try:
            os.link(tmp, path)  # fails if anything is at path (created since the check): never replaced
        except FileExistsError:
            raise OutputError(f"{path} exists; not replaced without --overwrite") from None
        except OSError:  # a file system without hard links
            if os.path.lexists(path):
                raise OutputError(f"{path} exists; not replaced without --overwrite") from None
            os.replace(tmp, path)


def remove_temporary_files() -> None:
    for tmp in list(_TEMPORARY):
        try:
            os.unlink(tmp)
        except OSError:
            pass
        _TEMPORARY.discard(tmp)


def segment_text(record: dict) -> str:
    present = record["classes"]
    summary = ", ".join(f"{printable(c['label'])} {100 * c['fraction']:.1f}%" for c in present[:5])
    summary += f", and {len(present) - 5} more" if len(present) > 5 else ""
    return f"{printable(record['file'])}: {printable(record['labels'])}, {printable(record['overlay'])} ({summary})"


def cmd_segment(args) -> int:
    out_dir = Path(args.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out-dir {args.out_dir}: exists and is not a folder")

    def prepare_outputs(items: list[Item]):
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"--out-dir {args.out_dir}: cannot create the folder ({e.strerror or e})") from None
        outputs = Outputs(out_dir, args.overwrite)
        # Names are claimed in input order, before anything runs, for every input, those a resumed
        # run skips too: the same command line always gives the same names, and an image whose
        # files exist is skipped before it is decoded.
        inputs = set()
        for item in items:
            try:
                found = os.stat(item.file)
                inputs.add((found.st_dev, found.st_ino))
            except (OSError, ValueError):  # reported when it is opened
                pass
        inputs = frozenset(inputs)
        for item in items:
            if item.error is None:
                item.outputs = outputs.claim(Path(item.file).stem)
                if item.recorded:
                    continue
                try:
                    # a resumed run replaces the files the interrupted one wrote for this input
                    item.replace = outputs.refuse_existing(item.outputs, inputs, item.file if args.resume else None)
                except OutputError as e:
                    item.error = str(e)

        def prepare(item: Item, record: dict) -> dict:
            png = record["png"]
            labels_path, overlay_path = item.outputs
            outputs.save(png["labels"], labels_path, item.replace)
            outputs.save(png["overlay"], overlay_path, item.replace)
            return {"file": record["file"], "labels": str(labels_path), "overlay": str(overlay_path),
                    "size": record["size"], "classes": record["classes"]}

        return prepare

    return run_images(args, "segment", segment_text, prepare_outputs)


# --------------------------------------------------------------------------------------------
# info
# --------------------------------------------------------------------------------------------


def info_config(name: str, behavior: str | None) -> MobileViTV2Config:
    """The config ``info`` describes: the checkpoint's config.json, else (a local ml-cvnets
    checkpoint) the YAML beside its weights; ``behavior`` as ``from_pretrained`` would choose it."""
    from .hub import find_cvnets_yaml

    overrides = {} if behavior is None else {"behavior": behavior, "patch_remainder": None, "dilate_local_conv": None}
    try:
        return MobileViTV2Config.from_pretrained(name, **overrides)
    except CheckpointNotFoundError:
        found = find_cvnets_yaml(name) if name and Path(name).exists() else None
        if found is None:
            raise
        return MobileViTV2Config.from_cvnets_yaml(found, **overrides)


def cmd_info(args) -> int:
    try:
        config = info_config(args.model, args.behavior)
    except LOAD_ERRORS as e:
        raise ModelError(f"cannot load the config of {args.model}: {_reason(args.model, e)}") from None
    head = args.head or guess_head(config)
    height, width = args.image_size or (config.image_size, config.image_size)
    try:
        rows = summarize(config, height, width, head=head, per_layer=args.per_layer)
    except ValueError as e:
        raise UsageError(f"--image-size {height} {width}: {e}") from None
    if args.json:
        print(json.dumps({"model": args.model, "head": head, "behavior": config.behavior or DEFAULT_BEHAVIOR,
                          "input_shape": [config.num_channels, height, width],
                          "macs": sum(r.macs for r in rows), "params": sum(r.params for r in rows),
                          "params_folded": sum(r.params_folded for r in rows),
                          "rows": [r.to_dict() for r in rows]}, indent=2))
        return EXIT_OK
    title = (f"{args.model}: MobileViTV2, width multiplier {config.width_multiplier}, {head} head"
             + (f" ({config.num_labels} labels)" if head != "base" else "")
             + f", output stride {config.output_stride}, behavior {config.behavior or DEFAULT_BEHAVIOR}"
             + f"; input {config.num_channels}x{height}x{width}")
    print(format_summary(rows, title=title))
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# finetune
# --------------------------------------------------------------------------------------------

FINETUNE_HELP = """\
DATA for classification: DATA/train/<class>/ and DATA/val/<class>/ (validation/ also), or
DATA/<class>/ alone, of which --val-fraction of each class is held out (chosen by --seed); the
labels are the folder names. For segmentation: DATA/images/ and DATA/masks/ (JPEGImages/ and
SegmentationClass/ also), or both under train/ and val/; a mask is a palette or grey PNG of class
ids with the photo's stem, 255 ignored; DATA/classes.txt names the classes, one per line.

The model is MODEL's backbone with a new head sized to the classes (a segmentation checkpoint keeps
its ASPP). Training: AdamW (or SGD, momentum 0.9), no weight decay on norms and biases, a linear
warm-up over --warmup of the steps then a cosine decay to 0; random resized crops and horizontal
flips, prepared as MODEL's preprocessor_config.json says. After every epoch OUT holds a checkpoint
that transformers loads (model.safetensors, config.json with id2label, preprocessor_config.json),
resume.safetensors (what --resume continues from), log.jsonl (one JSON object per epoch) and
curves.png. Files are replaced whole: Ctrl-C or a crash loses at most the epoch in progress, and
--resume then ends where the uninterrupted run would have. Broken images are named on stderr and
skipped. Per-epoch results go to stdout, the progress bar to stderr."""


def cmd_finetune(args) -> int:
    from .data import DataError
    from .finetune import FinetuneError, Recipe, open_data, resume, start

    given = {field: getattr(args, field) for field in RECIPE_FLAGS}
    try:
        if args.resume:
            run = resume(args.out, args.data, quiet=args.quiet, **given)
            if args.model is not None and args.model != run.base:
                raise FinetuneError(f"--model {args.model}: the run in {args.out} started from {run.base}")
            note(f"resuming {args.out} after epoch {run.epoch} of {run.recipe.epochs}", args.quiet)
        else:
            recipe = Recipe(**{k: v for k, v in given.items() if v is not None})
            recipe.check()
            data = open_data(args.data, recipe)  # before the model: a bad folder is said at once
            name = args.model or (DEFAULT_CLASSIFIER if recipe.task == "classification" else DEFAULT_SEGMENTER)
            try:
                base_head = guess_head(info_config(name, None), default=recipe.task)
            except LOAD_ERRORS as e:
                raise ModelError(f"cannot load model {name}: {_reason(name, e)}") from None
            cls = {"segmentation": MobileViTV2ForSemanticSegmentation}.get(base_head, MobileViTV2ForImageClassification)
            if base_head == "base":
                from .modeling import MobileViTV2Model as cls
            base = load_model(cls, name, "finetune", DEFAULT_CLASSIFIER, fold_batch_norm=False)
            processor = load_processor(name, base.config, lambda words: note(words, args.quiet))
            run = start(data, base, processor, args.out, recipe, base_name=name, quiet=args.quiet)
            note(f"{data!r}; {run.steps_per_epoch} steps per epoch", args.quiet)
    except (DataError, FinetuneError) as e:
        raise UsageError(str(e)) from None
    except OSError as e:  # writing the checkpoint a resumed run re-exports
        raise ModelError(f"finetune: cannot write in {printable(args.out)}: {e.strerror or e}") from None
    try:
        run.fit()
    except FinetuneError as e:
        raise ModelError(str(e)) from None
    except OSError as e:  # the disk filled, the folder went away: what was saved before stays whole
        where = f" {e.filename}" if e.filename else f" in {args.out}"
        raise ModelError(f"finetune: cannot write{where}: {e.strerror or e}; epochs saved: {run.epoch}") from None
    except (KeyboardInterrupt, Interrupted):
        if run.epoch:
            print(f"{PROG} finetune: epoch {run.epoch} is saved in {printable(args.out)}; "
                  f"run the same command with --resume to go on", file=sys.stderr)
        raise
    print(f"saved to {printable(args.out)}")
    return EXIT_OK


RECIPE_FLAGS = ("task", "epochs", "batch_size", "lr", "weight_decay", "optimizer", "warmup", "freeze_backbone",
                "image_size", "seed", "val_fraction", "accumulate", "max_grad_norm", "min_crop", "flip")


# --------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------


def _argument(convert, valid, wanted: str, parsed_wanted: str | None = None):
    """An argparse ``type``: ``convert(text)``, refused unless ``valid(value)``; the messages say
    what was ``wanted`` (``parsed_wanted``: what text that does not convert was expected to be)."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {parsed_wanted or wanted}, got {text!r}") from None
        if not valid(value):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {value}")
        return value

    return parse


_positive_int = _argument(int, lambda v: v >= 1, "a positive integer")
_fraction = _argument(float, lambda v: 0.0 <= v <= 1.0, "a number between 0 and 1")
_number = _argument(float, lambda v: 0 <= v < float("inf"), "a finite number >= 0", "a number")
_seed_number = _argument(int, lambda v: 0 <= v < 2**63, "a whole number from 0 to 2**63 - 1", "a whole number")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=HelpFormatter,
        description="MobileViTV2 in plain NumPy: classify and segment images on the CPU, describe a model.",
        epilog=f"{MODEL_HELP}\n\n{EXIT_HELP}",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def images_command(name, help_text, default_model, epilog):
        sub = commands.add_parser(name, help=help_text, description=help_text,
                                  epilog=f"{epilog}\n\n{MODEL_HELP}\n\n{EXIT_HELP}", formatter_class=HelpFormatter)
        sub.set_defaults(subparser=sub)  # for the errors only found once it has parsed (main)
        sub.add_argument("inputs", nargs="*", metavar="IMAGE_OR_FOLDER",
                         help="image files, and folders whose image files (" + " ".join(IMAGE_EXTENSIONS)
                              + ", sorted by name, not recursive) are all used; - reads a list of paths from stdin")
        sub.add_argument("--paths-from", action="append", metavar="FILE",
                         help="read more inputs from FILE (- for stdin), one path a line, or separated by NUL bytes "
                              "(find -print0); may be given more than once")
        sub.add_argument("--model", "-m", default=default_model, metavar="MODEL",
                         help=f"checkpoint folder, weights file or Hugging Face repo id (default: {default_model})")
        sub.add_argument("--batch-size", "-b", type=_positive_int, default=8, metavar="N",
                         help="records written at a time, and images a cluster's task takes (default: 8); "
                              "each image runs through the network alone, several at a time on threads")
        sub.add_argument("--output", metavar="FILE.jsonl",
                         help="write one JSON record per input to FILE, a line each, as each batch completes "
                              "(- for stdout); nothing goes to stdout then. FILE must not exist unless --resume")
        sub.add_argument("--resume", action="store_true",
                         help="go on with the run recorded in --output FILE: inputs it has records of are skipped, "
                              "a last line cut short by a crash is cut off and its input redone")
        sub.add_argument("--engine", choices=("dask", "ray"), metavar="dask",
                         help="run on a Dask cluster (pip install 'numpy-mvit2[dask]'): a local one of --workers "
                              "processes, or the scheduler at --address; the records are those of a run without it")
        sub.add_argument("--address", metavar="HOST:PORT",
                         help="--engine's scheduler (e.g. tcp://10.0.0.5:8786); its workers need numpy-mvit2 and "
                              "MODEL at the same path (or repo id in their cache), and the images unless --send-bytes")
        sub.add_argument("--workers", type=_positive_int, metavar="N",
                         help="--engine's local cluster: N worker processes, one image at a time each "
                              "(default: the usable cores)")
        sub.add_argument("--send-bytes", action="store_true",
                         help="--engine: read the images here and send their bytes, for workers that do not "
                              "see this disk")
        sub.add_argument("--json", action="store_true", help="print the results as JSON (shape below)")
        sub.add_argument("--max-pixels", type=_positive_int, default=DEFAULT_MAX_PIXELS[name], metavar="N",
                         help=f"refuse images with more pixels than this, from their header, before decoding "
                              f"(default: {DEFAULT_MAX_PIXELS[name]:,})")
        sub.add_argument("--max-prepared-pixels", type=_positive_int, default=DEFAULT_MAX_PREPARED_PIXELS[name],
                         metavar="N", help="refuse images with more pixels than this once resized as the checkpoint "
                                           f"says (default: {DEFAULT_MAX_PREPARED_PIXELS[name]:,})")
        sub.add_argument("--quiet", "-q", action="store_true",
                         help="no progress bar and no notes (errors are still printed)")
        add_behavior(sub)
        return sub

    def add_behavior(sub):
        sub.add_argument("--behavior", choices=tuple(BEHAVIORS), metavar="FRAMEWORK",
                         help="whose function to compute, " + ", ".join(BEHAVIORS) + " (default: the checkpoint's "
                              "own framework's, from its config or its tensor names; they differ at sizes the patch "
                              "size does not divide and in the dilated stages of segmentation models)")

    classify = images_command("classify", "Classify images: the top-k labels with their probabilities.",
                              DEFAULT_CLASSIFIER, CLASSIFY_JSON)
    classify.add_argument("--top-k", "-k", type=_positive_int, default=5, metavar="K",
                          help="how many labels to show per image (default: 5; at most the model's number of "
                               "labels, with a note when K is more)")
    classify.set_defaults(func=cmd_classify)

    segment = images_command("segment", "Segment images: a label PNG and an overlay PNG per image, at the photo's size. "
                                        "The whole photo is segmented: resized as the checkpoint's preprocessor says, "
                                        "without its center crop, so every pixel gets a label.",
                             DEFAULT_SEGMENTER, SEGMENT_JSON)
    segment.add_argument("--out-dir", "-o", required=True, metavar="DIR", help="folder for the PNG files (created if needed)")
    segment.add_argument("--overwrite", action="store_true",
                         help="replace files that exist in DIR (from an earlier run); never a result of this run")
    segment.add_argument("--alpha", type=_fraction, default=0.5,
                         help="opacity of the class colours in the overlay, 0 to 1 (default: 0.5)")
    segment.set_defaults(func=cmd_segment)

    info = commands.add_parser("info", help="Parameters, MACs and output shapes per stage.",
                               description="Parameters, multiply-accumulates (MACs) and output shapes per stage of a "
                                           "model, from its config.json alone (no weights are read).",
                               epilog=f"{MODEL_HELP}\n\n{EXIT_HELP}", formatter_class=HelpFormatter)
    info.set_defaults(subparser=info)
    info.add_argument("--model", "-m", default=DEFAULT_CLASSIFIER, metavar="MODEL",
                      help=f"checkpoint folder, its config.json, a weights file or Hugging Face repo id "
                           f"(default: {DEFAULT_CLASSIFIER})")
    info.add_argument("--image-size", type=_positive_int, nargs=2, metavar=("H", "W"),
                      help="input height and width (default: the config's image_size)")
    info.add_argument("--head", choices=("base", "classification", "segmentation"),
                      help="which model (default: from config.json's architectures, else classification)")
    info.add_argument("--per-layer", action="store_true", help="one row per layer instead of per stage")
    add_behavior(info)
    info.add_argument("--json", action="store_true",
                      help="print {model, head, behavior, input_shape, params, params_folded, macs, rows: [{name, stage, kind, "
                           "output_shape, params, params_folded, macs}]} as JSON")
    info.set_defaults(func=cmd_info)

    from .finetune import OPTIMIZERS, TASKS, Recipe

    defaults = Recipe()
    finetune = commands.add_parser("finetune", help="Fine-tune a checkpoint on an image folder (NumPy only).",
                                   description="Fine-tune MobileViTV2 on a folder of images: a new head sized to "
                                               "its classes, trained with NumPy alone; every epoch saved as a "
                                               "checkpoint transformers loads.",
                                   epilog=f"{FINETUNE_HELP}\n\n{MODEL_HELP}\n\n{EXIT_HELP}", formatter_class=HelpFormatter)
    finetune.set_defaults(subparser=finetune, func=cmd_finetune)
    finetune.add_argument("data", metavar="DATA", help="the data folder (layouts below)")
    finetune.add_argument("--model", "-m", metavar="MODEL",
                          help=f"the checkpoint to start from (default: {DEFAULT_CLASSIFIER}, or {DEFAULT_SEGMENTER} "
                               "for --task segmentation; with --resume: the run's)")
    finetune.add_argument("--out", "-o", required=True, metavar="DIR",
                          help="the folder for the checkpoint, log and plot (new or empty; with --resume: the run's)")
    finetune.add_argument("--task", choices=tuple(TASKS), help=f"default: {defaults.task}")
    finetune.add_argument("--epochs", type=_positive_int, metavar="N", help=f"default: {defaults.epochs}")
    finetune.add_argument("--batch-size", "-b", type=_positive_int, metavar="N", help=f"default: {defaults.batch_size}")
    finetune.add_argument("--lr", type=_number, metavar="LR", help=f"the peak learning rate (default: {defaults.lr:g})")
    finetune.add_argument("--weight-decay", type=_number, metavar="WD",
                          help=f"on convolution and linear weights (default: {defaults.weight_decay:g})")
    finetune.add_argument("--optimizer", choices=OPTIMIZERS, help=f"default: {defaults.optimizer}")
    finetune.add_argument("--warmup", type=_fraction, metavar="FRACTION",
                          help=f"the fraction of the steps the learning rate warms up over (default: {defaults.warmup:g})")
    finetune.add_argument("--freeze-backbone", action="store_true", default=None,
                          help="a linear probe: train the head alone, the backbone fixed in eval mode")
    finetune.add_argument("--image-size", type=_positive_int, metavar="S",
                          help="the square crop to train on (default: MODEL's crop_size)")
    finetune.add_argument("--seed", type=_seed_number, metavar="N", help=f"every random draw comes from it (default: {defaults.seed})")
    finetune.add_argument("--val-fraction", type=_fraction, metavar="FRACTION",
                          help=f"held out of DATA/<class>/ for validation (default: {defaults.val_fraction:g})")
    finetune.add_argument("--accumulate", type=_positive_int, metavar="N",
                          help="batches whose gradients make one step (default: 1)")
    finetune.add_argument("--min-crop", type=_fraction, metavar="FRACTION",
                          help=f"the smallest share of the area a random crop takes (default: {defaults.min_crop:g})")
    finetune.add_argument("--no-flip", dest="flip", action="store_false", default=None,
                          help="no horizontal flips (for digits, text, anything with a handedness)")
    finetune.add_argument("--max-grad-norm", type=_number, metavar="NORM", help="clip the gradients' total norm (default: no clipping)")
    finetune.add_argument("--resume", action="store_true", help="continue the run saved in DIR from its last epoch")
    finetune.add_argument("--quiet", "-q", action="store_true", help="no progress bar and no notes")
    return parser


def quiet_hub_logging() -> None:
    """huggingface_hub logs every retry of a failed download as a warning; the failure itself is
    reported once, as our error. (HF_HUB_VERBOSITY, if set, still wins.)"""
    if "huggingface_hub" in sys.modules:
        if "HF_HUB_VERBOSITY" not in os.environ:
            logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    else:  # read by huggingface_hub when it is first imported
        os.environ.setdefault("HF_HUB_VERBOSITY", "error")


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived. Raised in the main thread and, like KeyboardInterrupt, not an
    Exception: it unwinds past the per-image handlers, through the clean-up of temporary files."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _on_signal(signum, frame) -> None:
    # One clean-up: a second signal while unwinding is ignored rather than cutting it short.
    for other in _SIGNALS:
        signal.signal(other, signal.SIG_IGN)
    raise Interrupted(signum)


def _catch_signals():
    """Route SIGINT and SIGTERM to ``Interrupted`` (main thread only); returns the old handlers."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {signum: signal.signal(signum, _on_signal) for signum in _SIGNALS}


def main(argv: list[str] | None = None) -> int:
    """The command line (``argv``: the arguments, default ``sys.argv[1:]``); returns the exit status."""
    try:
        try:
            return _main(argv)
        finally:
            # Flushed here, not at exit: a reader that has gone is then caught below, rather than
            # reported by Python as "Exception ignored ... BrokenPipeError" (--help ends in SystemExit).
            if sys.stdout is not None:
                sys.stdout.flush()
    except (OutputClosed, BrokenPipeError):  # `numpy-mvit2 classify photos/ | head -2`: stop quietly
        remove_temporary_files()
        silence_closed_output()
        return EXIT_BROKEN_PIPE


def silence_closed_output() -> None:
    """Point stdout (and stderr, if its reader has gone too) at /dev/null: what Python still holds
    for them is then flushed there at exit instead of raising BrokenPipeError once more."""
    for stream in (sys.stdout, sys.stderr):
        if stream is sys.stdout or reader_gone(stream):
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, stream.fileno())
                os.close(devnull)
            except (AttributeError, ValueError, OSError):  # a replaced stream without a file descriptor
                pass


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        # parse_args would report them with the top-level usage, though they follow the
        # subcommand (`classify x --bogus`): its own usage says what it takes
        before_command = args.command in argv and any(arg in argv[: argv.index(args.command)] for arg in unknown)
        (parser if before_command else args.subparser).error(f"unrecognized arguments: {' '.join(unknown)}")
    if sys.stdout is None and args.command in ("classify", "segment"):  # `numpy-mvit2 classify x.jpg >&-`
        print(f"{PROG} {args.command}: error: standard output is closed; its results would be lost "
              "(redirect it to a file or /dev/null instead)", file=sys.stderr)
        return EXIT_FAILED
    quiet_hub_logging()
    if getattr(args, "max_pixels", None) is not None:
        # --max-pixels replaces Pillow's decompression-bomb limit for this process
        Image.MAX_IMAGE_PIXELS = None
    for stream in (sys.stdout, sys.stderr):  # a label the locale cannot encode is shown escaped, not an error
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError, OSError):
            pass
    old_handlers = _catch_signals()
    try:
        if getattr(args, "model", None) is not None:
            args.model = model_location(args.model)
        return args.func(args)
    except UsageError as e:
        parser.exit(EXIT_USAGE, f"{PROG} {args.command}: error: {printable(e)}\n")
    except ModelError as e:
        print(f"{PROG}: error: {printable_lines(e)}", file=sys.stderr)
        return EXIT_FAILED
    except (KeyboardInterrupt, Interrupted) as e:
        remove_temporary_files()
        signum = getattr(e, "signum", signal.SIGINT)
        print(f"{PROG}: {'terminated' if signum == signal.SIGTERM else 'interrupted'}", file=sys.stderr)
        return 128 + signum  # 130 for SIGINT, 143 for SIGTERM
    except (OutputClosed, BrokenPipeError):
        raise  # main's: not an internal error
    except Exception as e:
        if os.environ.get("NUMPY_MVIT2_DEBUG"):
            raise
        print(f"{PROG}: internal error: {type(e).__name__}: {printable(e)} (set NUMPY_MVIT2_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return EXIT_FAILED
    finally:
        remove_temporary_files()
        for signum, handler in old_handlers.items():
            if handler is not None:  # None: set outside Python, cannot be put back
                signal.signal(signum, handler)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
