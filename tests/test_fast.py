"""The fast path (``numpy_mvit2.fast``, ``model.fast = True``) against the reference path
(``numpy_mvit2.blocks``, ``model.fast = False``) on the same weights: odd sizes, dilations, batch
sizes, widths, kernel and patch sizes, activations, float64, the attention scores, and the switch.
No torch needed: ``tests/test_parity.py`` runs both paths against transformers."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import quick

from numpy_mvit2 import (
    MobileViTV2Config,
    MobileViTV2ForImageClassification,
    MobileViTV2ForSemanticSegmentation,
    MobileViTV2Model,
    blocks,
    team,
)
from numpy_mvit2 import fast as fast_path
from numpy_mvit2.fast import executors, layers

MODELS = {
    "base": MobileViTV2Model,
    "classification": MobileViTV2ForImageClassification,
    "segmentation": MobileViTV2ForSemanticSegmentation,
}
BARS = {np.float32: 2e-5, np.float64: 1e-10}


def relative_error(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max() / (1 + np.abs(b).max()))


def pixels(batch, height, width, channels=3, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).uniform(-1.5, 1.5, size=(batch, channels, height, width)).astype(dtype)


def both_paths(model, x, **kwargs):
    model.fast = True
    fast = model(x, output_hidden_states=True, **kwargs)
    model.fast = False
    ref = model(x, output_hidden_states=True, **kwargs)
    model.fast = True
    return fast, ref


def assert_same(fast, ref, bar):
    names = [n for n in ("logits", "last_hidden_state", "pooler_output") if getattr(ref, n, None) is not None]
    for name in names:
        assert relative_error(getattr(fast, name), getattr(ref, name)) <= bar, name
    assert len(fast.hidden_states) == len(ref.hidden_states) == 5
    for i, (a, b) in enumerate(zip(fast.hidden_states, ref.hidden_states)):
        assert relative_error(a, b) <= bar, f"hidden_states[{i}]"


# width, head, output_stride, batch, height, width (pixels), extra config
CASES = [
    (0.5, "classification", 32, 1, 64, 64, {}),
    (0.75, "segmentation", 32, 3, 33, 47, {}),  # every stage has a border that no patch covers
    (1.0, "base", 16, 3, 70, 54, {}),  # dilation 2 in stage 5
    (1.0, "segmentation", 8, 1, 66, 38, {}),  # dilations 2 and 4, atrous rates larger than the map
    (2.0, "classification", 32, 1, 97, 131, {}),
    (0.5, "segmentation", 16, 3, 130, 98, {"atrous_rates": [1, 2, 3], "aspp_out_channels": 48}),  # every ASPP tap sees pixels
    (0.5, "classification", 32, 1, 96, 80, {"patch_size": 3, "conv_kernel_size": 5, "hidden_act": "gelu"}),
    (0.5, "base", 32, 2, 64, 96, {"hidden_act": "relu", "n_attn_blocks": [1, 2, 1], "ffn_multiplier": 3, "expand_ratio": 3.0}),
    (0.5, "classification", 32, 1, 64, 64, {"num_channels": 1, "num_labels": 0}),
    (0.5, "base", 32, 1, 288, 320, {}),  # large enough for several row bands per image
    (0.5, "classification", 32, 2, 100, 77, {"patch_remainder": "resize"}),  # timm's behaviour: maps resized up
    (0.75, "segmentation", 16, 1, 33, 47, {"patch_remainder": "resize", "patch_size": 3}),
    (0.5, "base", 32, 1, 20, 20, {"patch_remainder": "resize"}),  # smaller than a patch at stage 5
]


@pytest.mark.parametrize("width,head,output_stride,batch,height,image_width,extra", quick(CASES, 0, 2, 5, 12))
def test_fast_matches_reference(width, head, output_stride, batch, height, image_width, extra):
    config = MobileViTV2Config(width_multiplier=width, output_stride=output_stride, **extra)
    model = MODELS[head](config, seed=int(width * 10) + output_stride)
    fast, ref = both_paths(model, pixels(batch, height, image_width, config.num_channels))
    assert fast.hidden_states[0].dtype == np.float32
    assert_same(fast, ref, BARS[np.float32])


@pytest.mark.parametrize("head,output_stride", quick([("classification", 32), ("segmentation", 8), ("base", 16)], 0))
def test_fast_matches_reference_float64(head, output_stride):
    config = MobileViTV2Config(width_multiplier=0.75, output_stride=output_stride)
    model = MODELS[head](config, seed=4, dtype=np.float64)
    fast, ref = both_paths(model, pixels(2, 68, 50, dtype=np.float64))
    assert fast.hidden_states[0].dtype == np.float64
    assert_same(fast, ref, BARS[np.float64])


def test_band_sizes_do_not_change_the_result(monkeypatch):
    """Row bands of one row, of a few rows, and whole images give the same numbers."""
    model = MobileViTV2Model(MobileViTV2Config(width_multiplier=0.5, output_stride=16), seed=2)
    x = pixels(2, 77, 61)
    model.fast = False
    ref = model(x, output_hidden_states=True)
    model.fast = True
    for band in (1, 5000, 1 << 30):
        monkeypatch.setattr(layers, "BAND_ELEMENTS", band)
        assert_same(model(x, output_hidden_states=True), ref, BARS[np.float32])


def test_batch_norm_kept_apart_is_folded_by_the_fast_path():
    config = MobileViTV2Config(width_multiplier=0.5, num_labels=5)
    folded = MobileViTV2ForImageClassification(config, seed=6)
    unfolded = MobileViTV2ForImageClassification(config, seed=6, fold_batch_norm=False)
    assert not unfolded.batch_norm_folded
    x = pixels(2, 64, 72)
    fast, ref = both_paths(unfolded, x)
    assert_same(fast, ref, BARS[np.float32])
    assert relative_error(fast.logits, folded(x).logits) <= BARS[np.float32]
    assert "normalization" in unfolded.params["mobilevitv2"]["conv_stem"]  # the params are untouched


def capture_reference_scores(monkeypatch):
    """Record the context scores the reference path computes, layer by layer."""
    scores = []
    original = blocks.linear_self_attention

    def recording(*args, **kwargs):
        out, s = original(*args, **kwargs)
        scores.append(s)
        return out, s

    monkeypatch.setattr(blocks, "linear_self_attention", recording)
    return scores


def fast_records(model, x, entry=None):
    """What the fast path's entry for the model's head records, as (name, array) pairs in order."""
    entry = entry or {"base": fast_path.backbone, "classification": fast_path.image_classification,
                      "segmentation": fast_path.semantic_segmentation}[model.head]
    records = []
    out = entry(model._pixels(x), model._plan, record=lambda name, array: records.append((name, array)))
    return out, records


def scores_of(records):
    return [a for name, a in records if name.endswith(".attention.scores")]


@pytest.mark.parametrize("height,width,batch", [(64, 64, 1), (75, 50, 3)])
def test_attentions_match_reference(monkeypatch, height, width, batch):
    config = MobileViTV2Config(width_multiplier=0.5, n_attn_blocks=[2, 1, 3])
    model = MobileViTV2Model(config, seed=8)
    x = pixels(batch, height, width)
    _, records = fast_records(model, x)
    attentions = scores_of(records)
    expected = capture_reference_scores(monkeypatch)
    model.fast = False
    model(x)
    assert len(attentions) == len(expected) == 6
    for a, b in zip(attentions, expected):
        assert a.shape == b.shape and a.shape[:2] == (batch, 1) and a.shape[2] == config.patch_size**2
        np.testing.assert_allclose(a.sum(axis=-1), 1, rtol=1e-5)
        assert relative_error(a, b) <= 1e-5  # probabilities: float32 round-off, accumulated over the layers


def test_switch():
    config = MobileViTV2Config(width_multiplier=0.5)
    model = MobileViTV2ForImageClassification(config, seed=1)
    assert model.fast is True and model._plan is not None
    plan = model._plan
    x = pixels(1, 64, 64)
    model(x)
    model(x)
    assert model._plan is plan  # built once, at load, not per call
    reference = MobileViTV2ForImageClassification(config, seed=1, fast=False)
    assert reference.fast is False and reference._plan is None
    reference.fast = True  # switching on later builds the plan on first use
    assert relative_error(reference(x).logits, model(x).logits) == 0
    assert reference._plan is not None


def test_from_pretrained_takes_fast(tmp_path):
    config = MobileViTV2Config(width_multiplier=0.5, num_labels=3)
    model = MobileViTV2ForSemanticSegmentation(config, seed=3)
    config.save_pretrained(tmp_path)
    from safetensors.numpy import save_file

    save_file(model.state_dict(), str(tmp_path / "model.safetensors"))
    loaded = MobileViTV2ForSemanticSegmentation.from_pretrained(tmp_path, fast=False)
    assert loaded.fast is False
    x = pixels(1, 64, 64)
    assert relative_error(loaded(x).logits, model(x).logits) <= BARS[np.float32]


def test_records_name_every_stage_and_layer_in_forward_order():
    """``record`` sees the stage outputs under ``encoder.layer.{i}``, the context scores under
    ``encoder.layer.{i}.transformer.layer.{j}.attention.scores`` (before their stage's output) and,
    for the classification head, ``pooler``; in forward order; the arrays outlive the call."""
    config = MobileViTV2Config(width_multiplier=0.5, n_attn_blocks=[2, 1, 1], num_labels=4)
    model = MobileViTV2ForImageClassification(config, seed=3)
    x = pixels(2, 64, 64)
    logits, records = fast_records(model, x)
    names = [name for name, _ in records]
    layers_of = {2: 2, 3: 1, 4: 1}
    expected = []
    for i in range(5):
        expected += [f"encoder.layer.{i}.transformer.layer.{j}.attention.scores" for j in range(layers_of.get(i, 0))]
        expected.append(f"encoder.layer.{i}")
    assert names == expected + ["pooler"]
    kept = [a.copy() for _, a in records]
    fast_records(model, pixels(2, 64, 64, seed=1))
    assert all(np.array_equal(a, b) for (_, a), b in zip(records, kept))
    ref = model(x, output_hidden_states=True)
    assert relative_error(logits, ref.logits) == 0
    assert all(relative_error(a, b) == 0 for a, b in zip([a for n, a in records if n.count(".") == 2], ref.hidden_states))
    assert records[-1][1].shape == (2, 256)


def test_hidden_states_are_dropped_unless_asked():
    """Without a record the fast path keeps only the last stage's output."""
    model = MobileViTV2Model(MobileViTV2Config(width_multiplier=0.5), seed=0)
    x = pixels(2, 64, 64)
    last = fast_path.backbone(x, model._plan)
    assert last.shape == (2, 256, 2, 2)
    out = model(x)
    assert out.hidden_states is None
    assert relative_error(out.last_hidden_state, model(x, output_hidden_states=True).hidden_states[-1]) == 0


def test_params_edited_in_place_need_a_rebuild():
    model = MobileViTV2ForImageClassification(MobileViTV2Config(width_multiplier=0.5), seed=0)
    x = pixels(1, 64, 64)
    before = model(x).logits
    model.params["mobilevitv2"]["conv_stem"]["convolution"]["bias"] += 1
    model.rebuild_fast_plan()
    after = model(x).logits
    model.fast = False
    assert relative_error(after, model(x).logits) <= BARS[np.float32]
    assert relative_error(after, before) > 1e-4


@pytest.mark.parametrize("batch,n_threads", quick([(b, n) for b in (1, 3) for n in (1, 2, 3)], 1))
def test_threads_do_not_change_the_result(monkeypatch, n_threads, batch):
    """Batches split across threads, and single images split by rows and pixel positions (here
    down to the smallest pieces), give the reference numbers, the attention scores in batch order;
    OpenBLAS's thread count is restored afterwards."""
    import threadpoolctl

    monkeypatch.setattr(executors, "THREADS", n_threads)
    monkeypatch.setattr(executors.Threads, "part_elements", 1)
    monkeypatch.setattr(team, "PROCESSES", False)  # threads (tests/test_team.py tests the processes)
    model = MobileViTV2ForSemanticSegmentation(MobileViTV2Config(width_multiplier=0.5, output_stride=16), seed=5)
    x = pixels(batch, 70, 90)
    before = [info["num_threads"] for info in threadpoolctl.threadpool_info()]
    model.fast = True
    _, records = fast_records(model, x)
    attentions = scores_of(records)
    states = [a for name, a in records if name.count(".") == 2]
    fast, ref = both_paths(model, x)
    assert_same(fast, ref, BARS[np.float32])
    assert [s.shape for s in states] == [s.shape for s in ref.hidden_states]
    assert all(relative_error(a, b) <= BARS[np.float32] for a, b in zip(states, ref.hidden_states))
    expected = capture_reference_scores(monkeypatch)
    model.fast = False
    model(x)
    assert len(attentions) == len(expected) == 9
    for a, b in zip(attentions, expected):
        assert relative_error(a, b) <= 1e-5  # probabilities: float32 round-off, accumulated over the layers
    assert [info["num_threads"] for info in threadpoolctl.threadpool_info()] == before


def test_concurrent_calls_from_user_threads(monkeypatch):
    """Two user threads calling at once (each splitting its image among threads that wait for each
    other at the group norms) neither deadlock nor disturb each other."""
    import threading

    monkeypatch.setattr(executors, "THREADS", 2)
    monkeypatch.setattr(executors.Threads, "part_elements", 1)
    monkeypatch.setattr(team, "PROCESSES", False)
    model = MobileViTV2ForImageClassification(MobileViTV2Config(width_multiplier=0.5), seed=9)
    inputs = [pixels(1, 64, 80, seed=s) for s in range(4)]
    model.fast = False
    expected = [model(x).logits for x in inputs]
    model.fast = True
    results = {}

    def run(i):
        for _ in range(3):
            results[i] = model(inputs[i]).logits

    workers = [threading.Thread(target=run, args=(i,)) for i in range(len(inputs))]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=600)  # (generous: it returns as soon as they are done)
    assert not any(w.is_alive() for w in workers)
    for i, e in enumerate(expected):
        assert relative_error(results[i], e) <= BARS[np.float32]


