"""Photos in, pixel arrays out; logits in, labels and masks out. Pillow and NumPy only.

``MobileViTImageProcessor`` prepares images exactly as transformers' PIL image processor for
MobileViT (``MobileViTImageProcessorPil``) does, step for step, so the pretrained checkpoints see
the pixels they were trained on. For each image, in this order:

1. to a channels-first array ``[C, H, W]`` (RGB conversion: see below);
2. resize with Pillow (``size``: ``{"shortest_edge": s}`` keeps the aspect ratio, the long side
   becoming ``int(s * long / short)``; ``{"height": h, "width": w}`` is exact);
3. rescale: ``x * rescale_factor`` (1/255), computed in float64, stored as float32;
4. center crop to ``crop_size`` (an image smaller than the crop is padded with zeros);
5. flip the channel order, RGB -> BGR (the ml-cvnets checkpoints were trained on BGR).

There is no mean/std normalisation: the published checkpoints take BGR values in [0, 1].

Inputs: a path (``str`` or ``os.PathLike``), a ``PIL.Image``, an array ``[H, W, C]`` or ``[C, H, W]``
(uint8, or float holding 0..255 integers or values in [0, 1]), a 4-D array (a batch), or a list
of any of these. As in transformers, a path is opened, turned upright by its EXIF orientation
(``PIL.ImageOps.exif_transpose``) and converted with ``Image.convert("RGB")`` (transformers'
``load_image``); a PIL image or an array is taken as it is, without EXIF rotation.

RGB conversion (``do_convert_rgb``): ``True`` converts every image as transformers'
``convert_to_rgb`` does (transparency composited onto white, grayscale repeated, palette, CMYK
and 16-bit through Pillow's ``convert("RGB")``); ``False`` never converts (transformers' default:
a grayscale image then gives one channel, RGBA four, a palette image its palette indices, and a
16-bit image with values above 255 an error). ``None``, the default here, converts exactly the
images that transformers' default would turn into something other than three colour channels:
PIL images whose mode is not "RGB", and arrays with one or four channels. For every other input
the result is transformers' default result, bit for bit.

Post-processing: ``post_process_semantic_segmentation`` (bilinear upsampling of the logits to
each target size, then the arg-max class per pixel, as transformers) and
``post_process_image_classification`` (the top-k labels with softmax scores).
"""

from __future__ import annotations

import copy
import json
import io
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .config import is_finite_number, show
from .errors import ConfigError
from .hub import resolve_file
from .ops import interpolate_bilinear
from .safeio import open_regular_file, read_settings_json

PREPROCESSOR_CONFIG = "preprocessor_config.json"

# The largest side a size or crop_size of the settings may give (the published checkpoints use 288
# and 544; 256 and 512 for the crop). A 4096 x 4096 RGB image prepared in float32 takes 200 MB; the
# command line bounds the images themselves.
MAX_IMAGE_SIDE = 4096

RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "hamming": Image.Resampling.HAMMING,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


class ImageLoadError(ValueError):
    """An image file that cannot be used: missing, unreadable, not an image, truncated, too large.
    ``str(error)`` is ``"<path>: <reason>"``; ``error.path`` and ``error.reason`` hold the parts."""

    def __init__(self, path, reason: str):
        self.path, self.reason = os.fspath(path), reason
        super().__init__(f"{self.path}: {reason}")


# --------------------------------------------------------------------------------------------
# Opening files
# --------------------------------------------------------------------------------------------


# The formats read from files. Pillow's other readers are left out on purpose: ICO, CUR and ICNS
# hold several images and Pillow picks and decodes the largest inside ``Image.open``, whatever the
# header says, before any size check can run; the rest are rare and little used on photos.
IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM")
# Leading bytes of refused formats, to say what a refused file is.
_REFUSED_MAGIC = {b"\x00\x00\x01\x00": "an ICO file", b"\x00\x00\x02\x00": "a CUR file", b"icns": "an ICNS file"}


# Scans (SOS markers) a JPEG may hold. A progressive JPEG comes in about ten; each scan costs a pass
# over the whole image however few bytes it holds, so a 200 kB file of 5,000 tiny scans over a
# 12 MP image takes a minute of CPU to decode.
MAX_JPEG_SCANS = 40


def _jpeg_scans(file, limit: int) -> int:
    """How many scans the JPEG in ``file`` holds, counted up to ``limit + 1`` (the file read once,
    in blocks). The segments before the first scan are walked by their lengths, so that an EXIF
    thumbnail's scan is not counted; after it, a marker can only be a real one (the entropy-coded
    data escapes 0xFF as 0xFF 0x00)."""
    position = file.tell()
    try:
        file.seek(2)  # after SOI
        while True:
            marker = file.read(2)
            if len(marker) < 2 or marker[0] != 0xFF:
                return 0  # Pillow opened it, so let its decoder say what is wrong
            if marker[1] == 0xFF:  # fill byte
                file.seek(-1, os.SEEK_CUR)
                continue
            if marker[1] == 0xDA:
                break
            if marker[1] in (0x01, *range(0xD0, 0xD9)):
                continue
            length = file.read(2)
            if len(length) < 2:
                return 0
            file.seek(int.from_bytes(length, "big") - 2, os.SEEK_CUR)
        scans, tail = 1, b""
        while scans <= limit:
            block = file.read(2**20)
            if not block:
                break
            # Counting stops at the end of the image (EOI): what follows it is not decoded, and
            # may be anything (a phone's "motion photo" appends a video).
            data = tail + block
            end = data.find(b"\xff\xd9")
            scans += data[: end if end >= 0 else len(data)].count(b"\xff\xda")
            if end >= 0:
                break
            tail = block[-1:]
        return scans
    finally:
        file.seek(position)


