"""The typed run configuration: made once from the parsed command line, read by the loops and the builders.

Nothing changes a config in place: settings resolved later (the encoder size of a checkpoint, the default image
size, a resumed run's name) make a new one with `with_flags`. `flags()` is the flat {flag: value} record a run
writes to args.json and into its checkpoints; `cfg.config_from_flags` reads such a record back.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from conf import global_settings as settings
from dataset import default_data_path

# Config fields whose command-line flag has another name.
FLAG_NAMES = {"batch_size": "b", "workers": "w"}


@dataclass(frozen=True)
class ModelConfig:
    """What the model is and where its weights come from (`-encoder auto` / `-image_size` None: not resolved yet)."""

    encoder: str
    image_size: int | None
    sam_ckpt: str | None
    weights: str | None
    n_components: int
    fcomb: str
    multimask_output: int
    compat: str
    freeze_encoder: bool
    embedding_cache: str


@dataclass(frozen=True)
class DataConfig:
    """Which data, how it is read and batched."""

    dataset: str
    data_path: str
    valid_raters: str
    keep_empty: bool
    refuge_target: str
    augment: str
    batch_size: int
    workers: int
    val_fraction: float
    data_seed: int


@dataclass(frozen=True)
class LoopConfig:
    """What the interaction loops read: rounds, the simulated user, validation."""

    clicks: int
    click_strategy: str
    val_click_strategy: str
    switch_prob: float
    target_from: str
    target: str
    first_prompt: str
    box_jitter: int
    editor_radius: int
    paint_clicks: int
    train_prompt: bool
    num_samples: int
    n_clusters: int
    val_follow: str
    noc_clicks: int
    no_embedding_reuse: bool
    max_train_batches: int
    max_val_batches: int
    test_every_val: bool


@dataclass(frozen=True)
class RunConfig:
    """One run: the mode, the schedule, the system, and the model / data / loop settings."""

    mode: str
    exp_name: str
    epochs: int
    seed: int
    resume: str | None
    log_dir: str
    val_freq: int
    lr: float
    amp: str
    compile: bool
    device: str
    model: ModelConfig
    data: DataConfig
    loop: LoopConfig

    # --- from and to the command line's flags ---------------------------------------------------------

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RunConfig:
        """The config of checked command-line arguments (cfg.parse_args), with the defaults that depend on other
        flags filled in: the data path per dataset, the run name, the device of -gpu / -gpu_device."""
        flags = dict(vars(args))
        if flags.get("data_path") is None:
            flags["data_path"] = default_data_path(flags["dataset"], flags.get("data_seed", 0))
        if flags.get("exp_name") is None:
            flags["exp_name"] = f"{flags['dataset']}_{flags['mode']}"
        if flags.get("gpu_device") is not None and flags.get("device") == "auto":
            flags["device"] = f"cuda:{flags['gpu_device']}"
        if flags.get("gpu") is False:
            flags["device"] = "cpu"
        return cls._build(flags)

    @classmethod
    def _build(cls, flags: Mapping[str, Any]) -> RunConfig:
        def group(kind: type) -> Any:
            return kind(**{f.name: flags[FLAG_NAMES.get(f.name, f.name)] for f in fields(kind)})

        run = {f.name: flags[f.name] for f in fields(cls) if f.name not in ("model", "data", "loop")}
        return cls(**run, model=group(ModelConfig), data=group(DataConfig), loop=group(LoopConfig))

    def flags(self) -> dict[str, Any]:
        """The flat {flag: value} record of this config (args.json, checkpoints)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("model", "data", "loop")}
        for part in (self.model, self.data, self.loop):
            out.update({FLAG_NAMES.get(f.name, f.name): getattr(part, f.name) for f in fields(part)})
        return out

    def with_flags(self, **changes: Any) -> RunConfig:
        """A copy with some flags (by their command-line names) changed."""
        unknown = set(changes) - set(self.flags())
        if unknown:
            raise KeyError(f"unknown flags {sorted(unknown)}")
        return RunConfig._build({**self.flags(), **changes})


def default_image_size(encoder: str) -> int:
    """-image_size when not given: per encoder (conf/), else the LIDC crops' size."""
    return settings.IMAGE_SIZE.get(encoder, settings.DEFAULT_IMAGE_SIZE)
