"""Optimizers and a learning-rate schedule, as ``torch.optim`` defines them, for these models.

    from numpy_mvit2.training import AdamW, CosineWithWarmup, value_and_grad
    model = MobileViTV2ForImageClassification.from_pretrained(folder, fold_batch_norm=False)
    opt = AdamW(model, lr=1e-3, weight_decay=0.05)
    schedule = CosineWithWarmup(opt, total_steps=1000, warmup_steps=100)
    for pixels, labels in batches:
        loss, grads = value_and_grad(model, pixels, labels, train=True)
        opt.step(grads)                      # the model's parameters move (either forward path sees them)
        schedule.step()

An optimizer holds the model and a list of *parameter groups*: which parameters (by their
transformers state-dict names, as ``grads`` has them) and with which hyper-parameters. A
parameter in no group is frozen: ``step`` leaves it as it is. ``no_decay_groups(model)`` gives the
usual split, no weight decay on norms and biases (ml-cvnets' recipes), and ``params=`` takes a
list of groups, each a dict with ``"params"`` (names, or a function of the name) and any
hyper-parameters that differ from the optimizer's. State (momentum buffers, Adam's moments, the
step count) is kept per parameter in the parameter's dtype, as PyTorch keeps it;
``state_dict()`` / ``load_state_dict()`` save and restore it, with the groups.

Each update is written as ``torch.optim``'s single-tensor implementation computes it, in the same
order, so that ten float64 steps agree with PyTorch's to round-off (``tests/test_optim.py``).
"""

from __future__ import annotations

import copy
import math

import numpy as np

from .weights.convert import assign, flatten

_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def trainable_names(model) -> list[str]:
    """The names ``value_and_grad``'s ``grads`` has, and the parameters an optimizer can move: the
    model's state-dict names, in order, less batch norm's running statistics (buffers, not
    parameters)."""
    return [name for name in model.state_dict() if name.rsplit(".", 1)[-1] not in _BUFFERS]


def no_decay_groups(model, weight_decay: float | None = None) -> list[dict]:
    """Two parameter groups: the convolution and linear weights (with the optimizer's weight decay,
    or ``weight_decay``), and the norms' scales and shifts and every bias (weight decay 0), as
    ml-cvnets' training recipes split them (``no_decay_bn_filter_bias``)."""
    names = trainable_names(model)
    params = model.state_dict()

    def decays(name):  # a weight of two or more dimensions: a convolution's or a linear layer's
        return name.endswith(".weight") and params[name].ndim >= 2

    decay = {"params": [n for n in names if decays(n)]}
    if weight_decay is not None:
        decay["weight_decay"] = weight_decay
    return [decay, {"params": [n for n in names if not decays(n)], "weight_decay": 0.0}]


