"""Named SAM sizes and builders that load (and resample) pretrained weights."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .aespa_model import PREFERENCE_PREFIXES, AESPAModel, aespa_config
from .checkpoint import CheckpointError, LoadReport, load_weights, read_checkpoint, unwrap_state_dict
from .lite_medsam import LITE_MEDSAM, is_lite_medsam_state, lite_medsam_config
from .reference_format import convert_reference_checkpoint, is_reference_checkpoint
from .sam import CONFIG_KEYS, OFFICIAL_PROMPT_DECODER, Sam, build_sam_parts

CHECKPOINT_FORMAT = "aespa-ckpt/1"

# Shared by every size: the official SAM values.
_COMMON: dict[str, Any] = dict(
    patch_size=16,
    mlp_ratio=4.0,
    window_size=14,
    out_chans=256,
    use_rel_pos=True,
    **OFFICIAL_PROMPT_DECODER,
)

ENCODERS: dict[str, dict[str, Any]] = {
    "vit_b": dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=[2, 5, 8, 11]),
    "vit_l": dict(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=[5, 11, 17, 23]),
    "vit_h": dict(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=[7, 15, 23, 31]),
    # Small model for CPU runs and tests, trained from scratch (no pretrained weights exist for it):
    # 8-px patches (the 64-px default input is an 8x8 grid, decoded at 32x32), a window matching that grid
    # (window 14 would pad it to 14x14), and a prompt encoder / decoder 128 wide instead of 256.
    "vit_t": dict(
        embed_dim=96,
        depth=4,
        num_heads=3,
        global_attn_indexes=[1, 3],
        patch_size=8,
        window_size=8,
        out_chans=128,
        prompt_embed_dim=128,
        decoder_mlp_dim=1024,
        iou_head_hidden_dim=128,
    ),
}


# -encoder choices: `auto` (the size of the checkpoint loaded), a named ViT size, or LiteMedSAM's TinyViT.
ENCODER_NAMES = ("auto", *ENCODERS, LITE_MEDSAM)


def encoder_of_state(state: Mapping[str, Any], source: str) -> str:
    """The named encoder whose patch embedding and depth match a state dict (vit_b / vit_l / vit_h / vit_t), or
    lite_medsam for LiteMedSAM's keys; `CheckpointError` naming `source` when none does."""
    if is_lite_medsam_state(state):
        return LITE_MEDSAM
    key = "image_encoder.patch_embed.proj.weight"
    if key not in state:
        raise CheckpointError(f"{source}: no '{key}': not a SAM/MedSAM or AESPA checkpoint")
    width, depth = state[key].shape[0], len({k.split(".")[2] for k in state if k.startswith("image_encoder.blocks.")})
    name = encoder_of_shape(width, depth)
    if name is None:
        raise CheckpointError(
            f"{source}: its image encoder (width {width}, depth {depth}) matches none of {', '.join(ENCODERS)}"
        )
    return name


def encoder_of_shape(embed_dim: int, depth: int) -> str | None:
    """The named ViT size of that width and depth, or None."""
    return next((k for k, v in ENCODERS.items() if (v["embed_dim"], v["depth"]) == (embed_dim, depth)), None)


def sam_config(encoder: str = "vit_b", image_size: int = 1024, **overrides: Any) -> dict[str, Any]:
    """The configuration dict (parity-fixture keys) of a named size at `image_size`; `lite_medsam` gives
    LiteMedSAM's (TinyViT keys instead of the ViT's)."""
    if encoder == "lite_medsam":
        return {**lite_medsam_config(image_size), **overrides}
    if encoder not in ENCODERS:
        raise ValueError(f"unknown encoder '{encoder}' (choose from {', '.join(ENCODERS)})")
    config = {**_COMMON, **ENCODERS[encoder], "img_size": image_size, **overrides}
    if image_size <= 0 or image_size % config["patch_size"]:
        raise ValueError(
            f"image size {image_size} must be a positive multiple of the patch size {config['patch_size']}"
        )
    unknown = set(config) - set(CONFIG_KEYS)
    if unknown:
        raise ValueError(f"unknown SAM config keys {sorted(unknown)}")
    return config


def load_sam_checkpoint(sam: Sam, checkpoint: str) -> LoadReport:
    """Load an official-layout SAM/MedSAM checkpoint (any image size) into `sam`, strictly."""
    state = unwrap_state_dict(read_checkpoint(checkpoint), source=str(checkpoint))
    return load_weights(sam, state, source=str(checkpoint))


def build_sam_from_config(config: dict[str, Any], checkpoint: str | None = None) -> Sam:
    """SAM parts from a configuration dict, loading (and resampling) `checkpoint` when given.

    `{"encoder": "lite_medsam", "img_size": S}` is enough for LiteMedSAM (its other keys are fixed). A refused
    checkpoint raises `CheckpointError` whose one-line message names the offending key.
    """
    if config.get("encoder") == "lite_medsam":
        config = {**lite_medsam_config(config["img_size"]), **config}
    sam = build_sam_parts(config)
    if checkpoint is not None:
        load_sam_checkpoint(sam, checkpoint)
    return sam


def build_sam(encoder: str = "vit_b", image_size: int = 1024, checkpoint: str | None = None) -> Sam:
    """SAM parts of a named size (`vit_b`, `vit_l`, `vit_h`, `vit_t`, `lite_medsam`)."""
    return build_sam_from_config(sam_config(encoder, image_size), checkpoint)


def build_model(
    encoder: str = "vit_b",
    image_size: int = 1024,
    n_components: int = 16,
    fusion: str = "residual",
    checkpoint: str | None = None,
    point_order: str = "xy",
    multimask_output: int = 1,
    protocol: str = "project",
    decoder_block: str = "official",
    pixel_branch: str = "none",
    memory: str = "none",
) -> tuple[AESPAModel, LoadReport | None]:
    """The full model (SAM parts + preference heads) of a named size, optionally loading `checkpoint` (see
    `load_model_weights`); the conventions (`point_order`, `multimask_output`, `protocol`, `decoder_block`) and
    `pixel_branch`, `memory` as in `aespa_config`."""
    sam_cfg = {**sam_config(encoder, image_size), "decoder_block": decoder_block}
    config = aespa_config(
        sam_cfg,
        n_components,
        fusion,
        point_order=point_order,
        multimask_output=multimask_output,
        protocol=protocol,
        pixel_branch=pixel_branch,
        memory=memory,
    )
    model = AESPAModel(config)
    report = load_model_weights(model, checkpoint) if checkpoint else None
    return model, report


def model_state(obj: Any, source: str) -> tuple[dict[str, Any], tuple[str, ...]]:
    """A loaded checkpoint -> (state dict in this project's layout, key prefixes allowed to be absent).

    * this project's checkpoints (`format: aespa-ckpt/1`) and the original's published AESPA checkpoint:
      every tensor of the model must be there;
    * a SAM/MedSAM state dict (raw or wrapped): the SAM parts must be complete, the preference heads and
      the mixture state start afresh (reported in `LoadReport.initialised`).
    """
    if is_reference_checkpoint(obj):
        return convert_reference_checkpoint(obj, source), ()
    if isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT:
        return unwrap_state_dict(obj["model"], source), ()
    return unwrap_state_dict(obj, source), PREFERENCE_PREFIXES


def load_model_weights(model: AESPAModel, checkpoint: str) -> LoadReport:
    """Load any supported file (see `model_state`) into the full model, resampling to its image size."""
    state, optional = model_state(read_checkpoint(checkpoint), str(checkpoint))
    return load_weights(model, state, source=str(checkpoint), optional_prefixes=optional)
