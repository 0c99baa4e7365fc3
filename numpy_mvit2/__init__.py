"""MobileViTV2 in plain NumPy, reproducing transformers' ``MobileViTV2*`` models.

    >>> from numpy_mvit2 import MobileViTV2ForImageClassification
    >>> model = MobileViTV2ForImageClassification.from_pretrained("path/to/checkpoint-folder")
    >>> logits = model(pixel_values).logits          # pixel_values: (B, 3, H, W) float32

The names below are imported when first used (PEP 562), not with the package: ``numpy-mvit2`` and
``python -m numpy_mvit2`` import this package before their first line runs, and they must be able
to take Ctrl-C before NumPy is imported (see ``numpy_mvit2.__main__``). ``from numpy_mvit2 import
X``, ``numpy_mvit2.X`` and the submodules (``numpy_mvit2.fast.THREADS``, ``numpy_mvit2.team.start()``,
README "Speed") work as before.

Nothing of the package is imported here but modules that import nothing of it (``_lazy``,
``_version``, ``_signals``): so no module that imports the package back (``from . import blocks``) can close an
import cycle through it. (So there is no ``if TYPE_CHECKING:`` block importing the public names for
type checkers and editors: it would be such a cycle. They are in the modules ``_EXPORTS`` names.)
"""

from __future__ import annotations

import os
import sys


def _run_as_our_program() -> bool:
    """True when this package is being imported as the start of our own program, the only case in
    which importing it installs anything:

    - ``python -m numpy_mvit2``: runpy imports the package before ``numpy_mvit2.__main__``, so a
      Ctrl-C while this file's own imports run would otherwise show a traceback. While runpy
      locates the module, ``sys.argv`` is ``["-m", *the program's arguments]``, so the module
      the interpreter was asked for is the entry of ``sys.orig_argv`` just before those
      arguments (never one of them: another program's ``--flag -m numpy_mvit2`` does not count).
    - a ``numpy-mvit2`` console script written before its entry point became
      ``numpy_mvit2.__main__:main`` (one installed earlier and not reinstalled): it imports
      ``numpy_mvit2.cli``, and with it NumPy, before its first line of ours runs. Only the program
      itself is looked at, the file ``__main__`` runs.

    Importing the package anywhere else installs nothing."""
    if sys.argv[:1] == ["-m"]:
        orig = list(getattr(sys, "orig_argv", ()))
        module = len(orig) - len(sys.argv)  # where the module's name stands: after "-m", before the arguments
        return module >= 1 and orig[module - 1 : module + 1] == ["-m", __name__]
    program = os.path.basename(getattr(sys.modules.get("__main__"), "__file__", None) or "")
    return program in ("numpy-mvit2", "numpy-mvit2-script.py")


if _run_as_our_program():  # the Ctrl-C handling numpy_mvit2.__main__ gives, from the package's first lines
    try:  # (the first import from the package's folder reads the folder: a signal can land there)
        from ._signals import take_signals
    except KeyboardInterrupt:
        os.write(2, b"numpy-mvit2: interrupted\n")
        os._exit(130)
    take_signals()


# (imported after the signal handling above: our own program takes Ctrl-C first)
from ._lazy import lazy_names  # noqa: E402
from ._version import __version__  # noqa: E402, F401

# public name -> the module that defines it
_EXPORTS = {
    "BaseModelOutputWithPoolingAndNoAttention": "modeling",
    "CheckpointError": "errors",
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
# (``numpy_mvit2.fast.THREADS = 2``, ``numpy_mvit2.summary.summarize``), as when the package imported them
_SUBMODULES = ("architecture", "blocks", "cli", "config", "crosscheck", "cvnets_yaml", "demo", "errors", "fast", "generate",
               "hub", "layout", "modeling", "ops", "processing", "safeio", "summary", "team", "weights")

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_names(__name__, _EXPORTS, _SUBMODULES)
