"""The command line against hostile inputs (issue 11): files named to collide, links planted in
the output folder, signals in the middle of a run, images whose size explodes when resized or
hides behind a lying header, FIFOs and devices named like photos, file names and labels built to
forge output lines or drive the terminal.

Each CLI run is capped (tests/bounded.py: 1 GiB of address space, 10 CPU seconds) and its peak
memory checked; cases are grouped into few runs, as each run costs a model load.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from bounded import BOUNDED_ENV, run_bounded, signal_and_wait
from PIL import Image
from safetensors.numpy import save_file

from numpy_mvit2 import (
    MobileViTImageProcessor,
    MobileViTV2Config,
    MobileViTV2ForImageClassification,
    MobileViTV2ForSemanticSegmentation,
)
from numpy_mvit2.processing import ImageLoadError, open_image

GIGABYTE = 10**9
# Labels that would drive a terminal or forge a line if printed raw.
HOSTILE_LABELS = {0: "\x1b[31mred\x1b[0m", 1: "two\nlines", 2: "bell\x07", 3: "csi\x9b2J", 4: "bidi\u202eevil",
                  5: "plain", 6: "tab\there"}


def write_checkpoint(folder: Path, model, architecture: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    MobileViTV2Config.from_dict(model.config.to_dict(), architectures=[architecture]).save_pretrained(folder)
    save_file(model.state_dict(), str(folder / "model.safetensors"))
    MobileViTImageProcessor(size={"shortest_edge": 72}, crop_size=64, resample="bilinear").save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """A small generated classifier whose labels hold escapes, newlines and C1/bidi controls."""
    config = MobileViTV2Config(width_multiplier=0.5, image_size=64, id2label=HOSTILE_LABELS)
    return write_checkpoint(tmp_path_factory.mktemp("classifier"), MobileViTV2ForImageClassification(config, seed=1),
                            "MobileViTV2ForImageClassification")


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    config = MobileViTV2Config(width_multiplier=0.5, image_size=64, id2label=HOSTILE_LABELS, output_stride=16,
                               aspp_out_channels=32)
    return write_checkpoint(tmp_path_factory.mktemp("segmenter"), MobileViTV2ForSemanticSegmentation(config, seed=2),
                            "MobileViTV2ForSemanticSegmentation")


def photo(seed: int, width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def png_bytes(width: int, height: int, idat: bytes) -> bytes:
    """A grey 8-bit PNG whose header says ``width x height``, with ``idat`` as its only data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def lying_ico() -> bytes:
    """An ICO whose directory says 16x16 but whose image is a 40000x40000 PNG (Pillow decodes it
    inside Image.open)."""
    embedded = png_bytes(40_000, 40_000, zlib.compress(b"\x00" * 100_000))
    entry = struct.pack("<BBBBHHII", 16, 16, 0, 0, 1, 32, len(embedded), 6 + 16)
    return struct.pack("<HHH", 0, 1, 1) + entry + embedded


def gif_frame_larger_than_screen() -> bytes:
    """A GIF whose screen is 1x1 and whose first frame is 20000x1 (Pillow grows the size to it)."""
    screen = b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    frame = b"," + struct.pack("<HHHHB", 0, 0, 20_000, 1, 0) + b"\x02\x02\x4c\x01\x00"
    return screen + frame + b";"


def scan_bomb() -> bytes:
    """A progressive JPEG of 2000x1500 whose smallest scan is repeated 3,000 times: 100 kB that
    take a minute of CPU to decode (each scan is a pass over the whole image)."""
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (2000, 1500), (120, 80, 40)).save(buffer, format="JPEG", progressive=True)
    data = buffer.getvalue()
    starts = [i for i in range(len(data) - 1) if data[i : i + 2] == b"\xff\xda"] + [len(data) - 2]
    smallest = min((data[a:b] for a, b in itertools.pairwise(starts[1:])), key=len)  # not the first (DC) scan
    return data[:-2] + smallest * 3000 + b"\xff\xd9"


