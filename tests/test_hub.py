"""Repo ids: the Hugging Face cache (offline) and the Hub (a loopback server standing in for it).

Each load runs in a child process where torch, transformers and timm cannot be imported, with
``HF_HUB_CACHE`` pointing at a temporary cache and ``HF_ENDPOINT`` at ``FakeHub``; the parent
compares the child's logits with transformers'.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import require
from fake_hub import BlackHole, FakeHub, closed_port_endpoint, write_cache_repo
from reference import make_reference, relative_error, run_reference

torch = require("torch")
require("transformers")

from numpy_mvit2 import MobileViTV2Config  # noqa: E402
from numpy_mvit2.hub import looks_like_repo_id  # noqa: E402
from import_blocker import BLOCKER  # noqa: E402

REPO = "apple/mobilevitv2-test-imagenet1k-256"

CHILD = BLOCKER + textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from numpy_mvit2 import CheckpointError, MobileViTV2ForImageClassification, MobileViTV2Config

    import os
    import huggingface_hub.constants

    def settings():  # what a library call must leave as it found it
        return dict(os.environ), {k: v for k, v in vars(huggingface_hub.constants).items() if k.isupper()}

    args = json.loads(sys.argv[1])
    before = settings()
    try:
        model = MobileViTV2ForImageClassification.from_pretrained(args["repo"], revision=args.get("revision"))
        config = MobileViTV2Config.from_pretrained(args["repo"], revision=args.get("revision"))
    except CheckpointError as e:
        print(json.dumps({"error": str(e), "type": type(e).__name__, "is_oserror": isinstance(e, OSError),
                          "settings_kept": settings() == before}))
        raise SystemExit(0)
    assert settings() == before
    np.save(args["out"], model(np.load(args["pixels"])).logits)
    print(json.dumps({"weights": model.weights_file.name, "num_labels": config.num_labels}))
    """
)


@pytest.fixture(scope="module")
def reference():
    config = MobileViTV2Config(width_multiplier=0.5, num_labels=5)
    return make_reference(config, "classification", seed=31)


def checkpoint_files(ref, weights: str) -> dict[str, bytes]:
    """config.json plus one weights file, with the bytes transformers writes."""
    files = {"config.json": ref.config.to_json_string().encode()}
    if weights == "pytorch_model.bin":
        buffer = io.BytesIO()
        torch.save(ref.state_dict(), buffer)
        files[weights] = buffer.getvalue()
    else:
        from safetensors.torch import save

        files[weights] = save({k: v.contiguous() for k, v in ref.state_dict().items()})
    return files


def run_child(tmp_path, repo, *, cache, endpoint=None, offline=False, revision=None, etag_timeout="60"):
    """Load ``repo`` in a child process; ``etag_timeout`` (HF_HUB_ETAG_TIMEOUT, also the deadline of
    the Hub probe) is long by default, for a loaded machine talking to FakeHub; None leaves it unset."""
    x = np.random.default_rng(0).standard_normal((2, 3, 96, 128)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_HUB_CACHE=str(cache), HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_TELEMETRY="1",
               HF_HUB_DOWNLOAD_TIMEOUT="60", PYTHONPATH=os.pathsep.join(sys.path))
    if etag_timeout is not None:
        env["HF_HUB_ETAG_TIMEOUT"] = etag_timeout
    if endpoint:
        env["HF_ENDPOINT"] = endpoint
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    args = {"repo": repo, "revision": revision, "pixels": str(tmp_path / "x.npy"), "out": str(tmp_path / "logits.npy")}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], capture_output=True, text=True, env=env, timeout=300)
    seconds = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if "error" not in result:
        result["logits"] = np.load(tmp_path / "logits.npy")
    result["x"] = x
    result["seconds"] = seconds
    return result


@pytest.mark.parametrize("weights", [pytest.param("pytorch_model.bin"), pytest.param("model.safetensors", marks=pytest.mark.slow)])
def test_repo_id_offline_from_the_cache(tmp_path, reference, weights):
    """The cache holds what an apple repo holds on main (config.json + pytorch_model.bin), as
    huggingface_hub lays it out; HF_HUB_OFFLINE=1; torch cannot be imported."""
    cache = tmp_path / "cache"
    write_cache_repo(cache, REPO, checkpoint_files(reference, weights))
    result = run_child(tmp_path, REPO, cache=cache, offline=True)
    assert result.get("weights") == weights, result
    assert result["num_labels"] == 5
    assert relative_error(result["logits"], run_reference(reference, result["x"]).logits) < 2e-5


