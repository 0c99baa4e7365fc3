"""Runs over many images: ``--output FILE.jsonl`` streamed and resumed, paths from stdin or a file,
and ``--engine dask`` on a local cluster (loopback), with a worker killed in the middle of a job and
the command itself killed at random moments.

The checkpoints are small generated ones (random weights, not pretrained). Dask's ``distributed``
is imported here, not found optionally: without it this module fails (the test extra installs it).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import distributed  # noqa: F401 - the engine under test; missing, this module must fail, not skip
import numpy as np
import psutil
import pytest
from PIL import Image

from numpy_mvit2 import MobileViTImageProcessor
from numpy_mvit2.generate import generate_checkpoint
from numpy_mvit2.inference import Job, Predictor, input_key, made_from, predict_partition, worker_predictor

ROOT = Path(__file__).resolve().parents[1]
LABELS = {i: f"class {i}" for i in range(7)}
DEADLINE = 600  # seconds: a generous bound on any one command, on a busy machine


def env() -> dict:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1",
                   "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    environment.pop("NUMPY_MVIT2_DEBUG", None)
    return environment


def command(*args) -> list[str]:
    return [sys.executable, "-m", "numpy_mvit2", *map(str, args)]


def run(*args, stdin: bytes | None = None, timeout: float = DEADLINE, cwd=None, **popen) -> subprocess.CompletedProcess:
    result = subprocess.run(command(*args), input=stdin, capture_output=True, check=False, env=env(), timeout=timeout,
                            cwd=cwd, **popen)
    result.stdout, result.stderr = result.stdout.decode(), result.stderr.decode()
    assert "Traceback" not in result.stderr, result.stderr
    return result


def processor(size: int) -> MobileViTImageProcessor:
    return MobileViTImageProcessor(size={"shortest_edge": size + size // 8}, crop_size=size, resample="bilinear")


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return generate_checkpoint(tmp_path_factory.mktemp("classifier"), "classification", width=0.5, seed=1,
                               image_size=64, id2label=LABELS, processor=processor(64), random_norms=True)


@pytest.fixture(scope="module")
def slow_classifier(tmp_path_factory):
    """Slower per image (128x128 crops): a job that lasts long enough to be interrupted."""
    return generate_checkpoint(tmp_path_factory.mktemp("slow"), "classification", width=0.5, seed=3,
                               image_size=128, id2label=LABELS, processor=processor(128))


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    return generate_checkpoint(tmp_path_factory.mktemp("segmenter"), "segmentation", width=0.5, seed=2, image_size=64,
                               output_stride=16, aspp_out_channels=32, processor=processor(64))


def make_folder(folder: Path, count: int, seed: int = 0, broken: bool = True) -> Path:
    """``count`` generated photos of a few shapes and formats, and (``broken``) two that fail."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        height, width = [(60, 80), (80, 60), (70, 70)][i % 3]
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        pixels[: height // 2] //= 2  # some structure, not only noise
        Image.fromarray(pixels).save(folder / f"p{i:04d}.{'png' if i % 2 else 'jpg'}", quality=90)
    if broken:
        (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not a JPEG")
        (folder / "empty.png").write_bytes(b"")
    return folder


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("photos"), 40)


def read_records(path: Path) -> list[dict]:
    data = path.read_bytes()
    assert data.endswith(b"\n"), "a finished run ends with a whole line"
    return [json.loads(line) for line in data.decode("utf-8").splitlines()]


def inputs_of(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.iterdir())


@pytest.fixture(scope="module")
def reference(classifier, photos, tmp_path_factory):
    """The records of one uninterrupted single-process run over ``photos``."""
    out = tmp_path_factory.mktemp("reference") / "records.jsonl"
    result = run("classify", photos, "--model", classifier, "--output", out, "-q", "-k", "3")
    assert result.returncode == 1, result.stderr  # the two broken files
    assert result.stdout == ""
    return read_records(out)


def assert_each_once(records: list[dict], folder: Path) -> None:
    files = [r["file"] for r in records]
    assert len(files) == len(set(files)), [f for f in set(files) if files.count(f) > 1]
    assert sorted(files) == inputs_of(folder)


# --------------------------------------------------------------------------------------------
# One process
# --------------------------------------------------------------------------------------------


def test_output_holds_the_json_records_in_input_order(classifier, photos, reference, tmp_path):
    """--output FILE: the records --json prints, one a line, in input order; errors are records."""
    assert_each_once(reference, photos)
    assert [r["file"] for r in reference] == inputs_of(photos)
    as_json = run("classify", photos, "--model", classifier, "--json", "-q", "-k", "3")
    assert json.loads(as_json.stdout) == reference
    errors = {Path(r["file"]).name: r["error"] for r in reference if "error" in r}
    assert set(errors) == {"broken.jpg", "empty.png"} and "empty file" in errors["empty.png"]
    assert all(len(r["predictions"]) == 3 for r in reference if "error" not in r)
    # JSON lines on stdout, streamed
    lines = run("classify", photos, "--model", classifier, "--output", "-", "-q", "-k", "3")
    assert [json.loads(line) for line in lines.stdout.splitlines()] == reference


def test_an_image_has_the_same_record_whatever_the_batch_and_threads(classifier, photos, reference, tmp_path):
    """Each image runs through the network alone, on one thread: the records do not depend on the
    batch size or on how many threads compute them (bit for bit)."""
    for k, (batch, threads) in enumerate([(1, "1"), (5, "2"), (64, "3")]):
        out = tmp_path / f"{k}.jsonl"
        subprocess.run(command("classify", photos, "--model", classifier, "--output", out, "-q", "-k", "3", "-b", batch),
                       env={**env(), "NUMPY_MVIT2_THREADS": threads}, check=False, capture_output=True, timeout=DEADLINE)
        assert read_records(out) == reference, (batch, threads)


def test_an_existing_output_is_never_replaced(classifier, photos, reference, tmp_path):
    out = tmp_path / "records.jsonl"
    out.write_text("my notes\n")
    result = run("classify", photos, "--model", classifier, "--output", out)
    assert result.returncode == 2 and "exists; give --resume" in result.stderr
    assert out.read_text() == "my notes\n"
    # and a run that fails before its first record leaves no file behind
    missing = tmp_path / "new.jsonl"
    result = run("classify", photos, "--model", tmp_path / "no-such-model", "--output", missing)
    assert result.returncode == 1 and not missing.exists()


@pytest.mark.parametrize("args, words", [
    (["--json", "--output", "x.jsonl"], "--json and --output"),
    (["--resume"], "--resume continues"),
    (["--output", "-", "--resume"], "--resume continues"),
    (["--workers", "2"], "--engine dask too"),
    (["--address", "tcp://127.0.0.1:1"], "--engine dask too"),
    (["--engine", "dask", "--address", "tcp://127.0.0.1:1", "--workers", "2"], "has its own workers"),
    (["--workers", "0", "--engine", "dask"], "positive integer"),
    (["--engine", "ray"], "the engine is dask"),
    (["--engine", "dask", "--workers", "100000"], "at most 4 a usable core"),
])
def test_usage_errors(classifier, photos, tmp_path, args, words):
    result = run("classify", photos, "--model", classifier, *args)
    assert result.returncode == 2 and words in result.stderr, result.stderr


def test_an_output_that_is_not_a_regular_file_is_refused_at_once(classifier, photos, tmp_path):
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)
    result = run("classify", photos, "--model", classifier, "--output", fifo, "--resume", timeout=120)
    assert result.returncode == 2 and "not a regular file" in result.stderr


