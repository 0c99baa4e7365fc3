"""Generated checkpoints: the real MobileViTV2 architectures with seeded random weights, NOT pretrained.

One command writes a checkpoint folder that ``from_pretrained``, the ``numpy-mvit2`` command line
and transformers' ``from_pretrained`` all read, for trying things where the published checkpoints
cannot be downloaded::

    python -m numpy_mvit2.generate mvit2-1.0-generated                          # ImageNet-shaped classifier
    python -m numpy_mvit2.generate mvit2-voc-generated --head segmentation      # VOC-shaped DeepLabV3

The folder holds what a checkpoint on the Hub holds, and says in each place a reader looks that
its weights are random:

- ``config.json``: transformers' fields, ``architectures``, and a ``"numpy_mvit2_generated"`` entry
  (``"pretrained": false``, the seed, the command that made it);
- ``model.safetensors``: float32 tensors under transformers' names, batch norms *not* folded and
  each with its ``num_batches_tracked``, as ``save_pretrained`` writes them, so transformers loads
  the folder too; the header's metadata says the weights are random;
- ``preprocessor_config.json``: the preprocessing the apple/mobilevitv2 checkpoints use
  (``MobileViTImageProcessor.for_model_config``: shortest edge ``image_size + 32``, bilinear,
  centre crop ``image_size``, BGR);
- ``README.md``: a model card that says the weights are random and how they were made.

The weights are the ones ``Model(config, seed=seed)`` draws (``numpy_mvit2.weights.init``: He-normal
convolutions, zero biases, identity norms), rounded to float32. ``--random-norms`` also draws the
batch-norm statistics, the norm scales and the biases, so that a comparison with another
implementation (``numpy_mvit2.crosscheck``) exercises those paths too: with identity norms and zero
biases a bug there would go unseen.

Nothing is ever half-written: the files go to a temporary folder beside the target, which is
renamed into place once complete. An existing folder that is not empty is refused unless
``--overwrite`` is given, and even then only a generated checkpoint (one whose ``config.json``
carries the entry above) is replaced: ``--overwrite`` with a mistyped path never deletes a folder
of other files. Needs only NumPy and safetensors (never torch or transformers).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from .config import MobileViTV2Config
from .errors import ConfigError
from .processing import MobileViTImageProcessor
from .safeio import current_umask
from .weights.init import random_state_dict

MARKER = "numpy_mvit2_generated"
"""The ``config.json`` key that marks a generated checkpoint (a dict; its ``"pretrained"`` is false)."""

FORMAT = 1
"""Bumped whenever the same arguments would give different files (``numpy_mvit2.demo`` then makes its
cached checkpoints again)."""

FILES = ("config.json", "model.safetensors", "preprocessor_config.json", "README.md")

ARCHITECTURES = {
    "base": "MobileViTV2Model",
    "classification": "MobileViTV2ForImageClassification",
    "segmentation": "MobileViTV2ForSemanticSegmentation",
}

# The shapes of the published checkpoints each head stands in for: apple/mobilevitv2-1.0-imagenet1k-256
# (1000 classes at 256 x 256) and apple/mobilevitv2-1.0-voc-deeplabv3 (21 classes at 512 x 512, output
# stride 16). Labels are transformers' placeholders, LABEL_0, LABEL_1, ...: random weights have no classes.
HEAD_DEFAULTS = {
    "base": {"num_labels": 0},
    "classification": {"num_labels": 1000},
    "segmentation": {"num_labels": 21, "image_size": 512, "output_stride": 16},
}

NOTE = "seeded random weights, NOT pretrained: the architecture is real, its predictions mean nothing"


class GenerateError(Exception):
    """The target folder cannot be written (it exists and holds other files, or is a file)."""


def is_generated(config) -> bool:
    """True when ``config`` (a ``MobileViTV2Config`` or a ``config.json`` dict) is a generated checkpoint's."""
    extra = config if isinstance(config, dict) else getattr(config, "extra", {})
    entry = extra.get(MARKER)
    return isinstance(entry, dict) and entry.get("pretrained") is False


