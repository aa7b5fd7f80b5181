"""docs/evaluation.md#validation-protocol for one batch: per round the metrics of every row's prediction, whether it
follows its rater, the following matrix, per-image values for paired comparisons, and the interactive counts (NoC, NoI);
figures.

Keys written per round besides docs/metrics.md's (averaged by the accumulator, each over the rows or images it has):
    NSD_follow             normalised surface Dice (multirater_metrics.NSD_TOLERANCE mm, the batch's pixel spacing)
                           of each row's prediction against its followed mask
    Follow_accuracy        1 when the prediction is closer (Dice) to the followed rater than to every other
                           valid rater, else 0 (rows with another valid rater; chance 1/R)
    Dice_follow@rater<k>   Dice_follow of the rows following rater slot k
    Dice_follow_nonempty / Dice_follow_empty, Gain_over_consensus_nonempty
                           the rows whose followed mask is non-empty / empty (where "predict nothing" scores 1)
    matrix/<i>/<j>         Dice of the prediction made following rater i against rater j (the following matrix;
                           kept out of metrics.jsonl, written as follow_matrix_*.json)
and once per interaction (`ValidatedBatch.counts`, one value per row): NoC@τ, NoF@τ, NoI@τ, and over the predictions
made with 1..AUC_CLICKS clicks, as the CVPR 2025 interactive-segmentation challenge scores them: DSC_AUC, NSD_AUC
(`click_auc` of Dice_follow, NSD_follow) and DSC_Final, NSD_Final (their values at AUC_CLICKS clicks).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from conf import metrics
from interaction.clicks import NOC_STRATEGY, ClickState
from interaction.mode import Mode, RunSettings, User
from interaction.rounds import image_embedding, interact, round_metrics
from models import AESPAModel
from multirater_metrics import NOC_THRESHOLDS, click_auc, dice, noc, surface_dice
from pipeline.batch import Batch

MATRIX_PREFIX = "matrix/"
NOI_ROUNDS, NOI_FAILURE = 6, 10.0  # SPA's convention: iterations within 6, a failure counts 10
AUC_CLICKS = 5  # the CVPR 2025 challenge's click predictions (after its first, box, prediction)


@dataclass
class ValidatedBatch:
    """One validated batch: `rounds` per round {metric: per-row or per-image values}, `counts` {NoC@τ, NoF@τ,
    NoI@τ: per row}, `per_image` rows of per_image.csv (plain values; epoch and split are added by the caller);
    `user` (its rows and followed raters) and `final`, each row's last prediction PxSxS (a session's memory reads
    them)."""

    rounds: list[dict[str, torch.Tensor]]
    counts: dict[str, torch.Tensor]
    per_image: list[dict]
    user: User | None = None
    final: torch.Tensor | None = None


def noc_rounds(first_round_clicks: int, budget: int) -> int:
    """Rounds an interaction needs so that its last prediction used `budget` clicks."""
    return budget + 1 - first_round_clicks


def noc_of(dice_follow: list[torch.Tensor], first_round_clicks: int, budget: int) -> dict[str, torch.Tensor]:
    """NoC@τ (docs/evaluation.md#validation-protocol) from per-round Dice against the followed mask; round i (0-based)
    used first_round_clicks + i clicks, and NoC counts the predictions made with 1..budget clicks."""
    start = 1 - first_round_clicks
    return noc(torch.stack(dice_follow[start : start + budget], 1), budget=budget)


def noi_of(dice_follow: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """NoI@τ, SPA's reporting convention: the interaction rounds (predictions) until Dice reaches τ within the first
    six, a failure counting 10."""
    scores = torch.stack(dice_follow[:NOI_ROUNDS], 1)  # PxN
    out = {}
    for t in NOC_THRESHOLDS:
        reached = scores >= t
        first = (reached.int().argmax(1) + 1).float()
        out[f"NoI@{t:.2f}"] = torch.where(reached.any(1), first, torch.full_like(first, NOI_FAILURE))
    return out


def following(batch: Batch, user: User, pred: torch.Tensor) -> dict[str, torch.Tensor]:
    """Follow_accuracy, Dice_follow per followed rater and the following matrix for one round's predictions PxSxS
    (nothing when the user does not follow raters)."""
    if user.rater is None:
        return {}
    raters, valid = batch.raters[user.rows], batch.valid[user.rows]  # PxRxSxS, PxR
    pair = dice(pred[:, None], raters)  # PxR: each row's prediction against every rater
    own = pair.gather(1, user.rater[:, None])[:, 0]  # P
    others = valid.clone()
    others[torch.arange(len(own)), user.rater] = False
    best_other = pair.masked_fill(~others, -1.0).amax(1)
    accuracy = torch.where(others.any(1), (own > best_other).float(), torch.full_like(own, float("nan")))
    out = {"Follow_accuracy": accuracy}
    for k in range(raters.shape[1]):
        mine = user.rater == k
        if bool(mine.any()):
            out[f"Dice_follow@rater{k}"] = own[mine]
            for j in valid[mine].any(0).nonzero()[:, 0].tolist():
                both = valid[mine][:, j]
                out[f"{MATRIX_PREFIX}{k}/{j}"] = pair[mine][both, j]
    return out


def empty_split(values: dict[str, torch.Tensor], empty: torch.Tensor) -> dict[str, torch.Tensor]:
    """Dice_follow (and Gain) of the rows with a non-empty followed mask, and Dice_follow of the empty ones."""
    return {
        "Dice_follow_nonempty": values["Dice_follow"][~empty],
        "Gain_over_consensus_nonempty": values["Gain_over_consensus"][~empty],
        "Dice_follow_empty": values["Dice_follow"][empty],
    }


def surface_metrics(batch: Batch, user: User, pred: torch.Tensor) -> dict[str, torch.Tensor]:
    """NSD_follow of one round's predictions PxSxS against the rows' followed masks, in the batch's pixel spacing."""
    spacing = None if batch.spacing is None else batch.spacing[user.rows]
    return {"NSD_follow": surface_dice(pred, user.followed, spacing)}


def click_curve_metrics(rounds: list[dict[str, torch.Tensor]], clicks: list[int]) -> dict[str, torch.Tensor]:
    """DSC_AUC, NSD_AUC, DSC_Final, NSD_Final per row (docs/metrics.md#interactive) from the rounds' Dice_follow and
    NSD_follow (`clicks`: the clicks each round's prediction used): over the predictions made with 1..AUC_CLICKS
    clicks, as the challenge scores its five; nothing when the rounds do not reach AUC_CLICKS clicks (-clicks)."""
    chosen = [t for t, n in enumerate(clicks) if 1 <= n <= AUC_CLICKS]
    if len(chosen) < AUC_CLICKS:
        return {}
    out = {}
    for name, key in (("DSC", "Dice_follow"), ("NSD", "NSD_follow")):
        curve = torch.stack([rounds[t][key] for t in chosen], 1)  # PxAUC_CLICKS
        out[f"{name}_AUC"], out[f"{name}_Final"] = click_auc(curve), curve[:, -1]
    return out


def _per_row(values: torch.Tensor, name: str, n_rows: int) -> list[float]:
    out = values.tolist()
    if len(out) != n_rows:
        raise ValueError(f"per_image metric {name}: {len(out)} values for {n_rows} interaction rows (conf/metrics.py)")
    return out


def per_image_rows(
    batch: Batch,
    user: User,
    mode: Mode,
    cfg: RunSettings,
    rounds: list[dict],
    counts: dict[str, torch.Tensor] | None = None,
) -> list[dict]:
    """Rows of per_image.csv: one per (image, followed rater, round), with every per_image metric of conf/metrics.py
    (read now, so that a row added there shows here): a per-round one from `rounds`, a per_run one (one value per
    interaction) from `counts` on every round's row, NaN where this mode computes no such value."""
    names = [batch.names[i] for i in user.rows.tolist()]
    followed = user.rater.tolist() if user.rater is not None else [-1] * len(names)
    empty = (~user.followed.flatten(1).gt(0.5).any(1)).tolist()
    keys = metrics.names("per_image")
    once = {k: _per_row(v, k, len(names)) for k, v in (counts or {}).items() if k in keys}
    out = []
    for t, values in enumerate(rounds, start=1):
        columns = {**{k: _per_row(values[k], k, len(names)) for k in keys if k in values}, **once}
        clicks = mode.clicks_of_round(t, cfg.options)
        for i, name in enumerate(names):
            row = {"mode": mode.name, "round": t, "clicks": clicks, "image": name, "followed": followed[i]}
            row.update({k: columns[k][i] if k in columns else float("nan") for k in keys})
            row["empty_followed"] = int(empty[i])
            out.append(row)
    return out


@torch.no_grad()
def validate_batch(
    model: AESPAModel | None,
    batch: Batch,
    cfg: RunSettings,
    mode: Mode,
    embedding: torch.Tensor | None = None,
    noc: bool = True,
) -> ValidatedBatch:
    """docs/evaluation.md#validation-protocol for one batch: per round the personalised metrics of every row's
    prediction, the set metrics of every image's candidate set, how it follows its rater; NoC with centre clicks and NoI
    (`noc` False: no NoC, e.g. on the validation split, where only the checkpoint choice is made).

    The SAM embedding is computed once and reused by every round and row (unless `-no_embedding_reuse`).
    """
    loop = cfg.loop
    budget = loop.noc_clicks if noc else 0
    if embedding is None and not loop.no_embedding_reuse and model is not None:
        embedding = image_embedding(model, batch)
    first = mode.first_round_clicks(cfg.options)
    noc_here = budget > 0 and loop.val_click_strategy == NOC_STRATEGY
    rounds = max(loop.clicks, noc_rounds(first, budget) if noc_here else 0)
    user = mode.user(batch, loop, cfg.options, "validate")
    run = interact(model, batch, embedding, user, rounds, loop.val_click_strategy, mode)
    empty = ~user.followed.flatten(1).gt(0.5).any(1)
    per_round = []
    for selection, loss in zip(run.selections[: loop.clicks], run.losses):
        values = round_metrics(batch, user, selection)
        if loss is not None:
            values["loss"] = loss
        values.update(surface_metrics(batch, user, selection.pred))
        values.update(following(batch, user, selection.pred))
        values.update(empty_split(values, empty))
        per_round.append(values)
    dice_follow = run.dice_follow
    if budget > 0 and not noc_here:  # NoC always uses centre clicks
        user.restart()
        dice_follow = interact(model, batch, embedding, user, noc_rounds(first, budget), NOC_STRATEGY, mode).dice_follow
    counts = noc_of(dice_follow, first, budget) if budget else {}
    if len(run.dice_follow) >= NOI_ROUNDS:
        counts.update(noi_of(run.dice_follow))
    counts.update(
        click_curve_metrics(per_round, [mode.clicks_of_round(t, cfg.options) for t in range(1, len(per_round) + 1)])
    )
    final = run.selections[loop.clicks - 1].pred
    return ValidatedBatch(per_round, counts, per_image_rows(batch, user, mode, cfg, per_round, counts), user, final)


@torch.no_grad()
def qualitative(
    model: AESPAModel | None, batch: Batch, cfg: RunSettings, mode: Mode
) -> tuple[torch.Tensor, list[torch.Tensor], ClickState]:
    """For figures: the followed masks BxSxS, the prediction of every round, the clicks (one row per image)."""
    user = mode.user(batch, cfg.loop, cfg.options, "figure")
    embedding = None if model is None else image_embedding(model, batch)
    run = interact(model, batch, embedding, user, cfg.loop.clicks, cfg.loop.val_click_strategy, mode)
    return user.followed, [s.pred for s in run.selections], run.clicks
