"""Reading checkpoints: files -> named arrays -> checked, BN-folded, nested parameters.

The names below are imported from their modules when first used (PEP 562): this file imports
none of them, so no import inside the package leads back to it.
"""

from __future__ import annotations

import importlib

# public name -> the module of this package that defines it
_EXPORTS = {
    "CheckpointError": "files",
    "align_prefix": "convert",
    "check_state_dict": "convert",
    "expected_shapes": "shapes",
    "flatten": "convert",
    "fold_all_batch_norms": "convert",
    "nest": "convert",
    "read_checkpoint_folder": "files",
    "read_safetensors": "files",
    "read_sharded_safetensors": "files",
    "read_sharded_torch": "torch_files",
    "read_torch_checkpoint": "torch_files",
    "to_params": "convert",
}
_SUBMODULES = ("convert", "files", "init", "names", "shapes", "torch_files")

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value  # looked up once
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | set(_SUBMODULES))
