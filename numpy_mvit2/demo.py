"""What the notebooks share: a checkpoint, its image processor, the sample photograph prepared for
it, and the style of their pictures.

    from numpy_mvit2.demo import load_demo, plot_style

    plot_style()                              # text legible at the size the pictures are saved
    demo = load_demo("classification")        # prints which weights it uses, and where from
    demo.model(demo.pixel_values).logits      # the photograph, prepared as the checkpoint says
    demo.pretrained                           # False for generated (random) weights

The weights are a **real checkpoint** when one is at hand: the folder named by
``NUMPY_MVIT2_IMAGENET_CHECKPOINT`` (classification) or ``NUMPY_MVIT2_VOC_CHECKPOINT``
(segmentation), else ``apple/mobilevitv2-1.0-imagenet1k-256`` / ``apple/mobilevitv2-1.0-voc-deeplabv3``
if the local Hugging Face cache already holds it. Nothing is ever downloaded: the cache is read as a
folder. Otherwise they are a **generated checkpoint** (``numpy_mvit2.generate``: seeded random
weights, not pretrained), found in, or made once into, ``generated_dir()``. A checkpoint whose
``config.json`` says it is generated counts as generated wherever it was found.

The sample photograph is matplotlib's ``grace_hopper.jpg`` (``load_demo(image=...)`` takes another), so
``load_demo`` needs matplotlib, as the notebooks do; the rest of ``numpy_mvit2`` does not.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .generate import FORMAT, MARKER, GenerateError, generate_checkpoint, is_generated
from .modeling import (
    MobileViTV2ForImageClassification,
    MobileViTV2ForSemanticSegmentation,
)
from .processing import MobileViTImageProcessor, load_image


@dataclass(frozen=True)
class Task:
    model_class: type
    variable: str  # the environment variable that names a real checkpoint folder
    repo_id: str  # the published checkpoint, used when the Hugging Face cache holds it


TASKS = {
    "classification": Task(MobileViTV2ForImageClassification, "NUMPY_MVIT2_IMAGENET_CHECKPOINT",
                           "apple/mobilevitv2-1.0-imagenet1k-256"),
    "segmentation": Task(MobileViTV2ForSemanticSegmentation, "NUMPY_MVIT2_VOC_CHECKPOINT",
                         "apple/mobilevitv2-1.0-voc-deeplabv3"),
}


@dataclass
class Demo:
    """A model, its processor and the sample photograph prepared for it (``load_demo``)."""

    model: object
    processor: MobileViTImageProcessor
    photo: object  # PIL image, RGB, EXIF-upright
    pixel_values: np.ndarray  # [1, 3, H, W] float32, as the processor prepares it (BGR for the apple checkpoints)
    rgb: np.ndarray  # [H, W, 3] uint8: the same crop in RGB, for drawing
    pretrained: bool  # False for generated weights: then the predictions mean nothing
    checkpoint: Path  # a local folder that numpy_mvit2 and transformers can both load
    source: str  # what was loaded: the folder, the repo id, or the generated checkpoint's folder
    processor_from: str  # where the processor's settings came from

    @property
    def config(self):
        return self.model.config


def generated_dir() -> Path:
    """Where ``load_demo`` keeps the generated checkpoints it makes: ``$NUMPY_MVIT2_GENERATED_DIR``, else
    ``numpy_mvit2/generated`` in ``$XDG_CACHE_HOME`` (``~/.cache``). Made once, reused after."""
    if os.environ.get("NUMPY_MVIT2_GENERATED_DIR"):
        return Path(os.environ["NUMPY_MVIT2_GENERATED_DIR"])
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "numpy_mvit2" / "generated"


def _shown(path) -> str:
    """A path for messages, the home folder written ``~``."""
    path, home = Path(path), Path.home()
    try:
        return str(Path("~") / path.relative_to(home))
    except ValueError:
        return str(path)


def _matches(folder: Path, head: str, seed: int, random_norms: bool) -> bool:
    """``folder`` holds the generated checkpoint these arguments make (of this format)."""
    import json

    try:
        entry = json.loads((folder / "config.json").read_text(encoding="utf-8")).get(MARKER)
    except (OSError, ValueError, AttributeError):
        return False
    return (isinstance(entry, dict) and (folder / "model.safetensors").is_file()
            and {k: entry.get(k) for k in ("head", "seed", "random_norms", "format")}
            == {"head": head, "seed": seed, "random_norms": random_norms, "format": FORMAT})


def generated_checkpoint(task: str = "classification", *, seed: int = 0, random_norms: bool = False,
                         folder: str | os.PathLike | None = None, regenerate: bool = False, quiet: bool = False) -> Path:
    """The generated checkpoint for ``task`` (width 1.0, the published checkpoint's shapes): found in
    ``folder`` (default: a folder in ``generated_dir()`` named after the arguments), or made there
    with ``numpy_mvit2.generate`` (which it says, unless ``quiet``). If that place cannot be
    written, a temporary folder is used."""
    _task(task)
    head = task  # the generated checkpoint's head has the task's name
    name = f"{head}-1.0-seed{seed}" + ("-random-norms" if random_norms else "")
    folder = Path(folder) if folder is not None else generated_dir() / name
    if not regenerate and _matches(folder, head, seed, random_norms):
        return folder
    if not quiet:
        print(f"making the generated checkpoint {_shown(folder)} (numpy_mvit2.generate; once, then reused)")
    try:
        return generate_checkpoint(folder, head, seed=seed, random_norms=random_norms, overwrite=True)
    except (GenerateError, OSError) as error:  # not writable, or other files there: a folder of our own
        fallback = Path(tempfile.mkdtemp(prefix="numpy_mvit2-generated-")) / name
        if not quiet:
            print(f"cannot write {_shown(folder)} ({error}); using {fallback}")
        return generate_checkpoint(fallback, head, seed=seed, random_norms=random_norms)


def _task(task: str) -> Task:
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    return TASKS[task]


def _real_checkpoints(task: Task) -> list[str]:
    """The folder named by the task's variable, then the published repo's snapshot folder if cached."""
    sources = [os.environ[task.variable]] if os.environ.get(task.variable) else []
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub is a runtime dependency
        return sources
    # HF_HUB_CACHE read now, as numpy_mvit2.hub reads it (huggingface_hub read it once, at import)
    cached = try_to_load_from_cache(task.repo_id, "config.json", cache_dir=os.environ.get("HF_HUB_CACHE"))
    if isinstance(cached, str):  # the snapshot folder holds the repo's files (links into the cache)
        sources.append(str(Path(cached).parent))
    return sources


def load_model(task: str = "classification", *, seed: int = 0, random_norms: bool = False, quiet: bool = False,
               **kwargs):
    """``(model, checkpoint folder, source)``: a real checkpoint when one is at hand, else the generated
    one (see the module docstring). ``kwargs`` go to ``from_pretrained``. Prints which it is, unless
    ``quiet``."""
    spec = _task(task)
    say = (lambda *a: None) if quiet else print
    for source in _real_checkpoints(spec):
        if not Path(source).exists():  # a folder is meant: nothing is ever asked of the Hub here
            say(f"{source}: no such folder; {spec.variable} names a checkpoint folder")
            continue
        try:
            model = spec.model_class.from_pretrained(source, **kwargs)
        except (OSError, ValueError) as error:  # not loadable (CheckpointError is a ValueError): say why, go on
            say(f"could not load {source}: {type(error).__name__}: {str(error)[:200]}")
            continue
        folder = Path(source) if Path(source).is_dir() else Path(model.weights_file).parent
        return model, folder, source
    folder = generated_checkpoint(task, seed=seed, random_norms=random_norms, quiet=quiet)
    try:
        model = spec.model_class.from_pretrained(folder, **kwargs)
    except (OSError, ValueError) as error:  # a damaged copy in the cache: make it again
        say(f"could not load {folder} ({type(error).__name__}: {str(error)[:200]}); generating it again")
        folder = generated_checkpoint(task, seed=seed, random_norms=random_norms, regenerate=True, quiet=quiet)
        model = spec.model_class.from_pretrained(folder, **kwargs)
    return model, folder, str(folder)


def sample_photo():
    """matplotlib's sample photograph ``grace_hopper.jpg`` (512 x 600), as ``load_image`` gives it."""
    try:
        from matplotlib import cbook
    except ImportError:
        raise ImportError("the sample photograph is matplotlib's: pip install matplotlib "
                          "(or pip install 'numpy-mvit2[notebooks]'), or pass image=...") from None
    return load_image(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


def load_demo(task: str = "classification", *, image=None, seed: int = 0, random_norms: bool = False,
              quiet: bool = False, **kwargs) -> Demo:
    """The model for ``task`` (``"classification"`` or ``"segmentation"``; ``load_model``), its processor
    (the checkpoint's ``preprocessor_config.json``, else ``MobileViTImageProcessor.for_model_config``),
    and ``image`` (a path or PIL image; default the sample photograph) prepared by it. Prints what it
    uses, unless ``quiet``. ``random_norms`` picks the generated checkpoint whose batch norms and
    biases are random too (for cross-checks); ``kwargs`` go to ``from_pretrained``."""
    say = (lambda *a: None) if quiet else print
    model, folder, source = load_model(task, seed=seed, random_norms=random_norms, quiet=quiet, **kwargs)
    pretrained = not is_generated(model.config)
    if pretrained:
        say(f"Weights: pretrained, from {source}" + ("" if str(folder) == source else f" (at {_shown(folder)})"))
    else:
        say(f"Weights: GENERATED, seed {model.config.extra[MARKER].get('seed')}: random, NOT pretrained "
            f"(from {_shown(folder)}); its predictions mean nothing")
    if (folder / "preprocessor_config.json").is_file():
        processor = MobileViTImageProcessor.from_pretrained(folder)
        processor_from = _shown(folder / "preprocessor_config.json")
    else:
        processor = MobileViTImageProcessor.for_model_config(model.config)
        processor_from = "derived from the config (for_model_config): the checkpoint has no preprocessor_config.json"
    if image is None:
        photo = sample_photo()
    elif isinstance(image, (str, os.PathLike)):
        photo = load_image(image)
    else:  # a PIL image, used as it is (as the processor takes it)
        photo = image if image.mode == "RGB" else image.convert("RGB")
    pixel_values = processor(photo, return_tensors="np")["pixel_values"]  # [1, 3, H, W] float32
    # for drawing: the same resize and crop, without the rescale and the RGB -> BGR flip
    rgb = processor(photo, do_rescale=False, do_flip_channel_order=False, return_tensors="np")["pixel_values"][0]
    rgb = np.clip(np.rint(rgb), 0, 255).astype(np.uint8).transpose(1, 2, 0)
    say(f"Processor settings from {processor_from}")
    say(f"Photo {photo.width} x {photo.height} (w x h) -> pixel_values {pixel_values.shape} {pixel_values.dtype}")
    return Demo(model=model, processor=processor, photo=photo, pixel_values=pixel_values, rgb=rgb,
                pretrained=pretrained, checkpoint=folder, source=source, processor_from=processor_from)


MIN_FONT_SIZE = 9
"""Points: the smallest text the notebooks' pictures use. ``plot_style`` saves them at 100 dpi, where
9 pt is 12.5 pixels high (pixels = points x dpi / 72); ``tests/test_notebooks.py`` checks every text drawn."""


def plot_style(dpi: int = 100) -> None:
    """The notebooks' matplotlib settings: pictures saved at ``dpi`` (the inline backend saves a figure
    at its own dpi), text of at least ``MIN_FONT_SIZE`` points, a light grid."""
    import matplotlib.pyplot as plt

    plt.rcParams.update({
        "figure.dpi": dpi,
        "savefig.dpi": "figure",
        "font.size": 10,
        "axes.titlesize": 11,
        "axes.labelsize": 10,
        "figure.titlesize": 12,
        "xtick.labelsize": MIN_FONT_SIZE,
        "ytick.labelsize": MIN_FONT_SIZE,
        "legend.fontsize": MIN_FONT_SIZE,
        "legend.title_fontsize": MIN_FONT_SIZE,
        "axes.grid": True,
        "grid.alpha": 0.3,
    })