class Optimizer:
    """What SGD and AdamW share: the groups, the per-parameter state, ``step``, saving and
    restoring. A subclass gives ``defaults`` and ``_update(param, grad, state, group)``."""

    defaults: dict = {}

    def __init__(self, model, params=None, **hyper):
        unknown = set(hyper) - set(self.defaults)
        if unknown:
            raise TypeError(f"{type(self).__name__}: unknown hyper-parameter(s) {', '.join(sorted(unknown))}; "
                            f"known: {', '.join(self.defaults)}")
        self.model = model
        self.defaults = {**type(self).defaults, **hyper}
        names = trainable_names(model)
        known = set(names)
        groups = [{"params": names}] if params is None else list(params)
        self.param_groups, seen = [], set()
        for i, group in enumerate(groups):
            if not isinstance(group, dict) or "params" not in group:
                raise TypeError(f"{type(self).__name__}: params[{i}] must be a dict with a 'params' entry")
            extra = set(group) - set(self.defaults) - {"params"}
            if extra:
                raise TypeError(f"{type(self).__name__}: params[{i}] has unknown key(s) {', '.join(sorted(extra))}")
            chosen = group["params"]
            chosen = [n for n in names if chosen(n)] if callable(chosen) else list(chosen)
            for name in chosen:
                if name not in known:
                    raise ValueError(f"{type(self).__name__}: params[{i}] names {name!r}, which is not a trainable "
                                     f"parameter of this model")
                if name in seen:
                    raise ValueError(f"{type(self).__name__}: {name!r} is in two parameter groups")
                seen.add(name)
            self.param_groups.append({**self.defaults, **group, "params": chosen})
        for group in self.param_groups:
            self._check(group)
            group.setdefault("initial_lr", group["lr"])  # what a schedule scales (torch's name for it)
        self.state: dict[str, dict] = {}

    def _check(self, group):
        if not group["lr"] >= 0:
            raise ValueError(f"{type(self).__name__}: lr must be >= 0, got {group['lr']}")
        if not group.get("weight_decay", 0) >= 0:
            raise ValueError(f"{type(self).__name__}: weight_decay must be >= 0, got {group['weight_decay']}")

    def step(self, grads: dict) -> None:
        """One update of every parameter of every group from ``grads`` (``value_and_grad``'s: name ->
        gradient). A parameter whose gradient is missing is left as it is (and its state too), as
        PyTorch skips a parameter whose ``.grad`` is None."""
        params = flatten(self.model.params)
        for group in self.param_groups:
            for name in group["params"]:
                grad = grads.get(name)
                if grad is None:
                    continue
                param = params[name]
                if np.shape(grad) != param.shape:
                    raise ValueError(f"{type(self).__name__}.step: the gradient of {name} has shape {np.shape(grad)}, "
                                     f"the parameter {param.shape}")
                grad = np.asarray(grad, dtype=param.dtype)
                new = param.copy()  # (the model's arrays may be read-only views of the loaded file)
                self._update(new, grad, self.state.setdefault(name, {}), group)
                assign(self.model.params, name, new)
        self.model._plan = None  # the fast path's copy of the weights is rebuilt on its next pass

    def _update(self, param, grad, state, group):  # param, in place
        raise NotImplementedError

    def state_dict(self) -> dict:
        """The state (a copy): ``{"state": {name: {key: array or number}}, "param_groups": [...]}``,
        the groups with their hyper-parameters and parameter names, as ``torch.optim`` saves them
        (by name rather than by index)."""
        return {"state": copy.deepcopy(self.state), "param_groups": copy.deepcopy(self.param_groups)}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore what ``state_dict`` saved: the same parameter groups (the same names, in the
        same groups), their hyper-parameters (the learning rate a schedule reached, for one), and
        the state."""
        groups = state_dict.get("param_groups")
        if not isinstance(groups, list) or [g.get("params") for g in groups] != [g["params"] for g in self.param_groups]:
            raise ValueError(f"{type(self).__name__}.load_state_dict: the saved parameter groups are not this "
                             f"optimizer's (other parameters, or grouped otherwise)")
        for i, group in enumerate(groups):  # hyper-parameters of the kinds this optimizer's are (a file may say anything)
            for key, value in group.items():
                default = self.defaults.get(key, 0.0 if key == "initial_lr" else None)
                kind = (bool,) if isinstance(default, bool) else (tuple, list) if isinstance(default, tuple) else (int, float)
                if key != "params" and (default is None or not isinstance(value, kind) or
                                        (kind == (int, float) and (isinstance(value, bool) or not math.isfinite(value)))):
                    raise ValueError(f"{type(self).__name__}.load_state_dict: param_groups[{i}] {key} = {value!r}")
            self._check({**self.defaults, **group})
        params = flatten(self.model.params)
        for name, entry in state_dict.get("state", {}).items():
            if not isinstance(entry, dict) or not all(isinstance(v, np.ndarray) or (isinstance(v, (int, float)) and
                                                      math.isfinite(v)) for v in entry.values()):
                raise ValueError(f"{type(self).__name__}.load_state_dict: the state of {name!r} holds something "
                                 f"other than arrays and numbers")
            if name not in params:
                raise ValueError(f"{type(self).__name__}.load_state_dict: state for {name!r}, which this model lacks")
            for key, value in entry.items():
                if isinstance(value, np.ndarray) and value.shape != params[name].shape:
                    raise ValueError(f"{type(self).__name__}.load_state_dict: {name} {key} has shape {value.shape}, "
                                     f"the parameter {params[name].shape}")
        self.param_groups = copy.deepcopy(groups)
        self.state = {name: {key: (value.astype(params[name].dtype) if isinstance(value, np.ndarray) else value)
                             for key, value in entry.items()} for name, entry in state_dict.get("state", {}).items()}


class SGD(Optimizer):
    """``torch.optim.SGD``: with ``g`` the gradient, ``g += weight_decay * p``; with momentum,
    ``buf = g`` on the first step, then ``buf = momentum * buf + (1 - dampening) * g``, and ``g``
    becomes ``g + momentum * buf`` (Nesterov) or ``buf``; then ``p -= lr * g``. Defaults as
    PyTorch's: lr 1e-3, no momentum, no dampening, no weight decay."""

    defaults = {"lr": 1e-3, "momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0, "nesterov": False}

    def _check(self, group):
        super()._check(group)
        if not group["momentum"] >= 0:
            raise ValueError(f"SGD: momentum must be >= 0, got {group['momentum']}")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("SGD: Nesterov momentum needs a momentum > 0 and no dampening")

    def _update(self, param, grad, state, group):
        if group["weight_decay"] != 0:
            grad = grad + group["weight_decay"] * param
        momentum = group["momentum"]
        if momentum != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = grad.copy()
            else:
                buf *= momentum
                buf += (1 - group["dampening"]) * grad
            grad = grad + momentum * buf if group["nesterov"] else buf
        param -= group["lr"] * grad


class AdamW(Optimizer):
    """``torch.optim.AdamW``: decoupled weight decay ``p *= 1 - lr * weight_decay``, then Adam's
    moments ``m = b1 m + (1 - b1) g`` and ``v = b2 v + (1 - b2) g^2``, and with step t
    ``p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``. Defaults as PyTorch's: lr
    1e-3, betas (0.9, 0.999), eps 1e-8, weight decay 1e-2."""

    defaults = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2}

    def _check(self, group):
        super()._check(group)
        beta1, beta2 = group["betas"]
        if not (0 <= beta1 < 1 and 0 <= beta2 < 1):
            raise ValueError(f"AdamW: betas must lie in [0, 1), got {group['betas']}")
        if not group["eps"] >= 0:
            raise ValueError(f"AdamW: eps must be >= 0, got {group['eps']}")

    def _update(self, param, grad, state, group):
        beta1, beta2 = group["betas"]
        lr = group["lr"]
        if "step" not in state:
            state["step"], state["exp_avg"], state["exp_avg_sq"] = 0, np.zeros_like(param), np.zeros_like(param)
        state["step"] += 1
        step, exp_avg, exp_avg_sq = state["step"], state["exp_avg"], state["exp_avg_sq"]
        param *= 1 - lr * group["weight_decay"]
        exp_avg += (grad - exp_avg) * (1 - beta1)  # torch's lerp_(grad, 1 - beta1)
        exp_avg_sq *= beta2
        exp_avg_sq += (1 - beta2) * grad * grad
        bias_correction1 = 1 - beta1**step
        bias_correction2_sqrt = math.sqrt(1 - beta2**step)
        denom = np.sqrt(exp_avg_sq) / bias_correction2_sqrt + group["eps"]
        param -= (lr / bias_correction1) * exp_avg / denom


