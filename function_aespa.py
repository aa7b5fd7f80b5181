"""AESPA (SPEC §4.1, §4.4): clicks simulated from one followed rater; the target is the mean of the raters
that agree with the clicks."""

from __future__ import annotations

import argparse

import torch

from clicks import next_click
from interaction import (
    Batch, ClickState, bce_loss, draw_among, mean_of, pick, predict_round, prompt_side, raters_agreeing,
    round_metrics, switch_raters, weight_head_loss,
)  # fmt: skip
from models import AESPAModel
from multirater_metrics import dice, noc, personalised_metrics, set_metrics
from optim_step import Stepper, frozen
from rng import KeyedRandom


def update_consistent(consistent: torch.Tensor, agree: torch.Tensor, target_from: str) -> torch.Tensor:
    """Raters the target is made of after a click: those agreeing with it (`last`), or with every click so
    far (`all`), falling back to `last` for an image where no rater agrees with all of them."""
    if target_from == "last":
        return agree
    both = consistent & agree
    return torch.where(both.any(1, keepdim=True), both, agree)


def train_batch(model: AESPAModel, stepper: Stepper, batch: Batch, args: argparse.Namespace) -> list[dict[str, torch.Tensor]]:
    """One batch of AESPA training: T rounds of (network step, click, mixture update, weight-head step).

    Returns one dict of per-image values per round (metrics of the round's prediction and its loss).
    """
    b, size, generator = batch.size, batch.images.shape[-1], batch.source
    yx = args.compat == "reference"
    clicks = ClickState(b, size, batch.images.device)
    followed = draw_among(batch.valid, generator)
    consistent = batch.valid.clone()
    target = mean_of(batch.raters, consistent)
    prev_low = em_weights = None
    rows = []
    for _ in range(args.clicks):
        # 1. network step: prompts and heads without gradient, ε = 0
        with torch.no_grad():
            sparse, dense, means, variances, weights = prompt_side(model, clicks, prev_low, em_weights, b, yx)
            z = model.latent(weights, means, variances)
        with stepper.autocast():
            low = model.decode(model.image_encoder(batch.images), z, sparse, dense, args.multimask_output > 1)
            logits = model.upscale(low)[:, 0].float()
            loss = bce_loss(logits, target)
        stepper.step(loss)
        probs = torch.sigmoid(logits.detach())
        row = round_metrics(probs, probs[:, None], batch.raters, batch.valid, pick(batch.raters, followed))
        row["loss"] = loss.detach().expand(b)
        rows.append(row)

        # 2. next click, from the (possibly switched) followed rater; new soft target
        followed = switch_raters(followed, batch.valid, args.switch_prob, generator)
        points, labels = next_click(args.click_strategy, probs, pick(batch.raters, followed),
                                    exclude=clicks.exclude, generator=generator)  # fmt: skip
        clicks.add(points, labels)
        consistent = update_consistent(consistent, raters_agreeing(batch.raters, batch.valid, points, labels), args.target_from)
        target = mean_of(batch.raters, consistent)
        if args.train_prompt:
            prompt_step(model, stepper, batch, clicks, low.detach(), em_weights, target, yx, args)

        # 3-4. mixture update and weight-head step
        w_loss, em_weights = weight_head_loss(model, probs, target, weights, means, variances)
        stepper.step(w_loss)
        prev_low = low.detach().float()
    model.update_mixture_state(weights, means, variances)
    return rows


def prompt_step(model: AESPAModel, stepper: Stepper, batch: Batch, clicks: ClickState, prev_low: torch.Tensor,
                em_weights: torch.Tensor | None, target: torch.Tensor, yx: bool, args: argparse.Namespace) -> None:  # fmt: skip
    """`-train_prompt`: SPA's step 3 — prompt encoder and mean/variance head learn from the new clicks."""
    b = batch.size
    with torch.no_grad():
        embedding = model.image_encoder(batch.images)
    with stepper.autocast(), frozen(model.fcomb, model.mask_decoder, model.weight_head):
        sparse, dense, means, variances, weights = prompt_side(model, clicks, prev_low, em_weights, b, yx)
        z = model.latent(weights.detach(), means, variances)
        logits = model.upscale(model.decode(embedding, z, sparse, dense, args.multimask_output > 1))[:, 0].float()
        loss = bce_loss(logits, target)
    stepper.step(loss)


