"""Image folders for fine-tuning: the layouts, the augmentation, the batches.

    from numpy_mvit2.data import ImageFolder, SegmentationFolder, batches
    data = ImageFolder("DATA")                       # DATA/train/<class>/, DATA/val/<class>/, or DATA/<class>/
    for pixel_values, labels in batches(data.train, processor, batch_size=16, train=True, seed=0, epoch=0):
        ...                                          # [B, 3, S, S] float32, [B] int64
    data = SegmentationFolder("DATA")                # DATA/images/ + DATA/masks/ (or under train/ and val/)
    ...                                              # the same batches, labels [B, S, S] int64 maps

**Layouts.** As Hugging Face's ``imagefolder`` lays a data set out: ``DATA/train/<class>/`` and
``DATA/val/<class>/`` (``validation/`` also accepted), or ``DATA/<class>/`` alone, of which
``val_fraction`` of every class (at least one image) is held out for validation, chosen by
``seed``. The classes are the folder names, sorted; ``data.classes[i]`` is label ``i``. Files are
taken by their suffix (``IMAGE_SUFFIXES``), in sorted order; a file that turns out not to be an
image is named and skipped when it is read (``skipped``), as the command line does with images.

**Segmentation**: ``DATA/images/`` and ``DATA/masks/`` (also ``JPEGImages/`` and
``SegmentationClass/``, as Pascal VOC names them), or both under ``DATA/train/`` and ``DATA/val/``;
a photo and its mask share a file stem (``x.jpg``, ``x.png``). A mask is a palette ("P", VOC's
colours) or grey-level PNG whose values are the class ids; ``ignore_index`` (255, transformers'
``semantic_loss_ignore_index``) marks pixels no loss is taken over. The masks are read once when
the folder is opened, to find the classes (``DATA/classes.txt``, one name per line, names them;
else they are numbered); a photo without a mask, a mask of another size, or a colour mask is
named in ``skipped``.

**Augmentation**, as ml-cvnets' fine-tuning recipes use it: a random resized crop (torchvision's:
a box of 8% to 100% of the area, ``crop_scale``, and aspect ratio 3/4 to 4/3, ten tries, else the
centre) resized bilinearly to the processor's crop size, and a horizontal flip half the time
(``flip=False``: none, for digits, text or anything with a handedness); then the
processor's own rescaling and channel order (``do_resize`` and ``do_center_crop`` off). Without
``train`` each image is prepared by the processor as at inference. All draws come from
``np.random.default_rng((seed, epoch))``: the same seed and epoch give the same batches, whatever
the number of threads decoding them.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .config import MAX_LABELS
from .processing import ImageLoadError, load_image, open_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
VALIDATION_NAMES = ("val", "validation")
IGNORED_FOLDERS = ("__MACOSX",)  # what a zip made on a Mac carries beside the data: not a class
# a validation image is resized whole before its centre crop: one of a wild shape (1 x 100000) is
# refused rather than resized to billions of pixels (as `numpy-mvit2 classify` refuses it)
MAX_PREPARED_PIXELS = 4_000_000
CROP_SCALE = (0.08, 1.0)  # the random resized crop's share of the area: torchvision's and ml-cvnets' default


class DataError(ValueError):
    """A data folder that cannot be used for training: the message names the folder and why."""


@dataclass
class Split:
    """Image files and their labels (indices into ``ImageFolder.classes``)."""

    files: list[Path] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)  # classification
    masks: list[Path] | None = None  # segmentation: each photo's label map
    skipped: list[str] = field(default_factory=list)  # "path: reason" of the files that were not images

    def __len__(self):
        return len(self.files)


def _class_folders(folder: Path) -> dict[str, list[Path]]:
    """``{class name: its image files, sorted}`` for the sub-folders of ``folder`` (hidden ones left out)."""
    classes = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in IGNORED_FOLDERS):
        classes[sub.name] = sorted(p for p in sub.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    return classes


class ImageFolder:
    """The train and validation splits of a classification data folder (see the module docstring)."""

    def __init__(self, root: str | os.PathLike, *, val_fraction: float = 0.1, seed: int = 0):
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: no such folder (a data folder holds one sub-folder of images per class)")
        if not 0 < val_fraction < 1:
            raise DataError(f"val_fraction must lie between 0 and 1, got {val_fraction}")
        validation = next((root / n for n in VALIDATION_NAMES if (root / n).is_dir()), None)
        if (root / "train").is_dir() and validation is not None:
            train, val = _class_folders(root / "train"), _class_folders(validation)
            if set(val) - set(train):
                raise DataError(f"{validation}: classes that {root / 'train'} does not have: "
                                f"{', '.join(sorted(set(val) - set(train)))}")
            self.layout = f"{root / 'train'} and {validation}"
        else:
            train, val = _class_folders(root), {}
            self.layout = f"{root}, {val_fraction:.0%} of each class held out"
        empty = [name for name, files in train.items() if not files]
        if empty:
            raise DataError(f"{root}: class folder(s) without images: {', '.join(empty[:10])}")
        if len(train) < 2:
            raise DataError(f"{root}: found {len(train)} class folder(s) "
                            f"({', '.join(train) or 'none'}); a classifier needs at least two")
        self.root, self.classes = root, list(train)
        index = {name: i for i, name in enumerate(self.classes)}
        self.train, self.val = Split(), Split()
        rng = np.random.default_rng(seed)
        for name, files in train.items():
            if val:
                kept, held = files, val.get(name, [])
            else:
                if len(files) < 2:
                    raise DataError(f"{root / name}: one image; holding one out for validation needs two or more")
                order = rng.permutation(len(files))
                count = min(len(files) - 1, max(1, round(val_fraction * len(files))))
                held = [files[i] for i in sorted(order[:count])]
                kept = [files[i] for i in sorted(order[count:])]
            for split, chosen in ((self.train, kept), (self.val, held)):
                split.files += chosen
                split.labels += [index[name]] * len(chosen)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.classes))

    def __repr__(self):
        return (f"ImageFolder({self.layout}: {len(self.classes)} classes, {len(self.train)} training and "
                f"{len(self.val)} validation images)")


MASK_FOLDERS = ("masks", "SegmentationClass", "labels", "annotations")
PHOTO_FOLDERS = ("images", "JPEGImages")
MASK_MODES = ("P", "L", "I", "I;16", "1")


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def load_mask(path: str | os.PathLike) -> np.ndarray:  # -> [H, W] int64 class ids
    """A label map as stored: a palette PNG's indices, a grey level, a 16-bit value. A colour
    (RGB) mask is refused: its colours would need a table to become class ids."""
    image = open_image(path)
    if image.mode not in MASK_MODES:
        raise ImageLoadError(path, f"a {image.mode} mask; masks hold class ids: save them as palette (P) or grey (L) PNGs")
    return np.array(image).astype(np.int64)


class SegmentationFolder:
    """The train and validation splits of a segmentation data folder (see the module docstring):
    ``classes`` (names, index = class id), ``train`` and ``val`` (``Split``s with ``masks``)."""

    def __init__(self, root: str | os.PathLike, *, val_fraction: float = 0.1, seed: int = 0,
                 ignore_index: int = 255, workers: int = 2):
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: no such folder (a segmentation data folder holds images/ and masks/)")
        if not 0 < val_fraction < 1:
            raise DataError(f"val_fraction must lie between 0 and 1, got {val_fraction}")
        self.root, self.ignore_index = root, ignore_index
        validation = next((root / n for n in VALIDATION_NAMES if (root / n).is_dir()), None)
        if (root / "train").is_dir() and validation is not None:
            self.train, self.val = self._pairs(root / "train"), self._pairs(validation)
            self.layout = f"{root / 'train'} and {validation}"
        else:
            pairs = self._pairs(root)
            if len(pairs) < 2:
                raise DataError(f"{root}: {len(pairs)} photo(s) with a mask; holding some out for validation needs two or more")
            order = np.random.default_rng(seed).permutation(len(pairs))
            count = min(len(pairs) - 1, max(1, round(val_fraction * len(pairs))))
            held, kept = sorted(order[:count]), sorted(order[count:])
            self.train = Split([pairs.files[i] for i in kept], masks=[pairs.masks[i] for i in kept], skipped=pairs.skipped)
            self.val = Split([pairs.files[i] for i in held], masks=[pairs.masks[i] for i in held])
            self.layout = f"{root}, {val_fraction:.0%} held out"
        for split in (self.train, self.val):
            self._check_masks(split, workers)
        if not self.train.files:
            raise DataError(f"{root}: no usable photo with its mask ({'; '.join(self.train.skipped[:3]) or 'none found'})")
        found = max(self.class_ids, default=0) + 1
        names = root / "classes.txt"
        if names.is_file():
            lines = names.read_text(encoding="utf-8-sig", errors="replace")[:1_000_000].splitlines()
            while lines and not lines[-1].strip():
                lines.pop()
            blank = next((i for i, line in enumerate(lines) if not line.strip()), None)
            if blank is not None:  # dropping it would shift every later name onto the wrong class id
                raise DataError(f"{names}: line {blank + 1} is blank; one class name per line, class id 0 first")
            if len(lines) > MAX_LABELS:
                raise DataError(f"{names}: {len(lines)} class names, more than {MAX_LABELS}")
            self.classes = [line.strip() for line in lines]
            if len(self.classes) < found:
                raise DataError(f"{names}: {len(self.classes)} class names, but the masks hold class id {found - 1}")
        else:
            self.classes = [str(i) for i in range(found)]
        if len(self.classes) < 2:
            raise DataError(f"{root}: the masks hold one class; a segmentation model needs at least two")

    def _pairs(self, folder: Path) -> Split:
        photos = next((folder / n for n in PHOTO_FOLDERS if (folder / n).is_dir()), None)
        masks = next((folder / n for n in MASK_FOLDERS if (folder / n).is_dir()), None)
        if photos is None or masks is None:
            raise DataError(f"{folder}: expected an images/ (or JPEGImages/) folder and a masks/ (or "
                            f"SegmentationClass/) folder beside it")
        by_stem = {p.stem: p for p in _image_files(masks)}
        split = Split(masks=[])
        for photo in _image_files(photos):
            if photo.stem in by_stem:
                split.files.append(photo)
                split.masks.append(by_stem[photo.stem])
            else:
                split.skipped.append(f"{photo}: no mask {photo.stem}.* in {masks}")
        return split

    def _check_masks(self, split: Split, workers: int) -> None:
        """Read every mask once: the class ids found, and the pairs that cannot be used left out."""
        def ids(k):
            try:
                mask = load_mask(split.masks[k])
                size = load_image(split.files[k]).size  # decoded with the readers' guards: the photo is usable
            except ImageLoadError as error:
                return None, str(error)
            if mask.shape[::-1] not in (size, size[::-1]):  # (a photo may stand upright by its EXIF)
                return None, f"{split.masks[k]}: a {mask.shape[1]}x{mask.shape[0]} mask for a {size[0]}x{size[1]} photo"
            ids = np.unique(mask)
            wild = ids[((ids < 0) | (ids >= MAX_LABELS)) & (ids != self.ignore_index)]
            if len(wild):
                return None, f"{split.masks[k]}: class id {int(wild[0])}, outside 0 to {MAX_LABELS - 1} (and not {self.ignore_index}, ignored)"
            return ids, None

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            results = list(pool.map(ids, range(len(split))))
        kept = [k for k, (_, error) in enumerate(results) if error is None]
        split.skipped += [error for _, error in results if error is not None]
        split.files, split.masks = [split.files[k] for k in kept], [split.masks[k] for k in kept]
        values = set().union(*(results[k][0].tolist() for k in kept)) if kept else set()
        self.class_ids = getattr(self, "class_ids", set()) | (values - {self.ignore_index})

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.classes))

    def __repr__(self):
        return (f"SegmentationFolder({self.layout}: {len(self.classes)} classes, {len(self.train)} training and "
                f"{len(self.val)} validation images)")


def random_resized_crop_box(rng: np.random.Generator, width: int, height: int, scale=(0.08, 1.0),
                            ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """``(left, top, crop width, crop height)``: torchvision's ``RandomResizedCrop.get_params``. Ten
    tries at a box of a random fraction ``scale`` of the area and a log-uniform aspect ratio in
    ``ratio`` that fits the image; if none fits, the largest centred box whose ratio lies in
    ``ratio``."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = int(round(math.sqrt(target_area * aspect))), int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def _crop_size(processor) -> tuple[int, int]:
    crop = processor.crop_size if processor.do_center_crop else processor.size
    if "height" in crop:
        return crop["height"], crop["width"]
    side = crop.get("shortest_edge")
    return side, side


