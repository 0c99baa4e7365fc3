"""How the pieces of one forward pass are run: the executor interface, this process's threads,
and the BLAS library's own thread count.

The layers (``layers.py``) are written against ``Executor``: a block splits its work into tasks
(row ranges of a convolution, pixel-in-patch positions of a transformer), hands them to
``executor.run`` and allocates the arrays several tasks write with ``executor.empty``. ``Threads``
runs the tasks on this process's threads; the team of processes (``team.py``) runs them on
processes that share memory. Why own threads, and why processes for single images:
benchmarks/README.md, "Threads and processes". In short: OpenBLAS's threads meet at a barrier
inside every matrix product (hundreds per pass, each a stall when another program holds a core),
so the fast path splits the work itself and keeps BLAS on one thread meanwhile; and threads hand
the GIL to each other after every NumPy call, which processes, with a GIL each, never do.

Nothing here changes process-wide state on import. BLAS's thread count (through threadpoolctl,
whose controller is built on first use) is lowered to 1 only inside a forward pass and restored
when the last pass in flight leaves; a fork is noticed by the process id, not by an at-fork hook.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import Protocol

import numpy as np
from threadpoolctl import ThreadpoolController

from .kernels import GroupNorm

THREADS: int | None = None
"""Threads of the fast path; None: ``NUMPY_MVIT2_THREADS`` or else BLAS's thread count. 1 turns
the fast path's own threads off."""

THREAD_PART_ELEMENTS = 1 << 16
"""``Threads.part_elements``: the smallest piece of work (in elements of the largest array it
writes) worth a thread of its own. Below it, handing work to another thread and waiting for it
costs more than it saves (set on the stage-4 and stage-5 blocks of width 1.0, whose maps are
16x16 and 8x8)."""


class Executor(Protocol):
    """What a block needs to run its pieces: ``Threads`` (this process) or a member of the team of
    processes (``team.Rank``).

    **The rule that keeps a team's results right**: every member of a team runs the same code, and
    shared arrays are found by *order*, not by name. So every member must call ``empty`` and
    ``group_norm`` for the same shapes in the same order, and call ``run`` the same number of times,
    whatever it computes itself (and whether or not the caller records intermediate values). A
    member that skips or adds one allocation reads another array's memory: wrong numbers, no error.
    """

    size: int
    """How many workers run the tasks of one ``run``."""

    shares_memory: bool
    """True when ``empty`` hands out memory that other processes share (then every allocation is
    part of the rule above, and a block can neither defer nor skip one); False for private memory."""

    def run(self, fn, tasks) -> None:
        """``fn(task)`` for every task (at most ``size``), all at once; returns when all are done.
        Tasks may wait for each other (``GroupNorm``)."""

    def empty(self, shape, dtype) -> np.ndarray:
        """An uninitialised array that every worker can write (a block's output, whose row ranges
        different workers fill)."""

    def group_norm(self, parts, batch, positions, count, eps) -> GroupNorm:
        """A ``GroupNorm`` whose ``parts`` meet at a barrier of this executor."""

    def parts(self, elements, divisor=1) -> int:
        """How many workers a piece of work writing ``elements`` values is worth (``divisor``: how
        much cheaper than the default a split of this kind is)."""


