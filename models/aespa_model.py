"""SAM plus the preference heads: the model both training modes fine-tune.

The SAM parts keep their official names at the top level (`image_encoder.*`, `prompt_encoder.*`,
`mask_decoder.*`), so `model.image_encoder(x)` is the plain SAM embedding; the fusion runs after it,
which lets validation reuse one embedding across every click round.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .preference import Fusion, MeanVarianceHead, WeightHead, mixture_latent
from .sam import CONFIG_KEYS, Sam, build_sam_parts

# Keys a SAM/MedSAM checkpoint does not have: initialised afresh when loading one.
PREFERENCE_PREFIXES = ("fcomb.", "mean_var_head.", "weight_head.", "mixture_")
MIXTURE_BUFFERS = ("mixture_weights", "mixture_means", "mixture_variances")


def init_mixture_state(n_components: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Initial values as in the original: w uniform random normalised to 1, μ ~ U(-100, 100), σ² ~ U(0.1, 10)."""
    w = torch.rand(n_components, generator=generator)
    return {
        "mixture_weights": w / w.sum(),
        "mixture_means": torch.rand(n_components, generator=generator) * 200 - 100,
        "mixture_variances": torch.rand(n_components, generator=generator) * 9.9 + 0.1,
    }


class AESPAModel(Sam):
    """SAM parts, mean/variance head, weight head, fusion ("Fcomb") and the stored mixture state (buffers).

    `config` holds the SAM configuration keys plus `n_components`, `latent_dim`, `fusion` and
    `batch_mixture` (True only for `-compat reference`: mixture averaged over the batch, as the original).
    """

    def __init__(self, config: dict[str, Any]) -> None:
        sam = build_sam_parts(config)
        super().__init__(sam.image_encoder, sam.prompt_encoder, sam.mask_decoder)
        self.config = dict(config)
        k, dim = config["n_components"], config["prompt_embed_dim"]
        self.latent_dim = config["latent_dim"]
        self.batch_mixture = bool(config.get("batch_mixture", False))
        self.fcomb = Fusion(config["out_chans"], self.latent_dim, config["fusion"])
        self.mean_var_head = MeanVarianceHead(dim, k)
        self.weight_head = WeightHead(k)
        for name, value in init_mixture_state(k).items():
            self.register_buffer(name, value)

    # --- the pieces the interaction loops call ------------------------------------------------------

    def encode_prompts(
        self, batch_size: int, points: torch.Tensor | None, labels: torch.Tensor | None, mask_logits: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """points BxNx2 (x, y), labels BxN, mask_logits Bx1x4Gx4G (each optional) -> sparse BxNxD, dense BxDxGxG."""
        pts = (points, labels) if points is not None else None
        sparse, dense = self.prompt_encoder(points=pts, boxes=None, masks=mask_logits)
        return sparse.expand(batch_size, -1, -1), dense.expand(batch_size, -1, -1, -1)

    def mixture_params(self, sparse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image means, variances BxK from the prompts; the stored state when there is no prompt token."""
        b = sparse.shape[0]
        if sparse.shape[1] == 0:
            return self.mixture_means.expand(b, -1), self.mixture_variances.expand(b, -1)
        return self.mean_var_head(sparse, self.prompt_encoder.get_dense_pe())

    def initial_weights(self, batch_size: int) -> torch.Tensor:
        """The stored mixture weights, one copy per image: BxK."""
        return self.mixture_weights.expand(batch_size, -1).clone()

    def latent(
        self, weights: torch.Tensor, means: torch.Tensor, variances: torch.Tensor, eps: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Per-image latent BxL (ε = None gives the deterministic sample)."""
        if self.batch_mixture:  # the original's behaviour, for its published checkpoint only
            weights, means, variances = (t.mean(0, keepdim=True).expand_as(t) for t in (weights, means, variances))
        return mixture_latent(weights, means, variances, eps, self.latent_dim)

    def decode(
        self,
        embedding: torch.Tensor,
        z: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        multimask_output: bool = False,
    ) -> torch.Tensor:
        """Fuse the latent into the SAM embedding and decode: embedding BxCxGxG, z BxL -> low-res logits Bx1x4Gx4G."""
        fused = self.fcomb(embedding, z)
        masks, iou = self.mask_decoder(fused, self.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output)
        if multimask_output:  # keep the mask SAM scores best
            masks = masks.gather(1, iou.argmax(1)[:, None, None, None].expand(-1, 1, *masks.shape[-2:]))
        return masks

    def upscale(self, low_res: torch.Tensor) -> torch.Tensor:
        """Bx1x4Gx4G low-resolution logits -> Bx1xSxS, bilinear."""
        return F.interpolate(low_res, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)

    def forward(
        self,
        images: torch.Tensor,
        points: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        mask_logits: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
        eps: torch.Tensor | None = None,
        embedding: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """One prediction: images Bx3xSxS (or a precomputed `embedding`), clicks, previous logits, weights BxK.

        Returns `low_res` Bx1x4Gx4G and `logits` Bx1xSxS, plus the `means`, `variances`, `weights` and `z` used.
        """
        if embedding is None:
            embedding = self.image_encoder(images)
        b = embedding.shape[0]
        sparse, dense = self.encode_prompts(b, points, labels, mask_logits)
        means, variances = self.mixture_params(sparse)
        if weights is None:
            weights = self.initial_weights(b)
        z = self.latent(weights, means, variances, eps)
        low_res = self.decode(embedding, z, sparse, dense)
        return {"low_res": low_res, "logits": self.upscale(low_res), "means": means, "variances": variances,
                "weights": weights, "z": z}  # fmt: skip

    @torch.no_grad()
    def update_mixture_state(
        self, weights: torch.Tensor, means: torch.Tensor, variances: torch.Tensor, momentum: float = 0.1
    ) -> None:
        """Move the stored mixture towards this batch's mean per-image mixture (a running average, like
        BatchNorm's statistics): it is the prior used before the first click. Training only; under torchrun
        the batch means are averaged over ranks so every rank keeps the same state."""
        from distributed import mean_over_ranks  # the model package does not depend on it otherwise

        batch = [value.detach().float().mean(0) for value in (weights, means, variances)]
        flat = mean_over_ranks(torch.cat([b.reshape(-1) for b in batch]))  # one collective for all three
        for name, b, part in zip(MIXTURE_BUFFERS, batch, flat.split([b.numel() for b in batch])):
            buf = getattr(self, name)
            buf.lerp_(part.view_as(b).to(buf.dtype), momentum)
        self.mixture_weights.div_(self.mixture_weights.sum())


def aespa_config(sam_cfg: dict[str, Any], n_components: int = 16, fusion: str = "residual",
                 latent_dim: int = 64, batch_mixture: bool = False) -> dict[str, Any]:  # fmt: skip
    """A full model configuration: the SAM keys plus the preference-head settings."""
    return {**{k: sam_cfg[k] for k in CONFIG_KEYS}, "n_components": n_components, "latent_dim": latent_dim,
            "fusion": fusion, "batch_mixture": batch_mixture}  # fmt: skip
