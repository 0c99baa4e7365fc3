"""A local folder or a Hugging Face repo id -> local files.

``from_pretrained("apple/mobilevitv2-1.0-imagenet1k-256")`` resolves each file it needs through
``huggingface_hub``: files already in the Hugging Face cache (``HF_HOME`` / ``HF_HUB_CACHE``) are used
as they are; missing ones are downloaded, unless ``HF_HUB_OFFLINE=1`` (or ``TRANSFORMERS_OFFLINE=1``)
is set, in which case only the cache is read. ``revision=`` picks a branch, tag, commit or pull
request (``"refs/pr/3"``). A folder is used as it is; nothing is copied.

The Hub out of reach. huggingface_hub, asked for a file it does not hold, retries an unreachable
Hub with back-off for about 24 seconds (longer for an endpoint that takes connections and never
answers) before it says so. So before the first request of a load the Hub is asked once, with a
short deadline (``PROBE_TIMEOUT``, 2 s, or ``HF_HUB_ETAG_TIMEOUT`` when that is set): when no
answer comes, the load reads the cache alone, as with ``HF_HUB_OFFLINE``, and a repository that is
not cached is refused at once, saying why. An unreachable verdict is remembered for
``UNREACHABLE_MEMORY`` seconds, so that the files of one load (config, weights, processor settings)
wait once; nothing process-wide (``os.environ``, huggingface_hub's settings) is changed.

Names. A name that exists on disk is a folder or a file, whatever it looks like. Anything else is a
repo id only if it is spelt as one (``owner/name`` or a bare ``name``) and does not look like a
path (``./x``, ``a/b/c``, ``x.safetensors``, ``x/config.json``): those are refused as missing files
without asking the Hub. Every "not found" message says that there is no local folder of that name
either, and names a close match in the folder where one was meant.

Failures raise ``CheckpointError`` naming the repo id, the file, what failed, and how to pass a
local folder instead. Messages are a short first line and indented lines of detail and advice.
"""

from __future__ import annotations

import difflib
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointError, CheckpointNotFoundError
from .layout import WEIGHT_FILES, find_weights, shard_names

# owner/name, as the Hub spells repo ids (a bare name is accepted too: canonical models have none)
_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]*/)?[A-Za-z0-9][A-Za-z0-9._-]*$")
_TRUE = {"1", "on", "yes", "true"}


