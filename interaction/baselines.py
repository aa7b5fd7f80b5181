"""Baselines without a network, in the AESPA protocol (the same followed raters, clicks and metrics):

* `consensus`     the valid raters' majority mask, whatever the clicks;
* `click_editor`  the majority mask, each click painting a disk of `-editor_radius` px with its label (later
                  clicks over earlier ones): what a plain mask editor gives a user who clicks where it is wrong.

They learn nothing: `python val.py -mode click_editor` evaluates them without -weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from conf.options import non_negative, option
from interaction.aespa import FollowingUser, FollowOptions
from interaction.clicks import paint_clicks
from interaction.mode import Mode
from multirater_metrics import neutral_mask
from pipeline.batch import Batch


@dataclass(frozen=True)
class EditorOptions(FollowOptions):
    editor_radius: int = option(3, "radius of the disk each click paints", check=non_negative)


def consensus_rule(batch: Batch, user: FollowingUser, state) -> torch.Tensor:
    """The majority mask of each row's valid raters, PxSxS {0, 1}."""
    return neutral_mask(user.raters, user.valid).float()


def click_editor_rule(batch: Batch, user: FollowingUser, state) -> torch.Tensor:
    """The majority mask with every click so far painted as a disk of its label, PxSxS {0, 1}."""
    start = neutral_mask(user.raters, user.valid).float()
    return paint_clicks(start, state.clicks.points, state.clicks.labels, user.options.editor_radius)


CONSENSUS = Mode(
    name="consensus",
    summary="baseline: the raters' majority mask, whatever the clicks",
    user=FollowingUser,
    options=FollowOptions,
    rule=consensus_rule,
)
CLICK_EDITOR = Mode(
    name="click_editor",
    summary="baseline: the raters' majority mask, each click painting a disk of its label",
    user=FollowingUser,
    options=EditorOptions,
    rule=click_editor_rule,
)
