"""Inference over many images, the one building block of every run: ``numpy-mvit2 classify`` and
``segment`` in one process, and each worker of a cluster (``numpy_mvit2.streaming``).

    predictor = Predictor("path/to/checkpoint", task="classify", top_k=5)   # loads it once
    predictor.predict(["a.jpg", "b.png"])          # -> one record per input, in order
    predictor.predict(["a.jpg"], data=[jpeg_bytes])   # the files' bytes, read elsewhere
    predictor({"file": [...], "bytes": [...]})     # columns in, columns out (Ray Data's map_batches)
    predict_partition(inputs, job)                 # Dask's map_partitions: one Predictor per process

A record is what ``--json`` and ``--output`` write: ``{"file": ..., "predictions": [...]}`` for
classify, ``{"file": ..., "size": ..., "classes": [...], "png": {"labels": bytes, "overlay":
bytes}}`` for segment (the caller writes the PNGs where it wants them, and names them in the
record), or ``{"file": ..., "error": "..."}``: an input that fails is a record, never an exception.

Each image runs alone through the network, on one thread (``fast.executors.one_thread``), and
several images at a time on ``threads`` threads: an image's record is then bit for bit the same
whatever the batch, the thread count or the process that computes it, so a cluster's run writes
exactly the records of a run on one machine. (A batch's images computed together differ from the
same images computed apart by float32 round-off: matrix products of other shapes sum in other
orders.) Decoding one image overlaps the forward pass of another: Pillow and BLAS release the GIL.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from .config import MobileViTV2Config
from .errors import CheckpointError
from .fast.executors import blas_limited, configured_threads, one_thread
from .hub import resolve_file
from .modeling import MobileViTV2ForImageClassification, MobileViTV2ForSemanticSegmentation
from .processing import (
    PREPROCESSOR_CONFIG,
    ImageLoadError,
    MobileViTImageProcessor,
    load_image,
    output_size,
    post_process_image_classification,
    post_process_semantic_segmentation,
    voc_palette,
)
from .safeio import read_settings_json

TASKS = ("classify", "segment")
DEFAULT_MODELS = {"classify": "apple/mobilevitv2-1.0-imagenet1k-256", "segment": "apple/mobilevitv2-1.0-voc-deeplabv3"}
# The limits on one image, per command: the largest image they admit must stay under 1 GB of memory
# and 10 CPU seconds (the hostile-input bar), with one BLAS thread, on noisy photos at the worst
# aspect ratio the prepared limit admits, JPEG and RGBA PNG (the measurements behind the numbers:
# benchmarks/README.md, "The limits on one image"):
# - decoded pixels. classify holds the photo decoded and converted to RGB (up to 8 bytes a pixel)
#   and little else. segment also upsamples the label scores to the photo's size, holds its class
#   map and writes two PNGs that size, so its limit is lower, a 4K frame, where a width-2.0 model
#   just meets the bar (most of it the network on the prepared pixels). Pillow's own limit
#   (89,478,485) would take segment past the memory bar.
DEFAULT_MAX_PIXELS = {"classify": 40_000_000, "segment": 8_500_000}
# - pixels after the checkpoint's resize (before classify's center crop): the resize turns a 1x20000
#   strip into 288x5,760,000. classify only resizes and rescales them; segment runs the network on
#   all of them (800,000 = a 2.7:1 panorama at shortest edge 544).
DEFAULT_MAX_PREPARED_PIXELS = {"classify": 4_000_000, "segment": 800_000}


# --------------------------------------------------------------------------------------------
# Loading the model
# --------------------------------------------------------------------------------------------


class ModelError(Exception):
    """The model (or its processor settings) cannot be loaded: one message, exit status 1."""


# What loading a hostile checkpoint may raise: the library's errors (ValueError and OSError
# subclasses) and, as a last resort, what a crafted file can still provoke deeper down.
LOAD_ERRORS = (CheckpointError, OSError, ValueError, TypeError, LookupError, ArithmeticError, MemoryError,
               RecursionError)


def _reason(name: str, e: BaseException) -> str:
    """The error's message without a leading repetition of the model's name."""
    text = str(e)
    if not isinstance(e, (ValueError, OSError)) or not text:
        return f"{type(e).__name__}: {text}" if text else type(e).__name__
    return text[len(name) + 2 :] if text.startswith(f"{name}: ") else text


HEAD_WORDS = {"base": "a backbone-only (MobileViTV2Model)", "classification": "an image classification",
              "segmentation": "a semantic segmentation"}


def behavior_overrides(behavior: str | None) -> dict:
    """``from_pretrained``'s keywords for ``--behavior`` (none: the checkpoint's own framework's)."""
    return {} if behavior is None else {"behavior": behavior}


