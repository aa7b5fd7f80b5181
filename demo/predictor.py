"""The demo's model side: a prediction as a pure function of (image, clicks), replaying AESPA's validation
protocol (docs/evaluation.md#validation-protocol) exactly, with the SAM image embedding computed once per image.

Clicks are (x, y, label) in pixels of the model's SxS input (label 1 positive, 0 negative). The prediction
after n clicks is round n of the protocol: round 0 has no click, round i uses clicks[:i], the previous
round's low-resolution logits as mask prompt and the mixture weights the weight head makes from the
previous round's responsibilities.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from interaction.clicks import NOC_STRATEGY, ClickState, next_click
from interaction.rounds import RoundState, deterministic_round
from models import AESPAModel
from multirater_metrics import dice, iou
from pipeline.image_files import resize_image


class Click(NamedTuple):
    """One click in model-input pixels: column x, row y, label (1 positive, 0 negative)."""

    x: int
    y: int
    label: int


def to_model_input(image: np.ndarray, size: int) -> torch.Tensor:
    """HxW or HxWx3 float image in [0,1] (or uint8) -> 3xSxS float32, resized as the data loaders do."""
    if image.dtype == np.uint8:
        image = image.astype(np.float32) / 255.0
    if image.ndim == 3 and image.shape[2] == 4:  # RGBA upload: drop alpha
        image = image[..., :3]
    return resize_image(np.asarray(image, dtype=np.float32), size)


def click_tensors(clicks: Sequence[Click], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """clicks -> points Nx2 float (x, y) and labels N long."""
    points = torch.tensor([[c.x, c.y] for c in clicks], dtype=torch.float32, device=device).reshape(-1, 2)
    labels = torch.tensor([c.label for c in clicks], dtype=torch.long, device=device)
    return points, labels


@torch.no_grad()
def replay(
    model: AESPAModel,
    embedding: torch.Tensor,
    clicks: Sequence[Click],
    box: Sequence[int] | None = None,
    memory: np.ndarray | None = None,
) -> torch.Tensor:
    """Rounds 0..n of the protocol for one image (embedding 1xCxGxG) -> probabilities (n+1)xSxS, one per round.
    A box (x0, y0, x1, y1) in model pixels is part of every round's prompt (`-first_prompt box`); `memory` D, a
    session's mean style vector, is read by every round of a model with a session memory."""
    device = embedding.device
    box_t = None if box is None else torch.tensor([box], dtype=torch.float32, device=device)  # 1x4
    carried = None
    if memory is not None:
        carried = (torch.as_tensor(memory, device=device)[None], torch.ones(1, dtype=torch.bool, device=device))
    state = RoundState.start(1, model.image_size, device, box=box_t, memory=carried)
    points, labels = click_tensors(clicks, embedding.device)
    rounds = []
    for i in range(len(clicks) + 1):
        if i:
            state.clicks.add(points[i - 1 : i], labels[i - 1 : i])  # 1x2, 1
        rounds.append(deterministic_round(model, state, embedding)[0])
    return torch.stack(rounds)


class Predictor:
    """A loaded model on a device, with an LRU cache of SAM image embeddings keyed on the input's bytes.

    Thread-safe: gradio serves sessions from a thread pool, so model calls and the cache share one lock.
    """

    def __init__(self, model: AESPAModel, device: torch.device, cache_size: int = 8, memory_window: int = 2):
        self.model = model.to(device).eval()
        self.memory_window = memory_window  # a session's memory: the mean style of its last N images
        self.device = device
        self.size = model.image_size
        self.cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.cache_size = cache_size
        self.lock = threading.Lock()

    @torch.no_grad()
    def embedding(self, image: torch.Tensor) -> torch.Tensor:
        """3xSxS image -> its image features 1xC'xGxG (`AESPAModel.image_features`), computed once per distinct
        image."""
        key = hashlib.sha1(image.contiguous().cpu().numpy().tobytes()).hexdigest()
        if key in self.cache:
            self.cache.move_to_end(key)
            return self.cache[key]
        emb = self.model.image_features(image[None].to(self.device))
        self.cache[key] = emb
        if len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return emb

    @property
    def has_memory(self) -> bool:
        """Whether the model carries a preference from one image to the next (`-memory style`)."""
        return self.model.memory is not None

    def predict(
        self,
        image: torch.Tensor,
        clicks: Sequence[Click],
        box: Sequence[int] | None = None,
        memory: np.ndarray | None = None,
    ) -> np.ndarray:
        """Probabilities SxS (float32 numpy) after every click of `clicks` (and a box), for the 3xSxS `image`, with a
        session's memory (D, the mean of recent style vectors) when the model has one."""
        with self.lock:
            rounds = replay(self.model, self.embedding(image), clicks, box, memory if self.has_memory else None)
        return rounds[-1].cpu().numpy()

    @torch.no_grad()
    def styles(self, image: torch.Tensor, masks: np.ndarray) -> np.ndarray:
        """Style vectors MxD of `masks` MxSxS (bool or probabilities, binarised at 0.5) on the 3xSxS `image`."""
        masks_t = torch.as_tensor(np.asarray(masks) > 0.5, dtype=torch.float32, device=self.device)
        images = image[None].to(self.device).expand(len(masks_t), -1, -1, -1)
        with self.lock:
            return self.model.memory.styles(images, masks_t).cpu().numpy()

    def suggest(self, probs: np.ndarray, rater: np.ndarray, clicks: Sequence[Click]) -> Click:
        """The simulated user's next centre click (docs/interaction.md#clicks) toward `rater` (SxS bool), never on a
        clicked pixel."""
        state = ClickState(1, self.size, torch.device("cpu"))
        for c in clicks:
            state.add(*click_tensors([c], torch.device("cpu")))
        points, labels = next_click(
            NOC_STRATEGY, torch.from_numpy(probs)[None], torch.from_numpy(rater)[None], exclude=state.exclude
        )
        return Click(int(points[0, 0]), int(points[0, 1]), int(labels[0]))


def rater_scores(probs: np.ndarray, raters: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dice and IoU (docs/metrics.md) of the prediction SxS against each of the RxSxS rater masks -> R, R."""
    pred, masks = torch.from_numpy(probs)[None], torch.from_numpy(raters)
    return dice(pred, masks).numpy(), iou(pred, masks).numpy()
