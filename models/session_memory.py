"""A preference that carries over from one image to the next (`memory: style`).

A user annotating a series follows one rater from the first image to the last. What an image's interaction
revealed about that rater is kept as a **style vector**: `StyleEncoder` reads an image and the mask the user ended
with (the final prediction; in training a rater's mask) and summarises how the outline sits on the image — inside
or outside the intensity edge, convex or not, which faint lesions are left out. A session's memory is the mean of
the style vectors of its recent images; `SessionMemory.shift` turns it into a shift of the mask decoder's output
tokens, before and after the two-way transformer, and a per-channel scale and offset of the mask features the
tokens score (`mask_decoder.memory_effect`): the offset can move the whole outline in or out, as tight and generous
raters do.

Where a row has no memory (the first image of a session, or the memory reset) the shift is exactly zero: the
prediction is computed as by a model without memory. The last layer of `to_shift` starts at zero, so training
starts from the model without memory.

Shapes: images Bx3xSxS in [0, 1], masks Bx1xSxS (probabilities or {0, 1}), style vectors BxD (D = `STYLE_DIM`),
shifts Bx(2C + 2C/8) (C the prompt embedding's width; `mask_decoder.memory_effect` splits them).
"""

from __future__ import annotations

import torch
from torch import nn

MEMORY_KINDS = ("none", "style")
STYLE_DIM = 64
# Training: the style vectors of one rater's masks on different images are pulled together and those of other raters
# pushed apart (`style_contrast`, added to the first round's loss with this weight), so that a memory says whom
# the user follows before the decoder has learnt to read it.
STYLE_CONTRAST_WEIGHT = 1.0


class StyleEncoder(nn.Module):
    """Images Bx3xSxS and masks Bx1xSxS -> style vectors BxD: four convolutions (the last three halving the
    resolution), then the mean and the maximum over the pixels, and a linear map."""

    def __init__(self, dim: int = STYLE_DIM, width: int = 16) -> None:
        super().__init__()
        widths = [4, width, 2 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            layers += [nn.Conv2d(a, b, kernel_size=3, stride=1 if i == 0 else 2, padding=1), nn.ReLU()]
        self.convs = nn.Sequential(*layers)
        self.head = nn.Linear(2 * widths[-1], dim)

    def forward(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        x = self.convs(torch.cat([images, masks.to(images.dtype)], dim=1))
        pooled = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)
        return self.head(pooled)


class SessionMemory(nn.Module):
    """The style encoder and the map from a memory (a mean of style vectors) to the decoder's token shift."""

    def __init__(self, prompt_dim: int = 256, dim: int = STYLE_DIM) -> None:
        super().__init__()
        self.prompt_dim, self.dim = prompt_dim, dim
        self.encoder = StyleEncoder(dim)
        out = 2 * prompt_dim + 2 * (prompt_dim // 8)
        self.to_shift = nn.Sequential(nn.Linear(dim, prompt_dim), nn.ReLU(), nn.Linear(prompt_dim, out))
        nn.init.zeros_(self.to_shift[-1].weight)
        nn.init.zeros_(self.to_shift[-1].bias)

    def styles(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Images Bx3xSxS, masks BxSxS or Bx1xSxS -> style vectors BxD."""
        return self.encoder(images, masks if masks.dim() == 4 else masks[:, None])

    def shift(self, memory: torch.Tensor, has_memory: torch.Tensor) -> torch.Tensor:
        """memory BxD (a mean of style vectors), has_memory B bool -> shifts Bx(2C + 2C/8), zero without memory."""
        out = self.to_shift(memory)
        return out * has_memory.to(out.dtype)[:, None]


def style_contrast(styles: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """A supervised contrastive loss on style vectors NxD whose `labels` N say which ones are of one rater (in one
    group of images whose raters are the same people): each vector's softmax over its cosine similarities to the
    others (divided by `temperature`) should put its mass on the vectors of its own label. Mean over the vectors
    that have another of their label; 0 when none has."""
    z = torch.nn.functional.normalize(styles.float(), dim=1)
    n = len(z)
    self_pair = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = (z @ z.T / temperature).masked_fill(self_pair, float("-inf"))
    positive = (labels[:, None] == labels[None, :]) & ~self_pair
    has = positive.any(1)
    if not bool(has.any()):
        return styles.sum() * 0.0
    log_p = torch.log_softmax(logits, dim=1).masked_fill(~positive, 0.0)
    per_vector = -(log_p.sum(1)[has] / positive.sum(1)[has])
    return per_vector.mean()


def mean_memory(styles: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A memory per row from the style vectors of other images: styles NxD, weights PxN (row p's weight of each
    style vector; a row of zeros: no memory) -> memory PxD (the weighted mean), has_memory P bool."""
    total = weights.sum(1, keepdim=True)
    has = total[:, 0] > 0
    return (weights @ styles) / total.clamp_min(1e-12), has
