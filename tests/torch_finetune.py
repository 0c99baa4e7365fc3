"""The fine-tuning recipe of ``numpy_mvit2.finetune`` written with transformers and torch.optim.

The reference the tests measure ``numpy-mvit2 finetune`` against: the same base checkpoint, the
same batches (``numpy_mvit2.data.batches``: the same crops, flips and order), the same recipe
(AdamW or SGD with momentum 0.9, no weight decay on norms and biases, linear warm-up then cosine
to 0, stepped per optimizer step), written as a transformers user would write it:
``from_pretrained(..., num_labels=..., ignore_mismatched_sizes=True)`` gives the new head (drawn
by transformers' own ``_init_weights``, from torch's generator), ``model.train()``, ``loss.backward()``,
``optimizer.step()``, ``scheduler.step()``.
"""

from __future__ import annotations

import math

import numpy as np

from numpy_mvit2 import MobileViTImageProcessor
from numpy_mvit2.data import batch_count, batches
from numpy_mvit2.finetune import Recipe, open_data, training_processor


def torch_finetune(data_root, base_folder, recipe: Recipe, *, seed: int = 0) -> list[dict]:
    """Train as ``numpy-mvit2 finetune`` does, with PyTorch; returns the per-epoch history
    (train_loss, val_loss, val_top1)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    data = open_data(data_root, recipe)
    processor = training_processor(MobileViTImageProcessor.from_pretrained(base_folder), recipe.image_size)
    model = transformers.MobileViTV2ForImageClassification.from_pretrained(
        str(base_folder), num_labels=len(data.classes), id2label=data.id2label,
        label2id={v: k for k, v in data.id2label.items()}, ignore_mismatched_sizes=True)
    decay = [p for n, p in model.named_parameters() if n.endswith(".weight") and p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if not (n.endswith(".weight") and p.ndim >= 2)]
    if recipe.freeze_backbone:
        decay, no_decay = [model.classifier.weight], [model.classifier.bias]
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if recipe.optimizer == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=recipe.lr)
    else:
        optimizer = torch.optim.SGD(groups, lr=recipe.lr, momentum=0.9)
    steps_per_epoch = math.ceil(batch_count(len(data.train), recipe.batch_size, True) / recipe.accumulate)
    total = steps_per_epoch * recipe.epochs
    warmup = int(round(recipe.warmup * total))

    def factor(t):
        if t < warmup:
            return t / warmup
        return (1 + math.cos(math.pi * min(1.0, (t - warmup) / (total - warmup)))) / 2

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    history = []
    for epoch in range(recipe.epochs):
        model.train()
        if recipe.freeze_backbone:
            model.mobilevitv2.eval()
        total_loss, count = 0.0, 0
        for pixels, labels in batches(data.train, processor, batch_size=recipe.batch_size, train=True,
                                      seed=recipe.seed, epoch=epoch, crop_scale=(recipe.min_crop, 1.0), flip=recipe.flip):
            loss = model(torch.from_numpy(pixels), labels=torch.from_numpy(labels)).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss, count = total_loss + loss.item() * len(labels), count + len(labels)
        model.eval()
        val_loss, val_count, correct = 0.0, 0, 0
        with torch.no_grad():
            for pixels, labels in batches(data.val, processor, batch_size=recipe.batch_size, train=False):
                out = model(torch.from_numpy(pixels), labels=torch.from_numpy(labels))
                val_loss += out.loss.item() * len(labels)
                val_count += len(labels)
                correct += int((out.logits.argmax(-1).numpy() == labels).sum())
        history.append({"epoch": epoch + 1, "train_loss": total_loss / count, "val_loss": val_loss / val_count,
                        "val_top1": correct / val_count})
    return history


def class_images(root, classes: int, per_class: int, *, seed: int = 0, size=(56, 48)):
    """A small data folder a model can learn in a few epochs: class k's images are noise with
    a bright patch in one of ``classes`` places (and colours), at a random offset."""
    from pathlib import Path

    from PIL import Image

    rng = np.random.default_rng(seed)
    width, height = size
    for k in range(classes):
        folder = Path(root) / f"class_{k}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 90, (height, width, 3), dtype=np.uint8)
            pixels[..., k % 3] += 120
            band = slice((k * height) // classes, ((k + 1) * height) // classes)
            pixels[band, :, (k + 1) % 3] = 230
            Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return Path(root)
