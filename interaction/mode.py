"""Interaction modes: what a mode is, the simulated user it brings, and the registry of modes (SPEC §4).

A mode is a `Mode`: a name, the number of clicks its first prediction uses, whether it learns anything, and a
`User` class — the simulated user of its protocol. The round engine (`interaction.py`) runs every mode's
training, validation and figures with its user; a mode replaces an engine entry point only where its method
differs. Per round the engine:

    1. asks the model for the round's prediction from the clicks so far, the previous round's low-resolution
       logits (mask prompt) and mixture weights — `User.noise` says how many latent samples to decode;
    2. (training) steps the network against `User.target`;
    3. lets the user read the output: `User.select` -> the prediction it sees (and candidates);
    4. asks for the next click: `User.click` (which may move the user's target or followed rater);
    5. (training) the prompt step when `User.trains_prompt`, then the weight-head step.

A mode with a `rule` predicts without a network (the baselines): the rule replaces the model's prediction and
there is nothing to train.

Adding a mode: one file that defines its `User` subclass and `MODE = Mode(...)`, and one line in `BUILTIN_MODES`
(or `register_mode(MODE)` from your own code, e.g. a test).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from interaction.clicks import mask_boxes, next_click

if TYPE_CHECKING:
    from engine.config import LoopConfig
    from models import Decoded
    from pipeline.batch import Batch

# name -> "module" defining `MODE`, or "module:NAME" (imported on first use: listing names imports nothing heavy).
BUILTIN_MODES = {
    "AESPA": "interaction.aespa",
    "SPA": "interaction.spa",
    "consensus": "interaction.baselines:CONSENSUS",
    "click_editor": "interaction.baselines:CLICK_EDITOR",
}

PURPOSES = ("train", "validate", "figure")


@dataclass
class Selection:
    """What the user reads from a round's output.

    pred         PxSxS probabilities: the model's answer, scored by the personalised metrics
    mask_prompt  Px1x4Gx4G: the next round's mask prompt (None for a rule without a network)
    feedback     PxSxS: the prediction the user's feedback is about, fed to the mixture update and the weight-head
                 step (SPA: the candidate the user selected; None: `pred`)
    extra        more per-row metrics of the round (e.g. SPA's Dice_selected)
    """

    pred: torch.Tensor
    mask_prompt: torch.Tensor | None
    feedback: torch.Tensor | None = None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.feedback is None:
            self.feedback = self.pred


class User:
    """The simulated user of a protocol for one batch of P interaction rows.

    Attributes set by subclasses:
        rows      P long: the batch image of each row (P = B unless the protocol follows several raters per image)
        target    PxSxS soft target of the current round: the training loss and the weight-head step use it
        followed  PxSxS the mask the personalised metrics (Dice_follow) and NoC compare the prediction with
        rater     P long: the followed rater's slot per row, or None when `followed` is not a rater's (SPA)
        source    where the user's random draws come from (generator in training, row-keyed streams otherwise)

    `purpose` is 'train' (random draws from the training generator, rater switching), 'validate' (the SPEC §4.4
    protocol) or 'figure' (a fixed, easy-to-read choice for the qualitative grid).
    """

    rows: torch.Tensor
    target: torch.Tensor
    followed: torch.Tensor
    rater: torch.Tensor | None = None
    source: object

    def __init__(self, batch: Batch, loop: LoopConfig, purpose: str) -> None:
        if purpose not in PURPOSES:
            raise ValueError(f"purpose must be one of {PURPOSES}, got {purpose!r}")
        self.batch, self.loop, self.purpose = batch, loop, purpose

    @classmethod
    def first_round_clicks(cls, loop: LoopConfig) -> int:
        """Clicks the first prediction uses."""
        return 0

    @classmethod
    def check(cls, loop: LoopConfig) -> str | None:
        """Why these loop settings cannot run this user (one line naming the flag), or None."""
        return None

    @classmethod
    def latent_samples(cls, loop: LoopConfig) -> int | None:
        """Latent samples decoded per round: None for the single deterministic prediction (ε = 0)."""
        return None

    @classmethod
    def trains_prompt(cls, loop: LoopConfig) -> bool:
        """Whether training takes the prompt step (SPEC §4.2 step 3) after each click."""
        return False

    def restart(self) -> None:
        """Back to the state before the first round (target, followed rater), the random streams continuing:
        a second interaction with the same user (NoC with centre clicks after a top-k validation)."""
        raise NotImplementedError

    def first_click(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """A click before the first prediction (points Px2 (x, y), labels P), or None."""
        return None

    def first_box(self) -> torch.Tensor | None:
        """With `-first_prompt box`: the bounding box Px4 (x0, y0, x1, y1) of the followed mask, each side moved by
        up to `-box_jitter` px in training (exact otherwise); it stays in the prompt for every round."""
        if self.loop.first_prompt != "box":
            return None
        jitter = self.loop.box_jitter if self.purpose == "train" else 0
        return mask_boxes(self.followed, jitter, self.source)

    def centre_click_on_followed(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The centre click on the followed mask against an empty prediction (a first click)."""
        return next_click("center", torch.zeros_like(self.followed), self.followed)

    def noise(self, latent_dim: int) -> torch.Tensor | None:
        """ε PxMxL for the round's latent samples (drawn from `source`), or None for ε = 0."""
        return None

    def select(self, decoded: Decoded) -> Selection:
        """The prediction the user sees: by default the single deterministic one."""
        return Selection(decoded.probs[:, 0], decoded.low)

    def click(self, selection: Selection, exclude: torch.Tensor, strategy: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The next click (points Px2 (x, y), labels P) on `selection`, never on an `exclude`d pixel PxSxS."""
        raise NotImplementedError

    def candidate_set(self, selection: Selection) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The prediction set the set metrics score, per image: BxMxSxS and which entries are real (BxM or None)."""
        return selection.pred[:, None], None


@dataclass(frozen=True)
class Mode:
    """An interaction mode: its simulated user and the facts the rest of the program needs about it.

    rule     a prediction without a network, rule(batch, user, clicks) -> PxSxS probabilities (the baselines);
             such a mode learns nothing, and val.py evaluates it without -weights
    train_batch, validate_batch, qualitative   entry points replacing the engine's (None: the engine's)
    The clicks of the first prediction are the user's (`User.first_round_clicks`).
    """

    name: str
    summary: str
    user: type[User]
    rule: Callable | None = None
    train_batch: Callable | None = None
    validate_batch: Callable | None = None
    qualitative: Callable | None = None

    @property
    def learns(self) -> bool:
        return self.rule is None

    def first_round_clicks(self, loop: LoopConfig) -> int:
        return self.user.first_round_clicks(loop)

    def clicks_of_round(self, round_: int, loop: LoopConfig) -> int:
        """Clicks the round-th prediction (1-based) used."""
        return round_ - 1 + self.first_round_clicks(loop)


_REGISTERED: dict[str, Mode] = {}


def register_mode(mode: Mode) -> Mode:
    """Make a mode available to the command line (`-mode NAME`) and the loops."""
    _REGISTERED[mode.name] = mode
    return mode


def mode_names() -> list[str]:
    """Every mode the command line offers: the built-in ones, then those registered."""
    return list(BUILTIN_MODES) + [name for name in _REGISTERED if name not in BUILTIN_MODES]


def get_mode(name: str) -> Mode:
    """The mode called `name` (a built-in one is imported on first use)."""
    if name not in _REGISTERED and name in BUILTIN_MODES:
        module, _, attribute = BUILTIN_MODES[name].partition(":")
        register_mode(getattr(importlib.import_module(module), attribute or "MODE"))
    if name not in _REGISTERED:
        raise KeyError(f"unknown mode '{name}' (known: {', '.join(mode_names())})")
    return _REGISTERED[name]
