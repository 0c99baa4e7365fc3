"""Fine-tuning: a checkpoint's backbone, a new head sized to your classes, trained on an image folder.

    from numpy_mvit2.finetune import Recipe, start, resume
    run = start("DATA", base_model, base_processor, "OUT", Recipe(epochs=5, lr=5e-4))
    run.fit()                                        # an epoch at a time, each saved to OUT
    run = resume("OUT", "DATA"); run.fit()           # after Ctrl-C or a crash: the same end

(``numpy-mvit2 finetune DATA --model ID --out OUT`` runs the same, ``numpy_mvit2.cli``.)

**The model.** The base checkpoint's backbone (``mobilevitv2.*``) and a new head sized to the
classes of the data folder, drawn as transformers' ``_init_weights`` draws a fresh model's
(convolution and linear weights N(0, 0.02), biases 0, norms the identity, from ``seed``). A
segmentation base keeps its ASPP; only the final 1x1 classifier is new. A base of the same task
whose labels are the data's keeps its whole head (fine-tuning it further).

**The recipe** (``Recipe``; as ml-cvnets' fine-tuning recipes, for a small data set): AdamW
(or SGD with momentum 0.9), no weight decay on norms and biases; a learning rate warmed up
linearly from 0 over ``warmup`` of the optimizer steps then down a half cosine to 0 at the last
step; batches of ``batch_size`` shuffled images, each a random resized crop (8% to 100% of the
area) with a horizontal flip half the time, prepared as the checkpoint's processor prepares
(rescale, BGR); train-mode batch norm and dropout; ``accumulate`` batches per step (their
gradients averaged); optional gradient clipping (``max_grad_norm``). The loss is the model's own
(cross-entropy; for segmentation, of logits upsampled to the mask, ignoring
``semantic_loss_ignore_index``). ``freeze_backbone``: a linear probe, the backbone a fixed
feature extractor in eval mode (its batch norms' running statistics used and kept), only the
head trained (``training.head_value_and_grad``). Validation runs the model in eval mode on the
validation images prepared as at inference: the loss, top-1 accuracy (or the mean IoU over the
classes present).

**Determinism.** Every draw comes from ``seed``: the head from ``seed``, each epoch's order and
augmentation from ``(seed, epoch)`` (``data.batches``), each step's dropout from ``(seed, epoch,
step)``. So a run interrupted and resumed from its last saved epoch computes what the
uninterrupted run computes, bit for bit.

**What is written to OUT, after every epoch** (each file through a temporary file renamed into
place, so an interrupted run never leaves a half-written one):

- ``model.safetensors``, ``config.json`` (with ``id2label``), ``preprocessor_config.json``: a
  checkpoint ``transformers.MobileViTV2ForImageClassification.from_pretrained(OUT)`` (or
  ``...ForSemanticSegmentation``) loads, and this package too;
- ``resume.safetensors``: the whole state to continue from (the parameters, the optimizer's
  state, the schedule, the recipe, the history), one file, so that it is never out of step with
  itself;
- ``log.jsonl``: one JSON object per epoch (train loss, validation loss and metric, learning rate,
  seconds); ``curves.png``: the loss and the metric against the epoch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .config import ConfigError, MobileViTV2Config
from .data import DataError, ImageFolder, SegmentationFolder, batch_count, batches
from .modeling import MobileViTV2ForImageClassification, MobileViTV2ForSemanticSegmentation
from .ops import interpolate_bilinear
from .optim import SGD, AdamW, CosineWithWarmup, clip_grad_norm, no_decay_groups, trainable_names
from .processing import MobileViTImageProcessor
from .safeio import current_umask
from .training import head_value_and_grad, value_and_grad
from .weights.convert import flatten
from .weights.files import read_safetensors
from .weights.shapes import expected_shapes

TASKS = {"classification": MobileViTV2ForImageClassification, "segmentation": MobileViTV2ForSemanticSegmentation}
OPTIMIZERS = ("adamw", "sgd")
# the last layer of each head: always new unless the base's labels are the data's
FINAL_LAYER = {"classification": "classifier.", "segmentation": "segmentation_head.classifier."}
BACKBONE = "mobilevitv2."
RESUME_FILE, LOG_FILE, PLOT_FILE = "resume.safetensors", "log.jsonl", "curves.png"
CHECKPOINT_FILES = ("model.safetensors", "config.json", "preprocessor_config.json")
RESUME_KEY = "numpy_mvit2_finetune"  # the safetensors metadata entry holding the run's JSON state
FORMAT = 1
INIT_STD = 0.02  # transformers' MobileViTV2Config.initializer_range


class FinetuneError(ValueError):
    """A run that cannot start or continue: the message names the file or the setting, and why."""


@dataclasses.dataclass
class Recipe:
    """How to train (see the module docstring)."""

    task: str = "classification"
    epochs: int = 10
    batch_size: int = 16
    lr: float = 5e-4
    weight_decay: float = 0.05
    optimizer: str = "adamw"
    warmup: float = 0.1  # the fraction of the optimizer steps over which the learning rate warms up
    freeze_backbone: bool = False
    image_size: int | None = None  # the crop the model trains on (None: the base processor's)
    seed: int = 0
    val_fraction: float = 0.1  # held out when DATA has no train/ and val/ folders
    accumulate: int = 1
    max_grad_norm: float | None = None
    min_crop: float = 0.08  # the smallest share of the area a random resized crop takes (torchvision's)
    flip: bool = True  # horizontal flips half the time (off for digits, text, anything with a handedness)

    def check(self) -> None:
        def need(ok, what):
            if not ok:
                raise FinetuneError(what)

        need(self.task in TASKS, f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        need(self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        for name in ("epochs", "batch_size", "accumulate"):
            value = getattr(self, name)
            need(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                 f"{name} must be a positive integer, got {value!r}")
        for name in ("freeze_backbone", "flip"):
            need(isinstance(getattr(self, name), bool), f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("lr", "weight_decay", "warmup", "val_fraction", "min_crop", "max_grad_norm"):
            value = getattr(self, name)
            need((value is None and name == "max_grad_norm") or (isinstance(value, (int, float)) and not isinstance(value, bool)),
                 f"{name} must be a number, got {value!r}")
        need(0 < self.min_crop <= 1, f"min_crop must be a fraction of the area above 0 and at most 1, got {self.min_crop!r}")
        need(self.image_size is None or (isinstance(self.image_size, int) and 32 <= self.image_size <= 2048),
             f"image_size must be an integer from 32 to 2048, got {self.image_size!r}")
        for name in ("lr", "weight_decay"):
            value = getattr(self, name)
            need(isinstance(value, (int, float)) and math.isfinite(value) and value >= 0,
                 f"{name} must be a finite number >= 0, got {value!r}")
        need(0 <= self.warmup < 1, f"warmup must be a fraction from 0 to below 1, got {self.warmup!r}")
        need(0 < self.val_fraction < 1, f"val_fraction must lie between 0 and 1, got {self.val_fraction!r}")
        need(self.max_grad_norm is None or (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0),
             f"max_grad_norm must be a positive number, got {self.max_grad_norm!r}")
        need(isinstance(self.seed, int) and not isinstance(self.seed, bool) and 0 <= self.seed < 2**63, f"seed must be an integer from 0 to 2**63 - 1, got {self.seed!r}")


# --------------------------------------------------------------------------------------------
# The model to train
# --------------------------------------------------------------------------------------------


def fresh_head(config: MobileViTV2Config, task: str, names, seed: int) -> dict[str, np.ndarray]:
    """The tensors ``names`` of a new head, float32, as transformers' ``_init_weights`` draws them:
    convolution and linear weights N(0, 0.02), biases 0, norms the identity (BN mean 0, var 1)."""
    rng = np.random.default_rng((seed, 1))
    state = {}
    for name, shape in expected_shapes(config, task).items():  # in the checkpoint's order: a seed gives one head
        if name not in names:
            continue
        if name.endswith("running_var") or (name.endswith(".weight") and len(shape) == 1):
            state[name] = np.ones(shape, np.float32)
        elif len(shape) == 1:
            state[name] = np.zeros(shape, np.float32)
        else:
            state[name] = rng.normal(0.0, INIT_STD, size=shape).astype(np.float32)
    return state


def new_model(base, task: str, id2label: dict[int, str], *, image_size: int | None, seed: int):
    """The model to fine-tune: ``base``'s backbone (and head, where it fits; see the module
    docstring) under a config with the data's labels, batch norms unfolded, float32."""
    if base.batch_norm_folded:
        raise FinetuneError("the base model's batch norms are folded; load it with fold_batch_norm=False")
    labels = {int(k): str(v) for k, v in id2label.items()}
    fields = {"num_labels": len(labels), "id2label": labels, "label2id": {v: k for k, v in labels.items()},
              "architectures": [TASKS[task].__name__], "problem_type": None}
    if image_size is not None:
        fields["image_size"] = image_size
    config = MobileViTV2Config.from_dict(base.config.to_dict(), **fields)
    state = {k: v.astype(np.float32) for k, v in base.state_dict().items() if k.startswith(BACKBONE)}
    if base.head == task:
        same_labels = {int(k): v for k, v in base.config.id2label.items()} == labels
        state.update({k: v.astype(np.float32) for k, v in base.state_dict().items()
                      if not k.startswith(BACKBONE) and (same_labels or not k.startswith(FINAL_LAYER[task]))})
    wanted = expected_shapes(config, task)
    state.update(fresh_head(config, task, set(wanted) - set(state), seed))
    return TASKS[task](config, state_dict=in_order(state, config, task), dtype=np.float32, fold_batch_norm=False)


