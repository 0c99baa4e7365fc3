"""One fine-tuning epoch, in images per second: ``numpy_mvit2.finetune`` (``Run.train_epoch``: AdamW,
the data decoded and augmented as the ``finetune`` command does it) against PyTorch eager
(transformers' model in train mode + ``torch.optim.AdamW``) on the same model, data and batches.

    python benchmarks/bench_finetune.py           # width 1.0, 256x256, batch 16, 96 training images
    python benchmarks/bench_finetune.py --quick   # a smoke run: width 0.5, 64x64, batch 4, 12 images

Method: the driver writes one image folder (``train/`` and ``val/``, a few classes of generated
photos: noise with a bright band whose place and colour depend on the class; JPEG at 400x300, PNG
at 80x64 for ``--quick``) and one base checkpoint (seeded random weights written by transformers'
``save_pretrained``, batch norms unfolded, classifier dropout 0, its labels the folder's classes,
so that both sides keep its whole head and start from the same weights; a
``preprocessor_config.json`` cropping to the training size). Each measurement is a fresh process of
one side (``--worker SIDE``) that loads the checkpoint, runs one warm-up step (forward and backward
on the epoch's first batch, no optimizer step), then times one training epoch:

- numpy: ``finetune.start(...)`` with ``Recipe(batch_size=...)`` (its defaults otherwise: AdamW,
  lr 5e-4, weight decay 0.05 off norms and biases, warm-up over the first 10% of 10 epochs' steps,
  then cosine), quiet, and its ``train_epoch()``: what ``numpy-mvit2 finetune`` runs for an epoch,
  without the validation pass and the files written after it.
- torch: ``transformers.MobileViTV2ForImageClassification.from_pretrained(...).train()`` and
  ``torch.optim.AdamW`` with the same parameter groups and learning-rate schedule
  (``LambdaLR``), over the same batches: ``numpy_mvit2.data.batches`` (the same crops, flips,
  order and decoding threads on both sides), ``zero_grad``, ``loss.backward()``, ``step()``.

Threads: each library's default unless ``--threads N`` is given (then ``OPENBLAS_NUM_THREADS`` and
``OMP_NUM_THREADS`` are set to N in the workers): numpy_mvit2 runs on ``numpy_mvit2.fast.THREADS``
threads (by default BLAS's count), PyTorch on ``torch.get_num_threads()`` (not set: its default);
each worker reports its count. The images are decoded on two threads on both sides. The sides
alternate, the order rotating per round; medians over rounds. Nothing is asserted: the ratio of
images per second is printed (goal in the issue: numpy_mvit2 at least 2/3 of PyTorch's speed),
with the mean training losses of the epoch on each side, for sanity (they start from the same
weights on the same batches, so they agree to about the round-off AdamW amplifies).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEED = 0


def make_images(root: Path, classes: int, per_class: int, val_per_class: int, size: tuple[int, int], suffix: str) -> None:
    """``root/train/class_k/`` and ``root/val/class_k/``: class k's images are noise with a bright
    band in one of ``classes`` places (and colours)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(SEED)
    width, height = size
    for split, count in (("train", per_class), ("val", val_per_class)):
        for k in range(classes):
            folder = root / split / f"class_{k}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 90, (height, width, 3), dtype=np.uint8)
                pixels[..., k % 3] += 120
                band = slice((k * height) // classes, ((k + 1) * height) // classes)
                pixels[band, :, (k + 1) % 3] = 230
                Image.fromarray(pixels).save(folder / f"{i:03d}{suffix}", **({"quality": 90} if suffix == ".jpg" else {}))


def make_checkpoint(folder: Path, width: float, size: int, classes: int) -> None:
    import torch
    import transformers

    torch.manual_seed(SEED)
    id2label = {k: f"class_{k}" for k in range(classes)}
    config = transformers.MobileViTV2Config(width_multiplier=width, image_size=size, num_labels=classes, id2label=id2label,
                                            label2id={v: k for k, v in id2label.items()}, classifier_dropout_prob=0.0)
    transformers.MobileViTV2ForImageClassification(config).save_pretrained(folder, safe_serialization=True)
    edge = int(round(size * 288 / 256))  # apple's checkpoints: shortest edge 288, crop 256
    processor = {"do_resize": True, "size": {"shortest_edge": edge}, "resample": 2, "do_rescale": True,
                 "rescale_factor": 1 / 255, "do_center_crop": True, "crop_size": {"height": size, "width": size},
                 "do_flip_channel_order": True, "image_processor_type": "MobileViTImageProcessor"}
    (folder / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))


def _cpu() -> tuple[float, float]:  # (user + system, system) CPU seconds of this process, its threads included
    t = os.times()
    return t.user + t.system, t.system


