"""Gradients of the whole model: ``value_and_grad``.

    from numpy_mvit2.training import value_and_grad
    model = MobileViTV2ForImageClassification.from_pretrained(folder, fold_batch_norm=False)
    loss, grads = value_and_grad(model, pixel_values, labels, train=True)
    loss, grads, pixel_grad = value_and_grad(model, pixel_values, labels, input_grad=True)

How: the forward pass is ``numpy_mvit2.blocks``, the same code ``model(...)`` runs with
``fast=False``, run on values that a tape records (``numpy_mvit2.autodiff``); the loss is the
model's own ``loss_function``. The tape is then walked backwards, each kernel's gradient coming
from its ``*_backward`` in ``numpy_mvit2.ops``. The table below (``_RULES``) is the whole link
between the two: for each kernel of the forward, which backward computes its vector-Jacobian
product and what it keeps from the forward to do so.
"""

from __future__ import annotations

import contextlib
import threading

import numpy as np

from . import autodiff, blocks, ops
from .autodiff import Tape
from .fast.executors import THREAD_PART_ELEMENTS, blas_limited, parallel, parts_worth, threads
from .optim import SGD, AdamW, CosineWithWarmup, Optimizer, clip_grad_norm, no_decay_groups, trainable_names
from .weights.convert import assign

__all__ = ["value_and_grad", "head_value_and_grad", "trainable_names", "SGD", "AdamW", "Optimizer", "CosineWithWarmup", "clip_grad_norm",
           "no_decay_groups"]

MOMENTUM = 0.1
"""``torch.nn.BatchNorm2d``'s default, which transformers', timm's and ml-cvnets' layers keep."""


# --------------------------------------------------------------------------------------------
# Which backward belongs to which kernel
# --------------------------------------------------------------------------------------------


def _with_arguments(backward, grads_for):
    """The common rule: the forward keeps its arguments, and ``backward(grad, **arguments)`` returns
    the gradients of the inputs named ``grads_for``, in that order (ops' convention)."""

    def forward(tape, kernel, args, traced):
        return kernel(**args), args

    def back(saved, grad):
        result = backward(grad, **saved)
        return dict(zip(grads_for, result if isinstance(result, tuple) else (result,)))

    return forward, back


def _keep_shape(backward, grads_for, *options):
    """For a kernel whose backward needs only its input's shape (and ``options``):
    ``backward(grad, input_shape, *options)``."""

    def forward(tape, kernel, args, traced):
        return kernel(**args), (args[grads_for].shape, *(args[name] for name in options))

    return forward, lambda saved, grad: {grads_for: backward(grad, *saved)}


def _batch_norm_forward(tape, kernel, args, traced):
    """``model.eval()``: the running statistics (and ``batch_norm_backward``); ``model.train()``:
    the batch's (``batch_norm_train``), whose running-statistics update the tape keeps."""
    if not tape.train:
        return kernel(**args), ("eval", args)
    try:
        y, mean, var, saved = _batch_norm_train_by_channels(args)
    except ValueError as error:
        raise ValueError(f"{_layer(traced)}: {error}") from None
    for name, new in (("running_mean", mean), ("running_var", var)):
        if name in traced:
            tape.updates[traced[name].name] = new
    return y, ("train", saved)


_CHANNEL_ARGS = ("running_mean", "running_var", "weight", "bias")


