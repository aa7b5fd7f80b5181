"""Baselines without a network, in the AESPA protocol (the same followed raters, clicks and metrics):

* `consensus`     the valid raters' majority mask, whatever the clicks;
* `click_editor`  the majority mask, each click painting a disk of `-editor_radius` px with its label (later
                  clicks over earlier ones): what a plain mask editor gives a user who clicks where it is wrong.

They learn nothing: `python val.py -mode click_editor` evaluates them without -weights. A box prompt is ignored.
"""

from __future__ import annotations

import torch

from batch import Batch
from function_aespa import FollowedRaterUser
from modes import Mode
from multirater_metrics import neutral_mask


def consensus_rule(batch: Batch, user: FollowedRaterUser, state) -> torch.Tensor:
    """The majority mask of each row's valid raters, PxSxS {0, 1}."""
    return neutral_mask(user.raters, user.valid).float()


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


def click_editor_rule(batch: Batch, user: FollowedRaterUser, state) -> torch.Tensor:
    """The majority mask with every click so far painted as a disk of its label, PxSxS {0, 1}."""
    start = neutral_mask(user.raters, user.valid).float()
    return paint_clicks(start, state.clicks.points, state.clicks.labels, user.loop.editor_radius)


CONSENSUS = Mode(
    name="consensus",
    summary="baseline: the raters' majority mask, whatever the clicks",
    user=FollowedRaterUser,
    rule=consensus_rule,
)
CLICK_EDITOR = Mode(
    name="click_editor",
    summary="baseline: the raters' majority mask, each click painting a disk of its label",
    user=FollowedRaterUser,
    rule=click_editor_rule,
)
