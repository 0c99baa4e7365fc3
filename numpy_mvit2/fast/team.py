"""A team of processes that share one image's forward pass: opt-in, for single images.

**Opt in** with ``numpy_mvit2.team.start()`` (starts the workers and waits until they are ready),
``numpy_mvit2.team.PROCESSES = True`` or the environment variable ``NUMPY_MVIT2_PROCESSES=1``
(then the team starts on the first single-image pass, and those passes run on threads until it is
ready). Default: off; no library call starts a process unasked. ``PROCESSES = False`` or
``NUMPY_MVIT2_PROCESSES=0`` keep it off even when ``start()`` is called.

**The trade-off.** On an idle machine a single image is faster on the team than on threads
(processes have a GIL each, so the parts of a pass never wait for each other's GIL hand-over;
threads do, after every NumPy call: benchmarks/README.md, "Threads and processes", has the
measurements). The price: ``size - 1`` worker processes that live as long as this one (each with
its own Python and NumPy, some tens of MiB), shared memory for the input, the block outputs and
each model's weights, and about half a second to start. When another program holds a core the
members wait for each other at every barrier and the team is slower than threads; it notices
(``CONGESTED``) and steps aside for threads for a while. Batches never use the team: they are
split across threads by image, which needs no barrier at all.

The team is the layer above the fast path's blocks: it runs ``layers.run_backbone`` on a ``Rank``
(the ``executors.Executor`` interface over shared memory) in every member.

How it works (SPMD: every member runs the same code on its own part):

- ``size - 1`` worker processes (``python -c ...``, a fresh interpreter: no fork, nothing of the
  caller's ``__main__`` imported) are started on first use; until they report ready, passes run
  on threads. Each worker talks to this process over a Unix socket and exits when it closes.
- Memory they share is ``memfd`` memory handed over the socket: a control block of int64 slots
  (barriers, abort flag, "pass done"), an *arena* that holds the input and every array more than
  one member writes (block outputs), and each plan's weights, copied there once per plan (the
  plan's own arrays are then replaced by views of that memory, so it is not held twice). When a
  plan is dropped, its finalizer tells the workers to drop their copy (which unmaps it there), in
  whatever mode the team is: running passes, stepped aside, or busy with another thread's pass.
- A pass: this process (rank 0) copies the image into the arena and sends "run"; every member
  calls ``layers.run_backbone`` with its ``Rank``. ``Rank.empty`` hands out arena memory by bumping an
  offset, and since every member allocates the same arrays in the same order, the offsets agree
  without any message. ``Rank.run(fn, tasks)`` runs the member's own task, then waits at a
  barrier. Barriers spin on the control slots (a few us when the members arrive together), then
  yield the core, then sleep, checking that the others are alive.
- Anything unexpected (a worker that died or raised, a socket error) turns the team off for this
  process with a warning, and the pass is run again on threads: the result never depends on the
  team.
- Hooks: starting a team registers (once per process) an atexit hook that closes the sockets and
  an after-fork hook that drops the parent's team in a forked child. Importing this module
  registers nothing.

Only on Linux x86-64 (``os.memfd_create``, ``socket.send_fds``; x86's ordering of stores makes a
slot written after an array's values a safe signal that the values are there).
"""

from __future__ import annotations

import atexit
import io
import mmap
import os
import pickle
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import warnings
import weakref

import numpy as np

from .executors import blas_limited, parts_worth, threads
from .kernels import GroupNorm
from .layers import run_backbone
from .plan import Plan

PROCESSES: bool | None = None
"""Use a team of processes for single images: True / False; None: ``NUMPY_MVIT2_PROCESSES`` if set,
else whether ``start()`` was called in this process (default: off)."""

PROCESS_PART_ELEMENTS = 1 << 12
"""``Rank.part_elements``: the smallest piece of work (elements of the largest array it writes)
split among the team; smaller than ``executors.THREAD_PART_ELEMENTS`` because a spinning barrier
costs far less than handing work to a thread and waking it (benchmarks/README.md, "Threads and
processes")."""

ARENA_BYTES = 64 << 20
"""First size of the arena (virtual: pages cost memory only once written); it doubles (and the
pass is run again) when a pass needs more."""

