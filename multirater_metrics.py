"""Multi-rater, personalised and interactive segmentation metrics (docs/metrics.md); as a command, the per-case scorer
of whole MBH-Seg predictions (volumes/scoring.py):

    python multirater_metrics.py -pred PRED -gt DIR [-convention challenge|plain] [-scores CSV]

scores PRED/<case>.nii.gz against DIR/<case>/label_annot_<id>.nii.gz for every case of DIR, writes a row per case,
then the mean, to CSV (default: scores_<PRED's name>.csv beside PRED, so that it never ships in the submission),
prints the mean, and stops (exit status 2) naming the first case without a prediction or with one not in the case's
geometry, and a folder that does not match the predict.py manifest beside it (volumes/submission.py).

Four groups, all batched tensor code on the inputs' device (no Python loop over pixels or pairs):

* set metrics of a prediction set P (M masks) against the valid raters L (R masks) of each image,
  following the MBH-Seg 2025 challenge evaluator (binary mode): `set_metrics` -> GED, Dice_max,
  Dice_max_reverse, Dice_match, Dice_soft;
* personalised metrics of one prediction against the followed rater and the neutral majority
  mask: `personalised_metrics`, `neutral_mask`;
* interactive metrics: `noc` (number of clicks to reach a Dice threshold), per-round curves,
  which are `MetricAccumulator.update(values, round=t)` followed by `compute()`, and the area under a
  per-click curve (`click_auc`: DSC_AUC, NSD_AUC);
* surface metrics: `surface_dice` (normalised surface Dice, NSD, at a tolerance in mm, for 2-D and 3-D
  batches with per-sample spacing) and `surface_dice_case` (one 3-D case, spacing from its affine).

Conventions: masks are binarised with a strict `> 0.5` (bool masks are taken as they are);
`dice(a, b) = (2|a∧b| + 1e-8) / (|a| + |b| + 1e-8)` (empty vs empty = 1);
`iou(a, b) = |a∧b| / (|a∨b| + 1e-8)` (empty vs empty = 0). Every function returns per-image values;
averaging over a split is the accumulator's job. Overlap counts are float32, exact up to 2**24
pixels per mask, and computed with autocast disabled (bf16 counts would be wrong).
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from utils import OneLineParser, run_cli

EPS = 1e-8
SOFT_THRESHOLDS = (0.1, 0.3, 0.5, 0.7, 0.9)  # the challenge's Dice_soft thresholds
NOC_THRESHOLDS = (0.80, 0.85, 0.90)
SET_KEYS = ("GED", "Dice_max", "Dice_max_reverse", "Dice_match", "Dice_soft")


# ------------------------------------------------------------------------------------------------
# Primitives


def binarize(x: torch.Tensor) -> torch.Tensor:
    """Bool mask: `x > 0.5` for probabilities or {0,1} masks; bool tensors are returned as they are."""
    return x if x.dtype == torch.bool else x > 0.5


def _dice_from_counts(inter: torch.Tensor, size_a: torch.Tensor, size_b: torch.Tensor) -> torch.Tensor:
    return (2 * inter + EPS) / (size_a + size_b + EPS)


def _iou_from_counts(inter: torch.Tensor, size_a: torch.Tensor, size_b: torch.Tensor) -> torch.Tensor:
    return inter / (size_a + size_b - inter + EPS)


def _counts(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample |a∧b|, |a|, |b| over the last two dims (leading dims broadcast), float32."""
    a, b = binarize(a), binarize(b)
    inter = (a & b).sum((-2, -1)).float()
    return inter, a.sum((-2, -1)).float(), b.sum((-2, -1)).float()


