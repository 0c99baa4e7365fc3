"""The library's own errors, in a module every other one may import (it imports nothing of ours)."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint file or folder that cannot be loaded; the message names the file and the reason."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A file or repository that is not there (also an ``OSError``, as transformers raises for it)."""


class ConfigError(ValueError):
    """A model or image-processor configuration we cannot build from (a ``config.json``, a
    ``preprocessor_config.json``, or keyword arguments): the message names the field, the value
    given and what is allowed, and the file when it was read from one. ``error.field`` is the
    field's name (``"parameter_count"`` for a model too large as a whole), or None."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


# How much of a name taken from a file an error message shows: a tensor, record or global name is
# whatever the file says, megabytes of it if the file wants, and a message holds only its start.
MAX_SHOWN = 200


def cut(text: str, limit: int = MAX_SHOWN) -> str:
    """``text`` as it is if short, else its first ``limit`` characters and how long it was."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def shown(name, limit: int = MAX_SHOWN) -> str:
    """``repr(name)`` for an error message, cut as ``cut`` cuts (a long name costs no more than its first ``limit`` characters)."""
    if isinstance(name, (str, bytes)) and len(name) > limit:
        return f"{name[:limit]!r}... ({len(name):,} characters)"
    return repr(name)
