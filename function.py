"""SPA (SPEC §4.2, §4.4): a preference target per image, several latent samples per round, candidates found by
k-means, and clicks on where the candidate the user selects differs from the other samples."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from clicks import next_click
from interaction import (
    Batch, ClickState, bce_loss, draw_among, mean_of, pick, prompt_side, raters_agreeing, round_metrics, weight_head_loss,
)  # fmt: skip
from kmeans import batched_kmeans
from models import AESPAModel, responsibilities
from multirater_metrics import dice, noc
from optim_step import Stepper, frozen
from rng import KeyedRandom, normal, uniform

Source = torch.Generator | KeyedRandom


def preference_target(raters: torch.Tensor, valid: torch.Tensor, source: Source) -> torch.Tensor:
    """The rater preference SPA trains towards, per image: BxSxS float {0, 1}.

    A value of the mean rater map is drawn (with p = 0.8 among its divergent values, neither 0 nor 1), then a
    pixel holding it; the label there is round(value), flipped with p = 0.2 when the value is divergent. The
    target is the majority (>= 0.5) of the raters whose mask has that label at that pixel.
    """
    b, r, s, _ = raters.shape
    n = valid.sum(1)  # B
    counts = (raters * valid[..., None, None]).sum(1).round().long()  # BxSxS raters marking each pixel
    levels = torch.arange(r + 1, device=raters.device)  # possible counts
    present = (counts.flatten(1)[:, None, :] == levels[None, :, None]).any(2)  # Bx(R+1)
    divergent = present & (levels > 0) & (levels < n[:, None])
    use_divergent = (uniform((b,), raters.device, source) < 0.8) & divergent.any(1)
    level = draw_among(torch.where(use_divergent[:, None], divergent, present), source)  # B
    pixel = draw_among((counts == level[:, None, None]).flatten(1), source)  # B flat index
    is_divergent = (level > 0) & (level < n)
    label = torch.round(level / n.clamp(min=1)).long()
    flip = is_divergent & (uniform((b,), raters.device, source) >= 0.8)
    label = torch.where(flip, 1 - label, label)
    points = torch.stack([pixel % s, pixel // s], 1).float()  # Bx2 (x, y)
    return (mean_of(raters, raters_agreeing(raters, valid, points, label)) >= 0.5).float()


def initial_click(raters: torch.Tensor, valid: torch.Tensor, target: torch.Tensor, source: Source):
    """A random pixel where every valid rater marks foreground (label 1), else where all agree on background
    (label 0), else any pixel labelled from the target. -> points Bx2 (x, y), labels B."""
    b, _, s, _ = raters.shape
    counts = (raters * valid[..., None, None]).sum(1).flatten(1)  # Bx(SS)
    n = valid.sum(1, keepdim=True).to(counts.dtype)
    all_fg, all_bg = counts == n, counts == 0
    has_fg, has_bg = all_fg.any(1, keepdim=True), all_bg.any(1, keepdim=True)
    where = torch.where(has_fg, all_fg, torch.where(has_bg, all_bg, torch.ones_like(all_fg)))
    pixel = draw_among(where, source)
    label = torch.where(has_fg[:, 0], 1, torch.where(has_bg[:, 0], 0, target.flatten(1).gather(1, pixel[:, None])[:, 0].long()))
    return torch.stack([pixel % s, pixel // s], 1).float(), label.long()


def decode_samples(model: AESPAModel, embedding: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor,
                   weights: torch.Tensor, means: torch.Tensor, variances: torch.Tensor, eps: torch.Tensor,
                   multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Decode M latent samples per image: eps BxMxL -> (logits BxMxSxS, low-res BxMx4Gx4G)."""
    b, m = eps.shape[:2]
    rep = lambda t: t.repeat_interleave(m, dim=0)  # noqa: E731  B... -> (B*M)...
    z = model.latent(rep(weights), rep(means), rep(variances), eps.reshape(b * m, -1))
    low = model.decode(rep(embedding), z, rep(sparse), rep(dense), multimask)  # (B*M)x1x4Gx4G
    logits = model.upscale(low)
    return logits.reshape(b, m, *logits.shape[-2:]).float(), low.reshape(b, m, *low.shape[-2:]).float()


