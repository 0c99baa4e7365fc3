"""Reference checkpoints written by transformers, with every tensor overwritten by random values.

Default initialisation leaves batch norm close to the identity and the group norms trivial, which
hides bugs in the parts it makes invisible. Here every parameter and every BN running statistic is
drawn anew, with O(1) effect, so each layer changes the output.
"""

from __future__ import annotations

import math
import re

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

    ours_only = ("label2id", "behavior", "patch_remainder", "dilate_local_conv")  # transformers computes its own
    return transformers.MobileViTV2Config(**{k: v for k, v in config.to_dict().items() if k not in ours_only})


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


def to_cvnets(name: str, n_layers: list[int], segmentation: bool) -> str:
    """transformers' name -> ml-cvnets', the conversion script's renaming run backwards."""
    conv = {"convolution": "block.conv", "normalization": "block.norm"}
    ir = {"expand_1x1": "exp_1x1", "conv_3x3": "conv_3x3", "reduce_1x1": "red_1x1"}
    if name.startswith("classifier."):
        return "classifier.1." + name.split(".", 1)[1]
    if name.startswith("segmentation_head."):
        rest = name[len("segmentation_head."):]
        m = re.fullmatch(r"aspp\.convs\.4\.conv_1x1\.(convolution|normalization)\.(\w+)", rest)
        if m:
            return f"seg_head.aspp.aspp_layer.convs.4.aspp_pool.conv_1x1.{conv[m[1]]}.{m[2]}"
        m = re.fullmatch(r"aspp\.(convs\.\d|project)\.(convolution|normalization)\.(\w+)", rest)
        if m:
            return f"seg_head.aspp.aspp_layer.{m[1]}.{conv[m[2]]}.{m[3]}"
        m = re.fullmatch(r"classifier\.convolution\.(\w+)", rest)
        return f"seg_head.classifier.block.conv.{m[1]}"
    name = name[len("mobilevitv2."):]
    outer = "encoder." if segmentation else ""
    m = re.fullmatch(r"conv_stem\.(convolution|normalization)\.(\w+)", name)
    if m:
        return f"{outer}conv_1.{conv[m[1]]}.{m[2]}"
    m = re.fullmatch(r"encoder\.layer\.(\d)\.(layer\.(\d+)|downsampling_layer)\.(\w+)\.(convolution|normalization)\.(\w+)", name)
    if m:
        block = m[3] if m[3] is not None else "0"
        return f"{outer}layer_{int(m[1]) + 1}.{block}.block.{ir[m[4]]}.{conv[m[5]]}.{m[6]}"
    m = re.fullmatch(r"encoder\.layer\.(\d)\.(.+)", name)
    stage, rest = int(m[1]), m[2]
    head = f"{outer}layer_{stage + 1}.1."
    table = [
        (r"conv_kxk\.(convolution|normalization)\.(\w+)", lambda m: f"local_rep.0.{conv[m[1]]}.{m[2]}"),
        (r"conv_1x1\.convolution\.(\w+)", lambda m: f"local_rep.1.block.conv.{m[1]}"),
        (r"conv_projection\.(convolution|normalization)\.(\w+)", lambda m: f"conv_proj.{conv[m[1]]}.{m[2]}"),
        (r"layernorm\.(\w+)", lambda m: f"global_rep.{n_layers[stage - 2]}.{m[1]}"),
        (r"transformer\.layer\.(\d+)\.layernorm_before\.(\w+)", lambda m: f"global_rep.{m[1]}.pre_norm_attn.0.{m[2]}"),
        (r"transformer\.layer\.(\d+)\.attention\.(qkv_proj|out_proj)\.convolution\.(\w+)",
         lambda m: f"global_rep.{m[1]}.pre_norm_attn.1.{m[2]}.block.conv.{m[3]}"),
        (r"transformer\.layer\.(\d+)\.layernorm_after\.(\w+)", lambda m: f"global_rep.{m[1]}.pre_norm_ffn.0.{m[2]}"),
        (r"transformer\.layer\.(\d+)\.ffn\.conv([12])\.convolution\.(\w+)",
         lambda m: f"global_rep.{m[1]}.pre_norm_ffn.{1 if m[2] == '1' else 3}.block.conv.{m[3]}"),
    ]
    for pattern, make in table:
        m = re.fullmatch(pattern, rest)
        if m:
            return head + make(m)
    raise AssertionError(f"no ml-cvnets name for {name}")


def cvnets_checkpoint(ref, config, segmentation):
    """A transformers model's state dict under ml-cvnets' names (NumPy arrays); a segmentation
    model's gets an auxiliary head (``seg_head.aux_head.*``, trained, then left out by the
    conversion), laid out as ml-cvnets' ``BaseSegHead`` builds it: a 3x3 conv (+BN) on stage 4's
    output to max(C4 // 4, 128) channels, dropout, a 1x1 conv with bias to the classes."""
    state = {to_cvnets(k, config.n_attn_blocks, segmentation): v.detach().numpy()
             for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    if segmentation:
        c4 = config.hidden_sizes[3]
        inner = max(c4 // 4, 128)
        rng = np.random.default_rng(0)
        aux = {"0.block.conv.weight": (inner, c4, 3, 3), "0.block.norm.weight": (inner,), "0.block.norm.bias": (inner,),
               "0.block.norm.running_mean": (inner,), "0.block.norm.running_var": (inner,),
               "2.block.conv.weight": (config.num_labels, inner, 1, 1), "2.block.conv.bias": (config.num_labels,)}
        for name, shape in aux.items():
            state[f"seg_head.aux_head.{name}"] = rng.standard_normal(shape).astype(np.float32)
        state["seg_head.aux_head.0.block.norm.num_batches_tracked"] = np.array(7, np.int64)
    return state
