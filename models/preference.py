"""The SPA/AESPA additions to SAM: a Gaussian mixture over the prediction's values steered by user clicks.

Every quantity is per image (BxK), so a prediction never depends on its batch neighbours. Module and
parameter names inside the heads match the original project, so its published checkpoint maps by prefix.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

FUSION_LAYOUTS = ("reference", "residual", "none")


class MeanVarianceHead(nn.Module):
    """Sparse prompt embeddings BxNxD (N >= 1) and the dense positional encoding 1xDxGxG -> means, variances BxK."""

    def __init__(self, prompt_dim: int = 256, n_components: int = 16) -> None:
        super().__init__()
        self.n_components = n_components
        self.conv1d_1 = nn.Conv1d(prompt_dim, 128, kernel_size=3, padding=1)
        self.conv1d_2 = nn.Conv1d(128, 64, kernel_size=3, padding=1)
        self.conv1 = nn.Conv2d(prompt_dim, 128, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(128, 64, kernel_size=3, padding=1)
        self.conv3 = nn.Conv2d(64, 32, kernel_size=3, padding=1)
        self.fc1 = nn.Linear(64 + 32 * 2 * 2, 128)
        self.fc2 = nn.Linear(128, 64)
        self.fc3 = nn.Linear(64, 2 * n_components)

    def forward(self, sparse: torch.Tensor, dense_pe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if sparse.shape[1] == 0:
            raise ValueError("the mean/variance head needs at least one prompt token")
        s = F.relu(self.conv1d_1(sparse.transpose(1, 2)))  # BxDxN -> Bx128xN
        s = F.relu(self.conv1d_2(s)).mean(dim=2)  # Bx64
        d = F.relu(self.conv3(F.relu(self.conv2(F.relu(self.conv1(dense_pe))))))  # 1x32xGxG
        d = F.adaptive_avg_pool2d(d, 2).flatten(1).expand(sparse.shape[0], -1)  # Bx128
        h = F.relu(self.fc2(F.relu(self.fc1(torch.cat([s, d], dim=1)))))
        means, raw_var = self.fc3(h).split(self.n_components, dim=1)  # BxK each
        return means, F.relu(raw_var) + 1e-6


class WeightHead(nn.Module):
    """Previous per-image mixture weights BxK -> new weights BxK (softmax)."""

    def __init__(self, n_components: int = 16) -> None:
        super().__init__()
        widths = [n_components, 64, 128, 256, 128, 64, n_components]
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:]), start=1):
            self.add_module(f"fc{i}", nn.Linear(a, b))
        self.depth = len(widths) - 1

    def forward(self, weights: torch.Tensor) -> torch.Tensor:
        x = weights
        for i in range(1, self.depth + 1):
            x = getattr(self, f"fc{i}")(x)
            if i < self.depth:
                x = F.relu(x)
        return torch.softmax(x, dim=-1)


class Fusion(nn.Module):
    """ "Fcomb": the latent z (BxL) tiled over the grid and combined with the image embedding BxCxGxG.

    `reference`: ReLU(conv(ReLU(conv(ReLU(conv([emb, z])))))) as in the original and the published SPA, whose
    output replaces the embedding; initialised as they are: orthogonal weights (gain 1), biases from a normal of
    std 0.001 truncated at two standard deviations. The random projection of [emb, z] makes the latent samples
    differ from the first step.
    `residual`: emb + the same stack without the final ReLU and with its last convolution zero-initialised,
    so that at initialisation the fused embedding is SAM's embedding.
    `none`: no fusion, no parameters: the embedding passes unchanged and the latent has no effect (the
    no-latent baseline).
    """

    def __init__(self, embed_dim: int = 256, latent_dim: int = 64, layout: str = "residual") -> None:
        super().__init__()
        if layout not in FUSION_LAYOUTS:
            raise ValueError(f"unknown fusion layout '{layout}' (choose from {', '.join(FUSION_LAYOUTS)})")
        self.layout = layout
        if layout == "none":
            self.layers = nn.Sequential()
            return
        layers: list[nn.Module] = [
            nn.Conv2d(embed_dim + latent_dim, embed_dim, kernel_size=1),
            nn.ReLU(),
            nn.Conv2d(embed_dim, embed_dim, kernel_size=1),
            nn.ReLU(),
            nn.Conv2d(embed_dim, embed_dim, kernel_size=1),
        ]
        if layout == "reference":
            layers.append(nn.ReLU())
            for conv in layers[::2]:
                nn.init.orthogonal_(conv.weight)
                nn.init.trunc_normal_(conv.bias, std=0.001, a=-0.002, b=0.002)
        else:
            nn.init.zeros_(layers[-1].weight)
            nn.init.zeros_(layers[-1].bias)
        self.layers = nn.Sequential(*layers)

    def forward(self, embedding: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if self.layout == "none":
            return embedding
        g_h, g_w = embedding.shape[-2:]
        tiled = z[:, :, None, None].expand(-1, -1, g_h, g_w)  # BxL -> BxLxGxG
        out = self.layers(torch.cat([embedding, tiled.to(embedding.dtype)], dim=1))
        return embedding + out if self.layout == "residual" else out


def responsibilities(
    probs: torch.Tensor, weights: torch.Tensor, means: torch.Tensor, variances: torch.Tensor, chunk: int = 1 << 24
) -> torch.Tensor:
    """EM update of the mixture weights from a probability map.

    probs Bx... (flattened to BxN values p_n), weights/means/variances BxK ->
    new weights BxK = mean_n r_nk with r_nk ∝ w_k Normal(p_n; μ_k, σ_k²), normalised over k.

    Computed in log space, as a softmax over k of a_nk = log w_k − ½log(2πσ_k²) − (p_n − μ_k)²/(2σ_k²).
    Where the original's float32 densities are representable this is the same value; where all of a pixel's
    densities underflow (p far from every component, or tiny variances) the original normalised by 1e-6 and
    gave the pixel zero weight, this assigns it to its most likely component. An image whose weights are
    all zero gets zero weights (the original's zero-normaliser rule). Chunked over N to bound memory to
    about `chunk` elements.
    """
    p = probs.reshape(probs.shape[0], -1)  # BxN
    log_c = (torch.log(weights) - 0.5 * torch.log(2 * math.pi * variances))[:, None, :]  # Bx1xK
    neg_inv = (-0.5 / variances)[:, None, :]
    mu = means[:, None, :]
    step = max(1, chunk // max(1, p.shape[0] * weights.shape[1]))
    total = torch.zeros_like(weights)
    for start in range(0, p.shape[1], step):
        x = p[:, start : start + step, None]  # Bxnx1
        logits = (x - mu).square_().mul_(neg_inv).add_(log_c)  # BxnxK: log of w_k Normal(p_n)
        total = total + torch.softmax(logits, dim=2).sum(1)  # Σ_n r_nk
    dead = (weights <= 0).all(1, keepdim=True)  # log w = -inf everywhere: softmax gave NaN
    return torch.where(dead, 0.0, total / p.shape[1])


def mixture_latent(
    weights: torch.Tensor,
    means: torch.Tensor,
    variances: torch.Tensor,
    eps: torch.Tensor | None = None,
    latent_dim: int = 64,
) -> torch.Tensor:
    """z = Σ_k w_k (μ_k + σ_k ε) ∈ R^L per image, one ε ~ N(0, I_L) shared by the K components.

    weights/means/variances BxK, eps BxL or None (the deterministic sample, ε = 0) -> z BxL.
    """
    centre = (weights * means).sum(dim=1, keepdim=True)  # Bx1
    if eps is None:
        return centre.expand(-1, latent_dim).contiguous()
    spread = (weights * variances.sqrt()).sum(dim=1, keepdim=True)  # Bx1
    return centre + spread * eps
