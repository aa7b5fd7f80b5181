"""Checkpoint reading and weight loading: safe unpickling, container unwrapping, resampling, strict key checks.

One loader for every source (MedSAM/SAM, the project's own checkpoints, the published AESPA format):
* files are read with `torch.load(..., weights_only=True)`; numpy arrays (the published format keeps its
  mixture in them) are admitted by allow-listing exactly the numpy globals they need;
* `{'state_dict': ...}` / `{'model': ...}` containers and `module.` / `_orig_mod.` prefixes are unwrapped;
* `pos_embed` is resampled bicubically and the global-attention relative-position tables linearly to the
  model's image size; every other tensor must match exactly;
* a missing, unexpected or mis-shaped key is refused with one line naming the first offender and both
  shapes; only keys under `optional_prefixes` (the preference heads) may be absent, and are reported.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .image_encoder import resample_rel_pos

WRAPPER_PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(Exception):
    """A checkpoint that cannot be used; the message is one line naming the file or key (the command lines print
    it as `error: <message>`, like any bad input)."""


def _numpy_safe_globals() -> list[Any]:
    """Exactly the numpy globals that pickled float arrays and scalars reference.

    numpy 2 pickles name `numpy._core.multiarray`, numpy 1 pickles `numpy.core.multiarray`: both spellings
    are mapped onto the installed functions.
    """
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy 1
        from numpy.core import multiarray
    # float arrays: the dtype classes are checked when their pickled dtype object is rebuilt
    allowed: list[Any] = [np.ndarray, np.dtype, type(np.dtype(np.float64)), type(np.dtype(np.float32))]
    for name in ("_reconstruct", "scalar"):
        for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
            allowed.append((getattr(multiarray, name), f"{module}.{name}"))
    return allowed


# Sentences of torch's advice on a refused safe load; none of it may reach our message (it suggests
# bypassing the check with weights_only=False).
_TORCH_ADVICE = (
    "weights_only",
    "Weights only load failed",
    "safe_globals",
    "trusted",
    "file an issue",
    "documentation",
)


def _explain(err: Exception) -> str:
    """One line out of torch.load's (often multi-paragraph) error, torch's advice left out.

    A refused global is named from either wording: "Trying to load unsupported GLOBAL posix.system whose module
    ..." (torch 2.13, blocked modules) and "Unsupported global: GLOBAL x.y was not an allowed global ..." (older).
    """
    text = str(err)
    found = re.search(r"GLOBAL (\S+?)\.?(?=\s|$)|but got (<class '[^']+'>)", text)
    if found:  # a safe load refused an object: say which, not how to bypass the check
        return f"it holds Python objects a safe load refuses: {found.group(1) or found.group(2)}"
    lines = [line.split("WeightsUnpickler error:")[-1].strip() for line in text.splitlines()]
    reasons = [line for line in lines if line and not any(a in line for a in _TORCH_ADVICE)]
    if "Weights only load failed" in text:
        return "a safe load refuses its contents" + (f": {reasons[0][:200]}" if reasons else "")
    return f"{type(err).__name__}: {reasons[0][:200]}" if reasons else type(err).__name__


def read_checkpoint(path: str | Path) -> Any:
    """Load a checkpoint file safely onto the CPU; unusable files raise `CheckpointError` (one line)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # the unpickler raises anything on garbage (IndexError, KeyError, ...)
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({_explain(err)})") from None


def unwrap_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """A state dict from a raw dict or a `{'state_dict'|'model': ...}` container, wrapper prefixes stripped."""
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{source}: holds no state dict (expected tensors, or a 'state_dict'/'model' entry)")
    state: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{source}: entry '{key}' is a {type(value).__name__}, not a tensor")
        name = str(key)
        stripped = True
        while stripped:  # prefixes may be stacked, e.g. 'module._orig_mod.'
            stripped = False
            for prefix in WRAPPER_PREFIXES:
                if name.startswith(prefix):
                    name, stripped = name[len(prefix) :], True
        state[name] = value
    return state


