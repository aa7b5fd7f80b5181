"""The three SAM parts in the official layout, and their builder from a configuration dict."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .tiny_vit import TINY_VIT_KEYS, TinyViT
from .transformer import TwoWayTransformer

# SAM's official prompt encoder / mask decoder settings: every ViT size and LiteMedSAM share them.
OFFICIAL_PROMPT_DECODER: dict[str, Any] = dict(
    prompt_embed_dim=256,
    mask_in_chans=16,
    decoder_depth=2,
    decoder_mlp_dim=2048,
    decoder_num_heads=8,
    num_multimask_outputs=3,
    iou_head_depth=3,
    iou_head_hidden_dim=256,
)

# The keys of a SAM configuration (those of the parity fixture's `config`).
CONFIG_KEYS = (
    "img_size",
    "patch_size",
    "embed_dim",
    "depth",
    "num_heads",
    "mlp_ratio",
    "global_attn_indexes",
    "window_size",
    "out_chans",
    "use_rel_pos",
    "prompt_embed_dim",
    "mask_in_chans",
    "decoder_depth",
    "decoder_mlp_dim",
    "decoder_num_heads",
    "num_multimask_outputs",
    "iou_head_depth",
    "iou_head_hidden_dim",
)
# The prompt encoder's and mask decoder's keys (the last of CONFIG_KEYS), shared by every image encoder.
PROMPT_DECODER_KEYS = CONFIG_KEYS[CONFIG_KEYS.index("prompt_embed_dim") :]
TINY_VIT_STRIDE = 4  # LiteMedSAM: image size / embedding grid


class Sam(nn.Module):
    """Holds `image_encoder`, `prompt_encoder` and `mask_decoder` with the official call signatures.

    Images are Bx3xSxS in [0, 1] (MedSAM convention: no mean/std normalisation). The image encoder is SAM's ViT
    or LiteMedSAM's TinyViT; anything with `img_size` and `forward(images) -> BxCxGxG` fits.
    """

    def __init__(self, image_encoder: nn.Module, prompt_encoder: PromptEncoder, mask_decoder: MaskDecoder):
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder

    @property
    def image_size(self) -> int:
        return self.image_encoder.img_size

    def predict(
        self,
        images: torch.Tensor,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Plain SAM: Bx3xSxS images and prompt set b for image b -> low-res logits Bx(1|3)x4Gx4G, IoU."""
        embeddings = self.image_encoder(images)
        sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
        if sparse.shape[0] != embeddings.shape[0]:  # no prompt at all: one empty prompt set per image
            sparse = sparse.expand(embeddings.shape[0], -1, -1)
            dense = dense.expand(embeddings.shape[0], -1, -1, -1)
        return self.mask_decoder(embeddings, self.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output)


def build_image_encoder(config: dict[str, Any]) -> tuple[nn.Module, int]:
    """The image encoder of a configuration and its embedding grid G: SAM's ViT (G = S / patch), or LiteMedSAM's
    TinyViT (`encoder: lite_medsam`, G = S / 4)."""
    c = config
    if c.get("encoder") == "lite_medsam":
        missing = [k for k in TINY_VIT_KEYS if k not in c]
        if missing:
            raise ValueError(f"LiteMedSAM config lacks {missing}")
        return TinyViT(c["img_size"], **{k: c[k] for k in TINY_VIT_KEYS}), c["img_size"] // TINY_VIT_STRIDE
    missing = [k for k in CONFIG_KEYS if k not in c]
    if missing:
        raise ValueError(f"SAM config lacks {missing}")
    if c["img_size"] % c["patch_size"]:
        raise ValueError(f"image size {c['img_size']} is not a multiple of the patch size {c['patch_size']}")
    encoder = ImageEncoderViT(
        img_size=c["img_size"],
        patch_size=c["patch_size"],
        embed_dim=c["embed_dim"],
        depth=c["depth"],
        num_heads=c["num_heads"],
        mlp_ratio=c["mlp_ratio"],
        out_chans=c["out_chans"],
        use_rel_pos=c["use_rel_pos"],
        window_size=c["window_size"],
        global_attn_indexes=tuple(c["global_attn_indexes"]),
    )
    return encoder, c["img_size"] // c["patch_size"]


def build_sam_parts(config: dict[str, Any]) -> Sam:
    """Build the SAM parts (random weights) from a configuration dict: `CONFIG_KEYS` for SAM's ViT, or a
    LiteMedSAM configuration (`encoder: lite_medsam`, see models/lite_medsam.py).

    Optional key `decoder_block`: the two-way attention block, `official` (default) or `reference`.
    """
    c = config
    encoder, grid = build_image_encoder(c)
    missing = [k for k in PROMPT_DECODER_KEYS if k not in c]
    if missing:
        raise ValueError(f"SAM config lacks {missing}")
    prompt_encoder = PromptEncoder(
        embed_dim=c["prompt_embed_dim"],
        image_embedding_size=(grid, grid),
        input_image_size=(c["img_size"], c["img_size"]),
        mask_in_chans=c["mask_in_chans"],
    )
    transformer = TwoWayTransformer(
        depth=c["decoder_depth"],
        embedding_dim=c["prompt_embed_dim"],
        num_heads=c["decoder_num_heads"],
        mlp_dim=c["decoder_mlp_dim"],
        block=c.get("decoder_block", "official"),  # optional: "reference" for the original project's checkpoints
    )
    decoder = MaskDecoder(
        transformer_dim=c["prompt_embed_dim"],
        transformer=transformer,
        num_multimask_outputs=c["num_multimask_outputs"],
        iou_head_depth=c["iou_head_depth"],
        iou_head_hidden_dim=c["iou_head_hidden_dim"],
    )
    return Sam(encoder, prompt_encoder, decoder)
