"""Reverse-mode differentiation of the one forward pass, by a tape.

The model is written once, in ``numpy_mvit2.blocks``, as calls of the kernels of
``numpy_mvit2.ops``. To differentiate it, ``numpy_mvit2.training`` runs that same code on
``Traced`` values instead of arrays: a ``Traced`` wraps an array and remembers the ``Tape`` it
belongs to. Each kernel is marked ``@primitive``; called with plain arrays it is the plain kernel
(nothing here runs); called with a ``Traced`` argument it asks the tape, which runs the kernel on
the arrays inside, keeps what the kernel's backward will need, and returns ``Traced`` outputs.
The few array operations ``blocks`` writes in Python itself (``x + y`` for a residual, a slice of
the query/key/value channels, ``np.concatenate`` of the ASPP branches, a reshape) are
differentiated here, by ``Traced``'s own methods.

``Tape.backward`` then walks the recorded calls in reverse, handing each one the gradient of its
outputs and adding what its backward returns to the gradients of its inputs (a value read twice,
as a residual's input is, collects both). Each kernel's backward is the ``*_backward`` function
beside it in ``ops``; which backward belongs to which kernel, and what it is given, is the table
in ``numpy_mvit2.training`` (``RULES`` here is filled there).

A rule is a pair ``(forward, backward)``:

- ``forward(tape, kernel, args, traced) -> (output, saved)``: ``args`` maps the kernel's parameter
  names to the values it was called with (arrays, with ``Traced`` unwrapped; options as given),
  ``traced`` the names whose value was ``Traced`` to those ``Traced``; ``output`` is an array or a
  tuple of arrays; ``saved`` is whatever the backward needs (the inputs, or less);
- ``backward(saved, *grads) -> {name: gradient}``: ``grads`` one per output (None for an output
  nothing downstream used; a rule with one output is never called without its gradient).

``tape.train`` and ``tape.generator`` tell the rules of batch norm and dropout which form to run:
``model.train()`` or ``model.eval()``.
"""

from __future__ import annotations

import functools
import inspect

import numpy as np

RULES: dict = {}
"""The marked kernel (what ``@primitive`` returned) -> its rule ``(forward, backward)``."""


def primitive(kernel):
    """Mark ``kernel`` as a unit the tape records (its rule is registered in ``RULES`` by
    ``numpy_mvit2.training``). With no ``Traced`` argument the kernel is called as it is."""
    signature = inspect.signature(kernel)

    @functools.wraps(kernel)
    def marked(*args, **kwargs):
        tape = _tape_of(args, kwargs)
        if tape is None:
            return kernel(*args, **kwargs)
        return tape.call(marked, kernel, signature, args, kwargs)

    return marked


