"""The team of processes that shares a single image's forward pass (``numpy_mvit2.team``).

The team must give one thread's numbers (to round-off: OpenBLAS picks its kernels by matrix
shape, and a part's matrices are smaller; at 256x256 the bits are the same) and so the reference
path's, grow its shared arena when an input needs more, survive errors on either side,
fall back to threads when a worker dies, unmap the weights of models that are gone, and leave no
process behind when the caller exits."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from numpy_mvit2 import (
    MobileViTV2Config,
    MobileViTV2ForImageClassification,
    MobileViTV2ForSemanticSegmentation,
    MobileViTV2Model,
    team,
)
from numpy_mvit2 import fast as fast_path

pytestmark = pytest.mark.skipif(not team.available(), reason="a team of processes needs Linux x86-64 (memfd, fd passing)")

ROOT = Path(__file__).resolve().parents[1]


def pixels(batch, height, width, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).uniform(-1.5, 1.5, size=(batch, 3, height, width)).astype(dtype)


def relative_error(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    return float(np.abs(a - b).max() / (1 + np.abs(b).max()))


@pytest.fixture
def members(monkeypatch):
    """A fresh, started team of 2 (torn down afterwards, so that other tests start their own)."""
    monkeypatch.setattr(fast_path, "THREADS", 2)
    monkeypatch.setattr(team, "PROCESSES", True)
    team.shutdown()
    assert team.start(2)
    yield team._team
    restart()


def restart():
    """Leave a fresh team of the default size for the tests that follow (see conftest.py)."""
    team.shutdown()
    team.start()


def outputs(model, x, **kwargs):
    out = model(x, output_hidden_states=True, output_attentions=True, **kwargs)
    return [a for field in out.to_tuple() for a in (field if isinstance(field, tuple) else (field,))]


def on_one_thread(model, x, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(fast_path, "THREADS", 1)
        return outputs(model, x)


CASES = [  # head, width multiplier, extra config, height, width, dtype
    (MobileViTV2ForImageClassification, 0.5, {}, 64, 64, np.float32),
    (MobileViTV2ForSemanticSegmentation, 0.75, {"output_stride": 16}, 33, 47, np.float32),  # borders no patch covers
    (MobileViTV2Model, 1.0, {"output_stride": 8}, 70, 54, np.float32),  # dilated stages 4 and 5
    (MobileViTV2ForImageClassification, 0.5, {"patch_remainder": "resize"}, 45, 61, np.float32),
    (MobileViTV2ForSemanticSegmentation, 0.5, {}, 48, 40, np.float64),
]


@pytest.mark.parametrize("head, width, extra, height, size_w, dtype", CASES)
def test_the_team_gives_the_numbers_of_one_thread(members, monkeypatch, head, width, extra, height, size_w, dtype):
    """The logits, hidden states and attention scores of one thread, and of the reference path,
    to round-off."""
    model = head(MobileViTV2Config(width_multiplier=width, **extra), seed=3, dtype=dtype)
    x = pixels(1, height, size_w, dtype=dtype)
    before = members.passes
    got = outputs(model, x)
    assert members.passes == before + 1, "the pass did not run on the team"
    expected = on_one_thread(model, x, monkeypatch)
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert a.dtype == b.dtype and relative_error(a, b) <= (1e-5 if dtype == np.float32 else 1e-13)
    model.fast = False
    reference = outputs(model, x)
    bar = 2e-5 if dtype == np.float32 else 1e-10
    for a, b in zip(got, reference):
        assert relative_error(a, b) <= bar


def test_results_outlive_the_next_pass(members):
    """What a pass returns is copied out of the shared arena, which the next pass overwrites."""
    model = MobileViTV2ForSemanticSegmentation(MobileViTV2Config(width_multiplier=0.5), seed=1)
    first = model(pixels(1, 64, 64, seed=1), output_hidden_states=True)
    kept = [first.logits.copy()] + [h.copy() for h in first.hidden_states]
    model(pixels(1, 64, 64, seed=2), output_hidden_states=True)
    assert all(np.array_equal(a, b) for a, b in zip([first.logits, *first.hidden_states], kept))


def test_the_arena_grows_for_large_inputs(monkeypatch):
    monkeypatch.setattr(fast_path, "THREADS", 2)
    monkeypatch.setattr(team, "PROCESSES", True)
    monkeypatch.setattr(team, "ARENA_BYTES", 1 << 16)
    team.shutdown()
    try:
        assert team.start(2)
        model = MobileViTV2ForImageClassification(MobileViTV2Config(width_multiplier=0.5), seed=2)
        x = pixels(1, 96, 128)
        got = model(x).logits
        assert team._team.passes == 1 and team._team.arena.size > 1 << 16
        monkeypatch.setattr(fast_path, "THREADS", 1)
        assert relative_error(got, model(x).logits) <= 1e-5
    finally:
        monkeypatch.undo()
        restart()


def test_an_error_here_stops_the_workers_and_the_team_goes_on(members, monkeypatch):
    """An exception in this process during a pass reaches the caller; the workers leave the pass
    and the next one runs on the team as usual."""
    model = MobileViTV2ForImageClassification(MobileViTV2Config(width_multiplier=0.5), seed=4)
    x = pixels(1, 64, 64)
    expected = model(x).logits
    real = fast_path.separable_attention
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(fast_path, "separable_attention", failing)
    with pytest.raises(RuntimeError, match="boom"):
        model(x)
    monkeypatch.setattr(fast_path, "separable_attention", real)
    passes = members.passes
    assert np.array_equal(model(x).logits, expected)
    assert members.passes == passes + 1 and members.broken is None


def test_a_dead_worker_turns_the_team_off_with_a_warning(members, monkeypatch):
    model = MobileViTV2ForImageClassification(MobileViTV2Config(width_multiplier=0.5), seed=5)
    x = pixels(1, 64, 64)
    expected = model(x).logits
    os.kill(members.procs[0].pid, signal.SIGKILL)
    members.procs[0].wait(timeout=10)
    with pytest.warns(RuntimeWarning, match="team of processes is off"):
        got = model(x).logits
    assert np.array_equal(got, expected)
    assert members.broken is not None
    assert np.array_equal(model(x).logits, expected)  # on threads from now on, without a warning


def test_concurrent_callers_share_one_team(members):
    """Two user threads at once: one pass at a time runs on the team, the other on threads."""
    model = MobileViTV2ForImageClassification(MobileViTV2Config(width_multiplier=0.5), seed=9)
    inputs = [pixels(1, 64, 80, seed=s) for s in range(4)]
    expected = [model(x).logits for x in inputs]
    results, errors = {}, []

    def run(i):
        try:
            for _ in range(3):
                results[i] = model(inputs[i]).logits
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(len(inputs))]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert not errors and not any(w.is_alive() for w in workers)
    for i, e in enumerate(expected):
        assert np.array_equal(results[i], e)


def test_weights_of_dropped_models_are_unmapped_in_the_workers(members):
    def mapped():
        with open(f"/proc/{members.procs[0].pid}/maps") as f:
            return sum("numpy_mvit2-weights" in line for line in f)

    x = pixels(1, 64, 64)
    first = MobileViTV2ForImageClassification(MobileViTV2Config(width_multiplier=0.5), seed=6)
    second = MobileViTV2ForImageClassification(MobileViTV2Config(width_multiplier=0.5), seed=7)
    first(x)
    second(x)
    assert mapped() == 2
    del first
    gc.collect()
    second(x)  # the next pass tells the workers
    deadline = time.monotonic() + 10
    while mapped() != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert mapped() == 1


def test_a_forked_child_runs_without_its_parents_team(members):
    """A child made by fork() does not touch the parent's workers (it starts its own team, and
    runs on threads meanwhile); the parent's team goes on."""
    model = MobileViTV2ForImageClassification(MobileViTV2Config(width_multiplier=0.5), seed=10)
    x = pixels(1, 64, 64)
    expected = model(x).logits
    passes = members.passes
    pid = os.fork()
    if pid == 0:  # the child: exit status 0 when all is well; it never returns to pytest
        status = 1
        try:
            status = 0 if team._team is None and relative_error(model(x).logits, expected) <= 1e-5 else 2
        except BaseException:  # noqa: BLE001 - reported through the exit status
            status = 3
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert np.array_equal(model(x).logits, expected) and members.passes == passes + 1