def prepare(image: Image.Image, processor, rng: np.random.Generator | None, mask: np.ndarray | None = None, *,
            crop_scale=CROP_SCALE, flip: bool = True):
    """One image as the model takes it, ``[3, S, S]`` float32: augmented from ``rng`` (random
    resized crop of ``crop_scale`` of the area to the crop size, a horizontal flip half the time
    unless ``flip`` is false) then rescaled and put in the
    processor's channel order, or, with ``rng`` None, prepared by the processor as at inference.
    With a ``mask`` (``[H, W]`` class ids), ``(pixels, labels [S, S] int64)``: the mask cropped,
    resized (nearest) and flipped with its photo."""
    if rng is None:
        if mask is None:
            return processor(image, return_tensors="np")["pixel_values"][0]
        out = processor(image, segmentation_maps=mask, return_tensors="np")
        return out["pixel_values"][0], out["labels"][0]
    height, width = _crop_size(processor)
    left, top, w, h = random_resized_crop_box(rng, image.width, image.height, scale=crop_scale)
    box = (left, top, left + w, top + h)
    image = image.resize((width, height), Image.Resampling.BILINEAR, box=box)
    flip = rng.random() < 0.5 and flip  # (drawn either way: the same crops with flips or without)
    if flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    pixels = processor(image, do_resize=False, do_center_crop=False, return_tensors="np")["pixel_values"][0]
    if mask is None:
        return pixels
    # nearest-neighbour on the class ids, through a 32-bit image (ids may pass 255)
    labels = np.array(Image.fromarray(mask.astype(np.int32)).resize((width, height), Image.Resampling.NEAREST, box=box))
    return pixels, (labels[:, ::-1] if flip else labels).astype(np.int64)