SPIN_SECONDS = 2e-3
"""How long a barrier spins before it yields the core between checks (``sched_yield``); after
``YIELD_SECONDS`` it sleeps 100 us between checks and looks whether the other members are still
alive. (Sleeping sooner made passes slower on a busy machine: benchmarks/README.md.)"""
YIELD_SECONDS = 0.05

CONGESTED = 0.6
"""A pass on the team is *congested* when this process spent less than this fraction of its wall
time computing (its CPU time, less the time it waited at barriers): another program holds a core,
and the members wait for each other at every barrier. After two congested passes in a row the team
steps aside for ``BACKOFF_SECONDS[0]`` (doubling, up to ``BACKOFF_SECONDS[1]``, while it stays
congested) and single images run on threads, which suffer less there. The threshold lies between
the fractions measured on an idle machine and with another process spinning on a core
(benchmarks/README.md, "Threads and processes"). An uncongested pass resets the back-off."""
BACKOFF_SECONDS = (1.0, 30.0)
_clock = time.monotonic  # the back-off's clock (a test moves a clock of its own instead of sleeping)

START_TIMEOUT = 60.0
"""Seconds a worker may take to start (import NumPy and this package) before the team is given up."""

_CONTROL_SLOTS = 1 << 12
_ABORT, _DONE, _BARRIERS = 0, 8, 64  # control slots: abort epoch; per-rank "pass done"; barriers
_EPOCH_SHIFT = 24  # a barrier slot holds (epoch << 24) + how many times it was waited on this pass


class Aborted(RuntimeError):
    """Another member of the team gave up on this pass."""


class ArenaFull(RuntimeError):
    """A pass needs more arena than there is (every member finds out at the same allocation)."""

    def __init__(self, needed):
        super().__init__(f"the arena needs at least {needed} bytes")
        self.needed = needed


def available() -> bool:
    """Whether this platform can run a team (Linux x86-64 with memfd and fd passing)."""
    return (sys.platform.startswith("linux") and platform.machine().lower() in ("x86_64", "amd64")
            and hasattr(os, "memfd_create") and hasattr(socket, "send_fds"))


_asked = False  # start() was called in this process


def _environment() -> bool | None:  # NUMPY_MVIT2_PROCESSES: True, False, or None when unset or empty
    value = os.environ.get("NUMPY_MVIT2_PROCESSES", "").strip().lower()
    return None if not value else value not in ("0", "false", "no", "off")


def enabled() -> bool:
    """Whether single images go to a team: ``PROCESSES``, else ``NUMPY_MVIT2_PROCESSES``, else
    whether ``start()`` was called."""
    if PROCESSES is not None:
        return bool(PROCESSES)
    env = _environment()
    return _asked if env is None else env


def _refused() -> bool:  # switched off explicitly (start() then starts nothing)
    return PROCESSES is False or (PROCESSES is None and _environment() is False)


def _shared(nbytes, name):  # -> (fd, mmap) of fresh zeroed shared memory
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, max(1, nbytes))
        return fd, mmap.mmap(fd, max(1, nbytes))
    except BaseException:
        os.close(fd)
        raise


def _send(sock, message, fds=()):
    socket.send_fds(sock, [pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)], list(fds))


def _recv(sock):  # -> (message, fds); (None, []) when the other end is closed
    data, fds, _, _ = socket.recv_fds(sock, 1 << 20, 4)
    return (pickle.loads(data) if data else None), fds


# --------------------------------------------------------------------------------------------
# One member's view of a pass
# --------------------------------------------------------------------------------------------


class _Members:
    """What the barriers of one member need: the control slots, the pass's epoch and a way to
    tell whether the others are alive (``check``, called while waiting long)."""

    def __init__(self, ctl, epoch, check):
        self.ctl, self.epoch, self.base, self.check = ctl, epoch, epoch << _EPOCH_SHIFT, check
        self.waited = 0.0  # seconds spent waiting at barriers

    def abort(self):
        self.ctl[_ABORT] = self.epoch

    def wait_until(self, ready, abortable=True):
        """Return once ``ready()``; raise ``Aborted`` if a member gives up meanwhile."""
        ctl, epoch = self.ctl, (self.epoch if abortable else 1 << 62)
        if ready():
            return
        start = time.perf_counter()
        checked = start
        try:
            self._wait(ready, ctl, epoch, start, checked)
        finally:
            self.waited += time.perf_counter() - start

    def _wait(self, ready, ctl, epoch, start, checked):
        while not ready():
            if ctl[_ABORT] >= epoch:
                raise Aborted("another member of the team gave up on this pass")
            now = time.perf_counter()
            if now - start < SPIN_SECONDS:
                continue
            if now - start < YIELD_SECONDS:
                os.sched_yield()
                continue
            time.sleep(1e-4)
            if now - checked > 0.05:
                checked = now
                self.check()


