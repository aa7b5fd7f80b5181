"""The interaction engine shared by the SPA (function.py) and AESPA (function_aespa.py) loops.

A batch is interacted with for several click rounds. Per round the model predicts from the clicks so far
and the previous round's low-resolution logits; a simulated user clicks on the error; the mixture
weights are updated from the prediction. The two modes differ only in whom the user follows, how the
target is formed and how many latent samples are decoded; what they share lives here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from augment import augment_batch
from clicks import append_click
from dataset import binarize_multiclass
from models import AESPAModel, responsibilities
from multirater_metrics import personalised_metrics, set_metrics
from rng import KeyedRandom, uniform

POS_WEIGHT = 2.0  # BCEWithLogits(pos_weight=2), as the original


@dataclass
class Batch:
    """One batch on the device: images Bx3xSxS, raters BxRxSxS float {0,1}, valid BxR bool, names, and
    keys B (dataset indices: validation draws its random numbers per image from them)."""

    images: torch.Tensor
    raters: torch.Tensor
    valid: torch.Tensor
    names: list[str]
    keys: torch.Tensor
    source: torch.Generator | KeyedRandom  # where this batch's random draws come from

    @property
    def size(self) -> int:
        return self.images.shape[0]

    def take(self, n: int) -> "Batch":
        """The first n images (keyed streams restart for them)."""
        source = KeyedRandom(self.source.seed, self.keys[:n]) if isinstance(self.source, KeyedRandom) else self.source
        return Batch(self.images[:n], self.raters[:n], self.valid[:n], self.names[:n], self.keys[:n], source)


def prepare_batch(data: dict, device: torch.device, generator: torch.Generator | None = None, seed: int = 0,
                  augment: bool = False) -> Batch | None:  # fmt: skip
    """Loader dict -> Batch; multi-class masks are reduced to one binary task per image (SPEC §4.3).

    Random draws come from `generator` (training) or, without one, from per-image streams keyed on the
    samples' dataset indices and `seed` (validation: independent of batching and sharding). `augment`
    applies a random flip / quarter turn per image (training only).

    Images without any valid rater (possible with `-valid_raters nonempty -keep_empty`) carry no target
    and are left out; None when none is left."""
    keep = data["valid_raters"].any(1)
    if not bool(keep.all()):
        data = {k: (v[keep] if torch.is_tensor(v) else [x for x, k_ in zip(v, keep.tolist()) if k_]) for k, v in data.items()}
        if not bool(keep.any()):
            return None
    raters = data["multi_rater"].to(device, non_blocking=True)  # BxRxCxSxS
    valid = data["valid_raters"].to(device, non_blocking=True)
    keys = data["index"].to(device)
    source = generator if generator is not None else KeyedRandom(seed, keys)
    if raters.shape[2] > 1:
        raters = binarize_multiclass(raters, valid, source)
    images, raters = data["image"].to(device, non_blocking=True), raters[:, :, 0]
    if augment:
        images, raters = augment_batch(images, raters, source)
    return Batch(images, raters, valid, list(data["name"]), keys, source)


class ClickState:
    """Clicks so far (points BxNx2 as (x, y), labels BxN) and the already-clicked pixels BxSxS."""

    def __init__(self, batch_size: int, size: int, device: torch.device):
        self.points: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None
        self.exclude = torch.zeros(batch_size, size, size, dtype=torch.bool, device=device)

    def add(self, points: torch.Tensor, labels: torch.Tensor) -> None:
        self.points, self.labels, self.exclude = append_click(self.points, self.labels, self.exclude, points, labels)

    def for_model(self, yx: bool = False) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Points as the prompt encoder takes them: (x, y), or (y, x) under `-compat reference`."""
        if self.points is None or not yx:
            return self.points, self.labels
        return self.points.flip(-1), self.labels


# --- raters ----------------------------------------------------------------------------------------

