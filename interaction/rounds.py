"""The round engine: every mode's training and interaction, one click round at a time (docs/interaction.md).

Per round the model predicts from the round state — the clicks so far (and a box), the previous round's
low-resolution logits (the mask prompt) and the mixture weights the weight head makes from the previous
prediction's responsibilities — then the mode's simulated user (`interaction.mode.User`) reads the output and clicks.
Training adds the optimisation steps of docs/interaction.md#aespa-rounds, docs/interaction.md#spa-rounds around that.
The modes differ only in their user (and a baseline's rule, which predicts without a network). Validation's bookkeeping
is in validation.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from interaction.clicks import ClickState, paint_clicks
from interaction.mode import Mode, Optimiser, RunSettings, Selection, User
from models import STYLE_CONTRAST_WEIGHT, AESPAModel, Decoded, Prompts, mean_memory, responsibilities, style_contrast
from multirater_metrics import dice, personalised_metrics, set_metrics
from pipeline.batch import Batch

POS_WEIGHT = 2.0  # BCEWithLogits(pos_weight=2), as the original


def bce_loss(logits: torch.Tensor, target: torch.Tensor, per_image: bool = False) -> torch.Tensor:
    """BCEWithLogits(pos_weight=2) of BxSxS logits against a (soft) target: the mean, or B per-image means."""
    pos_weight = torch.tensor(POS_WEIGHT, device=logits.device, dtype=logits.dtype)
    loss = F.binary_cross_entropy_with_logits(
        logits, target.to(logits.dtype), pos_weight=pos_weight, reduction="none" if per_image else "mean"
    )
    return loss.flatten(1).mean(1) if per_image else loss


@dataclass
class RoundState:
    """What carries from one round to the next, per interaction row: the clicks, the box (kept in every round),
    the previous round's low-resolution logits Px1x4Gx4G (the mask prompt) and its responsibilities PxK (the
    weight head's input); and, in a session, the memory the row brought to its image (PxD, P bool), which every
    round reads."""

    clicks: ClickState
    box: torch.Tensor | None = None
    prev_low: torch.Tensor | None = None
    em_weights: torch.Tensor | None = None
    memory: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def start(
        cls,
        rows: int,
        size: int,
        device: torch.device,
        first_click=None,
        box: torch.Tensor | None = None,
        memory: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> RoundState:
        """The state before the first round: no click yet, or a first click (points Px2, labels P); a box Px4; a
        session memory (PxD mean style vectors, P bool)."""
        state = cls(ClickState(rows, size, device), box, memory=memory)
        if first_click is not None:
            state.clicks.add(*first_click)
        return state

    @classmethod
    def for_user(cls, user: User, size: int, device: torch.device) -> RoundState:
        """The state before the first round of a simulated user: its box, first click and session memory, if its
        protocol has them."""
        return cls.start(len(user.rows), size, device, user.first_click(), user.first_box(), user.memory())

    def prompts(self, model: AESPAModel, weights: torch.Tensor | None = None) -> Prompts:
        """The model's prompt side for this state (mixture `weights` PxK given: the weight head is skipped)."""
        c = self.clicks
        return model.prompt(
            len(c.exclude), c.points, c.labels, self.box, self.prev_low, self.em_weights, weights, self.memory
        )

    def advance(self, selection: Selection, em_weights: torch.Tensor | None) -> None:
        """After the round: its mask prompt and responsibilities become the next round's inputs."""
        self.prev_low, self.em_weights = selection.mask_prompt, em_weights


def mixture_responsibilities(model: AESPAModel, pred: torch.Tensor, prompts: Prompts) -> torch.Tensor | None:
    """docs/interaction.md#aespa-rounds step 3: responsibilities PxK of a prediction PxSxS under the round's mixture
    (None when the model has no latent, `-fcomb none`)."""
    if not model.uses_latent:
        return None
    p = prompts
    return responsibilities(pred.float(), p.weights.float(), p.means.float(), p.variances.float())


def predict_round(
    model: AESPAModel, state: RoundState, embedding: torch.Tensor, eps: torch.Tensor | None = None
) -> tuple[Prompts, Decoded]:
    """The one prediction path: the round's prompts and its decoded predictions (M = 1 without `eps`)."""
    prompts = state.prompts(model)
    return prompts, model.decode_round(embedding, prompts, eps)


@torch.no_grad()
def deterministic_round(model: AESPAModel, state: RoundState, embedding: torch.Tensor) -> torch.Tensor:
    """One round of the deterministic prediction (ε = 0) from `state`, which then advances (its mask prompt and
    responsibilities become the next round's) -> probabilities PxSxS. The demo and whole-volume interaction use
    it; the validation protocol's rounds are the same prediction."""
    prompts, decoded = predict_round(model, state, embedding)
    seen = Selection(decoded.probs[:, 0], decoded.low)
    state.advance(seen, mixture_responsibilities(model, seen.pred, prompts))
    return seen.pred


# --- training steps ----------------------------------------------------------------------------------


