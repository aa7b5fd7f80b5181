"""Per-image reduction of multi-class rater masks to one binary task (docs/interaction.md#multi-class-data).

Used by both training loops on MBHSeg-Multiclass batches: per image, pick one foreground class that
some valid rater marks, preferring (p = 0.8) classes on which the valid raters disagree somewhere, and
give every rater that class's mask.
"""

from __future__ import annotations

import torch

from pipeline.rng import uniform


def binarize_multiclass(
    multi_rater: torch.Tensor, valid: torch.Tensor, generator: torch.Generator | None = None, p_disagree: float = 0.8
) -> torch.Tensor:
    """BxRxCxHxW one-hot rater masks (channel 0 background) -> BxRx1xHxW binary masks of one chosen class.

    A class is *present* when some valid rater marks it somewhere, *disagreed* when at some pixel some
    but not all valid raters mark it. With probability `p_disagree` (when the image has a disagreed
    class) the class is drawn uniformly among the disagreed ones, otherwise uniformly among the present
    ones. Images with no present class, and invalid raters, get all-zero masks. Vectorised over the
    batch on the tensors' device; the random draws come from `generator` (on its own device), so a
    given generator state gives the same choice on every device.
    """
    B, R, C, H, W = multi_rater.shape
    device = multi_rater.device
    valid = valid.to(device=device, dtype=torch.bool)
    marks = (multi_rater[:, :, 1:] > 0.5) & valid.view(B, R, 1, 1, 1)  # BxRx(C-1)xHxW, valid raters only
    count = marks.sum(1)  # Bx(C-1)xHxW raters marking each class at each pixel
    n_valid = valid.sum(1).view(B, 1, 1, 1)
    present = (count > 0).flatten(2).any(-1)  # Bx(C-1)
    disagreed = ((count > 0) & (count < n_valid)).flatten(2).any(-1)  # Bx(C-1)

    coin = uniform((B,), device, generator) < p_disagree  # B
    scores = uniform((B, C - 1), device, generator)  # Bx(C-1)
    candidates = torch.where((coin & disagreed.any(1))[:, None], disagreed, present)  # Bx(C-1)
    chosen = torch.where(candidates, scores, torch.full_like(scores, -1.0)).argmax(1) + 1  # B, class 1..C-1

    index = chosen.view(B, 1, 1, 1, 1).expand(B, R, 1, H, W)
    out = multi_rater.gather(2, index) > 0.5  # BxRx1xHxW
    keep = present.any(1).view(B, 1, 1, 1, 1) & valid.view(B, R, 1, 1, 1)
    return (out & keep).to(multi_rater.dtype)
