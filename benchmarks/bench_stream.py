"""Streaming inference over a folder, in images per second of the whole command: ``numpy-mvit2
classify FOLDER --output FILE.jsonl -q`` in one process (the Predictor's threads) against the same
command with ``--engine dask --workers 1`` and ``--engine dask --workers 2`` (a local Dask cluster
of worker processes, one image at a time each); and, apart, what starting, using and closing Dask
costs against Ray for a trivial job.

    python benchmarks/bench_stream.py            # width 1.0, 256x256, 200 photos 400x300 JPEG, 3 rounds, engine overhead
    python benchmarks/bench_stream.py --quick    # a smoke run: width 0.5, 64x64, 24 PNGs 80x64, 1 round, no engine overhead

Method: the driver writes one image folder (seeded: noise with a few filled rectangles and
ellipses of random colours; JPEG quality 90 at 400x300, PNG at 80x64 for ``--quick``) and one
generated checkpoint (``numpy_mvit2.generate.generate_checkpoint``: seeded random weights, NOT
pretrained, random batch-norm statistics so the norms do work; its preprocessor resizes the
shortest edge to image_size + 32 and crops image_size). Each measurement is the command itself,
run by the driver as a fresh process (``python -m numpy_mvit2 classify FOLDER --model CKPT
--output F -q [...]``, its default batch size and threads; the Dask workers with BLAS on one
thread, as the command starts them): the rate is images / the command's wall time from its start to
its exit, timed by the driver. That is the whole command: Python's start, the imports, loading the
checkpoint, for Dask starting and closing the cluster and loading the checkpoint in each worker,
and writing the records; ``-q`` prints no rate of its own. With 200 images the start-up is a
small part (about 1 s of one process's 15, 2 to 3 s of a cluster's); ``--images`` gives more.
The steady rate leaves the start-up out: the driver stats the output every 20 ms, and counts the
records written after the size it first saw over the time from then to the last change of size.
The records are counted after each run (one per image; an error record is printed, not asserted).
The three runs alternate, their order rotating per round; medians over rounds. Nothing is
asserted: the ratios are printed (goal in the issue: 2 workers at least 1.6 times 1 worker).

Engine overhead (seconds; default run, or ``--engines``; each engine in a fresh process of its own,
``--engine-worker NAME``, alternating per round, medians): Dask: ``import distributed``,
``LocalCluster(2 worker processes, 1 thread each)`` + ``Client``, a job of 2000 items in 32 tasks
of up to 64 (``client.submit``, as ``--engine dask`` submits partitions), ``close``. Ray (not a
dependency of the project; the row is skipped with a note where ``import ray`` fails):
``import ray``, ``ray.init(num_cpus=2)``, ``ray.data.from_items(2000 rows).map_batches(a callable
class, concurrency=2, batch_size=64).take_all()``, ``ray.shutdown()``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEED = 0
ITEMS, TASK_SIZE = 2000, 64  # the engine-overhead job

# The measured runs: name -> (label, the command's extra arguments).
RUNS = {
    "local": ("one process (threads)", []),
    "dask-1": ("dask, 1 worker", ["--engine", "dask", "--workers", "1"]),
    "dask-2": ("dask, 2 workers", ["--engine", "dask", "--workers", "2"]),
}


def make_images(folder: Path, count: int, size: tuple[int, int], suffix: str) -> None:
    """``count`` photos: noise with a few filled shapes, so JPEG and the network see edges, not flat colour."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(SEED)
    width, height = size
    folder.mkdir(parents=True)
    for i in range(count):
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(4):
            x0, x1 = sorted(rng.integers(0, width, 2).tolist())
            y0, y1 = sorted(rng.integers(0, height, 2).tolist())
            shape = draw.rectangle if rng.random() < 0.5 else draw.ellipse
            shape((x0, y0, x1, y1), fill=tuple(rng.integers(0, 256, 3).tolist()))
        image.save(folder / f"{i:04d}{suffix}", **({"quality": 90} if suffix == ".jpg" else {}))