def _batch_norm_train_by_channels(args):  # -> y, new running mean, new running var, (parts, what each part saved)
    """``ops.batch_norm_train`` on pieces of the channels, shared out among threads: each channel
    is normalised with its own statistics, so the pieces are independent (see "Running a kernel
    on parts of its arrays")."""
    x = args["x"]
    workers = min(x.shape[1], _threads_for(x.size))
    if workers < 2:
        y, mean, var, saved = ops.batch_norm_train(**args, momentum=MOMENTUM)
        return y, mean, var, (None, saved)
    channels = x.shape[1]
    count = min(channels, 4 * workers)  # smaller pieces than one per thread: each pass stays in the CPU's cache longer
    parts = [slice(channels * k // count, channels * (k + 1) // count) for k in range(count)]

    def part_of(k):
        part = parts[k]
        y, mean, var, saved = ops.batch_norm_train(
            x[:, part], *(None if args[n] is None else args[n][part] for n in _CHANNEL_ARGS), eps=args["eps"],
            momentum=MOMENTUM)
        return (y,), (mean, var, saved)

    (y,), kept = _in_parts(part_of, parts, 1, workers)
    mean, var = (None if kept[0][i] is None else np.concatenate([k[i] for k in kept]) for i in (0, 1))
    return y, mean, var, ((parts, workers), [k[2] for k in kept])


def _batch_norm_train_backward_by_channels(grad, saved):  # -> dL/dx, dL/dweight, dL/dbias
    split, kept = saved
    if split is None:
        return ops.batch_norm_train_backward(grad, kept)
    parts, workers = split

    def part_of(k):
        grad_x, grad_weight, grad_bias = ops.batch_norm_train_backward(grad[:, parts[k]], kept[k])
        return (grad_x,), (grad_weight, grad_bias)

    (grad_x,), small = _in_parts(part_of, parts, 1, workers)
    return grad_x, np.concatenate([s[0] for s in small]), np.concatenate([s[1] for s in small])


def _layer(traced):
    """The checkpoint prefix of the layer a kernel's parameters belong to."""
    for value in traced.values():
        if isinstance(value, autodiff.Traced) and value.name:
            return value.name.rsplit(".", 2)[0]
    return "batch norm"


def _batch_norm_backward(saved, grad):
    mode, kept = saved
    if mode == "train":
        grad_x, grad_weight, grad_bias = _batch_norm_train_backward_by_channels(grad, kept)
    else:
        grad_x, grad_weight, grad_bias = ops.batch_norm_backward(grad, **kept)
    return {"x": grad_x, "weight": grad_weight, "bias": grad_bias}


def _keep_mask(tape, shape, p, dtype):
    """The boolean mask of what dropout keeps while training (None: nothing is dropped)."""
    if not tape.train or p == 0:
        return None
    keep = ops.dropout(np.ones(shape, dtype=dtype), p, tape.generator)[1]
    if tape.masks is not None:
        tape.masks.append(keep)
    return keep


def _dropout_forward(tape, kernel, args, traced):
    x, p = args["x"], args["p"]
    shape = x.shape[:2] + (1,) * (x.ndim - 2) if args["channels"] else x.shape  # Dropout2d: whole channels
    keep = _keep_mask(tape, shape, p, x.dtype)
    if keep is None:
        return x, None
    return x * ops._dropout_scale(keep, p, x.dtype), (keep, p)


def _dropout_backward(saved, grad):
    return {"x": grad if saved is None else ops.dropout_backward(grad, *saved)}


def _attention_forward(tape, kernel, args, traced):
    args["keep"] = _keep_mask(tape, args["query"].shape, args["dropout"], args["query"].dtype)
    return kernel(**args), args


def _attention_backward(saved, grad_out, grad_scores):
    if grad_out is None:
        grad_out = np.zeros_like(saved["value"])
    grad_query, grad_key, grad_value = ops.separable_attention_backward(grad_out, grad_scores, **saved)
    return {"query": grad_query, "key": grad_key, "value": grad_value}


# --------------------------------------------------------------------------------------------
# Running a kernel on parts of its arrays, one thread each
# --------------------------------------------------------------------------------------------
#
# NumPy runs an element-wise operation on one core, and most of a training step is element-wise
# (SiLU and its derivative, the batch norms, the depthwise convolutions' shifted multiply-adds).
# Where a kernel computes each image, or each channel, on its own, its rule below runs it image
# by image (or on parts of the channels), the images shared out among threads (NumPy lets go of
# the GIL inside its loops), and joins the results: the same sums, in the same order within each
# image, so the same numbers (a parameter's gradient, the sum of the images', is summed in another
# order). The convolutions go image by image too, 1x1 ones included: ``value_and_grad`` holds
# BLAS at one thread meanwhile, as the fast path does, because an OpenBLAS thread spins on after
# each matrix product and takes a core from ours (measured: benchmarks/README.md). The kernels in
# ops stay as they are: this is the only place that knows about threads. How many:
# ``numpy_mvit2.fast.THREADS``, as for the fast path (by default BLAS's thread count).


def _threads_for(elements):  # -> how many threads ``elements`` values of element-wise work are worth
    return parts_worth(threads(), THREAD_PART_ELEMENTS, elements)


def _in_parts(function, pieces, axis, workers):  # -> [joined arrays], [what each piece kept]
    """``function(i)`` for each ``pieces[i]`` (consecutive slices of one axis), on ``workers`` threads,
    each taking a run of consecutive pieces one at a time (an image's arrays fit the CPU's cache
    better than half a batch's). ``function`` returns ``(arrays, kept)``: each array of ``arrays``
    is written into its place along ``axis`` of one joined array as soon as it is computed (a
    None stays None); ``kept`` is listed in the pieces' order."""
    joined, kept, lock = [], [None] * len(pieces), threading.Lock()

    def run(run_of_pieces):
        for i in run_of_pieces:
            arrays, kept[i] = function(i)
            with lock:
                if not joined:  # the first piece done gives the shapes and dtypes
                    length = pieces[-1].stop
                    joined.extend(None if a is None else np.empty(a.shape[:axis] + (length,) + a.shape[axis + 1:], a.dtype)
                                  for a in arrays)
            for out, a in zip(joined, arrays):
                if out is not None:
                    out[(slice(None),) * axis + (pieces[i],)] = a

    bounds = [len(pieces) * w // workers for w in range(workers + 1)]
    parallel(run, [range(start, stop) for start, stop in zip(bounds, bounds[1:])])
    return joined, kept


def _by_images(rule, batch_args):
    """``rule`` run image by image on threads, for a kernel with one output
    whose image b depends only on image b of the arguments named ``batch_args`` (the others, such
    as weights, are shared). The output and those arguments' gradients are joined along the batch;
    the shared arguments' gradients are the sums of the images'. For example ``conv2d`` on a batch
    of 8: the forward runs ``conv2d(x[b : b + 1], weight, bias)`` for b = 0 ... 7, images 0-3 on
    one thread and 4-7 on another, each result written into its rows of one ``[8, Cout, H, W]``
    output; the backward runs ``conv2d_backward`` on each image's output gradient the same way,
    joins the eight ``dL/dx`` and adds up the eight ``dL/dweight``. The rule's forward must not
    use the tape (dropout, which draws from its generator, is not run this way: the images' draws
    would come in no fixed order), and its backward gives every image a gradient for the same
    arguments (None for all or for none)."""
    forward, backward = rule

    def split_forward(tape, kernel, args, traced):
        x = args[batch_args[0]]
        workers = min(x.shape[0], _threads_for(x.size)) if x.ndim else 1
        if workers < 2:
            output, kept = forward(tape, kernel, args, traced)
            return output, (None, kept)
        images = [slice(b, b + 1) for b in range(x.shape[0])]

        def image(b):
            output, kept = forward(tape, kernel, {**args, **{n: args[n][b : b + 1] for n in batch_args}}, traced)
            return (output,), kept

        (output,), kept = _in_parts(image, images, 0, workers)
        return output, ((images, workers), kept)

    def split_backward(saved, grad):
        split, kept = saved
        if split is None:
            return backward(kept, grad)
        images, workers = split

        def image(b):
            grads = backward(kept[b], grad[b : b + 1])
            return tuple(grads.get(n) for n in batch_args), {n: g for n, g in grads.items() if n not in batch_args}

        joined, shared = _in_parts(image, images, 0, workers)
        grads = dict(zip(batch_args, joined))
        for name in shared[0]:
            grads[name] = None if shared[0][name] is None else sum(s[name] for s in shared)
        return grads

    return split_forward, split_backward


def _loss(backward, grads_for):
    """Losses: ``backward(*inputs, grad=dL/dloss)``."""

    def forward(tape, kernel, args, traced):
        return kernel(**args), args

    return forward, lambda saved, grad: {grads_for: backward(**saved, grad=grad)}


_RULES = {
    ops.conv2d: _by_images(_with_arguments(ops.conv2d_backward, ("x", "weight", "bias")), ("x",)),
    ops.linear: _with_arguments(ops.linear_backward, ("x", "weight", "bias")),
    ops.batch_norm: (_batch_norm_forward, _batch_norm_backward),
    ops.group_norm: _by_images(_with_arguments(ops.group_norm_backward, ("x", "weight", "bias")), ("x",)),
    ops.softmax: _with_arguments(ops.softmax_backward, ("x",)),
    ops.log_softmax: _with_arguments(ops.log_softmax_backward, ("x",)),
    ops.global_avg_pool: _keep_shape(ops.global_avg_pool_backward, "x"),
    ops.interpolate_bilinear: _keep_shape(ops.interpolate_bilinear_backward, "x", "align_corners"),
    ops.unfold_patches: _keep_shape(ops.unfold_patches_backward, "x", "patch_size"),
    ops.fold_patches: (lambda tape, kernel, args, traced: (kernel(**args), args["patch_size"]),
                       lambda patch_size, grad: {"patches": ops.fold_patches_backward(grad, patch_size)}),
    ops.separable_attention: (_attention_forward, _attention_backward),
    blocks.dropout: (_dropout_forward, _dropout_backward),
    ops.cross_entropy: _loss(ops.cross_entropy_backward, "logits"),
    ops.mse_loss: _loss(ops.mse_loss_backward, "prediction"),
    ops.binary_cross_entropy_with_logits: _loss(ops.binary_cross_entropy_with_logits_backward, "logits"),
}
for _name, _activation in ops.ACTIVATIONS.items():
    _RULES[_activation] = _by_images(_with_arguments(ops.ACTIVATION_BACKWARDS[_name], ("x",)), ("x",))
autodiff.RULES.update(_RULES)


# --------------------------------------------------------------------------------------------
# The whole model
# --------------------------------------------------------------------------------------------

def value_and_grad(model, pixel_values, labels=None, *, train: bool = False, input_grad: bool = False,
                   generator: np.random.Generator | None = None):
    """The loss and its gradient with respect to every trainable parameter (and the input).

    - ``model``: any of the three models. For ``MobileViTV2ForImageClassification`` and
      ``...ForSemanticSegmentation`` the loss is the one ``model(pixel_values, labels=labels).loss``
      computes (every ``config.problem_type``; the segmentation ignore index). ``MobileViTV2Model``
      has no loss: there ``labels`` is the gradient of the loss with respect to
      ``last_hidden_state`` (an array of its shape), and the value returned is
      ``sum(last_hidden_state * labels)``, whose gradients are then exactly the backward pass of
      that output gradient.
    - ``train``: as PyTorch's ``model.train()``: batch norms normalise with the batch's statistics
      and their running statistics are updated in ``model.params`` (momentum 0.1, unbiased
      variance), dropout is active, drawing from ``generator`` (an ``np.random.Generator``; a fresh
      one when None). ``train=False`` is ``model.eval()``. Either needs the batch norms unfolded
      (load with ``fold_batch_norm=False``) for ``train=True``; an eval-mode gradient of a folded
      model is taken with respect to its folded weights.
    - returns ``(loss, grads)``, or ``(loss, grads, pixel_grad)`` with ``input_grad``: ``grads``
      maps each name of ``trainable_names(model)`` (transformers' state-dict names) to an array of
      that parameter's shape and dtype; ``pixel_grad`` is ``dL/dpixel_values``, shaped like the
      input, in the model's dtype.

    The forward runs on ``numpy_mvit2.blocks`` (the readable path), whatever ``model.fast`` says;
    its kernels go image by image (batch norms: by pieces of their channels) on as many threads
    as ``numpy_mvit2.fast.THREADS`` says (by default BLAS's thread count; 1: all on the calling
    thread). The running statistics are written only once the whole step has succeeded.
    """
    return _value_and_grad(model, pixel_values, labels, train=train, input_grad=input_grad, generator=generator)


def head_value_and_grad(model, features, labels, *, train: bool = False, generator: np.random.Generator | None = None):
    """``value_and_grad`` of the head alone, on the backbone's output ``features``
    (``last_hidden_state``, [B, C5, h, w]), for a frozen backbone (a linear probe): the loss of
    the head's function of ``numpy_mvit2.blocks`` (``classification_head`` or ``deeplabv3``) and
    its gradient with respect to the head's parameters only (names outside ``mobilevitv2.``).
    ``train`` applies to the head's batch norms and dropout; the backbone that made ``features``
    ran as the caller ran it (in eval mode, as a frozen feature extractor)."""
    if model.head == "base":
        raise ValueError("head_value_and_grad needs a model with a head (classification or segmentation)")
    return _value_and_grad(model, features, labels, train=train, input_grad=False, generator=generator, head_only=True)


def _value_and_grad(model, pixel_values, labels, *, train, input_grad, generator, masks=None, head_only=False):
    """``value_and_grad``; ``masks``: None, or a list that receives the dropout masks drawn, in
    order (``crosscheck.crosscheck_gradients`` hands them to PyTorch); ``head_only``: the input is
    the backbone's output (``head_value_and_grad``)."""
    if train and model.batch_norm_folded:
        raise ValueError("value_and_grad(train=True) needs the batch norms unfolded: they normalise with the batch's "
                         "statistics while training; load the model with fold_batch_norm=False")
    if head_only:
        pixels = np.ascontiguousarray(pixel_values, dtype=model.dtype)
        if pixels.ndim != 4 or len(pixels) == 0:
            raise ValueError(f"features must be a non-empty [batch, channels, height, width] array, got shape {pixels.shape}")
    else:
        pixels = model._pixels(pixel_values)
    head = model.head
    if labels is None:
        raise ValueError("value_and_grad needs labels: " + ("the gradient of the loss with respect to last_hidden_state"
                                                            if head == "base" else "the targets of the loss"))
    tape = Tape(train=train, generator=np.random.default_rng() if generator is None else generator)
    if not isinstance(tape.generator, np.random.Generator):
        raise TypeError(f"generator must be an np.random.Generator, got {type(generator).__name__}")
    tape.masks = masks
    # our threads split a batch's work, BLAS on one thread meanwhile (see "Running a kernel on parts
    # of its arrays"); a single image's convolutions, or a batch too small to split, are left to BLAS's threads
    with blas_limited() if len(pixels) > 1 and _threads_for(pixels.size) > 1 else contextlib.nullcontext():
        loss, grads = _forward_and_backward(model, tape, pixels, labels, head_only)
    params, state = {}, model.state_dict()
    for name in trainable_names(model):
        if head_only and name.startswith(f"{model.base_model_prefix}."):
            continue
        value, grad = state[name], grads.get(name)
        params[name] = np.zeros_like(value) if grad is None else np.asarray(grad, dtype=value.dtype).reshape(value.shape)
    for name, new in tape.updates.items():
        assign(model.params, name, new)
    if tape.updates:
        model._plan = None  # the fast path's folded weights read the running statistics: rebuilt when next used
    if not input_grad:
        return loss, params
    pixel_grad = grads.get("pixel_values")
    return loss, params, np.zeros_like(pixels) if pixel_grad is None else pixel_grad.astype(model.dtype, copy=False)


def _forward_and_backward(model, tape, pixels, labels, head_only=False):  # -> loss, {leaf name: gradient}
    if head_only:
        # the head's parameters, named as in the checkpoint, as its function takes them (the
        # segmentation head's are one level down, under segmentation_head)
        head_params = tape.leaves({k: v for k, v in model.params.items() if k != model.base_model_prefix})
        head_params = head_params.get("segmentation_head", head_params)
        output = getattr(blocks, model._head_function)(tape.leaf(pixels, "features"), **head_params, config=model.config)
    else:
        output = model._readable(tape.leaf(pixels, "pixel_values"), tape.leaves(model.params))
    if model.head == "base":
        seed = np.asarray(labels)
        if seed.shape != output.shape or seed.dtype.kind not in "biuf":
            raise ValueError(f"labels for MobileViTV2Model are the gradient of last_hidden_state: an array of shape "
                             f"{output.shape}, got {seed.dtype} {seed.shape}")
        seed = seed.astype(model.dtype)
        return np.sum(output.value * seed, dtype=model.dtype), tape.backward(output, seed)
    traced_loss = model.loss_function(labels, output)
    return traced_loss.value[()], tape.backward(traced_loss)
