"""SAM's mask decoder, batched: image b is decoded with prompt set b."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d
from .transformer import TwoWayTransformer


class MLP(nn.Module):
    """`num_layers` linear layers with ReLU between them."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


def memory_effect(shift: torch.Tensor, width: int) -> tuple[torch.Tensor, ...]:
    """A session memory's shift Bx(2C + 2C/8) (C = `width`) -> its four parts: the mask tokens' shift before and
    after the transformer (BxC each), the mask features' scale and offset (Bx(C/8) each)."""
    c8 = width // 8
    return tuple(shift.split([width, width, c8, c8], dim=1))


class MaskDecoder(nn.Module):
    """Predicts low-resolution mask logits Bx(1|M)x4Gx4G and their IoU scores from embeddings and prompts."""

    def __init__(
        self,
        transformer_dim: int,
        transformer: TwoWayTransformer,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer = transformer
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        pixel_features: torch.Tensor | None = None,
        memory_shift: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image_embeddings BxCxGxG, image_pe 1xCxGxG, sparse BxNxC, dense BxCxGxG, pixel_features Bx(C/8)x4Gx4G
        (optional, added to the upscaled embedding the mask tokens read), memory_shift Bx(2C + 2C/8) (optional, a
        session's memory, `memory_effect`) -> masks Bx(1 or 3)x4Gx4G logits, iou Bx(1 or 3)."""
        masks, iou_pred = self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, pixel_features, memory_shift
        )
        chosen = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, chosen], iou_pred[:, chosen]

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        pixel_features: torch.Tensor | None = None,
        memory_shift: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b = image_embeddings.shape[0]
        if sparse.shape[0] != b or dense.shape[0] != b:
            raise ValueError(
                f"decoder is batched: {b} images but {sparse.shape[0]} sparse / {dense.shape[0]} dense prompts"
            )
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)  # (1+T)xC
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(b, -1, -1), sparse], dim=1)  # Bx(1+T+N)xC
        memory = None if memory_shift is None else memory_effect(memory_shift.to(tokens.dtype), tokens.shape[-1])
        if memory is not None:
            mask_slots = torch.zeros_like(tokens[0, :, :1])  # (1+T+N)x1: 1 at the mask tokens
            mask_slots[1 : 1 + self.num_mask_tokens] = 1
            tokens = tokens + mask_slots * memory[0][:, None]
        src = image_embeddings + dense
        pos_src = image_pe.expand(b, -1, -1, -1)
        _, c, h, w = src.shape

        hs, src = self.transformer(src, pos_src, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]  # BxTxC
        if memory is not None:
            mask_tokens_out = mask_tokens_out + memory[1][:, None]

        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))  # Bx(C/8)x4Gx4G
        if pixel_features is not None:
            upscaled = upscaled + pixel_features
        if memory is not None:  # per-channel scale and offset of the mask features the hypernetwork scores
            upscaled = upscaled * (1 + memory[2][:, :, None, None]) + memory[3][:, :, None, None]
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )  # BxTx(C/8)
        _, c8, h4, w4 = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(b, c8, h4 * w4)).reshape(b, -1, h4, w4)  # BxTx4Gx4G
        return masks, self.iou_prediction_head(iou_token_out)
