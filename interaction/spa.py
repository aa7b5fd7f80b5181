"""SPA (docs/interaction.md#spa-rounds, docs/evaluation.md#validation-protocol): a preference target per image, several
latent samples per round, candidates found by k-means, and clicks on where the candidate the user selects differs from
the other samples."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from conf.options import option, positive
from interaction.clicks import next_click
from interaction.kmeans import batched_kmeans
from interaction.mode import Mode, Selection, User
from interaction.raters import draw_among, mean_of, pick, raters_agreeing
from models import Decoded
from multirater_metrics import dice
from pipeline.batch import Batch
from pipeline.rng import KeyedRandom, normal, uniform

Source = torch.Generator | KeyedRandom


@dataclass(frozen=True)
class SPAOptions:
    num_samples: int = option(48, "latent samples per image", check=positive)
    n_clusters: int = option(4, "candidate segmentations (k-means clusters)", check=positive)

    def check(self) -> str | None:
        if self.n_clusters > self.num_samples:
            return f"argument -n_clusters: {self.n_clusters} clusters need as many -num_samples ({self.num_samples})"
        return None


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
    label = torch.where(
        has_fg[:, 0], 1, torch.where(has_bg[:, 0], 0, target.flatten(1).gather(1, pixel[:, None])[:, 0].long())
    )
    return torch.stack([pixel % s, pixel // s], 1).float(), label.long()


@dataclass(kw_only=True)
class Candidates(Selection):
    """A round of SPA: `pred` the recommended prediction, the mean of the samples' probabilities BxSxS (what SPA
    reports); `feedback` the centre the user selects (the candidate nearest to its target) BxSxS; `mask_prompt`
    the mean low-resolution logits of the selected cluster's samples Bx1x4Gx4G; every centre BxKxSxS."""

    centres: torch.Tensor
    members: torch.Tensor  # BxM bool: samples of the selected cluster
    others_mean: torch.Tensor  # BxSxS mean of the other samples (the selected centre when there is none)


EMPTY_CLICK_MAP = 1e-3  # |selected - others| below this everywhere: the click map says nothing


def find_candidates(decoded: Decoded, target: torch.Tensor, k: int, source: Source) -> Candidates:
    """Per-image k-means of the BxMxSxS sample probabilities; the user picks, among the clusters that hold a
    sample, the centre nearest to the target.

    Beside Dice_selected, the round reports whether the samples are alive: `Sample_spread` (the mean over pixels
    of the samples' standard deviation of probability), `Empty_click_map` (1 when |selected - others| stays below
    EMPTY_CLICK_MAP everywhere: the click carries no information) and `Selected_minus_follow` (Dice of the selected
    candidate minus Dice of the recommended mean: > 0 only when the candidates differ)."""
    probs = decoded.probs
    b, m, s, _ = probs.shape
    labels, centres = batched_kmeans(probs.reshape(b, m, s * s), k, generator=source)
    centres = centres.reshape(b, k, s, s)
    held = torch.zeros(b, k, dtype=torch.bool, device=probs.device).scatter_(1, labels, True)  # BxK: has samples
    distance = (centres - target[:, None]).pow(2).flatten(2).sum(2).masked_fill(~held, float("inf"))
    selected = distance.argmin(1)  # B: never an empty cluster (its centre is not a candidate)
    members = labels == selected[:, None]  # BxM
    chosen = pick(centres, selected)
    others = ~members
    others_mean = torch.where(others.any(1)[:, None, None], mean_of(probs, others), chosen)
    pred = probs.mean(1)
    selected_dice = dice(chosen, target)
    extra = {
        "Dice_selected": selected_dice,
        "Selected_minus_follow": selected_dice - dice(pred, target),
        "Sample_spread": probs.std(1, unbiased=False).flatten(1).mean(1),
        "Empty_click_map": ((chosen - others_mean).abs().flatten(1).amax(1) < EMPTY_CLICK_MAP).float(),
    }
    return Candidates(
        pred=pred,
        mask_prompt=mean_of(decoded.low, members)[:, None],
        feedback=chosen,
        extra=extra,
        centres=centres,
        members=members,
        others_mean=others_mean,
    )


def candidate_click(strategy: str, cand: Candidates, target: torch.Tensor, exclude: torch.Tensor, source: Source):
    """SPA's click, on where the selected candidate and the mean of the other samples disagree (|selected -
    others|), labelled from the target: one of the 20 largest differences (`topk`) or the centre of the largest
    region where their masks differ (`center`)."""
    return next_click(strategy, cand.others_mean, cand.feedback, label_source=target, exclude=exclude, generator=source)


class PreferenceUser(User):
    """SPA's user: a preference target and a first click per image (drawn before the first round), candidates
    from k-means of the round's latent samples, the candidate nearest to the target selected, and clicks on
    where it differs from the other samples (`candidate_click`). SPA reports the mean of the samples (scored as
    Dice_follow against the target); the oracle-selected candidate is scored as Dice_selected."""

    options: SPAOptions

    def __init__(self, batch: Batch, loop, options: SPAOptions, purpose: str) -> None:
        super().__init__(batch, loop, options, purpose)
        self.rows = torch.arange(batch.size, device=batch.images.device)
        self.source = batch.source
        self.target = preference_target(batch.raters, batch.valid, self.source)
        self.followed = self.target
        self._first_click = initial_click(batch.raters, batch.valid, self.target, self.source)

    @classmethod
    def latent_samples(cls, options: SPAOptions) -> int:
        return options.num_samples

    @classmethod
    def trains_prompt(cls, options: SPAOptions) -> bool:
        return True

    @classmethod
    def first_round_clicks(cls, options: SPAOptions) -> int:
        return 1  # the initial click, drawn where every rater agrees

    def restart(self) -> None:
        """The target never moves: nothing to undo (the random streams continue)."""

    def first_click(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._first_click

    def noise(self, latent_dim: int) -> torch.Tensor:
        return normal((len(self.rows), self.options.num_samples, latent_dim), self.batch.images.device, self.source)

    def select(self, decoded: Decoded) -> Candidates:
        return find_candidates(decoded, self.target, self.options.n_clusters, self.source)

    def click(self, selection: Candidates, exclude: torch.Tensor, strategy: str) -> tuple[torch.Tensor, torch.Tensor]:
        return candidate_click(strategy, selection, self.target, exclude, self.source)

    def candidate_set(self, selection: Candidates) -> tuple[torch.Tensor, None]:
        return selection.centres, None


MODE = Mode(
    name="SPA",
    summary="a preference target per image; latent samples clustered into candidates, clicks on the selected one",
    user=PreferenceUser,
    options=SPAOptions,
    # the published method's own: the fusion whose output replaces the embedding (orthogonally initialised, so
    # latent samples differ from the first step) and the click among the 20 largest differences of probabilities
    # (a spread below 0.5 is invisible to a centre click on binarised maps)
    defaults={"fcomb": "reference", "click_strategy": "topk", "val_click_strategy": "topk"},
)