def test_two_runs_cannot_write_one_output(classifier, photos, tmp_path):
    """The output file is locked: a second run on it is refused while the first writes."""
    import fcntl

    out = tmp_path / "records.jsonl"
    with open(out, "a") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        result = run("classify", photos, "--model", classifier, "--output", out, "--resume")
    assert result.returncode == 2 and "another run is writing it" in result.stderr
    assert out.read_bytes() == b""


def test_paths_from_stdin_and_from_a_file(classifier, photos, reference, tmp_path):
    names = inputs_of(photos)
    out = tmp_path / "stdin.jsonl"
    result = run("classify", "-", "--model", classifier, "--output", out, "-q", "-k", "3",
                 stdin=("\n".join(names) + "\n").encode())
    assert result.returncode == 1 and read_records(out) == reference
    # NUL-separated (find -print0), given as --paths-from with CRLF-free names; a blank line is skipped
    listing = tmp_path / "paths.txt"
    listing.write_bytes(b"\0".join(os.fsencode(n) for n in names) + b"\0")
    out = tmp_path / "list.jsonl"
    assert run("classify", "--paths-from", listing, "--model", classifier, "--output", out, "-q", "-k", "3").returncode == 1
    assert read_records(out) == reference
    # lines with CRLF endings and blank lines, and folders in the list expand as on the command line
    listing.write_bytes(b"\r\n".join(os.fsencode(n) for n in names[:3]) + b"\r\n\r\n" + os.fsencode(str(photos)) + b"\n")
    result = run("classify", "--paths-from", listing, "--model", classifier, "--json", "-q", "-k", "3")
    records = json.loads(result.stdout)
    assert records == reference[:3] + reference
    # an empty list is a usage error, as is no input at all
    empty = run("classify", "-", "--model", classifier, stdin=b"")
    assert empty.returncode == 2 and "empty" in empty.stderr
    assert run("classify", "--model", classifier).returncode == 2
    missing = run("classify", "--paths-from", tmp_path / "nope.txt", "--model", classifier)
    assert missing.returncode == 2 and "nope.txt" in missing.stderr
    device = run("classify", "--paths-from", "/dev/zero", "--model", classifier, timeout=120)  # endless: refused unread
    assert device.returncode == 2 and "not a regular file or a pipe" in device.stderr


