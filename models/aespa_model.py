"""SAM plus the preference heads: the model both training modes fine-tune.

The SAM parts keep their official names at the top level (`image_encoder.*`, `prompt_encoder.*`,
`mask_decoder.*`), so `model.image_encoder(x)` is the plain SAM embedding; the fusion runs after it,
which lets validation reuse one embedding across every click round. With a pixel branch (`pixel_branch: unet`,
see pixel_branch.py) the embedding the rounds pass around is `image_features(x)`: the SAM embedding with the
image's pixels folded in as extra channels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .pixel_branch import FOLDED_CHANS, PixelBranch, fold_pixels, unfold_pixels
from .preference import Fusion, MeanVarianceHead, WeightHead, mixture_latent
from .sam import Sam, build_sam_parts
from .session_memory import MEMORY_KINDS, SessionMemory

# Keys a SAM/MedSAM checkpoint does not have: initialised afresh when loading one.
PREFERENCE_PREFIXES = ("fcomb.", "mean_var_head.", "weight_head.", "mixture_", "pixel_branch.", "memory.")
PIXEL_BRANCHES = ("none", "unet")
MIXTURE_BUFFERS = ("mixture_weights", "mixture_means", "mixture_variances")


@dataclass
class Prompts:
    """The prompt side of a round: sparse BxNxD and dense BxDxGxG embeddings, the mixture BxK each, and the
    session memory's shift Bx(2D + 2D/8) (None: a model without memory, or no memory given)."""

    sparse: torch.Tensor
    dense: torch.Tensor
    means: torch.Tensor
    variances: torch.Tensor
    weights: torch.Tensor
    memory_shift: torch.Tensor | None = None


