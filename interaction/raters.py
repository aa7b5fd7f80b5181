"""Whom the simulated user follows: drawing and switching raters, and the raters that agree with a click."""

from __future__ import annotations

import torch

from pipeline.rng import uniform


def draw_among(mask: torch.Tensor, generator) -> torch.Tensor:
    """Index of a uniformly drawn True entry per row of a BxN bool mask: B long (0 for an all-False row)."""
    scores = uniform(tuple(mask.shape), mask.device, generator)
    return torch.where(mask, scores, -1.0).argmax(1)


def switch_raters(followed: torch.Tensor, valid: torch.Tensor, p: float, generator) -> torch.Tensor:
    """Keep each image's followed rater with probability 1 - p, else switch uniformly to another valid one."""
    if p <= 0:
        return followed
    others = valid.clone()
    others[torch.arange(len(followed)), followed] = False
    switch = (uniform((len(followed),), valid.device, generator) < p) & others.any(1)
    return torch.where(switch, draw_among(others, generator), followed)


def pick(stack: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """stack BxRx... and index B -> Bx... (each image's entry `index[b]`)."""
    return stack[torch.arange(stack.shape[0], device=stack.device), index]


def raters_agreeing(
    raters: torch.Tensor, valid: torch.Tensor, points: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """BxR bool: valid raters whose mask at the click pixel (points Bx2 (x, y)) equals the click's label."""
    b, r, _, w = raters.shape
    flat = (points[:, 1].long() * w + points[:, 0].long())[:, None, None].expand(b, r, 1)  # BxRx1
    at_click = raters.flatten(2).gather(2, flat)[..., 0]  # BxR
    return valid & ((at_click > 0.5).long() == labels[:, None])


def mean_of(raters: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """Soft mean BxSxS of the chosen raters (BxR bool); an image with none chosen gets zeros."""
    w = chosen.to(raters.dtype)[..., None, None]
    return (raters * w).sum(1) / w.sum(1).clamp(min=1)
