"""A local folder or a Hugging Face repo id -> local files.

``from_pretrained("apple/mobilevitv2-1.0-imagenet1k-256")`` resolves each file it needs through
``huggingface_hub``: files already in the Hugging Face cache (``HF_HOME`` / ``HF_HUB_CACHE``) are used
as they are; missing ones are downloaded, unless ``HF_HUB_OFFLINE=1`` (or ``TRANSFORMERS_OFFLINE=1``)
is set, in which case only the cache is read. ``revision=`` picks a branch, tag, commit or pull
request (``"refs/pr/3"``). A folder is used as it is; nothing is copied.

Failures raise ``CheckpointError`` naming the repo id, the file, what failed, and how to pass a
local folder instead.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .weights.files import (
    WEIGHT_FILES,
    CheckpointError,
    CheckpointNotFoundError,
    find_weights,
    shard_names,
)

# owner/name, as the Hub spells repo ids (a bare name is accepted too: canonical models have none)
_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]*/)?[A-Za-z0-9][A-Za-z0-9._-]*$")
_TRUE = {"1", "on", "yes", "true"}


def is_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` is set to a true value, read at call time."""
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def looks_like_repo_id(name: str) -> bool:
    return bool(_REPO_ID.match(name)) and ".." not in name and not name.endswith((".json", ".bin", ".safetensors", ".pt", ".pth"))


def _local_folder_hint(repo_id: str) -> str:
    return (f"to use a local copy instead, download the repository's files on a machine with internet "
            f"(`hf download {repo_id} --local-dir /path/to/folder`) and pass that folder: "
            f"from_pretrained('/path/to/folder'), or --model /path/to/folder on the command line")


def _cache_root(cache_dir) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    from huggingface_hub import constants

    return Path(os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE)


def _repo_cached(repo_id: str, cache_dir) -> bool:
    return (_cache_root(cache_dir) / ("models--" + repo_id.replace("/", "--"))).is_dir()


def hub_file(repo_id: str, filename: str, *, revision: str | None = None, cache_dir=None, required: bool = True) -> Path | None:
    """One file of a Hub repo as a local path (cache first when offline, else cache or download).
    Returns None for a file the repo does not have (or, offline, that the cache does not hold) when
    ``required`` is False."""
    try:
        import huggingface_hub
        from huggingface_hub import errors
    except ImportError:  # pragma: no cover - huggingface_hub is a runtime dependency
        raise CheckpointError(f"{repo_id}: loading by repo id needs huggingface_hub (pip install huggingface_hub); "
                              + _local_folder_hint(repo_id)) from None
    offline = is_offline()
    where = f"{repo_id}" + (f" (revision {revision})" if revision else "")
    try:
        path = huggingface_hub.hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir,
                                               local_files_only=offline)
        return Path(path)
    except errors.RemoteEntryNotFoundError:
        if required:
            raise CheckpointNotFoundError(f"{where}: the repository has no file {filename}") from None
        return None
    except errors.LocalEntryNotFoundError:
        cached = _repo_cached(repo_id, cache_dir)
        if not required and cached:
            return None
        if offline:
            reason = (f"{filename} is not in the Hugging Face cache at {_cache_root(cache_dir)}" if cached else
                      f"the repository is not in the Hugging Face cache at {_cache_root(cache_dir)}")
            raise CheckpointNotFoundError(f"{where}: {reason}, and HF_HUB_OFFLINE is set so nothing is downloaded; "
                                  f"unset HF_HUB_OFFLINE to download it, or {_local_folder_hint(repo_id)}") from None
        raise CheckpointNotFoundError(f"{where}: could not download {filename} (no connection to the Hub) and it is not in "
                              f"the Hugging Face cache at {_cache_root(cache_dir)}; {_local_folder_hint(repo_id)}") from None
    except errors.GatedRepoError:
        raise CheckpointError(f"{where}: the repository is gated; accept its terms on the Hub and log in "
                              f"(`hf auth login`), or {_local_folder_hint(repo_id)}") from None
    except errors.RepositoryNotFoundError:
        raise CheckpointNotFoundError(f"{repo_id}: no such repository on the Hub (or it is private: log in with `hf auth login`); "
                              "check the spelling, or pass a local folder") from None
    except errors.RevisionNotFoundError:
        raise CheckpointNotFoundError(f"{repo_id}: the repository has no revision {revision!r}") from None
    except errors.HFValidationError as e:
        raise CheckpointError(f"{repo_id!r} is not a valid repo id ({e})") from None
    except (OSError, ValueError) as e:  # HTTP errors (HfHubHTTPError is an OSError), disk errors
        raise CheckpointError(f"{where}: could not fetch {filename}: {e}") from None