# Pillow reads some headers a byte or a chunk at a time in Python, at about half a microsecond a
# byte: a 25 MB PGM whose header is one long comment, a 24 MB PNG of two million empty chunks, a
# JPEG of 20 MB of fill bytes (0xFF) or of two million empty APP segments, took 10 to 16 CPU
# seconds before a pixel was decoded. Real headers are short, real PNGs hold few small chunks
# (APNG: two per frame) and real JPEGs few segments before their first scan (an ICC profile takes
# at most 255), so each is bounded before Pillow sees the file.
MAX_PNM_HEADER = 2**16  # bytes
MAX_PNG_SMALL_CHUNKS = 2**16  # chunks of fewer than 1024 bytes
MAX_JPEG_SEGMENTS = 2**12  # markers before the first scan
MAX_JPEG_FILL = 2**16  # fill bytes between them, all together
_PNM_TOKENS = {b"P1": 3, b"P4": 3, b"P2": 4, b"P3": 4, b"P5": 4, b"P6": 4, b"P7": None, b"Pf": 4, b"PF": 4}


def _header_reason(file) -> str | None:
    """Why the PNM, PNG or JPEG in ``file`` is refused before Pillow parses it (see MAX_PNM_HEADER),
    or None."""
    position = file.tell()
    try:
        head = file.read(8)
        if head[:2] in _PNM_TOKENS and _PNM_TOKENS[head[:2]]:
            data = head + file.read(MAX_PNM_HEADER)
            tokens, i = 0, 0
            while i < len(data) and tokens < _PNM_TOKENS[head[:2]]:
                if data[i:i + 1] == b"#":
                    end = data.find(b"\n", i)
                    i = len(data) if end < 0 else end + 1
                elif data[i:i + 1].isspace():
                    i += 1
                else:
                    tokens += 1
                    while i < len(data) and not data[i:i + 1].isspace() and data[i:i + 1] != b"#":
                        i += 1
            if tokens < _PNM_TOKENS[head[:2]] and len(data) > MAX_PNM_HEADER:
                return f"refused, a PNM header longer than {MAX_PNM_HEADER:,} bytes"
        elif head == b"\x89PNG\r\n\x1a\n":
            small = 0
            while True:
                header = file.read(8)
                if len(header) < 8 or header[4:] == b"IEND":
                    break
                length = int.from_bytes(header[:4], "big")
                if length < 1024:
                    small += 1
                    if small > MAX_PNG_SMALL_CHUNKS:
                        return f"refused, a PNG of more than {MAX_PNG_SMALL_CHUNKS:,} small chunks"
                file.seek(length + 4, os.SEEK_CUR)
        elif head[:2] == b"\xff\xd8":
            return _jpeg_header_reason(file)
        return None
    finally:
        file.seek(position)


def _jpeg_header_reason(file) -> str | None:
    """Why the JPEG in ``file`` is refused before Pillow parses its header (see MAX_JPEG_SEGMENTS), or
    None. The markers before the first scan are walked by their lengths, fill bytes counted."""
    file.seek(2)  # after SOI
    segments = fill = 0
    while True:
        if file.read(1) != b"\xff":
            return None  # not a marker: Pillow says what is wrong
        marker = file.read(1)
        while marker == b"\xff":
            fill += 1
            if fill > MAX_JPEG_FILL:
                return f"refused, a JPEG header of more than {MAX_JPEG_FILL:,} fill bytes"
            marker = file.read(1)
        if not marker or marker == b"\xda":  # the end, or the first scan
            return None
        segments += 1
        if segments > MAX_JPEG_SEGMENTS:
            return f"refused, a JPEG of more than {MAX_JPEG_SEGMENTS:,} segments before its first scan"
        if marker[0] in (0x01, *range(0xD0, 0xD9)):  # markers without a length
            continue
        length = file.read(2)
        if len(length) < 2:
            return None
        file.seek(int.from_bytes(length, "big") - 2, os.SEEK_CUR)


class _OpenError(Exception):
    """safeio's message ("<path>: <reason>"), carried to ``open_image`` to become an ImageLoadError."""


def _pillow_reason(e: BaseException) -> str:
    # Pillow's plugins raise anything on a crafted file (struct.error, IndexError, ZeroDivisionError
    # ...): each becomes this file's error, with the class named where the message alone is unclear.
    text = str(e)
    if isinstance(e, (OSError, ValueError, SyntaxError, EOFError)) and text:
        return text
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def prepared_size(width: int, height: int, size: dict | None) -> tuple[int, int]:
    """(width, height) of a ``width x height`` image after a processor's resize to ``size`` (its
    ``size`` setting; ``None``: no resize)."""
    if size is None:
        return width, height
    new_height, new_width = output_size(height, width, size)
    return new_width, new_height