def generated_config(head: str = "classification", *, width: float = 1.0, seed: int = 0, random_norms: bool = False,
                     **config_fields) -> MobileViTV2Config:
    """The config a generated checkpoint is written with: the head's defaults (``HEAD_DEFAULTS``), then
    ``config_fields`` (any ``MobileViTV2Config`` field), ``architectures``, and the generated marker."""
    if head not in ARCHITECTURES:
        raise ValueError(f"head must be one of {', '.join(ARCHITECTURES)}, got {head!r}")
    fields = {**HEAD_DEFAULTS[head], **config_fields}
    if "id2label" in fields:  # the labels decide the count; a default count would clash with them
        fields.pop("num_labels", None)
    marker = {"pretrained": False, "seed": int(seed), "random_norms": bool(random_norms), "head": head,
              "format": FORMAT, "made_by": "python -m numpy_mvit2.generate", "note": NOTE}
    return MobileViTV2Config(width_multiplier=width, architectures=[ARCHITECTURES[head]], **fields, **{MARKER: marker})


def generated_state_dict(config: MobileViTV2Config, head: str, seed: int = 0, random_norms: bool = False) -> dict:
    """float32 tensors under transformers' names, batch norms unfolded, ``num_batches_tracked`` beside
    each (as PyTorch saves a batch norm): what ``save_pretrained`` would write for these weights."""
    state = random_state_dict(config, head, seed=seed)
    if random_norms:
        # Batch-norm statistics of O(1) effect, norm scales around 1, small biases: far enough from the
        # identity that a mistake in folding, in the norms or in a bias changes the output.
        rng = np.random.default_rng(seed)
        for name, tensor in state.items():
            if name.endswith("running_var"):
                state[name] = rng.uniform(0.5, 2.0, tensor.shape)
            elif name.endswith("running_mean") or (tensor.ndim == 1 and name.endswith("bias")):
                state[name] = rng.normal(0.0, 0.2, tensor.shape)
            elif tensor.ndim == 1:  # batch-norm and group-norm scales
                state[name] = rng.uniform(0.6, 1.4, tensor.shape)
    state = {name: tensor.astype(np.float32) for name, tensor in state.items()}
    for name in [n for n in state if n.endswith("running_var")]:
        state[name.replace("running_var", "num_batches_tracked")] = np.zeros((), np.int64)
    return state


def model_card(config: MobileViTV2Config, head: str, seed: int, random_norms: bool) -> str:
    entry = config.extra[MARKER]
    command = f"python -m numpy_mvit2.generate FOLDER --head {head} --width {config.width_multiplier} --seed {seed}"
    if random_norms:
        command += " --random-norms"
    return (
        "# Generated checkpoint: random weights, NOT pretrained\n\n"
        f"This folder is a MobileViTV2 checkpoint ({ARCHITECTURES[head]}, width multiplier "
        f"{config.width_multiplier}, {config.num_labels} labels, {config.image_size} x {config.image_size} input, "
        f"output stride {config.output_stride}) whose weights are **seeded random numbers** (seed {seed}). "
        "It was never trained: the architecture, the shapes and the arithmetic are real; its predictions "
        "mean nothing, and its labels (LABEL_0, LABEL_1, ...) are placeholders unless given.\n\n"
        f"Made by numpy_mvit2 ({entry['made_by']}, format {entry['format']}), the same as\n\n"
        f"    {command}\n\n"
        "Weights: He-normal convolutions and linear layers"
        + (", random batch-norm statistics, norm scales and biases" if random_norms else
           ", zero biases, identity batch norms and group norms")
        + "; float32, batch norms not folded, as transformers' save_pretrained writes them.\n"
        f"config.json marks the folder with \"{MARKER}\": {{\"pretrained\": false, ...}}.\n"
    )