def test_a_path_list_from_a_stranger(classifier, tmp_path):
    """Names that cannot exist (too long, undecodable bytes, control characters) are records with
    an error, never a crash."""
    listing = tmp_path / "paths.txt"
    listing.write_bytes(b"x" * 5000 + b"\n" + b"caf\xe9\x1b[2J.jpg\n" + b"/dev/null\n" + b"../" * 2000 + b"\n")
    out = tmp_path / "out.jsonl"
    result = run("classify", "--paths-from", listing, "--model", classifier, "--output", out, "-q")
    assert result.returncode == 1, result.stderr
    records = read_records(out)
    assert len(records) == 4 and all("error" in r for r in records)
    assert os.fsencode(records[1]["file"]) == b"caf\xe9\x1b[2J.jpg"
    assert "\x1b" not in result.stderr


# --------------------------------------------------------------------------------------------
# Resuming
# --------------------------------------------------------------------------------------------


def test_a_torn_last_line_is_cut_off_and_redone(classifier, photos, reference, tmp_path):
    whole = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in reference).encode()
    lines = whole.splitlines(keepends=True)
    out = tmp_path / "records.jsonl"
    for torn in (lines[7][:5], lines[7][:-1], b"\0" * 20, b'{"file": "x"'):  # cut short, or zeros after a power cut
        out.write_bytes(b"".join(lines[:7]) + torn)
        result = run("classify", photos, "--model", classifier, "--output", out, "--resume", "-k", "3")
        assert result.returncode == 1  # as the uninterrupted run: two of the inputs failed (in records before)
        assert "cut off" in result.stderr and "7 inputs have records" in result.stderr
        assert read_records(out) == reference, torn
    # a line that is not a record before the last: not our file; refused, the file left as it was
    broken = b"".join(lines[:3]) + b"garbage\n" + b"".join(lines[3:6])
    out.write_bytes(broken)
    result = run("classify", photos, "--model", classifier, "--output", out, "--resume")
    assert result.returncode == 2 and "line 4: not a JSON record" in result.stderr
    assert out.read_bytes() == broken
    # --resume of a finished run does nothing more
    out.write_bytes(whole)
    result = run("classify", photos, "--model", classifier, "--output", out, "--resume")
    assert result.returncode == 1 and out.read_bytes() == whole


