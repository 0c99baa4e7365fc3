"""Runs over many images: records streamed to a JSON-lines file as they come, resumable after a
crash, computed on this process's threads or on a Dask cluster (``numpy-mvit2 classify --output``,
``--resume``, ``--engine dask``).

The pieces, each usable alone:

- ``RecordFile``: the ``--output`` file. One JSON record a line, each batch's lines written with
  one ``write`` to a file opened for appending (never rewritten, never truncated but for a torn
  last line), locked against a second run writing it at the same time. Resumed, it is read as
  hostile data: each line bounded (``MAX_RECORD_BYTES``), parsed, and its ``file`` collected; a
  last line cut short by a crash (no newline, or not JSON) is cut off and its input redone; a
  broken line anywhere else is an error naming the line, and nothing is written.
- ``read_path_list``: a file of paths (``-``: stdin), one a line, or separated by NUL bytes
  (``find -print0``, for names that hold a newline), so a million inputs need no shell glob.
- ``run_local``: records of inputs, in input order, in batches, from a ``Predictor``'s threads.
- ``run_dask``: the same records from a Dask cluster: consecutive inputs in partitions of
  ``batch_size``, each turned into records by ``inference.predict_partition`` on a worker (which
  loads the checkpoint once), written in input order. A worker that dies is the scheduler's to
  recover: its partitions are rerun elsewhere (Dask's ``allowed-failures``); a partition that
  kills every worker it meets becomes error records, never a failed run.

Dask is optional (``pip install 'numpy-mvit2[dask]'``): imported only by ``run_dask``.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import signal
import stat
import sys
import warnings
from collections import Counter, deque
from pathlib import Path

from .inference import Job, ModelError, Predictor, predict_partition
from .safeio import read_bounded

# A record is a few hundred bytes (a classification's top-5), up to ~2 MB for every label of a
# 32,768-label model or a segmentation's class list; a longer line is not one of ours.
MAX_RECORD_BYTES = 16 * 2**20
# The most bytes of one image the driver reads and sends to a worker (--send-bytes): more than any
# image within the pixel limits needs (a 40-megapixel photo as 16-bit RGBA PNG is 320 MB raw).
MAX_SENT_BYTES = 512 * 2**20
# The longest list of paths read: about ten million names of a hundred bytes, held as a Python list.
MAX_PATH_LIST_BYTES = 2**30


# A local cluster's workers: BLAS on one thread from the start (each worker is one image on one core;
# set before NumPy loads BLAS, it holds for every thread, which a limit set later from a worker's
# task thread did not). A remote cluster's workers should be started so too (README).
WORKER_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class StreamError(Exception):
    """--output, --resume or a path list cannot be used (exit status 2: nothing was run), or the
    output cannot be written as the run goes (status 1)."""


class EngineError(Exception):
    """The cluster cannot be started, reached or used (exit status 1)."""


# --------------------------------------------------------------------------------------------
# JSON that is always UTF-8
# --------------------------------------------------------------------------------------------

# In JSON, C0 controls are escaped by json.dumps itself; these are valid JSON raw but not as UTF-8
# (lone surrogates) or not safe on a terminal (C1, bidi controls): written as \uXXXX escapes.
_JSON_UNSAFE = re.compile("[\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def to_json(value, **kwargs) -> str:
    """``json.dumps(value)`` that always encodes as UTF-8: non-ASCII text as it is, lone surrogates
    (a file name's undecodable bytes) as ``\\udcXX`` escapes, which ``json.loads`` turns back into
    the same surrogates (and ``os.fsencode`` into the original bytes)."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False, **kwargs)  # NaN is not JSON
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


# --------------------------------------------------------------------------------------------
# The output file
# --------------------------------------------------------------------------------------------


def _read_record(line: bytes) -> dict | None:
    """One line of an output file as a record, or None if it is not one."""
    try:
        record = json.loads(line.decode("utf-8", "surrogatepass"))
    except (ValueError, RecursionError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("file"), str):
        return None
    return record


class RecordFile:
    """The JSON-lines output of a run: ``done`` holds the inputs it already has a record of."""

    def __init__(self, path: str, resume: bool):
        self.path = path
        self.done: Counter[str] = Counter()  # the inputs it has records of: how many each (a list may repeat one)
        self.failed: set[str] = set()  # the inputs of ``done`` whose records are errors
        self.torn = False  # a last line cut short was cut off
        self.written = 0
        try:
            found = os.stat(path)
        except FileNotFoundError:
            found = None
        except OSError as e:
            raise StreamError(f"--output {path}: {e.strerror or e}") from None
        if found is not None and not stat.S_ISREG(found.st_mode):
            raise StreamError(f"--output {path}: not a regular file")
        self.created = found is None
        if found is not None and found.st_size and not resume:
            raise StreamError(f"--output {path} exists; give --resume to go on with its run "
                              "(inputs it has records of are skipped), or name another file")
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
        if self.created and not os.path.islink(path):
            flags |= os.O_EXCL  # made here, or refused: never a file another run made in the meantime
        try:
            self.fd = os.open(path, flags, 0o666)
        except FileExistsError:
            raise StreamError(f"--output {path}: made by another run while this one started") from None
        except OSError as e:
            raise StreamError(f"--output {path}: cannot open for writing ({e.strerror or e})") from None
        try:
            if not stat.S_ISREG(os.fstat(self.fd).st_mode):  # swapped for a FIFO since the check
                raise StreamError(f"--output {path}: not a regular file")
            self._lock()
            if found is not None and found.st_size:
                keep = self._read_done()
                if keep < os.fstat(self.fd).st_size:
                    os.ftruncate(self.fd, keep)  # the torn line, and nothing before it
                    self.torn = True
        except BaseException:
            os.close(self.fd)
            raise

    def _lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StreamError(f"--output {self.path}: another run is writing it") from None
            # a file system without locks (some network ones): go on unlocked

    def _read_done(self) -> int:
        """Read the records so far into ``done``; returns the length of the file's whole lines
        (the rest, a torn last line, is to be cut off)."""
        try:
            file = open(self.path, "rb")
        except OSError as e:
            raise StreamError(f"--output {self.path}: cannot read it to resume ({e.strerror or e})") from None
        with file:
            offset, number = 0, 0
            while True:
                line = file.readline(MAX_RECORD_BYTES + 1)
                if not line:
                    return offset
                number += 1
                whole = line.endswith(b"\n")
                record = _read_record(line) if whole else None
                if record is None:
                    if not whole and len(line) > MAX_RECORD_BYTES:
                        raise StreamError(f"--output {self.path}, line {number}: longer than {MAX_RECORD_BYTES:,} "
                                          "bytes, not a record of numpy-mvit2; not resumed")
                    if not file.read(1):  # the last line: torn by a crash while it was written
                        return offset
                    raise StreamError(f"--output {self.path}, line {number}: not a JSON record with a \"file\"; "
                                      "not resumed (is it the output of numpy-mvit2?)")
                self.done[record["file"]] += 1
                if "error" in record:
                    self.failed.add(record["file"])
                offset += len(line)

    def write(self, records: list[dict]) -> None:
        """The records' lines, appended with one write (looped only if the system writes less).
        A write that fails (a full disk, a file-size limit) is a ``StreamError``; what it left of a
        line is a torn last line, which ``--resume`` cuts off."""
        data = memoryview("".join(to_json(r) + "\n" for r in records).encode("utf-8"))
        while data:
            try:
                n = os.write(self.fd, data)
            except InterruptedError:
                continue
            except OSError as e:
                raise StreamError(f"--output {self.path}: cannot write ({e.strerror or e}); --resume goes on "
                                  "from the records written before") from None
            data = data[n:]
        self.written += len(records)

    def discard(self) -> None:
        """Remove the file if this run made it (a run that failed before its first record)."""
        if self.created and self.written == 0:
            try:
                os.unlink(self.path)
            except OSError:
                pass

    def close(self) -> None:
        if self.fd is None:
            return
        try:
            os.fsync(self.fd)
        except OSError:
            pass
        finally:
            os.close(self.fd)
            self.fd = None


# --------------------------------------------------------------------------------------------
# Path lists
# --------------------------------------------------------------------------------------------


def read_path_list(name: str) -> list[str]:
    """The paths in the file ``name`` (``-``: stdin; a FIFO such as ``<(find ...)`` is read too, a
    device is refused): one a line (a trailing ``\r`` dropped, blank lines skipped) or, when the
    text holds a NUL byte, separated by NULs. Names are bytes on disk: decoded as ``os.fsdecode``
    does. At most ``MAX_PATH_LIST_BYTES`` are read."""
    where = "stdin" if name == "-" else name
    try:
        if name == "-":
            if sys.stdin is None:
                return []
            file = sys.stdin.buffer
            data = _read_capped(file, where)
        else:
            mode = os.stat(name).st_mode
            if stat.S_ISDIR(mode):
                raise StreamError(f"--paths-from {name}: a folder, not a file of paths")
            if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
                raise StreamError(f"--paths-from {name}: not a regular file or a pipe")
            with open(name, "rb") as file:
                data = _read_capped(file, where)
    except OSError as e:
        raise StreamError(f"--paths-from {where}: {e.strerror or e}") from None
    if b"\0" in data:
        parts = data.split(b"\0")
    else:
        parts = [line[:-1] if line.endswith(b"\r") else line for line in data.split(b"\n")]
    return [os.fsdecode(part) for part in parts if part]


def _read_capped(file, where: str) -> bytes:
    chunks, total = [], 0
    while chunk := file.read(2**20):
        total += len(chunk)
        if total > MAX_PATH_LIST_BYTES:
            raise StreamError(f"--paths-from {where}: longer than {MAX_PATH_LIST_BYTES:,} bytes; split the list "
                              "into runs of their own")
        chunks.append(chunk)
    return b"".join(chunks)


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------


def _error_record(item) -> dict:
    return {"file": item.file, "error": item.error}


def run_local(predictor: Predictor, items, batch_size: int, emit) -> None:
    """The records of ``items`` (objects with ``file``, and ``error`` set for an input that failed
    already), computed on the predictor's threads; ``emit(records)`` is called for each run of
    ``batch_size`` of them, in input order. The next batch is under way while one is written; at
    most ``batch_size`` + threads images are held at a time."""
    window = batch_size + predictor.threads
    pending: deque = deque()
    try:
        for item in items:
            pending.append((item, None if item.error is not None else predictor.submit(item.file)))
            if len(pending) >= window:
                _emit_head(pending, batch_size, emit)
        while pending:
            _emit_head(pending, batch_size, emit)
    finally:
        for _, future in pending:  # interrupted: no image more is started
            if future is not None:
                future.cancel()


def _emit_head(pending: deque, batch_size: int, emit) -> None:
    batch = [pending.popleft() for _ in range(min(batch_size, len(pending)))]
    emit([_error_record(item) if future is None else future.result() for item, future in batch])


def _import_dask():
    try:
        import distributed
    except ImportError as e:
        raise EngineError(f"--engine dask needs Dask's distributed scheduler ({e}): "
                          "pip install 'numpy-mvit2[dask]'") from None
    return distributed


def quiet_dask_logs() -> None:
    """Dask's loggers at CRITICAL for the rest of the process: the command line's own errors say
    what failed, where Dask would log a lost scheduler as its client retries, or a cluster closed
    in a hurry (Ctrl-C) as its workers end. For a program that owns its process, as the command
    line does; ``run_dask`` leaves logging as it finds it."""
    _import_dask()  # its logging settings are applied on import, some loggers with levels of their own
    for name in ["distributed", *logging.root.manager.loggerDict]:
        if name == "distributed" or name.startswith("distributed."):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def local_cluster(workers: int):
    """A Dask cluster of ``workers`` processes on this machine, one thread each with BLAS on one
    thread, on loopback and quiet."""
    distributed = _import_dask()
    import dask  # distributed's own dependency

    # No dashboard, and the scheduler's HTTP routes on a free port (its default, 8787, taken by
    # another cluster, is a warning on stderr). Dask's nannies set MALLOC_TRIM_THRESHOLD_ in their
    # workers; any setting of it stops glibc from raising its mmap threshold, so every layer's
    # large temporaries are mapped and unmapped afresh, page faults and all, a third more CPU per
    # image (benchmarks/README.md): the workers get glibc's default instead.
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        return distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                        host="127.0.0.1", dashboard_address=None,
                                        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
                                        silence_logs=logging.ERROR, env=WORKER_ENV,
                                        preload=[__name__])  # dask_setup, in each worker