def _replaceable(path: Path) -> bool:
    """An empty folder, or a generated checkpoint and nothing else: only the files this module
    writes, regular files (not links), its config.json carrying the marker."""
    entries = list(path.iterdir())
    if not entries:
        return True
    if not all(p.name in FILES and p.is_file() and not p.is_symlink() for p in entries):
        return False  # someone's other files are there too: never deleted with the checkpoint
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and is_generated(config)


def _check_target(folder: Path, overwrite: bool) -> None:
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise GenerateError(f"{folder} exists and is not a folder; choose another path")
    if folder.is_dir() and Path.cwd().resolve().is_relative_to(folder.resolve()):
        raise GenerateError(f"{folder} is the current folder or holds it, and is not replaced; name a folder "
                            "inside it (e.g. ./generated) or run from elsewhere")
    if folder.is_dir() and any(folder.iterdir()):
        if not overwrite:
            raise GenerateError(f"{folder} exists and is not empty; pass --overwrite (overwrite=True) to replace "
                                "a generated checkpoint there, or choose another folder")
        if not _replaceable(folder):
            raise GenerateError(f"{folder} holds more than a generated checkpoint (other files, links, or no "
                                f"\"{MARKER}\" in its config.json); it is not replaced, even with --overwrite: "
                                "remove it yourself or choose another folder")