def test_an_input_listed_twice_has_its_two_records_after_resume(classifier, photos, tmp_path):
    """A list may name an input more than once (or a folder and a file in it): each occurrence has
    its record, and a resumed run skips only as many as the output holds."""
    names = inputs_of(photos)[:5]
    listed = [names[0], names[1], names[0], str(photos), names[2], names[0]]
    (tmp_path / "list.txt").write_text("\n".join(listed) + "\n")
    full = tmp_path / "full.jsonl"
    run("classify", "--paths-from", tmp_path / "list.txt", "--model", classifier, "--output", full, "-q", "-k", "3")
    records = read_records(full)
    assert len(records) == 5 + len(inputs_of(photos))
    lines = full.read_bytes().splitlines(keepends=True)
    for keep in (1, 2, 3, 7):
        out = tmp_path / f"part{keep}.jsonl"
        out.write_bytes(b"".join(lines[:keep]))
        run("classify", "--paths-from", tmp_path / "list.txt", "--model", classifier, "--output", out, "--resume",
            "-q", "-k", "3")
        assert read_records(out) == records, keep


def test_a_write_that_fails_is_the_runs_error_and_resume_goes_on(classifier, photos, reference, tmp_path):
    """The output file's writes fail part way (a file-size limit here, a full disk elsewhere): the
    run stops with its own error (status 1), the whole lines before kept; resumed, it ends as the
    uninterrupted run."""
    import resource

    def limited():
        resource.setrlimit(resource.RLIMIT_FSIZE, (3000, 3000))  # (Python ignores SIGXFSZ: EFBIG)

    out = tmp_path / "records.jsonl"
    result = run("classify", photos, "--model", classifier, "--output", out, "-q", "-k", "3", "-b", "2",
                 preexec_fn=limited)
    assert result.returncode == 1 and "cannot write (File too large)" in result.stderr, result.stderr
    assert 0 < out.stat().st_size <= 3000
    run("classify", photos, "--model", classifier, "--output", out, "-q", "-k", "3", "--resume")
    assert read_records(out) == reference


def kill_at_random_moments(args: list, out: Path, rng: random.Random, span: float, attempts: int) -> list[int]:
    """Run ``args`` with --resume, SIGKILL it at a random moment within ``span`` seconds of its
    start, and again, ``attempts`` times, then once more to the end. Returns, for each kill that
    landed in a run, how many records the file had then."""
    landed = []
    for attempt in range(attempts + 1):
        process = subprocess.Popen(command(*args, "--output", out, "--resume", "-q"), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, env=env())
        if attempt < attempts:
            time.sleep(rng.uniform(0.1, span))
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                landed.append(out.read_bytes().count(b"\n") if out.exists() else 0)
        _, stderr = process.communicate(timeout=DEADLINE)
        if process.returncode != -signal.SIGKILL:
            assert process.returncode in (0, 1) and b"Traceback" not in stderr, stderr
            if attempt < attempts:
                break  # done before the kill: the rest would have nothing to do
    return landed


def test_sigkill_at_random_moments_then_resume_gives_each_input_once(slow_classifier, tmp_path):
    photos = make_folder(tmp_path / "photos", 240, seed=4)
    reference = tmp_path / "reference.jsonl"
    started = time.monotonic()
    run("classify", photos, "--model", slow_classifier, "--output", reference, "-q")
    span = time.monotonic() - started  # a whole run, start-up included, on this machine now
    out = tmp_path / "records.jsonl"
    landed = kill_at_random_moments(["classify", photos, "--model", slow_classifier, "-b", "4"], out,
                                    random.Random(18), span / 3, attempts=6)
    assert len(landed) >= 3 and any(0 < n < 242 for n in landed), landed
    records = read_records(out)
    assert_each_once(records, photos)
    assert records == read_records(reference)  # in input order, each the uninterrupted run's record