def batch_count(images: int, batch_size: int, train: bool) -> int:
    """How many batches ``batches`` makes of ``images`` (before any file is found broken)."""
    count = math.ceil(images / batch_size)
    return count - 1 if train and count > 1 and (images % batch_size == 1 or batch_size == 1) else count


def batches(split: Split, processor, *, batch_size: int, train: bool, seed: int = 0, epoch: int = 0,
            workers: int = 2, crop_scale=CROP_SCALE, flip: bool = True):
    """``(pixel_values [B, 3, S, S] float32, labels [B] int64)`` over ``split`` (a segmentation
    split: ``labels [B, S, S]`` int64 maps): shuffled (and augmented) from
    ``np.random.default_rng((seed, epoch))`` when ``train``, in order otherwise; the last batch may
    be smaller (when training, never a single image: that one joins the batch before). Images are decoded on ``workers`` threads, a batch ahead of the one handed out. A
    file that is not a usable image is named in ``split.skipped`` and left out."""
    if batch_size < 1:
        raise DataError(f"batch_size must be 1 or more, got {batch_size}")
    rng = np.random.default_rng((seed, epoch))
    order = rng.permutation(len(split)) if train else np.arange(len(split))
    # every image's own generator, drawn in order up front: the augmentation does not depend on
    # which thread decodes which image, nor when
    image_seeds = rng.integers(0, 2**63, len(split)) if train else [None] * len(split)

    def load(i):
        try:
            resized = not train and processor.do_resize
            image = load_image(split.files[i], size=processor.size if resized else None,
                               max_prepared_pixels=MAX_PREPARED_PIXELS if resized else None)
            mask = None if split.masks is None else load_mask(split.masks[i])
        except ImageLoadError as error:
            return i, None, str(error)
        if mask is not None and mask.shape != (image.height, image.width):  # the photo turned by its EXIF
            return i, None, f"{split.masks[i]}: a {mask.shape[1]}x{mask.shape[0]} mask for a {image.width}x{image.height} photo"
        generator = None if image_seeds[i] is None else np.random.default_rng(image_seeds[i])
        return i, prepare(image, processor, generator, mask, crop_scale=crop_scale, flip=flip), None

    chunks = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    if train and len(chunks) > 1 and len(chunks[-1]) == 1:
        # a lone last image joins the batch before it: a batch norm cannot normalise one value per
        # channel (DeepLabV3's pooled branch), and PyTorch's refuses to, as ours does
        chunks[-2:] = [np.concatenate(chunks[-2:])]
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="numpy_mvit2-data") as pool:
        pending = [pool.map(load, chunk) for chunk in chunks[:2]]
        for k in range(len(chunks)):
            results = list(pending[k])
            if k + 2 < len(chunks):
                pending.append(pool.map(load, chunks[k + 2]))
            pending[k] = None
            kept = [(i, pixels) for i, pixels, error in results if error is None]
            for _, _, error in results:
                if error is not None and error not in split.skipped:
                    split.skipped.append(error)
            if not kept:
                continue
            if split.masks is None:
                yield (np.stack([pixels for _, pixels in kept]).astype(np.float32, copy=False),
                       np.array([split.labels[i] for i, _ in kept], dtype=np.int64))
            else:
                yield (np.stack([pair[0] for _, pair in kept]).astype(np.float32, copy=False),
                       np.stack([pair[1] for _, pair in kept]))