def check_image_size(width: int, height: int, *, max_pixels: int | None = None, size: dict | None = None,
                     max_prepared_pixels: int | None = None) -> str | None:
    """Why an image of this stored size is refused (a reason), or None: ``max_pixels`` bounds the
    decoded image, ``max_prepared_pixels`` the image after the resize to ``size`` (``None``: not
    resized, the image itself), known from the header before decoding: a 1x20000 strip is small
    stored but becomes 288x5,760,000 at shortest edge 288."""
    if width < 1 or height < 1:
        return f"refused, an empty image ({width}x{height})"
    if max_pixels is not None and width * height > max_pixels:
        return f"refused, {width}x{height} = {width * height:,} pixels is over the limit of {max_pixels:,}"
    if size is not None:  # settings such as shortest_edge 4096 with longest_edge 1 shrink a strip to nothing
        new_width, new_height = prepared_size(width, height, size)
        if new_width < 1 or new_height < 1:
            return f"refused, {width}x{height} becomes {new_width}x{new_height} when resized to {_describe_size(size)}: an empty image"
    if max_prepared_pixels is not None:
        new_width, new_height = prepared_size(width, height, size)
        if new_width * new_height <= max_prepared_pixels:
            return None
        if size is None:
            return (f"refused, {width}x{height} = {width * height:,} pixels (not resized) is over the limit of "
                    f"{max_prepared_pixels:,} prepared pixels")
        return (f"refused, {width}x{height} becomes {new_width:,}x{new_height:,} = {new_width * new_height:,} pixels "
                f"when resized to {_describe_size(size)}, over the limit of {max_prepared_pixels:,} prepared pixels")
    return None


def _describe_size(size: dict) -> str:
    return ", ".join(f"{key.replace('_', ' ')} {value}" for key, value in size.items())


def open_image(path: str | os.PathLike, *, max_pixels: int | None = None, size: dict | None = None,
               max_prepared_pixels: int | None = None, formats=IMAGE_FORMATS, data: bytes | None = None) -> Image.Image:
    """Open an image file and decode it fully, raising ``ImageLoadError`` with the reason.

    Only regular files are read (a FIFO or a device named ``x.jpg`` is refused, never waited on),
    only in ``formats`` (see ``IMAGE_FORMATS``; ``None``: every format Pillow reads). The limits
    (see ``check_image_size``) are checked from the header, before decoding, and a JPEG of more
    than ``MAX_JPEG_SCANS`` scans is refused. Without ``max_pixels``,
    Pillow's own decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``) applies and is reported the
    same way. The image is returned as stored: no EXIF rotation, no mode conversion. ``data``: the
    file's bytes, already read (a cluster's worker that does not see the file); ``path`` then only
    names the image in errors."""

    name = os.fspath(path)
    if data is not None:
        file = io.BytesIO(data)
    else:
        try:
            file = open_regular_file(name, error=_OpenError, what="file")
        except _OpenError as e:
            raise ImageLoadError(name, str(e).removeprefix(f"{Path(name)}: ")) from None
    with file:
        head = file.read(4)
        file.seek(0)
        if not head:  # said as it is: "not an image file that Pillow can read" hides what is wrong
            raise ImageLoadError(name, "empty file (0 bytes)")
        if formats is None or {"PNG", "PPM", "JPEG"} & set(formats):
            try:
                reason = _header_reason(file)
            except OSError as e:
                reason = f"cannot read ({e.strerror or e})"
            if reason is not None:
                raise ImageLoadError(name, reason)
        try:
            with warnings.catch_warnings():
                if max_pixels is not None:  # our own limit replaces Pillow's warning
                    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(file, formats=formats)
        except UnidentifiedImageError:
            if formats is not None and head in _REFUSED_MAGIC:
                raise ImageLoadError(name, f"{_REFUSED_MAGIC[head]}, refused: only {', '.join(formats)} images are read "
                                           "(an icon file may hold a larger image than its header says)") from None
            kinds = "" if formats is None else f" ({', '.join(formats)})"
            raise ImageLoadError(name, f"not an image file that Pillow can read{kinds}") from None
        except Image.DecompressionBombError as e:
            raise ImageLoadError(name, f"refused, too many pixels ({e})") from None
        except Exception as e:  # noqa: BLE001 - any failure of a plugin on a crafted header is this file's
            raise ImageLoadError(name, f"cannot open image ({_pillow_reason(e)})") from None
        width, height = image.size
        reason = check_image_size(width, height, max_pixels=max_pixels, size=size, max_prepared_pixels=max_prepared_pixels)
        if reason is None and image.format in ("JPEG", "MPO"):
            scans = _jpeg_scans(file, MAX_JPEG_SCANS)
            if scans > MAX_JPEG_SCANS:
                reason = (f"refused, a JPEG of more than {MAX_JPEG_SCANS} scans (each a pass over the whole "
                          "image: a decompression bomb in time)")
        if reason is not None:
            image.close()
            raise ImageLoadError(name, reason)
        try:
            image.load()
        except Exception as e:  # noqa: BLE001 - as above: truncated data, corrupt streams, plugin bugs
            image.close()
            raise ImageLoadError(name, f"truncated or corrupt image data ({_pillow_reason(e)})") from None
    return image


def load_image(path: str | os.PathLike, *, max_pixels: int | None = None, size: dict | None = None,
               max_prepared_pixels: int | None = None, data: bytes | None = None) -> Image.Image:
    """A photo from a file as transformers' ``load_image`` gives it: opened, turned upright by its
    EXIF orientation, converted to RGB with ``Image.convert("RGB")`` (transparency dropped, not
    composited). Raises ``ImageLoadError`` for a file that cannot be used (the limits as in
    ``open_image``; ``data``: the file's bytes, as there)."""
    image = open_image(path, max_pixels=max_pixels, size=size, max_prepared_pixels=max_prepared_pixels, data=data)
    try:
        # in place, and no convert of an RGB image: both would copy the whole photo (four bytes a
        # pixel) to get the same pixels
        ImageOps.exif_transpose(image, in_place=True)
        return image if image.mode == "RGB" else image.convert("RGB")
    except Exception as e:  # noqa: BLE001 - a crafted EXIF block or mode: this file's error
        raise ImageLoadError(path, f"cannot decode image ({_pillow_reason(e)})") from None