def test_repo_id_offline_with_nothing_cached(tmp_path):
    result = run_child(tmp_path, REPO, cache=tmp_path / "empty-cache", offline=True)
    message = result["error"]
    assert REPO in message and "not in the Hugging Face cache" in message and "HF_HUB_OFFLINE" in message
    assert "pass that folder" in message and "from_pretrained('/path/to/folder')" in message
    assert result["is_oserror"]


@pytest.mark.slow
def test_repo_id_online_through_a_fake_hub_then_offline(tmp_path, reference):
    """main holds config.json + pytorch_model.bin (like the apple repos), refs/pr/1 adds
    model.safetensors. Online, the files are looked for in transformers' order and downloaded into
    the cache; afterwards the same loads work offline with the server gone."""
    main = checkpoint_files(reference, "pytorch_model.bin")
    pr = {**main, **checkpoint_files(reference, "model.safetensors")}
    cache = tmp_path / "cache"
    expected = None
    with FakeHub({REPO: {"main": main, "refs/pr/1": pr}}) as hub:
        result = run_child(tmp_path, REPO, cache=cache, endpoint=hub.endpoint)
        assert result.get("weights") == "pytorch_model.bin", result
        expected = run_reference(reference, result["x"]).logits
        assert relative_error(result["logits"], expected) < 2e-5
        asked = [(method, name, status) for method, repo, rev, name, status in hub.log if rev == "main"]
        assert ("HEAD", "model.safetensors", 404) in asked and ("HEAD", "model.safetensors.index.json", 404) in asked
        assert ("GET", "pytorch_model.bin", 200) in asked
        order = [name for _, name, _ in asked]
        assert order.index("model.safetensors") < order.index("model.safetensors.index.json") < order.index("pytorch_model.bin")

        result = run_child(tmp_path, REPO, cache=cache, endpoint=hub.endpoint, revision="refs/pr/1")
        assert result.get("weights") == "model.safetensors", result
        assert relative_error(result["logits"], expected) < 2e-5

        missing = run_child(tmp_path, "apple/no-such-model", cache=cache, endpoint=hub.endpoint)
        assert "apple/no-such-model: no such repository" in missing["error"]
        bad_revision = run_child(tmp_path, REPO, cache=cache, endpoint=hub.endpoint, revision="v9")
        assert "has no revision 'v9'" in bad_revision["error"]

    for revision, weights in ((None, "pytorch_model.bin"), ("refs/pr/1", "model.safetensors")):
        result = run_child(tmp_path, REPO, cache=cache, offline=True, revision=revision)
        assert result.get("weights") == weights, result
        assert relative_error(result["logits"], expected) < 2e-5


@pytest.mark.slow
def test_repo_without_weights(tmp_path, reference):
    files = {"config.json": checkpoint_files(reference, "model.safetensors")["config.json"], "README.md": b"hi"}
    with FakeHub({REPO: {"main": files}}) as hub:
        result = run_child(tmp_path, REPO, cache=tmp_path / "cache", endpoint=hub.endpoint)
    assert "no weights on the Hub" in result["error"] and "pytorch_model.bin" in result["error"]


def test_what_counts_as_a_repo_id(tmp_path):
    assert looks_like_repo_id("apple/mobilevitv2-1.0-imagenet1k-256")
    assert looks_like_repo_id("timm/mobilevitv2_100.cvnets_in1k")
    for not_an_id in ("/abs/path", "a/b/c", "../x", "ckpt/model.safetensors", "x/config.json", ""):
        assert not looks_like_repo_id(not_an_id), not_an_id


def test_local_paths_win_over_repo_ids(tmp_path, reference, monkeypatch):
    """A folder named like a repo id is read as a folder; nothing is asked of the Hub."""
    from numpy_mvit2 import MobileViTV2ForImageClassification

    folder = tmp_path / "apple" / "mobilevitv2-local"
    folder.mkdir(parents=True)
    for name, data in checkpoint_files(reference, "model.safetensors").items():
        (folder / name).write_bytes(data)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = MobileViTV2ForImageClassification.from_pretrained("apple/mobilevitv2-local")
    assert model.weights_file == Path("apple/mobilevitv2-local/model.safetensors")


