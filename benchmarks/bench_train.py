"""One training step (forward + backward, train mode): numpy_mvit2's value_and_grad against PyTorch
eager's ``loss.backward()`` on the same model.

    python benchmarks/bench_train.py            # width 1.0, batch 8, 256x256 (the issue's step)
    python benchmarks/bench_train.py --quick    # a smoke run: width 0.5, batch 2, 64x64

Method: the driver writes one random checkpoint (transformers' ``save_pretrained``, batch norms
unfolded, dropout probabilities 0 so both sides compute the same step), one input array and one
label array. Each measurement is a fresh process of one side (``--worker SIDE``) that loads the
checkpoint, runs one warm-up step, then ``--steps`` timed steps, and reports the median step time
and its peak resident memory (``VmHWM``, over the warm-up and the timed steps) above what it held
before the warm-up: the memory training needs on top of the loaded model. (Measured from after
the warm-up instead, the peak counts only what the allocator had not kept from the warm-up's
freed arrays, which varies from run to run.) The sides
alternate, the order rotating per round; medians over rounds. The losses of the two sides are
compared. Nothing is asserted: the ratio is printed (goal in the issue: time <= 1.5x PyTorch's,
peak memory <= PyTorch's).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _peak_rss() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def worker(side: str, folder: str, steps: int, threads: int) -> dict:
    import numpy as np

    x = np.load(Path(folder) / "pixels.npy")
    labels = np.load(Path(folder) / "labels.npy")
    if side == "numpy":
        from numpy_mvit2 import MobileViTV2ForImageClassification
        from numpy_mvit2.training import value_and_grad

        model = MobileViTV2ForImageClassification.from_pretrained(folder, fold_batch_norm=False, fast=False)

        def step():
            return float(value_and_grad(model, x, labels, train=True, generator=np.random.default_rng(0))[0])
    else:
        import torch
        import transformers

        torch.set_num_threads(threads)
        model = transformers.MobileViTV2ForImageClassification.from_pretrained(folder).train()
        xt, yt = torch.from_numpy(x), torch.from_numpy(labels)

        def step():
            model.zero_grad(set_to_none=True)
            loss = model(xt, labels=yt).loss
            loss.backward()
            return float(loss.detach())

    import gc

    gc.collect()
    _reset_peak()
    before = _peak_rss()  # the loaded model and the input: what the process holds before it trains
    loss = step()  # warm-up
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"side": side, "time": statistics.median(times), "peak_added": _peak_rss() - before, "loss": loss}


def _run_worker(side, folder, steps, threads):
    env = {**os.environ, "OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, __file__, "--worker", side, "--folder", folder, "--steps", str(steps),
                          "--threads", str(threads)], capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise SystemExit(f"bench_train: the {side} worker failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--worker", choices=("numpy", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.folder, args.steps, args.threads)))
        return 0
    width, batch, size = (0.5, 2, 64) if args.quick else (1.0, 8, 256)
    rounds = args.rounds or (1 if args.quick else 3)
    steps = args.steps or (1 if args.quick else 2)
    import numpy as np
    import torch
    import transformers

    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(0)
        config = transformers.MobileViTV2Config(width_multiplier=width, num_labels=1000, classifier_dropout_prob=0.0)
        transformers.MobileViTV2ForImageClassification(config).save_pretrained(folder, safe_serialization=True)
        rng = np.random.default_rng(0)
        np.save(Path(folder) / "pixels.npy", rng.uniform(0, 1, (batch, 3, size, size)).astype(np.float32))
        np.save(Path(folder) / "labels.npy", rng.integers(0, 1000, batch))
        results = {"numpy": [], "torch": []}
        for r in range(rounds):
            for side in (("numpy", "torch") if r % 2 == 0 else ("torch", "numpy")):
                results[side].append(_run_worker(side, folder, steps, args.threads))
    summary = {side: {"time": statistics.median(x["time"] for x in runs),
                      "peak_added": statistics.median(x["peak_added"] for x in runs),
                      "loss": runs[0]["loss"]} for side, runs in results.items()}
    ours, theirs = summary["numpy"], summary["torch"]
    print(f"training step, width {width}, batch {batch}, {size}x{size}, train mode, {args.threads} threads, "
          f"{rounds} rounds x {steps} steps")
    for side, s in summary.items():
        print(f"  {side:<6} {s['time']:8.3f} s   peak added {s['peak_added'] / 2**20:8.0f} MiB   loss {s['loss']:.6f}")
    print(f"  time ratio numpy/torch {ours['time'] / theirs['time']:.2f} (goal <= 1.5); "
          f"memory ratio {ours['peak_added'] / max(theirs['peak_added'], 1):.2f} (goal <= 1.0); "
          f"loss difference {abs(ours['loss'] - theirs['loss']):.2e}")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