def in_order(state: dict, config: MobileViTV2Config, task: str) -> dict:
    """``state`` in the checkpoint's order (``expected_shapes``), whatever order it was read in (a
    safetensors file's is alphabetical): the order of the parameters is the order the gradients'
    total norm is summed in, and the optimizer's groups are compared in, so a resumed run must
    see the same one."""
    order = list(expected_shapes(config, task))
    return {**{k: state[k] for k in order if k in state}, **{k: v for k, v in state.items() if k not in order}}


def training_processor(processor: MobileViTImageProcessor, image_size: int | None) -> MobileViTImageProcessor:
    """``processor`` with its crop at ``image_size`` (and its shortest edge scaled with it, so a
    256 / 288 checkpoint keeps its ratio); unchanged for None."""
    settings = processor.to_dict()
    settings["do_reduce_labels"] = False  # the classes are the masks' own ids, in training and validation alike
    if image_size is not None:
        # the resize's ratio to the crop, kept (a processor that does not crop resizes to the size itself)
        edge = processor.size.get("shortest_edge") if isinstance(processor.size, dict) else None
        crop = processor.crop_size
        ratio = edge / min(crop["height"], crop["width"]) if edge and processor.do_center_crop else 1.0
        settings["crop_size"] = {"height": image_size, "width": image_size}
        settings["size"] = {"shortest_edge": int(round(image_size * ratio))}
        settings["do_center_crop"] = True
    return MobileViTImageProcessor.from_dict(settings)