def dice(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Dice of masks `...xHxW` vs `...xHxW` (leading dims broadcast) -> `...`; empty vs empty = 1."""
    return _dice_from_counts(*_counts(a, b))


def iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of masks `...xHxW` vs `...xHxW` (leading dims broadcast) -> `...`; empty vs empty = 0."""
    return _iou_from_counts(*_counts(a, b))


def _as_float(masks: torch.Tensor) -> torch.Tensor:
    """Masks `...xKxHxW` -> `...xKx(HW)` float32 in {0,1}, binarised straight into float (the fast path on CPU)."""
    flat = masks.flatten(-2)
    if flat.dtype == torch.bool:
        return flat.view(torch.uint8).float()
    return torch.gt(flat, 0.5, out=torch.empty(flat.shape, dtype=torch.float32, device=flat.device))


def _mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batched matrix product in float32 even under autocast (bf16 would round counts above 256)."""
    with torch.autocast(a.device.type, enabled=False):
        return a @ b


def _pairs(fn, inter: torch.Tensor, size_a: torch.Tensor, size_b: torch.Tensor) -> torch.Tensor:
    """Apply a count formula to overlaps `...xMxR` with sizes `...xM` (rows) and `...xR` (columns)."""
    return fn(inter, size_a[..., :, None], size_b[..., None, :])


def pairwise_dice(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Dice of every pair: `BxMxHxW` x `BxRxHxW` -> `BxMxR` (any leading dims)."""
    fa, fb = _as_float(a), _as_float(b)  # ...xMx(HW), ...xRx(HW)
    return _pairs(_dice_from_counts, _mm(fa, fb.transpose(-1, -2)), fa.sum(-1), fb.sum(-1))


def pairwise_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of every pair: `BxMxHxW` x `BxRxHxW` -> `BxMxR` (any leading dims)."""
    fa, fb = _as_float(a), _as_float(b)  # ...xMx(HW), ...xRx(HW)
    return _pairs(_iou_from_counts, _mm(fa, fb.transpose(-1, -2)), fa.sum(-1), fb.sum(-1))


# ------------------------------------------------------------------------------------------------
# Input checks


def _squeeze_channel(x: torch.Tensor, dims: int, name: str) -> torch.Tensor:
    """Accept a singleton channel right before HxW (the datasets' `BxRx1xHxW`); check the rank."""
    if x.dim() == dims + 1 and x.shape[-3] == 1:
        x = x.squeeze(-3)
    if x.dim() != dims:
        raise ValueError(f"{name}: expected {dims} dims, got shape {tuple(x.shape)}")
    return x


def _check_valid(valid: torch.Tensor | None, shape: torch.Size, device: torch.device, name: str) -> torch.Tensor:
    """A `BxN` bool validity mask (None = all valid); every image needs at least one valid entry."""
    if valid is None:
        return torch.ones(shape, dtype=torch.bool, device=device)
    if valid.shape != shape:
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(valid.shape)}")
    valid = valid.to(device=device, dtype=torch.bool)
    if not bool(valid.any(1).all()):
        bad = torch.nonzero(~valid.any(1)).flatten().tolist()
        what = "rater" if name == "valid" else "prediction"
        raise ValueError(f"{name}: image(s) {bad} of the batch have no valid {what}")
    return valid


def _check_raters(
    raters: torch.Tensor, valid: torch.Tensor | None, image_shape: torch.Size
) -> tuple[torch.Tensor, torch.Tensor]:
    """Raters `BxRxHxW` (or `BxRx1xHxW`) and valid `BxR` bool (None = all) -> (raters, valid)."""
    raters = _squeeze_channel(raters, 4, "raters")
    if (raters.shape[0],) + raters.shape[2:] != image_shape:
        raise ValueError(f"raters: shape {tuple(raters.shape)} does not match images {tuple(image_shape)}")
    return raters, _check_valid(valid, raters.shape[:2], raters.device, "valid")


# ------------------------------------------------------------------------------------------------
# Set metrics (MBH-Seg 2025 evaluator, binary mode)


def _pair_mean(d: torch.Tensor, va: torch.Tensor, vb: torch.Tensor) -> torch.Tensor:
    """Mean of `BxAxC` pair values over the valid rows (va `BxA`) and columns (vb `BxC`): `B`."""
    va, vb = va.float(), vb.float()
    return (d * va[:, :, None] * vb[:, None, :]).sum((1, 2)) / (va.sum(1) * vb.sum(1))


def _ged(
    iou_pl: torch.Tensor,
    iou_ll: torch.Tensor,
    iou_pp: torch.Tensor,
    pred_fg: torch.Tensor,
    rater_fg: torch.Tensor,
    valid: torch.Tensor,
    pred_valid: torch.Tensor,
) -> torch.Tensor:
    """GED per image with d = 1 - IoU over ordered pairs (diagonal included) and the challenge's empty rules.

    iou_pl `BxMxR`, iou_ll `BxRxR`, iou_pp `BxMxM`; pred_fg / rater_fg `B`: some (valid) mask has foreground.
    """
    cross = _pair_mean(1 - iou_pl, pred_valid, valid)
    within_l = _pair_mean(1 - iou_ll, valid, valid)
    within_p = _pair_mean(1 - iou_pp, pred_valid, pred_valid)
    ged = 2 * cross - within_l - within_p
    ged = torch.where(pred_fg ^ rater_fg, torch.ones_like(ged), ged)
    return torch.where(~pred_fg & ~rater_fg, torch.zeros_like(ged), ged)


def _dice_match(dice_pl: torch.Tensor, valid: torch.Tensor, pred_valid: torch.Tensor) -> torch.Tensor:
    """Hungarian matching on 1 - dice (valid raters x valid predictions); unassigned raters take their best."""
    scores = dice_pl.detach().transpose(1, 2).double().cpu().numpy()  # BxRxM
    keep, keep_p = valid.cpu().numpy(), pred_valid.cpu().numpy()
    out = np.empty(len(scores))
    for b in range(len(scores)):  # scipy works on one small RxM matrix at a time
        d = scores[b][keep[b]][:, keep_p[b]]  # R_valid x M_valid
        rows, cols = linear_sum_assignment(1 - d)
        per_rater = d.max(1)  # rows left unassigned when R_valid > M keep their best prediction
        per_rater[rows] = d[rows, cols]
        out[b] = per_rater.mean()
    return torch.as_tensor(out, dtype=dice_pl.dtype, device=dice_pl.device)


def _levels(x: torch.Tensor, thresholds: Sequence[float]) -> torch.Tensor:
    """How many thresholds each value strictly exceeds: `x > t_k` is `level > k`. Same shape, int32."""
    level = torch.zeros(x.shape, dtype=torch.int32, device=x.device)
    step = torch.empty_like(level)
    for t in thresholds:  # five thresholds, not pixels
        level += torch.gt(x, t, out=step)
    return level


def _dice_soft(
    preds: torch.Tensor, flat_raters: torch.Tensor, valid: torch.Tensor, pred_valid: torch.Tensor
) -> torch.Tensor:
    """Mean over t in SOFT_THRESHOLDS of dice(mean(P) > t, mean(L) > t); mean(P) of the raw values.

    preds `BxMxHxW`, flat_raters `BxRx(HW)` float 0/1, valid `BxR`. The thresholds are nested, so all
    five Dice come from one joint histogram of (level of mean(P), level of mean(L)) per image.
    """
    v = valid.float()  # BxR
    vp = pred_valid.float()  # BxM
    mean_p = (preds.float() * vp[..., None, None]).sum(1).flatten(1) / vp.sum(1, keepdim=True)  # Bx(HW)
    mean_l = _mm(v[:, None, :], flat_raters)[:, 0] / v.sum(1, keepdim=True)  # Bx(HW): mean of the valid raters
    n, batch = len(SOFT_THRESHOLDS) + 1, len(mean_p)
    offset = torch.arange(batch, dtype=torch.int32, device=mean_p.device)[:, None] * n * n  # Bx1
    pair = _levels(mean_p, SOFT_THRESHOLDS) * n + _levels(mean_l, SOFT_THRESHOLDS) + offset  # Bx(HW)
    joint = torch.bincount(pair.flatten(), minlength=batch * n * n).view(batch, n, n).float()
    # at_least[b, i, j]: pixels with level(mean(P)) >= i and level(mean(L)) >= j
    at_least = joint.flip((1, 2)).cumsum(1).cumsum(2).flip((1, 2))  # Bxnxn
    k = torch.arange(1, n, device=joint.device)  # threshold k-1 is exceeded by level >= k
    return _dice_from_counts(at_least[:, k, k], at_least[:, k, 0], at_least[:, 0, k]).mean(1)


def set_metrics(
    preds: torch.Tensor,
    raters: torch.Tensor,
    valid: torch.Tensor | None = None,
    pred_valid: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Set metrics of a prediction set against the valid raters, per image (docs/metrics.md).

    Args:
        preds: `BxMxHxW` probabilities or binary masks (`BxMx1xHxW` accepted).
        raters: `BxRxHxW` binary masks (`BxRx1xHxW` accepted).
        valid: `BxR` bool, None = all valid; invalid raters are excluded from everything. Every
            image needs at least one valid rater; images may have different numbers of them.
        pred_valid: `BxM` bool, None = all; the same for predictions (images may have prediction sets
            of different sizes, e.g. one prediction per valid rater followed).

    Returns:
        `{GED, Dice_max, Dice_max_reverse, Dice_match, Dice_soft}`, each a `B` float32 tensor on
        the inputs' device. GED: lower is better, 0 when no mask of either set has foreground, 1 when
        exactly one set has none. Dice_max: mean over predictions of the best rater; Dice_max_reverse:
        mean over raters of the best prediction; Dice_match: Hungarian assignment (ties may be broken
        either way); Dice_soft: thresholds 0.1/0.3/0.5/0.7/0.9 of the mean maps.
    """
    preds = _squeeze_channel(preds, 4, "preds")
    if preds.shape[1] == 0:
        raise ValueError("preds: the prediction set is empty (M = 0)")
    raters, valid = _check_raters(raters, valid, preds.shape[:1] + preds.shape[2:])
    pred_valid = _check_valid(pred_valid, preds.shape[:2], preds.device, "pred_valid")
    fp, fl = _as_float(preds), _as_float(raters)  # BxMx(HW), BxRx(HW)
    i_pl, i_pp, i_ll = _mm(fp, fl.transpose(1, 2)), _mm(fp, fp.transpose(1, 2)), _mm(fl, fl.transpose(1, 2))
    s_p, s_l = i_pp.diagonal(dim1=1, dim2=2), i_ll.diagonal(dim1=1, dim2=2)  # BxM, BxR mask sizes
    dice_pl = _pairs(_dice_from_counts, i_pl, s_p, s_l)  # BxMxR
    pred_fg, rater_fg = ((s_p > 0) & pred_valid).any(1), ((s_l > 0) & valid).any(1)  # B
    ged = _ged(
        _pairs(_iou_from_counts, i_pl, s_p, s_l),
        _pairs(_iou_from_counts, i_ll, s_l, s_l),
        _pairs(_iou_from_counts, i_pp, s_p, s_p),
        pred_fg,
        rater_fg,
        valid,
        pred_valid,
    )
    v, vp = valid.float(), pred_valid.float()
    best_rater = dice_pl.masked_fill(~valid[:, None, :], -1.0).amax(2)  # BxM, invalid raters never win
    best_pred = dice_pl.masked_fill(~pred_valid[:, :, None], -1.0).amax(1)  # BxR, likewise predictions
    return {
        "GED": ged,
        "Dice_max": (best_rater * vp).sum(1) / vp.sum(1),
        "Dice_max_reverse": (best_pred * v).sum(1) / v.sum(1),
        "Dice_match": _dice_match(dice_pl, valid, pred_valid),
        "Dice_soft": _dice_soft(preds, fl, valid, pred_valid),
    }


# ------------------------------------------------------------------------------------------------
# Personalised metrics


def neutral_mask(raters: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Majority mask `BxHxW` bool: the valid raters' mean is > 0.5 (a 50/50 split is background)."""
    raters, valid = _check_raters(raters, valid, raters.shape[:1] + raters.shape[-2:])
    v = valid.float()[..., None, None]  # BxRx1x1
    votes = (binarize(raters).float() * v).sum(1)  # BxHxW
    return 2 * votes > v.sum(1)  # exact integer form of votes / n_valid > 0.5


def personalised_metrics(
    pred: torch.Tensor, raters: torch.Tensor, valid: torch.Tensor | None, followed: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Does one prediction follow the rater the user agrees with? Per image (docs/metrics.md,
    docs/evaluation.md#validation-protocol).

    Args:
        pred: `BxHxW` probabilities or binary mask (`Bx1xHxW` accepted).
        raters: `BxRxHxW` binary masks; valid: `BxR` bool or None (all valid).
        followed: `BxHxW` mask of the followed rater (AESPA) or the preference target (SPA).

    Returns:
        `B` tensors: Dice_follow = dice(p, r), IoU_follow, Dice_neutral = dice(p, n) with n the
        majority mask, IoU_neutral, Delta_follow_vs_neutral = Dice_follow - Dice_neutral,
        Gain_over_consensus = dice(p, r) - dice(n, r), Dice_personal_mean = mean over valid raters of
        dice(p, ·) (the names of conf/metrics.py).
    """
    pred = _squeeze_channel(pred, 3, "pred")
    followed = _squeeze_channel(followed, 3, "followed")
    if followed.shape != pred.shape:
        raise ValueError(f"followed: shape {tuple(followed.shape)} does not match pred {tuple(pred.shape)}")
    raters, valid = _check_raters(raters, valid, pred.shape)
    neutral = neutral_mask(raters, valid)  # BxHxW
    dice_follow, dice_neutral = dice(pred, followed), dice(pred, neutral)
    iou_neutral = iou(pred, neutral)
    v = valid.float()
    per_rater = dice(pred[:, None], raters)  # BxR
    return {
        "Dice_follow": dice_follow,
        "IoU_follow": iou(pred, followed),
        "Dice_neutral": dice_neutral,
        "IoU_neutral": iou_neutral,
        "Delta_follow_vs_neutral": dice_follow - dice_neutral,
        "Gain_over_consensus": dice_follow - dice(neutral, followed),
        "Dice_personal_mean": (per_rater * v).sum(1) / v.sum(1),
    }


# ------------------------------------------------------------------------------------------------
# Surface metrics: normalised surface Dice (docs/metrics.md#surface-dice)

NSD_TOLERANCE = 2.0  # mm: the tolerance of the CVPR 2025 interactive-segmentation challenge's NSD
_AT_TOLERANCE = 1 + 1e-6  # a distance equal to the tolerance counts as within it (d <= tolerance), float error aside


def boundary(masks: torch.Tensor, dims: int) -> torch.Tensor:
    """The boundary elements of masks over their last `dims` axes (`...xHxW`: 2, `...xDxHxW`: 3) -> bool, same shape:
    foreground elements with a background neighbour along some axis (4- / 6-connectivity), the outside of the grid
    counting as background (the edges of a binary erosion with a cross, as MONAI's `get_mask_edges` finds them)."""
    fg = binarize(masks)
    interior = fg.clone()
    for axis in range(fg.dim() - dims, fg.dim()):
        n = fg.shape[axis]
        before, after = torch.zeros_like(fg), torch.zeros_like(fg)
        before.narrow(axis, 1, n - 1).copy_(fg.narrow(axis, 0, n - 1))  # the neighbour at i - 1
        after.narrow(axis, 0, n - 1).copy_(fg.narrow(axis, 1, n - 1))  # the neighbour at i + 1
        interior &= before & after
    return fg & ~interior


def _tolerance_kernels(spacing: torch.Tensor, tolerance: float) -> torch.Tensor:
    """Nx1xK1x..xKd float {0,1}: per row of `spacing` (Nxd, mm per element along each axis), the grid offsets
    within `tolerance` mm of the centre, in kernels padded to the widest row's size."""
    n, dims = spacing.shape
    spacing = spacing.double()
    reach = torch.floor(tolerance * _AT_TOLERANCE / spacing).amax(0).long().tolist()  # half-widths, in elements
    axes = [torch.arange(-r, r + 1, dtype=torch.float64, device=spacing.device) for r in reach]
    offsets = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)  # K1x..xKdxd
    squared = (offsets[None] * spacing.view(n, *[1] * dims, dims)).pow(2).sum(-1)  # NxK1x..xKd, mm^2
    return (squared <= (tolerance * _AT_TOLERANCE) ** 2)[:, None].float()


def _near(edges: torch.Tensor, spacing: torch.Tensor, tolerance: float) -> torch.Tensor:
    """Nx(spatial) bool: the grid elements within `tolerance` mm of an element of `edges` (Nx(spatial) bool) — a
    dilation by each row's own ellipsoid, one grouped convolution for the batch (float32: exact counts)."""
    kernels = _tolerance_kernels(spacing, tolerance)
    dims = edges.dim() - 1
    conv = (F.conv1d, F.conv2d, F.conv3d)[dims - 1]
    with torch.autocast(edges.device.type, enabled=False):
        hits = conv(edges.float()[None], kernels, padding=[k // 2 for k in kernels.shape[2:]], groups=len(edges))
    return hits[0] > 0.5


def _elements(x: torch.Tensor) -> torch.Tensor:
    """`B` float32: the number of True elements of each sample of `x` (`Bx...` bool)."""
    return x.flatten(1).sum(1).float()


def surface_dice(
    pred: torch.Tensor,
    ref: torch.Tensor,
    spacing: torch.Tensor | Sequence[float] | None = None,
    tolerance: float = NSD_TOLERANCE,
) -> torch.Tensor:
    """Normalised surface Dice (NSD) at `tolerance` mm, per sample (docs/metrics.md#surface-dice).

    Args:
        pred, ref: `BxHxW` (2-D) or `BxDxHxW` (3-D) masks or probabilities (binarised > 0.5), the same shape.
        spacing: element size in mm along each spatial axis, `Bxd` (per sample) or `d` (all samples); None: 1.
        tolerance: mm, finite and >= 0.

    Returns:
        `B` float32: (|∂P near ∂R| + |∂R near ∂P|) / (|∂P| + |∂R|), where ∂X are the boundary elements of X
        (`boundary`) and "near" means within `tolerance` of some element of the other boundary (Euclidean distance
        between element centres, in mm; equal counts as within). Both masks empty: 1 (as `dice`); exactly one empty: 0.
    """
    if pred.shape != ref.shape or pred.dim() not in (3, 4):
        raise ValueError(
            f"pred, ref: expected the same BxHxW or BxDxHxW shape, got {tuple(pred.shape)}, {tuple(ref.shape)}"
        )
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance: expected a finite number >= 0 (mm), got {tolerance}")
    b, dims = pred.shape[0], pred.dim() - 1
    spacing = torch.ones(dims) if spacing is None else torch.as_tensor(spacing, dtype=torch.float64)
    spacing = spacing.to(pred.device).double().expand(b, dims) if spacing.dim() == 1 else spacing.to(pred.device)
    if spacing.shape != (b, dims) or not bool((spacing > 0).all()) or not bool(torch.isfinite(spacing).all()):
        raise ValueError(f"spacing: expected {dims} or {b}x{dims} positive sizes (mm), got {tuple(spacing.shape)}")
    if b == 0:
        return torch.zeros(0, device=pred.device)
    edges_p, edges_r = boundary(pred, dims), boundary(ref, dims)
    near_p, near_r = _near(edges_p, spacing, tolerance), _near(edges_r, spacing, tolerance)
    size_p, size_r = _elements(edges_p), _elements(edges_r)  # 0 only for an empty mask: any foreground has a boundary
    nsd = (_elements(edges_p & near_r) + _elements(edges_r & near_p)) / (size_p + size_r).clamp(min=1)
    nsd = torch.where((size_p == 0) & (size_r == 0), torch.ones_like(nsd), nsd)  # both empty: 1
    return torch.where((size_p == 0) != (size_r == 0), torch.zeros_like(nsd), nsd)  # one empty: 0


def spacing_of(affine: np.ndarray) -> tuple[float, ...]:
    """Element size in mm along each array axis of a NIfTI image from its 4x4 affine (the lengths of its columns)."""
    return tuple(float(v) for v in np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0))


def surface_dice_case(
    pred: np.ndarray | torch.Tensor,
    ref: np.ndarray | torch.Tensor,
    affine: np.ndarray,
    tolerance: float = NSD_TOLERANCE,
) -> float:
    """NSD of one 3-D case (`DxHxW`-like, any axis order, spacing from the NIfTI `affine` of that array order) at
    `tolerance` mm: `surface_dice` on the bounding box of both masks, grown by the tolerance (the rest of the volume
    holds no boundary), so a small lesion in a large scan costs little."""
    pred, ref = (torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x) > 0 for x in (pred, ref))
    if pred.shape != ref.shape or pred.dim() != 3:
        raise ValueError(f"pred, ref: expected the same 3-D shape, got {tuple(pred.shape)}, {tuple(ref.shape)}")
    spacing = torch.tensor(spacing_of(affine), dtype=torch.float64)
    both = (pred | ref).nonzero()
    if len(both):
        margin = torch.ceil(tolerance * _AT_TOLERANCE / spacing).long() + 1
        low = (both.amin(0) - margin).clamp(min=0).tolist()
        high = (both.amax(0) + margin + 1).tolist()
        box = tuple(slice(lo, hi) for lo, hi in zip(low, high))
        pred, ref = pred[box], ref[box]
    return float(surface_dice(pred[None], ref[None], spacing, tolerance)[0])


# ------------------------------------------------------------------------------------------------
# Interactive metrics


def _threshold_name(t: float) -> str:
    return f"{t:.2f}" if round(t, 2) == t else str(t)


def noc(
    dice_per_click: torch.Tensor, thresholds: Sequence[float] = NOC_THRESHOLDS, budget: int | None = None
) -> dict[str, torch.Tensor]:
    """Number of clicks to reach each Dice threshold, per image.

    Args:
        dice_per_click: `BxN`; column k-1 is the Dice of the prediction made with k clicks.
        thresholds: Dice levels τ; reached when Dice >= τ.
        budget: clicks allowed (default N); only the first min(budget, N) columns count.

    Returns:
        `NoC@τ` (`B` float: first k reaching τ, the budget when never reached) and `NoF@τ`
        (`B` float, 1 = failed to reach τ within the budget, else 0). Averaged by the accumulator
        NoF@τ is the failure rate; its `compute("sum")` is the failure count.
    """
    if dice_per_click.dim() != 2 or dice_per_click.shape[1] == 0:
        raise ValueError(f"dice_per_click: expected BxN with N >= 1, got {tuple(dice_per_click.shape)}")
    budget = dice_per_click.shape[1] if budget is None else int(budget)
    if budget < 1:
        raise ValueError(f"budget: must be >= 1, got {budget}")
    scores = dice_per_click[:, :budget]  # BxN'
    out: dict[str, torch.Tensor] = {}
    for t in thresholds:  # a handful of thresholds, not pixels
        reached = scores >= t  # BxN'
        first = reached.int().argmax(1) + 1  # 1-based index of the first True (argmax of 0/1 is the first max)
        failed = ~reached.any(1)
        name = _threshold_name(t)
        out[f"NoC@{name}"] = torch.where(failed, torch.full_like(first, budget), first).float()
        out[f"NoF@{name}"] = failed.float()
    return out


def click_auc(curve: torch.Tensor) -> torch.Tensor:
    """Area under per-click score curves `BxN` (N >= 2; column k: the score after the (k+1)-th click) by the
    trapezoid rule, one unit per click, not divided by the span: the CVPR 2025 interactive-segmentation challenge's
    DSC_AUC / NSD_AUC (its five click predictions give a range of [0, 4]) -> `B`."""
    if curve.dim() != 2 or curve.shape[1] < 2:
        raise ValueError(f"curve: expected BxN with N >= 2, got {tuple(curve.shape)}")
    return torch.trapezoid(curve.float(), dx=1.0, dim=1)


# ------------------------------------------------------------------------------------------------
# Accumulation over a split (and across ranks)


class MetricAccumulator:
    """Running per-key (and per-round) sums and counts of per-image metric values.

    `update({"Dice": B-tensor, ...}, round=t)` adds every image's value; `compute()` returns the
    means, `{key: mean}` without rounds or `{round: {key: mean}}` with them (rounds must then be
    given on every update). `compute("sum")`, `compute("count")` and `compute("nan_count")` give
    the other statistics (e.g. `NoF@0.90` summed is a failure count).

    NaN policy: NaN values are left out of both the sum and the count (the mean is over the finite
    images) and are counted per key in `nan_count`; a key with no counted value has mean NaN. The
    metrics of this module do not produce NaN (empty masks have fixed values).

    Distributed: `all_reduce(device)` returns a new accumulator whose sums and counts are summed over
    all ranks, so every image counts once however the split was sharded (ranks may have seen
    different keys or rounds); without an initialised process group it returns a copy.
    `merge(other)` adds another accumulator in place (what all_reduce does across ranks).
    """

    _STATS = ("sum", "count", "nan_count")

    def __init__(self) -> None:
        self._state: dict[tuple[int | None, str], list[float]] = {}

    def reset(self) -> None:
        self._state.clear()

    def update(self, values: Mapping[str, torch.Tensor | float], round: int | None = None) -> None:
        """Add per-image values (`B` tensors or scalars) for each key, under `round` if given."""
        if self._state and (round is None) != (next(iter(self._state))[0] is None):
            raise ValueError("MetricAccumulator: give `round` on every update or on none")
        for key, value in values.items():
            v = torch.as_tensor(value).detach().reshape(-1).double().cpu()
            nan = torch.isnan(v)
            self._add((round, key), [v[~nan].sum().item(), float((~nan).sum()), float(nan.sum())])

    def _add(self, slot: tuple[int | None, str], stats: Sequence[float]) -> None:
        acc = self._state.setdefault(slot, [0.0, 0.0, 0.0])
        for i, s in enumerate(stats):
            acc[i] += s

    def merge(self, other: MetricAccumulator) -> MetricAccumulator:
        """Add another accumulator's sums and counts into this one; returns self."""
        for slot, stats in other._state.items():
            self._add(slot, stats)
        return self

    def all_reduce(
        self, device: torch.device | None = None, group: dist.ProcessGroup | None = None
    ) -> MetricAccumulator:
        """Sums and counts over all ranks of `group` (a copy when torch.distributed is not initialised).

        `device`: where the reduction's buffer lives, the rank's own device (NCCL reduces CUDA tensors only).
        """
        out = copy.deepcopy(self)
        if not (dist.is_available() and dist.is_initialized()):
            return out
        gathered: list[list | None] = [None] * dist.get_world_size(group)
        dist.all_gather_object(gathered, list(self._state), group=group)
        slots = list(dict.fromkeys(s for rank_slots in gathered for s in rank_slots))  # same order on every rank
        if not slots:
            return out
        rows = [self._state.get(s, [0.0, 0.0, 0.0]) for s in slots]
        packed = torch.tensor(
            rows, dtype=torch.float64, device=device or torch.device("cpu")
        )  # Sx3: sum, count, nan_count
        dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=group)
        out._state = {s: row for s, row in zip(slots, packed.cpu().tolist())}
        return out

    def compute(self, stat: str = "mean") -> dict:
        """`mean` (default), `sum`, `count` or `nan_count` per key, nested by round when rounds were used."""
        if stat not in ("mean",) + self._STATS:
            raise ValueError(f"stat: expected mean, sum, count or nan_count, got {stat!r}")
        per_round: dict[int | None, dict[str, float]] = {}
        for (rnd, key), (total, count, nans) in self._state.items():
            if stat == "mean":
                value = total / count if count else float("nan")
            else:
                value = {"sum": total, "count": count, "nan_count": nans}[stat]
            per_round.setdefault(rnd, {})[key] = value
        if list(per_round) in ([], [None]):
            return per_round.get(None, {})
        return {rnd: per_round[rnd] for rnd in sorted(per_round)}


# ------------------------------------------------------------------------------------------------
# Command line: whole-case scores of a prediction folder


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from volumes.scoring import CONVENTIONS  # nibabel: only the command needs it

    p = OneLineParser(prog="multirater_metrics.py", description="Score MBH-Seg predictions per case, then the mean.")
    p.add_argument("-pred", required=True, help="prediction folder: <case>.nii.gz per case (uint8 classes 0..5)")
    p.add_argument("-gt", required=True, help="ground truth: <case>/label_annot_<id>.nii.gz (and image.nii.gz)")
    p.add_argument(
        "-convention",
        choices=CONVENTIONS,
        default="challenge",
        help="challenge: the MBH-Seg 2025 evaluator's rules (class-averaged Dice, empty-label rule, GED over 5 "
        "classes); plain: this project's definitions on foreground masks",
    )
    p.add_argument(
        "-scores",
        default=None,
        help="the CSV of per-case scores (default: scores_<name of PRED>.csv beside PRED, outside the submission)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    from volumes.scoring import KEYS, mean_row, score_folder, scores_path, write_scores  # nibabel: the command's

    args = parse_args(argv)
    path = scores_path(Path(args.pred), args.scores)  # an unwritable place is refused before anything is computed
    rows = score_folder(args.pred, args.gt, args.convention)
    write_scores(rows, path)
    mean = mean_row(rows)
    print(f"{len(rows)} cases ({args.convention} convention) -> {path}")
    print("  ".join(f"{k} {mean[k]:.4f}" for k in KEYS), file=sys.stdout)
    return mean


if __name__ == "__main__":
    run_cli(main)