def parts_worth(size, part_elements, elements, divisor=1) -> int:  # -> 1 ... size
    """``Executor.parts`` for an executor of ``size`` workers whose pieces are worth a worker from
    ``part_elements / divisor`` elements on."""
    return max(1, min(size, elements * divisor // part_elements))


class ThreadBarrier:
    """``threading.Barrier`` with the ``wait(part)`` / ``abort()`` interface ``GroupNorm`` meets at."""

    def __init__(self, parts):
        self._barrier = threading.Barrier(parts)

    def wait(self, part):
        self._barrier.wait()

    def abort(self):
        self._barrier.abort()


class Threads:
    """``Executor`` on this process's threads (``parallel``): private memory, ``threading`` barriers."""

    shares_memory = False
    part_elements = THREAD_PART_ELEMENTS

    def __init__(self, size=1):
        self.size = max(1, int(size))

    def run(self, fn, tasks):
        parallel(fn, tasks)

    def empty(self, shape, dtype):
        return np.empty(shape, dtype)

    def group_norm(self, parts, batch, positions, count, eps):
        return GroupNorm(parts, batch, positions, count, eps, barrier=ThreadBarrier(parts) if parts > 1 else None)

    def parts(self, elements, divisor=1) -> int:
        return parts_worth(self.size, self.part_elements, elements, divisor)


SERIAL = Threads(1)
"""The executor of a pass (or of a batch part) that runs on the calling thread alone."""


# --------------------------------------------------------------------------------------------
# BLAS's thread count
# --------------------------------------------------------------------------------------------


class _Blas:
    """The BLAS libraries NumPy loaded (threadpoolctl's controllers of them, found once), and how
    many forward passes are holding their thread count at 1 (``limited``)."""

    def __init__(self):
        self.libraries = ThreadpoolController().select(user_api="blas").lib_controllers
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.depth = 0  # passes in flight that hold the count at 1
        self.saved = []  # each library's count before the first of them

    def counts(self) -> list[int]:
        """Each library's thread count, as the caller set it (not our temporary 1)."""
        with self.lock:
            if self.depth:
                return list(self.saved)
        return [lib.get_num_threads() for lib in self.libraries]


_blas: _Blas | None = None
_blas_lock = threading.Lock()


def _blas_state() -> _Blas:
    """The BLAS state of this process (made anew in a forked child: the lock may have been held by
    a thread that does not exist there, and the child's passes in flight are none)."""
    global _blas
    blas = _blas
    if blas is None or blas.pid != os.getpid():
        with _blas_lock:
            if _blas is None or _blas.pid != os.getpid():
                _blas = _Blas()
            blas = _blas
    return blas


_serial = threading.local()  # .depth: how many ``one_thread`` blocks this thread is in


def threads() -> int:
    """How many threads the fast path uses: 1 inside ``one_thread``, else ``THREADS``, else
    ``NUMPY_MVIT2_THREADS``, else BLAS's own thread count; 1 where BLAS's thread count cannot be
    controlled (then BLAS would compete with our threads for the cores)."""
    if getattr(_serial, "depth", 0):
        return 1
    blas = _blas_state()
    if not blas.libraries:
        return 1
    return configured_threads() or max(1, *blas.counts())


def configured_threads() -> int | None:
    """The thread count the user set: ``THREADS``, else ``NUMPY_MVIT2_THREADS``; None if neither."""
    if THREADS is not None:
        return max(1, int(THREADS))
    env = os.environ.get("NUMPY_MVIT2_THREADS", "").strip()
    if not env:
        return None
    if not env.isdigit() or len(env) > 6 or int(env) < 1:
        raise ValueError(f"NUMPY_MVIT2_THREADS={env!r}: not a positive whole number of threads")
    return int(env)


@contextmanager
def blas_limited():
    """BLAS on one thread while the fast path's own threads run: set on entry of the first pass in
    flight, restored to what it was when the last one leaves (nested and concurrent passes restore
    it once). An OpenBLAS thread woken once spins for a while after each product and takes a core
    from our threads, so the whole pass runs with the count at 1."""
    blas = _blas_state()
    with blas.lock:
        if blas.depth == 0:
            blas.saved = [lib.get_num_threads() for lib in blas.libraries]
            for lib in blas.libraries:
                lib.set_num_threads(1)
        blas.depth += 1
    try:
        yield
    finally:
        with blas.lock:
            blas.depth -= 1
            if blas.depth == 0:
                for lib, count in zip(blas.libraries, blas.saved):
                    lib.set_num_threads(count)


@contextmanager
def one_thread():
    """The calling thread's passes run on it alone, BLAS on one thread, whatever ``THREADS`` says
    (other threads are not affected). A pass then sums in one order that depends only on its
    input: an image's outputs come out bit for bit the same on any machine's thread count, in any
    process, which splitting a batch into parts (or an image into bands) does not give. Several
    threads, each in ``one_thread`` and each on its own images, use the cores as well as the
    batch parts do (benchmarks/README.md, "Streaming inference")."""
    _serial.depth = getattr(_serial, "depth", 0) + 1
    try:
        with blas_limited():
            yield
    finally:
        _serial.depth -= 1


# --------------------------------------------------------------------------------------------
# This process's threads
# --------------------------------------------------------------------------------------------


_pools = threading.local()  # each calling thread has its own pool: concurrent calls never wait on each other's workers


def _pool(workers) -> ThreadPoolExecutor:
    """The calling thread's pool, with at least ``workers`` threads. A child made by fork() has
    only the thread that forked, so a pool made before the fork (another process id) is made anew."""
    pool, pid = getattr(_pools, "pool", None), getattr(_pools, "pid", None)
    if pool is None or pid != os.getpid() or pool._max_workers < workers:
        pool = _pools.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="numpy_mvit2")
        _pools.pid = os.getpid()
    return pool


def parallel(fn, items):  # -> [fn(item) for item in items], all items at once
    """``[fn(item) for item in items]``, every item on its own thread at the same time (the first
    on the calling thread, the others on this thread's pool), BLAS on one thread meanwhile.
    All items run concurrently, so they may wait for each other (``GroupNorm``)."""
    if len(items) <= 1:
        return [fn(item) for item in items]
    pool = _pool(len(items) - 1)
    with blas_limited():
        futures = [pool.submit(fn, item) for item in items[1:]]
        try:
            first = fn(items[0])
        finally:
            wait(futures)
        return [first] + [f.result() for f in futures]