class SpinBarrier:
    """A barrier for ``parties`` members over control slots ``first ... first + parties - 1``:
    member i writes how many times it has arrived and waits until every slot says as much."""

    def __init__(self, members: _Members, first, parties):
        self.members, self.slots, self.count = members, range(first, first + parties), 0

    def wait(self, index):
        self.count += 1
        target = self.members.base + self.count
        ctl, slots = self.members.ctl, self.slots
        ctl[slots[index]] = target
        self.members.wait_until(lambda: all(ctl[i] >= target for i in slots))

    def abort(self):
        self.members.abort()


class Rank:
    """One member's side of a pass: an ``executors.Executor`` whose ``empty`` hands out arena
    memory (shared: every member must allocate the same arrays in the same order, the rule
    written on ``Executor``) and whose ``run`` ends at a spinning barrier."""

    shares_memory = True
    part_elements = PROCESS_PART_ELEMENTS

    def __init__(self, rank, size, ctl, arena, epoch, check):
        self.rank, self.size = rank, size
        self.members = _Members(ctl, epoch, check)
        self.arena, self.offset = arena, 0
        self.everyone = SpinBarrier(self.members, _BARRIERS, size)
        self.next_slot = _BARRIERS + size

    def empty(self, shape, dtype):
        dtype = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        start = -(-self.offset // 64) * 64
        end = start + count * dtype.itemsize
        if end > self.arena.size:
            raise ArenaFull(end)
        self.offset = end
        return self.arena[start:end].view(dtype).reshape(shape)

    def run(self, fn, tasks):
        if len(tasks) > self.size:
            raise ValueError(f"{len(tasks)} tasks for a team of {self.size}")
        try:
            if self.rank < len(tasks):
                fn(tasks[self.rank])
        except BaseException:
            self.members.abort()
            raise
        self.everyone.wait(self.rank)

    def barrier(self, parties) -> SpinBarrier:
        """A barrier for ``parties`` members (of ranks 0 ... parties - 1), over control slots of
        its own (every member makes the same barriers in the same order)."""
        first = self.next_slot
        self.next_slot += parties
        if self.next_slot > _CONTROL_SLOTS:  # (a few slots per block: never with these models)
            raise Aborted("the control block has no barrier slots left")
        return SpinBarrier(self.members, first, parties)

    def group_norm(self, parts, batch, positions, count, eps):
        barrier = self.barrier(parts) if parts > 1 else None
        partial = self.empty((2, positions, batch, 4), np.float64)
        return GroupNorm(parts, batch, positions, count, eps, barrier=barrier, partial=partial)

    def parts(self, elements, divisor=1) -> int:
        return parts_worth(self.size, self.part_elements, elements, divisor)


def _run_pass(rank: Rank, plan, shape, dtype, record, pixels=None):
    """Every member's pass: the input is the first array of the arena (rank 0 fills it).
    ``record``: a callable (every member passes one when rank 0 records, so that all allocate the
    same arrays: ``_ignore`` on the workers), or None."""
    x = rank.empty(shape, dtype)
    if pixels is not None:
        x[...] = pixels
    return lambda: run_backbone(x, plan, rank, record)


def _ignore(name, array):  # a worker's record: the arrays are allocated as on rank 0, and not kept
    pass


# --------------------------------------------------------------------------------------------
# This process's side: the team
# --------------------------------------------------------------------------------------------


class Team:
    def __init__(self, size):
        self.size, self.pid = size, os.getpid()
        self.lock = threading.Lock()
        self.epoch = self.last_run = 0
        self.passes = 0  # passes run on the team
        self.backoff, self.resume_at, self.congested = BACKOFF_SECONDS[0], 0.0, 0  # see CONGESTED
        self.broken = None  # why the team was given up
        self.forgotten = []  # tokens of dropped plans not yet sent to the workers (see ``forget``)
        self.tokens = 0
        self.ctl_fd, self.ctl_map = _shared(_CONTROL_SLOTS * 8, "numpy_mvit2-control")
        self.ctl = memoryview(self.ctl_map).cast("q")
        self.arena_fd = None
        self._new_arena(ARENA_BYTES)
        self.sockets, self.procs, self.ready = [], [], []
        for rank in range(1, size):
            self._start_worker(rank)
        self.started = time.monotonic()

    def _start_worker(self, rank):
        """A fresh interpreter (no fork: nothing of the caller's ``__main__``), its end of a socket
        pair passed down, on one thread, told where the control block and the arena are."""
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = dict(os.environ, NUMPY_MVIT2_TEAM_FD=str(theirs.fileno()), NUMPY_MVIT2_TEAM_RANK=str(rank),
                   NUMPY_MVIT2_TEAM_SIZE=str(self.size),
                   NUMPY_MVIT2_TEAM_PATH=package_root, NUMPY_MVIT2_THREADS="1", NUMPY_MVIT2_PROCESSES="0",
                   OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        try:
            proc = subprocess.Popen(
                [sys.executable, "-c", "from numpy_mvit2.fast.team import _worker_main; _worker_main()"],
                env=env, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                start_new_session=True, cwd=package_root)
        finally:
            theirs.close()
        self.sockets.append(mine)
        self.procs.append(proc)
        self.ready.append(False)
        mine.setblocking(False)
        _send(mine, ("control", self.pid), [self.ctl_fd])
        _send(mine, ("arena", self.arena.size), [self.arena_fd])

    # ---- state

    def _new_arena(self, nbytes):
        fd, mapping = _shared(nbytes, "numpy_mvit2-arena")
        if self.arena_fd is not None:
            os.close(self.arena_fd)
        self.arena_fd, self.arena = fd, np.frombuffer(mapping, np.uint8)

    def is_ready(self) -> bool:
        """Whether every worker has said it is ready (without waiting)."""
        for i, sock in enumerate(self.sockets):
            if self.ready[i]:
                continue
            try:
                message, _ = _recv(sock)
            except BlockingIOError:
                if time.monotonic() - self.started > START_TIMEOUT:
                    self.give_up(f"a worker did not start within {START_TIMEOUT:.0f} s")
                elif self.procs[i].poll() is not None:
                    self.give_up(f"a worker exited while starting (exit status {self.procs[i].returncode})")
                return False
            if message != "ready":
                self.give_up(f"a worker could not start: {message!r}")
                return False
            self.ready[i] = True
            sock.setblocking(True)
        return True

    def wait_ready(self, timeout=START_TIMEOUT) -> bool:
        deadline = time.monotonic() + timeout
        while self.broken is None and not self.is_ready():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return self.broken is None

    def check(self):
        for proc in self.procs:
            if proc.poll() is not None:
                raise Aborted(f"a worker process exited (status {proc.returncode})")

    def give_up(self, why):
        if self.broken is None:
            self.broken = why
            warnings.warn(f"numpy_mvit2: the team of processes is off for this process ({why}); "
                          "single images now run on threads", RuntimeWarning, stacklevel=3)
        self.close()

    def close(self, wait=True):
        """Close the sockets (each worker exits when it sees its socket closed); ``wait``: until
        they have (not at interpreter exit: the workers need no waiting for, and a worker still
        importing NumPy would hold the exit up)."""
        for sock in self.sockets:
            try:
                sock.close()
            except OSError:
                pass
        for proc in self.procs if wait else ():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.sockets = []

    def _broadcast(self, message, fds=()):
        for sock in self.sockets:
            _send(sock, message, fds)

    def share(self, plan) -> int:
        """Copy ``plan``'s arrays into shared memory once, rebind the plan to those copies and
        give the workers the plan; returns its token."""
        token = plan.__dict__.get("_team_token")
        if token is not None and token[0] is self:
            return token[1]
        fields = {k: v for k, v in plan.__dict__.items() if not k.startswith("_team")}
        buffer = io.BytesIO()
        pickler = _ArraysApart(buffer, protocol=pickle.HIGHEST_PROTOCOL)
        pickler.dump(fields)
        arrays = pickler.arrays
        del pickler, fields
        layout, offset = [], 0
        for a in arrays:
            offset = -(-offset // 64) * 64
            layout.append((offset, a.shape, a.dtype.str))
            offset += a.nbytes
        fd, mapping = _shared(offset, "numpy_mvit2-weights")
        try:
            memory = np.frombuffer(mapping, np.uint8)
            views = _layout_views(memory, layout)
            for view, a in zip(views, arrays):
                view[...] = a
            self.tokens += 1
            self._broadcast(("plan", self.tokens, buffer.getvalue(), layout), [fd])
        finally:
            os.close(fd)
        plan.__dict__.update(_load_plan(buffer.getvalue(), views))  # the plan now reads the shared copies
        plan._team_token = (self, self.tokens)
        weakref.finalize(plan, self.forget, self.tokens).atexit = False  # (at exit the workers go anyway)
        return self.tokens

    def forget(self, token):
        """A shared plan was dropped (its finalizer): have the workers drop their copy, which unmaps
        its weights there. Sent at once, whatever the team's mode (stepped aside included), unless
        another thread holds the team: then that thread sends it when it lets the team go."""
        self.forgotten.append(token)
        self.send_forgotten()

    def send_forgotten(self):
        """Tell the workers about every plan dropped so far, if no other thread holds the team (the
        holder calls this again once it has let go, so no token waits for a later pass)."""
        while self.forgotten and self.lock.acquire(blocking=False):
            try:
                self._send_forgotten()
            finally:
                self.lock.release()

    def _send_forgotten(self):  # with self.lock held
        if self.broken is not None or self.pid != os.getpid():  # workers gone, or not this process's
            self.forgotten.clear()
            return
        while self.forgotten:
            token = self.forgotten.pop()
            try:
                self._broadcast(("forget", token))
            except OSError:  # a worker that has gone: the next pass finds out and gives the team up
                pass

    # ---- a pass

    def _wait_done(self):
        """Wait until the workers are done with the last pass they were sent (they may still be
        leaving one this process gave up on)."""
        ctl, last = self.ctl, self.last_run
        _Members(ctl, 0, self.check).wait_until(lambda: all(ctl[_DONE + r] >= last for r in range(1, self.size)),
                                                 abortable=False)

    def backbone(self, pixels, plan, record=None):  # [1, C, H, W] -> [1, h, w, C5] (a copy)
        """``layers.run_backbone`` on the team. The records are kept (as views of the arena) until the
        pass has succeeded, then copied and handed to ``record`` in their order: a pass that is
        given up and run again (arena grown) records nothing twice."""
        token = self.share(plan)
        self._send_forgotten()
        for _ in range(8):
            self._wait_done()
            self.epoch += 1
            rank = Rank(0, self.size, self.ctl, self.arena, self.epoch, self.check)
            kept = None if record is None else []
            keep = None if record is None else (lambda name, array: kept.append((name, array)))
            try:
                run = _run_pass(rank, plan, pixels.shape, pixels.dtype, keep, pixels)
            except ArenaFull as full:
                self._grow(full.needed)
                continue
            self._broadcast(("run", self.epoch, token, pixels.shape, pixels.dtype.str, record is not None))
            self.last_run = self.epoch
            last = self._pass(rank, run)
            if last is None:
                continue  # the arena was grown
            for name, array in kept or ():  # copies (same memory layout): the next pass reuses the arena
                record(name, np.array(array, order="K"))
            return np.array(last, order="K")
        raise Aborted("the arena kept growing")

    def _pass(self, rank, run):  # -> the last stage's output in the arena, or None when the arena was grown
        try:
            wall, cpu = time.perf_counter(), time.thread_time()
            with blas_limited():
                last = run()
            self._note_congestion(time.perf_counter() - wall, time.thread_time() - cpu, rank.members.waited)
            self.passes += 1
            return last
        except ArenaFull as full:  # the workers stopped at the same allocation
            self._grow(full.needed)
            return None
        except BaseException:  # (Aborted included: a worker that is still in the pass leaves it)
            rank.members.abort()
            raise

    def stepped_aside(self) -> bool:
        """Whether the team is backing off after a congested pass (see ``CONGESTED``)."""
        return _clock() < self.resume_at

    def _note_congestion(self, wall, cpu, waited):
        if wall > 0 and (cpu - waited) / wall < CONGESTED:
            self.congested += 1
            if self.congested >= 2:
                self.congested = 0
                self.resume_at = _clock() + self.backoff
                self.backoff = min(2 * self.backoff, BACKOFF_SECONDS[1])
        else:
            self.congested, self.backoff = 0, BACKOFF_SECONDS[0]

    def _grow(self, needed):
        self._new_arena(max(2 * self.arena.size, 2 * needed))
        self._broadcast(("arena", self.arena.size), [self.arena_fd])


class _ArraysApart(pickle.Pickler):
    """Pickles a plan's structure with each array replaced by its number in ``self.arrays``.
    (Module-level classes: a class made inside a function lives in a reference cycle until the
    garbage collector runs, and would keep the arrays, and their shared memory, alive that long.)"""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.arrays = []

    def persistent_id(self, obj):
        if isinstance(obj, np.ndarray):
            self.arrays.append(obj)
            return len(self.arrays) - 1
        return None


class _ArraysBack(pickle.Unpickler):
    def __init__(self, data, views):
        super().__init__(io.BytesIO(data))
        self.views = views

    def persistent_load(self, pid):
        return self.views[pid]


def _nbytes(shape, dtype) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def _layout_views(memory, layout):  # [(offset, shape, dtype), ...] -> arrays viewing those bytes of memory
    return [memory[o : o + _nbytes(s, d)].view(d).reshape(s) for o, s, d in layout]


def _load_plan(data, views):
    return _ArraysBack(data, views).load()


_team: Team | None = None
_team_lock = threading.Lock()


def get(size) -> Team | None:
    """This process's team of ``size`` members, started if need be; None while it starts, when it
    is off, or where it cannot run."""
    global _team
    if size < 2 or not enabled() or not available():
        return None
    with _team_lock:
        team = _team
        if team is not None and team.pid != os.getpid():  # a fork of the process that started it
            team = _team = None
        if team is not None and (team.size != size) and team.broken is None:
            team.close()
            team = _team = None
        if team is None:
            _register_hooks()
            try:
                team = _team = Team(size)
            except OSError as error:
                warnings.warn(f"numpy_mvit2: could not start a team of processes ({error}); single images run on threads",
                              RuntimeWarning, stacklevel=3)
                team = _team = _Broken(size, str(error))
    if team.broken is not None or not team.is_ready():
        return None
    return team


class _Broken:
    def __init__(self, size, why):
        self.size, self.broken, self.pid = size, why, os.getpid()

    def close(self, wait=True):
        pass


def backbone(pixels, plan: Plan, size, record=None):  # [1, C, H, W] -> [1, h, w, C5], or None
    """``layers.run_backbone`` for one image on a team of ``size`` processes; None when the team is off
    or not ready (or busy with another thread's pass): the caller then uses threads."""
    team = get(size)
    if team is None or team.stepped_aside() or not team.lock.acquire(blocking=False):
        return None
    try:
        return team.backbone(pixels, plan, record)
    except (Aborted, OSError) as error:
        team.give_up(str(error))
        return None
    finally:
        team.lock.release()
        team.send_forgotten()  # plans dropped by other threads while this one held the team


def start(size=None, timeout=START_TIMEOUT) -> bool:
    """Opt in: start this process's team now (``size``: default ``executors.threads()``) and wait
    until its workers are ready. Returns whether single images will run on the team (False where
    it cannot run, with one thread, or when ``PROCESSES = False`` / ``NUMPY_MVIT2_PROCESSES=0``)."""
    global _asked
    if _refused():
        return False
    _asked = True
    size = threads() if size is None else size
    team = get(size)
    if team is None and isinstance(_team, Team) and _team.size == size:
        _team.wait_ready(timeout)
        team = get(size)
    return team is not None


def shutdown(wait=True):
    """Stop this process's team (a later single-image pass starts a new one)."""
    global _team
    with _team_lock:
        if _team is not None and _team.pid == os.getpid():
            _team.close(wait)
        _team = None


def _forget_after_fork():
    """In a forked child: drop (without touching the workers) the team the parent started; the
    child would otherwise keep the parent's sockets open, and the workers alive after the parent.
    The child did not ask for a team of its own: ``start()`` in the parent does not carry over
    (``PROCESSES = True`` and ``NUMPY_MVIT2_PROCESSES=1`` still do)."""
    global _team, _team_lock, _asked
    if isinstance(_team, Team):
        for sock in _team.sockets:
            sock.close()
    _team, _team_lock = None, threading.Lock()  # (the lock may have been held by another thread)
    _asked = False


_hooked = False


def _register_hooks():
    """Once per process, when its first team starts (never on import): close the team's sockets
    at exit (the workers then leave; they are not waited for, so a worker still importing NumPy
    does not hold the exit up), and drop the parent's team in a forked child."""
    global _hooked
    if _hooked:
        return
    _hooked = True
    atexit.register(shutdown, wait=False)
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_forget_after_fork)


# --------------------------------------------------------------------------------------------
# A worker
# --------------------------------------------------------------------------------------------


def _worker_main():
    """A worker's life: until the socket to the process that started it closes (that process
    may exit at any moment, even before the worker is ready: then the worker leaves quietly)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's to handle
    try:
        _serve()
    except (BrokenPipeError, ConnectionResetError, EOFError):
        pass


def _serve():
    root = os.environ.get("NUMPY_MVIT2_TEAM_PATH")
    if root and root not in sys.path:
        sys.path.insert(0, root)
    worker = _Worker(socket.socket(fileno=int(os.environ["NUMPY_MVIT2_TEAM_FD"])),
                     int(os.environ["NUMPY_MVIT2_TEAM_RANK"]), int(os.environ["NUMPY_MVIT2_TEAM_SIZE"]))
    _send(worker.sock, "ready")  # (this module, and with it the fast path, is imported by now)
    while True:
        message, fds = _recv(worker.sock)
        if message is None:
            return
        getattr(worker, "on_" + message[0])(*message[1:], fds=fds)


class _Worker:
    """A worker's state between messages: the control block, the arena and the plans it was sent."""

    def __init__(self, sock, rank, size):
        self.sock, self.rank, self.size = sock, rank, size
        self.ctl = self.arena = self.parent = None
        self.plans = {}

    def check(self):  # (called while waiting long at a barrier) the process that started us is gone: leave
        if os.getppid() != self.parent:
            os._exit(0)

    def on_control(self, parent, fds):
        self.parent = parent
        self.ctl = memoryview(mmap.mmap(fds[0], _CONTROL_SLOTS * 8)).cast("q")
        os.close(fds[0])

    def on_arena(self, nbytes, fds):
        self.arena = np.frombuffer(mmap.mmap(fds[0], nbytes), np.uint8)
        os.close(fds[0])

    def on_plan(self, token, data, layout, fds):
        nbytes = max([o + _nbytes(s, d) for o, s, d in layout] + [1])
        memory = np.frombuffer(mmap.mmap(fds[0], nbytes), np.uint8)
        os.close(fds[0])
        views = _layout_views(memory, layout)
        self.plans[token] = Plan(**_load_plan(data, views))
        del memory, views  # the plan holds what it needs: "forget" then unmaps it

    def on_forget(self, token, fds):
        self.plans.pop(token, None)

    def on_run(self, epoch, token, shape, dtype, recording, fds):
        """A pass, recording (and so allocating) as rank 0 does (``recording``), keeping nothing."""
        rank = Rank(self.rank, self.size, self.ctl, self.arena, epoch, self.check)
        try:  # (the pass is not kept in a variable: a later "forget" of its plan must unmap it)
            _run_pass(rank, self.plans[token], tuple(shape), np.dtype(dtype), _ignore if recording else None)()
        except (Aborted, ArenaFull):
            pass
        except BaseException:  # noqa: BLE001 - shown on stderr; the caller gives the team up
            traceback.print_exc()
            rank.members.abort()
        finally:
            self.ctl[_DONE + self.rank] = epoch