def open_data(root, recipe: Recipe, ignore_index: int = 255):
    """The data folder for ``recipe.task`` (``data.ImageFolder`` or ``data.SegmentationFolder``)."""
    try:
        if recipe.task == "classification":
            return ImageFolder(root, val_fraction=recipe.val_fraction, seed=recipe.seed)
        return SegmentationFolder(root, val_fraction=recipe.val_fraction, seed=recipe.seed, ignore_index=ignore_index)
    except OSError as error:  # a folder or classes.txt that cannot be read
        where = error.filename or root
        raise DataError(f"{where}: cannot read ({error.strerror or error})") from None


# --------------------------------------------------------------------------------------------
# Writing files whole
# --------------------------------------------------------------------------------------------


def write_whole(path: Path, write) -> None:
    """``write(file)`` into a temporary file beside ``path``, flushed to disk, then renamed onto
    ``path``: readers see the old file or the new one, never a part; on any failure (a signal
    included) the temporary file is removed."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def _safetensors_bytes(tensors: dict, metadata: dict) -> bytes:
    from safetensors.numpy import save

    return save({k: np.require(v, requirements="C") for k, v in tensors.items()}, metadata=metadata)  # (ascontiguousarray makes a 0-d array 1-d)


def export_state(model, batches: int, frozen: str | None = None) -> dict[str, np.ndarray]:
    """The model's tensors as transformers' ``save_pretrained`` writes them: float32, batch norms
    unfolded, each with its ``num_batches_tracked``: the train-mode batches run, that updated its
    running statistics (0 for the batch norms under ``frozen``, a frozen backbone's)."""
    state = {k: np.asarray(v, np.float32) for k, v in model.state_dict().items() if not k.endswith(".num_batches_tracked")}
    for name in [k for k in state if k.endswith(".running_mean")]:
        count = 0 if frozen is not None and name.startswith(frozen) else batches
        state[name.replace(".running_mean", ".num_batches_tracked")] = np.array(count, np.int64)
    return state


# --------------------------------------------------------------------------------------------
# A run
# --------------------------------------------------------------------------------------------


class Run:
    """One fine-tuning run: the model, its processor, the data, the optimizer and schedule, the
    epochs done (``history``: one dict per epoch, as ``log.jsonl`` has them). Made by ``start`` or
    ``resume``; ``fit()`` trains the remaining epochs, saving each."""

    def __init__(self, model, processor, data, out: Path, recipe: Recipe, *, base: str, data_root: str,
                 history=None, quiet: bool = False, echo=print):
        self.model, self.processor, self.data, self.out, self.recipe = model, processor, data, Path(out), recipe
        self.base, self.data_root = base, data_root
        self.history = list(history or [])
        self.quiet, self.echo = quiet, echo
        self.steps_per_epoch = math.ceil(batch_count(len(data.train), recipe.batch_size, True) / recipe.accumulate)
        total = self.steps_per_epoch * recipe.epochs
        names = trainable_names(model)
        if recipe.freeze_backbone:
            names = [n for n in names if not n.startswith(BACKBONE)]
        groups = [{**g, "params": [n for n in g["params"] if n in set(names)]} for g in no_decay_groups(model)]
        groups = [g for g in groups if g["params"]]
        if recipe.optimizer == "adamw":
            self.optimizer = AdamW(model, groups, lr=recipe.lr, weight_decay=recipe.weight_decay)
        else:
            self.optimizer = SGD(model, groups, lr=recipe.lr, momentum=0.9, weight_decay=recipe.weight_decay)
        # (at most all but the last step: a one-step run has no warm-up)
        warmup = min(int(round(recipe.warmup * total)), total - 1)
        self.schedule = CosineWithWarmup(self.optimizer, total_steps=total, warmup_steps=warmup)
        self.reported = 0  # how many of the data's skipped files were named on stderr

    @property
    def epoch(self) -> int:  # epochs done
        return len(self.history)

    @property
    def metric(self) -> str:
        return "val_top1" if self.recipe.task == "classification" else "val_miou"

    def fit(self) -> list[dict]:
        """Train the epochs not yet done, saving each; returns the history."""
        while self.epoch < self.recipe.epochs:
            started = time.perf_counter()
            lr = self.schedule.get_last_lr()[0]
            train_loss = self.train_epoch()
            record = {"epoch": self.epoch + 1, "train_loss": train_loss, **self.evaluate(), "lr": lr,
                      "steps": self.steps_per_epoch * (self.epoch + 1), "seconds": round(time.perf_counter() - started, 3)}
            self.history.append(record)
            self.save()
            self._report_skipped()
            self.echo(self.describe(record))
        return self.history

    def describe(self, record: dict) -> str:
        if record["val_loss"] is None:
            val = "no validation images"
        else:
            metric = (f"val top-1 {100 * record['val_top1']:.1f}%" if "val_top1" in record
                      else f"val mIoU {100 * record['val_miou']:.1f}%")
            val = f"val loss {record['val_loss']:.4f}, {metric}"
        return (f"epoch {record['epoch']}/{self.recipe.epochs}: train loss {record['train_loss']:.4f}, {val} "
                f"(lr {record['lr']:.3g}, {record['seconds']:.1f} s)")

    def _report_skipped(self) -> None:
        skipped = self.data.train.skipped + self.data.val.skipped
        for line in skipped[self.reported:]:
            print(f"skipped {line}", file=sys.stderr)
        self.reported = len(skipped)

    def _batches(self, split, train: bool):
        return batches(split, self.processor, batch_size=self.recipe.batch_size, train=train, seed=self.recipe.seed,
                       epoch=self.epoch, crop_scale=(self.recipe.min_crop, 1.0), flip=self.recipe.flip)

    def train_epoch(self) -> float:
        """One pass over the training images; returns the mean loss per image."""
        from tqdm import tqdm

        recipe, model = self.recipe, self.model
        total, count, pending, micro = 0.0, 0, None, 0
        bar = tqdm(total=batch_count(len(self.data.train), recipe.batch_size, True), desc=f"epoch {self.epoch + 1}/{recipe.epochs}",
                   unit="batch", disable=self.quiet, file=sys.stderr, leave=False, dynamic_ncols=True)
        try:
            for k, (pixels, labels) in enumerate(self._batches(self.data.train, train=True)):
                generator = np.random.default_rng((recipe.seed, self.epoch, k))  # this step's dropout
                if recipe.task == "segmentation" and np.all(labels == model.config.semantic_loss_ignore_index):
                    bar.update(1)  # crops on ignored pixels alone: no loss to take (its gradient is 0)
                    continue
                if recipe.freeze_backbone:
                    # the frozen backbone's output, in eval mode (its last stage)
                    features = model(pixels, output_hidden_states=True).hidden_states[-1]
                    loss, grads = head_value_and_grad(model, features, labels, train=True, generator=generator)
                else:
                    loss, grads = value_and_grad(model, pixels, labels, train=True, generator=generator)
                if not math.isfinite(float(loss)):
                    raise FinetuneError(f"epoch {self.epoch + 1}, batch {k + 1}: the loss is {float(loss)}; "
                                        f"the learning rate ({recipe.lr}) may be too high")
                pending = grads if pending is None else {n: pending[n] + grads[n] for n in pending}
                micro += 1
                if micro == recipe.accumulate:
                    self._step(pending, micro)
                    pending, micro = None, 0
                total, count = total + float(loss) * len(labels), count + len(labels)
                bar.update(1)
                bar.set_postfix(loss=f"{total / count:.4f}")
            if pending is not None:  # the epoch's last, partial accumulation
                self._step(pending, micro)
        finally:
            bar.close()
        if count == 0:
            raise FinetuneError(f"{self.data_root}: no training image could be read ({'; '.join(self.data.train.skipped[:3])})")
        return total / count

    def _step(self, grads: dict, micro: int) -> None:
        if micro > 1:
            grads = {n: g / np.float32(micro) for n, g in grads.items()}
        if self.recipe.max_grad_norm is not None:
            clip_grad_norm(grads, self.recipe.max_grad_norm)
        self.optimizer.step(grads)
        self.schedule.step()

    def evaluate(self) -> dict:
        """The validation loss (mean per image) and top-1 accuracy, or mean IoU, in eval mode."""
        model, task = self.model, self.recipe.task
        classes = model.config.num_labels
        loss, count, correct = 0.0, 0, 0
        confusion = np.zeros((classes, classes), np.int64)
        ignore = model.config.semantic_loss_ignore_index
        for pixels, labels in self._batches(self.data.val, train=False):
            # the loss is a mean over the batch's images, or, for segmentation, over its pixels not ignored
            weight = len(labels) if task == "classification" else int(np.sum(labels != ignore))
            if weight == 0:
                continue
            output = model(pixels, labels=labels)
            loss, count = loss + float(output.loss) * weight, count + weight
            if task == "classification":
                correct += int(np.sum(output.logits.argmax(-1) == labels))
            else:
                predicted = interpolate_bilinear(output.logits, labels.shape[-2:]).argmax(1)
                valid = labels != ignore
                confusion += np.bincount(labels[valid] * classes + predicted[valid],
                                         minlength=classes * classes).reshape(classes, classes)
        if count == 0:
            return {"val_loss": None, self.metric: None}
        if task == "classification":
            return {"val_loss": loss / count, "val_top1": correct / count}
        union = confusion.sum(0) + confusion.sum(1) - np.diag(confusion)
        present = union > 0
        miou = float(np.mean(np.diag(confusion)[present] / union[present])) if present.any() else 0.0
        return {"val_loss": loss / count, "val_miou": miou}

    # -- saving ------------------------------------------------------------------------------------

    def save(self) -> None:
        """The state to resume from first (one file), then the checkpoint, the log and the plot."""
        self.out.mkdir(parents=True, exist_ok=True)
        tensors = {f"param/{k}": np.asarray(v) for k, v in self.model.state_dict().items()}
        optimizer = self.optimizer.state_dict()
        scalars = {}
        for name, entry in optimizer["state"].items():
            for key, value in entry.items():
                if isinstance(value, np.ndarray):
                    tensors[f"optim/{name}/{key}"] = value
                else:
                    scalars.setdefault(name, {})[key] = value
        state = {"format": FORMAT, "recipe": dataclasses.asdict(self.recipe), "base": self.base,
                 "data": self.data_root, "classes": list(self.data.classes), "train_images": len(self.data.train),
                 "config": self.model.config.to_dict(), "processor": self.processor.to_dict(),
                 "optimizer_groups": optimizer["param_groups"], "optimizer_scalars": scalars,
                 "schedule": self.schedule.state_dict(), "history": self.history}
        blob = _safetensors_bytes(tensors, {RESUME_KEY: json.dumps(state, default=_plain)})
        write_whole(self.out / RESUME_FILE, lambda f: f.write(blob))
        self.export()

    def export(self) -> None:
        """The checkpoint (model.safetensors, config.json, preprocessor_config.json), the log, the plot."""
        out = self.out
        batches_run = self.epoch * batch_count(len(self.data.train), self.recipe.batch_size, True)
        weights = _safetensors_bytes(export_state(self.model, batches_run, BACKBONE if self.recipe.freeze_backbone else None),
                                     {"format": "pt"})
        write_whole(out / "model.safetensors", lambda f: f.write(weights))
        config = self.model.config.to_dict()
        config["numpy_mvit2_finetuned"] = {"base": self.base, "data": self.data_root, "epochs": self.epoch,
                                           "recipe": dataclasses.asdict(self.recipe)}
        config_text = json.dumps(config, indent=2, sort_keys=True, default=_plain) + "\n"
        write_whole(out / "config.json", lambda f: f.write(config_text.encode()))
        processor_text = json.dumps(self.processor.to_dict(), indent=2, sort_keys=True) + "\n"
        write_whole(out / "preprocessor_config.json", lambda f: f.write(processor_text.encode()))
        log = "".join(json.dumps(r, default=_plain) + "\n" for r in self.history)
        write_whole(out / LOG_FILE, lambda f: f.write(log.encode()))
        png = plot_history(self.history, self.metric)
        write_whole(out / PLOT_FILE, lambda f: png.save(f, format="PNG"))


def _plain(value):  # NumPy scalars in JSON
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def start(data_root, base, base_processor: MobileViTImageProcessor, out, recipe: Recipe, *, base_name: str = "",
          quiet: bool = False, echo=print) -> Run:
    """A new run in ``out`` (which must not exist, or be empty): the data folder opened, the
    model made from ``base`` (loaded with ``fold_batch_norm=False``)."""
    recipe.check()
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        hint = " (--resume continues the run there)" if (out / RESUME_FILE).is_file() else ""
        raise FinetuneError(f"{out} exists and is not an empty folder; not overwritten{hint}")
    if isinstance(data_root, (ImageFolder, SegmentationFolder)):
        data = data_root
    else:
        data = open_data(data_root, recipe, base.config.semantic_loss_ignore_index)
    processor = training_processor(base_processor, recipe.image_size)
    crop = processor.crop_size
    try:
        model = new_model(base, recipe.task, data.id2label, image_size=crop["height"] if recipe.image_size else None,
                          seed=recipe.seed)
    except ConfigError as error:  # (more classes than a config holds, for one)
        raise FinetuneError(f"{data.root}: {error}") from None
    try:
        model.config.check_input_size(crop["height"], crop["width"])
    except ValueError as error:
        raise FinetuneError(f"image size {crop['height']}x{crop['width']}: {error}") from None
    try:  # made now, and written to once, so that a folder that cannot be written is said before an epoch's work
        out.mkdir(parents=True, exist_ok=True)
        write_whole(out / ".numpy_mvit2-write-test", lambda f: f.write(b""))
        os.unlink(out / ".numpy_mvit2-write-test")
    except OSError as error:
        raise FinetuneError(f"{out}: cannot write there ({error.strerror or error})") from None
    return Run(model, processor, data, out, recipe, base=base_name, data_root=str(data.root), quiet=quiet, echo=echo)


def read_resume_state(out) -> tuple[dict, dict]:
    """``(state, tensors)`` of ``out/resume.safetensors``, checked to be this package's."""
    path = Path(out) / RESUME_FILE
    if not path.is_file():
        raise FinetuneError(f"{path}: not found; nothing to resume (a run writes it after its first epoch)")
    try:
        tensors = read_safetensors(path)
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
        state = json.loads(metadata[RESUME_KEY])
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise ValueError(f"format {state.get('format') if isinstance(state, dict) else state!r}, expected {FORMAT}")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise FinetuneError(f"{path}: not a state this package saved ({error})") from None
    return state, tensors


def resume(out, data_root=None, *, quiet: bool = False, echo=print, **changes) -> Run:
    """The run saved in ``out``, ready to go on from its last complete epoch. ``data_root``:
    the data folder (default: the one the run was started on); ``changes``: recipe fields given
    again, which must equal the run's."""
    path = Path(out) / RESUME_FILE
    state, tensors = read_resume_state(out)
    try:  # the file is read as data from anywhere: anything missing or malformed is named, not a crash
        recipe = Recipe(**state["recipe"])
        recipe.check()
        config = MobileViTV2Config.from_dict(state["config"])
        processor = MobileViTImageProcessor.from_dict(state["processor"])
        params = {k[len("param/"):]: v for k, v in tensors.items() if k.startswith("param/")}
        model = TASKS[recipe.task](config, state_dict=in_order(params, config, recipe.task), dtype=np.float32,
                                   fold_batch_norm=False)
        history = [dict(r) for r in state["history"]]
        if len(history) > recipe.epochs or [r.get("epoch") for r in history] != list(range(1, len(history) + 1)) or not all(
                isinstance(r.get(key), (int, float, type(None))) for r in history for key in ("train_loss", "val_loss")):
            raise ValueError(f"its history is not {recipe.epochs} or fewer epochs' records")
        classes, train_images, base = list(map(str, state["classes"])), int(state["train_images"]), str(state["base"])
        saved_data = str(state["data"])
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError, RecursionError) as error:
        raise FinetuneError(f"{path}: cannot continue from it ({error})") from None
    differ = {k: (v, getattr(recipe, k)) for k, v in changes.items() if v is not None and getattr(recipe, k) != v}
    if differ:
        raise FinetuneError("--resume continues a run with its own settings; these differ from the run's: "
                            + ", ".join(f"{k} {v!r} (the run's: {w!r})" for k, (v, w) in differ.items()))
    data_root = saved_data if data_root is None else str(data_root)
    data = open_data(data_root, recipe, config.semantic_loss_ignore_index)
    if list(data.classes) != classes or len(data.train) != train_images:
        raise FinetuneError(f"{data_root}: not the data the run in {out} was trained on (classes "
                            f"{data.classes[:5]}, {len(data.train)} training images; the run's: "
                            f"{classes[:5]}, {train_images})")
    run = Run(model, processor, data, Path(out), recipe, base=base, data_root=data_root, history=history,
              quiet=quiet, echo=echo)
    optimizer_state = {}
    try:
        for key, value in tensors.items():
            if key.startswith("optim/"):
                name, field = key[len("optim/"):].rsplit("/", 1)
                optimizer_state.setdefault(name, {})[field] = value
        for name, entry in state["optimizer_scalars"].items():
            optimizer_state.setdefault(name, {}).update(entry)
        run.optimizer.load_state_dict({"state": optimizer_state, "param_groups": state["optimizer_groups"]})
        run.schedule.load_state_dict(state["schedule"])
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError, RecursionError) as error:
        raise FinetuneError(f"{path}: its optimizer state cannot be restored ({error})") from None
    run.export()  # the checkpoint files may lag the state by an epoch (a stop between the two)
    return run


