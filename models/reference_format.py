"""The original project's published checkpoint (`checkpoint_aespa_lidc.pth`) in this project's layout.

Its container is `{'epoch', 'model': 'sam', 'state_dict', 'optimizer', 'path_helper', 'EM_weights',
'EM_means', 'EM_variances'}`, the last three numpy float64 arrays (K). Its state dict differs from ours
only by names: `attn.rel_h/rel_w`, the decoder MLP's `layers.0.0`/`fc`, the fusion under the image encoder
and the heads' module names.

Also here: the model configuration such a checkpoint implies, read from its tensor shapes
(`reference_model_config`), the model of such a file (`build_reference_model`, `load_reference_model`) and
its rounds replayed with given clicks (`predict_rounds`). The model runs the original's conventions: its
decoder block, (y, x) clicks, and its round protocol (`protocol: reference`, see models/aespa_model.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .aespa_model import AESPAModel
from .checkpoint import CheckpointError, LoadReport, load_weights, read_checkpoint, unwrap_state_dict
from .preference import responsibilities

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
            raise CheckpointError(
                f"{source}: '{entry}' should be a 1-D array of mixture values, got {type(value).__name__}"
            )
        state[buffer] = torch.as_tensor(np.asarray(value), dtype=torch.float32)
    return state


# --- the architecture an original-format checkpoint implies ------------------------------------------

# The decoder's head count leaves no trace in any tensor shape. Rule: one head per 16 channels of the
# decoder width, at most SAM's 8 (256 wide -> 8 as in SAM; 32 wide -> 2), lowered until it divides the
# attention widths.
DECODER_HEAD_CHANNELS = 16
MAX_DECODER_HEADS = 8


def reference_decoder_heads(width: int, downsample_rate: int = 2) -> int:
    """The assumed number of decoder attention heads for a decoder `width` channels wide (see the rule above)."""
    heads = max(1, min(MAX_DECODER_HEADS, width // DECODER_HEAD_CHANNELS))
    while width % heads or (width // downsample_rate) % heads:
        heads -= 1
    return heads


def assumed_settings(config: Mapping[str, Any]) -> str:
    """One line for the load log: what `reference_model_config` could not read from the checkpoint."""
    return (
        f"decoder_num_heads={config['decoder_num_heads']} assumed (the checkpoint's shapes do not record it; rule: "
        f"width // {DECODER_HEAD_CHANNELS}, at most {MAX_DECODER_HEADS}, for width {config['prompt_embed_dim']})"
    )


def _indices(state: Mapping[str, torch.Tensor], prefix: str) -> list[int]:
    """Sorted N of the keys `prefix.N.*` (the layers of a ModuleList)."""
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    return sorted({int(m.group(1)) for k in state if (m := pattern.match(k))})


def _encoder_attention(state: Mapping[str, torch.Tensor], depth: int, embed_dim: int, source: str) -> dict[str, Any]:
    """Heads, window and global blocks of the ViT from its relative-position tables (L x head width each).

    Windowed blocks hold 2*window-1 rows, global ones 2*grid-1 at the training size. As in every SAM size,
    the last block is global: the blocks whose tables match its length are the global ones.
    """
    lengths, widths = [], set()
    for i in range(depth):
        key = f"image_encoder.blocks.{i}.attn.rel_pos_h"
        if key not in state:
            raise CheckpointError(f"{source}: no relative-position table '{key}' (needed to read the encoder's heads)")
        lengths.append(state[key].shape[0])
        widths.add(state[key].shape[1])
    if len(widths) != 1 or embed_dim % next(iter(widths)):
        raise CheckpointError(
            f"{source}: relative-position tables of head widths {sorted(widths)} do not divide "
            f"the encoder width {embed_dim}"
        )
    global_blocks = [i for i, n in enumerate(lengths) if n == lengths[-1]]
    windowed = {n for n in lengths if n != lengths[-1]}
    if not windowed:
        raise CheckpointError(
            f"{source}: every encoder block has {lengths[-1]}-row position tables; "
            "windowed and global blocks cannot be told apart"
        )
    if len(windowed) != 1 or next(iter(windowed)) % 2 == 0:
        raise CheckpointError(
            f"{source}: windowed blocks' position tables have {sorted(windowed)} rows "
            "(expected one odd count, 2*window-1)"
        )
    return {
        "num_heads": embed_dim // next(iter(widths)),
        "window_size": (next(iter(windowed)) + 1) // 2,
        "global_attn_indexes": global_blocks,
        "trained_grid": (lengths[-1] + 1) // 2,
    }


def reference_model_config(
    obj: Mapping[str, Any], image_size: int | None = None, source: str = "checkpoint"
) -> dict[str, Any]:
    """The model configuration (`models.sam.CONFIG_KEYS` + AESPA keys) of an original-format container, run at
    `image_size` (None: the size it was trained at, read from its global-attention tables), read from its
    tensor shapes. Only `decoder_num_heads` is assumed (see `assumed_settings`).

    Fixed by the original's code: relative positions on, qkv biases, decoder attention downsampling 2, the
    reference fusion and decoder block, the batch-averaged mixture, clicks given as (y, x) (`point_order`)
    and SAM's single-mask token (`multimask_output` 1).
    """
    if not is_reference_checkpoint(obj):
        raise CheckpointError(f"{source}: not an original-format AESPA checkpoint (no state_dict with EM_* arrays)")
    state = {rename_reference_key(k): v for k, v in unwrap_state_dict(obj["state_dict"], source).items()}

    def shape(key: str) -> tuple[int, ...]:
        if key not in state:
            raise CheckpointError(f"{source}: missing key '{key}' (needed to read the architecture)")
        return tuple(state[key].shape)

    embed_dim, in_chans, patch, _ = shape("image_encoder.patch_embed.proj.weight")  # D x 3 x p x p
    if in_chans != 3:
        raise CheckpointError(f"{source}: the patch embedding takes {in_chans} channels, expected 3")
    depth = len(_indices(state, "image_encoder.blocks"))
    if depth == 0 or not _indices(state, "mask_decoder.transformer.layers"):
        raise CheckpointError(
            f"{source}: no encoder blocks or no decoder layers (keys image_encoder.blocks.N.*, "
            "mask_decoder.transformer.layers.N.*)"
        )
    attention = _encoder_attention(state, depth, embed_dim, source)
    trained_size = attention.pop("trained_grid") * patch
    image_size = trained_size if image_size is None else image_size
    if image_size <= 0 or image_size % patch:
        raise CheckpointError(f"{source}: image size {image_size} is not a positive multiple of the patch size {patch}")
    if "image_encoder.blocks.0.attn.qkv.bias" not in state:
        raise CheckpointError(f"{source}: the encoder's attention has no qkv bias, which this model always has")
    width = shape("prompt_encoder.not_a_point_embed.weight")[1]
    inner = shape("mask_decoder.transformer.layers.0.cross_attn_token_to_image.q_proj.weight")[0]
    if inner * 2 != width:
        raise CheckpointError(
            f"{source}: decoder cross-attention {inner} wide in a {width}-wide decoder "
            "(this model downsamples by 2, as SAM)"
        )
    out_chans = shape("image_encoder.neck.0.weight")[0]
    k = int(np.size(obj["EM_weights"]))
    if shape("weight_head.fc1.weight")[1] != k or shape("mean_var_head.fc3.weight")[0] != 2 * k:
        raise CheckpointError(f"{source}: mixture heads do not match the {k} stored mixture weights")
    return {
        "img_size": image_size,
        "patch_size": patch,
        "embed_dim": embed_dim,
        "depth": depth,
        **attention,
        "mlp_ratio": shape("image_encoder.blocks.0.mlp.lin1.weight")[0] / embed_dim,
        "out_chans": out_chans,
        "use_rel_pos": True,
        "prompt_embed_dim": width,
        "mask_in_chans": shape("prompt_encoder.mask_downscaling.3.weight")[0],
        "decoder_depth": len(_indices(state, "mask_decoder.transformer.layers")),
        "decoder_mlp_dim": shape("mask_decoder.transformer.layers.0.mlp.lin1.weight")[0],
        "decoder_num_heads": reference_decoder_heads(width),
        "num_multimask_outputs": shape("mask_decoder.mask_tokens.weight")[0] - 1,
        "iou_head_depth": len(_indices(state, "mask_decoder.iou_prediction_head.layers")),
        "iou_head_hidden_dim": shape("mask_decoder.iou_prediction_head.layers.0.weight")[0],
        "n_components": k,
        "latent_dim": shape("fcomb.layers.0.weight")[1] - out_chans,
        "fusion": "reference",
        "protocol": "reference",
        "decoder_block": "reference",
        "point_order": "yx",
        "multimask_output": 1,
    }


# --- the model of an original-format checkpoint, and its rounds --------------------------------------------


def build_reference_model(
    obj: Mapping[str, Any], image_size: int | None = None, source: str = "checkpoint"
) -> tuple[AESPAModel, LoadReport]:
    """The model of an original-format container with all its weights loaded (architecture read from it, run at
    `image_size`, None: its training size), and the load report. `val.py -weights` loads such files here."""
    model = AESPAModel(reference_model_config(obj, image_size, source))
    report = load_weights(model, convert_reference_checkpoint(obj, source), source=source)
    report.notes.append(assumed_settings(model.config))
    return model, report


def load_reference_model(path: str | Path) -> AESPAModel:
    """The model of the original-format checkpoint file at `path`, on the CPU, in eval mode (read safely)."""
    model, _ = build_reference_model(read_checkpoint(path), None, str(path))
    return model.eval()


@torch.no_grad()
def predict_rounds(
    model: AESPAModel,
    images: torch.Tensor,
    rounds: Sequence[tuple[torch.Tensor, torch.Tensor]],
    previous: Sequence[tuple[torch.Tensor | None, torch.Tensor | None]] | None = None,
) -> list[dict[str, torch.Tensor]]:
    """The original's validation rounds on Bx3xSxS `images` with given clicks, as its code records them.

    rounds[t] = (points_yx BxN_tx2 float as the original passes them, (y, x); labels BxN_t long), N_1 = 0.
    Each round is fed its own previous round (mask prompt: its low-resolution logits; weight-head input: its
    responsibilities), or, with `previous[t] = (mask_prompt Bx1x4Gx4G | None, weight_head_input BxK | None)`,
    the given ones. Returns per round: sparse, dense, means, variances, weights (BxK, batch-level under the
    reference protocol), latent BxL, fused_embedding, low_res_logits Bx1x4Gx4G, probs Bx1xSxS, em BxK.
    """
    b = images.shape[0]
    embedding = model.image_features(images)
    recorded: dict[str, torch.Tensor] = {}
    hook = model.fcomb.register_forward_hook(lambda _m, inputs, out: recorded.update(latent=inputs[1], fused=out))
    out: list[dict[str, torch.Tensor]] = []
    try:
        prev_low = prev_em = None
        for t, (points_yx, labels) in enumerate(rounds):
            if previous is not None:
                prev_low, prev_em = previous[t]
            points = points_yx.flip(-1) if model.point_order == "yx" else points_yx  # the model's (x, y) slot
            prompts = model.prompt(b, points, labels, None, prev_low, prev_em)
            decoded = model.decode_round(embedding, prompts)
            probs = decoded.probs  # Bx1xSxS
            em = responsibilities(probs, prompts.weights.float(), prompts.means.float(), prompts.variances.float())
            out.append(
                {
                    "sparse": prompts.sparse,
                    "dense": prompts.dense,
                    "means": prompts.means,
                    "variances": prompts.variances,
                    "weights": prompts.weights,
                    "latent": recorded["latent"],
                    "fused_embedding": recorded["fused"],
                    "low_res_logits": decoded.low,
                    "probs": probs,
                    "em": em,
                }
            )
            prev_low, prev_em = decoded.low, em
    finally:
        hook.remove()
    return out