@dataclass
class Candidates:
    """k-means of one round's samples: centres BxKxSxS, the one the user selects (nearest to the target)."""

    centres: torch.Tensor
    members: torch.Tensor  # BxM bool: samples of the selected cluster
    selected_mean: torch.Tensor  # BxSxS
    others_mean: torch.Tensor  # BxSxS mean of the other samples (the selected mean when there is none)


def find_candidates(probs: torch.Tensor, target: torch.Tensor, k: int, source: Source) -> Candidates:
    """Per-image k-means of the BxMxSxS sample probabilities; the user picks the centre nearest to the target."""
    b, m, s, _ = probs.shape
    labels, centres = batched_kmeans(probs.reshape(b, m, s * s), k, generator=source)
    centres = centres.reshape(b, k, s, s)
    selected = (centres - target[:, None]).pow(2).flatten(2).sum(2).argmin(1)  # B
    members = labels == selected[:, None]  # BxM
    chosen = pick(centres, selected)
    others = ~members
    others_mean = torch.where(others.any(1)[:, None, None], mean_of(probs, others), chosen)
    return Candidates(centres, members, chosen, others_mean)


def candidate_click(strategy: str, cand: Candidates, target: torch.Tensor, exclude: torch.Tensor, source: Source):
    """Top-k on |selected - others| (labelled from the target), or the centre click of the selected candidate's
    error against the target."""
    if strategy == "topk":
        return next_click("topk", cand.others_mean, cand.selected_mean, label_source=target, exclude=exclude, generator=source)
    return next_click("center", cand.selected_mean, target, exclude=exclude, generator=source)


def train_batch(model: AESPAModel, stepper: Stepper, batch: Batch, args: argparse.Namespace) -> list[dict[str, torch.Tensor]]:
    """One batch of SPA training: per round a network step on M samples, candidates and a click, a prompt
    step, and the mixture update with the weight-head step. Returns per-round dicts of per-image values."""
    b, size, dev, generator = batch.size, batch.images.shape[-1], batch.images.device, batch.source
    yx, multimask = args.compat == "reference", args.multimask_output > 1
    target = preference_target(batch.raters, batch.valid, generator)
    clicks = ClickState(b, size, dev)
    clicks.add(*initial_click(batch.raters, batch.valid, target, generator))
    prev_low = em_weights = None
    rows = []
    for _ in range(args.clicks):
        with torch.no_grad():
            sparse, dense, means, variances, weights = prompt_side(model, clicks, prev_low, em_weights, b, yx)
        eps = normal((b, args.num_samples, model.latent_dim), dev, generator)
        with stepper.autocast():  # 1. network step on the mean of the samples' logits
            embedding = model.image_encoder(batch.images)
            logits, low = decode_samples(model, embedding, sparse, dense, weights, means, variances, eps, multimask)
            loss = bce_loss(logits.mean(1), target)
        stepper.step(loss)

        probs = torch.sigmoid(logits.detach())  # 2. candidates and the next click
        cand = find_candidates(probs, target, args.n_clusters, generator)
        row = round_metrics(cand.selected_mean, cand.centres, batch.raters, batch.valid, target)
        row["loss"] = loss.detach().expand(b)
        rows.append(row)
        clicks.add(*candidate_click(args.click_strategy, cand, target, clicks.exclude, generator))

        with stepper.autocast(), frozen(model.fcomb, model.mask_decoder, model.weight_head):  # 3. prompt step
            sparse, dense, means_p, variances_p, _ = prompt_side(model, clicks, prev_low, em_weights, b, yx)
            logits_p, _ = decode_samples(model, embedding.detach(), sparse, dense, weights.detach(), means_p,
                                         variances_p, eps, multimask)  # fmt: skip
            prompt_loss = bce_loss(logits_p.mean(1), target)
        stepper.step(prompt_loss)

        w_loss, em_weights = weight_head_loss(model, cand.selected_mean, target, weights, means, variances)  # 4.
        stepper.step(w_loss)
        prev_low = mean_of(low.detach(), cand.members)[:, None]  # Bx1x4Gx4G: the selected cluster's mean
    model.update_mixture_state(weights, means, variances)
    return rows


