"""Seeded random weights, for teaching and experiments without a checkpoint.

These are *not* pretrained weights and give meaningless predictions. They are drawn so that
activations keep a sensible scale through the network: convolutions and linear layers from
He-normal ``N(0, 2 / fan_in)``, biases zero, batch norms and group norms the identity
(``gamma = 1, beta = 0, mean = 0, var = 1``). That differs from transformers' own ``_init_weights``,
which is meant for training from scratch, not for looking at activations.
"""

from __future__ import annotations

import math

import numpy as np

from ..config import MobileViTV2Config
from .shapes import expected_shapes


def random_state_dict(config: MobileViTV2Config, head: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Every tensor ``expected_shapes(config, head)`` lists, drawn from ``np.random.default_rng(seed)``
    in float64, in the order the checkpoint lists them (so a seed always gives the same weights)."""
    rng = np.random.default_rng(seed)
    state = {}
    for name, shape in expected_shapes(config, head).items():
        if name.endswith("running_var") or (name.endswith(".weight") and len(shape) == 1):
            state[name] = np.ones(shape)  # BN variance, BN and group-norm scales
        elif len(shape) == 1:
            state[name] = np.zeros(shape)  # biases, BN means
        else:
            fan_in = int(np.prod(shape[1:]))
            state[name] = rng.normal(0.0, math.sqrt(2.0 / fan_in), size=shape)
    return state