@contextlib.contextmanager
def frozen(*modules: nn.Module | None) -> Iterator[None]:
    """Gradients flow through `modules` (None: a part the model does not have) but their own parameters get none
    (and cost nothing)."""
    params = [p for m in modules if m is not None for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def weight_head_step(
    model: AESPAModel, stepper: Optimiser, pred: torch.Tensor, target: torch.Tensor, mixture: Prompts
) -> None:
    """docs/interaction.md#aespa-rounds steps 3-4: the MSE between the weight head's map of the prediction's
    responsibilities and the target's responsibilities under `mixture`; only the weight head learns (no step without a
    latent)."""
    if not model.uses_latent:
        return
    with torch.no_grad():
        em_pred = mixture_responsibilities(model, pred, mixture)
        em_target = mixture_responsibilities(model, target, mixture)
    stepper.step(F.mse_loss(model.weight_head(em_pred), em_target))


def prompt_step(
    model: AESPAModel,
    stepper: Optimiser,
    state: RoundState,
    embedding: torch.Tensor,
    em_selected: torch.Tensor | None,
    prompts: Prompts,
    user: User,
) -> Prompts:
    """docs/interaction.md#spa-rounds step 3, as the published SPA takes it: recompute the prediction with the new
    clicks and fresh latent samples; only the prompt encoder and the mean/variance head learn (fusion, decoder, pixel
    branch and weight head frozen). The mixture weights are the weight head's map of the selection's responsibilities
    `em_selected` (under this round's mixture); `state` already holds the new clicks and mask prompt, and `embedding` is
    this round's SAM embedding, detached (the encoder is frozen here; reusing it saves a ViT pass per round).
    -> the mixture after the click (μ, σ² recomputed from the new prompts, these weights) for the weight-head step.
    """
    with torch.no_grad():
        weights = prompts.weights if em_selected is None else model.weight_head(em_selected)
    eps = user.noise(model.latent_dim)  # fresh samples
    with (
        stepper.autocast(),
        frozen(model.fcomb, model.mask_decoder, model.pixel_branch, model.memory, model.weight_head),
    ):
        loss = bce_loss(
            model.decode_round(embedding, state.prompts(model, weights=weights), eps).logits.mean(1), user.target
        )
    stepper.step(loss)
    with torch.no_grad():
        return state.prompts(model, weights=weights)


def update_mixture(model: AESPAModel, stepper: Optimiser, prompts: Prompts) -> None:
    """Move the stored mixture towards the last round's per-image mixture, averaged over the batch and the
    ranks (one collective for all three)."""
    if not model.uses_latent:
        return
    batch = [t.detach().float().mean(0) for t in (prompts.weights, prompts.means, prompts.variances)]  # K each
    flat = stepper.mean_over_ranks(torch.cat(batch))
    model.update_mixture_state(*flat.split([b.numel() for b in batch]))


def round_metrics(batch: Batch, user: User, selection: Selection) -> dict[str, torch.Tensor]:
    """Every metric of docs/metrics.md for one round: personalised ones of the rows' predictions against the followed
    masks (P values), set ones of each image's candidate set (B values), and the selection's extra values."""
    rows = user.rows
    values = personalised_metrics(selection.pred, batch.raters[rows], batch.valid[rows], user.followed)
    candidates, candidate_valid = user.candidate_set(selection)
    values.update(set_metrics(candidates, batch.raters, batch.valid, pred_valid=candidate_valid))
    values.update(selection.extra)
    return values


def image_embedding(model: AESPAModel, batch: Batch) -> torch.Tensor:
    """The batch's image features BxC'xGxG (`AESPAModel.image_features`): the SAM embedding, precomputed (a frozen
    encoder's cache) or computed now, with the folded pixels when the model has a pixel branch."""
    return model.image_features(batch.images, batch.embedding)


class TrainingMemory:
    """The simulated sessions' memories of a training batch (`User.memory_context`, weights PxBxR over the batch's
    (image, rater) masks). In the first round — where the memory is all the model knows of the user — the style
    vectors of every valid, non-empty mask are computed with gradients: the rows' memories are made of them, and
    `style_contrast` (one rater's masks on different images of a group alike, the other raters' apart) is added to
    that round's loss; the later rounds reuse them, detached (one style-encoder pass per batch)."""

    def __init__(self, weights: torch.Tensor, batch: Batch) -> None:
        b, r = batch.valid.shape
        masks = batch.raters.flatten(2).gt(0.5).any(2)  # BxR: marks something
        self.pairs = ((batch.valid & masks) | (weights.sum(0) > 0)).flatten().nonzero()[:, 0]  # (image, rater) used
        self.weights, self.n_raters = weights.flatten(1)[:, self.pairs], r
        codes = batch.session_codes()
        image, rater = self.pairs // r, self.pairs % r
        contrasted = (batch.valid & masks).flatten()[self.pairs]
        self.labels = torch.where(contrasted, codes[image] * r + rater, -1 - torch.arange(len(self.pairs)))
        self.styles: torch.Tensor | None = None
        self.contrast: torch.Tensor | None = None

    def shift(self, model: AESPAModel, batch: Batch) -> torch.Tensor:
        """The rows' shifts Px(2C + 2C/8) for this round (the first round also sets `contrast`)."""
        if self.styles is None:
            image, rater = self.pairs // self.n_raters, self.pairs % self.n_raters
            self.styles = model.memory.styles(batch.images[image], batch.raters[image, rater])
            self.contrast = style_contrast(self.styles, self.labels)
            styles = self.styles
        else:
            styles, self.contrast = self.styles.detach(), None
        return model.memory.shift(*mean_memory(styles, self.weights.to(styles.dtype)))


def train_batch(
    model: AESPAModel, stepper: Optimiser, batch: Batch, cfg: RunSettings, mode: Mode
) -> list[dict[str, torch.Tensor]]:
    """One training batch (docs/interaction.md#aespa-rounds, docs/interaction.md#spa-rounds): per round a network step,
    the user's click, the prompt step (when the mode takes it) and the weight-head step. Returns one dict of per-image
    values per round."""
    user = mode.user(batch, cfg.loop, cfg.options, "train")
    context = None if model.memory is None else user.memory_context(batch.session_codes())
    memory = None if context is None else TrainingMemory(context, batch)
    state = RoundState.for_user(user, batch.images.shape[-1], batch.images.device)
    rows = []
    for _ in range(cfg.loop.clicks):
        eps = user.noise(model.latent_dim)
        with torch.no_grad():  # 1. network step: prompt side and heads without gradient
            prompts = state.prompts(model)
        with stepper.autocast():
            embedding = image_embedding(model, batch)
            if memory is not None:  # the session memory learns through the network step
                prompts.memory_shift = memory.shift(model, batch)
            decoded = model.decode_round(embedding, prompts, eps)
            loss = bce_loss(decoded.logits.mean(1), user.target)
            if memory is not None and memory.contrast is not None:
                loss = loss + STYLE_CONTRAST_WEIGHT * memory.contrast
        stepper.step(loss)

        selection = user.select(decoded.detach())
        row = round_metrics(batch, user, selection)
        row["loss"] = loss.detach().expand(batch.size)
        rows.append(row)
        state.clicks.add(*user.click(selection, state.clicks.exclude, cfg.loop.click_strategy))  # 2. next click
        state.prev_low = selection.mask_prompt
        with torch.no_grad():  # 3. the mixture update: the next round's weight-head input
            em_selected = mixture_responsibilities(model, selection.feedback, prompts)
        mixture = prompts
        if user.trains_prompt(cfg.options):  # the prompt step
            mixture = prompt_step(model, stepper, state, embedding.detach(), em_selected, prompts, user)
        weight_head_step(model, stepper, selection.feedback, user.target, mixture)  # 4.
        state.em_weights = em_selected
    update_mixture(model, stepper, prompts)
    return rows


# --- interaction without optimisation (validation, figures) ------------------------------------------------


@dataclass
class Interaction:
    """What `interact` recorded: per round the selection, the loss against the target (P; None for a rule),
    Dice against the followed mask (P); and the clicks made."""

    selections: list[Selection] = field(default_factory=list)
    losses: list[torch.Tensor | None] = field(default_factory=list)
    dice_follow: list[torch.Tensor] = field(default_factory=list)
    clicks: ClickState | None = None


@torch.no_grad()
def interact(
    model: AESPAModel | None,
    batch: Batch,
    embedding: torch.Tensor | None,
    user: User,
    rounds: int,
    strategy: str,
    mode: Mode,
) -> Interaction:
    """Run `rounds` rounds without optimisation. `embedding` BxCxGxG is the batch's SAM embedding, reused by
    every round and row (only the fusion and the decoder rerun); None recomputes it every round. A mode's rule
    replaces the model (which may then be None)."""
    rows, size = user.rows, batch.images.shape[-1]
    state = RoundState.for_user(user, size, batch.images.device)
    row_embedding = None if embedding is None else embedding[rows]  # PxCxGxG, gathered once
    out = Interaction()
    for _ in range(rounds):
        if mode.rule is not None:
            selection, loss, em = Selection(mode.rule(batch, user, state), None), None, None
        else:
            emb = image_embedding(model, batch)[rows] if row_embedding is None else row_embedding
            prompts, decoded = predict_round(model, state, emb, user.noise(model.latent_dim))
            selection = user.select(decoded)
            loss = bce_loss(decoded.logits.mean(1), user.target, per_image=True)
            em = mixture_responsibilities(model, selection.feedback, prompts)
        if (
            user.loop.paint_clicks > 0
        ):  # -paint_clicks: only what is scored and clicked on changes, not the model's state
            painted = paint_clicks(selection.pred, state.clicks.points, state.clicks.labels, user.loop.paint_clicks)
            selection = dataclasses.replace(selection, pred=painted)
        out.selections.append(selection)
        out.losses.append(loss)
        out.dice_follow.append(dice(selection.pred, user.followed))
        state.clicks.add(*user.click(selection, state.clicks.exclude, strategy))
        state.advance(selection, em)
    out.clicks = state.clicks
    return out
