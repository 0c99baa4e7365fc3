"""Shared test set-up.

PyTorch and transformers are the reference the tests compare against. Outside CI a test module
that needs them is skipped when they are missing; in CI (``CI`` set) a missing reference is an
error, so the cross-checks can never silently stop running.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/reference.py


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
def team_of_processes():
    """Start the team of processes that runs single images (``numpy_mvit2.team``) before the
    tests, as a long-running program would have it, so that the batch-1 tests (the parity tests
    against transformers included) run on it rather than on the threads that stand in while it
    starts. ``tests/test_team.py`` tests the team itself; ``tests/test_fast.py`` the threads."""
    from numpy_mvit2 import team

    team.start()
    yield
    team.shutdown()
