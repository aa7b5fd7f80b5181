"""A trainable path from the input pixels to SAM's mask features, for a frozen image encoder.

With the encoder frozen, nothing trainable sees the image except through the encoder's fixed embedding; at a
small input (64 px, the CPU default) that embedding is a 16x16 grid and a lesion's outline is a few cells wide.
The branch is a small U-Net on the image at the resolution of the decoder's mask features (4G x 4G) whose
output is added to the decoder's upscaled embedding before the mask tokens read it (the per-pixel features the
hypernetwork dot product scores), as HQ-SAM adds early encoder features there. Its last layer starts at zero, so
a model with the branch starts as exactly the model without it.

The pixels travel with the SAM embedding as extra channels (`fold_pixels`): everything that stores, slices or
repeats an embedding per image (the embedding cache, validation's rows, the latent samples, volumes, the demo)
carries them along unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FOLD = 4  # the mask features are 4x the embedding grid: each grid cell carries its 4x4 block of pixels
IN_CHANS = 3
FOLDED_CHANS = IN_CHANS * FOLD * FOLD  # extra embedding channels the pixels take


def fold_pixels(images: torch.Tensor, grid: int) -> torch.Tensor:
    """Bx3xSxS images -> Bx48xGxG: resized (area) to the mask features' 4Gx4G, each 4x4 block folded into
    channels, so they can be concatenated to the BxCxGxG embedding."""
    size = FOLD * grid
    if images.shape[-1] != size or images.shape[-2] != size:
        images = F.interpolate(images, size=(size, size), mode="area")
    return F.pixel_unshuffle(images, FOLD)


def unfold_pixels(folded: torch.Tensor) -> torch.Tensor:
    """Bx48xGxG -> Bx3x4Gx4G (the inverse of `fold_pixels` after its resize)."""
    return F.pixel_shuffle(folded, FOLD)


def _conv(in_chans: int, out_chans: int) -> nn.Sequential:
    groups = 4 if out_chans % 4 == 0 else 1
    return nn.Sequential(nn.Conv2d(in_chans, out_chans, 3, padding=1), nn.GroupNorm(groups, out_chans), nn.GELU())


class PixelBranch(nn.Module):
    """U-Net with three levels (widths w, 2w, 4w; two 3x3 convolutions each): images Bx3xHxW (H, W multiples of
    4) -> features Bx`out_chans`xHxW, zero at initialisation."""

    def __init__(self, out_chans: int, width: int = 8, in_chans: int = IN_CHANS) -> None:
        super().__init__()
        w = width
        self.down1 = nn.Sequential(_conv(in_chans, w), _conv(w, w))
        self.down2 = nn.Sequential(_conv(w, 2 * w), _conv(2 * w, 2 * w))
        self.bottom = nn.Sequential(_conv(2 * w, 4 * w), _conv(4 * w, 4 * w))
        self.up2 = nn.Sequential(_conv(6 * w, 2 * w), _conv(2 * w, 2 * w))
        self.up1 = nn.Sequential(_conv(3 * w, w), _conv(w, w))
        self.out = nn.Conv2d(w, out_chans, 1)
        nn.init.zeros_(self.out.weight)  # starts as the model without the branch
        nn.init.zeros_(self.out.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x1 = self.down1(images)
        x2 = self.down2(F.max_pool2d(x1, 2))
        x3 = self.bottom(F.max_pool2d(x2, 2))
        y2 = self.up2(torch.cat([F.interpolate(x3, scale_factor=2.0), x2], 1))
        y1 = self.up1(torch.cat([F.interpolate(y2, scale_factor=2.0), x1], 1))
        return self.out(y1)
