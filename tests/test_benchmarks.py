"""Smoke tests of the benchmark scripts: ``bench_forward.py --quick`` runs, compares the sides on the
same weights and prints its tables; ``bench_train.py --quick`` likewise for a training step, and
``bench_finetune.py --quick`` for a fine-tuning epoch, and ``bench_stream.py --quick`` for a folder
classified with ``--output``, in one process and on a local Dask cluster. Speed is never asserted;
the benchmarks print it."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # (the quick subset, -m "not slow", leaves this module out: the benchmark script runs both sides in processes of their own)

ROOT = Path(__file__).resolve().parents[1]


def test_quick_benchmark_runs_and_prints_ratios(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    plot, results = tmp_path / "bench.png", tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_forward.py"), "--quick", "--plot", str(plot), "--json", str(results)],
        check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout
    assert "numpy_mvit2 ms" in out and "memory at batch 2" in out and "separable attention" in out
    data = json.loads(results.read_text())
    assert data["latency"]["numpy 0.5 1"] and data["memory"]["numpy 0.5 2"]["peak"] > 0
    if importlib.util.find_spec("torch") and importlib.util.find_spec("transformers"):
        assert "ratio" in out
        assert data["check"]["torch 0.5"] < 1e-4  # both sides ran the same weights on the same input
    if importlib.util.find_spec("matplotlib"):
        assert plot.stat().st_size > 0


def test_quick_training_step_benchmark_runs_and_prints_ratios(tmp_path):
    """``bench_train.py --quick``: both sides take the same training step (their losses agree)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    results = tmp_path / "train.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_train.py"), "--quick", "--json", str(results)],
                         check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "time ratio numpy/torch" in run.stdout and "memory ratio" in run.stdout
    data = json.loads(results.read_text())
    assert abs(data["numpy"]["loss"] - data["torch"]["loss"]) < 1e-4 * (1 + abs(data["torch"]["loss"]))


def test_quick_finetune_benchmark_runs_and_prints_ratio(tmp_path):
    """``bench_finetune.py --quick``: both sides train an epoch on the same batches and report images/s."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    results = tmp_path / "finetune.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_finetune.py"), "--quick", "--json", str(results)],
                         check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "speed ratio numpy/torch" in run.stdout and "images/s" in run.stdout
    data = json.loads(results.read_text())
    for side in ("numpy", "torch"):
        assert data[side]["images_per_s"] > 0 and data[side]["images"] == 12 and math.isfinite(data[side]["loss"])
    assert data["ratio"] > 0
    # the same weights, batches and recipe: the epoch's mean losses agree (to what AdamW makes of round-off)
    assert abs(data["numpy"]["loss"] - data["torch"]["loss"]) < 1e-3 * (1 + abs(data["torch"]["loss"]))


def test_quick_stream_benchmark_runs_and_prints_ratios(tmp_path):
    """``bench_stream.py --quick``: the folder classified by the whole command, in one process and with
    ``--engine dask --workers 1`` and ``2``; each run's images/s, and the ratios, are reported."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    results = tmp_path / "stream.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_stream.py"), "--quick", "--json", str(results)],
                         check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout
    assert "images/s" in out and "one process" in out and "dask, 1 worker" in out and "dask, 2 workers" in out
    assert "whole command: ratio 2 workers / 1 worker" in out and "2 workers / one process" in out
    assert "engine overhead" not in out  # --quick leaves it out unless --engines is given
    data = json.loads(results.read_text())
    for name in ("local", "dask-1", "dask-2"):
        assert data[name]["images_per_s"] > 0 and data[name]["errors"] == 0
        assert all(r["images"] == 24 for r in data[name]["runs"])  # a record for every photo
    assert all(ratio > 0 for ratios in data["ratios"].values() for ratio in ratios.values())
