"""Reference checkpoints written by transformers, with every tensor overwritten by random values.

Default initialisation leaves batch norm close to the identity and the group norms trivial, which
hides bugs in the parts it makes invisible. Here every parameter and every BN running statistic is
drawn anew, with O(1) effect, so each layer changes the output.
"""

from __future__ import annotations

import math

import numpy as np

from numpy_mvit2 import (
    MobileViTV2Config,
    MobileViTV2ForImageClassification,
    MobileViTV2ForSemanticSegmentation,
    MobileViTV2Model,
)

# our model class per head, beside transformers' class name per head (HEADS)
OURS = {
    "base": MobileViTV2Model,
    "classification": MobileViTV2ForImageClassification,
    "segmentation": MobileViTV2ForSemanticSegmentation,
}
HEADS = {
    "base": "MobileViTV2Model",
    "classification": "MobileViTV2ForImageClassification",
    "segmentation": "MobileViTV2ForSemanticSegmentation",
}


def torch_config(config: MobileViTV2Config):
    import transformers

    return transformers.MobileViTV2Config(**{k: v for k, v in config.to_dict().items() if k not in ("label2id",)})


def randomize_(model, seed: int) -> None:
    """Overwrite every parameter and buffer of a torch model in place with O(1)-effect values."""
    import torch

    gen = torch.Generator().manual_seed(seed)

    def rand(shape, low, high):
        return torch.rand(shape, generator=gen, dtype=torch.float64) * (high - low) + low

    def normal(shape, std):
        return torch.randn(shape, generator=gen, dtype=torch.float64) * std

    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            shape = tensor.shape
            if name.endswith("running_var"):
                value = rand(shape, 0.5, 2.0)
            elif name.endswith("running_mean"):
                value = normal(shape, 0.3)
            elif tensor.ndim == 1 and name.endswith("weight"):  # BN / group-norm scales
                value = rand(shape, 0.6, 1.4)
            elif tensor.ndim == 1:  # biases
                value = normal(shape, 0.2)
            else:  # conv / linear weights: unit gain through the layer, scaled by a random factor
                fan_in = math.prod(shape[1:])
                value = normal(shape, 1.0 / math.sqrt(fan_in)) * float(rand((), 0.8, 1.6))
            tensor.copy_(value.to(tensor.dtype))


def make_reference(config: MobileViTV2Config, head: str, seed: int = 0, dtype=None):
    """A transformers model of ``head`` for ``config``, eval mode, randomized."""
    import torch
    import transformers

    torch.manual_seed(seed)
    model = getattr(transformers, HEADS[head])(torch_config(config)).eval()
    if dtype is not None:
        model = model.to(dtype)
    randomize_(model, seed)
    return model


def save_reference(model, folder) -> None:
    """Write ``config.json`` and ``model.safetensors`` as transformers' ``save_pretrained`` does."""
    model.save_pretrained(str(folder), safe_serialization=True)


def run_reference(model, pixel_values: np.ndarray, **kwargs):
    import torch

    dtype = next(model.parameters()).dtype
    with torch.no_grad():
        return model(torch.from_numpy(pixel_values).to(dtype), **kwargs)


def relative_error(ours, theirs) -> float:
    """``max|ours - theirs| / (1 + max|theirs|)``, the measure of the bar."""
    theirs = theirs.detach().double().numpy() if hasattr(theirs, "detach") else np.asarray(theirs, dtype=np.float64)
    ours = np.asarray(ours, dtype=np.float64)
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    return float(np.max(np.abs(ours - theirs)) / (1.0 + np.max(np.abs(theirs))))


def make_timm_reference(width: float, seed: int = 0, num_classes: int = 1000):
    """timm's ``mobilevitv2_XXX`` with every parameter and BN statistic randomized, eval mode."""
    import timm
    import torch

    torch.manual_seed(seed)
    model = timm.create_model(f"mobilevitv2_{round(width * 100):03d}", pretrained=False, num_classes=num_classes).eval()
    randomize_(model, seed)
    return model


def save_timm_reference(model, folder, safe_serialization=True) -> None:
    """``config.json`` and ``model.safetensors`` (or ``pytorch_model.bin``) as timm writes them
    for the Hub (``timm.models.save_for_hf``)."""
    from timm.models import save_for_hf

    save_for_hf(model, str(folder), safe_serialization=safe_serialization)
