"""From a loader's samples to a batch on the device (the data side of the loops).

Multi-class masks are reduced to one binary task per image (docs/interaction.md#multi-class-data) and training images
are augmented here, so the loops only ever see binary rater masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.augment import augment_batch
from pipeline.multiclass import binarize_multiclass
from pipeline.rng import KeyedRandom


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
    embedding: torch.Tensor | None = None  # BxCxGxG SAM embedding of a frozen encoder (precomputed, cached)
    # Bx2 (row, column) pixel size in mm (the loader's `spacing`; None: 1), as loaded: augmentation's quarter turns
    # do not swap it, so only evaluation, which never augments, measures in it (NSD)
    spacing: torch.Tensor | None = None
    sessions: list[str] | None = None  # per image: images with the same key share their raters' identities
    memory: torch.Tensor | None = None  # BxRxD the session memory of each (image, rater) (the session protocol)
    memory_count: torch.Tensor | None = None  # BxR long: images the memory is made of (0: none)

    def session_codes(self) -> torch.Tensor:
        """B long: equal for images whose rater k is the same person (no keys: the whole batch, as for data whose
        raters keep their identity across the dataset)."""
        keys = self.sessions or [""] * self.size
        codes = {k: i for i, k in enumerate(sorted(set(keys)))}
        return torch.tensor([codes[k] for k in keys], device=self.images.device)

    @property
    def size(self) -> int:
        return self.images.shape[0]

    def take(self, n: int) -> Batch:
        """The first n images (keyed streams restart for them)."""
        source = KeyedRandom(self.source.seed, self.keys[:n]) if isinstance(self.source, KeyedRandom) else self.source
        embedding = None if self.embedding is None else self.embedding[:n]
        spacing = None if self.spacing is None else self.spacing[:n]
        return Batch(
            self.images[:n], self.raters[:n], self.valid[:n], self.names[:n], self.keys[:n], source, embedding, spacing
        )


def prepare_batch(
    data: dict, device: torch.device, generator: torch.Generator | None = None, seed: int = 0, augment: str = "none"
) -> Batch | None:
    """Loader dict -> Batch; multi-class masks are reduced to one binary task per image
    (docs/interaction.md#multi-class-data).

    Random draws come from `generator` (training) or, without one, from per-image streams keyed on the
    samples' dataset indices and `seed` (validation: independent of batching and sharding). `augment`
    ('flip', 'mirror'; training only) applies one random symmetry of that kind per image (pipeline/augment.py).

    Images without any valid rater (possible with `-valid_raters nonempty -keep_empty`) carry no target
    and are left out; None when none is left."""
    keep = data["valid_raters"].any(1)
    if not bool(keep.all()):
        data = {
            k: (v[keep] if torch.is_tensor(v) else [x for x, k_ in zip(v, keep.tolist()) if k_])
            for k, v in data.items()
        }
        if not bool(keep.any()):
            return None
    raters = data["multi_rater"].to(device, non_blocking=True)  # BxRxCxSxS
    valid = data["valid_raters"].to(device, non_blocking=True)
    keys = data["index"].to(device)
    source = generator if generator is not None else KeyedRandom(seed, keys)
    if raters.shape[2] > 1:
        raters = binarize_multiclass(raters, valid, source)
    images, raters = data["image"].to(device, non_blocking=True), raters[:, :, 0]
    spacing = data["spacing"].to(device) if "spacing" in data else None
    if augment != "none":
        images, raters = augment_batch(images, raters, source, augment)
    sessions = list(data["session"]) if "session" in data else None
    return Batch(images, raters, valid, list(data["name"]), keys, source, spacing=spacing, sessions=sessions)