# --------------------------------------------------------------------------------------------
# segment
# --------------------------------------------------------------------------------------------


def test_segment_output_resume_and_engine(segmenter, tmp_path):
    """segment writes the same records to --output as to --json; resumed, it replaces the PNGs the
    interrupted run wrote for an input (they carry its mark) and never anyone else's; on the
    cluster the PNGs and records are byte for byte those of one process."""
    photos = make_folder(tmp_path / "photos", 9, seed=5)
    one = tmp_path / "one"
    result = run("segment", photos, "--model", segmenter, "-o", one, "--json", "-q")
    assert result.returncode == 1
    expected = json.loads(result.stdout)
    out = tmp_path / "one.jsonl"
    result = run("segment", photos, "--model", segmenter, "-o", tmp_path / "two", "--output", out, "-q")
    records = read_records(out)
    assert [{k: v for k, v in r.items() if k not in ("labels", "overlay")} for r in records] == \
        [{k: v for k, v in r.items() if k not in ("labels", "overlay")} for r in expected]
    first = next(r for r in records if "error" not in r)
    assert made_from(first["labels"]) == input_key(first["file"]) and made_from(first["overlay"]) == input_key(first["file"])
    # the run was killed after writing the PNGs of the last 3 inputs and before their records
    lines = out.read_bytes().splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:-3]))
    foreign = Path(json.loads(lines[-1])["labels"])
    foreign.write_bytes(b"someone else's file")
    result = run("segment", photos, "--model", segmenter, "-o", tmp_path / "two", "--output", out, "--resume", "-q")
    resumed = read_records(out)
    assert resumed[:-1] == records[:-1]
    assert "exists; not replaced" in resumed[-1]["error"] and foreign.read_bytes() == b"someone else's file"
    # the engine: the same records and PNG bytes
    out = tmp_path / "engine.jsonl"
    result = run("segment", photos, "--model", segmenter, "-o", tmp_path / "three", "--output", out, "-q",
                 "--engine", "dask", "--workers", "2", "-b", "2")
    engine = read_records(out)
    assert [r["file"] for r in engine] == [r["file"] for r in expected]
    for mine, theirs in zip(engine, expected):
        if "error" in mine:
            assert mine == theirs
            continue
        assert {k: v for k, v in mine.items() if k not in ("labels", "overlay")} == \
            {k: v for k, v in theirs.items() if k not in ("labels", "overlay")}
        for key in ("labels", "overlay"):
            assert Path(mine[key]).read_bytes() == Path(theirs[key]).read_bytes()
    # relative names: the PNGs carry the name as given, on the cluster as in one process
    for where, engine_args in (("local", []), ("cluster", ["--engine", "dask", "--workers", "1"])):
        result = run("segment", photos.name, "--model", segmenter, "-o", tmp_path / f"rel-{where}", "--json", "-q",
                     *engine_args, cwd=photos.parent)
        assert result.returncode == 1, result.stderr
        for record in json.loads(result.stdout):
            if "error" not in record:
                assert not Path(record["file"]).is_absolute()
                assert made_from(record["labels"]) == input_key(record["file"]), (where, record["file"])
    assert [p.read_bytes() for p in sorted((tmp_path / "rel-local").iterdir())] == \
        [p.read_bytes() for p in sorted((tmp_path / "rel-cluster").iterdir())]


# --------------------------------------------------------------------------------------------
# The building block
# --------------------------------------------------------------------------------------------


def test_predictor_takes_paths_bytes_and_columns(classifier, photos, reference):
    names = inputs_of(photos)
    predictor = Predictor(str(classifier), "classify", top_k=3, threads=2)
    try:
        assert predictor.predict(names) == reference
        data = [Path(n).read_bytes() for n in names]
        assert predictor.predict(names, data=data) == reference  # bytes read elsewhere, named by the paths
        columns = predictor({"file": np.array(names[:4]), "bytes": data[:4]})
        assert list(columns["file"]) == names[:4] and columns["record"] == reference[:4]
    finally:
        predictor.close()
    job = Job(str(classifier), "classify", top_k=3, threads=1)
    assert predict_partition(names[:3] + [(names[3], data[3])], job) == reference[:4]
    assert worker_predictor(job) is worker_predictor(job)  # the checkpoint is loaded once per process


