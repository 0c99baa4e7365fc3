"""Shared test set-up.

PyTorch and transformers are the reference the tests compare against. Outside CI a test module
that needs them is skipped when they are missing; in CI (``CI`` set) a missing reference is an
error, so the cross-checks can never silently stop running.

Two ways to run the suite (README, "Set up and test"): everything (``python -m pytest``, what CI
runs), or the quick inner loop, ``python -m pytest -m "not slow"``, which still covers every module
of ``numpy_mvit2`` (one parity configuration per head, the kernels, loading, the command line's
basics). ``quick`` below marks the cases of a parametrized test beyond those the inner loop needs.
Either way the ten slowest tests are listed at the end (``--durations``), so that a test that
grows slow is seen.

No test asserts a time, and a test that waits for another process waits on an event or polls
with a generous deadline: the suite must pass on a machine whose cores other programs hold.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/reference.py


SLOWEST = 10
"""How many of the slowest tests the summary lists (``--durations``), unless asked otherwise."""


QUICK = False
"""True when the run leaves the slow tests out (``-m "not slow"``): the property-based fuzz tests
then draw a quarter of their examples (``fuzz_examples``). The full suite, which CI runs, draws
them all."""


def pytest_configure(config):
    global QUICK
    if getattr(config.option, "durations", None) is None:
        config.option.durations = SLOWEST
    QUICK = "not slow" in (getattr(config.option, "markexpr", "") or "")


def fuzz_examples(n: int) -> int:
    """How many examples a hypothesis test draws: ``n``, or a quarter of it in the quick subset."""
    return max(10, n // 4) if QUICK else n


def quick(cases, *indices):
    """Parameters for ``pytest.mark.parametrize``: the cases at ``indices`` run in the quick subset,
    the others are marked slow (``-m "not slow"`` leaves them out; the full suite runs them all).
    A case is a tuple of values, one per parameter name, or a single value that is not a tuple."""
    return [case if i in indices else pytest.param(*(case if isinstance(case, tuple) else (case,)),
                                                   marks=pytest.mark.slow)
            for i, case in enumerate(cases)]


def require(module_name: str):
    """Import a reference library; fail in CI, skip elsewhere, when it is missing."""
    try:
        return importlib.import_module(module_name)
    except ImportError as e:
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            raise ImportError(f"{module_name} is required in CI for the cross-checks: {e}") from e
        pytest.skip(f"{module_name} is not installed ({e}); install the test extra: pip install -e '.[test]'",
                    allow_module_level=True)


# The checks against the real Apple checkpoints (tests/test_pretrained.py) need files this machine
# cannot download: they are collected only when one of their environment variables names them.
PRETRAINED_VARIABLES = ("NUMPY_MVIT2_IMAGENET_CHECKPOINT", "NUMPY_MVIT2_VOC_CHECKPOINT")
collect_ignore = [] if any(os.environ.get(v) for v in PRETRAINED_VARIABLES) else ["test_pretrained.py"]


def pytest_report_header(config):
    if collect_ignore:
        return "pretrained-checkpoint checks: not collected (opt-in: set NUMPY_MVIT2_IMAGENET_CHECKPOINT or NUMPY_MVIT2_VOC_CHECKPOINT, and NUMPY_MVIT2_COCO_CATS)"
    return "pretrained-checkpoint checks: collected"


@pytest.fixture(scope="session", autouse=True)
def reference_on_one_thread():
    """PyTorch, where the collected tests imported it, computes the references on one thread. Its
    intra-op threads wait for each other by spinning, and when other programs hold the cores they
    spin against them: on the 2-core machine with a load average of about 4 (other programs), the
    quick tests of test_parity, test_attentions and test_ops took 85 s wall (68 s CPU) with torch's
    default 2 threads and 33 s (23 s CPU) with one (2026-12-01). The references are compared within
    float32 round-off, which the thread count does not change."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session", autouse=True)
def team_of_processes():
    """Start the team of processes that runs single images (``numpy_mvit2.team``) before the
    tests, as a long-running program would have it, so that the batch-1 tests (the parity tests
    against transformers included) run on it rather than on the threads that stand in while it
    starts. ``tests/test_team.py`` tests the team itself; ``tests/test_fast.py`` the threads."""
    from numpy_mvit2 import team

    team.start()
    yield
    team.shutdown()