# --------------------------------------------------------------------------------------------
# The steps, on channels-first arrays
# --------------------------------------------------------------------------------------------


def infer_channel_axis(image: np.ndarray, channels=(1, 3, 4)) -> int:
    """0 for ``[C, H, W]``, -1 for ``[H, W, C]``: the axis whose length is a channel count, the
    first axis when both are (transformers' rule)."""
    if image.ndim != 3:
        raise ValueError(f"an image array must have 3 dimensions, got shape {image.shape}")
    if image.shape[0] in channels:
        return 0
    if image.shape[-1] in channels:
        return -1
    raise ValueError(
        f"cannot tell the channel axis of an image of shape {image.shape}: neither the first nor the last "
        f"axis has {', '.join(map(str, channels[:-1]))} or {channels[-1]} entries"
    )


def _channel_axis(image: np.ndarray, input_data_format) -> int:
    if input_data_format is None:
        return infer_channel_axis(image)
    fmt = str(getattr(input_data_format, "value", input_data_format))
    if fmt in ("channels_first", "first"):
        return 0
    if fmt in ("channels_last", "last"):
        return -1
    raise ValueError(f"input_data_format must be 'channels_first' or 'channels_last', got {input_data_format!r}")


def convert_pil_to_rgb(image: Image.Image) -> np.ndarray:  # PIL image -> [H, W, 3]
    """transformers' ``convert_to_rgb`` for a PIL image: an image with an alpha band or a
    transparent colour is composited onto white, any other converted with ``convert("RGB")``."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.array(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.array(image.convert("RGB"))


def convert_array_to_rgb(image: np.ndarray, axis: int) -> np.ndarray:  # [C, H, W] or [H, W, C], C in (1, 3, 4) -> 3 channels
    """transformers' ``convert_to_rgb`` for an array: one channel is repeated three times, four
    channels (RGBA) are composited onto white (255 for integer arrays, 1.0 for float arrays in
    [0, 1]; integer results rounded), three are returned as they are."""
    image = np.moveaxis(image, axis, -1)
    channels = image.shape[-1]
    if channels == 1:
        rgb = np.repeat(image, 3, axis=-1)
    elif channels == 4:
        is_int = np.issubdtype(image.dtype, np.integer)
        if not is_int and (image.min() < 0.0 or image.max() > 1.0):
            raise ValueError(
                f"an RGBA float image must hold values in [0, 1] to be composited onto white, got [{image.min()}, {image.max()}]"
            )
        white = 255 if is_int else 1.0
        alpha = image[..., 3:4] / white
        blended = alpha * image[..., :3] + (1 - alpha) * white
        rgb = np.round(blended).astype(image.dtype) if is_int else blended.astype(image.dtype)
    else:
        rgb = image
    return np.moveaxis(rgb, -1, axis)


def _needs_scaling_for_pil(image: np.ndarray) -> bool:
    """Whether an array must be multiplied by 255 before it becomes an 8-bit PIL image (float
    values in [0, 1]); integers 0..255 go as they are; anything else is refused."""
    if image.dtype == np.uint8:
        return False
    if np.allclose(image, image.astype(int)):
        if image.min() >= 0 and image.max() <= 255:
            return False
        raise ValueError(
            f"image values must be 8-bit (0..255) to be resized with Pillow, got [{image.min()}, {image.max()}]"
        )
    if image.min() >= 0 and image.max() <= 1:
        return True
    raise ValueError(
        "a float image must hold integers in 0..255 or values in [0, 1] to be resized with Pillow, "
        f"got values in [{image.min()}, {image.max()}]"
    )


def resize(image: np.ndarray, size: tuple[int, int], resample) -> np.ndarray:  # [C, H, W] -> [C, h, w]
    """Resize with Pillow, through an 8-bit PIL image: float images in [0, 1] are scaled to 0..255
    and cut to integers on the way in (``astype(uint8)`` truncates) and scaled back by 1/255 after."""
    scale = _needs_scaling_for_pil(image)
    hwc = image.transpose(1, 2, 0)
    if hwc.shape[-1] == 1:
        hwc = hwc[..., 0]
    if scale:
        hwc = rescale(hwc, 255.0)
    pil = Image.fromarray(hwc.astype(np.uint8))
    height, width = size
    out = np.array(pil.resize((width, height), resample=resample))
    if out.ndim == 2:
        out = out[..., None]
    out = out.transpose(2, 0, 1)
    return rescale(out, 1 / 255) if scale else out


def rescale(image: np.ndarray, factor: float) -> np.ndarray:  # [...] -> [...] float32
    """``image * factor``, computed in float64, returned as float32."""
    scaled = image.astype(np.float64)
    scaled *= factor  # in place: one float64 copy of the image at a time, not two
    return scaled.astype(np.float32)


def center_crop(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:  # [C, H, W] -> [C, h, w]
    """The central ``h x w`` window; the crop starts at ``(H - h) // 2``. Along a side shorter than
    the crop the image is padded with zeros instead, starting at ``ceil((h - H) / 2)``."""
    out_h, out_w = size
    height, width = image.shape[-2:]
    if height >= out_h and width >= out_w:
        top, left = (height - out_h) // 2, (width - out_w) // 2
        return image[..., top : top + out_h, left : left + out_w]
    out = np.zeros(image.shape[:-2] + (out_h, out_w), dtype=image.dtype)
    src, dst = [], []
    for n, c in ((height, out_h), (width, out_w)):
        if n >= c:
            start = (n - c) // 2
            src.append(slice(start, start + c))
            dst.append(slice(0, c))
        else:
            start = math.ceil((c - n) / 2)
            src.append(slice(0, n))
            dst.append(slice(start, start + n))
    out[..., dst[0], dst[1]] = image[..., src[0], src[1]]
    return out


def flip_channel_order(image: np.ndarray) -> np.ndarray:  # [C, H, W] -> [C, H, W]
    """RGB -> BGR (and back): the channel axis reversed."""
    return image[::-1]


def reduce_labels(labels: np.ndarray) -> np.ndarray:  # [1, H, W] -> [1, H, W]
    """Label ids minus one, 0 (background) becoming 255 (ignored): for datasets whose class 0 is
    not a class. Works on a copy."""
    labels = labels.copy()
    labels[labels == 0] = 255
    labels = labels - 1
    labels[labels == 254] = 255
    return labels


def output_size(height: int, width: int, size: dict) -> tuple[int, int]:
    """The size a resize to ``size`` gives an ``height x width`` image (transformers' rules)."""
    if "shortest_edge" in size and "longest_edge" in size:
        short_target, max_size = size["shortest_edge"], size["longest_edge"]
        small, large = float(min(height, width)), float(max(height, width))
        raw = None
        if large / small * short_target > max_size:
            raw = max_size * small / large
            short_target = round(raw)
        if (height <= width and height == short_target) or (width <= height and width == short_target):
            return height, width
        if width < height:
            return (int(raw * height / width) if raw is not None else int(short_target * height / width)), short_target
        return short_target, (int(raw * width / height) if raw is not None else int(short_target * width / height))
    if "shortest_edge" in size:
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = size["shortest_edge"], int(size["shortest_edge"] * long / short)
        return (new_long, new_short) if width <= height else (new_short, new_long)
    return size["height"], size["width"]


# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------

SIZE_KEYS = ({"height", "width"}, {"shortest_edge"}, {"shortest_edge", "longest_edge"})


def _positive_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0


def size_dict(size, *, default_to_square: bool, name: str = "size") -> dict[str, int]:
    """transformers' size forms -> a dict: an int is ``{"shortest_edge": n}`` (or a square for
    ``default_to_square``), a pair is ``(height, width)``; dicts are checked. Every side is a
    positive integer of at most ``MAX_IMAGE_SIDE``; a bad one raises ``ConfigError``."""
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        size = {"height": int(size), "width": int(size)} if default_to_square else {"shortest_edge": int(size)}
    elif isinstance(size, (list, tuple)) and len(size) == 2:
        size = {"height": size[0], "width": size[1]}
    if not isinstance(size, dict) or set(size) not in SIZE_KEYS:
        allowed = ", ".join("{" + ", ".join(sorted(k)) + "}" for k in SIZE_KEYS)
        raise ConfigError(f"{name} must be an int, a (height, width) pair or a dict with keys {allowed}; got {show(size)}",
                          field=name)
    if not all(_positive_int(v) and v <= MAX_IMAGE_SIDE for v in size.values()):
        raise ConfigError(f"{name} must hold positive integers of at most {MAX_IMAGE_SIDE}, got {show(size)}", field=name)
    return {k: int(v) for k, v in size.items()}


def resampling(value) -> Image.Resampling:
    """A Pillow filter from its number (as ``preprocessor_config.json`` stores it) or its name."""
    if isinstance(value, str) and value.lower() in RESAMPLING:
        return RESAMPLING[value.lower()]
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and 0 <= value <= 5:
        return Image.Resampling(int(value))
    raise ConfigError(f"resample must be a Pillow filter (0-5, or one of {', '.join(RESAMPLING)}), got {show(value)}",
                      field="resample")


def _flag(name: str, value, default):
    """A do_* setting: true or false (None, as transformers reads it, is the default)."""
    if value is None:
        return default
    if not isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"{name} must be true or false, got {show(value)}", field=name)
    return bool(value)