def resolve_file(name_or_path: str | os.PathLike, filename: str, *, revision: str | None = None,
                 required: bool = True, cache_dir=None) -> Path | None:
    """``filename`` from a local folder, or from a Hub repo id through the Hugging Face cache.

    A path to the file itself is accepted when its name is ``filename``. With ``required=False`` a
    missing file gives None instead of an error (a folder or repo that does not exist is always an
    error)."""
    path = Path(name_or_path)
    if path.is_dir():
        candidate = path / filename
        if candidate.is_file():
            return candidate
        if required:
            raise CheckpointNotFoundError(f"{candidate}: no such file (the folder {path} has no {filename})")
        return None
    if path.is_file():
        if path.name == filename:
            return path
        raise CheckpointError(f"{path}: is a file; expected a folder holding {filename}, or a Hub repo id")
    name = os.fspath(name_or_path)
    if not looks_like_repo_id(name):
        raise CheckpointNotFoundError(f"{name}: no such folder or file, and not a Hugging Face repo id (owner/name)")
    try:
        return hub_file(name, filename, revision=revision, cache_dir=cache_dir, required=required)
    except CheckpointError as e:
        raise type(e)(f"{e} (there is no local folder or file named {name} either)") from None


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
      present, else an ml-cvnets YAML config (see ``_cvnets_yaml_beside``);
    - a file (``.safetensors``, ``.bin``, ``.pt``, ``.pth``, an ``.index.json``): that file, and the
      config beside it, found as for a folder;
    - a repo id: the same files, in the same order, from the Hugging Face cache or the Hub.

    With ``config_given`` (the caller has its config) no local config file is looked for.
    """
    path = Path(name_or_path)
    if path.is_dir():
        weights = find_weights(path)
        return Checkpoint(weights, _local_config(weights, config_given), str(path))
    if path.is_file():
        return Checkpoint(path, _local_config(path, config_given), str(path))
    name = os.fspath(name_or_path)
    if not looks_like_repo_id(name):
        raise CheckpointNotFoundError(f"{name}: no such folder or file, and not a Hugging Face repo id (owner/name)")
    where = name + (f" (revision {revision})" if revision else "")
    try:
        config = hub_file(name, "config.json", revision=revision, cache_dir=cache_dir, required=False)
        for filename in WEIGHT_FILES:
            weights = hub_file(name, filename, revision=revision, cache_dir=cache_dir, required=False)
            if weights is None:
                continue
            if filename.endswith(".index.json"):
                for shard in shard_names(weights):
                    hub_file(name, shard, revision=revision, cache_dir=cache_dir, required=True)
            return Checkpoint(weights, config, where)
    except CheckpointError as e:
        if os.sep in name or "/" in name:
            raise type(e)(f"{e} (there is no local folder or file named {name} either)") from None
        raise
    state = "in the Hugging Face cache" if is_offline() else "on the Hub"
    raise CheckpointError(f"{where}: no weights {state}; looked for {', '.join(WEIGHT_FILES)}"
                          + (f"; {_local_folder_hint(name)}" if is_offline() else ""))