@dataclass
class Decoded:
    """M predictions per image: low-resolution logits BxMx4Gx4G and SxS logits BxMxSxS (float32).

    `raw_in_unit`: the original project's output step (`protocol: reference`): the logits are taken as
    probabilities as they are when the whole batch lies in [0, 1], through a sigmoid otherwise."""

    low: torch.Tensor
    logits: torch.Tensor
    raw_in_unit: bool = False

    @property
    def probs(self) -> torch.Tensor:
        """Probabilities BxMxSxS."""
        if self.raw_in_unit and bool((self.logits.min() >= 0) & (self.logits.max() <= 1)):
            return self.logits
        return torch.sigmoid(self.logits)

    def detach(self) -> Decoded:
        return Decoded(self.low.detach(), self.logits.detach(), self.raw_in_unit)


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

    `config` holds the SAM configuration keys plus `n_components`, `latent_dim`, `fusion`, `pixel_branch` and
    the conventions the weights were trained with: `point_order`, `multimask_output`, `decoder_block` and
    `protocol` (see `aespa_config`).
    """

    def __init__(self, config: dict[str, Any]) -> None:
        sam = build_sam_parts(config)
        super().__init__(sam.image_encoder, sam.prompt_encoder, sam.mask_decoder)
        self.config = dict(config)
        k, dim = config["n_components"], config["prompt_embed_dim"]
        self.latent_dim = config["latent_dim"]
        self.reference_protocol = config.get("protocol", "project") == "reference"
        self.uses_latent = config["fusion"] != "none"  # `none`: the preference heads do not reach the prediction
        self.fcomb = Fusion(config["out_chans"], self.latent_dim, config["fusion"])
        self.mean_var_head = MeanVarianceHead(dim, k)
        self.weight_head = WeightHead(k)
        for name, value in init_mixture_state(k).items():
            self.register_buffer(name, value)
        self.embed_chans = config["out_chans"]  # channels of the SAM embedding (the rest: folded pixels)
        self.pixel_branch = None
        if config.get("pixel_branch", "none") == "unet":
            self.pixel_branch = PixelBranch(config["prompt_embed_dim"] // 8)
        self.memory = SessionMemory(dim) if config.get("memory", "none") == "style" else None

    # --- conventions that travel with the checkpoint (config), not with the command line ---------------

    @property
    def point_order(self) -> str:
        """'xy' (SAM's) or 'yx' (the original project's, for its published checkpoint)."""
        return self.config.get("point_order", "xy")

    @property
    def multimask_output(self) -> int:
        """1: SAM's single-mask token; 3: SAM's three masks, keeping the best-scored one."""
        return int(self.config.get("multimask_output", 1))

    # --- the prediction path: prompt side, then decoding --------------------------------------------

    def encode_prompts(
        self,
        batch_size: int,
        points: torch.Tensor | None,
        labels: torch.Tensor | None,
        mask_logits: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """points BxNx2 (x, y), labels BxN, mask_logits Bx1x4Gx4G, boxes Bx4 (x0, y0, x1, y1) (each optional)
        -> sparse BxNxD, dense BxDxGxG. Points go to SAM in the model's `point_order`. Under the reference
        protocol a round without clicks still passes an (empty) point set, so SAM adds its padding token."""
        if points is None and self.reference_protocol:
            device = self.prompt_encoder.no_mask_embed.weight.device
            points = torch.zeros(batch_size, 0, 2, device=device)
            labels = torch.zeros(batch_size, 0, dtype=torch.long, device=device)
        if points is not None and self.point_order == "yx":
            points = points.flip(-1)
        pts = (points, labels) if points is not None else None
        sparse, dense = self.prompt_encoder(points=pts, boxes=boxes, masks=mask_logits)
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
        return mixture_latent(weights, means, variances, eps, self.latent_dim)

    def image_features(self, images: torch.Tensor, embedding: torch.Tensor | None = None) -> torch.Tensor:
        """Bx3xSxS images -> what the rounds decode from: the SAM embedding BxCxGxG (`embedding` when given, e.g.
        a frozen encoder's cached one), with a pixel branch followed by the images folded into 48 more channels."""
        if embedding is None:
            embedding = self.image_encoder(images)
        if self.pixel_branch is None:
            return embedding
        return torch.cat([embedding, fold_pixels(images, embedding.shape[-1]).to(embedding.dtype)], 1)

    def split_features(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`image_features` BxC'xGxG -> (SAM embedding BxCxGxG, the pixel branch's features Bx(D/8)x4Gx4G or None)."""
        embedding, pixels = features[:, : self.embed_chans], features[:, self.embed_chans :]
        expected = 0 if self.pixel_branch is None else FOLDED_CHANS
        if pixels.shape[1] != expected:
            raise ValueError(
                f"image features with {features.shape[1]} channels: expected {self.embed_chans + expected} "
                f"(the SAM embedding{' and the folded pixels' if expected else ''}; see AESPAModel.image_features)"
            )
        if self.pixel_branch is None:
            return embedding, None
        return embedding, self.pixel_branch(unfold_pixels(pixels))

    def decode(
        self,
        embedding: torch.Tensor,
        z: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        pixel_features: torch.Tensor | None = None,
        memory_shift: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Fuse the latent into the SAM embedding and decode: embedding BxCxGxG, z BxL, the pixel branch's
        features Bx(D/8)x4Gx4G (optional), the memory's shift Bx(2D + 2D/8) (optional) -> low-res logits Bx1x4Gx4G."""
        fused = self.fcomb(embedding, z)
        multimask = self.multimask_output > 1
        pe = self.prompt_encoder.get_dense_pe()
        masks, iou = self.mask_decoder(fused, pe, sparse, dense, multimask, pixel_features, memory_shift)
        if multimask:  # keep the mask SAM scores best
            masks = masks.gather(1, iou.argmax(1)[:, None, None, None].expand(-1, 1, *masks.shape[-2:]))
        return masks

    def upscale(self, low_res: torch.Tensor) -> torch.Tensor:
        """Bx1x4Gx4G low-resolution logits -> Bx1xSxS, bilinear (nearest under the reference protocol)."""
        size = (self.image_size, self.image_size)
        if self.reference_protocol:
            return F.interpolate(low_res, size=size, mode="nearest")
        return F.interpolate(low_res, size=size, mode="bilinear", align_corners=False)

    def prompt(
        self,
        batch_size: int,
        points: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_logits: torch.Tensor | None = None,
        em_weights: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
        memory: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> Prompts:
        """The prompt side of a round: prompt embeddings, the per-image mixture and the memory's token shift.

        The mixture weights are `weights` when given, else the weight head's map of the previous round's
        responsibilities `em_weights` BxK, else (first round) the stored weights. `memory`: (BxD mean style
        vectors, B bool: which rows have one), read by a model with a session memory (ignored by one without).

        The reference protocol (the original project, for its checkpoints): the first round's weights are the
        weight head's map of the stored weights, and weights, means and variances are averaged over the batch
        (the weights renormalised), so every image shares one mixture — and depends on its batch neighbours.
        """
        sparse, dense = self.encode_prompts(batch_size, points, labels, mask_logits, boxes)
        means, variances = self.mixture_params(sparse)
        if weights is None and self.reference_protocol:
            weights = self.weight_head(self.initial_weights(batch_size) if em_weights is None else em_weights)
        elif weights is None:
            weights = self.initial_weights(batch_size) if em_weights is None else self.weight_head(em_weights)
        if self.reference_protocol:
            weights = weights.mean(0, keepdim=True)
            weights = (weights / weights.sum()).expand(batch_size, -1)
            means, variances = (t.mean(0, keepdim=True).expand(batch_size, -1) for t in (means, variances))
        shift = None if self.memory is None or memory is None else self.memory.shift(*memory)
        return Prompts(sparse, dense, means, variances, weights, shift)

    def decode_round(self, features: torch.Tensor, prompts: Prompts, eps: torch.Tensor | None = None) -> Decoded:
        """Decode one round: the images' `image_features` BxC'xGxG and the round's prompts -> M predictions per
        image. eps None: the deterministic sample (ε = 0), M = 1; eps BxMxL: M latent samples per image (the
        pixel branch runs once per image, not per sample).
        """
        p = prompts
        embedding, pixel_features = self.split_features(features)
        if eps is None:
            z = self.latent(p.weights, p.means, p.variances)  # BxL
            low = self.decode(embedding, z, p.sparse, p.dense, pixel_features, p.memory_shift)  # Bx1x4Gx4G
            return Decoded(low.float(), self.upscale(low).float(), self.reference_protocol)
        b, m = eps.shape[:2]
        rep = lambda t: None if t is None else t.repeat_interleave(m, dim=0)  # noqa: E731  B... -> (B*M)...
        z = self.latent(rep(p.weights), rep(p.means), rep(p.variances), eps.reshape(b * m, -1))
        low = self.decode(rep(embedding), z, rep(p.sparse), rep(p.dense), rep(pixel_features), rep(p.memory_shift))
        logits = self.upscale(low)
        low, logits = low.reshape(b, m, *low.shape[-2:]).float(), logits.reshape(b, m, *logits.shape[-2:]).float()
        return Decoded(low, logits, self.reference_protocol)

    def forward(
        self,
        images: torch.Tensor | None = None,
        points: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        mask_logits: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
        eps: torch.Tensor | None = None,
        embedding: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """One prediction: images Bx3xSxS (or their precomputed `image_features` as `embedding`), clicks, previous
        logits, weights BxK, eps BxL (one latent sample per image; None: ε = 0).

        Returns `low_res` Bx1x4Gx4G and `logits` Bx1xSxS, plus the `means`, `variances` and `weights` used.
        """
        if embedding is None:
            embedding = self.image_features(images)
        prompts = self.prompt(embedding.shape[0], points, labels, boxes, mask_logits, weights=weights)
        out = self.decode_round(embedding, prompts, None if eps is None else eps[:, None])
        return {
            "low_res": out.low,
            "logits": out.logits,
            "means": prompts.means,
            "variances": prompts.variances,
            "weights": prompts.weights,
        }

    @torch.no_grad()
    def update_mixture_state(
        self, weights: torch.Tensor, means: torch.Tensor, variances: torch.Tensor, momentum: float = 0.1
    ) -> None:
        """Move the stored mixture (the prior used before the first click) towards this step's mixture — K each,
        already averaged over the batch (and over ranks under torchrun) — as a running average, like
        BatchNorm's statistics. Training only."""
        for name, value in zip(MIXTURE_BUFFERS, (weights, means, variances)):
            buf = getattr(self, name)
            buf.lerp_(value.view_as(buf).to(buf.dtype), momentum)
        self.mixture_weights.div_(self.mixture_weights.sum())


PROTOCOLS = ("project", "reference")


def aespa_config(
    sam_cfg: dict[str, Any],
    n_components: int = 16,
    fusion: str = "residual",
    latent_dim: int = 64,
    point_order: str = "xy",
    multimask_output: int = 1,
    protocol: str = "project",
    pixel_branch: str = "none",
    memory: str = "none",
) -> dict[str, Any]:
    """A full model configuration: the SAM keys, the preference-head settings and the conventions the model's
    weights were trained with, which travel with its checkpoint: the click order (`point_order` 'xy' as SAM,
    'yx' as the original project), SAM's mask output (`multimask_output` 1 or 3), and the round `protocol`:
    'project' (per-image mixture, bilinear upsampling) or 'reference' (the original's: see `AESPAModel.prompt`,
    `encode_prompts`, `upscale`, `Decoded.probs`). `pixel_branch` 'unet' adds the pixel branch (pixel_branch.py),
    `memory` 'style' the session memory (session_memory.py).
    Other keys of `sam_cfg` (e.g. `decoder_block`) are kept."""
    if point_order not in ("xy", "yx"):
        raise ValueError(f"point_order must be 'xy' or 'yx', got {point_order!r}")
    if multimask_output not in (1, 3):
        raise ValueError(f"multimask_output must be 1 or 3, got {multimask_output!r}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if pixel_branch not in PIXEL_BRANCHES:
        raise ValueError(f"pixel_branch must be one of {PIXEL_BRANCHES}, got {pixel_branch!r}")
    if memory not in MEMORY_KINDS:
        raise ValueError(f"memory must be one of {MEMORY_KINDS}, got {memory!r}")
    extra = {
        "n_components": n_components,
        "latent_dim": latent_dim,
        "fusion": fusion,
        "point_order": point_order,
        "multimask_output": multimask_output,
        "protocol": protocol,
        "pixel_branch": pixel_branch,
        "memory": memory,
    }
    return {**sam_cfg, **extra}
