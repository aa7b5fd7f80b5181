"""Interaction over a whole volume (MBH-Seg cases): the simulated user clicks slices of a 3-D case, and only the
clicked slice is predicted again, from its cached image embedding.

A case is a stack of Z slices (model inputs Zx3xSxS, embeddings computed once per slice). A *session* is one
interaction on one slice about one class (the binary track: one class, foreground); its target is the followed
rater's mask of that class on that slice. Every slice first gets the model's click-free prediction; a session
then continues from it, click by click (the round engine's deterministic prediction: clicks so far, the
previous round's low-resolution logits, the mixture weights). Two protocols, always named in what they write:

marked  every slice the followed rater marks gets `rounds` rounds of centre clicks on its own (as the 2-D
        validation does: comparable with the 2-D numbers, but it uses the ground truth to choose the slices);
budget  `clicks` clicks for the whole case: each click goes to the session whose prediction is furthest from its
        target (most wrong pixels), as a centre click there; unclicked slices keep the click-free prediction. Every
        slice is a candidate: a slice the followed rater leaves empty has a session whose target is empty, so false
        positives there are counted and a (negative) click can remove them.

A model with a session memory (`-memory style`) treats the case as a session (`CaseMemory`): after every click the
style of the clicked slices' predictions (the last `-memory_window` slices clicked) is the memory of every slice,
and the slices not clicked yet are predicted again from their cached embeddings with it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from interaction.clicks import NOC_STRATEGY, mask_boxes, next_click
from interaction.rounds import RoundState, deterministic_round
from models import AESPAModel

PROTOCOLS = ("budget", "marked")


@dataclass
class Session:
    """One interaction: slice `z`, class `cls`, target SxS bool, its round state and current probabilities SxS."""

    z: int
    cls: int
    target: torch.Tensor
    state: RoundState
    probs: torch.Tensor
    clicks: int = 0

    @property
    def errors(self) -> int:
        """Pixels the current prediction gets wrong against the target."""
        return int(((self.probs > 0.5) != self.target).sum())


@torch.no_grad()
def slice_embeddings(model: AESPAModel, images: torch.Tensor, batch: int = 8) -> torch.Tensor:
    """Zx3xSxS model inputs -> ZxC'xGxG image features (`AESPAModel.image_features`), `batch` slices at a time
    (each computed once)."""
    return torch.cat([model.image_features(images[i : i + batch]) for i in range(0, len(images), batch)])


class VolumeInteraction:
    """The click-free prediction of every slice, and sessions that refine some of them by clicks."""

    @torch.no_grad()
    def __init__(self, model: AESPAModel, embeddings: torch.Tensor, batch: int = 8):
        self.model, self.embeddings = model, embeddings
        size, device = model.image_size, embeddings.device
        first = [
            RoundState.start(len(embeddings[i : i + batch]), size, device) for i in range(0, len(embeddings), batch)
        ]
        probs = [deterministic_round(model, s, embeddings[i * batch : (i + 1) * batch]) for i, s in enumerate(first)]
        self.click_free = torch.cat(probs)  # ZxSxS
        # what a session of slice z continues from: its mask prompt and mixture weights after the click-free round
        self._after_first = [(s.prev_low, s.em_weights) for s in first]
        self.batch = batch

    @torch.no_grad()
    def session(self, z: int, cls: int, target: torch.Tensor, box: bool = False) -> Session:
        """A session on slice z about class `cls` (target SxS), starting from the slice's click-free prediction; with
        `box` (a model trained with `-first_prompt box`), from a prediction prompted with the target's bounding box,
        which stays in every round's prompt (as the 2-D validation gives it; an empty target has no box)."""
        size, device = self.model.image_size, self.embeddings.device
        if box and target.any():
            state = RoundState.start(1, size, device, box=mask_boxes(target[None]))
            return Session(z, cls, target, state, deterministic_round(self.model, state, self.embeddings[z : z + 1])[0])
        low, em = self._after_first[z // self.batch]
        k = z % self.batch
        state = RoundState.start(1, size, device)
        state.prev_low = low[k : k + 1]
        state.em_weights = None if em is None else em[k : k + 1]
        return Session(z, cls, target, state, self.click_free[z].clone())

    @torch.no_grad()
    def click(self, session: Session) -> None:
        """The simulated user's next centre click on the session's slice (never on a clicked pixel), and the
        slice predicted again from its cached embedding."""
        points, labels = next_click(
            NOC_STRATEGY, session.probs[None], session.target[None], exclude=session.state.clicks.exclude
        )
        session.state.clicks.add(points, labels)
        session.probs = deterministic_round(self.model, session.state, self.embeddings[session.z : session.z + 1])[0]
        session.clicks += 1


class CaseMemory:
    """A case as a session of a model with a session memory: what the clicks revealed on some slices carries to all.

    `source` 'model': the style of each clicked slice's current prediction; 'oracle': of the followed rater's mask
    there (an upper bound). The memory is the mean style of the last `window` slices clicked."""

    def __init__(self, vi: VolumeInteraction, images: torch.Tensor, window: int, source: str = "model") -> None:
        if vi.model.memory is None:
            raise ValueError("a case memory needs a model with a session memory (-memory style)")
        self.vi, self.images, self.window, self.source = vi, images, window, source
        self.styles: dict[int, torch.Tensor] = {}  # slice -> style of its latest state, the last clicked last

    @torch.no_grad()
    def after_click(self, clicked: Session, sessions: list[Session]) -> None:
        """Update the memory from the clicked session; every session reads it from now on, and the ones without a
        click yet are predicted again from their cached embeddings (a click-free prediction with the memory)."""
        model, z = self.vi.model, clicked.z
        shown = clicked.target if self.source == "oracle" else clicked.probs > 0.5
        self.styles.pop(z, None)
        self.styles[z] = model.memory.styles(self.images[z : z + 1], shown[None].float())[0]
        mean = torch.stack(list(self.styles.values())[-self.window :]).mean(0, keepdim=True)  # 1xD
        for s in sessions:
            s.state.memory = (mean, torch.ones(1, dtype=torch.bool, device=mean.device))
        fresh = [s for s in sessions if s.clicks == 0]
        for i in range(0, len(fresh), self.vi.batch):
            chunk = fresh[i : i + self.vi.batch]
            rows = (mean.expand(len(chunk), -1), torch.ones(len(chunk), dtype=torch.bool, device=mean.device))
            state = RoundState.start(len(chunk), model.image_size, mean.device, memory=rows)
            probs = deterministic_round(model, state, torch.cat([self.vi.embeddings[s.z : s.z + 1] for s in chunk]))
            for k, s in enumerate(chunk):
                s.probs = probs[k]
                s.state.prev_low = state.prev_low[k : k + 1]
                s.state.em_weights = None if state.em_weights is None else state.em_weights[k : k + 1]


def run_marked(
    vi: VolumeInteraction,
    sessions: list[Session],
    rounds: int,
    record: Callable[[int], None],
    memory: CaseMemory | None = None,
) -> None:
    """Every session gets `rounds` - 1 clicks, round by round; `record(clicks per session)` after each round."""
    record(0)
    for t in range(1, rounds):
        for s in sessions:
            vi.click(s)
            if memory is not None:
                memory.after_click(s, sessions)
        record(t)


def run_budget(
    vi: VolumeInteraction,
    sessions: list[Session],
    clicks: int,
    record: Callable[[int], None],
    memory: CaseMemory | None = None,
) -> None:
    """`clicks` clicks for the case, each on the session with the most wrong pixels (the first of equals);
    `record(clicks so far)` after each. A case whose sessions are all right stops early (nothing to click). With a
    `memory`, every click also updates the memory of the whole case."""
    record(0)
    for n in range(1, clicks + 1):
        worst = max(sessions, key=lambda s: s.errors, default=None)
        if worst is None or worst.errors == 0:
            for rest in range(n, clicks + 1):
                record(rest)
            return
        vi.click(worst)
        if memory is not None:
            memory.after_click(worst, sessions)
        record(n)


def upsample(probs: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """SxS probabilities -> HxW (bilinear, as the model's own upsampling)."""
    return F.interpolate(probs[None, None], size=(height, width), mode="bilinear", align_corners=False)[0, 0]
