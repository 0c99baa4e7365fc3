"""``numpy-mvit2``: classify and segment photos with MobileViTV2 on the CPU, and describe a model.

    numpy-mvit2 classify photo.jpg photos/ [--model ID_OR_FOLDER] [--top-k 5] [--json]
    numpy-mvit2 segment photo.jpg --out-dir masks/ [--model ID_OR_FOLDER]
    numpy-mvit2 info [--model ID_OR_FOLDER] [--image-size H W]

(also ``python -m numpy_mvit2 ...``). Results go to stdout; errors, notes and the progress bar to
stderr. A bad image is named on stderr with the reason and the others are still processed. Exit
status: 0 all done, 1 some input (or the model) failed, 2 usage error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from . import __version__
from .config import MobileViTV2Config
from .hub import resolve_file
from .modeling import (
    MobileViTV2ForImageClassification,
    MobileViTV2ForSemanticSegmentation,
)
from .processing import (
    PREPROCESSOR_CONFIG,
    ImageLoadError,
    MobileViTImageProcessor,
    load_image,
    post_process_image_classification,
    post_process_semantic_segmentation,
    voc_palette,
)
from .summary import format_summary, summarize
from .weights import CheckpointError

PROG = "numpy-mvit2"
DEFAULT_CLASSIFIER = "apple/mobilevitv2-1.0-imagenet1k-256"
DEFAULT_SEGMENTER = "apple/mobilevitv2-1.0-voc-deeplabv3"
# What a folder expands to (case-insensitive); a file named on the command line is always tried.
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".jpe", ".jfif", ".png", ".pbm", ".pgm", ".ppm", ".pnm",
                    ".tif", ".tiff", ".webp")
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold (Image.MAX_IMAGE_PIXELS)
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

CLASSIFY_JSON = """\
--json prints one JSON array to stdout, one object per input image, in input order:
  {"file": "cat.jpg", "predictions": [{"label": "tabby, tabby cat", "index": 281, "score": 0.61}, ...]}
  (predictions best first, top-k of them; score: softmax probability, or sigmoid for a
  multi-label model) or, for an input that failed,
  {"file": "broken.jpg", "error": "truncated or corrupt image data (...)"}
Errors are also named on stderr, and the exit status is 1 if any input failed."""

SEGMENT_JSON = """\
Writes, per image, <stem>_labels.png (a palette PNG whose pixel values are the class ids, PASCAL
VOC colours) and <stem>_overlay.png (the photo with the class colours blended over it), both at
the photo's own size (after EXIF rotation). A stem used twice in one run gets -2, -3, ... appended.
--json prints one JSON array to stdout, one object per input image, in input order:
  {"file": "cat.jpg", "labels": "out/cat_labels.png", "overlay": "out/cat_overlay.png",
   "size": [width, height], "classes": [{"label": "cat", "index": 8, "fraction": 0.41}, ...]}
  (classes present, largest area first) or {"file": "broken.jpg", "error": "..."}."""


class UsageError(Exception):
    """Bad arguments found after parsing: reported like argparse's errors, exit status 2."""


class ModelError(Exception):
    """The model (or its processor settings) cannot be loaded: one message, exit status 1."""


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


@dataclass
class Item:
    """One input image (or an input that failed before it became one)."""

    file: str
    error: str | None = None
    image: Image.Image | None = None  # the upright RGB photo, while it is being processed
    pixels: np.ndarray | None = None  # its [1, 3, h, w] model input
    result: dict = field(default_factory=dict)


def expand_inputs(inputs: list[str]) -> list[Item]:
    """Files as given; folders -> their image files (by extension, sorted by name, not recursive,
    hidden files skipped); missing paths and folders without images -> failed items."""
    items = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            try:
                found = sorted(p for p in path.iterdir()
                               if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and not p.is_dir())
            except OSError as e:
                items.append(Item(name, error=f"cannot list folder ({e.strerror or e})"))
                continue
            if not found:
                items.append(Item(name, error=f"folder holds no image files ({' '.join(IMAGE_EXTENSIONS)})"))
            items += [Item(str(p)) for p in found]
        elif path.exists():
            items.append(Item(name))
        else:
            items.append(Item(name, error="no such file or folder"))
    return items


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------