@dataclass
class LoadReport:
    """What a load did: tensors copied as they were, resampled (key, old shape, new shape), initialised afresh."""

    source: str
    loaded: list[str] = field(default_factory=list)
    resampled: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    initialised: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the loader had to assume

    def summary(self) -> str:
        lines = [f"{self.source}: {len(self.loaded) + len(self.resampled)} tensors loaded"]
        lines += [f"  {note}" for note in self.notes]
        for key, old, new in self.resampled:
            lines.append(f"  resampled {key}: {tuple(old)} -> {tuple(new)}")
        if self.initialised:
            groups = sorted({k.split(".")[0] for k in self.initialised})
            lines.append(f"  initialised afresh ({len(self.initialised)} tensors): {', '.join(groups)}")
        return "\n".join(lines)


def resample_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """1xHxWxC absolute position embedding -> 1xGhxGwxC, bicubic, computed in float32."""
    x = pos_embed.float().permute(0, 3, 1, 2)  # 1xCxHxW
    x = F.interpolate(x, size=grid, mode="bicubic", align_corners=False)
    return x.permute(0, 2, 3, 1).to(pos_embed.dtype)


def resampleable_keys(model: nn.Module) -> dict[str, str]:
    """Keys whose checkpoint tensors may be resampled: 'pos' (pos_embed) or 'rel' (global-attention tables)."""
    out: dict[str, str] = {}
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(getattr(module, "pos_embed", None), nn.Parameter):
            out[prefix + "pos_embed"] = "pos"
        if getattr(module, "window_size", None) == 0 and getattr(getattr(module, "attn", None), "use_rel_pos", False):
            out[prefix + "attn.rel_pos_h"] = "rel"
            out[prefix + "attn.rel_pos_w"] = "rel"
    return out


def _fit(kind: str | None, value: torch.Tensor, shape: torch.Size) -> torch.Tensor | None:
    """Resample `value` to `shape` when the rule for its kind allows it, else None."""
    if kind == "pos" and value.dim() == 4 and value.shape[0] == 1 and value.shape[3] == shape[3]:
        return resample_pos_embed(value, (shape[1], shape[2]))
    if kind == "rel" and value.dim() == 2 and value.shape[1] == shape[1]:
        return resample_rel_pos(value, shape[0])
    return None


def load_weights(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    source: str = "checkpoint",
    optional_prefixes: Iterable[str] = (),
) -> LoadReport:
    """Copy `state_dict` into `model`, consuming every tensor; refuse anything that does not fit exactly."""
    optional = tuple(optional_prefixes)
    expected = model.state_dict()
    rules = resampleable_keys(model)
    report = LoadReport(source)
    ready: dict[str, torch.Tensor] = {}
    for key, target in expected.items():
        if key not in state_dict:
            if key.startswith(optional):
                report.initialised.append(key)
                continue
            raise CheckpointError(f"{source}: missing key '{key}' (the model expects shape {tuple(target.shape)})")
        value = state_dict[key]
        if value.shape == target.shape:
            ready[key] = value
            report.loaded.append(key)
            continue
        fitted = _fit(rules.get(key), value, target.shape)
        if fitted is None:
            raise CheckpointError(
                f"{source}: key '{key}' has shape {tuple(value.shape)} but the model expects {tuple(target.shape)}"
            )
        ready[key] = fitted
        report.resampled.append((key, tuple(value.shape), tuple(target.shape)))
    unexpected = [k for k in state_dict if k not in expected]
    if unexpected:
        key = unexpected[0]
        raise CheckpointError(
            f"{source}: unexpected key '{key}' with shape {tuple(state_dict[key].shape)} "
            f"({len(unexpected)} keys the model does not have)"
        )
    with torch.no_grad():
        for key, value in ready.items():
            expected[key].copy_(value.to(expected[key].dtype))
    return report