def load_model(cls, name: str, command: str, default: str, behavior: str | None = None, **load):
    path = Path(name)
    # a folder, or a weights file with its config.json beside it (as from_pretrained reads them)
    config_path = (path.parent if path.is_file() else path) / "config.json"
    if config_path.is_file():  # say plainly when it holds the other kind of model
        try:
            head = guess_head(MobileViTV2Config.from_pretrained(config_path), default=None)
        except LOAD_ERRORS:
            head = None  # the loader below reports what is wrong with the file
        if head is not None and head != cls.head:
            raise ModelError(f"{name} is {HEAD_WORDS[head]} checkpoint (config.json's architectures); "
                             f"`{command}` needs {HEAD_WORDS[cls.head]} one, such as {default}")
    try:
        return cls.from_pretrained(name, **behavior_overrides(behavior), **load)
    except LOAD_ERRORS as e:
        raise ModelError(f"cannot load model {name}: {_reason(name, e)}") from None


def check_crop(processor: MobileViTImageProcessor, name: str, max_prepared_pixels: int | None) -> None:
    """Every image becomes a crop_size model input: a crop over the prepared-pixel limit is the
    checkpoint's error, reported once."""
    height, width = processor.crop_size["height"], processor.crop_size["width"]
    if processor.do_center_crop and max_prepared_pixels is not None and height * width > max_prepared_pixels:
        raise ModelError(f"cannot use the image processor settings of {name}: crop_size {height}x{width} = "
                         f"{height * width:,} pixels is over the limit of {max_prepared_pixels:,} prepared pixels "
                         "(--max-prepared-pixels)")


def load_processor(name: str, config: MobileViTV2Config, note=None,
                   max_prepared_pixels: int | None = None) -> MobileViTImageProcessor:
    """The checkpoint's preprocessor_config.json; without one, the settings the apple checkpoints
    use, derived from the model's image_size (said to ``note(text)``, when given)."""
    try:
        path = resolve_file(name, PREPROCESSOR_CONFIG, required=False)
        if path is not None:
            # read as a file from a stranger: regular, bounded in size and nesting (safeio)
            settings = read_settings_json(path, error=ValueError, what=PREPROCESSOR_CONFIG)
            if not isinstance(settings, dict):
                raise ValueError(f"{path} must hold a JSON object, found {type(settings).__name__}")
            try:
                processor = MobileViTImageProcessor.from_dict(settings)
            except LOAD_ERRORS as e:
                raise ValueError(f"{path}: {_reason(str(path), e)}") from None
            check_crop(processor, name, max_prepared_pixels)
            return processor
    except LOAD_ERRORS as e:
        raise ModelError(f"cannot load the image processor settings of {name}: {_reason(name, e)}") from None
    processor = MobileViTImageProcessor.for_model_config(config)
    check_crop(processor, name, max_prepared_pixels)
    where = f"there is no {PREPROCESSOR_CONFIG} beside {name}" if Path(name).is_file() else f"{name} has no {PREPROCESSOR_CONFIG}"
    if note is not None:
        note(f"{where}; preparing images as the apple/mobilevitv2 checkpoints expect: "
             f"shortest edge {processor.size['shortest_edge']}, center crop {config.image_size}, BGR, values in [0, 1]")
    return processor


ARCHITECTURE_HEADS = {"ForImageClassification": "classification", "ForSemanticSegmentation": "segmentation",
                      "V2Model": "base"}


def guess_head(config: MobileViTV2Config, default: str | None = "classification") -> str | None:
    """The head named in config.json's ``architectures`` (``default`` when it names none)."""
    for arch in config.extra.get("architectures") or []:
        for suffix, head in ARCHITECTURE_HEADS.items():
            if str(arch).endswith(suffix):
                return head
    return default


# --------------------------------------------------------------------------------------------
# One image
# --------------------------------------------------------------------------------------------

# The flag that raises each of open_image's limits, named after its message.
_LIMIT_FLAGS = (("prepared pixels", "--max-prepared-pixels"), ("is over the limit of", "--max-pixels"))


