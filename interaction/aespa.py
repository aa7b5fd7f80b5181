"""AESPA (SPEC §4.1, §4.4): clicks simulated from one followed rater; the target is the mean of the raters
that agree with the clicks.

Training follows one drawn rater per image and may switch to another after a click (`-switch_prob`);
validation follows every valid rater in turn (`-val_follow all`, one interaction row per (image, rater)) or
one seeded random rater per image. The first prediction is made before any click.
"""

from __future__ import annotations

import torch

from engine.config import LoopConfig
from interaction.clicks import next_click
from interaction.mode import Mode, Selection, User
from interaction.raters import draw_among, mean_of, pick, raters_agreeing, switch_raters
from multirater_metrics import neutral_mask
from pipeline.batch import Batch
from pipeline.rng import KeyedRandom


def update_consistent(consistent: torch.Tensor, agree: torch.Tensor, target_from: str) -> torch.Tensor:
    """Raters the target is made of after a click: those agreeing with it (`last`), or with every click so
    far (`all`), falling back to `last` for an image where no rater agrees with all of them."""
    if target_from == "last":
        return agree
    both = consistent & agree
    return torch.where(both.any(1, keepdim=True), both, agree)


class FollowedRaterUser(User):
    """A user who follows one rater per interaction row and clicks on that rater's mask.

    rater P long: the followed rater of each row; raters PxRxSxS / valid PxR: the row's image's raters.
    The target is the mean of the raters agreeing with the clicks (`-target agreeing`), or the raters' majority
    mask whatever the clicks (`-target consensus`: the preference-blind baseline). `-first_prompt` gives the
    first prediction a box of the followed mask, or a first click on it.
    """

    def __init__(self, batch: Batch, loop: LoopConfig, purpose: str) -> None:
        super().__init__(batch, loop, purpose)
        b, device = batch.size, batch.images.device
        if purpose == "train":  # one drawn rater per image, from the training generator
            self.rows, self.rater = torch.arange(b, device=device), draw_among(batch.valid, batch.source)
        elif purpose == "validate" and loop.val_follow == "all":  # one row per (image, valid rater)
            self.rows, self.rater = batch.valid.nonzero(as_tuple=True)
        elif purpose == "validate":  # one seeded random rater per image
            self.rows, self.rater = torch.arange(b, device=device), draw_among(batch.valid, batch.source)
        else:  # figures: each image's first valid rater
            self.rows, self.rater = torch.arange(b, device=device), batch.valid.long().argmax(1)
        self.source = batch.source
        if purpose != "train" and isinstance(batch.source, KeyedRandom):  # a stream per (image, followed rater)
            self.source = batch.source.subset(self.rows, salt=self.rater)
        self.raters, self.valid = batch.raters[self.rows], batch.valid[self.rows]
        self.followed = pick(self.raters, self.rater)
        self.restart()

    @classmethod
    def first_round_clicks(cls, loop: LoopConfig) -> int:
        return 1 if loop.first_prompt == "click" else 0

    def first_click(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        return self.centre_click_on_followed() if self.loop.first_prompt == "click" else None

    @classmethod
    def trains_prompt(cls, loop: LoopConfig) -> bool:
        """The original never trains the prompt side in this mode; `-train_prompt` adds SPA's prompt step."""
        return loop.train_prompt

    def restart(self) -> None:
        """Back to the target before any click (all valid raters), the random streams continuing."""
        self.consistent = self.valid.clone()
        self.target = self._target()

    def _target(self) -> torch.Tensor:
        if self.loop.target == "consensus":
            return neutral_mask(self.raters, self.valid).float()
        return mean_of(self.raters, self.consistent)

    def click(self, selection: Selection, exclude: torch.Tensor, strategy: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Training may first switch to another valid rater; the click is on the followed rater's mask, and the
        new target is the mean of the raters agreeing with it (`-target_from`)."""
        if self.purpose == "train":
            self.rater = switch_raters(self.rater, self.valid, self.loop.switch_prob, self.source)
            self.followed = pick(self.raters, self.rater)
        points, labels = next_click(strategy, selection.pred, self.followed, exclude=exclude, generator=self.source)
        agree = raters_agreeing(self.raters, self.valid, points, labels)
        self.consistent = update_consistent(self.consistent, agree, self.loop.target_from)
        self.target = self._target()
        return points, labels

    def candidate_set(self, selection: Selection) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Validation: per image, the predictions made following each of its raters (BxRxSxS, which were made)."""
        if self.purpose == "train":
            return selection.pred[:, None], None
        candidates = torch.zeros_like(self.batch.raters)
        candidates[self.rows, self.rater] = selection.pred
        made = torch.zeros_like(self.batch.valid)
        made[self.rows, self.rater] = True
        return candidates, made


MODE = Mode(
    name="AESPA",
    summary="clicks from one followed rater; target: the mean of the raters agreeing with the clicks",
    user=FollowedRaterUser,
)