# --------------------------------------------------------------------------------------------
# A Hub that cannot be reached (no HF_HUB_OFFLINE): one short attempt, then the cache
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["connection refused", "black hole"])
def test_unreachable_hub_answers_within_seconds(tmp_path, kind):
    """huggingface_hub alone retries for about 24 s (a black hole: longer). The issue's bar, an
    answer within 5 s with HF_HUB_ETAG_TIMEOUT unset, is pinned by counting the attempts (one, given
    up after the probe's 2 s); the message says why, and that there is no local folder either."""
    if kind == "black hole":
        with BlackHole() as hole:
            result = run_child(tmp_path, REPO, cache=tmp_path / "empty-cache", endpoint=hole.endpoint, etag_timeout=None)
        # the bar pinned without a clock (a busy machine stretches any time): one attempt, given up
        # after the probe's 2 s deadline (checked below), no retries
        assert hole.connections == 1, (hole.connections, result["error"])
    else:
        result = run_child(tmp_path, REPO, cache=tmp_path / "empty-cache", endpoint=closed_port_endpoint(),
                           etag_timeout=None)
    message = result["error"]
    first, *details = message.splitlines()
    assert first == f"{REPO}: the Hub cannot be reached", message
    assert all(line.startswith("  ") for line in details), message
    assert "127.0.0.1" in details[0] and ("did not answer within 2 s" if kind == "black hole" else "ConnectError") in details[0]
    assert "not in the Hugging Face cache" in message and f"there is no local folder or file named {REPO} either" in message
    assert "from_pretrained('/path/to/folder')" in message and result["is_oserror"]
    assert result["settings_kept"]  # no environment variable or huggingface_hub setting changed


@pytest.mark.parametrize("kind", ["connection refused", pytest.param("black hole", marks=pytest.mark.slow)])
def test_unreachable_hub_reads_the_cache(tmp_path, reference, kind):
    """A cached repo loads when the Hub cannot be reached, without HF_HUB_OFFLINE."""
    cache = tmp_path / "cache"
    write_cache_repo(cache, REPO, checkpoint_files(reference, "pytorch_model.bin"))
    if kind == "black hole":
        with BlackHole() as hole:
            result = run_child(tmp_path, REPO, cache=cache, endpoint=hole.endpoint, etag_timeout=None)
    else:
        result = run_child(tmp_path, REPO, cache=cache, endpoint=closed_port_endpoint(), etag_timeout=None)
    assert result.get("weights") == "pytorch_model.bin", result
    assert relative_error(result["logits"], run_reference(reference, result["x"]).logits) < 2e-5


def test_names_that_are_not_repo_ids_never_reach_the_hub(tmp_path, monkeypatch):
    """Paths (a weights file, a/b/c, ./x) and names the Hub would refuse (a--b) are missing local
    files: refused without a request, each message saying there is no such folder or file."""
    from numpy_mvit2 import CheckpointError, MobileViTV2ForImageClassification

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mvit2-1.0-generated").mkdir()
    with FakeHub({}) as hub:
        code = textwrap.dedent(
            """
            import json, sys
            from numpy_mvit2 import CheckpointError, MobileViTV2ForImageClassification
            out = {}
            for name in json.loads(sys.argv[1]):
                try:
                    MobileViTV2ForImageClassification.from_pretrained(name)
                except CheckpointError as e:
                    out[name] = str(e)
            print(json.dumps(out))
            """)
        names = ["gen/model.safetensors", "a/b/c", "./x", "owner/a--b", "x/config.json", "mvit2-1.0-generatd/"]
        env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HUB_CACHE": str(tmp_path / "cache"),
               "PYTHONPATH": os.pathsep.join(sys.path)}
        env.pop("HF_HUB_OFFLINE", None)
        proc = subprocess.run([sys.executable, "-c", code, json.dumps(names)], capture_output=True, text=True,
                              env=env, timeout=300, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert hub.log == []  # nothing was asked of the Hub
    messages = json.loads(proc.stdout)
    for name in names:
        assert messages[name].startswith(f"{name}: no such folder or file"), messages[name]
    assert "did you mean mvit2-1.0-generated?" in messages["mvit2-1.0-generatd/"]
    with pytest.raises(CheckpointError, match="an empty name"):
        MobileViTV2ForImageClassification.from_pretrained("")
