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
from conftest import quick

from numpy_mvit2 import (
    MobileViTV2Config,
    MobileViTV2ForImageClassification,
    MobileViTV2ForSemanticSegmentation,
    MobileViTV2Model,
    team,
)
from numpy_mvit2.fast import executors, layers

pytestmark = pytest.mark.skipif(not team.available(), reason="a team of processes needs Linux x86-64 (memfd, fd passing)")

ROOT = Path(__file__).resolve().parents[1]


def pixels(batch, height, width, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).uniform(-1.5, 1.5, size=(batch, 3, height, width)).astype(dtype)


def relative_error(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    return float(np.abs(a - b).max() / (1 + np.abs(b).max()))


WAIT_SECONDS = 120
"""How long a test waits for a worker to act on a message: generous, for a machine whose cores
other programs hold (the wait ends as soon as the worker has acted)."""


@pytest.fixture
def members(monkeypatch):
    """A fresh, started team of 2 (torn down afterwards, so that other tests start their own).
    No pass counts as congested, so the team never steps aside on a busy machine: these tests
    check the team's passes, not the machine's load (the back-off has its own test)."""
    monkeypatch.setattr(executors, "THREADS", 2)
    monkeypatch.setattr(team, "PROCESSES", True)
    monkeypatch.setattr(team, "CONGESTED", float("-inf"))
    team.shutdown()
    assert team.start(2, timeout=WAIT_SECONDS)
    yield team._team
    restart()


def wait_until(condition, what, seconds=WAIT_SECONDS):
    """Poll ``condition()`` until it holds; fail after a generous deadline (not a sleep tuned to an
    idle machine: it returns as soon as the other process has acted)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {seconds} s")
        time.sleep(0.01)


def restart():
    """Leave a fresh team of the default size for the tests that follow (see conftest.py)."""
    team.shutdown()
    team.start(timeout=WAIT_SECONDS)


def outputs(model, x, **kwargs):
    out = model(x, output_hidden_states=True, output_attentions=True, **kwargs)
    return [a for field in out.to_tuple() for a in (field if isinstance(field, tuple) else (field,))]


def on_one_thread(model, x, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(executors, "THREADS", 1)
        return outputs(model, x)


CASES = [  # head, width multiplier, extra config, height, width, dtype
    (MobileViTV2ForImageClassification, 0.5, {}, 64, 64, np.float32),
    (MobileViTV2ForSemanticSegmentation, 0.75, {"output_stride": 16}, 33, 47, np.float32),  # borders no patch covers
    (MobileViTV2Model, 1.0, {"output_stride": 8}, 70, 54, np.float32),  # dilated stages 4 and 5
    (MobileViTV2ForImageClassification, 0.5, {"patch_remainder": "resize"}, 45, 61, np.float32),
    (MobileViTV2ForSemanticSegmentation, 0.5, {}, 48, 40, np.float64),
]


@pytest.mark.parametrize("head, width, extra, height, size_w, dtype", quick(CASES, 0, 3))
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
    monkeypatch.setattr(executors, "THREADS", 2)
    monkeypatch.setattr(team, "PROCESSES", True)
    monkeypatch.setattr(team, "ARENA_BYTES", 1 << 16)
    team.shutdown()
    try:
        assert team.start(2, timeout=WAIT_SECONDS)
        model = MobileViTV2ForImageClassification(MobileViTV2Config(width_multiplier=0.5), seed=2)
        x = pixels(1, 96, 128)
        got = model(x).logits
        assert team._team.passes == 1 and team._team.arena.size > 1 << 16
        monkeypatch.setattr(executors, "THREADS", 1)
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
    real = layers.separable_attention
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return real(*args, **kwargs)

    monkeypatch.setattr(layers, "separable_attention", failing)
    with pytest.raises(RuntimeError, match="boom"):
        model(x)
    monkeypatch.setattr(layers, "separable_attention", real)
    passes = members.passes
    assert np.array_equal(model(x).logits, expected)
    assert members.passes == passes + 1 and members.broken is None


def test_a_dead_worker_turns_the_team_off_with_a_warning(members, monkeypatch):
    model = MobileViTV2ForImageClassification(MobileViTV2Config(width_multiplier=0.5), seed=5)
    x = pixels(1, 64, 64)
    expected = model(x).logits
    os.kill(members.procs[0].pid, signal.SIGKILL)
    members.procs[0].wait(timeout=WAIT_SECONDS)
    with pytest.warns(RuntimeWarning, match="team of processes is off"):
        got = model(x).logits
    # expected ran on the team, got on threads: equal to round-off (a part's matrices differ in
    # shape, and OpenBLAS picks its kernels by shape: the bits agree on some CPUs, not on all)
    assert relative_error(got, expected) <= 1e-5
    assert members.broken is not None
    assert np.array_equal(model(x).logits, got)  # on threads from now on, without a warning


@pytest.mark.slow
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
        w.join(timeout=5 * WAIT_SECONDS)
    assert not errors and not any(w.is_alive() for w in workers)
    for i, e in enumerate(expected):  # on the team or on threads: round-off apart (see above)
        assert relative_error(results[i], e) <= 1e-5


def weights_mapped(member) -> int:
    """How many plans' shared weights the worker process ``member`` has mapped."""
    with open(f"/proc/{member.pid}/maps") as f:
        return sum("numpy_mvit2-weights" in line for line in f)


def two_models_on_the_team(members):
    """Two models, each run once on the team, so that each worker maps the weights of both."""
    x = pixels(1, 64, 64)
    models = [MobileViTV2ForImageClassification(MobileViTV2Config(width_multiplier=0.5), seed=s) for s in (6, 7)]
    before = members.passes
    for model in models:
        model(x)
    assert members.passes == before + 2, "the passes did not run on the team"
    assert [weights_mapped(p) for p in members.procs] == [2]
    return models, x


@pytest.mark.parametrize("mode", ["running", "stepped aside", "busy"])
def test_weights_of_dropped_models_are_unmapped_in_the_workers(members, monkeypatch, mode):
    """A dropped model's weights are unmapped in the workers whatever the team is doing: running
    passes, stepped aside for threads (no pass goes to the workers; here forced, not left to the
    machine's load), or busy with another thread's pass (the message waits for that pass to end)."""
    (first, second), x = two_models_on_the_team(members)
    worker = members.procs[0]
    if mode == "stepped aside":
        monkeypatch.setattr(members, "resume_at", float("inf"))
        assert members.stepped_aside()
        del first
        gc.collect()
        wait_until(lambda: weights_mapped(worker) == 1, "the dropped model's weights unmapped")
        passes = members.passes
        second(x)
        assert members.passes == passes, "a pass ran on a team that had stepped aside"
    elif mode == "busy":  # another thread's pass holds the team (paused in its first attention) while the model is dropped
        inside, go_on = threading.Event(), threading.Event()
        real = layers.separable_attention

        def paused(*args, **kwargs):
            if threading.current_thread() is busy and not go_on.is_set():
                inside.set()
                assert go_on.wait(WAIT_SECONDS)
            return real(*args, **kwargs)

        monkeypatch.setattr(layers, "separable_attention", paused)
        busy = threading.Thread(target=second, args=(x,))
        busy.start()
        try:
            assert inside.wait(WAIT_SECONDS) and members.lock.locked()
            token = first._plan._team_token[1]
            del first
            gc.collect()
            assert members.forgotten == [token]  # kept for the thread that holds the team
            assert weights_mapped(worker) == 2
        finally:
            go_on.set()
            busy.join(WAIT_SECONDS)
        assert not busy.is_alive() and members.passes == 3
    else:
        del first
        gc.collect()
    wait_until(lambda: weights_mapped(worker) == 1, "the dropped model's weights unmapped")
    assert not members.forgotten
    del second  # the last model the workers ran: nothing of its pass keeps it mapped there
    gc.collect()
    wait_until(lambda: weights_mapped(worker) == 0, "the last model's weights unmapped")


def test_weights_are_unmapped_after_a_restart(members):
    """After the team is stopped and started again, a model shared with both teams is dropped
    without error, and the new workers unmap its weights (the old ones have exited)."""
    x = pixels(1, 64, 64)
    model = MobileViTV2ForImageClassification(MobileViTV2Config(width_multiplier=0.5), seed=6)
    model(x)
    assert members.passes == 1
    team.shutdown()
    assert all(p.poll() is not None for p in members.procs)
    assert team.start(2, timeout=WAIT_SECONDS)
    renewed = team._team
    (first, kept), _ = two_models_on_the_team(renewed)
    model(x)
    assert [weights_mapped(p) for p in renewed.procs] == [3]
    del model, first
    gc.collect()
    wait_until(lambda: weights_mapped(renewed.procs[0]) == 1, "the dropped models' weights unmapped")
    assert kept._plan._team_token[0] is renewed  # (the one left mapped)
    assert members.forgotten == [] and renewed.forgotten == []


@pytest.mark.slow
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
    threads for the back-off time, which doubles while the team stays congested; then the team is
    tried again. The back-off's clock is one the test moves: nothing depends on how long a pass
    takes on this machine."""
    now = [1000.0]
    monkeypatch.setattr(team, "_clock", lambda: now[0])
    monkeypatch.setattr(team, "CONGESTED", 2.0)  # no pass spends twice its wall time computing
    monkeypatch.setattr(team, "BACKOFF_SECONDS", (0.5, 1.0))
    members.backoff = 0.5  # (the team took its first back-off when it started)
    model = MobileViTV2ForImageClassification(MobileViTV2Config(width_multiplier=0.5), seed=11)
    x = pixels(1, 64, 64)
    model(x)
    assert members.passes == 1 and not members.stepped_aside()
    model(x)
    assert members.passes == 2 and members.stepped_aside() and members.resume_at == 1000.5
    expected = model(x).logits  # on threads
    assert members.passes == 2
    now[0] += 0.49
    model(x)
    assert members.passes == 2 and members.stepped_aside()
    now[0] += 0.02
    assert not members.stepped_aside()
    assert relative_error(model(x).logits, expected) <= 1e-5
    model(x)
    assert members.passes == 4 and members.stepped_aside() and members.resume_at == now[0] + 1.0  # doubled
    monkeypatch.setattr(team, "CONGESTED", float("-inf"))  # an uncongested pass resets the back-off
    now[0] += 1.0
    model(x)
    assert members.passes == 5 and members.backoff == 0.5 and members.congested == 0


def test_switched_off(monkeypatch):
    team.shutdown()
    monkeypatch.setattr(executors, "THREADS", 2)
    monkeypatch.setattr(team, "PROCESSES", None)
    monkeypatch.setenv("NUMPY_MVIT2_PROCESSES", "0")
    assert not team.start(2)
    assert team._team is None
    model = MobileViTV2ForImageClassification(MobileViTV2Config(width_multiplier=0.5), seed=8)
    model(pixels(1, 64, 64))
    assert team._team is None
    monkeypatch.undo()
    restart()


@pytest.mark.parametrize("ending", quick(["return", "os._exit"], 1))
def test_workers_leave_with_the_caller(ending):
    """The workers exit when the process that started them does, even without its atexit hooks."""
    script = textwrap.dedent(f"""
        import os, sys
        import numpy as np
        from numpy_mvit2 import MobileViTV2Config, MobileViTV2ForImageClassification, team
        from numpy_mvit2.fast import executors
        executors.THREADS = 2
        assert team.start(2, timeout=600)
        model = MobileViTV2ForImageClassification(MobileViTV2Config(width_multiplier=0.5))
        model(np.zeros((1, 3, 64, 64), np.float32))
        print(" ".join(str(p.pid) for p in team._team.procs), flush=True)
        if {ending!r} == "os._exit":
            os._exit(0)
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          timeout=5 * WAIT_SECONDS, check=False)
    assert done.returncode == 0, done.stderr
    pids = [int(p) for p in done.stdout.split()]
    assert pids
    wait_until(lambda: not any(_alive(p) for p in pids), "the workers gone")