def describe(e: BaseException) -> str:
    """An input's error as its record says it: the reason alone (and the flag that raises a limit)."""
    if isinstance(e, ImageLoadError):
        for words, flag in _LIMIT_FLAGS:
            if words in e.reason:
                return f"{e.reason} ({flag})"
        return e.reason
    text = str(e)
    if isinstance(e, (ValueError, OSError)) and text:
        return text
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def resized_photo(photo: Image.Image, processor: MobileViTImageProcessor) -> Image.Image | None:
    """The photo resized as the processor's resize step does it: the same Pillow call on the same
    pixels, so the same result, without the processor's round trip through arrays (about ten bytes
    a pixel of the full photo). None where the processor would first composite a transparent colour
    onto white (then it must do the whole job itself)."""
    if not processor.do_resize:
        return photo
    if processor.do_convert_rgb and photo.info.get("transparency") is not None:
        return None
    height, width = output_size(photo.height, photo.width, processor.size)
    return photo.resize((width, height), resample=processor.resample)


def model_input(photo: Image.Image, processor: MobileViTImageProcessor) -> np.ndarray:  # -> [1, 3, h, w]
    """``processor(photo)``'s pixel values, resizing with ``resized_photo``."""
    resized = resized_photo(photo, processor)
    if resized is None:
        return processor(photo, return_tensors="np")["pixel_values"]
    return processor(resized, return_tensors="np", do_resize=False)["pixel_values"]


# --------------------------------------------------------------------------------------------
# Segmentation's results
# --------------------------------------------------------------------------------------------


def label_image(classes: np.ndarray, palette: np.ndarray) -> Image.Image:
    """[H, W] class ids -> a palette PNG image ("P", VOC colours) or, past 256 classes, 16-bit grey."""
    if classes.max(initial=0) < 256:
        image = Image.fromarray(classes.astype(np.uint8, copy=False), mode="P")
        image.putpalette(palette[:256].reshape(-1).tolist())
        return image
    return Image.fromarray(classes.astype(np.uint16))


# Values per block of the full-size work (label scores upsampled, colours): a few MB, in cache.
BLOCK_VALUES = 2**19