# --------------------------------------------------------------------------------------------
# No surprises: a library call starts no process and leaves the process as it found it
# --------------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]

CHILDREN = ('import glob\n'
            'def children():  # the process ids this process (any of its threads) started and not yet reaped\n'
            '    return {int(p) for f in glob.glob("/proc/self/task/*/children") for p in open(f).read().split()}\n')


def run_script(script, **env):
    """``script`` in a fresh interpreter, the team switched neither on nor off by the environment."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("NUMPY_MVIT2_")}
    environment.update(env, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "-c", CHILDREN + textwrap.dedent(script)], capture_output=True, text=True,
                          env=environment, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_model_call_starts_no_process_and_restores_blas_threads():
    """On the default path (two threads: the fast path's own, BLAS limited during the pass), a
    batch-1 and a batch-2 pass start no process, and every BLAS library's thread count is what
    it was before numpy_mvit2 was imported."""
    run_script("""
        import numpy as np
        import threadpoolctl
        before = [(i["filepath"], i["num_threads"]) for i in threadpoolctl.threadpool_info()]
        import numpy_mvit2
        from numpy_mvit2 import MobileViTV2Config, MobileViTV2ForImageClassification
        model = MobileViTV2ForImageClassification(MobileViTV2Config(width_multiplier=0.5, num_labels=3))
        assert numpy_mvit2.fast.threads() == 2
        for batch in (1, 2):
            assert model(np.zeros((batch, 3, 64, 64), np.float32)).logits.shape == (batch, 3)
        assert children() == set(), children()
        after = [(i["filepath"], i["num_threads"]) for i in threadpoolctl.threadpool_info()]
        assert after == before, (before, after)
    """, NUMPY_MVIT2_THREADS="2")


def test_importing_and_calling_registers_no_hooks():
    """Importing numpy_mvit2, numpy_mvit2.fast and numpy_mvit2.team, and calling a model, registers
    no at-fork and no atexit hook (the team registers its own when it is started)."""
    out = run_script("""
        import atexit, os
        registered = []
        real_fork, real_atexit = os.register_at_fork, atexit.register

        def at_fork(**kwargs):
            registered.append(("at-fork", [f"{getattr(f, '__module__', '?')}.{getattr(f, '__qualname__', '?')}" for f in kwargs.values()]))
            return real_fork(**kwargs)

        def at_exit(fn, *args, **kwargs):
            registered.append(("atexit", f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', '?')}"))
            return real_atexit(fn, *args, **kwargs)

        os.register_at_fork, atexit.register = at_fork, at_exit
        import numpy as np
        import numpy_mvit2, numpy_mvit2.fast, numpy_mvit2.team
        from numpy_mvit2 import MobileViTV2Config, MobileViTV2ForSemanticSegmentation
        model = MobileViTV2ForSemanticSegmentation(MobileViTV2Config(width_multiplier=0.5, num_labels=3))
        for batch in (1, 2):
            model(np.zeros((batch, 3, 64, 64), np.float32), output_hidden_states=True, output_attentions=True)
        ours = [r for r in registered if "numpy_mvit2" in str(r)]
        assert not ours, ours
        print(registered)
    """, NUMPY_MVIT2_THREADS="2")
    assert "numpy_mvit2" not in out


@pytest.mark.parametrize(("field", "value"), [("output_stride", 8), ("hidden_act", "relu"), ("atrous_rates", [2, 3, 4]),
                                              ("behavior", "timm")])
def test_the_plan_follows_fields_set_after_loading(field, value):
    """The plan takes each conv's stride, dilation and activation from the config when it is built;
    a computed field set afterwards has the next call rebuild it, so both paths still agree."""
    model = MobileViTV2ForSemanticSegmentation(MobileViTV2Config(width_multiplier=0.5, num_labels=3), seed=2)
    x = pixels(1, 96, 80)
    setattr(model.config, field, value)
    fast, ref = both_paths(model, x)
    assert_same(fast, ref, BARS[np.float32])


def test_threads_setting_patched_and_restored():
    """``numpy_mvit2.fast.THREADS`` is the executors' setting, whichever way it is set and put back."""
    from unittest import mock

    assert fast_path.THREADS is None and "THREADS" in dir(fast_path)
    with mock.patch.object(fast_path, "THREADS", 2):
        assert executors.THREADS == 2 and fast_path.THREADS == 2
    assert executors.THREADS is None
    fast_path.THREADS = 1
    assert executors.threads() == 1
    del fast_path.THREADS
    assert executors.THREADS is None