def test_predictor_threads_follow_the_fast_paths_setting(classifier, monkeypatch):
    from numpy_mvit2.inference import usable_cpus

    monkeypatch.delenv("NUMPY_MVIT2_THREADS", raising=False)
    assert Predictor(str(classifier)).threads == max(2, usable_cpus())
    monkeypatch.setenv("NUMPY_MVIT2_THREADS", "3")
    assert Predictor(str(classifier)).threads == 3
    assert Predictor(str(classifier), threads=1).threads == 1


def test_predict_partition_in_a_dask_bag(classifier, photos, reference):
    """The README's pipeline: a Dask bag of paths, ``map_partitions(predict_partition, job)``."""
    import dask.bag as db

    job = Job(str(classifier), "classify", top_k=3, threads=1)
    bag = db.from_sequence(inputs_of(photos), partition_size=7).map_partitions(predict_partition, job)
    assert bag.compute(scheduler="sync") == reference


def test_predictor_refuses_the_wrong_head(segmenter):
    from numpy_mvit2.inference import ModelError

    with pytest.raises(ModelError, match="segmentation checkpoint"):
        Predictor(str(segmenter), "classify")


# --------------------------------------------------------------------------------------------
# The cluster
# --------------------------------------------------------------------------------------------


def test_engine_records_equal_the_single_process_run(classifier, photos, reference, tmp_path):
    for workers, batch in (("1", "8"), ("2", "3")):
        out = tmp_path / f"engine{workers}.jsonl"
        result = run("classify", photos, "--model", classifier, "--output", out, "-k", "3",
                     "--engine", "dask", "--workers", workers, "-b", batch)
        assert result.returncode == 1, result.stderr
        assert f"dask: {workers} worker{'s' * (workers != '1')} on this machine" in result.stderr
        assert all(line.startswith("numpy-mvit2: ") for line in result.stderr.splitlines()), result.stderr  # no Dask noise
        assert read_records(out) == reference
    # --send-bytes: the files read by the driver, their bytes sent
    out = tmp_path / "bytes.jsonl"
    run("classify", photos, "--model", classifier, "--output", out, "-k", "3", "--engine", "dask", "--workers", "2",
        "--send-bytes", "-q")
    assert read_records(out) == reference


def test_an_unreachable_scheduler_is_one_error(classifier, photos, tmp_path):
    out = tmp_path / "records.jsonl"
    for address in ("tcp://127.0.0.1:9", "tls://127.0.0.1:9", "ucx://127.0.0.1:9", "nonsense"):
        result = run("classify", photos, "--model", classifier, "--engine", "dask", "--address", address,
                     "--output", out, timeout=120)
        assert result.returncode == 1, result.stderr
        assert f"error: cannot reach the Dask scheduler at {address}" in result.stderr, result.stderr
        assert not out.exists()  # a run that fails first leaves no file


def start_remote_cluster(folder: Path, workers: int = 1) -> list[subprocess.Popen]:
    """``dask scheduler`` on loopback and ``dask worker`` processes working in ``/`` (another folder
    than the command's), started as the README says; their own sessions, so they can be killed."""
    dask = [sys.executable, "-c", "import sys; from distributed.cli.dask_{0} import main; sys.argv[0] = 'dask'; main()"]
    scheduler_file = folder / "scheduler.json"
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    started = [subprocess.Popen([dask[0], dask[1], dask[2].format("scheduler"), "--host", "127.0.0.1", "--port", "0",
                                 "--no-dashboard", "--scheduler-file", str(scheduler_file)], env=env(), **quiet)]
    deadline = time.monotonic() + DEADLINE
    while not scheduler_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    remote_env = {**env(), "DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON": '{"MALLOC_TRIM_THRESHOLD_": None}'}
    started += [subprocess.Popen([dask[0], dask[1], dask[2].format("worker"), "--scheduler-file", str(scheduler_file),
                                  "--nthreads", "1", "--nworkers", str(workers), "--no-dashboard"],
                                 cwd="/", env=remote_env, **quiet)]
    return started


