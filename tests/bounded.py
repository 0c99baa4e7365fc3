"""Run hostile input in a child process whose memory and CPU time are capped, as an attacker's
file would meet a careful user: ``resource.setrlimit`` on address space and CPU seconds.

The caps are what the hostile-input bar allows (1 GiB, 10 s). CPU seconds, not wall time: a busy
machine slows the wall clock, not the CPU time a process spends. The wall-clock deadline is only a
guard against a hang (a FIFO opened for reading, a lock never released) and is generous.
"""

from __future__ import annotations

import os
import signal
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


# A small launcher sets the limits and runs the real command as its own child (limits are
# inherited). Not preexec_fn, which is unsafe in a test process that has threads; and not a plain
# exec, because Linux carries a process's peak resident size across fork and exec: a child forked
# from pytest (hundreds of MB once torch is loaded) would report pytest's peak as its own. The
# grandchild is forked from the small launcher, and the launcher reports its peak (wait4) on its
# last stderr line, then exits as it did (the same code, or the same signal).
LAUNCHER = """\
import os, resource, signal, sys
memory, cpu = int(sys.argv[1]), int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[3], sys.argv[3:])
_, status, usage = os.wait4(pid, 0)
sys.stderr.write(f"\\n{MARK}{usage.ru_maxrss * 1024}\\n")
sys.stderr.flush()
code = os.waitstatus_to_exitcode(status)
if code < 0:
    signal.signal(-code, signal.SIG_DFL)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.kill(os.getpid(), -code)
sys.exit(code)
"""
MARK = "bounded.max_rss="
LAUNCHER = LAUNCHER.replace("{MARK}", MARK)


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
    command = [sys.executable, "-c", LAUNCHER, str(memory), str(cpu), sys.executable, *args]
    process = subprocess.Popen(command, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=environment, cwd=cwd, start_new_session=True)
    outputs: dict[str, bytes] = {}
    readers = [threading.Thread(target=lambda name=name, f=f: outputs.__setitem__(name, f.read()))
               for name, f in (("out", process.stdout), ("err", process.stderr))]
    for r in readers:
        r.start()
    hung = threading.Event()
    guard = threading.Timer(deadline, lambda: (hung.set(), os.killpg(process.pid, signal.SIGKILL)))
    guard.start()
    try:
        process.wait()
    finally:
        guard.cancel()
    for r in readers:
        r.join()
    process.stdout.close()
    process.stderr.close()
    if hung.is_set():
        raise AssertionError(f"{args!r} still running after {deadline} s: a hang")
    stderr, mark, peak = outputs["err"].decode("utf-8", "replace").rpartition("\n" + MARK)
    if not mark:  # the launcher itself was killed (by the hang guard, or out of memory)
        stderr, peak = peak, "0"
    return Bounded(process.returncode, outputs["out"].decode("utf-8", "replace"), stderr, int(peak.strip() or 0))


def run_python_bounded(code: str, **kwargs) -> Bounded:
    """``python -c code`` under the caps (see ``run_bounded``)."""
    return run_bounded(["-c", code], **kwargs)


def signal_and_wait(process: subprocess.Popen, signum: int, timeout: float = 300) -> str:
    """Send ``signum`` to a running child, wait for it (generously: a busy machine), and return its
    stderr; a child still running after ``timeout`` is killed, so no test leaves one behind."""
    try:
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return stderr.decode()
