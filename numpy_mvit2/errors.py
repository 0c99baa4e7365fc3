"""The library's own errors, in a module every other one may import (it imports nothing of ours)."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint file or folder that cannot be loaded; the message names the file and the reason."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A file or repository that is not there (also an ``OSError``, as transformers raises for it)."""
