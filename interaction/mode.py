"""What a mode is: its simulated user, its own settings, and the interaction settings every mode shares
(docs/interaction.md).

A mode is a `Mode`: a name, a `User` class — the simulated user of its protocol — and the dataclass of the
settings only it reads (`options`: each field is a flag, see conf/options.py). The round engine
(interaction/rounds.py) runs every mode's training, validation and figures with its user; a mode replaces an
engine entry point only where its method differs. Per round the engine:

    1. asks the model for the round's prediction from the clicks so far, the previous round's low-resolution
       logits (mask prompt) and mixture weights — `User.noise` says how many latent samples to decode;
    2. (training) steps the network against `User.target`;
    3. lets the user read the output: `User.select` -> the prediction it sees (and candidates);
    4. asks for the next click: `User.click` (which may move the user's target or followed rater);
    5. (training) the prompt step when `User.trains_prompt`, then the weight-head step.

A mode with a `rule` predicts without a network (the baselines): the rule replaces the model's prediction and
there is nothing to train.

Adding a mode: one file that defines its options dataclass, its `User` subclass and `MODE = Mode(...)`, and one
line in `interaction.registry.MODES`; its flags then appear in `train.py -h`, and naming one under another mode
is refused.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch

from conf.options import non_negative, option, positive
from interaction.clicks import CENTRE, STRATEGIES, next_click

if TYPE_CHECKING:
    from models import Decoded
    from pipeline.batch import Batch

PURPOSES = ("train", "validate", "figure")


@dataclass(frozen=True)
class LoopConfig:
    """The interaction settings every mode reads: rounds, click rules, NoC, evaluation variants, caps."""

    clicks: int = option(6, "interaction rounds T per image", check=positive)
    click_strategy: str = option(
        CENTRE,
        "training clicks: center (RITM, as validation clicks) or topk (the original: one of the 20 largest errors)",
        choices=STRATEGIES,
    )
    val_click_strategy: str = option(CENTRE, "validation clicks (NoC always uses center)", choices=STRATEGIES)
    paint_clicks: int = option(
        0,
        "evaluation variant: after each prediction, pixels within this many px of a click take the click's label, "
        "as the click editor paints (0: off, the method as specified)",
        check=non_negative,
    )
    noc_clicks: int = option(20, "click budget for NoC@0.80/0.85/0.90 (0 turns NoC off)", check=non_negative)
    no_embedding_reuse: bool = option(False, "recompute the image embedding at every round (for comparison)")
    max_train_batches: int = option(
        0, "train on the first N batches of each epoch only (0: all; for smoke tests)", check=non_negative
    )
    max_val_batches: int = option(0, "validate on the first N batches only (0: all)", check=non_negative)
    test_every_val: bool = option(
        False,
        "evaluate the test split at every validation too (default: once, with the best checkpoint, at the end)",
    )
    session_length: int | None = option(
        None,
        "evaluation: N > 1 also runs the session protocol: the split's images in seeded sessions of N images, "
        "each session followed through by each rater in turn, reported by position (1: the per-image protocol only; "
        "default: 8 for a model with -memory style, else 1)",
        type=int,
        check=positive,
    )
    session_memory: str = option(
        "model",
        "session protocol, a model with -memory style: the memory it carries from image to image: model (the style "
        "of its own final predictions), oracle (of the followed rater's masks: an upper bound), none (reset at every "
        "image)",
        choices=("model", "oracle", "none"),
    )
    memory_window: int = option(
        2, "session memory: the style vectors of the session's last N images are averaged", check=positive
    )
    session_switch: int = option(
        0,
        "session protocol: from the P-th image of a session on, every user follows the next rater (k -> k+1): does "
        "the memory let go of the old style? (0: never)",
        check=non_negative,
    )


class RunSettings(Protocol):
    """What the round engine reads of a run's configuration (engine.config.RunConfig is one)."""

    loop: LoopConfig
    options: Any  # the mode's own settings
    amp: str


