"""``output_attentions``: every transformer layer's context scores, which transformers does not return.

The scores of a layer are ``softmax over the N patches`` of the query, the first channel of the
layer's ``qkv_proj`` output. Here they are checked for shape and normalisation, and against the
same softmax recomputed from the query that transformers' own PyTorch modules produce (read with
forward hooks on ``attention.qkv_proj``).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import quick, require
from reference import OURS, make_reference, run_reference, save_reference

from numpy_mvit2 import (
    MobileViTV2Config,
    MobileViTV2Model,
)

CONFIG = {"width_multiplier": 0.5, "n_attn_blocks": [2, 3, 2], "aspp_out_channels": 32, "num_labels": 5}
HEIGHT, WIDTH = 160, 128  # stage 5 sees 5 x 4: the patches leave a row uncovered


def pixels(batch=2, height=HEIGHT, width=WIDTH, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).uniform(-1.5, 1.5, size=(batch, 3, height, width)).astype(dtype)


def expected_shapes(config, batch, height, width):
    """(B, 1, P, N) for each transformer layer of stages 3 to 5."""
    sizes = config.feature_map_sizes(height, width)[1:]
    p = config.patch_size
    shapes = []
    for spec, (h, w) in zip(config.stages, sizes):
        shapes += [(batch, 1, p * p, (h // p) * (w // p))] * spec.n_attn_blocks
    return shapes


@pytest.mark.parametrize("head", sorted(OURS))
def test_shapes_count_and_normalisation(head):
    config = MobileViTV2Config(**CONFIG)
    model = OURS[head](config, seed=1)
    x = pixels()
    out = model(x, output_attentions=True)
    assert isinstance(out.attentions, tuple)
    assert len(out.attentions) == sum(spec.n_attn_blocks for spec in config.stages) == 7
    assert [a.shape for a in out.attentions] == expected_shapes(config, *x.shape[:1], HEIGHT, WIDTH)
    for scores in out.attentions:
        assert scores.dtype == np.float32
        assert np.all(scores >= 0)
        np.testing.assert_allclose(scores.sum(axis=-1), 1.0, atol=1e-6)


@pytest.mark.parametrize("head", sorted(OURS))
def test_off_by_default_and_outputs_unchanged(head):
    config = MobileViTV2Config(**CONFIG)
    model = OURS[head](config, seed=2)
    x = pixels(batch=1)
    plain = model(x, output_hidden_states=True)
    with_attn = model(x, output_hidden_states=True, output_attentions=True)
    assert plain.attentions is None and "attentions" not in plain
    for a, b in zip(plain.to_tuple(), with_attn.to_tuple()):
        if isinstance(a, tuple):
            assert all(np.array_equal(u, v) for u, v in zip(a, b))
        else:
            assert np.array_equal(a, b)
    assert with_attn.keys()[-1] == "attentions"
    assert len(with_attn) == len(plain) + 1


@pytest.mark.parametrize("head", sorted(OURS))
def test_tuple_output_puts_attentions_last(head):
    config = MobileViTV2Config(**CONFIG)
    model = OURS[head](config, seed=3)
    x = pixels(batch=1)
    as_dict = model(x, output_hidden_states=True, output_attentions=True)
    as_tuple = model(x, output_hidden_states=True, output_attentions=True, return_dict=False)
    assert len(as_tuple) == len(as_dict.to_tuple())
    assert isinstance(as_tuple[-1], tuple) and len(as_tuple[-1]) == 7
    assert all(np.array_equal(a, b) for a, b in zip(as_tuple[-1], as_dict.attentions))
    assert len(model(x, return_dict=False)) == len(as_tuple) - 2


def test_config_default_and_override():
    config = MobileViTV2Config(**CONFIG)
    assert config.output_attentions is False
    model = MobileViTV2Model(config, seed=0)
    x = pixels(batch=1, height=64, width=64)
    model.config.output_attentions = True
    assert len(model(x).attentions) == 7
    assert model(x, output_attentions=False).attentions is None
    assert MobileViTV2Config(output_attentions=True).output_attentions is True


def test_float64_scores():
    model = MobileViTV2Model(MobileViTV2Config(**CONFIG), seed=4, dtype=np.float64)
    out = model(pixels(batch=1), output_attentions=True)
    assert all(a.dtype == np.float64 for a in out.attentions)
    for scores in out.attentions:
        np.testing.assert_allclose(scores.sum(axis=-1), 1.0, rtol=0, atol=1e-14)


# --------------------------------------------------------------------------------------------
# Against the query projection of transformers' PyTorch modules
# --------------------------------------------------------------------------------------------


def reference_scores(ref, x):
    """Softmax over the patches of channel 0 of every ``attention.qkv_proj`` output, in call order."""
    torch = require("torch")
    recorded = []

    def hook(module, inputs, output):
        recorded.append(torch.softmax(output[:, :1].double(), dim=-1).numpy())

    handles = [m.register_forward_hook(hook) for name, m in ref.named_modules() if name.endswith("attention.qkv_proj")]
    try:
        run_reference(ref, x)
    finally:
        for h in handles:
            h.remove()
    return recorded


@pytest.mark.parametrize("head,dtype,bar", quick([
    ("classification", np.float32, 2e-6),
    ("segmentation", np.float32, 2e-6),
    ("base", np.float64, 1e-12),
], 2))
def test_scores_match_transformers_query_projection(tmp_path, head, dtype, bar):
    require("torch")
    require("transformers")
    config = MobileViTV2Config(**CONFIG)
    ref = make_reference(config, head, seed=5)
    save_reference(ref, tmp_path)
    if dtype == np.float64:
        ref = ref.double()
    ours = OURS[head].from_pretrained(tmp_path, dtype=dtype)
    x = pixels(dtype=dtype)
    expected = reference_scores(ref, x)
    got = ours(x, output_attentions=True).attentions
    assert len(got) == len(expected) == 7
    for i, (a, b) in enumerate(zip(got, expected)):
        assert a.shape == b.shape, (i, a.shape, b.shape)
        err = float(np.max(np.abs(a.astype(np.float64) - b)))
        assert err <= bar, f"layer {i}: max abs error {err:.3g} > {bar}"