@torch.no_grad()
def interact(model: AESPAModel, batch: Batch, embedding: torch.Tensor | None, target: torch.Tensor,
             first_click: tuple[torch.Tensor, torch.Tensor], rounds: int, strategy: str,
             args: argparse.Namespace) -> tuple[list[dict[str, torch.Tensor]], ClickState]:  # fmt: skip
    """Run `rounds` SPA rounds without optimisation: samples -> candidates -> the user's selection -> click.

    Returns per round {'selected' BxSxS, 'centres' BxKxSxS, 'loss' B} and the clicks made.
    """
    b, size, dev, source = batch.size, batch.images.shape[-1], batch.images.device, batch.source
    yx, multimask = args.compat == "reference", args.multimask_output > 1
    clicks = ClickState(b, size, dev)
    clicks.add(*first_click)
    prev_low = em_weights = None
    out = []
    for _ in range(rounds):
        emb = model.image_encoder(batch.images) if embedding is None else embedding
        sparse, dense, means, variances, weights = prompt_side(model, clicks, prev_low, em_weights, b, yx)
        eps = normal((b, args.num_samples, model.latent_dim), dev, source)
        logits, low = decode_samples(model, emb, sparse, dense, weights, means, variances, eps, multimask)
        cand = find_candidates(torch.sigmoid(logits), target, args.n_clusters, source)
        out.append({"selected": cand.selected_mean, "centres": cand.centres,
                    "loss": bce_loss(logits.mean(1), target, per_image=True)})  # fmt: skip
        clicks.add(*candidate_click(strategy, cand, target, clicks.exclude, source))
        em_weights = responsibilities(cand.selected_mean, weights.float(), means.float(), variances.float())
        prev_low = mean_of(low, cand.members)[:, None]  # Bx1x4Gx4G
    return out, clicks


@torch.no_grad()
def validate_batch(model: AESPAModel, batch: Batch, args: argparse.Namespace,
                   embedding: torch.Tensor | None = None) -> tuple[list[dict], dict[str, torch.Tensor]]:  # fmt: skip
    """SPEC §4.4 for SPA: preference target and initial click per image, then the rounds of `interact`.

    The SAM embedding is computed once (unless `-no_embedding_reuse`); every draw is keyed per image.
    Returns per-round dicts of per-image values (the selected candidate's metrics, the K candidates' set
    metrics) and NoC of the selected candidate against the target with centre clicks.
    """
    if embedding is None and not args.no_embedding_reuse:
        embedding = model.image_encoder(batch.images)
    target = preference_target(batch.raters, batch.valid, batch.source)
    first_click = initial_click(batch.raters, batch.valid, target, batch.source)
    noc_here = args.noc_clicks > 0 and args.val_click_strategy == "center"
    rounds = max(args.clicks, args.noc_clicks if noc_here else 0)  # round t (0-based) used t + 1 clicks
    out, _ = interact(model, batch, embedding, target, first_click, rounds, args.val_click_strategy, args)
    rows = []
    for r in out[: args.clicks]:
        row = round_metrics(r["selected"], r["centres"], batch.raters, batch.valid, target)
        row["loss"] = r["loss"]
        rows.append(row)
    if args.noc_clicks > 0 and not noc_here:  # NoC always uses centre clicks
        out, _ = interact(model, batch, embedding, target, first_click, args.noc_clicks, "center", args)
    dice_target = [dice(r["selected"], target) for r in out[: args.noc_clicks]]
    noc_values = noc(torch.stack(dice_target, 1), budget=args.noc_clicks) if args.noc_clicks else {}
    return rows, noc_values


@torch.no_grad()
def qualitative(model: AESPAModel, batch: Batch, args: argparse.Namespace) -> tuple[torch.Tensor, list[torch.Tensor], ClickState]:
    """For figures: the preference target BxSxS, the selected candidate of every round, the clicks."""
    target = preference_target(batch.raters, batch.valid, batch.source)
    first_click = initial_click(batch.raters, batch.valid, target, batch.source)
    embedding = model.image_encoder(batch.images)
    out, clicks = interact(model, batch, embedding, target, first_click, args.clicks, args.val_click_strategy, args)
    return target, [r["selected"] for r in out], clicks
