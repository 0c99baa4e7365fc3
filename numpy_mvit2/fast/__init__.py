"""A fast CPU forward pass: the same network as ``blocks.py``, arranged for speed.

``blocks.py`` is the readable reference; this package computes the same sums in another order.
``model.fast`` (default True) selects it; ``tests/test_fast.py`` pins it to the reference path and
``tests/test_parity.py`` runs both against transformers. Entry points, one per head::

    plan = build_plan(model.params, config, dtype, head)        # weights laid out once
    backbone(pixel_values, plan, record=None)                   # -> [B, C5, h, w]
    image_classification(pixel_values, plan, record=None)       # -> [B, num_labels]
    semantic_segmentation(pixel_values, plan, record=None)      # -> [B, num_labels, h, w]

The layers, each importing only those above it in this list (none imports this package back)::

    plan.py       the dataclasses of a plan (fields named after the checkpoint keys), build_plan
    kernels.py    bias + activation in place, depthwise over strided views, scratch, GroupNorm
    executors.py  the Executor interface, this process's threads, BLAS's thread count
    layers.py     stem, inverted residual, MobileViT block, DeepLabV3, the backbone on an executor
    team.py       the opt-in team of processes (an Executor over shared memory) for single images
    forward.py    the entry points: threads, batch parts or the team, chosen per pass

What is different from ``blocks.py``, and why (the measurements behind each choice:
``benchmarks/README.md``, "The fast path's kernels"):

- **Layout NHWC** ``[B, H, W, C]``, channels contiguous. A 1x1 convolution is then one
  ``[B*H*W, Cin] @ [Cin, Cout]`` matrix product with no transposes (faster than the NCHW
  ``[Cout, Cin] @ [Cin, H*W]`` product for the early, tall maps), and a depthwise tap multiplies
  whole rows ``W*C`` by a weight row tiled once per call.
- **Row bands.** An inverted residual (1x1 expand -> 3x3 depthwise -> 1x1 reduce) runs band by band
  of output rows: the expanded rows of a band (a few hundred kB, so they stay in the CPU cache)
  are computed, activated, convolved depthwise and reduced before the next band. The full
  expanded map (the largest array of the network, 2x to 4x the block's input) never exists;
  each band keeps the rows the next one shares with it instead of recomputing them.
- **Depthwise as one fused call.** ``np.einsum`` over a strided view of the padded band sums the
  ``k*k`` taps with multiply-adds in one pass and no temporaries (ufuncs would need a product and
  an add per tap).
- **Folding at load.** Batch norms are folded into the convolutions, the transformer's group-norm
  scale and shift into the 1x1 conv that follows them, and each weight is laid out as the matrix
  product wants it, once, in ``build_plan``; ``MobileViTV2PreTrainedModel`` caches the plan.
- **Few temporaries.** Bias and activation are applied in place (``out=``) while the band is in
  cache; buffers are allocated per block and reused across bands. SiLU is ``u (1 + tanh u)``
  with ``u = z/2`` folded into the convolution before it: three passes, and ``tanh`` is cheaper
  than ``exp`` and never takes NumPy's slow path for inputs where ``exp`` overflows.
- **Own threads** (``executors``): a batch is split into parts, one per thread, each run through
  the whole network, with BLAS on one thread meanwhile. One image is split by rows and by
  pixel-in-patch position among threads or, opt-in, a team of processes (``team``). Why:
  benchmarks/README.md, "Threads and processes".

The transformer runs on ``[B, P, N, d]`` (pixel-in-patch, patch, channel): the 1x1 convolutions
are ``[B*P*N, d]`` products, the context scores a softmax over N, and the context vector the
batched product ``scores[B, P, 1, N] @ keys[B, P, N, d]``.

The thread count: ``numpy_mvit2.fast.THREADS`` (or ``NUMPY_MVIT2_THREADS``), by default BLAS's
own; importing this package changes nothing process-wide and starts no process.
"""

import importlib
import sys
from types import ModuleType

from .._lazy import lazy_names

# public name -> the module of this package that defines it, imported when first used: this file
# imports none of them, so no import inside the package leads back to it
_EXPORTS = {
    "Plan": "plan",
    "backbone": "forward",
    "build_plan": "plan",
    "image_classification": "forward",
    "plan_choices": "plan",
    "semantic_segmentation": "forward",
    "threads": "executors",
}
_SUBMODULES = ("executors", "forward", "kernels", "layers", "plan", "team")

__all__ = sorted(_EXPORTS)
__getattr__, _dir = lazy_names(__name__, _EXPORTS, _SUBMODULES)


def __dir__() -> list[str]:
    return sorted(set(_dir()) | {"THREADS"})


def _executors():
    return importlib.import_module(".executors", __name__)


class _Package(ModuleType):
    """This package, with ``THREADS`` read and set where the executors keep it (``executors.THREADS``,
    the layer below the ones that read it): ``numpy_mvit2.fast.THREADS = 2`` takes effect."""

    @property
    def THREADS(self) -> int | None:  # noqa: N802 - the setting's public name
        return _executors().THREADS

    @THREADS.setter
    def THREADS(self, value: int | None) -> None:  # noqa: N802
        _executors().THREADS = value

    @THREADS.deleter
    def THREADS(self) -> None:  # noqa: N802 - back to the default (what mock.patch does on exit)
        _executors().THREADS = None


sys.modules[__name__].__class__ = _Package