# --------------------------------------------------------------------------------------------
# The plot
# --------------------------------------------------------------------------------------------


def plot_history(history: list[dict], metric: str, size=(900, 360)) -> Image.Image:
    """Two panels drawn with Pillow (no plotting library needed): the train and validation loss,
    and the validation metric, against the epoch."""
    width, height = size
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    epochs = [r["epoch"] for r in history]
    panels = [("loss", [("train", "train_loss", (31, 119, 180)), ("val", "val_loss", (255, 127, 14))]),
              (metric.replace("val_", "val ").replace("top1", "top-1").replace("miou", "mIoU"),
               [("val", metric, (44, 160, 44))])]
    for p, (title, lines) in enumerate(panels):
        left, top = 60 + p * width // 2, 30
        right, bottom = (p + 1) * width // 2 - 20, height - 40
        draw.rectangle((left, top, right, bottom), outline="black")
        draw.text((left, 8), title, fill="black")
        values = [r[key] for _, key, _ in lines for r in history if r.get(key) is not None]
        if not values:
            continue
        low, high = (min(values), max(values)) if p == 0 else (0.0, 1.0)  # the metric is a fraction
        span = (high - low) or 1.0
        first, last = epochs[0], epochs[-1]

        def at(epoch, value):
            x = left + (right - left) * ((epoch - first) / (last - first) if last > first else 0.5)
            return x, bottom - (bottom - top) * (value - low) / span

        for k, (label, key, colour) in enumerate(lines):
            points = [at(r["epoch"], r[key]) for r in history if r.get(key) is not None]
            if len(points) > 1:
                draw.line(points, fill=colour, width=2)
            for x, y in points:
                draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
            draw.text((right - 60, top + 6 + 14 * k), label, fill=colour)
        for value in (low, high):
            draw.text((left - 55, at(first, value)[1] - 6), f"{value:.3g}", fill="black")
        draw.text((left, bottom + 6), f"epoch {first}", fill="black")
        draw.text((right - 50, bottom + 6), f"epoch {last}", fill="black")
    return image