def _tape_of(args, kwargs):
    """The tape of the first ``Traced`` argument (looking one level into lists and tuples, as
    ``np.concatenate`` takes its arrays), or None."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, Traced):
            return value.tape
        if isinstance(value, (list, tuple)):
            for item in value:
                if isinstance(item, Traced):
                    return item.tape
    return None


class Traced:
    """An array on a tape: ``value`` (the array), ``tape``, ``index`` (its number on the tape) and,
    for the leaves (parameters, the input), ``name``. Reads like an array where ``blocks`` needs it
    to (``shape``, ``dtype``, ``x + y``, ``x[...]``, ``reshape``, ``squeeze``, ``np.concatenate``);
    anything else is a ``TypeError``, so that no operation escapes the tape unnoticed. The tape
    refers to values by ``index`` only: an intermediate array lives as long as a backward needs
    it (what a rule saved), not as long as the tape."""

    __slots__ = ("value", "tape", "index", "name")

    def __init__(self, value, tape, name=None):
        self.value, self.tape, self.name = value, tape, name
        self.index = tape._count = tape._count + 1

    shape = property(lambda self: self.value.shape)
    dtype = property(lambda self: self.value.dtype)
    ndim = property(lambda self: self.value.ndim)
    size = property(lambda self: self.value.size)

    def __repr__(self):
        return f"Traced({self.name or 'value'}, shape={self.shape}, dtype={self.dtype})"

    def __array__(self, *args, **kwargs):
        raise TypeError("a Traced value cannot be turned into an array: the operation would escape the tape "
                        "(differentiate it with an ops kernel marked @primitive)")

    def __add__(self, other):
        return _add(self, other)

    __radd__ = __add__

    def __getitem__(self, key):
        return _getitem(self, key)

    def reshape(self, *shape):
        return _reshape(self, shape[0] if len(shape) == 1 and isinstance(shape[0], tuple) else shape)

    def squeeze(self):
        return _reshape(self, tuple(n for n in self.shape if n != 1))

    def __array_function__(self, func, types, args, kwargs):
        if func is np.concatenate:
            return _concatenate(*args, **kwargs)
        return NotImplemented


def _unbroadcast(grad, shape):
    """The gradient of a value broadcast to ``grad.shape`` from ``shape``: summed over the axes
    broadcasting added or stretched."""
    while grad.ndim > len(shape):
        grad = grad.sum(axis=0)
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    return grad.sum(axis=axes, keepdims=True) if axes else grad


@primitive
def _add(x, y):  # x + y, broadcast
    return x + y


def _add_forward(tape, kernel, a, traced):
    x, y = a["x"], a["y"]
    return x + y, (np.shape(x), np.shape(y))


def _add_backward(saved, grad):
    x_shape, y_shape = saved
    return {"x": _unbroadcast(grad, x_shape), "y": _unbroadcast(grad, y_shape)}


@primitive
def _getitem(x, key):  # x[key], basic indexing (slices, None)
    return x[key]


def _getitem_backward(saved, grad):
    shape, dtype, key = saved
    grad_x = np.zeros(shape, dtype=np.result_type(dtype, grad.dtype))
    grad_x[key] = grad  # basic indexing reads each element at most once
    return {"x": grad_x}


@primitive
def _reshape(x, shape):
    return x.reshape(shape)


@primitive
def _concatenate(arrays, axis=0):
    return np.concatenate(arrays, axis=axis)


RULES[_add] = (_add_forward, _add_backward)
RULES[_getitem] = (lambda tape, kernel, a, traced: (a["x"][a["key"]], (a["x"].shape, a["x"].dtype, a["key"])),
                   _getitem_backward)
RULES[_reshape] = (lambda tape, kernel, a, traced: (a["x"].reshape(a["shape"]), a["x"].shape),
                   lambda shape, grad: {"x": grad.reshape(shape)})


class _Node:
    """One recorded call: its rule's backward, what it saved, the tape indices of its ``Traced``
    inputs (by parameter name; a list for ``np.concatenate``'s sequence, None for its plain
    entries) and of its outputs."""

    __slots__ = ("backward", "saved", "inputs", "outputs")

    def __init__(self, backward, saved, inputs, outputs):
        self.backward, self.saved, self.inputs, self.outputs = backward, saved, inputs, outputs


class Tape:
    """The calls of one forward pass, in order, to be differentiated once (``backward``).

    ``train``: run batch norm on batch statistics and dropout (``model.train()``), else the
    inference forms (``model.eval()``). ``generator``: the ``np.random.Generator`` dropout draws
    from. ``updates``: the running statistics a training forward computed, by parameter name
    (written into the model by the caller, once everything has succeeded)."""

    def __init__(self, *, train: bool = False, generator: np.random.Generator | None = None):
        self.train = train
        self.generator = generator
        self.updates: dict[str, np.ndarray] = {}
        self.masks: list | None = None  # if a list, dropout's masks are appended to it as they are drawn
        self.nodes: list[_Node] = []
        self.names: dict[int, str] = {}  # leaf index -> name
        self._count = 0

    def leaf(self, value, name: str) -> Traced:
        leaf = Traced(value, self, name)
        self.names[leaf.index] = name
        return leaf

    def leaves(self, tree, prefix=""):
        """Nested dicts/lists of arrays -> the same of ``Traced`` leaves named by their dotted
        paths (``encoder.layer.0.layer.0.expand_1x1.convolution.weight``)."""
        if isinstance(tree, dict):
            return {k: self.leaves(v, f"{prefix}{k}.") for k, v in tree.items()}
        if isinstance(tree, list):
            return [self.leaves(v, f"{prefix}{i}.") for i, v in enumerate(tree)]
        return self.leaf(tree, prefix[:-1])

    def call(self, marked, kernel, signature, args, kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        values, traced, inputs = {}, {}, {}
        for name, value in bound.arguments.items():
            if isinstance(value, Traced):
                if value.tape is not self:
                    raise ValueError(f"{kernel.__name__}: its arguments come from two different tapes")
                values[name], traced[name], inputs[name] = value.value, value, value.index
            elif isinstance(value, (list, tuple)) and any(isinstance(v, Traced) for v in value):
                values[name] = [v.value if isinstance(v, Traced) else v for v in value]
                inputs[name] = [v.index if isinstance(v, Traced) else None for v in value]
            else:
                values[name] = value
        forward, backward = RULES[marked]
        output, saved = forward(self, kernel, values, traced)
        if isinstance(output, tuple):
            outputs = tuple(Traced(np.asarray(o), self) for o in output)
            self.nodes.append(_Node(backward, saved, inputs, [o.index for o in outputs]))
            return outputs
        output = Traced(np.asarray(output), self)
        self.nodes.append(_Node(backward, saved, inputs, [output.index]))
        return output

    def backward(self, output: Traced, grad=None) -> dict[str, np.ndarray]:
        """Gradients of ``sum(output * grad)`` (``grad`` defaults to ones: for a scalar loss,
        dL/dL = 1) with respect to every leaf that ``output`` depends on, by leaf name. Each
        call's saved values are let go as soon as its backward has run; the tape is spent."""
        grads = {output.index: np.ones_like(output.value) if grad is None else np.asarray(grad, dtype=output.dtype)}
        while self.nodes:
            node = self.nodes.pop()
            output_grads = [grads.pop(i, None) for i in node.outputs]
            if all(g is None for g in output_grads):
                continue
            for name, grad_in in node.backward(node.saved, *output_grads).items():
                index = node.inputs.get(name)
                if index is None or grad_in is None:
                    continue
                for i, g in (zip(index, grad_in) if isinstance(index, list) else ((index, grad_in),)):
                    if i is not None:
                        grads[i] = g if i not in grads else grads[i] + g
            node.saved = None
        return {self.names[i]: g for i, g in grads.items() if i in self.names}


def _concatenate_forward(tape, kernel, a, traced):
    axis = a["axis"]
    arrays = a["arrays"]
    return np.concatenate(arrays, axis=axis), (axis, np.cumsum([x.shape[axis] for x in arrays])[:-1])


def _concatenate_backward(saved, grad):
    axis, cuts = saved
    return {"arrays": np.split(grad, cuts, axis=axis)}


RULES[_concatenate] = (_concatenate_forward, _concatenate_backward)
