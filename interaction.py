"""The round engine: every mode's training, validation and figures, one click round at a time (SPEC §4).

Per round the model predicts from the round state — the clicks so far, the previous round's low-resolution
logits (the mask prompt) and the mixture weights the weight head makes from the previous prediction's
responsibilities — then the mode's simulated user (`modes.User`) reads the output and clicks. Training adds the
optimisation steps of SPEC §4.1/§4.2 around that. The modes differ only in their user.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from batch import Batch
from clicks import ClickState
from distributed import mean_over_ranks
from models import AESPAModel, Decoded, Prompts, responsibilities
from modes import Mode, Selection, User
from multirater_metrics import dice, noc, personalised_metrics, set_metrics
from optim_step import Stepper, frozen
from run_config import RunConfig

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
    """What carries from one round to the next, per interaction row: the clicks, the previous round's
    low-resolution logits Px1x4Gx4G (the mask prompt) and its responsibilities PxK (the weight head's input)."""

    clicks: ClickState
    prev_low: torch.Tensor | None = None
    em_weights: torch.Tensor | None = None

    @classmethod
    def start(cls, rows: int, size: int, device: torch.device, first_click=None) -> RoundState:
        state = cls(ClickState(rows, size, device))
        if first_click is not None:
            state.clicks.add(*first_click)
        return state

    def prompts(self, model: AESPAModel, weights: torch.Tensor | None = None) -> Prompts:
        """The model's prompt side for this state (mixture `weights` PxK given: the weight head is skipped)."""
        c = self.clicks
        return model.prompt(len(c.exclude), c.points, c.labels, None, self.prev_low, self.em_weights, weights)

    def advance(self, selection: Selection, em_weights: torch.Tensor) -> None:
        """After the round: its mask prompt and responsibilities become the next round's inputs."""
        self.prev_low, self.em_weights = selection.mask_prompt, em_weights


def mixture_responsibilities(pred: torch.Tensor, prompts: Prompts) -> torch.Tensor:
    """SPEC §4.1 step 3: responsibilities PxK of a prediction PxSxS under the round's mixture."""
    p = prompts
    return responsibilities(pred.float(), p.weights.float(), p.means.float(), p.variances.float())


def predict_round(
    model: AESPAModel, state: RoundState, embedding: torch.Tensor, eps: torch.Tensor | None = None
) -> tuple[Prompts, Decoded]:
    """The one prediction path: the round's prompts and its decoded predictions (M = 1 without `eps`)."""
    prompts = state.prompts(model)
    return prompts, model.decode_round(embedding, prompts, eps)


# --- training steps ----------------------------------------------------------------------------------


def weight_head_step(
    model: AESPAModel, stepper: Stepper, pred: torch.Tensor, target: torch.Tensor, prompts: Prompts
) -> torch.Tensor:
    """SPEC §4.1 steps 3-4: the MSE between the weight head's map of the prediction's responsibilities and the
    target's responsibilities; only the weight head learns. -> the prediction's responsibilities PxK."""
    with torch.no_grad():
        em_pred = mixture_responsibilities(pred, prompts)
        em_target = mixture_responsibilities(target, prompts)
    stepper.step(F.mse_loss(model.weight_head(em_pred), em_target))
    return em_pred


def prompt_step(
    model: AESPAModel,
    stepper: Stepper,
    state: RoundState,
    embedding: torch.Tensor,
    weights: torch.Tensor,
    eps: torch.Tensor | None,
    target: torch.Tensor,
) -> None:
    """SPEC §4.2 step 3: recompute the prediction with the new clicks; only the prompt encoder and the
    mean/variance head learn (fusion, decoder and weight head frozen).

    `state` already holds the new clicks and the new mask prompt — what the next round will see; the mixture
    weights are this round's (the weight head has not stepped yet), the latent samples `eps` this round's,
    and `embedding` is this round's SAM embedding, detached (the encoder is frozen here; reusing it saves a
    ViT pass per round).
    """
    with stepper.autocast(), frozen(model.fcomb, model.mask_decoder, model.weight_head):
        prompts = state.prompts(model, weights=weights)
        loss = bce_loss(model.decode_round(embedding, prompts, eps).logits.mean(1), target)
    stepper.step(loss)


def update_mixture(model: AESPAModel, prompts: Prompts) -> None:
    """Move the stored mixture towards the last round's per-image mixture, averaged over the batch and the
    ranks (one collective for all three)."""
    batch = [t.detach().float().mean(0) for t in (prompts.weights, prompts.means, prompts.variances)]  # K each
    flat = mean_over_ranks(torch.cat(batch))
    model.update_mixture_state(*flat.split([b.numel() for b in batch]))


def round_metrics(batch: Batch, user: User, selection: Selection) -> dict[str, torch.Tensor]:
    """Every metric of SPEC §6 for one round: personalised ones of the rows' predictions against the followed
    masks (P values), set ones of each image's candidate set (B values)."""
    rows = user.rows
    values = personalised_metrics(selection.pred, batch.raters[rows], batch.valid[rows], user.followed)
    candidates, candidate_valid = user.candidate_set(selection)
    values.update(set_metrics(candidates, batch.raters, batch.valid, pred_valid=candidate_valid))
    return values


def train_batch(
    model: AESPAModel, stepper: Stepper, batch: Batch, cfg: RunConfig, mode: Mode
) -> list[dict[str, torch.Tensor]]:
    """One training batch (SPEC §4.1, §4.2): per round a network step, the user's click, the prompt step (when
    the mode takes it) and the weight-head step. Returns one dict of per-image values per round."""
    user = mode.user(batch, cfg.loop, "train")
    state = RoundState.start(batch.size, batch.images.shape[-1], batch.images.device, user.first_click())
    rows = []
    for _ in range(cfg.loop.clicks):
        eps = user.noise(model.latent_dim)
        with torch.no_grad():  # 1. network step: prompt side and heads without gradient
            prompts = state.prompts(model)
        with stepper.autocast():
            embedding = model.image_encoder(batch.images)
            decoded = model.decode_round(embedding, prompts, eps)
            loss = bce_loss(decoded.logits.mean(1), user.target)
        stepper.step(loss)

        selection = user.select(decoded.detach())
        row = round_metrics(batch, user, selection)
        row["loss"] = loss.detach().expand(batch.size)
        rows.append(row)
        state.clicks.add(*user.click(selection, state.clicks.exclude, cfg.loop.click_strategy))  # 2. next click
        state.prev_low = selection.mask_prompt
        if user.trains_prompt(cfg.loop):  # 3. prompt step
            prompt_step(model, stepper, state, embedding.detach(), prompts.weights.detach(), eps, user.target)
        state.em_weights = weight_head_step(model, stepper, selection.pred, user.target, prompts)  # 4.
    update_mixture(model, prompts)
    return rows


# --- validation and figures ----------------------------------------------------------------------------


@dataclass
class Interaction:
    """What `interact` recorded: per round the selection, the loss against the target (P), Dice against the
    followed mask (P); and the clicks made."""

    selections: list[Selection] = field(default_factory=list)
    losses: list[torch.Tensor] = field(default_factory=list)
    dice_follow: list[torch.Tensor] = field(default_factory=list)
    clicks: ClickState | None = None


@torch.no_grad()
def interact(
    model: AESPAModel, batch: Batch, embedding: torch.Tensor | None, user: User, rounds: int, strategy: str
) -> Interaction:
    """Run `rounds` rounds without optimisation. `embedding` BxCxGxG is the batch's SAM embedding, reused by
    every round and row (only the fusion and the decoder rerun); None recomputes it every round."""
    rows, size = user.rows, batch.images.shape[-1]
    state = RoundState.start(len(rows), size, batch.images.device, user.first_click())
    row_embedding = None if embedding is None else embedding[rows]  # PxCxGxG, gathered once
    out = Interaction()
    for _ in range(rounds):
        emb = model.image_encoder(batch.images)[rows] if row_embedding is None else row_embedding
        prompts, decoded = predict_round(model, state, emb, user.noise(model.latent_dim))
        selection = user.select(decoded)
        out.selections.append(selection)
        out.losses.append(bce_loss(decoded.logits.mean(1), user.target, per_image=True))
        out.dice_follow.append(dice(selection.pred, user.followed))
        state.clicks.add(*user.click(selection, state.clicks.exclude, strategy))
        state.advance(selection, mixture_responsibilities(selection.pred, prompts))
    out.clicks = state.clicks
    return out


def noc_of(dice_follow: list[torch.Tensor], first_round_clicks: int, budget: int) -> dict[str, torch.Tensor]:
    """NoC@τ (SPEC §4.4) from per-round Dice against the followed mask; round i (0-based) used
    first_round_clicks + i clicks, and NoC counts the predictions made with 1..budget clicks."""
    start = 1 - first_round_clicks
    return noc(torch.stack(dice_follow[start : start + budget], 1), budget=budget)


def noc_rounds(first_round_clicks: int, budget: int) -> int:
    """Rounds an interaction needs so that its last prediction used `budget` clicks."""
    return budget + 1 - first_round_clicks


@torch.no_grad()
def validate_batch(
    model: AESPAModel, batch: Batch, cfg: RunConfig, mode: Mode, embedding: torch.Tensor | None = None
) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """SPEC §4.4 for one batch: per round the personalised metrics of every row's prediction and the set metrics
    of every image's candidate set, and NoC with centre clicks.

    The SAM embedding is computed once and reused by every round and row (unless `-no_embedding_reuse`).
    """
    loop = cfg.loop
    if embedding is None and not loop.no_embedding_reuse:
        embedding = model.image_encoder(batch.images)
    noc_here = loop.noc_clicks > 0 and loop.val_click_strategy == "center"
    rounds = max(loop.clicks, noc_rounds(mode.first_round_clicks, loop.noc_clicks) if noc_here else 0)
    user = mode.user(batch, loop, "validate")
    run = interact(model, batch, embedding, user, rounds, loop.val_click_strategy)
    rows = []
    for selection, loss in zip(run.selections[: loop.clicks], run.losses):
        row = round_metrics(batch, user, selection)
        row["loss"] = loss
        rows.append(row)
    dice_follow = run.dice_follow
    if loop.noc_clicks > 0 and not noc_here:  # NoC always uses centre clicks
        user.restart()
        dice_follow = interact(
            model, batch, embedding, user, noc_rounds(mode.first_round_clicks, loop.noc_clicks), "center"
        ).dice_follow
    noc_values = noc_of(dice_follow, mode.first_round_clicks, loop.noc_clicks) if loop.noc_clicks else {}
    return rows, noc_values


@torch.no_grad()
def qualitative(
    model: AESPAModel, batch: Batch, cfg: RunConfig, mode: Mode
) -> tuple[torch.Tensor, list[torch.Tensor], ClickState]:
    """For figures: the followed masks BxSxS, the prediction of every round, the clicks (one row per image)."""
    user = mode.user(batch, cfg.loop, "figure")
    run = interact(model, batch, model.image_encoder(batch.images), user, cfg.loop.clicks, cfg.loop.val_click_strategy)
    return user.followed, [s.pred for s in run.selections], run.clicks
