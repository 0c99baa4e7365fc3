"""The library's own errors, in a module every other one may import (it imports nothing of ours)."""

from __future__ import annotations

import math
import numbers
import reprlib


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


# how a bad value is shown in an error message: short, whatever its size
_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = _repr.maxlong = 60
_repr.maxlist = _repr.maxtuple = _repr.maxdict = 6
_repr.maxlevel = 3


def show(value) -> str:
    """A short ``repr`` of ``value`` for an error message (a long string, list or dict is cut)."""
    try:
        return _repr.repr(value)
    except (ValueError, RecursionError):  # an int too long to print, a structure that contains itself
        return f"<{type(value).__name__}>"


def is_finite_number(value) -> bool:
    """A Python or NumPy int or float that is neither infinite nor NaN (``bool`` excluded), and
    that a float can hold (an int of 400 digits cannot)."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):  # (NumPy's bool_ is no numbers.Real)
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False