def test_a_congested_team_steps_aside_for_a_while(members, monkeypatch):
    """Two congested passes in a row (here: every pass counts as congested) send single images to
    threads for the back-off time; then the team is tried again."""
    monkeypatch.setattr(team, "CONGESTED", 2.0)  # no pass spends twice its wall time computing
    monkeypatch.setattr(team, "BACKOFF_SECONDS", (0.5, 1.0))
    members.backoff = 0.5  # (the team took its first back-off when it started)
    model = MobileViTV2ForImageClassification(MobileViTV2Config(width_multiplier=0.5), seed=11)
    x = pixels(1, 64, 64)
    model(x)
    model(x)
    assert members.passes == 2 and members.stepped_aside()
    expected = model(x).logits  # on threads
    assert members.passes == 2
    time.sleep(0.6)
    assert not members.stepped_aside()
    assert relative_error(model(x).logits, expected) <= 1e-5
    assert members.passes == 3


def test_switched_off(monkeypatch):
    team.shutdown()
    monkeypatch.setattr(fast_path, "THREADS", 2)
    monkeypatch.setattr(team, "PROCESSES", None)
    monkeypatch.setenv("NUMPY_MVIT2_PROCESSES", "0")
    assert not team.start(2)
    assert team._team is None
    model = MobileViTV2ForImageClassification(MobileViTV2Config(width_multiplier=0.5), seed=8)
    model(pixels(1, 64, 64))
    assert team._team is None
    monkeypatch.undo()
    restart()


@pytest.mark.parametrize("ending", ["return", "os._exit"])
def test_workers_leave_with_the_caller(ending):
    """The workers exit when the process that started them does, even without its atexit hooks."""
    script = textwrap.dedent(f"""
        import os, sys
        import numpy as np
        from numpy_mvit2 import MobileViTV2Config, MobileViTV2ForImageClassification, fast, team
        fast.THREADS = 2
        assert team.start(2)
        model = MobileViTV2ForImageClassification(MobileViTV2Config(width_multiplier=0.5))
        model(np.zeros((1, 3, 64, 64), np.float32))
        print(" ".join(str(p.pid) for p in team._team.procs), flush=True)
        if {ending!r} == "os._exit":
            os._exit(0)
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    pids = [int(p) for p in done.stdout.split()]
    assert pids
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() and _alive(p) for p in pids):
        time.sleep(0.05)
    assert not any(Path(f"/proc/{p}").exists() and _alive(p) for p in pids)


def _alive(pid) -> bool:  # not a zombie (an exited child its parent has not reaped yet)
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