def _rescale_factor(value) -> float:
    if not is_finite_number(value):
        raise ConfigError(f"rescale_factor must be a finite number, got {show(value)}", field="rescale_factor")
    return float(value)


DEFAULTS = {"do_resize": True, "size": {"shortest_edge": 224}, "resample": Image.Resampling.BICUBIC, "do_rescale": True,
            "rescale_factor": 1 / 255, "do_center_crop": True, "crop_size": {"height": 256, "width": 256},
            "do_flip_channel_order": True, "do_reduce_labels": False}


def _checked_settings(values: dict) -> dict:
    """All of ``OPTIONS``, each checked (``ConfigError`` naming the first bad one) and in its
    stored form; None is the default (transformers' reading of null), except for do_convert_rgb."""
    out = {}
    for name in OPTIONS:
        value = values.get(name)
        if name == "do_convert_rgb":
            out[name] = _flag(name, value, None)
        elif name.startswith("do_"):
            out[name] = _flag(name, value, DEFAULTS[name])
        elif value is None:
            out[name] = copy.deepcopy(DEFAULTS[name])
        elif name == "size":
            out[name] = size_dict(value, default_to_square=False)
        elif name == "crop_size":
            out[name] = size_dict(value, default_to_square=True, name="crop_size")
            if set(out[name]) != {"height", "width"}:
                raise ConfigError(f"crop_size must give a height and a width, got {show(out[name])}", field="crop_size")
        elif name == "resample":
            out[name] = resampling(value)
        elif name == "rescale_factor":
            out[name] = _rescale_factor(value)
    return out