@torch.no_grad()
def validate_batch(model: AESPAModel, batch: Batch, args: argparse.Namespace,
                   embedding: torch.Tensor | None = None) -> tuple[list[dict], dict[str, torch.Tensor]]:  # fmt: skip
    """SPEC §4.4 for AESPA: follow every valid rater (or one random rater) per image, with no optimisation.

    The SAM embedding is computed once and shared by every round and followed rater (unless
    `-no_embedding_reuse`). Returns per-round dicts of values — personalised metrics per (image, followed
    rater), set metrics of the predictions made following each rater per image — and the NoC values.
    """
    if embedding is None and not args.no_embedding_reuse:
        embedding = model.image_encoder(batch.images)
    if args.val_follow == "all":
        image_idx, rater_idx = batch.valid.nonzero(as_tuple=True)  # one interaction per (image, valid rater)
    else:
        image_idx = torch.arange(batch.size, device=batch.images.device)
        rater_idx = draw_among(batch.valid, batch.source)
    noc_here = args.noc_clicks > 0 and args.val_click_strategy == "center"
    rounds = max(args.clicks, args.noc_clicks + 1 if noc_here else 0)  # round k (0-based) follows k clicks
    run = lambda strategy, n: interact(model, batch, embedding, image_idx, rater_idx, n, strategy, args)  # noqa: E731
    preds, dice_follow, _ = run(args.val_click_strategy, rounds)

    rows = []
    followed, raters, valid = batch.raters[image_idx, rater_idx], batch.raters[image_idx], batch.valid[image_idx]
    chosen = torch.zeros_like(batch.valid)
    chosen[image_idx, rater_idx] = True
    for probs, losses in preds[: args.clicks]:
        row = personalised_metrics(probs, raters, valid, followed)
        row["loss"] = losses
        candidates = torch.zeros_like(batch.raters)  # BxRxSxS: the prediction made following each rater
        candidates[image_idx, rater_idx] = probs
        row.update(set_metrics(candidates, batch.raters, batch.valid, pred_valid=chosen))
        rows.append(row)
    if args.noc_clicks > 0 and not noc_here:  # NoC always uses centre clicks
        _, dice_follow, _ = run("center", args.noc_clicks + 1)
    noc_values = noc(torch.stack(dice_follow[1 : args.noc_clicks + 1], 1), budget=args.noc_clicks) if args.noc_clicks else {}
    return rows, noc_values


def interact(model: AESPAModel, batch: Batch, embedding: torch.Tensor | None, image_idx: torch.Tensor,
             rater_idx: torch.Tensor, rounds: int, strategy: str,
             args: argparse.Namespace) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list[torch.Tensor], ClickState]:  # fmt: skip
    """Run `rounds` rounds for the (image, followed rater) pairs; only fusion and decoder rerun per round.

    Returns per round (probabilities PxSxS, loss P), Dice against the followed rater (P) per round, and the
    clicks made.
    """
    p, size = len(image_idx), batch.images.shape[-1]
    yx = args.compat == "reference"
    followed = batch.raters[image_idx, rater_idx]  # PxSxS
    raters, valid = batch.raters[image_idx], batch.valid[image_idx]
    clicks = ClickState(p, size, batch.images.device)
    consistent = valid.clone()
    target = mean_of(raters, consistent)
    prev_low = em_weights = None
    source = batch.source.subset(image_idx, salt=rater_idx) if isinstance(batch.source, KeyedRandom) else batch.source
    preds, dice_follow = [], []
    pair_embedding = None if embedding is None else embedding[image_idx]  # PxCxGxG, gathered once
    for _ in range(rounds):
        emb = model.image_encoder(batch.images)[image_idx] if pair_embedding is None else pair_embedding
        out = predict_round(model, emb, clicks, prev_low, em_weights, yx, args.multimask_output > 1)
        preds.append((out.probs, bce_loss(out.logits, target, per_image=True)))
        dice_follow.append(dice(out.probs, followed))
        points, labels = next_click(strategy, out.probs, followed, exclude=clicks.exclude, generator=source)
        clicks.add(points, labels)
        consistent = update_consistent(consistent, raters_agreeing(raters, valid, points, labels), args.target_from)
        target = mean_of(raters, consistent)
        prev_low, em_weights = out.low, out.em_weights
    return preds, dice_follow, clicks


@torch.no_grad()
def qualitative(model: AESPAModel, batch: Batch, args: argparse.Namespace) -> tuple[torch.Tensor, list[torch.Tensor], ClickState]:
    """For figures: follow each image's first valid rater -> its mask BxSxS, the prediction of every round,
    the clicks."""
    image_idx = torch.arange(batch.size, device=batch.images.device)
    rater_idx = batch.valid.long().argmax(1)
    embedding = model.image_encoder(batch.images)
    preds, _, clicks = interact(model, batch, embedding, image_idx, rater_idx, args.clicks, args.val_click_strategy, args)
    return batch.raters[image_idx, rater_idx], [p for p, _ in preds], clicks