def test_a_cluster_at_an_address_relative_names_and_a_lost_scheduler(classifier, slow_classifier, photos, reference,
                                                                       tmp_path):
    """--address: a scheduler and a worker started apart, the worker in another folder. Relative
    names are the records' names, as without the engine; the scheduler SIGKILLed mid-job ends the
    run with its own error (status 1) and no error records, and --resume goes on from the records
    so far."""
    import distributed as dd

    cluster = start_remote_cluster(tmp_path)
    try:
        address = json.loads((tmp_path / "scheduler.json").read_text())["address"]
        with dd.Client(address, timeout="60s") as client:
            client.wait_for_workers(1, timeout=DEADLINE)
        out = tmp_path / "relative.jsonl"
        result = run("classify", photos.name, "--model", classifier, "--output", out, "-k", "3", "--engine", "dask",
                     "--address", address, cwd=photos.parent)
        assert result.returncode == 1 and f"dask: 1 worker thread at {address}" in result.stderr, result.stderr
        expected = [{**r, "file": os.path.relpath(r["file"], photos.parent)} for r in reference]
        assert read_records(out) == expected
        # the scheduler lost in the middle of a job
        many = make_folder(tmp_path / "many", 80, seed=9, broken=False)
        out = tmp_path / "lost.jsonl"
        process = subprocess.Popen(command("classify", many, "--model", slow_classifier, "--output", out, "-b", "2",
                                           "--engine", "dask", "--address", address),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env())
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline and process.poll() is None:
            if out.exists() and out.read_bytes().count(b"\n") >= 4:
                break
            time.sleep(0.05)
        os.killpg(cluster[0].pid, signal.SIGKILL)
        _, stderr = process.communicate(timeout=DEADLINE)
        assert process.returncode == 1, stderr
        assert all(line.startswith(b"numpy-mvit2: ") for line in stderr.splitlines()), stderr
        assert b"error: the Dask cluster failed" in stderr and b"--resume goes on from the records" in stderr, stderr
        records = read_records(out)
        assert 4 <= len(records) < 80 and not any("error" in r for r in records)
        run("classify", many, "--model", slow_classifier, "--output", out, "-q", "--resume")
        assert_each_once(read_records(out), many)
    finally:
        for process in cluster:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(timeout=60)


def test_ctrl_c_ends_an_engine_run_quietly(slow_classifier, tmp_path):
    """Ctrl-C at a terminal reaches the command and the local cluster's workers (one process
    group): the command says 'interrupted' (status 130), the workers print nothing; resumed, the run
    ends with each input once."""
    photos = make_folder(tmp_path / "photos", 60, seed=8, broken=False)
    out = tmp_path / "records.jsonl"
    process = subprocess.Popen(command("classify", photos, "--model", slow_classifier, "--output", out, "-b", "2",
                                       "--engine", "dask", "--workers", "2"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env(), start_new_session=True)
    try:
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline and process.poll() is None:
            if out.exists() and out.read_bytes().count(b"\n") >= 2:
                break
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=DEADLINE)  # to the end of stderr: the workers' too
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, stderr
    assert stderr.splitlines()[-1] == b"numpy-mvit2: interrupted", stderr
    assert all(line.startswith(b"numpy-mvit2: ") for line in stderr.splitlines()), stderr
    run("classify", photos, "--model", slow_classifier, "--output", out, "-q", "--resume")
    assert_each_once(read_records(out), photos)


