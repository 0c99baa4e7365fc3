"""The fast path's entry points, one per head (pixels -> outputs), and the choice of how a pass runs.

- One thread (``executors.threads() == 1``): on the calling thread.
- A batch: split into ``threads()`` parts of whole images, each run through the whole network by
  its own thread; the parts never wait for each other. What they record is concatenated over
  the batch, in forward order, once all parts are done.
- One image: on the team of processes when it is switched on (opt-in: ``numpy_mvit2.team``) and
  ready; else split by rows (convolutions) and pixel-in-patch positions (transformers) among
  threads.

BLAS is held at one thread for the whole pass while our threads run (``executors.blas_limited``),
and given back its own count when the pass ends.

``record``: None, or ``record(name, array)``, called in forward order with each stage's output
(``encoder.layer.{i}``, NCHW ``[B, Ci, Hi, Wi]``), each transformer layer's context scores
(``encoder.layer.{i}.transformer.layer.{j}.attention.scores``, ``[B, 1, P, N]``) and, for the
classification head, the pooled features (``pooler``, ``[B, C5]``). The arrays stay valid and
unchanged after the call (views of arrays of this call, or copies out of the team's shared
memory). Without a record nothing is kept: each stage's output is freed once the next has read it.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from ..ops import global_avg_pool, linear
from .executors import SERIAL, Threads, blas_limited, parallel, threads
from .kernels import split
from .layers import deeplabv3, run_backbone
from .plan import Plan
from .team import backbone as team_backbone


def backbone(pixel_values, plan: Plan, *, record=None):  # [B, C, H, W] -> [B, C5, h, w]
    """The backbone's last hidden state (an NCHW view of a channels-last array). ``pixel_values``:
    a C-contiguous NCHW array in the plan's dtype (the model checks it)."""
    with _pass() as n:
        return _features(pixel_values, plan, record, n).transpose(0, 3, 1, 2)


def image_classification(pixel_values, plan: Plan, *, record=None):  # [B, C, H, W] -> [B, num_labels]
    """The classifier's logits on the pooled features (records ``pooler``, [B, C5]); the pooled
    features themselves when the plan has no classifier (num_labels 0)."""
    with _pass() as n:
        pooled = global_avg_pool(_features(pixel_values, plan, record, n).transpose(0, 3, 1, 2))  # [B, C5]
        if record is not None:
            record("pooler", pooled)
        if plan.classifier is None:
            return pooled
        return linear(pooled, plan.classifier.weight, plan.classifier.bias)


def semantic_segmentation(pixel_values, plan: Plan, *, record=None):  # [B, C, H, W] -> [B, num_labels, h, w]
    """The DeepLabV3 head's logits at the last stage's resolution."""
    with _pass() as n:
        return deeplabv3(_features(pixel_values, plan, record, n), plan.segmentation_head)


@contextmanager
def _pass():  # -> the thread count of this pass, BLAS on one thread meanwhile when it is above 1
    n = threads()
    if n == 1:
        yield n
        return
    with blas_limited():  # all of it: an OpenBLAS thread woken once spins for a while after
        yield n


def _features(pixel_values, plan: Plan, record, n):  # [B, C, H, W] -> [B, h, w, C5]
    if n == 1:
        return run_backbone(pixel_values, plan, SERIAL, record)
    if pixel_values.shape[0] > 1:
        return _batch_parts(pixel_values, plan, record, n)
    x = team_backbone(pixel_values, plan, n, record)  # None unless the team is on and ready
    return x if x is not None else run_backbone(pixel_values, plan, Threads(n), record)


def _batch_parts(pixel_values, plan: Plan, record, n):  # [B, C, H, W] -> [B, h, w, C5]
    """The batch in ``n`` parts of images, each on its own thread; the parts' records are kept
    until all are done, then concatenated over the batch and recorded in their order."""
    parts = split(pixel_values.shape[0], n)
    kept = [[] for _ in parts]

    def run(i):
        b0, b1 = parts[i]
        keep = None if record is None else (lambda name, array: kept[i].append((name, array)))
        return run_backbone(pixel_values[b0:b1], plan, SERIAL, keep)

    lasts = parallel(run, list(range(len(parts))))
    if record is not None:
        for items in zip(*kept):
            record(items[0][0], _concatenate([array for _, array in items]))
    return np.concatenate(lasts)


def _concatenate(arrays):  # [b_i, ...] -> [sum b_i, ...], in the memory layout of the parts
    """``np.concatenate`` over the batch; an NCHW view of a channels-last array stays one."""
    first = arrays[0]
    if first.ndim == 4 and not first.flags.c_contiguous and first.transpose(0, 2, 3, 1).flags.c_contiguous:
        return np.concatenate([a.transpose(0, 2, 3, 1) for a in arrays]).transpose(0, 3, 1, 2)
    return np.concatenate(arrays)
