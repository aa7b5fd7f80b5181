"""The original project's published checkpoint (`checkpoint_aespa_lidc.pth`) in this project's layout.

Its container is `{'epoch', 'model': 'sam', 'state_dict', 'optimizer', 'path_helper', 'EM_weights',
'EM_means', 'EM_variances'}`, the last three numpy float64 arrays (K). Its state dict differs from ours
only by names: `attn.rel_h/rel_w`, the decoder MLP's `layers.0.0`/`fc`, the fusion under the image encoder
and the heads' module names.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from .checkpoint import CheckpointError, unwrap_state_dict

_MIXTURE_ENTRIES = {"EM_weights": "mixture_weights", "EM_means": "mixture_means", "EM_variances": "mixture_variances"}

# (reference name fragment, our name fragment), applied in order to every key.
_RENAMES = (
    ("image_encoder.fcomb.", "fcomb."),
    (".attn.rel_h", ".attn.rel_pos_h"),
    (".attn.rel_w", ".attn.rel_pos_w"),
    (".mlp.layers.0.0.", ".mlp.lin1."),
    (".mlp.fc.", ".mlp.lin2."),
    ("EM_weights.", "weight_head."),
    ("EM_mean_variance.", "mean_var_head."),
)


def is_reference_checkpoint(obj: Any) -> bool:
    """True for the original project's container (it carries the mixture as numpy arrays)."""
    return isinstance(obj, Mapping) and "state_dict" in obj and all(k in obj for k in _MIXTURE_ENTRIES)


def rename_reference_key(key: str) -> str:
    for old, new in _RENAMES:
        if old in key:
            key = key.replace(old, new)
    return key


def convert_reference_checkpoint(obj: Mapping[str, Any], source: str) -> dict[str, torch.Tensor]:
    """The published container -> a state dict in this project's layout, mixture buffers included."""
    state = {rename_reference_key(k): v for k, v in unwrap_state_dict(obj["state_dict"], source).items()}
    for entry, buffer in _MIXTURE_ENTRIES.items():
        value = obj[entry]
        if not isinstance(value, (np.ndarray, torch.Tensor)) or np.ndim(value) != 1:
            raise CheckpointError(f"{source}: '{entry}' should be a 1-D array of mixture values, got {type(value).__name__}")
        state[buffer] = torch.as_tensor(np.asarray(value), dtype=torch.float32)
    return state