class BatchFeature(dict):
    """A dict whose keys are also attributes (``out.pixel_values``), as transformers' BatchFeature."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


OPTIONS = (
    "do_resize", "size", "resample", "do_rescale", "rescale_factor", "do_center_crop", "crop_size",
    "do_flip_channel_order", "do_reduce_labels", "do_convert_rgb",
)


class MobileViTImageProcessor:
    """The image processor of MobileViT and MobileViTV2: transformers' ``MobileViTImageProcessorPil``
    in Pillow and NumPy (see the module docstring for the steps and the inputs).

    Defaults are transformers' class defaults; a checkpoint's ``preprocessor_config.json``
    (``from_pretrained``) overrides them: for the apple/mobilevitv2 checkpoints a shortest edge
    of 288 (544 for the segmentation models) and a 256 (512) center crop.

        >>> processor = MobileViTImageProcessor.from_pretrained("path/to/checkpoint-folder")
        >>> batch = processor(["cat.jpg", "dog.png"], return_tensors="np")
        >>> batch["pixel_values"].shape
        (2, 3, 256, 256)
    """

    model_input_names = ("pixel_values",)

    def __init__(self, /, do_resize: bool = True, size=None, resample=Image.Resampling.BICUBIC, do_rescale: bool = True,
                 rescale_factor: float = 1 / 255, do_center_crop: bool = True, crop_size=None,
                 do_flip_channel_order: bool = True, do_reduce_labels: bool = False, do_convert_rgb: bool | None = None,
                 **kwargs):
        # every setting is checked here (ConfigError naming it), and again when a call overrides it
        settings = _checked_settings({
            "do_resize": do_resize, "size": size, "resample": resample, "do_rescale": do_rescale,
            "rescale_factor": rescale_factor, "do_center_crop": do_center_crop, "crop_size": crop_size,
            "do_flip_channel_order": do_flip_channel_order, "do_reduce_labels": do_reduce_labels,
            "do_convert_rgb": do_convert_rgb})
        for name, value in settings.items():
            setattr(self, name, value)
        # keys of preprocessor_config.json that MobileViT's processor does not use (image_mean,
        # image_std, do_normalize: transformers' MobileViT processor never normalises), kept for to_dict
        self.extra = {k: v for k, v in kwargs.items() if k not in ("image_processor_type", "feature_extractor_type", "processor_class")}

    # -- reading and writing ----------------------------------------------------------------------

    @classmethod
    def from_dict(cls, config: dict, **overrides) -> MobileViTImageProcessor:
        if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
            raise ConfigError(f"an image processor config must be a dict with string keys, got {show(config)}")
        config = {**config, **overrides}
        if "reduce_labels" in config and "do_reduce_labels" not in config:  # the old name
            config["do_reduce_labels"] = config.pop("reduce_labels")
        # the settings by name; every other key (even one named like a method, or "self") is
        # kept apart in ``extra``
        processor = cls(**{k: v for k, v in config.items() if k in OPTIONS})
        processor.extra = {k: v for k, v in config.items()
                           if k not in OPTIONS and k not in ("image_processor_type", "feature_extractor_type", "processor_class")}
        return processor

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *, revision: str | None = None,
                        **overrides) -> MobileViTImageProcessor:
        """Read ``preprocessor_config.json`` from a checkpoint folder or a Hugging Face repo id (or a
        path to the JSON file itself). Keyword arguments override the file's values. A file we
        cannot use (not a regular file, too large, not UTF-8 JSON, nested over
        ``safeio.MAX_JSON_DEPTH``, or a bad setting) raises ``ConfigError`` naming it."""
        path = Path(pretrained_model_name_or_path)
        if not path.is_file():
            path = resolve_file(pretrained_model_name_or_path, PREPROCESSOR_CONFIG, revision=revision)
        config = read_settings_json(path, error=ConfigError, what="preprocessor config")
        if not isinstance(config, dict):
            raise ConfigError(f"{path} must hold a JSON object, found {type(config).__name__}")
        try:
            return cls.from_dict(config, **overrides)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}", field=e.field) from None

    @classmethod
    def for_model_config(cls, config, **overrides) -> MobileViTImageProcessor:
        """The settings the apple/mobilevitv2 checkpoints were converted with, derived from a model
        config, for a checkpoint folder without ``preprocessor_config.json``: shortest edge
        ``image_size + 32``, center crop ``image_size``, bilinear resampling, BGR."""
        settings = {"size": {"shortest_edge": config.image_size + 32},
                    "crop_size": {"height": config.image_size, "width": config.image_size},
                    "resample": Image.Resampling.BILINEAR}
        return cls(**{**settings, **overrides})

    def to_dict(self) -> dict:
        out = {name: getattr(self, name) for name in OPTIONS}
        out["resample"] = int(self.resample)
        out.update(self.extra)
        out["image_processor_type"] = "MobileViTImageProcessor"
        return out

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write ``preprocessor_config.json`` (which transformers reads too)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / PREPROCESSOR_CONFIG
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return path

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={getattr(self, k)!r}' for k in OPTIONS)})"

    # -- preprocessing ------------------------------------------------------------------------------

    def __call__(self, images, segmentation_maps=None, *, return_tensors: str | None = None,
                 input_data_format=None, **overrides) -> BatchFeature:
        """``pixel_values``: one float32 ``[C, h, w]`` array per image (a list), or ``[B, C, h, w]``
        with ``return_tensors="np"``. With ``segmentation_maps`` (one ``[H, W]`` label map per image:
        PIL "L"/"P" images, 2-D integer arrays or paths), ``labels`` too: int64 ``[h, w]`` maps,
        resized with nearest-neighbour sampling, cropped like the images, never rescaled or
        flipped, and reduced when ``do_reduce_labels``. Keyword arguments override the settings
        for this call."""
        unknown = set(overrides) - set(OPTIONS)
        if unknown:
            raise TypeError(f"unexpected argument(s): {', '.join(sorted(unknown))}; the settings are {', '.join(OPTIONS)}")
        if return_tensors not in (None, "np"):
            raise ValueError(f"return_tensors must be None or 'np' (NumPy arrays), got {return_tensors!r}")
        settings = {name: getattr(self, name) for name in OPTIONS}
        if overrides:
            settings = _checked_settings({**settings, **overrides})
        pixel_values = [
            self._steps(self._to_chw(image, settings["do_convert_rgb"], input_data_format), settings, do_reduce_labels=False)
            for image in flatten_images(images, expected_ndim=3)
        ]
        data = BatchFeature(pixel_values=pixel_values)
        if segmentation_maps is not None:
            label_settings = {**settings, "do_rescale": False, "do_flip_channel_order": False,
                              "resample": Image.Resampling.NEAREST}
            labels = []
            for label_map in flatten_images(segmentation_maps, expected_ndim=2, open_path=_open_label_map):
                label_map = np.array(label_map) if isinstance(label_map, Image.Image) else np.asarray(label_map)
                label_map = label_map[None] if label_map.ndim == 2 else np.moveaxis(label_map, -1, 0)
                processed = self._steps(label_map, label_settings, do_reduce_labels=settings["do_reduce_labels"])
                labels.append(np.squeeze(processed, 0).astype(np.int64))
            data["labels"] = labels
        if return_tensors == "np":
            for key, value in data.items():
                shapes = {v.shape for v in value}
                if len(shapes) > 1:
                    raise ValueError(
                        f"cannot stack {key} of different shapes {sorted(shapes)} into one array; "
                        "use a center crop or a fixed size, or return_tensors=None for a list"
                    )
                data[key] = np.stack([np.ascontiguousarray(v) for v in value])
        return data

    preprocess = __call__

    @staticmethod
    def _to_chw(image, do_convert_rgb, input_data_format) -> np.ndarray:  # image -> [C, H, W]
        if isinstance(image, Image.Image):
            convert = do_convert_rgb if do_convert_rgb is not None else image.mode != "RGB"
            array = convert_pil_to_rgb(image) if convert else np.array(image)
            return array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)
        array = np.asarray(image)
        if array.dtype.kind not in "biuf":
            raise ValueError(f"an image array must hold numbers, got dtype {array.dtype}")
        axis = _channel_axis(array, input_data_format)
        convert = do_convert_rgb if do_convert_rgb is not None else array.shape[axis] in (1, 4)
        if convert:
            array = convert_array_to_rgb(array, axis)
            axis = _channel_axis(array, input_data_format)
        return array if axis == 0 else np.moveaxis(array, -1, 0)

    @staticmethod
    def _steps(image: np.ndarray, s: dict, *, do_reduce_labels: bool) -> np.ndarray:  # [C, H, W] -> [C, h, w]
        """transformers' order: reduce labels, resize, rescale, center crop, flip channels."""
        if do_reduce_labels:
            image = reduce_labels(image)
        if s["do_resize"]:
            image = resize(image, output_size(*image.shape[-2:], s["size"]), s["resample"])
        if s["do_rescale"]:
            image = rescale(image, s["rescale_factor"])
        if s["do_center_crop"]:
            image = center_crop(image, (s["crop_size"]["height"], s["crop_size"]["width"]))
        if s["do_flip_channel_order"]:
            image = flip_channel_order(image)
        return image

    # -- post-processing ----------------------------------------------------------------------------

    def post_process_semantic_segmentation(self, outputs, target_sizes=None, return_segmentation_scores: bool = False):
        return post_process_semantic_segmentation(outputs, target_sizes, return_segmentation_scores)

    def post_process_image_classification(self, outputs, top_k: int = 5, id2label=None, function: str = "softmax"):
        return post_process_image_classification(outputs, top_k, id2label, function)

    post_process_semantic_segmentation.__doc__ = "See ``numpy_mvit2.processing.post_process_semantic_segmentation``."
    post_process_image_classification.__doc__ = "See ``numpy_mvit2.processing.post_process_image_classification``."