def generate_checkpoint(folder: str | os.PathLike, head: str = "classification", *, width: float = 1.0, seed: int = 0,
                        random_norms: bool = False, overwrite: bool = False,
                        processor: MobileViTImageProcessor | None = None, **config_fields) -> Path:
    """Write a generated checkpoint (random weights, NOT pretrained) to ``folder`` and return its path.

    ``head`` is ``"classification"`` (1000 labels, 256 x 256, like apple/mobilevitv2-*-imagenet1k-256),
    ``"segmentation"`` (DeepLabV3, 21 labels, 512 x 512, output stride 16, like
    apple/mobilevitv2-*-voc-deeplabv3) or ``"base"`` (the backbone alone). ``width`` is the width
    multiplier, ``seed`` seeds the weights (the same as ``Model(config, seed=seed)``), and
    ``config_fields`` set any other ``MobileViTV2Config`` field (``num_labels``, ``id2label``,
    ``image_size``, ...). ``processor`` replaces the preprocessing settings the config implies.

    Raises ``GenerateError`` when ``folder`` exists and is not empty, unless ``overwrite`` is true
    and it holds a generated checkpoint; ``ConfigError`` for a bad config value. The files are
    written to a temporary folder beside ``folder`` and renamed into place: never half-written."""
    folder = Path(folder)
    config = generated_config(head, width=width, seed=seed, random_norms=random_norms, **config_fields)
    processor = processor or MobileViTImageProcessor.for_model_config(config)
    _check_target(folder, overwrite)  # before the work, so a refusal is immediate
    folder.parent.mkdir(parents=True, exist_ok=True)
    from safetensors.numpy import save_file

    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.generating-", dir=folder.parent))
    try:
        config.save_pretrained(staging)
        save_file(generated_state_dict(config, head, seed, random_norms), str(staging / "model.safetensors"),
                  metadata={"format": "pt", MARKER: NOTE})
        processor.save_pretrained(staging)
        (staging / "README.md").write_text(model_card(config, head, seed, random_norms), encoding="utf-8")
        # mkdtemp makes the folder 0700 and safetensors its file 0600: a checkpoint is ordinary files
        mask = current_umask()
        os.chmod(staging, 0o777 & ~mask)
        for name in FILES:
            os.chmod(staging / name, 0o666 & ~mask)
        _check_target(folder, overwrite)  # again: the folder may have appeared meanwhile
        _move_into_place(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def _move_into_place(staging: Path, folder: Path) -> None:
    """Rename the finished folder to ``folder``; a generated checkpoint already there is moved aside
    first and removed after (an empty folder is replaced by the rename itself)."""
    old = None
    if folder.is_dir() and any(folder.iterdir()):
        old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.replaced-", dir=folder.parent))
        os.rename(folder, old / "old")
    try:
        os.rename(staging, folder)  # atomic; replaces an empty folder, fails on a non-empty one
    except OSError as error:
        if old is not None:  # put the old checkpoint back rather than leave nothing
            os.rename(old / "old", folder)
            shutil.rmtree(old, ignore_errors=True)
        raise GenerateError(f"{folder}: could not move the new checkpoint into place ({error.strerror}); "
                            "another program may have written there meanwhile") from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m numpy_mvit2.generate",
        description="Write a generated MobileViTV2 checkpoint: the real architecture with seeded RANDOM weights, "
                    "NOT pretrained (its predictions mean nothing). The folder (config.json, model.safetensors, "
                    "preprocessor_config.json, README.md) loads in numpy_mvit2, the numpy-mvit2 command line and "
                    "transformers. Needs neither torch nor transformers.",
        epilog="examples:\n"
               "  python -m numpy_mvit2.generate mvit2-1.0-generated\n"
               "  python -m numpy_mvit2.generate mvit2-voc-generated --head segmentation\n"
               "  numpy-mvit2 classify photo.jpg --model mvit2-1.0-generated\n\n"
               "An existing folder that is not empty is refused unless --overwrite is given, and then only a\n"
               "generated checkpoint is replaced. Files are written to a temporary folder and renamed into place.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="the checkpoint folder to write (created; must not exist or be empty)")
    parser.add_argument("--head", choices=tuple(ARCHITECTURES), default="classification",
                        help="classification: MobileViTV2ForImageClassification, 1000 labels, 256x256 (default); "
                             "segmentation: MobileViTV2ForSemanticSegmentation (DeepLabV3), 21 labels, 512x512, "
                             "output stride 16; base: MobileViTV2Model, the backbone alone")
    parser.add_argument("--width", type=float, default=1.0, metavar="W",
                        help="width multiplier, as in mobilevitv2-W (0.5, 0.75, 1.0, ..., 2.0; default 1.0)")
    parser.add_argument("--seed", type=_seed, default=0, help="seed of the random weights (default 0)")
    parser.add_argument("--num-labels", type=int, metavar="N", help="number of labels (default: 1000, or 21 for segmentation)")
    parser.add_argument("--image-size", type=int, metavar="S",
                        help="input size the preprocessing crops to (default 256, or 512 for segmentation)")
    parser.add_argument("--random-norms", action="store_true",
                        help="also draw batch-norm statistics, norm scales and biases at random (default: identity "
                             "norms and zero biases, the weights Model(config, seed=SEED) draws)")
    parser.add_argument("--overwrite", action="store_true", help="replace a generated checkpoint already in FOLDER")
    return parser


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to 2**32 - 1, got {text!r}") from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to 2**32 - 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # nothing half-written: the files are renamed into place whole, or not at all
        print("python -m numpy_mvit2.generate: interrupted", file=sys.stderr)
        return 130


def _main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    fields = {name: value for name, value in (("num_labels", args.num_labels), ("image_size", args.image_size))
              if value is not None}
    if args.head == "base" and args.num_labels:
        parser.error("--num-labels: the base head (the backbone alone) has no labels")
    try:
        folder = generate_checkpoint(args.folder, args.head, width=args.width, seed=args.seed,
                                     random_norms=args.random_norms, overwrite=args.overwrite, **fields)
    except ConfigError as error:
        parser.error(str(error))
    except (GenerateError, OSError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 1
    config = MobileViTV2Config.from_pretrained(folder)
    labels = f"{config.num_labels} placeholder labels, " if args.head != "base" else ""
    print(f"wrote {folder}{os.sep}: {', '.join(FILES)}")
    print(f"{ARCHITECTURES[args.head]}, width {config.width_multiplier}, {labels}{config.image_size}x{config.image_size} "
          f"input, seed {args.seed}{', random norms' if args.random_norms else ''}")
    print("RANDOM weights, NOT pretrained: the architecture is real, its predictions mean nothing.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