def is_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` is set to a true value, read at call time."""
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def looks_like_repo_id(name: str) -> bool:
    return bool(_REPO_ID.match(name)) and ".." not in name and not name.endswith((".json", ".bin", ".safetensors", ".pt", ".pth"))


def message(first: str, *details: str) -> str:
    """A message for a person: a short first line saying what failed, then indented lines (why,
    what to do), so that none is hundreds of characters long."""
    return "\n".join([first, *(f"  {line}" for line in details if line)])


def _local_folder_hint(repo_id: str) -> tuple[str, ...]:
    return ("to use a local copy instead, download the repository's files on a machine with internet:",
            f"  hf download {repo_id} --local-dir /path/to/folder",
            "and pass that folder: from_pretrained('/path/to/folder'), or --model /path/to/folder on the command line")


# How many entries of a folder are compared with a missing name (a huge folder is not read whole).
_MAX_COMPARED = 10_000


def no_local_copy(name: str, either: str = "") -> str:
    """"there is no local folder or file named NAME", and the closest name in that folder if one
    is close (a misspelt folder is the usual reason)."""
    path = Path(name)
    parent = path.parent
    close = []
    try:
        if path.name and parent.is_dir():
            with os.scandir(parent) as entries:
                names = [entry.name for _, entry in zip(range(_MAX_COMPARED), entries) if not entry.name.startswith(".")]
            close = difflib.get_close_matches(path.name, names, n=1, cutoff=0.8)
    except OSError:
        pass
    text = f"there is no local folder or file named {name}{either}"
    return text + (f"; did you mean {parent / close[0] if str(parent) != '.' else close[0]}?" if close else "")


def _not_a_repo_id(name: str) -> CheckpointNotFoundError:
    return CheckpointNotFoundError(message(f"{name}: no such folder or file", no_local_copy(name),
                                           "and it is not spelt as a Hugging Face repo id (owner/name), so the Hub "
                                           "was not asked"))


# The first request to the Hub in a load gets this long to be answered (seconds) before the Hub is
# taken as out of reach; HF_HUB_ETAG_TIMEOUT, when set, is used instead (a slow link).
PROBE_TIMEOUT = 2.0
# How long an unreachable verdict stands (seconds): the files of one load are not each kept waiting.
UNREACHABLE_MEMORY = 10.0
_unreachable: dict[str, tuple[float, str]] = {}  # endpoint -> (when, why)


def _probe_timeout() -> float:
    try:
        value = float(os.environ.get("HF_HUB_ETAG_TIMEOUT", ""))
    except ValueError:
        return PROBE_TIMEOUT
    return value if 0 < value < float("inf") else PROBE_TIMEOUT


def hub_unreachable(repo_id: str, revision: str | None = None) -> str | None:
    """None when the Hub answers a request for the repo's config.json (any HTTP answer, an error
    status included: the Hub is there); else why not. One request through huggingface_hub's own
    session (its proxies and headers), in a thread waited on for ``PROBE_TIMEOUT`` (or
    HF_HUB_ETAG_TIMEOUT) in all: that bounds what the request's own timeouts do not (making the
    session, the name lookup), and the thread, a daemon, is left to finish on its own."""
    import huggingface_hub
    from huggingface_hub import constants

    endpoint = constants.ENDPOINT
    known = _unreachable.get(endpoint)
    if known is not None and time.monotonic() - known[0] < UNREACHABLE_MEMORY:
        return known[1]
    timeout = _probe_timeout()
    outcome: dict = {}

    def probe() -> None:
        try:
            from huggingface_hub.utils import get_session

            url = huggingface_hub.hf_hub_url(repo_id, "config.json", revision=revision)
            get_session().head(url, timeout=timeout)
            outcome["answered"] = True
        except Exception as e:  # noqa: BLE001 - whatever stops an answer (refused, timed out, no route, bad URL)
            outcome["error"] = e

    thread = threading.Thread(target=probe, name="numpy_mvit2 Hub probe", daemon=True)  # daemon: never holds up exit
    thread.start()
    thread.join(timeout)
    if outcome.get("answered"):
        _unreachable.pop(endpoint, None)
        return None
    error = outcome.get("error")
    if error is None or isinstance(error, TimeoutError) or "Timeout" in type(error).__name__:
        reason = f"{endpoint} did not answer within {timeout:g} s (set HF_HUB_ETAG_TIMEOUT to a whole number of seconds to wait longer)"
    else:
        reason = f"{endpoint} cannot be reached ({type(error).__name__}: {error})" if str(error) else \
            f"{endpoint} cannot be reached ({type(error).__name__})"
    _unreachable[endpoint] = (time.monotonic(), reason)
    return reason


def _cache_root(cache_dir) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    from huggingface_hub import constants

    return Path(os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE)


def _repo_cached(repo_id: str, cache_dir) -> bool:
    return (_cache_root(cache_dir) / ("models--" + repo_id.replace("/", "--"))).is_dir()


def hub_file(repo_id: str, filename: str, *, revision: str | None = None, cache_dir=None, required: bool = True,
             unreachable: str | None = None) -> Path | None:
    """One file of a Hub repo as a local path (cache first when offline, else cache or download).
    Returns None for a file the repo does not have (or, offline, that the cache does not hold) when
    ``required`` is False. ``unreachable``: why the Hub cannot be reached (``hub_unreachable``), in
    which case only the cache is read, as offline."""
    try:
        import huggingface_hub
        from huggingface_hub import errors
    except ImportError:  # pragma: no cover - huggingface_hub is a runtime dependency
        raise CheckpointError(message(f"{repo_id}: loading by repo id needs huggingface_hub (pip install huggingface_hub)",
                                      *_local_folder_hint(repo_id))) from None
    offline = is_offline()
    where = f"{repo_id}" + (f" (revision {revision})" if revision else "")
    local = "" if Path(repo_id).exists() else no_local_copy(repo_id, " either")
    # how to get a local copy: not offered when a local name close to this one exists (a typo,
    # most likely, rather than a repository to download)
    download = () if "did you mean" in local else _local_folder_hint(repo_id)

    def not_cached() -> CheckpointNotFoundError | None:  # None: a file the repo may lack, and the repo is cached
        cached = _repo_cached(repo_id, cache_dir)
        if not required and cached:
            return None
        missing = (f"{filename} is not in the Hugging Face cache at {_cache_root(cache_dir)}" if cached else
                   f"the repository is not in the Hugging Face cache at {_cache_root(cache_dir)}")
        if offline:
            return CheckpointNotFoundError(message(f"{where}: not available offline", missing,
                                                   "and HF_HUB_OFFLINE is set, so nothing is downloaded "
                                                   "(unset HF_HUB_OFFLINE to download it)",
                                                   local, *download))
        why = unreachable or "huggingface_hub found no connection to it"  # (the latter after its own retries)
        return CheckpointNotFoundError(message(f"{where}: the Hub cannot be reached", why, "and " + missing,
                                               local, *download))

    if unreachable is not None and not offline:
        # The cache read directly: hf_hub_download, even with local_files_only, first builds request
        # headers, and huggingface_hub 1.x/2.x then fetches a registry from the Hub (3 s more at an
        # endpoint that never answers).
        found = huggingface_hub.try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir, revision=revision)
        if isinstance(found, str):
            return Path(found)
        if found is not None:  # the cache records that the repo has no such file
            if required:
                raise CheckpointNotFoundError(f"{where}: the repository has no file {filename}")
            return None
        error = not_cached()
        if error is not None:
            raise error
        return None
    try:
        path = huggingface_hub.hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir,
                                               local_files_only=offline)
        return Path(path)
    except errors.RemoteEntryNotFoundError:
        if required:
            raise CheckpointNotFoundError(f"{where}: the repository has no file {filename}") from None
        return None
    except errors.LocalEntryNotFoundError:
        error = not_cached()
        if error is not None:
            raise error from None
        return None
    except errors.GatedRepoError:
        raise CheckpointError(message(f"{where}: the repository is gated",
                                      "accept its terms on the Hub and log in (`hf auth login`), or",
                                      *_local_folder_hint(repo_id))) from None
    except errors.RepositoryNotFoundError:
        raise CheckpointNotFoundError(message(f"{repo_id}: no such repository on the Hub "
                                              "(or it is private: log in with `hf auth login`)",
                                              local, "check the spelling, or pass a local folder")) from None
    except errors.RevisionNotFoundError:
        raise CheckpointNotFoundError(f"{repo_id}: the repository has no revision {revision!r}") from None
    except errors.HFValidationError as e:
        raise CheckpointError(message(f"{repo_id!r} is not a valid repo id", str(e), local)) from None
    except (OSError, ValueError) as e:  # HTTP errors (HfHubHTTPError is an OSError), disk errors
        raise CheckpointError(message(f"{where}: could not fetch {filename}", *str(e).splitlines())) from None


# Files that stand for a checkpoint: its weights, and its settings (which lie beside the weights).
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".index.json")
SETTINGS_FILES = ("config.json", "preprocessor_config.json")

EMPTY_NAME = ("an empty name is not a checkpoint: pass a folder ('.' for the current one), a weights file, "
              "or a Hugging Face repo id")


def _is_checkpoint_file(path: Path) -> bool:
    return path.name in SETTINGS_FILES or path.name.endswith(_WEIGHT_SUFFIXES)


def _hub_name(name: str) -> str:
    """``name`` if it may be asked of the Hub, else the error saying there is no such local file.
    Checked with huggingface_hub's own rules before anything is sent (``a--b``, ``x.git`` are not
    repo ids)."""
    if os.path.lexists(name):  # on disk, but neither a folder nor a regular file: never a repo id
        raise CheckpointNotFoundError(message(f"{name}: not a folder or a regular file",
                                              "a checkpoint is a folder, a weights file, or a Hugging Face repo id"))
    if not looks_like_repo_id(name):
        raise _not_a_repo_id(name)
    try:
        from huggingface_hub.utils import HFValidationError, validate_repo_id
    except ImportError:  # pragma: no cover - huggingface_hub is a runtime dependency (hub_file says so)
        return name
    try:
        validate_repo_id(name)
    except HFValidationError as e:
        raise CheckpointNotFoundError(message(f"{name}: no such folder or file", no_local_copy(name),
                                              f"and not a valid Hugging Face repo id ({e})")) from None
    return name


def resolve_file(name_or_path: str | os.PathLike, filename: str, *, revision: str | None = None,
                 required: bool = True, cache_dir=None) -> Path | None:
    """``filename`` from a local folder, or from a Hub repo id through the Hugging Face cache.

    A path to the file itself is accepted when its name is ``filename``; a path to a checkpoint's
    other file (its weights, its config.json or preprocessor_config.json) stands for its folder.
    With ``required=False`` a missing file gives None instead of an error (a folder or repo that
    does not exist is always an error)."""
    name = os.fspath(name_or_path)
    if not name:
        raise CheckpointNotFoundError(EMPTY_NAME)
    path = Path(name)
    if path.is_file():
        if path.name == filename:
            return path
        if not _is_checkpoint_file(path):
            raise CheckpointError(message(f"{path}: is a file, not a checkpoint",
                                          f"expected a folder holding {filename}, a weights file beside one, "
                                          "or a Hub repo id"))
        path = path.parent
    if path.is_dir():
        candidate = path / filename
        if candidate.is_file():
            return candidate
        if required:
            raise CheckpointNotFoundError(f"{candidate}: no such file (the folder {path} has no {filename})")
        return None
    name = _hub_name(name)
    unreachable = None if is_offline() else hub_unreachable(name, revision)
    return hub_file(name, filename, revision=revision, cache_dir=cache_dir, required=required, unreachable=unreachable)


@dataclass(frozen=True)
class Checkpoint:
    """Where a checkpoint's files lie on this machine: its weights file (a sharded index's shards
    lie beside it), its config file if it has one (``config.json``, or an ml-cvnets YAML), and a
    name for messages."""

    weights: Path
    config: Path | None
    origin: str


def _cvnets_yaml_beside(weights: Path) -> Path | None:
    """The ml-cvnets YAML config of local weights that have no ``config.json``: ``<weights
    stem>.yaml`` (or ``.yml``), else ``config.yaml``, else the folder's only YAML file; a file
    counts only if it reads as ml-cvnets options naming a model (``model.classification.name``),
    so an unrelated YAML file in the folder is passed over."""
    from .cvnets_yaml import read_flat_yaml
    from .errors import ConfigError

    folder = weights.parent
    named = [folder / f"{weights.stem}{suffix}" for suffix in (".yaml", ".yml")] + [folder / "config.yaml"]
    try:
        others = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".yaml", ".yml"))
    except OSError:
        others = []
    candidates = [p for p in named if p.is_file()] or (others if len(others) == 1 else [])
    for candidate in candidates:
        try:
            if "model.classification.name" in read_flat_yaml(candidate):
                return candidate
        except ConfigError:
            continue
    return None


def find_cvnets_yaml(name_or_path: str | os.PathLike) -> Path | None:
    """The ml-cvnets YAML config of a local checkpoint folder or weights file (see
    ``_cvnets_yaml_beside``), or None."""
    path = Path(name_or_path)
    if path.is_dir():
        try:
            return _cvnets_yaml_beside(find_weights(path))
        except CheckpointError:
            return None
    return _cvnets_yaml_beside(path) if path.is_file() else None


def _local_config(weights: Path, config_given: bool) -> Path | None:
    if config_given:
        return None
    config = weights.parent / "config.json"
    return config if config.is_file() else _cvnets_yaml_beside(weights)


def resolve_checkpoint(name_or_path: str | os.PathLike, *, revision: str | None = None, cache_dir=None,
                       config_given: bool = False) -> Checkpoint:
    """A checkpoint folder, a weights file, or a Hub repo id -> local paths.

    - a folder: its weights in transformers' order of preference (``model.safetensors``,
      ``model.safetensors.index.json``, ``pytorch_model.bin``, ``pytorch_model.bin.index.json``),
      else its only ``.pt`` / ``.pth`` file (as ml-cvnets saves them); its ``config.json`` if
      present, else an ml-cvnets YAML config (see ``_cvnets_yaml_beside``); a path to its
      ``config.json`` or ``preprocessor_config.json`` stands for the folder;
    - a file (``.safetensors``, ``.bin``, ``.pt``, ``.pth``, an ``.index.json``): that file, and the
      config beside it, found as for a folder;
    - a repo id: the same files, in the same order, from the Hugging Face cache or the Hub.

    With ``config_given`` (the caller has its config) no local config file is looked for.
    """
    name = os.fspath(name_or_path)
    if not name:  # Path("") is the current folder, which nobody means by an empty name
        raise CheckpointNotFoundError(EMPTY_NAME)
    path = Path(name)
    if path.is_file() and path.name in SETTINGS_FILES:  # no weights: the folder it lies in is meant
        path = path.parent
    if path.is_dir():
        weights = find_weights(path)
        return Checkpoint(weights, _local_config(weights, config_given), str(path))
    if path.is_file():
        return Checkpoint(path, _local_config(path, config_given), str(path))
    name = _hub_name(name)
    where = name + (f" (revision {revision})" if revision else "")
    unreachable = None if is_offline() else hub_unreachable(name, revision)
    config = hub_file(name, "config.json", revision=revision, cache_dir=cache_dir, required=False,
                      unreachable=unreachable)
    for filename in WEIGHT_FILES:
        weights = hub_file(name, filename, revision=revision, cache_dir=cache_dir, required=False,
                           unreachable=unreachable)
        if weights is None:
            continue
        if filename.endswith(".index.json"):
            for shard in shard_names(weights):
                hub_file(name, shard, revision=revision, cache_dir=cache_dir, required=True, unreachable=unreachable)
        return Checkpoint(weights, config, where)
    cache_only = is_offline() or unreachable is not None
    state = "in the Hugging Face cache" if cache_only else "on the Hub"
    raise CheckpointError(message(f"{where}: no weights {state}", f"looked for {', '.join(WEIGHT_FILES)}",
                                  unreachable or "", *(_local_folder_hint(name) if cache_only else ())))