class Optimiser(Protocol):
    """What a training round asks of the optimisation side (engine.optim.Stepper is one)."""

    def autocast(self) -> contextlib.AbstractContextManager: ...

    def step(self, loss: torch.Tensor) -> None: ...

    def mean_over_ranks(self, tensor: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class NoOptions:
    """A mode without settings of its own."""


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

    `purpose` is 'train' (random draws from the training generator, rater switching), 'validate' (the
    docs/evaluation.md#validation-protocol protocol) or 'figure' (a fixed, easy-to-read choice for the qualitative
    grid).
    """

    rows: torch.Tensor
    target: torch.Tensor
    followed: torch.Tensor
    rater: torch.Tensor | None = None
    source: object

    def __init__(self, batch: Batch, loop: LoopConfig, options: Any, purpose: str) -> None:
        """`loop`: the settings every mode shares; `options`: the mode's own (its `Mode.options` dataclass)."""
        if purpose not in PURPOSES:
            raise ValueError(f"purpose must be one of {PURPOSES}, got {purpose!r}")
        self.batch, self.loop, self.options, self.purpose = batch, loop, options, purpose

    @classmethod
    def first_round_clicks(cls, options: Any) -> int:
        """Clicks the first prediction uses."""
        return 0

    @classmethod
    def has_box(cls, options: Any) -> bool:
        """Whether every round's prompt holds a box."""
        return False

    @classmethod
    def latent_samples(cls, options: Any) -> int | None:
        """Latent samples decoded per round: None for the single deterministic prediction (ε = 0)."""
        return None

    @classmethod
    def trains_prompt(cls, options: Any) -> bool:
        """Whether training takes the prompt step (docs/interaction.md#spa-rounds step 3) after each click."""
        return False

    def restart(self) -> None:
        """Back to the state before the first round (target, followed rater), the random streams continuing:
        a second interaction with the same user (NoC with centre clicks after a top-k validation)."""
        raise NotImplementedError

    def first_click(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """A click before the first prediction (points Px2 (x, y), labels P), or None."""
        return None

    def first_box(self) -> torch.Tensor | None:
        """A box Px4 (x0, y0, x1, y1) kept in the prompt of every round, or None."""
        return None

    def memory(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The session memory each row brings to its image (PxD mean style vectors, P bool: which rows have one),
        or None (no session: the per-image protocol)."""
        return None

    def memory_context(self, sessions: torch.Tensor) -> torch.Tensor | None:
        """Training a model with a session memory: which (image, rater) masks of the batch make each row's memory,
        as a simulated session would have left it -> weights PxBxR (a row of zeros: no memory yet), or None (this
        mode's user has none). `sessions` B long: images with equal codes share their raters' identities."""
        return None

    def centre_click_on_followed(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The centre click on the followed mask against an empty prediction (a first click)."""
        return next_click(CENTRE, torch.zeros_like(self.followed), self.followed)

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
    """An interaction mode: its simulated user, its settings, and the facts the rest of the program needs.

    options   the dataclass of the settings only this mode reads (its fields are its flags); an instance is
              `RunConfig.options` and reaches the user as `User.options`
    defaults  {flag: value} for shared flags whose default differs under this mode (e.g. SPA's fusion); a flag
              named on the command line wins
    rule      a prediction without a network, rule(batch, user, state) -> PxSxS probabilities (the baselines);
              such a mode learns nothing, and val.py evaluates it without -weights
    train_batch, validate_batch, qualitative   entry points replacing the engine's (None: the engine's)
    """

    name: str
    summary: str
    user: type[User]
    options: type = NoOptions
    defaults: Mapping[str, Any] = field(default_factory=dict)
    rule: Callable | None = None
    train_batch: Callable | None = None
    validate_batch: Callable | None = None
    qualitative: Callable | None = None

    @property
    def learns(self) -> bool:
        return self.rule is None

    def first_round_clicks(self, options: Any) -> int:
        return self.user.first_round_clicks(options)

    def clicks_of_round(self, round_: int, options: Any) -> int:
        """Clicks the round-th prediction (1-based) used."""
        return round_ - 1 + self.first_round_clicks(options)
