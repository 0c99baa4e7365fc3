"""MobileViTV2 in plain NumPy, reproducing transformers' ``MobileViTV2*`` models.

    >>> from numpy_mvit2 import MobileViTV2ForImageClassification
    >>> model = MobileViTV2ForImageClassification.from_pretrained("path/to/checkpoint-folder")
    >>> logits = model(pixel_values).logits          # pixel_values: (B, 3, H, W) float32

The names below are imported when first used (PEP 562), not with the package: ``numpy-mvit2`` and
``python -m numpy_mvit2`` import this package before their first line runs, and they must be able
to take Ctrl-C before NumPy is imported (see ``numpy_mvit2.__main__``). ``from numpy_mvit2 import
X``, ``numpy_mvit2.X`` and the submodules (``numpy_mvit2.fast.executors.THREADS``, ``numpy_mvit2.team.start()``,
README "Speed") work as before.
"""

from __future__ import annotations

import importlib
import os
import sys

# typing.TYPE_CHECKING without importing typing (a few milliseconds): type checkers read it the same way
TYPE_CHECKING = False

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "BaseModelOutputWithPoolingAndNoAttention": "modeling",
    "CheckpointError": "weights",
    "ConfigError": "errors",
    "ImageClassifierOutputWithNoAttention": "modeling",
    "ImageLoadError": "processing",
    "MobileViTImageProcessor": "processing",
    "MobileViTV2Config": "config",
    "MobileViTV2ForImageClassification": "modeling",
    "MobileViTV2ForSemanticSegmentation": "modeling",
    "MobileViTV2Model": "modeling",
    "MobileViTV2PreTrainedModel": "modeling",
    "SemanticSegmenterOutput": "modeling",
    "load_image": "processing",
    "make_divisible": "config",
    "post_process_image_classification": "processing",
    "post_process_semantic_segmentation": "processing",
    "summarize": "summary",
}
# submodules reachable as attributes of the package without an import of their own
# (``numpy_mvit2.fast.executors.THREADS = 2``, ``numpy_mvit2.summary.summarize``), as when the package imported them
_SUBMODULES = ("blocks", "cli", "config", "crosscheck", "cvnets_yaml", "demo", "errors", "fast", "generate", "hub",
               "modeling", "ops", "processing", "safeio", "summary", "team", "weights")

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value  # looked up once
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | set(_SUBMODULES))


def _run_by_an_older_console_script() -> bool:
    """True in a ``numpy-mvit2`` console script written before its entry point became
    ``numpy_mvit2.__main__:main`` (one installed earlier and not reinstalled): it imports
    ``numpy_mvit2.cli``, and with it NumPy, before its first line of ours runs. Only the program
    itself is looked at, the file ``__main__`` runs: importing the package anywhere else installs
    nothing."""
    program = os.path.basename(getattr(sys.modules.get("__main__"), "__file__", None) or "")
    return program in ("numpy-mvit2", "numpy-mvit2-script.py")


if _run_by_an_older_console_script():  # the Ctrl-C handling numpy_mvit2.__main__ gives the new one
    from .__main__ import take_signals

    take_signals()


if TYPE_CHECKING:  # for type checkers and editors: the same names, imported the ordinary way
    from . import fast, team  # noqa: F401
    from .config import MobileViTV2Config, make_divisible  # noqa: F401
    from .errors import ConfigError  # noqa: F401
    from .modeling import (  # noqa: F401
        BaseModelOutputWithPoolingAndNoAttention,
        ImageClassifierOutputWithNoAttention,
        MobileViTV2ForImageClassification,
        MobileViTV2ForSemanticSegmentation,
        MobileViTV2Model,
        MobileViTV2PreTrainedModel,
        SemanticSegmenterOutput,
    )
    from .processing import (  # noqa: F401
        ImageLoadError,
        MobileViTImageProcessor,
        load_image,
        post_process_image_classification,
        post_process_semantic_segmentation,
    )
    from .summary import summarize  # noqa: F401
    from .weights import CheckpointError  # noqa: F401
