"""Model checkpoints: reading and writing π0 / π0.5 parameters and their norm stats.

    openpi      openpi's JAX layout: orbax `params/` + `assets/<asset_id>/norm_stats.json`
                (restore_params, infer_config, load_openpi, save_openpi, load_norm_stats)
    pytorch     PyTorch safetensors in openpi-PyTorch / reference / LeRobot naming ⇄ pirl params
                (to_torch, from_torch, save_torch, load_torch, load_safetensors, load_pytorch)
    lerobot     LeRobot policy directories: config.json, processor files (read, write)
    heads       the reference's RL heads (critic, noise head) ⇄ pirl heads; fit_heads
    run         a pirl run directory: run.json, its norm stats, its run checkpoints
    loader      load: any of the above, recognised by its files (detect)
    export      a run's policy written as openpi, PyTorch or LeRobot checkpoints
    remote      hf:// and fsspec (gs://, ...) paths → local directories (resolve_path)
    validation  CheckpointError and validate_params, shared by every format

The names below are the package's public API: ``checkpoints.load_openpi(...)``.
"""

from pirl.checkpoints import export, heads, lerobot, loader, run
from pirl.checkpoints.heads import fit_heads, heads_from_torch, heads_to_torch
from pirl.checkpoints.loader import Checkpoint, detect, load
from pirl.checkpoints.openpi import infer_config, load_norm_stats, load_openpi, restore_params, save_openpi
from pirl.checkpoints.pytorch import (
    canonical_names,
    from_torch,
    load_pytorch,
    load_safetensors,
    load_torch,
    save_torch,
    to_torch,
    torch_rule,
    torch_shapes,
)
from pirl.checkpoints.remote import resolve_path
from pirl.checkpoints.validation import CheckpointError, validate_params

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "canonical_names",
    "detect",
    "export",
    "fit_heads",
    "from_torch",
    "heads",
    "heads_from_torch",
    "heads_to_torch",
    "infer_config",
    "lerobot",
    "load",
    "load_norm_stats",
    "load_openpi",
    "load_pytorch",
    "load_safetensors",
    "load_torch",
    "loader",
    "resolve_path",
    "restore_params",
    "run",
    "save_openpi",
    "save_torch",
    "to_torch",
    "torch_rule",
    "torch_shapes",
    "validate_params",
]