def jpeg_bytes(image: Image.Image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    return buffer.getvalue()


def jpeg_header_flood(fill: bool) -> bytes:
    """A small JPEG with a flood before its first segment: 2 MB of fill bytes (0xFF), or 200,000
    empty APP5 segments; Pillow walks either a byte or a segment at a time in Python."""
    data = jpeg_bytes(photo(4, 40, 30))
    flood = b"\xff" * 2_000_000 if fill else b"\xff\xe5\x00\x02" * 200_000
    return data[:2] + flood + data[2:]


def motion_photo() -> bytes:
    """A phone's "motion photo": a JPEG with a video after its end marker, here random bytes that
    hold 0xFF 0xDA (a scan marker, were it inside the image) a hundred times."""
    video = b"".join(np.random.default_rng(0).bytes(1000) + b"\xff\xda" for _ in range(100))
    return jpeg_bytes(photo(5, 60, 40)) + video


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A folder of hostile files beside one good photo, and the files named on the command line."""
    folder = tmp_path_factory.mktemp("hostile")
    photo(0, 90, 70).save(folder / "a_good.jpg")
    Image.new("L", (1, 20_000)).save(folder / "b_strip.png")  # 1x20000: 72 x 1,440,000 once resized to the shortest edge 72
    Image.new("L", (10_799, 1)).save(folder / "c_strip.gif")
    (folder / "d_lying.ico.png").write_bytes(lying_ico())  # an ICO named like a PNG
    (folder / "e_big_frame.gif").write_bytes(gif_frame_larger_than_screen())
    (folder / "f_bomb.png").write_bytes(png_bytes(60_000, 60_000, zlib.compress(b"\x00" * 10_000)))
    (folder / "g_truncated.png").write_bytes(png_bytes(300, 200, zlib.compress(b"\x00" * 1000)[:20]))
    os.mkfifo(folder / "h_fifo.jpg")
    photo(1, 80, 60).save(folder / os.fsdecode(b"i_caf\xe9.png"))  # not valid UTF-8
    photo(2, 60, 80).save(folder / "j_evil\nforged.png")  # a newline in the name
    photo(3, 70, 70).save(folder / "k_\x1b[2Jclear.png")  # an escape sequence in the name
    (folder / "l_scans.jpg").write_bytes(scan_bomb())
    (folder / "m_fill.jpg").write_bytes(jpeg_header_flood(fill=True))
    (folder / "n_segments.jpg").write_bytes(jpeg_header_flood(fill=False))
    (folder / "o_motion.jpg").write_bytes(motion_photo())  # not hostile: classified like any photo
    named = [folder / "h_fifo.jpg", Path("/dev/zero"), folder / "d_lying.ico.png"]
    return folder, named


EXPECTED_REFUSALS = {  # file name -> words its message holds
    "b_strip.png": ["1x20000", "72x1,440,000", "over the limit"],
    "c_strip.gif": ["10799x1", "over the limit"],
    "d_lying.ico.png": ["ICO", "refused"],
    "e_big_frame.gif": ["20000x1", "over the limit"],
    "f_bomb.png": ["60000x60000", "over the limit"],
    "g_truncated.png": ["truncated"],
    "h_fifo.jpg": ["not a regular file", "FIFO"],
    "zero": ["not a regular file", "character device"],
    "l_scans.jpg": ["more than 40 scans"],
    "m_fill.jpg": ["more than 65,536 fill bytes"],
    "n_segments.jpg": ["more than 4,096 segments"],
}


def assert_clean(result):
    assert not result.signalled, result
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr
    assert "internal error" not in result.stderr, result.stderr
    assert result.max_rss < GIGABYTE, result.max_rss


def check_refusals(records: list[dict], stderr: str) -> None:
    by_name = {Path(r["file"]).name: r for r in records}
    for name, words in EXPECTED_REFUSALS.items():
        matching = [r for n, r in by_name.items() if n == name]
        assert matching, (name, sorted(by_name))
        for word in words:
            assert word in matching[0]["error"], (name, matching[0])
        assert name in stderr, (name, stderr)


def test_hostile_images_classify(classifier, hostile):
    folder, named = hostile
    result = run_bounded(["-m", "numpy_mvit2", "classify", str(folder), *map(str, named), "--model", str(classifier),
                          "--json"])
    assert_clean(result)
    assert result.returncode == 1
    assert "\ufffd" not in result.stdout  # run_bounded decodes with "replace": no invalid UTF-8 came out
    records = json.loads(result.stdout)
    assert len(records) == 15 + len(named)  # every file, the FIFO and the device included, has its record
    check_refusals(records, result.stderr)
    good = [r for r in records if "predictions" in r]
    assert {Path(r["file"]).name for r in good} == {"a_good.jpg", os.fsdecode(b"i_caf\xe9.png"), "j_evil\nforged.png",
                                                     "k_\x1b[2Jclear.png", "o_motion.jpg"}
    # the undecodable byte travels as a \udcXX escape: json.loads + os.fsencode give the name's bytes back
    assert any(os.fsencode(r["file"]).endswith(b"i_caf\xe9.png") for r in good)
    assert "\\udce9" in result.stdout
    # labels with control characters are valid JSON; C1 and bidi controls escaped, not raw
    assert "\x9b" not in result.stdout and "\u202e" not in result.stdout and "\x1b" not in result.stdout
    assert {p["label"] for r in good for p in r["predictions"]} <= set(HOSTILE_LABELS.values())
    # stderr: one line per failure, names escaped
    assert "\x1b" not in result.stderr and "d_lying.ico.png" in result.stderr

    text = run_bounded(["-m", "numpy_mvit2", "classify", str(folder), "--model", str(classifier), "--top-k", "7"])
    assert_clean(text)
    out = text.stdout
    assert "\x1b" not in out and "\x07" not in out and "\x9b" not in out and "\u202e" not in out and "\t" not in out
    assert "\\x1b[31mred\\x1b[0m" in out and "two\\nlines" in out and "bidi\\u202eevil" in out
    assert "j_evil\\nforged.png:" in out and "k_\\x1b[2Jclear.png:" in out and "i_caf\\xe9.png:" in out
    # no line of the output starts with the forged part of a name
    assert not any(line.startswith("forged.png") for line in out.splitlines())
    assert sum(line.endswith(":") for line in out.splitlines()) == 5  # one result block per good image


def test_hostile_images_segment(segmenter, hostile, tmp_path):
    folder, named = hostile
    out = tmp_path / "out"
    result = run_bounded(["-m", "numpy_mvit2", "segment", str(folder), *map(str, named), "--model", str(segmenter),
                          "-o", str(out), "--json"])
    assert_clean(result)
    assert result.returncode == 1
    records = json.loads(result.stdout)
    check_refusals(records, result.stderr)
    written = sorted(os.fsencode(p.name) for p in out.iterdir())
    assert len(written) == 2 * 5 and all(not name.startswith(b".") for name in written)  # no temporary files
    assert b"i_caf\xe9_labels.png" in written and b"j_evil\nforged_overlay.png" in written
    text = run_bounded(["-m", "numpy_mvit2", "segment", str(folder / "a_good.jpg"), str(folder / "k_\x1b[2Jclear.png"),
                        "--model", str(segmenter), "-o", str(tmp_path / "text")])
    assert_clean(text)
    assert text.returncode == 0, text.stderr
    assert "\x1b" not in text.stdout and "k_\\x1b[2Jclear_labels.png" in text.stdout


def segment_outputs(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if not p.is_symlink()}


def test_colliding_names_existing_files_and_planted_links(segmenter, tmp_path):
    """x-2.jpg, x.jpg and x.png in one run get x-2, x and x-3; existing files (links included)
    are kept without --overwrite and replaced, never written through, with it."""
    photos = tmp_path / "photos"
    photos.mkdir()
    sizes = {"x-2.jpg": (40, 30), "x.jpg": (50, 30), "x.png": (60, 30), "y.jpg": (70, 30), "z.jpg": (80, 30)}
    for i, (name, size) in enumerate(sizes.items()):
        photo(i, *size).save(photos / name)
    inputs = [str(photos / name) for name in sizes]
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "target.png").write_bytes(b"not yours")
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(outside / "target.png", out / "y_labels.png")  # an existing link to a file outside
    os.symlink(outside / "new.png", out / "z_overlay.png")  # a dangling link: following it creates a file outside
    for stem in ("x", "x-2", "x-3", "y", "z"):  # the old predictable temporary names, as links outside
        for kind in ("labels", "overlay"):
            os.symlink(outside / f"tmp-{stem}-{kind}", out / f".{stem}_{kind}.png.tmp")
    command = ["-m", "numpy_mvit2", "segment", *inputs, "--model", str(segmenter), "-o", str(out), "--json"]

    first = run_bounded(command)
    assert_clean(first)
    assert first.returncode == 1
    records = json.loads(first.stdout)
    assert [Path(r.get("labels", "-")).name for r in records] == [
        "x-2_labels.png", "x_labels.png", "x-3_labels.png", "-", "-"]
    for record, name in zip(records[:3], sizes):
        assert record["size"] == list(sizes[name]) and Image.open(record["overlay"]).size == sizes[name]
    assert "y_labels.png exists" in records[3]["error"] and "z_overlay.png exists" in records[4]["error"]
    assert "y.jpg" in first.stderr and "--overwrite" in first.stderr
    assert sorted(p.name for p in outside.iterdir()) == ["target.png"]  # nothing written outside
    before = segment_outputs(out)

    second = run_bounded(command)  # the same run again: every file exists, nothing replaced
    assert_clean(second)
    assert second.returncode == 1
    assert all("exists; not replaced without --overwrite" in r["error"] for r in json.loads(second.stdout))
    assert segment_outputs(out) == before

    third = run_bounded([*command, "--overwrite"])
    assert_clean(third)
    assert third.returncode == 0, third.stderr
    records = json.loads(third.stdout)
    assert [Path(r["labels"]).stem for r in records] == ["x-2_labels", "x_labels", "x-3_labels", "y_labels", "z_labels"]
    assert not (out / "y_labels.png").is_symlink() and not (out / "z_overlay.png").is_symlink()  # the links replaced
    assert Image.open(out / "y_labels.png").size == sizes["y.jpg"]
    assert (outside / "target.png").read_bytes() == b"not yours"
    assert sorted(p.name for p in outside.iterdir()) == ["target.png"]
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp") and not p.is_symlink()]


@pytest.mark.parametrize(("signum", "status", "word"), [
    pytest.param(signal.SIGTERM, 143, "terminated", marks=pytest.mark.slow),
    pytest.param(signal.SIGINT, 130, "interrupted", marks=pytest.mark.slow)])
def test_signal_during_writes(segmenter, tmp_path, signum, status, word):
    """A signal in the middle of a run: exit 128 + signal, no traceback, no temporary file left,
    every file written is whole."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(60):
        photo(i, 900, 700).save(photos / f"p{i:02d}.png", compress_level=0)
    out = tmp_path / "out"
    env = {**os.environ, **BOUNDED_ENV}
    env.pop("NUMPY_MVIT2_DEBUG", None)
    process = subprocess.Popen([sys.executable, "-m", "numpy_mvit2", "segment", str(photos), "--model", str(segmenter),
                                "-o", str(out), "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 300  # generous: a busy machine, never tuned to an idle one
        while not (out.exists() and any(p.name.endswith("_overlay.png") for p in out.iterdir())):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "no result written in time"
            time.sleep(0.05)
    except BaseException:
        process.kill()
        process.communicate()
        raise
    stderr = signal_and_wait(process, signum)  # the run has started writing: the signal lands among the writes
    assert process.returncode == status, stderr
    assert word in stderr and "Traceback" not in stderr
    names = [p.name for p in out.iterdir()]
    assert not [n for n in names if n.startswith(".") or n.endswith(".tmp")], names
    assert len(names) < 120  # it stopped early
    for path in out.iterdir():
        with Image.open(path) as image:
            image.load()  # whole files only
            assert image.size == (900, 700)


def test_open_image_refuses_before_decoding(tmp_path):
    """In process: the library's own checks, each an ImageLoadError naming the reason."""
    (tmp_path / "icon.png").write_bytes(lying_ico())
    with pytest.raises(ImageLoadError, match="ICO"):
        open_image(tmp_path / "icon.png")
    os.mkfifo(tmp_path / "fifo.jpg")
    with pytest.raises(ImageLoadError, match="FIFO"):
        open_image(tmp_path / "fifo.jpg")  # refused, never waited on
    Image.new("L", (1, 20_000)).save(tmp_path / "strip.png")
    with pytest.raises(ImageLoadError, match=r"1x20000 becomes 288x5,760,000 = 1,658,880,000 pixels"):
        open_image(tmp_path / "strip.png", size={"shortest_edge": 288}, max_prepared_pixels=4_000_000)
    assert open_image(tmp_path / "strip.png", size={"shortest_edge": 288}, max_prepared_pixels=2 * 10**9).size == (1, 20_000)
    (tmp_path / "frame.gif").write_bytes(gif_frame_larger_than_screen())
    with pytest.raises(ImageLoadError, match="20000x1"):
        open_image(tmp_path / "frame.gif", max_pixels=10_000)
    # headers Pillow reads in Python a byte or a chunk at a time: 25 MB of them took 10 CPU seconds
    (tmp_path / "comment.pgm").write_bytes(b"P5\n#" + b"c" * 2**17 + b"\n10 10 255\n" + b"\0" * 100)
    with pytest.raises(ImageLoadError, match="a PNM header longer than 65,536 bytes"):
        open_image(tmp_path / "comment.pgm")
    (tmp_path / "short-comment.pgm").write_bytes(b"P5\n# made by hand\n10 10\n255\n" + b"\0" * 100)
    assert open_image(tmp_path / "short-comment.pgm").size == (10, 10)
    good = png_bytes(4, 4, zlib.compress(b"\x00" * 20))
    empty_chunk = struct.pack(">I", 0) + b"zzZz" + struct.pack(">I", zlib.crc32(b"zzZz"))
    (tmp_path / "chunks.png").write_bytes(good[:33] + empty_chunk * (2**16 + 1) + good[33:])
    with pytest.raises(ImageLoadError, match="more than 65,536 small chunks"):
        open_image(tmp_path / "chunks.png")
    # admitted settings that resize a strip to nothing: the image's own error, before decoding
    Image.new("RGB", (1000, 10)).save(tmp_path / "wide.png")
    with pytest.raises(ImageLoadError, match="1000x10 becomes 1x0 when resized to shortest edge 4096, longest edge 1: an empty image"):
        open_image(tmp_path / "wide.png", size={"shortest_edge": 4096, "longest_edge": 1})
    (tmp_path / "few-chunks.png").write_bytes(good[:33] + empty_chunk * 100 + good[33:])
    assert open_image(tmp_path / "few-chunks.png").size == (4, 4)


def test_hostile_processor_settings(classifier, hostile, tmp_path):
    """preprocessor_config.json from a stranger: nested too deep, or a crop or resize far too
    large for memory; each a one-line error (or the image's refusal), never a traceback."""
    folder, _ = hostile
    cases = {"deep": ('{"size": ' + "[" * 5000 + "]" * 5000 + "}", "nested"),
             # past what any settings may say (MobileViTImageProcessor's own bound)...
             "crop_bound": ('{"crop_size": {"height": 30000, "width": 30000}}', "crop_size must hold positive integers of at most 4096"),
             "resize_bound": ('{"size": {"shortest_edge": 1000000}, "do_center_crop": false}', "at most 4096"),
             # ...and admitted as settings, but over the command's --max-prepared-pixels
             "crop": ('{"crop_size": {"height": 4000, "width": 4000}}', "crop_size 4000x4000"),
             "resize": ('{"size": {"shortest_edge": 4096}, "do_center_crop": false}', "prepared pixels")}
    for name, (settings, words) in cases.items():
        checkpoint = tmp_path / name
        checkpoint.mkdir()
        for file in ("config.json", "model.safetensors"):
            (checkpoint / file).symlink_to(classifier / file)
        (checkpoint / "preprocessor_config.json").write_text(settings)
        result = run_bounded(["-m", "numpy_mvit2", "classify", str(folder / "a_good.jpg"), "--model", str(checkpoint)])
        assert_clean(result)
        assert result.returncode == 1 and words in result.stderr, (name, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_printable_and_to_json():
    from numpy_mvit2.cli import printable, to_json

    name = os.fsdecode(b"caf\xe9\n\x1b[2J.png")  # not UTF-8, a newline, an escape sequence
    assert printable(name) == "caf\\xe9\\n\\x1b[2J.png"
    assert printable("a\tb\rc\x7fd\x85e\u2066f") == "a\\tb\\rc\\x7fd\\x85e\\u2066f"
    assert printable("C:\\photos\\é.jpg") == "C:\\photos\\é.jpg"  # backslashes and printable text kept
    text = to_json({"file": name, "label": "sur\udcffrogate \x9b é \u202e"})
    data = text.encode("utf-8")  # a lone surrogate would make this raise
    record = json.loads(data.decode("utf-8"))
    assert os.fsencode(record["file"]) == b"caf\xe9\n\x1b[2J.png" and "é" in text
    assert "\x9b" not in text and "\u202e" not in text and "\x1b" not in text


def test_fast_resize_matches_the_processor(tmp_path):
    """The CLI resizes the photo itself (saving the processor's array round trip): the same pixels
    as the processor, also for the images it hands back to the processor (a transparent colour)."""
    from numpy_mvit2.inference import model_input
    from numpy_mvit2.processing import load_image

    photo(4, 97, 61).save(tmp_path / "rgb.png")
    rgb_with_transparency = photo(5, 61, 97)
    rgb_with_transparency.info["transparency"] = (0, 0, 0)
    rgb_with_transparency.save(tmp_path / "trns.png", transparency=(0, 0, 0))
    photo(6, 80, 50).convert("P").save(tmp_path / "palette.gif", transparency=3)
    for do_convert_rgb in (None, True, False):
        processor = MobileViTImageProcessor(size={"shortest_edge": 72}, crop_size=64, resample="bicubic",
                                            do_convert_rgb=do_convert_rgb)
        for name in ("rgb.png", "trns.png", "palette.gif"):
            pixels = model_input(load_image(tmp_path / name), processor)
            expected = processor(load_image(tmp_path / name), return_tensors="np")["pixel_values"]
            assert np.array_equal(pixels, expected), (name, do_convert_rgb)


def test_outputs_never_replace_this_runs_inputs(segmenter, tmp_path):
    """The output folder is the photo folder, with --overwrite: x.jpg's x_labels.png would replace
    the photo x_labels.png (an input of the same run, perhaps not read yet). It is refused instead."""
    photos = tmp_path / "photos"
    photos.mkdir()
    photo(0, 40, 30).save(photos / "x.jpg")
    photo(1, 50, 30).save(photos / "x_labels.png")
    original = (photos / "x_labels.png").read_bytes()
    result = run_bounded(["-m", "numpy_mvit2", "segment", str(photos), "--model", str(segmenter), "-o", str(photos),
                          "--json", "--overwrite", "--batch-size", "1"])
    assert_clean(result)
    assert result.returncode == 1
    records = {Path(r["file"]).name: r for r in json.loads(result.stdout)}
    assert "is one of this run's input images; not replaced" in records["x.jpg"]["error"]
    assert records["x_labels.png"]["size"] == [50, 30]
    assert (photos / "x_labels.png").read_bytes() == original


def test_weights_that_give_nan_scores(hostile, tmp_path):
    """A checkpoint whose classifier holds NaN loads (transformers loads it too), but its scores
    are not numbers: each image is refused with that reason, and --json stays valid JSON (which
    has no NaN)."""
    folder, _ = hostile
    config = MobileViTV2Config(width_multiplier=0.5, image_size=64, num_labels=3)
    model = MobileViTV2ForImageClassification(config, seed=3)
    state = model.state_dict()
    state["classifier.bias"] = np.full_like(state["classifier.bias"], np.nan)
    checkpoint = tmp_path / "nan"
    write_checkpoint(checkpoint, model, "MobileViTV2ForImageClassification")
    save_file(state, str(checkpoint / "model.safetensors"))
    result = run_bounded(["-m", "numpy_mvit2", "classify", str(folder / "a_good.jpg"), "--model", str(checkpoint), "--json"])
    assert_clean(result)
    assert result.returncode == 1
    (record,) = json.loads(result.stdout)
    assert "not finite numbers" in record["error"] and "a_good.jpg" in result.stderr
