"""AESPA (docs/interaction.md#aespa-rounds, docs/evaluation.md#validation-protocol): clicks simulated from one followed
rater; the target is the mean of the raters that agree with the clicks.

Training follows one drawn rater per image and may switch to another after a click (`-switch_prob`);
validation follows every valid rater in turn (`-val_follow all`, one interaction row per (image, rater)) or
one seeded random rater per image. The first prediction is made before any click (or after a first click, or
with a box: `-first_prompt`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from conf.options import non_negative, option, within
from interaction.clicks import mask_boxes, next_click
from interaction.mode import Mode, Selection, User
from interaction.raters import draw_among, mean_of, pick, raters_agreeing, switch_raters
from multirater_metrics import neutral_mask
from pipeline.batch import Batch
from pipeline.rng import KeyedRandom, uniform


@dataclass(frozen=True)
class FollowOptions:
    """Settings of every mode whose simulated user follows one rater (AESPA and the baselines)."""

    val_follow: str = option(
        "all",
        "validation: follow every valid rater in turn, or one seeded random rater per image",
        choices=("all", "random"),
    )


@dataclass(frozen=True)
class AESPAOptions(FollowOptions):
    switch_prob: float = option(
        0.2, "chance of switching the followed rater after a click (training)", check=within(0.0, 1.0)
    )
    target_from: str = option(
        "all",
        "target: the raters agreeing with every click so far (falling back to the last when none does), or with the "
        "last click only (the original)",
        choices=("last", "all"),
    )
    target: str = option(
        "agreeing",
        "training target: the raters agreeing with the clicks (the method), or the raters' majority mask whatever "
        "the clicks (the preference-blind baseline)",
        choices=("agreeing", "consensus"),
    )
    first_prompt: str = option(
        "none",
        "the first interaction: none (predict before any click), one click, or the bounding box of the followed "
        "rater's mask (kept in the prompt afterwards)",
        choices=("none", "click", "box"),
    )
    box_jitter: int = option(5, "training boxes: each side moved by up to this many pixels", check=non_negative)
    train_prompt: bool = option(False, "also train the prompt encoder and mean/variance head (SPA's step 3)")
    memory_context: int = option(
        4,
        "training with -memory style: a row's memory is made of 0..N other images of its simulated session (the "
        "number drawn uniformly; 0: a session's first image)",
        check=non_negative,
    )
    memory_switch: float = option(
        0.2,
        "training with -memory style: chance that a row's memory is of another rater than the one it follows (a user "
        "who switched; the clicks must win)",
        check=within(0.0, 1.0),
    )


def update_consistent(consistent: torch.Tensor, agree: torch.Tensor, target_from: str) -> torch.Tensor:
    """Raters the target is made of after a click: those agreeing with it (`last`), or with every click so
    far (`all`), falling back to `last` for an image where no rater agrees with all of them."""
    if target_from == "last":
        return agree
    both = consistent & agree
    return torch.where(both.any(1, keepdim=True), both, agree)


class FollowingUser(User):
    """A user who follows one rater per interaction row and clicks on that rater's mask (the baselines' user).

    rater P long: the followed rater of each row; raters PxRxSxS / valid PxR: the row's image's raters. The
    target is the mean of the valid raters (a mode without training never reads it).
    """

    def __init__(self, batch: Batch, loop, options: FollowOptions, purpose: str) -> None:
        super().__init__(batch, loop, options, purpose)
        b, device = batch.size, batch.images.device
        if purpose == "train":  # one drawn rater per image, from the training generator
            self.rows, self.rater = torch.arange(b, device=device), draw_among(batch.valid, batch.source)
        elif purpose == "validate" and options.val_follow == "all":  # one row per (image, valid rater)
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

    def restart(self) -> None:
        """Back to the target before any click (all valid raters), the random streams continuing."""
        self.consistent = self.valid.clone()
        self.target = self._target()

    def _target(self) -> torch.Tensor:
        return mean_of(self.raters, self.consistent)

    def click(self, selection: Selection, exclude: torch.Tensor, strategy: str) -> tuple[torch.Tensor, torch.Tensor]:
        """A click on the followed rater's mask."""
        return next_click(strategy, selection.pred, self.followed, exclude=exclude, generator=self.source)

    def memory(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The session protocol's memory of each row's (image, followed rater): the batch's, gathered per row."""
        if self.batch.memory is None:
            return None
        return self.batch.memory[self.rows, self.rater], self.batch.memory_count[self.rows, self.rater] > 0

    def candidate_set(self, selection: Selection) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Validation: per image, the predictions made following each of its raters (BxRxSxS, which were made)."""
        if self.purpose == "train":
            return selection.pred[:, None], None
        candidates = torch.zeros_like(self.batch.raters)
        candidates[self.rows, self.rater] = selection.pred
        made = torch.zeros_like(self.batch.valid)
        made[self.rows, self.rater] = True
        return candidates, made


class FollowedRaterUser(FollowingUser):
    """AESPA's user: follows a rater as `FollowingUser`; the target is the mean of the raters agreeing with the
    clicks (`-target agreeing`), or the raters' majority mask whatever the clicks (`-target consensus`: the
    preference-blind baseline). Training may switch raters after a click. `-first_prompt` gives the first
    prediction a box of the followed mask, or a first click on it."""

    options: AESPAOptions

    @classmethod
    def first_round_clicks(cls, options: AESPAOptions) -> int:
        return 1 if options.first_prompt == "click" else 0

    @classmethod
    def has_box(cls, options: AESPAOptions) -> bool:
        return options.first_prompt == "box"

    @classmethod
    def trains_prompt(cls, options: AESPAOptions) -> bool:
        """The original never trains the prompt side in this mode; `-train_prompt` adds SPA's prompt step."""
        return options.train_prompt

    def first_click(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        return self.centre_click_on_followed() if self.options.first_prompt == "click" else None

    def memory_context(self, sessions: torch.Tensor) -> torch.Tensor:
        """Training: each row's memory is made of up to `-memory_context` other images of its session in the batch
        (the number drawn uniformly from 0..N; 0: the session's first image), each through the mask of one rater: the
        followed one, or with probability `-memory_switch` another valid one (a user whose memory is of a rater they
        have left). Until the first click the target is that rater's mask: the memory is the only evidence of whom
        the user follows, and clicks correct it (`-target_from all` falls back to the raters agreeing with them).
        -> weights BxBxR over the batch's (image, rater) masks (training has one row per image)."""
        b, r = self.valid.shape
        device, n = self.valid.device, self.options.memory_context
        count = (uniform((b,), device, self.source) * (n + 1)).floor().long().clamp_max(n)
        rater = switch_raters(self.rater, self.valid, self.options.memory_switch, self.source)
        others = (sessions[:, None] == sessions[None, :]) & ~torch.eye(b, dtype=torch.bool, device=device)
        candidates = others & self.batch.valid.T[rater]  # BxB: image j's mask of row i's memory rater exists
        scores = uniform((b, b), device, self.source).masked_fill(~candidates, -1.0)
        rank = scores.argsort(1, descending=True).argsort(1)
        chosen = candidates & (rank < count[:, None])
        one_hot = torch.nn.functional.one_hot(rater, r).bool()
        has = chosen.any(1)
        self.consistent = torch.where(has[:, None], one_hot, self.consistent)
        self.target = self._target()
        return chosen[:, :, None].float() * one_hot[:, None, :].float()

    def first_box(self) -> torch.Tensor | None:
        """With `-first_prompt box`: the bounding box Px4 (x0, y0, x1, y1) of the followed mask, each side moved by
        up to `-box_jitter` px in training (exact otherwise); it stays in the prompt for every round."""
        if not self.has_box(self.options):
            return None
        jitter = self.options.box_jitter if self.purpose == "train" else 0
        return mask_boxes(self.followed, jitter, self.source)

    def _target(self) -> torch.Tensor:
        if self.options.target == "consensus":
            return neutral_mask(self.raters, self.valid).float()
        return mean_of(self.raters, self.consistent)

    def click(self, selection: Selection, exclude: torch.Tensor, strategy: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Training may first switch to another valid rater; the click is on the followed rater's mask, and the
        new target is the mean of the raters agreeing with it (`-target_from`)."""
        if self.purpose == "train":
            self.rater = switch_raters(self.rater, self.valid, self.options.switch_prob, self.source)
            self.followed = pick(self.raters, self.rater)
        points, labels = super().click(selection, exclude, strategy)
        agree = raters_agreeing(self.raters, self.valid, points, labels)
        self.consistent = update_consistent(self.consistent, agree, self.options.target_from)
        self.target = self._target()
        return points, labels


MODE = Mode(
    name="AESPA",
    summary="clicks from one followed rater; target: the mean of the raters agreeing with the clicks",
    user=FollowedRaterUser,
    options=AESPAOptions,
)