def _open_label_map(path) -> Image.Image:
    # A label map is read as stored (its "L" or "P" indices are the labels): no EXIF rotation, no
    # RGB conversion (transformers' load_image would convert it to RGB, destroying the ids).
    return open_image(path)


def flatten_images(images, *, expected_ndim: int = 3, open_path=load_image) -> list:
    """One image, a batch array, a list, or a list of lists -> a flat list of PIL images and
    arrays; paths are opened with ``open_path``."""
    def single(item):
        if isinstance(item, (str, os.PathLike)):
            return [open_path(item)]
        if isinstance(item, Image.Image):
            return [item]
        if isinstance(item, np.ndarray) or hasattr(item, "__array__"):
            array = np.asarray(item)
            if array.ndim == expected_ndim:
                return [array]
            if array.ndim == expected_ndim + 1:
                return list(array)
            raise ValueError(f"an image array must have {expected_ndim} (one image) or {expected_ndim + 1} "
                             f"(a batch) dimensions, got shape {array.shape}")
        raise TypeError(f"an image must be a path, a PIL image or a NumPy array, got {type(item).__name__}")

    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("no images given (an empty list)")
        out = []
        for item in images:
            out.extend(flatten_images(item, expected_ndim=expected_ndim, open_path=open_path)
                       if isinstance(item, (list, tuple)) else single(item))
        return out
    return single(images)