class Reporter:
    """stdout for results, stderr for errors, and a tqdm progress bar on stderr that is shown only
    when stderr is a terminal and --quiet is off."""

    def __init__(self, total: int, quiet: bool, desc: str):
        self.quiet = quiet
        self.failed = 0
        self.bar = None
        if not quiet and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="img", file=sys.stderr, dynamic_ncols=True, leave=False)

    def _write(self, text: str, stream) -> None:
        if self.bar is not None:
            self.bar.clear()
        print(text, file=stream, flush=True)
        if self.bar is not None:
            self.bar.refresh()

    def out(self, text: str) -> None:
        self._write(text, sys.stdout)

    def error(self, item: Item) -> None:
        self.failed += 1
        self._write(f"{PROG}: error: {item.file}: {item.error}", sys.stderr)

    def step(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def note(text: str, quiet: bool) -> None:
    if not quiet:
        print(f"{PROG}: {text}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Loading the model
# --------------------------------------------------------------------------------------------

LOAD_ERRORS = (CheckpointError, OSError, ValueError, TypeError, KeyError)


def _reason(name: str, e: BaseException) -> str:
    """The error's message without a leading repetition of the model's name."""
    text = str(e)
    return text[len(name) + 2 :] if text.startswith(f"{name}: ") else text


HEAD_WORDS = {"base": "a backbone-only (MobileViTV2Model)", "classification": "an image classification",
              "segmentation": "a semantic segmentation"}


def load_model(cls, name: str, command: str, default: str):
    config_path = Path(name) / "config.json"
    if config_path.is_file():  # a folder: say plainly when it holds the other kind of model
        try:
            head = guess_head(MobileViTV2Config.from_pretrained(config_path), default=None)
        except LOAD_ERRORS:
            head = None  # the loader below reports what is wrong with the file
        if head is not None and head != cls.head:
            raise ModelError(f"{name} is {HEAD_WORDS[head]} checkpoint (config.json's architectures); "
                             f"`{command}` needs {HEAD_WORDS[cls.head]} one, such as {default}")
    try:
        return cls.from_pretrained(name)
    except LOAD_ERRORS as e:
        raise ModelError(f"cannot load model {name}: {_reason(name, e)}") from None


def load_processor(name: str, config: MobileViTV2Config, quiet: bool) -> MobileViTImageProcessor:
    """The checkpoint's preprocessor_config.json; without one, the settings the apple checkpoints
    use, derived from the model's image_size (with a note)."""
    try:
        path = resolve_file(name, PREPROCESSOR_CONFIG, required=False)
        if path is not None:
            return MobileViTImageProcessor.from_pretrained(path)
    except LOAD_ERRORS as e:
        raise ModelError(f"cannot load the image processor settings of {name}: {_reason(name, e)}") from None
    processor = MobileViTImageProcessor.for_model_config(config)
    note(f"{name} has no {PREPROCESSOR_CONFIG}; preparing images as the apple/mobilevitv2 checkpoints expect: "
         f"shortest edge {processor.size['shortest_edge']}, center crop {config.image_size}, BGR, values in [0, 1]", quiet)
    return processor


# --------------------------------------------------------------------------------------------
# Running a model over the inputs
# --------------------------------------------------------------------------------------------


def _describe(e: BaseException) -> str:
    if isinstance(e, ImageLoadError):
        return e.reason
    return str(e) if isinstance(e, (ValueError, OSError)) else f"{type(e).__name__}: {e}"


def run_batches(items: list[Item], args, model, processor, reporter: Reporter, finish) -> None:
    """Open, preprocess and run the good items, ``args.batch_size`` at a time; ``finish(item,
    logits)`` turns one image's logits into its result. A failure is pinned on its own image: a
    batch whose forward pass fails is rerun one image at a time."""
    pending = [item for item in items if item.error is None]
    for start in range(0, len(pending), args.batch_size):
        batch = []
        for item in pending[start : start + args.batch_size]:
            try:
                item.image = load_image(item.file, max_pixels=args.max_pixels)
                item.pixels = processor(item.image, return_tensors="np")["pixel_values"]
                batch.append(item)
            except Exception as e:  # noqa: BLE001 - any failure is this file's, reported, never a traceback
                _fail(item, e, reporter)
        for group in _same_shape_groups(batch):
            try:
                logits = model(np.concatenate([item.pixels for item in group])).logits
                outputs = list(zip(group, logits))
            except Exception:  # noqa: BLE001
                outputs = []
                for item in group:
                    try:
                        outputs.append((item, model(item.pixels).logits[0]))
                    except Exception as e:  # noqa: BLE001
                        _fail(item, e, reporter)
            for item, item_logits in outputs:
                try:
                    finish(item, item_logits)
                except Exception as e:  # noqa: BLE001
                    _fail(item, e, reporter)
                else:
                    item.image = item.pixels = None  # free the memory as we go
                    reporter.step()


def _fail(item: Item, e: BaseException, reporter: Reporter) -> None:
    if os.environ.get("NUMPY_MVIT2_DEBUG"):
        traceback.print_exception(e)
    item.error = _describe(e)
    item.image = None
    item.pixels = None
    reporter.error(item)
    reporter.step()


def _same_shape_groups(items: list[Item]) -> list[list[Item]]:
    groups: dict[tuple, list[Item]] = {}
    for item in items:
        groups.setdefault(item.pixels.shape[1:], []).append(item)
    return list(groups.values())


def _start(args, items: list[Item], desc: str) -> Reporter:
    reporter = Reporter(sum(item.error is None for item in items), args.quiet, desc)
    for item in items:
        if item.error is not None:
            reporter.error(item)
    return reporter


def json_lines(records: list[dict]) -> str:
    """A JSON array with one record per line: valid JSON, and readable with grep and head."""
    if not records:
        return "[]"
    return "[\n" + ",\n".join("  " + json.dumps(r, ensure_ascii=False) for r in records) + "\n]"


def _finish_run(args, items: list[Item], reporter: Reporter) -> int:
    reporter.close()
    if args.json:
        records = [{"file": item.file, "error": item.error} if item.error is not None else {"file": item.file, **item.result}
                   for item in items]
        print(json_lines(records))
    return EXIT_FAILED if any(item.error is not None for item in items) else EXIT_OK


# --------------------------------------------------------------------------------------------
# classify
# --------------------------------------------------------------------------------------------


def cmd_classify(args) -> int:
    items = expand_inputs(args.inputs)
    model = load_model(MobileViTV2ForImageClassification, args.model, "classify", DEFAULT_CLASSIFIER)
    processor = load_processor(args.model, model.config, args.quiet)
    function = "sigmoid" if model.config.problem_type == "multi_label_classification" else "softmax"
    reporter = _start(args, items, "classify")

    def finish(item: Item, logits: np.ndarray) -> None:
        predictions = post_process_image_classification(logits[None], args.top_k, model.config.id2label, function)[0]
        item.result = {"predictions": predictions}
        if not args.json:
            lines = [f"{item.file}:"] + [f"  {p['score']:7.4f}  {p['label']}  [{p['index']}]" for p in predictions]
            reporter.out("\n".join(lines))

    run_batches(items, args, model, processor, reporter, finish)
    return _finish_run(args, items, reporter)


# --------------------------------------------------------------------------------------------
# segment
# --------------------------------------------------------------------------------------------


def _save_png(image: Image.Image, path: Path) -> None:
    """Write through a temporary file in the same folder, renamed into place: never half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        image.save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def label_image(classes: np.ndarray, palette: np.ndarray) -> Image.Image:
    """[H, W] class ids -> a palette PNG image ("P", VOC colours) or, past 256 classes, 16-bit grey."""
    if classes.max(initial=0) < 256:
        image = Image.fromarray(classes.astype(np.uint8), mode="P")
        image.putpalette(palette[:256].reshape(-1).tolist())
        return image
    return Image.fromarray(classes.astype(np.uint16))


def overlay_image(photo: Image.Image, classes: np.ndarray, palette: np.ndarray, alpha: float) -> Image.Image:
    """The photo with each pixel's class colour blended over it: ``(1 - alpha) * photo + alpha * colour``
    (Pillow's ``Image.blend``, in 8 bits: light on memory for large photos)."""
    colours = Image.fromarray(palette[classes % len(palette)], mode="RGB")
    return Image.blend(photo.convert("RGB"), colours, alpha)


def cmd_segment(args) -> int:
    out_dir = Path(args.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out-dir {args.out_dir}: exists and is not a folder")
    items = expand_inputs(args.inputs)
    model = load_model(MobileViTV2ForSemanticSegmentation, args.model, "segment", DEFAULT_SEGMENTER)
    processor = load_processor(args.model, model.config, args.quiet)
    # The whole photo is segmented: resized as the checkpoint says but not center-cropped (the
    # network is fully convolutional), so every pixel of the photo gets a label and the mask lines
    # up with the photo once the logits are resized to its size.
    processor = MobileViTImageProcessor.from_dict({**processor.to_dict(), "do_center_crop": False})
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out-dir {args.out_dir}: cannot create the folder ({e.strerror or e})") from None
    palette = voc_palette(256)
    id2label = model.config.id2label
    used_stems: dict[str, int] = {}
    reporter = _start(args, items, "segment")

    def finish(item: Item, logits: np.ndarray) -> None:
        width, height = item.image.size
        classes = post_process_semantic_segmentation(logits[None], target_sizes=[(height, width)])[0]
        stem = Path(item.file).stem
        used_stems[stem] = used_stems.get(stem, 0) + 1
        if used_stems[stem] > 1:
            stem = f"{stem}-{used_stems[stem]}"
        labels_path, overlay_path = out_dir / f"{stem}_labels.png", out_dir / f"{stem}_overlay.png"
        _save_png(label_image(classes, palette), labels_path)
        _save_png(overlay_image(item.image, classes, palette, args.alpha), overlay_path)
        ids, counts = np.unique(classes, return_counts=True)
        order = np.argsort(-counts, kind="stable")
        present = [{"label": id2label.get(int(ids[i]), f"LABEL_{int(ids[i])}"), "index": int(ids[i]),
                    "fraction": round(float(counts[i]) / classes.size, 6)} for i in order]
        item.result = {"labels": str(labels_path), "overlay": str(overlay_path), "size": [width, height], "classes": present}
        if not args.json:
            summary = ", ".join(f"{c['label']} {100 * c['fraction']:.1f}%" for c in present[:5])
            summary += f", and {len(present) - 5} more" if len(present) > 5 else ""
            reporter.out(f"{item.file}: {labels_path}, {overlay_path} ({summary})")

    run_batches(items, args, model, processor, reporter, finish)
    return _finish_run(args, items, reporter)


# --------------------------------------------------------------------------------------------
# info
# --------------------------------------------------------------------------------------------

ARCHITECTURE_HEADS = {"ForImageClassification": "classification", "ForSemanticSegmentation": "segmentation",
                      "V2Model": "base"}


def guess_head(config: MobileViTV2Config, default: str | None = "classification") -> str | None:
    """The head named in config.json's ``architectures`` (``default`` when it names none)."""
    for arch in config.extra.get("architectures") or []:
        for suffix, head in ARCHITECTURE_HEADS.items():
            if str(arch).endswith(suffix):
                return head
    return default


def cmd_info(args) -> int:
    try:
        config = MobileViTV2Config.from_pretrained(args.model)
    except LOAD_ERRORS as e:
        raise ModelError(f"cannot load the config of {args.model}: {_reason(args.model, e)}") from None
    head = args.head or guess_head(config)
    height, width = args.image_size or (config.image_size, config.image_size)
    try:
        rows = summarize(config, height, width, head=head, per_layer=args.per_layer)
    except ValueError as e:
        raise UsageError(f"--image-size {height} {width}: {e}") from None
    if args.json:
        print(json.dumps({"model": args.model, "head": head, "input_shape": [config.num_channels, height, width],
                          "macs": sum(r.macs for r in rows), "params": sum(r.params for r in rows),
                          "params_folded": sum(r.params_folded for r in rows),
                          "rows": [r.to_dict() for r in rows]}, indent=2))
        return EXIT_OK
    title = (f"{args.model}: MobileViTV2, width multiplier {config.width_multiplier}, {head} head"
             + (f" ({config.num_labels} labels)" if head != "base" else "")
             + f", output stride {config.output_stride}; input {config.num_channels}x{height}x{width}")
    print(format_summary(rows, title=title))
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="MobileViTV2 in plain NumPy: classify and segment images on the CPU, describe a model.",
        epilog="Exit status: 0 all done, 1 some input or the model failed, 2 usage error. "
               "MODEL is a folder (config.json, model.safetensors, preprocessor_config.json) or a Hugging Face "
               "repo id (read from the Hugging Face cache, downloaded if missing unless HF_HUB_OFFLINE=1).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def images_command(name, help_text, default_model, epilog):
        sub = commands.add_parser(name, help=help_text, description=help_text, epilog=epilog,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER",
                         help="image files, and folders whose image files (" + " ".join(IMAGE_EXTENSIONS)
                              + ", sorted by name, not recursive) are all used")
        sub.add_argument("--model", "-m", default=default_model, metavar="ID_OR_FOLDER",
                         help=f"checkpoint folder or Hugging Face repo id (default: {default_model})")
        sub.add_argument("--batch-size", "-b", type=_positive_int, default=8, metavar="N",
                         help="images per forward pass (default: 8)")
        sub.add_argument("--json", action="store_true", help="print the results as JSON (shape below)")
        sub.add_argument("--max-pixels", type=_positive_int, default=DEFAULT_MAX_PIXELS, metavar="N",
                         help=f"refuse images with more pixels than this (default: {DEFAULT_MAX_PIXELS:,}, "
                              "Pillow's decompression-bomb limit)")
        sub.add_argument("--quiet", "-q", action="store_true",
                         help="no progress bar and no notes (errors are still printed)")
        return sub

    classify = images_command("classify", "Classify images: the top-k labels with their probabilities.",
                              DEFAULT_CLASSIFIER, CLASSIFY_JSON)
    classify.add_argument("--top-k", "-k", type=_positive_int, default=5, metavar="K",
                          help="how many labels to show per image (default: 5)")
    classify.set_defaults(func=cmd_classify)

    segment = images_command("segment", "Segment images: a label PNG and an overlay PNG per image, at the photo's size. "
                                        "The whole photo is segmented: resized as the checkpoint's preprocessor says, "
                                        "without its center crop, so every pixel gets a label.",
                             DEFAULT_SEGMENTER, SEGMENT_JSON)
    segment.add_argument("--out-dir", "-o", required=True, metavar="DIR", help="folder for the PNG files (created if needed)")
    segment.add_argument("--alpha", type=_fraction, default=0.5,
                         help="opacity of the class colours in the overlay, 0 to 1 (default: 0.5)")
    segment.set_defaults(func=cmd_segment)

    info = commands.add_parser("info", help="Parameters, MACs and output shapes per stage.",
                               description="Parameters, multiply-accumulates (MACs) and output shapes per stage of a "
                                           "model, from its config.json alone (no weights are read).")
    info.add_argument("--model", "-m", default=DEFAULT_CLASSIFIER, metavar="ID_OR_FOLDER",
                      help=f"checkpoint folder, config.json or Hugging Face repo id (default: {DEFAULT_CLASSIFIER})")
    info.add_argument("--image-size", type=_positive_int, nargs=2, metavar=("H", "W"),
                      help="input height and width (default: the config's image_size)")
    info.add_argument("--head", choices=("base", "classification", "segmentation"),
                      help="which model (default: from config.json's architectures, else classification)")
    info.add_argument("--per-layer", action="store_true", help="one row per layer instead of per stage")
    info.add_argument("--json", action="store_true",
                      help="print {model, head, input_shape, params, params_folded, macs, rows: [{name, stage, kind, "
                           "output_shape, params, params_folded, macs}]} as JSON")
    info.set_defaults(func=cmd_info)
    return parser


def quiet_hub_logging() -> None:
    """huggingface_hub logs every retry of a failed download as a warning; the failure itself is
    reported once, as our error. (HF_HUB_VERBOSITY, if set, still wins.)"""
    if "huggingface_hub" in sys.modules:
        if "HF_HUB_VERBOSITY" not in os.environ:
            logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    else:  # read by huggingface_hub when it is first imported
        os.environ.setdefault("HF_HUB_VERBOSITY", "error")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    quiet_hub_logging()
    if getattr(args, "max_pixels", None) is not None:
        # --max-pixels replaces Pillow's decompression-bomb limit for this process
        Image.MAX_IMAGE_PIXELS = None
    try:
        return args.func(args)
    except UsageError as e:
        parser.exit(EXIT_USAGE, f"{PROG} {args.command}: error: {e}\n")
    except ModelError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `numpy-mvit2 classify photos/ | head`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED
    except Exception as e:
        if os.environ.get("NUMPY_MVIT2_DEBUG"):
            raise
        print(f"{PROG}: internal error: {type(e).__name__}: {e} (set NUMPY_MVIT2_DEBUG=1 for the traceback)", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
