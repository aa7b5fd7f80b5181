"""Training-time augmentation: symmetries of the square, one drawn per image.

`flip`: the eight symmetries (flips and quarter turns); `mirror`: the four that keep the axes (identity,
left-right and up-down flips, half turn). With a frozen encoder each distinct augmented image costs one encoder
forward (the embedding cache keys on the exact input), so `mirror` computes fewer embeddings (the synthetic
default run: about 1140 instead of 1793 over 12 epochs, ~80 s less at 2 threads) but follows less well (README).

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


SYMMETRIES = {"flip": (0, 1, 2, 3, 4, 5, 6, 7), "mirror": (0, 2, 4, 6)}  # `dihedral` k of each -augment


def augment_batch(
    images: torch.Tensor, raters: torch.Tensor, generator: torch.Generator | None, kind: str = "flip"
) -> tuple[torch.Tensor, torch.Tensor]:
    """images Bx3xSxS, raters BxRxSxS -> both with one symmetry per image, drawn uniformly from `kind`'s
    (SYMMETRIES: 'flip' all eight, 'mirror' the four that keep the axes)."""
    allowed = torch.tensor(SYMMETRIES[kind])
    # drawn on the generator's device (the same numbers anywhere): CPU indices cost no GPU->CPU syncs below
    draw = (uniform((images.shape[0],), torch.device("cpu"), generator) * len(allowed)).long()  # B
    choice = allowed[draw]
    images, raters = images.clone(), raters.clone()
    for k in range(1, 8):
        idx = (choice == k).nonzero(as_tuple=True)[0]
        if len(idx):
            images[idx] = dihedral(images[idx], k)
            raters[idx] = dihedral(raters[idx], k)
    return images, raters