class CosineWithWarmup:
    """The learning rate of every group, as a multiple of its initial one, after ``t`` calls of
    ``step()``: a linear warm-up from ``warmup_start_factor`` to 1 over ``warmup_steps``, then a
    half cosine down to ``min_lr`` at ``total_steps``:

    - ``t < warmup_steps``: ``lr0 * (s + (1 - s) * t / warmup_steps)``;
    - after: ``min_lr + (lr0 - min_lr) * (1 + cos(pi * (t - warmup_steps) / (total_steps - warmup_steps))) / 2``,
      and ``min_lr`` from ``total_steps`` on.

    PyTorch's ``SequentialLR([LinearLR(start_factor=s, total_iters=warmup_steps),
    CosineAnnealingLR(T_max=total_steps - warmup_steps, eta_min=min_lr)], milestones=[warmup_steps])``
    gives the same rates (to round-off; ``tests/test_optim.py``). It sets the rate for the first
    step when it is made, and is stepped after each optimizer step."""

    def __init__(self, optimizer, total_steps: int, warmup_steps: int = 0, warmup_start_factor: float = 0.0,
                 min_lr: float = 0.0):
        if not (isinstance(total_steps, int) and isinstance(warmup_steps, int) and 0 <= warmup_steps < total_steps):
            raise ValueError(f"CosineWithWarmup: need whole numbers 0 <= warmup_steps < total_steps, got "
                             f"warmup_steps={warmup_steps!r}, total_steps={total_steps!r}")
        if not 0 <= warmup_start_factor <= 1:
            raise ValueError(f"CosineWithWarmup: warmup_start_factor must lie in [0, 1], got {warmup_start_factor}")
        self.optimizer, self.total_steps, self.warmup_steps = optimizer, total_steps, warmup_steps
        self.warmup_start_factor, self.min_lr = warmup_start_factor, min_lr
        self.last_step = 0
        self._apply()

    def lr(self, initial_lr: float, t: int) -> float:
        if t < self.warmup_steps:
            s = self.warmup_start_factor
            return initial_lr * (s + (1 - s) * t / self.warmup_steps)
        progress = min(1.0, (t - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        return self.min_lr + (initial_lr - self.min_lr) * (1 + math.cos(math.pi * progress)) / 2

    def step(self) -> None:
        self.last_step += 1
        self._apply()

    def _apply(self):
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr(group["initial_lr"], self.last_step)

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"last_step": self.last_step}

    def load_state_dict(self, state_dict: dict) -> None:
        step = state_dict["last_step"]
        if not (isinstance(step, int) and 0 <= step <= self.total_steps):
            raise ValueError(f"CosineWithWarmup.load_state_dict: last_step must be a whole number from 0 to "
                             f"{self.total_steps}, got {step!r}")
        self.last_step = step
        self._apply()


def clip_grad_norm(grads: dict, max_norm: float) -> float:
    """``torch.nn.utils.clip_grad_norm_``: the total 2-norm of all the gradients; if above
    ``max_norm``, every gradient is scaled (in place) by ``max_norm / (total + 1e-6)``. Returns the
    norm before clipping."""
    total = math.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in grads.values() if g is not None))
    coef = max_norm / (total + 1e-6)
    if coef < 1:
        for g in grads.values():
            if g is not None:
                g *= coef
    return total
