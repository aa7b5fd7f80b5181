"""Click simulation shared by the SPA and AESPA loops (docs/interaction.md#clicks).

Masks and maps are BxHxW tensors of the SxS model input. A click is returned as
`points` Bx2 float **(x, y)** = (column, row) integer pixel indices (SAM adds the 0.5 itself)
and `labels` B long (1 positive, 0 negative). Everything is batched on the inputs' device;
the only per-device branch is the distance transform (scipy on CPU, an exact torch version elsewhere).

Randomness: `generator` is a torch.Generator (drawn on its own device, then moved, so a CPU generator
gives the same clicks on every device) or an `rng.KeyedRandom` (per-image streams); see `rng.uniform`.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from scipy import ndimage

from pipeline.rng import uniform  # every random draw goes through rng (keyed per image in validation)

TOPK, CENTRE = "topk", "center"  # -click_strategy: one of the 20 largest errors; RITM's centre click
STRATEGIES = (TOPK, CENTRE)
# NoC (docs/evaluation.md#validation-protocol), first clicks and the demo's suggestions use the centre click
NOC_STRATEGY = CENTRE


def _binary(t: torch.Tensor) -> torch.Tensor:
    """{0,1}/bool masks or probabilities -> bool (probabilities binarised at > 0.5)."""
    return t > 0.5 if t.is_floating_point() else t != 0


def _check(name: str, t: torch.Tensor, like: torch.Tensor) -> None:
    if t.shape != like.shape:
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(like.shape)} (BxHxW)")


def _to_points(flat: torch.Tensor, width: int) -> torch.Tensor:
    """Flat pixel indices B -> Bx2 float (x = column, y = row)."""
    return torch.stack([flat % width, torch.div(flat, width, rounding_mode="floor")], dim=1).float()


def _gather(t: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """Value of BxHxW `t` at flat pixel index B -> B."""
    return t.flatten(1).gather(1, flat[:, None])[:, 0]


# ------------------------------------------------------------------------------------------------
# Exact squared Euclidean distance transforms (distance to the nearest False pixel, the outside of
# the image counting as False, i.e. the image is zero-padded by one pixel).


def _edt2_numpy(mask: np.ndarray) -> np.ndarray:
    """BxHxW bool -> BxHxW float32 squared distances with one scipy call.

    The images are stacked into one tall image, each followed by a zero row and a zero column
    (plus a zero row/column in front): the nearest zero of a pixel is then always inside its own
    padded frame, so one EDT equals the per-image padded EDTs.
    """
    b, h, w = mask.shape
    tall = np.zeros((b, h + 1, w + 1), dtype=bool)
    tall[:, :h, :w] = mask
    tall = np.pad(tall.reshape(b * (h + 1), w + 1), ((1, 0), (1, 0)))  # (B*(H+1)+1)x(W+2)
    dist = ndimage.distance_transform_edt(tall)[1:, 1:].reshape(b, h + 1, w + 1)[:, :h, :w]
    return np.rint(dist * dist).astype(np.float32)  # exact integers


def _edt2_scipy(mask: torch.Tensor) -> torch.Tensor:
    """BxHxW bool -> BxHxW float32 squared distances; scipy releases the GIL, so groups of images
    run on `torch.get_num_threads()` threads."""
    groups = np.array_split(mask.cpu().numpy(), max(1, min(torch.get_num_threads(), mask.shape[0])))
    with ThreadPoolExecutor(len(groups)) as pool:
        parts = list(pool.map(_edt2_numpy, groups))
    return torch.from_numpy(np.concatenate(parts)).to(mask.device)


def _run_lengths(mask: torch.Tensor) -> torch.Tensor:
    """BxHxW bool -> int32 distance along the last axis to the nearest False pixel or the border."""
    n = mask.shape[-1]
    pos = torch.arange(n, dtype=torch.int32, device=mask.device)
    before = torch.where(mask, -1, pos).cummax(dim=-1).values  # last zero at or before (-1: border)
    after = torch.where(mask, n, pos).flip(-1).cummin(dim=-1).values.flip(-1)  # next zero (n: border)
    return torch.minimum(pos - before, after - pos)


def _edt2_torch(mask: torch.Tensor) -> torch.Tensor:
    """Same as `_edt2_scipy` in torch ops: exact separable EDT, d2(i,j) = min_j' g2(i,j') + (j-j')^2
    with g the vertical distance. min(g, horizontal distance)^2 bounds d2, so only shifts |j-j'| < R
    with R^2 >= that bound's maximum can improve it: R ~ the deepest region's depth, not the width."""
    g2 = _run_lengths(mask.transpose(1, 2).contiguous()).transpose(1, 2).float().square()  # BxHxW
    d2 = torch.minimum(g2, _run_lengths(mask).float().square())  # upper bound, exact on the row axis
    reach = int(d2.max().sqrt().ceil()) if d2.numel() else 0
    for s in range(1, min(reach, mask.shape[2])):  # candidates j' = j - s and j' = j + s
        torch.minimum(d2[..., s:], g2[..., :-s] + s * s, out=d2[..., s:])
        torch.minimum(d2[..., :-s], g2[..., s:] + s * s, out=d2[..., :-s])
    return d2


def squared_edt(mask: torch.Tensor) -> torch.Tensor:
    """BxHxW bool -> BxHxW float32 squared distance of each True pixel to the nearest False pixel or
    the image border (a pixel on the edge is at distance 1). scipy on CPU, torch elsewhere; identical."""
    return _edt2_scipy(mask) if mask.device.type == "cpu" else _edt2_torch(mask)


# ------------------------------------------------------------------------------------------------


def _topk_row_major(key: torch.Tensor, k: int) -> torch.Tensor:
    """Indices Bxk of the k largest values of Bx(HW) float32 `key`, ties to the lower index; the same
    order as a stable descending sort, at the cost of a top-k. float32 bits are mapped to int32 in
    the order of the floats, then packed with the reversed index into unique int64 keys."""
    n = key.shape[1]
    bits = (key + 0.0).view(torch.int32)  # + 0.0 turns -0.0 into 0.0 (equal floats, equal keys)
    ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).long()  # monotone in the float value
    shift = max(1, (n - 1).bit_length())
    packed = (ordered << shift) | (n - 1 - torch.arange(n, device=key.device))  # unique keys
    return n - 1 - (packed.topk(k, dim=1).values & ((1 << shift) - 1))


def topk_click(
    error: torch.Tensor,
    label_source: torch.Tensor,
    k: int = 20,
    generator: torch.Generator | None = None,
    exclude: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Original click: a pixel drawn uniformly among the k largest `error` values of each image.

    Args:
        error: BxHxW float, e.g. |reference - prediction| on probabilities.
        label_source: BxHxW {0,1} (or probabilities, > 0.5); the label is its value at the click.
        k: candidates per image (fewer when fewer eligible pixels exist).
        generator: drives the uniform choice (see module docstring).
        exclude: BxHxW bool, pixels never chosen (already clicked), unless every pixel of the
            image is excluded, in which case exclusion is ignored for that image.
    Ties in `error` are broken by the lower row-major index (stable sort), on every device.
    Returns: points Bx2 float (x, y), labels B long.
    """
    _check("label_source", label_source, error)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    b, h, w = error.shape
    key = error.detach().float().flatten(1)  # Bx(HW)
    eligible = torch.full_like(key[:, 0], h * w)  # B
    if exclude is not None:
        _check("exclude", exclude, error)
        excl = exclude.flatten(1)
        eligible = (~excl).sum(1).float()
        excl = excl & (eligible > 0)[:, None]  # nothing left: exclusion ignored
        key = key.masked_fill(excl, float("-inf"))
        eligible = torch.where(eligible > 0, eligible, float(h * w))
    order = _topk_row_major(key, min(k, h * w))  # Bxk'
    n = eligible.clamp(max=k).clamp(min=1)  # B candidates per image
    pick = (uniform((b,), error.device, generator) * n.double()).long()
    pick = torch.minimum(pick, n.long() - 1)
    flat = order.gather(1, pick[:, None])[:, 0]  # B
    return _to_points(flat, w), _binary(_gather(label_source, flat)).long()


def center_click(
    pred: torch.Tensor,
    reference: torch.Tensor,
    exclude: torch.Tensor | None = None,
    exclude_as_boundary: bool = False,
    return_has_error: bool = False,
):
    """RITM click: the pixel deepest inside the false-negative or false-positive region.

    Args:
        pred: BxHxW {0,1}/bool or probabilities (binarised at > 0.5).
        reference: BxHxW {0,1}/bool (or probabilities, > 0.5).
        exclude: BxHxW bool, already-clicked pixels; they are never chosen. By default (RITM's
            evaluation clicker) they are removed after the distance transform; with
            `exclude_as_boundary` they also count as boundary, so the next click moves away.
        return_has_error: also return a B bool flag, False where no eligible error pixel exists.
    Distances are Euclidean, the image border counts as boundary (pixels on the edge are at
    distance 1), ties go to the first pixel in row-major order, and the click is positive iff the
    false-negative region is strictly deeper (RITM). Without any eligible error pixel the fallback
    is the deepest pixel of the reference foreground, or of the background when the foreground is
    empty (the first pixel if all of it is excluded); the label is always the reference's value at
    the click.
    Returns: points Bx2 float (x, y), labels B long[, has_error B bool].
    """
    _check("reference", reference, pred)
    b, h, w = pred.shape
    p, r = _binary(pred), _binary(reference)
    keep = torch.ones_like(r) if exclude is None else ~exclude
    if exclude is not None:
        _check("exclude", exclude, pred)
    maps = torch.stack([r & ~p, p & ~r])  # 2xBxHxW: false negatives, false positives
    if exclude_as_boundary:
        maps = maps & keep
    d2 = squared_edt(maps.reshape(2 * b, h, w)).reshape(2, b, h * w) * keep.flatten(1)  # 2xBx(HW)
    best, flat = d2.max(dim=2)  # 2xB, first maximum
    positive = best[0] > best[1]
    flat = torch.where(positive, flat[0], flat[1])
    has_error = best.amax(0) > 0
    if not bool(has_error.all()):
        idx = (~has_error).nonzero()[:, 0]
        fg = r[idx] & keep[idx] if exclude_as_boundary else r[idx]
        fg = torch.where(fg.flatten(1).any(1)[:, None, None], fg, ~fg)  # empty reference: background
        flat[idx] = (squared_edt(fg).flatten(1) * keep[idx].flatten(1)).argmax(1)
    points, labels = _to_points(flat, w), _gather(r, flat).long()
    return (points, labels, has_error) if return_has_error else (points, labels)


def next_click(
    strategy: str,
    prediction: torch.Tensor,
    reference: torch.Tensor,
    label_source: torch.Tensor | None = None,
    exclude: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    k: int = 20,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dispatch `-click_strategy`: `topk` on |reference - prediction|, or `center` on their binarised
    disagreement. Labels come from `label_source` at the click (default: `reference`), so SPA can click
    on |selected - others| and label from its target. All maps BxHxW; returns points Bx2, labels B."""
    if strategy == TOPK:
        error = (reference.float() - prediction.float()).abs()
        return topk_click(error, reference if label_source is None else label_source, k, generator, exclude)
    if strategy == CENTRE:
        points, labels = center_click(prediction, reference, exclude)
        if label_source is not None:
            _check("label_source", label_source, reference)
            flat = points[:, 1].long() * reference.shape[-1] + points[:, 0].long()
            labels = _binary(_gather(label_source, flat)).long()
        return points, labels
    raise ValueError(f"unknown click strategy {strategy!r}, expected one of {STRATEGIES}")


def append_click(
    points: torch.Tensor | None,
    labels: torch.Tensor | None,
    exclude: torch.Tensor,
    new_points: torch.Tensor,
    new_labels: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Accumulate one round's clicks.

    Args:
        points: BxNx2 (x, y) or None before the first click; labels: BxN or None.
        exclude: BxHxW bool already-clicked mask (start with zeros); not modified in place.
        new_points: Bx2 (x, y) integer-valued; new_labels: B.
    Returns: points Bx(N+1)x2, labels Bx(N+1), exclude with the new pixels set.
    """
    new_points, new_labels = new_points[:, None, :], new_labels[:, None]  # Bx1x2, Bx1
    if points is not None:
        new_points = torch.cat([points, new_points.to(points.dtype)], dim=1)
        new_labels = torch.cat([labels, new_labels.to(labels.dtype)], dim=1)
    b, h, w = exclude.shape
    xy = new_points[:, -1].round().long()  # Bx2
    flat = xy[:, 1].clamp(0, h - 1) * w + xy[:, 0].clamp(0, w - 1)  # B
    exclude = exclude.flatten(1).scatter(1, flat[:, None], True).reshape(b, h, w)
    return new_points, new_labels, exclude


class ClickState:
    """Clicks so far (points BxNx2 as (x, y), labels BxN) and the already-clicked pixels BxSxS."""

    def __init__(self, batch_size: int, size: int, device: torch.device):
        self.points: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None
        self.exclude = torch.zeros(batch_size, size, size, dtype=torch.bool, device=device)

    def add(self, points: torch.Tensor, labels: torch.Tensor) -> None:
        self.points, self.labels, self.exclude = append_click(self.points, self.labels, self.exclude, points, labels)


def mask_boxes(masks: torch.Tensor, jitter: int = 0, generator=None) -> torch.Tensor:
    """Bounding boxes Bx4 float (x0, y0, x1, y1), SAM's convention, of BxHxW masks: the extreme columns and rows of
    the foreground pixels (inclusive). With `jitter` each coordinate moves by a uniform integer in [-jitter, jitter]
    (MedSAM's training perturbation), clamped to the image and kept ordered. An empty mask has no box: its row is
    NaN (the prompt encoder then stands padding tokens in for the box: the first prediction has no prompt)."""
    fg = _binary(masks)
    b, h, w = fg.shape
    cols, rows = fg.any(1), fg.any(2)  # BxW, BxH
    col_idx = torch.arange(w, device=fg.device)
    row_idx = torch.arange(h, device=fg.device)
    x0 = torch.where(cols, col_idx, w).amin(1)
    x1 = torch.where(cols, col_idx, -1).amax(1)
    y0 = torch.where(rows, row_idx, h).amin(1)
    y1 = torch.where(rows, row_idx, -1).amax(1)
    empty = ~cols.any(1)
    boxes = torch.stack([x0, y0, x1, y1], 1).float()
    boxes[empty] = float("nan")
    if jitter > 0:
        shift = torch.floor(uniform((b, 4), fg.device, generator) * (2 * jitter + 1)).float() - jitter
        boxes = boxes + shift
        limit = torch.tensor([w - 1.0, h - 1.0, w - 1.0, h - 1.0], device=fg.device)
        boxes = torch.minimum(boxes.clamp(min=0), limit)
        low = torch.minimum(boxes[:, :2], boxes[:, 2:])
        high = torch.maximum(boxes[:, :2], boxes[:, 2:])
        boxes = torch.cat([low, high], 1)
    return boxes


def paint_clicks(
    start: torch.Tensor, points: torch.Tensor | None, labels: torch.Tensor | None, radius: float
) -> torch.Tensor:
    """start PxSxS; points PxNx2 (x, y), labels PxN: every pixel whose centre lies within `radius` of a click's
    pixel centre takes that click's label, click by click. -> PxSxS."""
    if points is None:
        return start
    p, h, w = start.shape
    ys = torch.arange(h, device=start.device, dtype=torch.float32)[None, :, None]  # 1xHx1
    xs = torch.arange(w, device=start.device, dtype=torch.float32)[None, None, :]  # 1x1xW
    out = start.clone()
    for n in range(points.shape[1]):  # a handful of clicks, in order
        x, y = points[:, n, 0][:, None, None], points[:, n, 1][:, None, None]  # Px1x1
        disk = (xs - x) ** 2 + (ys - y) ** 2 <= radius**2  # PxHxW
        out = torch.where(disk, labels[:, n][:, None, None].to(out.dtype), out)
    return out