def _env() -> dict:
    # the checkout's package, and no network for a checkpoint that is a local folder anyway
    return {**os.environ, "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def run_command(name: str, images: Path, model: Path, out: Path) -> dict:
    """One whole ``classify --output`` command, timed from outside; and its steady rate, from the
    output growing: the records written after the first write over the time from it to the last."""
    command = [sys.executable, "-m", "numpy_mvit2", "classify", str(images), "--model", str(model),
               "--output", str(out), "-q", *RUNS[name][1]]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env())
    first = last = None  # (time, bytes) of the first and latest size seen
    while process.poll() is None:  # a stat every 20 ms: nothing against the command's two cores
        size = out.stat().st_size if out.exists() else 0
        if size and (last is None or size != last[1]):
            last = (time.perf_counter(), size)
            first = first or last
        time.sleep(0.02)
    seconds = time.perf_counter() - start
    stderr = process.stderr.read()
    if process.returncode != 0:
        raise SystemExit(f"bench_stream: {' '.join(command)} failed ({process.returncode}):\n{stderr[-3000:]}")
    data = out.read_bytes()
    out.unlink()  # --output refuses a file that exists: each run writes afresh
    records = [json.loads(line) for line in data.decode("utf-8").splitlines()]
    errors = sum("error" in r for r in records)
    steady = None
    if first is not None and last[0] > first[0]:
        steady = (data.count(b"\n", first[1], last[1])) / (last[0] - first[0])
    return {"run": name, "seconds": seconds, "images": len(records), "errors": errors,
            "images_per_s": len(records) / seconds, "steady_images_per_s": steady,
            "first_record_s": None if first is None else first[0] - start}


# --------------------------------------------------------------------------------------------
# Engine overhead: one engine in this process
# --------------------------------------------------------------------------------------------


def _double(chunk):  # the trivial task (pickled by value from __main__, so the workers need no import)
    return [2 * x for x in chunk]


class _Double:  # Ray Data's callable class: made once per actor, called per batch
    def __call__(self, batch):
        return {"x": batch["x"] * 2}


def engine_worker(name: str) -> dict:
    times = {}
    clock = time.perf_counter()

    def lap(key):
        nonlocal clock
        now = time.perf_counter()
        times[key], clock = now - clock, now

    if name == "dask":
        import distributed

        lap("import")
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                           dashboard_address=None, silence_logs=logging.ERROR)
        client = distributed.Client(cluster)
        lap("start")
        items = list(range(ITEMS))
        futures = [client.submit(_double, items[i:i + TASK_SIZE], pure=False) for i in range(0, ITEMS, TASK_SIZE)]
        result = [x for part in client.gather(futures) for x in part]
        lap("job")
        client.close()
        cluster.close()
        lap("close")
    else:
        try:
            import ray
        except ImportError as e:
            return {"engine": name, "skipped": f"import ray failed ({e}); Ray is not a dependency of numpy-mvit2"}
        lap("import")
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
        lap("start")
        rows = ray.data.from_items([{"x": i} for i in range(ITEMS)]).map_batches(
            _Double, concurrency=2, batch_size=TASK_SIZE).take_all()
        result = [row["x"] for row in rows]
        lap("job")
        ray.shutdown()
        lap("close")
    if sorted(result) != [2 * x for x in range(ITEMS)]:
        raise SystemExit(f"bench_stream: the {name} job gave wrong results")
    return {"engine": name, **times, "total": sum(times.values())}