def draw_among(mask: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Index of a uniformly drawn True entry per row of a BxN bool mask: B long (0 for an all-False row)."""
    scores = uniform(tuple(mask.shape), mask.device, generator)
    return torch.where(mask, scores, -1.0).argmax(1)


def switch_raters(followed: torch.Tensor, valid: torch.Tensor, p: float, generator: torch.Generator | None) -> torch.Tensor:
    """Keep each image's followed rater with probability 1 - p, else switch uniformly to another valid one."""
    if p <= 0:
        return followed
    others = valid.clone()
    others[torch.arange(len(followed)), followed] = False
    switch = (uniform((len(followed),), valid.device, generator) < p) & others.any(1)
    return torch.where(switch, draw_among(others, generator), followed)


def pick(stack: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """stack BxRx... and index B -> Bx... (each image's entry `index[b]`)."""
    return stack[torch.arange(stack.shape[0], device=stack.device), index]


def raters_agreeing(raters: torch.Tensor, valid: torch.Tensor, points: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """BxR bool: valid raters whose mask at the click pixel (points Bx2 (x, y)) equals the click's label."""
    b, r, _, w = raters.shape
    flat = (points[:, 1].long() * w + points[:, 0].long())[:, None, None].expand(b, r, 1)  # BxRx1
    at_click = raters.flatten(2).gather(2, flat)[..., 0]  # BxR
    return valid & ((at_click > 0.5).long() == labels[:, None])


def mean_of(raters: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """Soft mean BxSxS of the chosen raters (BxR bool); an image with none chosen gets zeros."""
    w = chosen.to(raters.dtype)[..., None, None]
    return (raters * w).sum(1) / w.sum(1).clamp(min=1)


# --- model pieces ------------------------------------------------------------------------------------

def bce_loss(logits: torch.Tensor, target: torch.Tensor, per_image: bool = False) -> torch.Tensor:
    """BCEWithLogits(pos_weight=2) of BxSxS logits against a (soft) target: the mean, or B per-image means."""
    pos_weight = torch.tensor(POS_WEIGHT, device=logits.device, dtype=logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), pos_weight=pos_weight,
                                              reduction="none" if per_image else "mean")  # fmt: skip
    return loss.flatten(1).mean(1) if per_image else loss


def round_weights(model: AESPAModel, em_weights: torch.Tensor | None, batch_size: int) -> torch.Tensor:
    """Mixture weights of this round: the stored ones before any update, then the weight head's output."""
    return model.initial_weights(batch_size) if em_weights is None else model.weight_head(em_weights)


def prompt_side(model: AESPAModel, clicks: ClickState, prev_low: torch.Tensor | None, em_weights: torch.Tensor | None,
                batch_size: int, yx: bool) -> tuple[torch.Tensor, ...]:  # fmt: skip
    """Prompt embeddings and mixture of a round: sparse BxNxD, dense BxDxGxG, means, variances, weights BxK."""
    points, labels = clicks.for_model(yx)
    sparse, dense = model.encode_prompts(batch_size, points, labels, prev_low)
    means, variances = model.mixture_params(sparse)
    return sparse, dense, means, variances, round_weights(model, em_weights, batch_size)


@dataclass
class Round:
    """One deterministic prediction (ε = 0): low-res logits Bx1x4Gx4G, probabilities BxSxS, and the mixture
    responsibilities of the prediction BxK (the weight head's input next round)."""

    low: torch.Tensor
    logits: torch.Tensor
    probs: torch.Tensor
    em_weights: torch.Tensor


def predict_round(model: AESPAModel, embedding: torch.Tensor, clicks: ClickState, prev_low: torch.Tensor | None,
                  em_weights: torch.Tensor | None, yx: bool = False, multimask: bool = False) -> Round:  # fmt: skip
    """The prediction of one validation round from the SAM embedding BxCxGxG (AESPA's protocol, the demo)."""
    b = embedding.shape[0]
    sparse, dense, means, variances, weights = prompt_side(model, clicks, prev_low, em_weights, b, yx)
    z = model.latent(weights, means, variances)
    low = model.decode(embedding, z, sparse, dense, multimask).float()
    logits = model.upscale(low)[:, 0]
    probs = torch.sigmoid(logits)
    em = responsibilities(probs, weights.float(), means.float(), variances.float())
    return Round(low, logits, probs, em)


def weight_head_loss(model: AESPAModel, pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor,
                     means: torch.Tensor, variances: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """SPEC §4.1 steps 3-4: responsibilities of the prediction (the next round's weight-head input) and the
    MSE between the weight head's map of them and the target's responsibilities. -> (loss, em_weights)."""
    with torch.no_grad():
        em_pred = responsibilities(pred.float(), weights.float(), means.float(), variances.float())
        em_target = responsibilities(target.float(), weights.float(), means.float(), variances.float())
    return F.mse_loss(model.weight_head(em_pred), em_target), em_pred


# --- metrics -------------------------------------------------------------------------------------------

def round_metrics(pred: torch.Tensor, candidates: torch.Tensor, raters: torch.Tensor, valid: torch.Tensor,
                  followed: torch.Tensor, candidate_valid: torch.Tensor | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
    """Every per-image metric of SPEC §6 for one round: personalised ones of `pred` (BxSxS) against the
    `followed` mask, set ones of the candidate set BxMxSxS (`candidate_valid` BxM marks real candidates)."""
    values = personalised_metrics(pred, raters, valid, followed)
    values.update(set_metrics(candidates, raters, valid, pred_valid=candidate_valid))
    return values
