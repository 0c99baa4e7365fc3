"""Reading checkpoints: files -> named arrays -> checked, BN-folded, nested parameters.

The names below are imported from their modules when first used (PEP 562): this file imports
none of them, so no import inside the package leads back to it.
"""

from __future__ import annotations

from .._lazy import lazy_names

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
__getattr__, __dir__ = lazy_names(__name__, _EXPORTS, _SUBMODULES)