def test_the_local_clusters_workers_environment():
    """Each worker on one BLAS thread, and glibc's malloc left to its default: Dask's
    MALLOC_TRIM_THRESHOLD_ (which costs a third more CPU per image here) not set; Ctrl-C ignored
    and Dask's loggers quiet."""
    from numpy_mvit2.streaming import local_cluster

    import logging

    names = ("MALLOC_TRIM_THRESHOLD_", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")

    def look():  # in the worker: and its preload hook ran (Ctrl-C ignored, Dask's logs quiet)
        return ([os.environ.get(name) for name in names], signal.getsignal(signal.SIGINT) == signal.SIG_IGN,
                logging.getLogger("distributed.worker").getEffectiveLevel())

    with local_cluster(2) as cluster, distributed.Client(cluster) as client:
        seen = client.run(look)
    assert len(seen) == 2 and all(values == ([None, "1", "1"], True, logging.CRITICAL) for values in seen.values()), seen


def cluster_workers(driver: psutil.Process) -> list[psutil.Process]:
    """The local cluster's worker processes: the driver's children that multiprocessing spawned."""
    found = []
    for child in driver.children(recursive=True):
        try:
            if any("spawn_main" in part for part in child.cmdline()):
                found.append(child)
        except psutil.Error:
            pass
    return found


def test_a_worker_killed_mid_job_is_retried(slow_classifier, tmp_path):
    """SIGKILL one of the local cluster's workers while the job runs: the scheduler reruns its
    partitions on the other (and the worker the nanny restarts); every input has one record, the
    single process's."""
    photos = make_folder(tmp_path / "photos", 160, seed=6)
    reference = tmp_path / "reference.jsonl"
    run("classify", photos, "--model", slow_classifier, "--output", reference, "-q")
    out = tmp_path / "records.jsonl"
    process = subprocess.Popen(command("classify", photos, "--model", slow_classifier, "--output", out, "-q",
                                       "--engine", "dask", "--workers", "2", "-b", "4"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env())
    try:
        driver = psutil.Process(process.pid)
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline and process.poll() is None:  # until the job is under way
            if out.exists() and out.read_bytes().count(b"\n") >= 12:
                break
            time.sleep(0.05)
        victims = cluster_workers(driver)
        assert len(victims) == 2 and process.poll() is None
        written = out.read_bytes().count(b"\n")
        victims[0].send_signal(signal.SIGKILL)
        _, stderr = process.communicate(timeout=DEADLINE)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 1 and b"Traceback" not in stderr, stderr  # 1: the two broken files
    assert all(line.startswith(b"numpy-mvit2: ") for line in stderr.splitlines()), stderr
    records = read_records(out)
    assert written < len(records)  # the kill landed mid-job
    assert_each_once(records, photos)
    assert records == read_records(reference)


def test_engine_run_killed_and_resumed(slow_classifier, tmp_path):
    """The driver of a cluster run SIGKILLed at random moments and resumed: each input once."""
    photos = make_folder(tmp_path / "photos", 120, seed=7, broken=False)
    reference = tmp_path / "reference.jsonl"
    started = time.monotonic()
    run("classify", photos, "--model", slow_classifier, "--output", reference, "-q", "-b", "4",
        "--engine", "dask", "--workers", "2")
    span = time.monotonic() - started
    out = tmp_path / "records.jsonl"
    landed = kill_at_random_moments(["classify", photos, "--model", slow_classifier, "-b", "4", "--engine", "dask",
                                     "--workers", "2"], out, random.Random(7), span / 2, attempts=3)
    assert landed, "no kill landed in a run"
    assert read_records(out) == read_records(reference)


def test_progress_bar_shows_images_per_second_and_time_left(classifier, photos, tmp_path):
    """On a terminal, the bar on stderr has the rate and the time left (tqdm's)."""
    import fcntl
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 24 rows, 100 columns
    process = subprocess.Popen(command("classify", photos, "--model", classifier, "--output", tmp_path / "r.jsonl"),
                               stdout=subprocess.DEVNULL, stderr=follower, env=env())
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the child closed its end
            break
        if not chunk:
            break
        seen += chunk
    process.wait(timeout=DEADLINE)
    os.close(leader)
    text = seen.decode(errors="replace")
    assert "img/s" in text and "<" in text, text  # "[00:01<00:02, 12.3img/s]": elapsed<left, rate
