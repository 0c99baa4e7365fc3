"""Reading checkpoints: files -> named arrays -> checked, BN-folded, nested parameters."""

from .convert import (
    align_prefix,
    check_state_dict,
    flatten,
    fold_all_batch_norms,
    nest,
    to_params,
)
from .files import (
    CheckpointError,
    read_checkpoint_folder,
    read_safetensors,
    read_sharded_safetensors,
)
from .shapes import expected_shapes
from .torch_files import read_sharded_torch, read_torch_checkpoint

__all__ = [
    "CheckpointError",
    "align_prefix",
    "check_state_dict",
    "expected_shapes",
    "flatten",
    "fold_all_batch_norms",
    "nest",
    "read_checkpoint_folder",
    "read_safetensors",
    "read_sharded_safetensors",
    "read_sharded_torch",
    "read_torch_checkpoint",
    "to_params",
]