def worker(side: str, folder: str, batch_size: int) -> dict:
    import numpy as np

    from numpy_mvit2.data import batch_count, batches
    from numpy_mvit2.finetune import Recipe, open_data, training_processor
    from numpy_mvit2.processing import MobileViTImageProcessor

    data_root, base_folder = Path(folder) / "data", Path(folder) / "base"
    recipe = Recipe(batch_size=batch_size, seed=SEED)
    if side == "numpy":
        from numpy_mvit2 import MobileViTV2ForImageClassification
        from numpy_mvit2.fast.executors import threads
        from numpy_mvit2.finetune import start
        from numpy_mvit2.training import value_and_grad

        base = MobileViTV2ForImageClassification.from_pretrained(base_folder, fold_batch_norm=False)
        processor = MobileViTImageProcessor.from_pretrained(base_folder)
        run = start(data_root, base, processor, Path(folder) / "out-unused", recipe, base_name=str(base_folder), quiet=True)
        data, processor = run.data, run.processor
        thread_count = threads()

        def warm_up(pixels, labels):
            value_and_grad(run.model, pixels, labels, train=True, generator=np.random.default_rng(SEED))

        def epoch():
            return run.train_epoch()
    else:
        import torch
        import transformers

        thread_count = torch.get_num_threads()
        data = open_data(data_root, recipe)
        processor = training_processor(MobileViTImageProcessor.from_pretrained(base_folder), recipe.image_size)
        model = transformers.MobileViTV2ForImageClassification.from_pretrained(str(base_folder)).train()
        named = list(model.named_parameters())
        decay = [p for n, p in named if n.endswith(".weight") and p.ndim >= 2]
        no_decay = [p for n, p in named if not (n.endswith(".weight") and p.ndim >= 2)]
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                                       {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr)
        total = math.ceil(batch_count(len(data.train), recipe.batch_size, True) / recipe.accumulate) * recipe.epochs
        warmup = int(round(recipe.warmup * total))

        def factor(t):
            if t < warmup:
                return t / warmup
            return (1 + math.cos(math.pi * min(1.0, (t - warmup) / (total - warmup)))) / 2

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

        def warm_up(pixels, labels):
            model(torch.from_numpy(pixels), labels=torch.from_numpy(labels)).loss.backward()
            model.zero_grad(set_to_none=True)

        def epoch():
            loss_sum, count = 0.0, 0
            for pixels, labels in batches(data.train, processor, batch_size=recipe.batch_size, train=True,
                                          seed=recipe.seed, epoch=0):
                loss = model(torch.from_numpy(pixels), labels=torch.from_numpy(labels)).loss
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                scheduler.step()
                loss_sum, count = loss_sum + loss.item() * len(labels), count + len(labels)
            return loss_sum / count

    first = batches(data.train, processor, batch_size=recipe.batch_size, train=True, seed=recipe.seed, epoch=0)
    warm_up(*next(first))
    first.close()
    images = len(data.train)
    cpu, start_time = _cpu(), time.perf_counter()
    loss = epoch()
    seconds, cpu = time.perf_counter() - start_time, [b - a for a, b in zip(cpu, _cpu())]
    return {"side": side, "seconds": seconds, "images": images, "images_per_s": images / seconds, "cpu_seconds": cpu[0],
            "system_seconds": cpu[1], "loss": float(loss), "threads": thread_count}


def _run_worker(side, folder, batch_size, threads):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if threads:
        env.update(OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, __file__, "--worker", side, "--folder", folder, "--batch-size", str(batch_size)],
                         capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise SystemExit(f"bench_finetune: the {side} worker failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--images", type=int, default=None, help="training images per class")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="OPENBLAS/OMP threads (default: each library's own)")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--worker", choices=("numpy", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.folder, args.batch_size)))
        return 0
    classes = 2 if args.quick else 4
    width, size, batch_size, per_class = (0.5, 64, 4, 6) if args.quick else (1.0, 256, 16, 24)
    photo, suffix = ((80, 64), ".png") if args.quick else ((400, 300), ".jpg")
    batch_size = args.batch_size or batch_size
    per_class = args.images or per_class
    rounds = args.rounds or (1 if args.quick else 3)

    with tempfile.TemporaryDirectory() as folder:
        make_images(Path(folder) / "data", classes, per_class, 1, photo, suffix)
        make_checkpoint(Path(folder) / "base", width, size, classes)
        results = {"numpy": [], "torch": []}
        for r in range(rounds):
            for side in (("numpy", "torch") if r % 2 == 0 else ("torch", "numpy")):
                results[side].append(_run_worker(side, folder, batch_size, args.threads))
    summary = {side: {"images_per_s": statistics.median(x["images_per_s"] for x in runs),
                      "seconds": statistics.median(x["seconds"] for x in runs),
                      "cpu_seconds": statistics.median(x["cpu_seconds"] for x in runs),
                      "system_seconds": statistics.median(x["system_seconds"] for x in runs),
                      "loss": runs[0]["loss"], "threads": runs[0]["threads"], "images": runs[0]["images"],
                      "runs": runs} for side, runs in results.items()}
    ours, theirs = summary["numpy"], summary["torch"]
    ratio = ours["images_per_s"] / theirs["images_per_s"]
    summary["ratio"] = ratio
    print(f"fine-tuning epoch, width {width}, {size}x{size}, batch {batch_size}, {ours['images']} training images "
          f"({classes} classes, {photo[0]}x{photo[1]} {suffix[1:].upper()}), AdamW, {rounds} rounds")
    for side in ("numpy", "torch"):
        s = summary[side]
        print(f"  {side:<6} {s['images_per_s']:7.2f} images/s   epoch {s['seconds']:7.2f} s   CPU {s['cpu_seconds']:7.2f} s "
              f"(system {s['system_seconds']:6.2f})   "
              f"{s['threads']} threads   mean loss {s['loss']:.6f}")
    print(f"  speed ratio numpy/torch {ratio:.2f} (goal >= 0.67); "
          f"loss difference {abs(ours['loss'] - theirs['loss']):.2e}")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