# --------------------------------------------------------------------------------------------
# Post-processing
# --------------------------------------------------------------------------------------------


@dataclass
class SemanticSegmentationOutput:
    """One image's result with ``return_segmentation_scores``: the class map [H, W] and the
    (upsampled) logits it was taken from [num_labels, H, W]."""

    segmentation: np.ndarray
    segmentation_scores: np.ndarray


def _logits(outputs) -> np.ndarray:
    return np.asarray(outputs.logits if hasattr(outputs, "logits") else outputs)


def post_process_semantic_segmentation(outputs, target_sizes=None, return_segmentation_scores: bool = False,
                                       *, rows_per_chunk: int = 256):
    """Per-pixel classes, as transformers' ``post_process_semantic_segmentation``.

    ``outputs``: a segmentation output (or its ``logits``, [B, num_labels, h, w]). Without
    ``target_sizes``, the arg-max class of each logit pixel ([h, w] each). With ``target_sizes``
    (one ``(height, width)`` per image), the logits are first upsampled bilinearly
    (``align_corners=False``) to that size. Returns a list of int64 [H, W] arrays, or of
    ``SemanticSegmentationOutput`` with ``return_segmentation_scores``. Large targets are done
    ``rows_per_chunk`` output rows at a time (the same numbers, less memory)."""
    logits = _logits(outputs)
    if logits.ndim != 4:
        raise ValueError(f"segmentation logits must have shape (batch, num_labels, height, width), got {logits.shape}")
    if target_sizes is not None:
        target_sizes = [tuple(int(v) for v in size) for size in target_sizes]
        if len(target_sizes) != len(logits):
            raise ValueError(f"target_sizes has {len(target_sizes)} sizes for a batch of {len(logits)} logits; give one per image")
    results = []
    for i, image_logits in enumerate(logits):
        image_logits = image_logits[None]  # [1, L, h, w]
        if target_sizes is None:
            scores = image_logits[0]
            results.append(SemanticSegmentationOutput(scores.argmax(axis=0), scores) if return_segmentation_scores
                           else scores.argmax(axis=0))
            continue
        height, width = target_sizes[i]
        if return_segmentation_scores:
            scores = interpolate_bilinear(image_logits, (height, width))[0]
            results.append(SemanticSegmentationOutput(scores.argmax(axis=0), scores))
            continue
        # separable: first along the height (cheap: the logits are narrow), then the width in
        # blocks of rows, taking each block's arg-max before the next
        tall = interpolate_bilinear(image_logits, (height, image_logits.shape[-1]))
        classes = np.empty((height, width), dtype=np.int64)
        for top in range(0, height, rows_per_chunk):
            block = tall[..., top : top + rows_per_chunk, :]
            classes[top : top + rows_per_chunk] = interpolate_bilinear(block, (block.shape[-2], width))[0].argmax(axis=0)
        results.append(classes)
    return results


def post_process_image_classification(outputs, top_k: int = 5, id2label=None, function: str = "softmax") -> list[list[dict]]:
    """The ``top_k`` classes of each image, best first: ``[{"label": str, "index": int, "score":
    float}, ...]`` per image. ``function`` turns logits into scores: "softmax" (single-label
    models, the default), "sigmoid" (multi-label) or "none". ``id2label`` maps class indices to
    names (a model config's ``id2label``); without it the label is ``LABEL_{index}``."""
    logits = _logits(outputs).astype(np.float64)
    if logits.ndim == 1:
        logits = logits[None]
    if logits.ndim != 2:
        raise ValueError(f"classification logits must have shape (batch, num_labels), got {logits.shape}")
    if function == "softmax":
        shifted = logits - logits.max(axis=-1, keepdims=True)
        scores = np.exp(shifted)
        scores /= scores.sum(axis=-1, keepdims=True)
    elif function == "sigmoid":
        scores = 1.0 / (1.0 + np.exp(-logits))
    elif function == "none":
        scores = logits
    else:
        raise ValueError(f"function must be 'softmax', 'sigmoid' or 'none', got {function!r}")
    top_k = max(1, min(int(top_k), logits.shape[-1]))
    id2label = {int(k): v for k, v in (id2label or {}).items()}
    results = []
    for row in scores:
        best = np.argsort(-row, kind="stable")[:top_k]
        results.append([{"label": id2label.get(int(i), f"LABEL_{int(i)}"), "index": int(i), "score": float(row[i])}
                        for i in best])
    return results


# --------------------------------------------------------------------------------------------
# Colours
# --------------------------------------------------------------------------------------------


def voc_palette(num_colors: int = 256) -> np.ndarray:  # -> [num_colors, 3] uint8
    """The PASCAL VOC colour map: class ``i``'s colour spreads the bits of ``i`` over the three
    channels, from the most significant bit of each channel down (0 black, 1 dark red, 2 dark
    green, ..., 255 the colour VOC uses for "ignore")."""
    palette = np.zeros((num_colors, 3), dtype=np.uint8)
    for index in range(num_colors):
        value, rgb = index, [0, 0, 0]
        for bit in range(7, -1, -1):
            for channel in range(3):
                rgb[channel] |= ((value >> channel) & 1) << bit
            value >>= 3
        palette[index] = rgb
    return palette


__all__ = [
    "IMAGE_FORMATS",
    "BatchFeature",
    "ImageLoadError",
    "MobileViTImageProcessor",
    "SemanticSegmentationOutput",
    "load_image",
    "open_image",
    "post_process_image_classification",
    "post_process_semantic_segmentation",
    "voc_palette",
]