def dask_setup(worker) -> None:
    """Dask's preload hook, run in each worker of ``local_cluster`` as it starts (and restarts):
    a Ctrl-C at the terminal reaches the whole process group; it is the command's to answer, by
    closing the cluster, not each worker's with a traceback. And the workers log nothing short of
    CRITICAL: what goes wrong reaches the command as a task's failure, while a worker whose
    heartbeat meets the scheduler already closed (a busy machine, the cluster closing) would log
    an ERROR with a traceback on the command's stderr."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    quiet_dask_logs()


def run_dask(job: Job, items, batch_size: int, emit, *, address: str | None = None, workers: int | None = None,
             send_bytes: bool = False, note=None) -> None:
    """``run_local``'s records, computed by a Dask cluster: the scheduler at ``address``, or a
    local cluster of ``workers`` processes (one thread and one image at a time each). Partitions
    of ``batch_size`` consecutive inputs go to the workers as paths (or, ``send_bytes``, as the
    files' bytes, read here: for workers that do not see this disk), at most a few per worker
    ahead of the one being written."""
    distributed = _import_dask()
    cluster = client = None
    try:
        try:
            if address is None:
                cluster = local_cluster(workers)
                client = distributed.Client(cluster)
            else:
                client = distributed.Client(address, timeout="10s")
            count = _workers(client)
        except (OSError, TimeoutError, ValueError, TypeError, RuntimeError) as e:
            # TypeError: an address of a protocol not installed (tls without its certificates,
            # ucx); RuntimeError: a nanny that could not start its worker
            where = f"the Dask scheduler at {address}" if address else f"a local Dask cluster of {workers} workers"
            raise EngineError(f"cannot reach {where}: {e}") from None
        if note is not None:
            if address is None:
                note(f"dask: {count} worker{'s' * (count != 1)} on this machine")
            else:
                note(f"dask: {count} worker thread{'s' * (count != 1)} at {address}"
                     + ("; waiting for workers to join" if count == 0 else ""))
        pending: deque = deque()

        def chunks():
            chunk = []
            for item in items:
                chunk.append(item)
                if len(chunk) == batch_size:
                    yield chunk
                    chunk = []
            if chunk:
                yield chunk

        try:
            folder = os.getcwd()
        except OSError:  # removed under this process: relative names are not found anyway
            folder = None
        for number, chunk in enumerate(chunks()):
            try:
                pending.append(_submit(client, job, chunk, send_bytes, folder))
                if count == 0 or number % 16 == 15:  # workers join and leave a remote cluster as it runs
                    count = _workers(client)
            except (OSError, TimeoutError) as e:  # the scheduler lost while a task went out
                raise _failed(e) from None
            if len(pending) >= 2 * max(1, count) + 1:  # a few partitions a worker in flight
                _emit_partition(pending.popleft(), emit)
        while pending:
            _emit_partition(pending.popleft(), emit)
    finally:
        for closing in (client, cluster):
            if closing is not None:
                try:
                    closing.close()
                except Exception:  # noqa: BLE001 - a cluster that will not close cleanly: the run is over anyway
                    pass


def _workers(client) -> int:
    """The cluster's worker threads now (all of them: ``scheduler_info`` lists only a few)."""
    return sum(client.nthreads().values())


def _submit(client, job: Job, chunk: list, send_bytes: bool, folder: str | None):
    inputs = []
    for item in chunk:
        if item.error is not None:
            continue
        if send_bytes:
            try:
                data = read_bounded(item.file, MAX_SENT_BYTES, error=OSError, what="image file")
            except OSError as e:
                item.error = str(e).removeprefix(f"{Path(item.file)}: ")
                continue
            inputs.append((item.file, data))
        else:
            inputs.append(item.file)
    if not inputs:
        return chunk, None
    with warnings.catch_warnings():
        # the bytes travel in the task, so that a worker lost with them costs only a rerun; Dask
        # warns of "large graphs" from 10 MB, which a partition of photos often is
        warnings.filterwarnings("ignore", "Sending large graph", UserWarning)
        # the workers find relative names in this process's working folder, not their own
        return chunk, client.submit(predict_partition, inputs, job, folder, pure=False)


def _failed(e: BaseException) -> EngineError:
    said = " ".join(str(e).split())  # Dask's messages run over lines
    return EngineError(f"the Dask cluster failed ({type(e).__name__}: {said}); --resume goes on from the "
                       "records written before")


def _emit_partition(unit, emit) -> None:
    """A partition's records, written; a cluster that fails is an ``EngineError``, and the run
    stops with the records so far (a resumed run does the rest)."""
    from distributed import KilledWorker

    chunk, future = unit
    records = iter(())
    if future is not None:
        try:
            records = iter(future.result())
        except ModelError:
            raise
        except KilledWorker:  # its inputs' records: every worker that ran it died
            reason = ("every Dask worker that ran this input's partition died (the scheduler's "
                      "allowed-failures): an image that kills its worker, or workers short of memory")
            records = iter([{"file": item.file, "error": reason} for item in chunk if item.error is None])
        except Exception as e:  # noqa: BLE001 - the scheduler lost, the task undeliverable: no records
            raise _failed(e) from None
    emit([_error_record(item) if item.error is not None else next(records) for item in chunk])
