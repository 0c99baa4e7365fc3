"""``numpy_mvit2.summary``: parameters per stage and per layer against the transformers model's own
modules, multiply-accumulates against ``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs per
MAC), folded counts against ``model.num_parameters()``, output shapes against the forward pass."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import quick, require
from reference import make_reference

from numpy_mvit2 import (
    MobileViTV2Config,
    MobileViTV2ForImageClassification,
    MobileViTV2ForSemanticSegmentation,
    MobileViTV2Model,
)
from numpy_mvit2.summary import format_summary, summarize

torch = require("torch")
transformers = require("transformers")
FlopCounterMode = require("torch.utils.flop_counter").FlopCounterMode

OURS = {"base": MobileViTV2Model, "classification": MobileViTV2ForImageClassification,
        "segmentation": MobileViTV2ForSemanticSegmentation}
CASES = [
    ("classification", {"num_labels": 1000}, (256, 256)),
    ("classification", {"num_labels": 10, "width_multiplier": 0.75}, (97, 130)),  # sizes the patches do not divide
    ("segmentation", {"num_labels": 21, "output_stride": 16, "width_multiplier": 0.5}, (128, 96)),
    ("segmentation", {"num_labels": 5, "output_stride": 8, "width_multiplier": 0.5, "aspp_out_channels": 64}, (64, 80)),
    ("base", {"width_multiplier": 1.25, "n_attn_blocks": [1, 2, 1]}, (67, 67)),
]


def flop_counts(model, height, width):
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, model.config.num_channels, height, width))
    prefix = type(model).__name__ + "."
    per_module = {name[len(prefix):]: sum(ops.values()) for name, ops in counter.get_flop_counts().items()
                  if name.startswith(prefix)}
    return counter.get_total_flops(), per_module


def torch_name(row, head):
    """Our row names are the checkpoint's; the backbone sits under ``mobilevitv2.`` with a head."""
    if head == "base" or row.stage == "head":
        return row.name
    return "mobilevitv2." + row.name


@pytest.mark.parametrize(("head", "settings", "size"), quick(CASES, 3), ids=[f"{c[0]}-{c[2][0]}x{c[2][1]}" for c in CASES])
def test_against_transformers(head, settings, size):
    config = MobileViTV2Config(**settings)
    reference = make_reference(config, head)
    total_flops, per_module = flop_counts(reference, *size)
    stages = summarize(config, *size, head=head)
    layers = summarize(config, *size, head=head, per_layer=True)

    # parameters: per stage and per layer, as transformers' modules hold them
    assert sum(r.params for r in stages) == sum(p.numel() for p in reference.parameters())
    for row in stages + layers:
        module = reference.get_submodule(torch_name(row, head))
        assert row.params == sum(p.numel() for p in module.parameters()), row.name

    # FLOPs: FlopCounterMode counts 2 per multiply-accumulate, for convolutions and matrix products
    assert 2 * sum(r.macs for r in stages) == total_flops
    for row in stages + [r for r in layers if r.kind != "group norm"]:
        assert 2 * row.macs == per_module.get(torch_name(row, head), 0), row.name

    # folded parameters: what numpy_mvit2's model holds
    ours = OURS[head](config, seed=0)
    assert sum(r.params_folded for r in stages) == ours.num_parameters() == sum(r.params_folded for r in layers)

    # output shapes: each stage's is its hidden state
    out = ours(np.zeros((1, 3, *size), np.float32), output_hidden_states=True)
    assert [r.output_shape for r in stages if r.stage.startswith("stage")] == [h.shape[1:] for h in out.hidden_states]
    if head != "base":
        assert stages[-1].output_shape == out.logits.shape[1:]


@pytest.mark.slow
def test_timm_layout_with_resized_patches():
    """``patch_remainder="resize"`` (timm, ml-cvnets): the block's input is resized up to a multiple
    of the patch size; timm's mobilevitv2_100 gives the same parameters and FLOPs."""
    timm = require("timm")
    model = timm.create_model("mobilevitv2_100", pretrained=False).eval()
    config = MobileViTV2Config(num_labels=1000, patch_remainder="resize")
    for size in [(256, 256), (200, 150)]:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.zeros(1, 3, *size))
        rows = summarize(config, *size)
        assert 2 * sum(r.macs for r in rows) == counter.get_total_flops()
        assert sum(r.params for r in rows) == sum(p.numel() for p in model.parameters())


def test_defaults_and_errors():
    config = MobileViTV2Config(num_labels=1000)
    rows = summarize(config)  # the config's image_size, square
    assert rows[0].output_shape == (32, 128, 128) and rows[-1].output_shape == (1000,)
    assert sum(r.params_folded for r in rows) == 4894065
    assert 1.8e9 < sum(r.macs for r in rows) < 1.85e9  # MobileViTv2-1.0: the paper's 1.8 G at 256x256
    with pytest.raises(ValueError, match="too small"):
        summarize(config, 16, 16)
    with pytest.raises(ValueError, match="head"):
        summarize(config, head="detection")
    text = format_summary(rows, title="x")
    assert "4,894,065" in text and "MACs" in text and text.startswith("x\n")
    assert rows[3].to_dict()["output_shape"] == [256, 32, 32]