def test_the_environment_variable_starts_the_team_and_it_gives_the_threads_numbers():
    """With ``NUMPY_MVIT2_PROCESSES=1`` (and no ``start()``), the first single-image pass starts the
    team (its workers are this process's children) and, once it is ready, passes run on it and
    give the numbers of threads; the workers leave with the process."""
    script = textwrap.dedent("""
        import glob, time
        import numpy as np
        from numpy_mvit2 import MobileViTV2Config, MobileViTV2ForImageClassification, team
        from numpy_mvit2.fast import executors
        executors.THREADS = 2
        team.CONGESTED = float("-inf")  # (a busy machine would make the team step aside)
        model = MobileViTV2ForImageClassification(MobileViTV2Config(width_multiplier=0.5, num_labels=3), seed=2)
        x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 64, 64)).astype(np.float32)
        assert team._team is None
        model(x)  # starts the team; runs on threads while it starts
        deadline = time.monotonic() + 300
        while not team._team.is_ready():
            assert team._team.broken is None and time.monotonic() < deadline
            time.sleep(0.02)
        on_team = model(x).logits
        assert team._team.passes == 1
        children = {int(p) for f in glob.glob("/proc/self/task/*/children") for p in open(f).read().split()}
        assert {p.pid for p in team._team.procs} <= children and children
        team.PROCESSES = False
        on_threads = model(x).logits
        print(float(np.abs(on_team - on_threads).max() / (1 + np.abs(on_threads).max())))
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMPY_MVIT2_")}
    env.update(NUMPY_MVIT2_PROCESSES="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          timeout=5 * WAIT_SECONDS, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert float(done.stdout.split()[-1]) <= 1e-5


def test_off_unless_asked(monkeypatch):
    """Without ``start()``, ``PROCESSES`` or the environment variable, single images run on threads."""
    monkeypatch.setattr(team, "PROCESSES", None)
    monkeypatch.setattr(team, "_asked", False)
    monkeypatch.delenv("NUMPY_MVIT2_PROCESSES", raising=False)
    assert not team.enabled()
    team.shutdown()
    try:
        monkeypatch.setattr(executors, "THREADS", 2)
        model = MobileViTV2ForImageClassification(MobileViTV2Config(width_multiplier=0.5), seed=8)
        model(pixels(1, 64, 64))
        assert team._team is None
    finally:
        monkeypatch.undo()
        restart()


def _alive(pid) -> bool:  # exists, and not a zombie (an exited child its parent has not reaped yet)
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
