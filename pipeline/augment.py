"""Training-time augmentation: the eight symmetries of the square (flips and 90° rotations).

Applied to a whole batch on its device, the same transform to an image and to every rater's mask, so the
raters' styles (tight, generous, ...) are unchanged. Validation never augments.
"""

from __future__ import annotations

import torch

from pipeline.rng import uniform


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """Symmetry k (0..7) of the last two dims: k % 4 quarter turns, then a left-right flip when k >= 4."""
    x = torch.rot90(x, k % 4, dims=(-2, -1))
    return x.flip(-1) if k >= 4 else x


def augment_batch(
    images: torch.Tensor, raters: torch.Tensor, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """images Bx3xSxS, raters BxRxSxS -> both with one random symmetry per image (8 group ops per batch)."""
    # drawn on the generator's device (the same numbers anywhere): CPU indices cost no GPU->CPU syncs below
    choice = (uniform((images.shape[0],), torch.device("cpu"), generator) * 8).long()  # B
    images, raters = images.clone(), raters.clone()
    for k in range(1, 8):
        idx = (choice == k).nonzero(as_tuple=True)[0]
        if len(idx):
            images[idx] = dihedral(images[idx], k)
            raters[idx] = dihedral(raters[idx], k)
    return images, raters