def run_engine(name: str) -> dict:
    # Ray asks nothing and sends nothing with its usage statistics off
    env = {**_env(), "RAY_USAGE_STATS_ENABLED": "0"}
    done = subprocess.run([sys.executable, __file__, "--engine-worker", name], capture_output=True, text=True,
                          env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"bench_stream: the {name} engine worker failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------


def _rotated(names: list[str], r: int) -> list[str]:
    return names[r % len(names):] + names[:r % len(names)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--images", type=int, default=None, help="photos in the folder (default 200; --quick 24)")
    parser.add_argument("--rounds", type=int, default=None, help="default 3; --quick 1")
    parser.add_argument("--engines", action="store_true", help="also time the engine overhead under --quick")
    parser.add_argument("--no-engines", action="store_true", help="leave the engine overhead out")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--engine-worker", choices=("dask", "ray"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.engine_worker:
        print(json.dumps(engine_worker(args.engine_worker)))
        return 0
    width, size, count = (0.5, 64, 24) if args.quick else (1.0, 256, 200)
    photo, suffix = ((80, 64), ".png") if args.quick else ((400, 300), ".jpg")
    count = args.images or count
    rounds = args.rounds or (1 if args.quick else 3)
    engines = not args.no_engines and (args.engines or not args.quick)

    from numpy_mvit2.generate import generate_checkpoint

    results = {name: [] for name in RUNS}
    with tempfile.TemporaryDirectory() as folder:
        images, model = Path(folder) / "images", Path(folder) / "model"
        make_images(images, count, photo, suffix)
        generate_checkpoint(model, "classification", width=width, seed=SEED, image_size=size, random_norms=True)
        for r in range(rounds):
            for name in _rotated(list(RUNS), r):
                results[name].append(run_command(name, images, model, Path(folder) / "out.jsonl"))
    summary = {"settings": {"width": width, "image_size": size, "images": count, "photo": list(photo),
                            "format": suffix[1:], "rounds": rounds, "cpus": os.cpu_count()}}
    for name, runs in results.items():
        steady = [x["steady_images_per_s"] for x in runs if x["steady_images_per_s"]]
        summary[name] = {"label": RUNS[name][0], "images_per_s": statistics.median(x["images_per_s"] for x in runs),
                         "steady_images_per_s": statistics.median(steady) if steady else None,
                         "seconds": statistics.median(x["seconds"] for x in runs),
                         "first_record_s": statistics.median(x["first_record_s"] or 0 for x in runs),
                         "errors": max(x["errors"] for x in runs), "runs": runs}
    summary["ratios"] = {}
    for key in ("images_per_s", "steady_images_per_s"):
        rate = {name: summary[name][key] for name in RUNS}
        if all(rate.values()):
            summary["ratios"][key] = {"dask-2 / dask-1": rate["dask-2"] / rate["dask-1"],
                                      "dask-2 / local": rate["dask-2"] / rate["local"]}

    print(f"streaming classify --output, width {width}, {size}x{size}, {count} photos {photo[0]}x{photo[1]} "
          f"{suffix[1:].upper()}, median of {rounds} rounds; images/s: over the whole command's wall time, "
          f"and steady: from its first write of records to its last")
    print(f"  {'run':<24} {'images/s':>9} {'steady':>8} {'seconds':>8} {'1st write':>9}  errors")
    for name in RUNS:
        s = summary[name]
        steady = f"{s['steady_images_per_s']:8.2f}" if s["steady_images_per_s"] else f"{'-':>8}"
        print(f"  {s['label']:<24} {s['images_per_s']:9.2f} {steady} {s['seconds']:8.2f} {s['first_record_s']:9.2f}"
              f"  {s['errors']}")
    for key, words in (("images_per_s", "whole command"), ("steady_images_per_s", "steady")):
        if key in summary["ratios"]:
            ratios = summary["ratios"][key]
            print(f"  {words}: ratio 2 workers / 1 worker {ratios['dask-2 / dask-1']:.2f} (goal >= 1.6); "
                  f"2 workers / one process {ratios['dask-2 / local']:.2f}")

    if engines:
        timings = {"dask": [], "ray": []}
        for r in range(rounds):
            for name in _rotated(list(timings), r):
                timings[name].append(run_engine(name))
        summary["engines"] = {}
        print(f"engine overhead, seconds, median of {rounds} rounds: start 2 local workers, a job of {ITEMS} "
              f"items in tasks of {TASK_SIZE}, close")
        print(f"  {'engine':<7} {'import':>7} {'start':>7} {'job':>7} {'close':>7} {'total':>7}")
        for name, runs in timings.items():
            if "skipped" in runs[0]:
                summary["engines"][name] = {"skipped": runs[0]["skipped"]}
                print(f"  {name:<7} skipped: {runs[0]['skipped']}")
                continue
            medians = {key: statistics.median(x[key] for x in runs) for key in ("import", "start", "job", "close", "total")}
            summary["engines"][name] = {**medians, "runs": runs}
            print(f"  {name:<7} " + " ".join(f"{medians[key]:7.2f}" for key in ("import", "start", "job", "close", "total")))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