def overlay_image(photo: Image.Image, classes: np.ndarray, palette: np.ndarray, alpha: float) -> Image.Image:
    """The photo with each pixel's class colour blended over it: ``(1 - alpha) * photo + alpha * colour``
    (Pillow's ``Image.blend``, in 8 bits), a band of rows at a time: only the result is full size."""
    width, height = photo.size
    out = Image.new("RGB", photo.size)
    rows = max(1, BLOCK_VALUES // width)
    for top in range(0, height, rows):
        box = (0, top, width, min(height, top + rows))
        colours = Image.fromarray(palette[classes[top : top + rows].astype(np.intp) % len(palette)])
        out.paste(Image.blend(photo.crop(box).convert("RGB"), colours, alpha), box)
    return out


# The most label scores upsampled to a photo's height at once (float32 values): past it, a model
# with very many labels is refused for that photo rather than exhausting memory.
MAX_SCORE_VALUES = 2**26


def photo_classes(logits: np.ndarray, height: int, width: int) -> np.ndarray:  # [L, h, w] -> [H, W]
    """The class of each photo pixel (the smallest integer type that holds them): the logits
    upsampled to the photo's size as ``post_process_semantic_segmentation`` does, in blocks of rows
    small enough to stay in cache."""
    num_labels, _, logits_width = logits.shape
    if num_labels * height * logits_width > MAX_SCORE_VALUES:
        raise ValueError(f"{num_labels} label scores upsampled to the photo's height {height} need "
                         f"{4 * num_labels * height * logits_width:,} bytes, more than the "
                         f"{4 * MAX_SCORE_VALUES:,} allowed")
    rows = max(1, BLOCK_VALUES // (num_labels * width))
    classes = post_process_semantic_segmentation(logits[None], target_sizes=[(height, width)], rows_per_chunk=rows)[0]
    return classes.astype(np.uint8 if num_labels <= 256 else np.min_scalar_type(num_labels - 1))


# The PNG text chunk that says which input a result was made from (``input_key``): a resumed run
# may replace the files the interrupted one wrote for an input, and nothing else.
SOURCE_CHUNK = "numpy-mvit2 input"


def input_key(file: str) -> str:
    """A result's mark of its input: the SHA-256 of the input's name as bytes (any name, in Latin-1)."""
    return hashlib.sha256(os.fsencode(file)).hexdigest()


def made_from(path) -> str | None:
    """The ``input_key`` a PNG file of ours carries, or None (not a PNG, not ours, unreadable). Only
    the chunks before the pixels are read (Pillow bounds their size)."""
    try:
        with Image.open(path, formats=["PNG"]) as image:
            key = image.info.get(SOURCE_CHUNK)
    except Exception:  # noqa: BLE001 - whatever the file is, it is not a result of ours
        return None
    return key if isinstance(key, str) else None


def png_bytes(image: Image.Image, file: str) -> bytes:
    """``image`` as a PNG marked as made from the input ``file``."""
    info = PngImagePlugin.PngInfo()
    info.add_text(SOURCE_CHUNK, input_key(file))
    buffer = io.BytesIO()
    # zlib level 1: a fifth of the default level's time on a photo, for a larger file
    image.save(buffer, format="PNG", compress_level=1, pnginfo=info)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# The building block
# --------------------------------------------------------------------------------------------


def usable_cpus() -> int:
    """The cores this process may run on (its affinity, which a container or ``taskset`` narrows)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Job:
    """What a Predictor is made from, and all a cluster's worker is sent: the checkpoint's name (a
    folder or file the worker can read, or a repo id in its Hugging Face cache) and the settings.
    Hashable: a worker process keeps one Predictor per Job (``predict_partition``)."""

    model: str
    task: str = "classify"
    top_k: int = 5
    behavior: str | None = None
    max_pixels: int | None = None  # None: DEFAULT_MAX_PIXELS[task]
    max_prepared_pixels: int | None = None  # None: DEFAULT_MAX_PREPARED_PIXELS[task]
    alpha: float = 0.5  # segment: the class colours' weight in the overlay
    threads: int | None = None  # images in flight; None: fast.THREADS or NUMPY_MVIT2_THREADS, else the cores (2 at least)


class Predictor:
    """A checkpoint loaded once, turning images (paths, or their bytes) into records, several
    images at a time on its own threads. ``Predictor(model, task=..., **settings)``: the fields of
    ``Job``; ``note``: called with what the loader has to say (no preprocessor_config.json).
    Raises ``ModelError`` when the checkpoint cannot be used for ``task``."""

    def __init__(self, model: str, task: str = "classify", *, note=None, **settings):
        self.job = job = Job(model, task, **settings)
        if task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
        self.max_pixels = DEFAULT_MAX_PIXELS[task] if job.max_pixels is None else job.max_pixels
        self.max_prepared_pixels = (DEFAULT_MAX_PREPARED_PIXELS[task] if job.max_prepared_pixels is None
                                    else job.max_prepared_pixels)
        cls = MobileViTV2ForImageClassification if task == "classify" else MobileViTV2ForSemanticSegmentation
        self.model = load_model(cls, model, task, DEFAULT_MODELS[task], job.behavior)
        config = self.model.config
        if task == "classify":
            self.processor = load_processor(model, config, note, self.max_prepared_pixels)
            self.function = "sigmoid" if config.problem_type == "multi_label_classification" else "softmax"
        else:
            processor = load_processor(model, config, note)
            # The whole photo is segmented: resized as the checkpoint says but not center-cropped
            # (the network is fully convolutional), so every pixel of the photo gets a label and
            # the mask lines up with the photo once the logits are resized to its size.
            self.processor = MobileViTImageProcessor.from_dict({**processor.to_dict(), "do_center_crop": False})
            self.palette = voc_palette(256)
        # two at least: one image decoding while another runs on one core
        self.threads = job.threads or configured_threads() or max(2, usable_cpus())
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._blas = None  # BLAS held at one thread while the pool lives (``submit``)

    # --- one image ------------------------------------------------------------------------

    def pixels(self, file: str, data: bytes | None = None) -> tuple[Image.Image, np.ndarray]:
        """The upright RGB photo and its [1, 3, h, w] model input, within the limits."""
        processor = self.processor
        photo = load_image(file, max_pixels=self.max_pixels, size=processor.size if processor.do_resize else None,
                           max_prepared_pixels=self.max_prepared_pixels, data=data)
        return photo, model_input(photo, processor)

    def predict_one(self, file: str, data: bytes | None = None, read_from: str | None = None) -> dict:
        """One input's record; any failure is the record's ``error``. ``file`` names it (in the
        record, and in segment's PNGs); it is read from ``read_from`` if given (another
        machine's path to it), else from ``file``, unless ``data`` holds its bytes."""
        try:
            photo, pixels = self.pixels(file if read_from is None else read_from, data)
            if self.job.task == "classify":
                photo = None  # free the photo before the pass
            with one_thread():
                logits = self.model(pixels).logits[0]
            del pixels
            if not np.isfinite(logits).all():  # NaN would also be invalid JSON
                raise ValueError("the model gave scores that are not finite numbers (NaN or infinity): "
                                 "its weights may be damaged")
            return {"file": file, **self.result(file, photo, logits)}
        except Exception as e:  # noqa: BLE001 - any failure is this input's, a record, never a failed run
            if os.environ.get("NUMPY_MVIT2_DEBUG"):
                traceback.print_exception(e)
            return {"file": file, "error": describe(e)}

    def result(self, file: str, photo: Image.Image | None, logits: np.ndarray) -> dict:
        if self.job.task == "classify":
            id2label = self.model.config.id2label
            return {"predictions": post_process_image_classification(logits[None], self.job.top_k, id2label,
                                                                     self.function)[0]}
        width, height = photo.size
        classes = photo_classes(logits, height, width)
        labels = png_bytes(label_image(classes, self.palette), file)
        overlay = png_bytes(overlay_image(photo, classes, self.palette, self.job.alpha), file)
        counts = np.bincount(classes.reshape(-1))
        ids = np.flatnonzero(counts)
        order = np.argsort(-counts[ids], kind="stable")
        id2label = self.model.config.id2label
        present = [{"label": id2label.get(int(ids[i]), f"LABEL_{int(ids[i])}"), "index": int(ids[i]),
                    "fraction": round(float(counts[ids[i]]) / classes.size, 6)} for i in order]
        return {"size": [width, height], "classes": present, "png": {"labels": labels, "overlay": overlay}}

    # --- many images ----------------------------------------------------------------------

    def submit(self, file: str, data: bytes | None = None, read_from: str | None = None) -> Future:
        """``predict_one`` on the predictor's threads: a future of the record."""
        with self._pool_lock:
            if self._pool is None:
                # Held from here, before the pool's threads exist, until ``close``: OpenBLAS 0.3.31
                # held at one thread pass by pass, from threads other than the main one, still
                # computed some products on two threads, and records then varied between runs.
                self._blas = blas_limited()
                self._blas.__enter__()
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="numpy_mvit2-predict")
        return self._pool.submit(self.predict_one, file, data, read_from)

    def predict(self, files, data=None, folder: str | None = None) -> list[dict]:
        """The records of ``files`` (paths, or names of ``data``'s bytes), in their order.
        ``folder``: where relative paths are, if not this process's working folder (a cluster's
        worker, reading for a command run elsewhere); the records keep the names as given."""
        files = [str(f) for f in files]
        data = [None] * len(files) if data is None else list(data)
        if len(data) != len(files):
            raise ValueError(f"{len(files)} files and {len(data)} data items: give one each")
        # joined as text, never normalized: "link/../x" is the file the OS finds, as for the command
        futures = [self.submit(f, d, None if folder is None or d is not None else os.path.join(folder, f))
                   for f, d in zip(files, data)]
        return [future.result() for future in futures]

    def __call__(self, batch: dict) -> dict:
        """Columns in, columns out, as Ray Data's ``map_batches`` hands them: ``{"file": [...]}``
        (and ``"bytes"``) -> ``{"file": [...], "record": [...]}``."""
        files = list(batch["file"])
        data = batch.get("bytes")
        records = self.predict(files, None if data is None else [None if d is None else bytes(d) for d in data])
        return {"file": files, "record": records}

    def close(self) -> None:
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
                self._blas.__exit__(None, None, None)
                self._blas = None


_PREDICTORS: dict[Job, Predictor] = {}
_PREDICTORS_LOCK = threading.Lock()


def worker_predictor(job: Job) -> Predictor:
    """This process's Predictor for ``job``, made on the first call: a cluster's worker loads the
    checkpoint once, however many partitions it runs."""
    with _PREDICTORS_LOCK:
        predictor = _PREDICTORS.get(job)
        if predictor is None:
            predictor = _PREDICTORS[job] = Predictor(**asdict(job))
        return predictor


def predict_partition(inputs, job: Job, folder: str | None = None) -> list[dict]:
    """A partition function (Dask's ``map_partitions``, ``client.submit``): ``inputs`` are file
    names, or ``(name, bytes)`` pairs, -> their records, in order. ``folder``: the folder relative
    names are in (the command's working folder; a worker's own is another)."""
    pairs = [(item, None) if isinstance(item, (str, os.PathLike)) else tuple(item) for item in inputs]
    return worker_predictor(job).predict([name for name, _ in pairs], [data for _, data in pairs], folder)
