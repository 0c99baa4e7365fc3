"""Run hostile input in a child process whose memory and CPU time are capped, as an attacker's
file would meet a careful user: ``resource.setrlimit`` on address space and CPU seconds.

The caps are what the hostile-input bar allows (1 GiB, 10 s). CPU seconds, not wall time: a busy
machine slows the wall clock, not the CPU time a process spends. The wall-clock deadline is only a
guard against a hang (a FIFO opened for reading, a lock never released) and is generous.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from dataclasses import dataclass

MEMORY_LIMIT = 2**30  # bytes of address space
CPU_LIMIT = 10  # CPU seconds
HANG_DEADLINE = 300  # wall seconds before the child counts as hung

# One BLAS thread: each OpenBLAS thread reserves its own buffers, which count against RLIMIT_AS.
BOUNDED_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "NUMPY_MVIT2_PROCESSES": "0", "HF_HUB_OFFLINE": "1"}


LAUNCHER = (
    "import os, resource, sys; memory, cpu = int(sys.argv[1]), int(sys.argv[2]); "
    "resource.setrlimit(resource.RLIMIT_AS, (memory, memory)); "
    "resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1)); "
    "os.execv(sys.argv[3], sys.argv[3:])"
)


@dataclass
class Bounded:
    returncode: int
    stdout: str
    stderr: str
    max_rss: int  # bytes, the child's peak resident memory

    @property
    def signalled(self) -> bool:
        return self.returncode < 0


def run_bounded(args: list[str], *, memory: int = MEMORY_LIMIT, cpu: int = CPU_LIMIT, env: dict | None = None,
                cwd=None, deadline: float = HANG_DEADLINE, stdin=subprocess.DEVNULL) -> Bounded:
    """``[sys.executable, *args]`` under the caps; raises ``AssertionError`` if it is still
    running after ``deadline`` wall seconds (then it is killed)."""

    environment = {**os.environ, **BOUNDED_ENV, **(env or {})}
    environment.pop("NUMPY_MVIT2_DEBUG", None)
    # A small launcher sets the limits and execs the real command (limits survive exec): no
    # preexec_fn, which is unsafe in a test process that has threads.
    command = [sys.executable, "-c", LAUNCHER, str(memory), str(cpu), sys.executable, *args]
    process = subprocess.Popen(command, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=environment, cwd=cwd)
    outputs: dict[str, bytes] = {}
    readers = [threading.Thread(target=lambda name=name, f=f: outputs.__setitem__(name, f.read()))
               for name, f in (("out", process.stdout), ("err", process.stderr))]
    for r in readers:
        r.start()
    hung = threading.Event()
    guard = threading.Timer(deadline, lambda: (hung.set(), process.kill()))
    guard.start()
    try:
        # wait4, not Popen.wait: it hands back this child's own resource usage (its peak memory).
        _, status, usage = os.wait4(process.pid, 0)
    finally:
        guard.cancel()
    process.returncode = os.waitstatus_to_exitcode(status)
    for r in readers:
        r.join()
    process.stdout.close()
    process.stderr.close()
    if hung.is_set():
        raise AssertionError(f"{args!r} still running after {deadline} s: a hang")
    return Bounded(process.returncode, outputs["out"].decode("utf-8", "replace"),
                   outputs["err"].decode("utf-8", "replace"), usage.ru_maxrss * 1024)


def run_python_bounded(code: str, **kwargs) -> Bounded:
    """``python -c code`` under the caps (see ``run_bounded``)."""
    return run_bounded(["-c", code], **kwargs)
