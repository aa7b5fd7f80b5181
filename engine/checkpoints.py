"""Training checkpoints (docs/run-folder.md#checkpoints): everything needed to resume exactly, written atomically, read
safely."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.config import RunConfig
from models import CHECKPOINT_FORMAT, read_checkpoint
from models.checkpoint import CheckpointError
from utils import atomic_write


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def save_atomically(obj: Any, path: str | Path) -> None:
    """`torch.save` through a temporary file and a rename: a crash never leaves a truncated file."""
    atomic_write(path, lambda f: torch.save(obj, f))


def capture_rng(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Python, numpy, torch (CPU and CUDA) and the named generators' states, as tensors and plain types."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }
    return state


def restore_rng(state: dict[str, Any], generators: dict[str, torch.Generator] | None = None) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, g in (generators or {}).items():
        if name in state["generators"]:
            g.set_state(state["generators"][name])


def save_checkpoint(
    path: str | Path,
    *,
    epoch: int,
    cfg: RunConfig,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    best_metric: float | None,
    best_epoch: int | None,
    generators: dict[str, torch.Generator] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write `{'format': 'aespa-ckpt/1', 'epoch', 'args', 'model_config', 'model', 'optimizer', 'scheduler', 'rng',
    'best_*'}` (plus `extra` entries, e.g. the fp16 gradient scaler's state). `args` is the run's flags,
    `model_config` the model's configuration, conventions included (click order, multimask output)."""
    save_atomically(
        {
            "format": CHECKPOINT_FORMAT,
            "epoch": epoch,
            "args": cfg.flags(),
            "model_config": dict(getattr(model, "config", {})),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": capture_rng(generators),
            "best_metric": best_metric,
            "best_epoch": best_epoch,
            **(extra or {}),
        },
        path,
    )


def load_training_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint written by `save_checkpoint` (refuses other files in one line)."""
    obj = read_checkpoint(path)
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a training checkpoint of this project (no 'format: {CHECKPOINT_FORMAT}')")
    for key in ("epoch", "args", "model", "optimizer", "scheduler", "rng"):
        if key not in obj:
            raise CheckpointError(f"{path}: training checkpoint lacks '{key}'")
    return obj
