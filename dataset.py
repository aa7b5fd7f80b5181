"""Multi-rater segmentation datasets (docs/data.md): LIDC, MBHSeg-Binary, MBHSeg-Multiclass, REFUGE, synthetic.

`build_dataset(name, data_path, split, image_size, **options)` returns a `MultiRaterDataset` whose
samples are dicts:

    image         3xSxS   float32 in [0,1]; grey images replicated to 3 channels
    multi_rater   Rx1xSxS float32 in {0,1}; RxCxSxS one-hot (C=6, channel 0 background) for
                  MBHSeg-Multiclass
    valid_raters  R       bool; raters are padded to the split's largest rater count (padding: zeros, False)
    name          str     "<patient>/<slice>" (LIDC, synthetic), "<case>/slice_<z>" (MBHSeg), "<id>" (REFUGE)
    spacing       2       float32 (row, column) size of a pixel of the SxS sample in mm: the native pixel's size
                          (`Record.spacing`, 1.0 where the layout does not know it, i.e. 1 native px = 1 unit)
                          times native size / S; the surface metrics (NSD) measure their tolerance in it

Options: each dataset's options dataclass (`Layout.options`) declares its settings once: every field declared with
`conf.options.option` is a flag (offered with that dataset, refused with the others), and every field is a keyword of
`build_dataset`, which refuses keywords the dataset does not declare and values that break a field's rule, and hands
the options instance to the layout's reader, its generator and the dataset (`MultiRaterDataset.options`).

Resizing: images bilinearly (antialiased when shrinking, align_corners=False); masks by nearest
neighbour with pixel centres aligned, i.e. output pixel i reads input pixel floor((i + 0.5) * in / out)
(PIL's NEAREST, torch's 'nearest-exact'), so a resized mask only ever holds labels of the original.

Mask files are binarised as: bool as is; floats >= 0.5; integers: a file whose largest value is 1 is a
0/1 mask (> 0), otherwise an 8-bit style 0/255 mask (>= 128).

Rater slots: a sample's rater files sorted by rater id (numeric-aware) fill slots 0..n-1; a rater is
valid when its file exists (`valid_raters='present'`, an empty mask says "no lesion") or, with
`'nonempty'`, when its native-resolution mask has foreground (any class 1..5 for one-hot masks).

LIDC (and synthetic) drop slices where no rater marks anything unless `keep_empty=True`; that choice is
computed from the masks once and cached in `<split>/aespa_manifest.json`, keyed on the list of files
with their sizes and modification times. The other layouts keep every slice they find
(`process_mbhseg.py --keep_empty` decides for MBHSeg).

Splits: train, val, test. Synthetic data generates its own val/ folder (`val_fraction` does not apply to
it). The other layouts carve the validation split out of the training folder by group, so that no
patient (LIDC), case (MBHSeg) or image (REFUGE) is in two splits: of the n groups of the training folder
(before empty slices are dropped), the k = round(val_fraction * n) (halves up, at least 1, at most n - 1)
whose names have the smallest SHA-256 go to val, the others stay in train (`val_groups`). The choice
depends on the group names only, not on listing order; adding or removing a group moves at most one
other group between train and val, and a larger val_fraction keeps the groups of a smaller one.
`val_fraction=0` trains on the whole folder and has no val split. The test folder is never carved.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import numbers
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from conf import global_settings as settings
from conf.options import declared, field_problem, non_negative, option, seed_range, within
from pipeline.image_files import image_size_of, mask_shape_of, read_image, read_mask, resize_image, resize_mask
from pipeline.lidc_readers import CROP_SPACING as LIDC_READERS_PIXEL_MM
from pipeline.lidc_readers import DEFAULT_ROOT as LIDC_READERS_ROOT
from pipeline.lidc_readers import ensure_lidc_readers, read_manifest, reader_counts
from pipeline.synthetic import DEFAULT_ROOT as SYNTHETIC_ROOT
from pipeline.synthetic import N_TEST, N_TRAIN, N_VAL, ensure_synthetic
from utils import InputError, atomic_write_bytes, natural_key

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
VALID_RULES = ("present", "nonempty")
REFUGE_TARGETS = ("cup", "disc")
REFUGE_FOLDERS = {"train": "Training-400", "test": "Test-400"}
MBHSEG_CLASSES = 6
MANIFEST = "aespa_manifest.json"
MANIFEST_FORMAT = "aespa-lidc-manifest/1"
IMAGE_EXTS = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class Record:
    """One sample on disk: its name, image file and rater mask files (sorted by rater id); marked: some rater
    marks foreground (LIDC layout only; slices without are dropped unless keep_empty); spacing: the (row, column)
    size of the image's pixel in mm, where the layout knows it (else 1 native pixel = 1 unit)."""

    name: str
    image: Path
    raters: tuple[Path, ...]
    marked: bool = True
    spacing: tuple[float, float] = (1.0, 1.0)


# ----------------------------------------------------------------------------------------- shapes


def expected_mask_shape(h: int, w: int, n_classes: int) -> tuple[int, ...]:
    return (h, w) if n_classes == 1 else (h, w, n_classes)


def _shape_error(mask: Path, shape: tuple, image: Path, h: int, w: int, n_classes: int) -> InputError:
    want = expected_mask_shape(h, w, n_classes)
    return InputError(f"{mask}: mask shape {shape} does not match {want} expected for image {image} ({h}x{w})")


# ----------------------------------------------------------------------------------------- dataset


class MultiRaterDataset(Dataset):
    """Samples of `records`, read and resized on access (see the module docstring for the dict); `options`: the
    dataset's options instance (its `Layout.options` dataclass), for settings that act per sample."""

    def __init__(
        self,
        records: list[Record],
        image_size: int,
        n_raters: int,
        n_classes: int = 1,
        valid_raters: str = "present",
        dataset_name: str = "",
        options: object | None = None,
        raters_across: str = "folder",
    ):
        self.records = records
        self.raters_across = raters_across
        self.image_size = image_size
        self.n_raters = n_raters
        self.n_classes = n_classes
        self.valid_rule = valid_raters
        self.dataset_name = dataset_name
        self.options = options

    def __len__(self) -> int:
        return len(self.records)

    def session_key(self, index: int) -> str:
        """The images whose rater k is one person share this key: '' for all of them when the raters keep their
        identity across the dataset (`raters_across` 'dataset'), else the sample's first folder (a patient, case or
        nodule)."""
        return "" if self.raters_across == "dataset" else _first_folder(self.records[index].name)

    def __getitem__(self, index: int) -> dict:
        rec, S, C = self.records[index], self.image_size, self.n_classes
        native = read_image(rec.image)
        h, w = native.shape[:2]
        masks = np.zeros((self.n_raters, C, S, S), np.float32)  # RxCxSxS, padded raters stay zero
        valid = np.zeros(self.n_raters, bool)
        for r, path in enumerate(rec.raters):
            mask = read_mask(path)  # HxW or HxWxC bool
            if mask.shape != expected_mask_shape(h, w, C):
                raise _shape_error(path, mask.shape, rec.image, h, w, C)
            small = resize_mask(mask, S) if (h, w) != (S, S) else mask
            masks[r] = small.reshape(S, S, C).transpose(2, 0, 1)  # SxSxC -> CxSxS
            foreground = mask if C == 1 else mask[..., 1:]  # channel 0 is background
            valid[r] = self.valid_rule == "present" or bool(foreground.any())
        return {
            "image": resize_image(native, S),
            "multi_rater": torch.from_numpy(masks),
            "valid_raters": torch.from_numpy(valid),
            "name": rec.name,
            "spacing": torch.tensor([rec.spacing[0] * h / S, rec.spacing[1] * w / S], dtype=torch.float32),
            "session": self.session_key(index),
        }


# ----------------------------------------------------------------------------------------- layouts


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise InputError(f"{path}: {what} not found")
    return path


def _listing(root: Path) -> dict[str, list[os.DirEntry]]:
    """Files one folder down, root/<group>/<file>, hidden names skipped: {group: entries}."""
    with os.scandir(root) as it:
        groups = [e for e in it if e.is_dir() and not e.name.startswith(".")]
    out = {}
    for group in groups:
        with os.scandir(group.path) as it:
            out[group.name] = [e for e in it if e.is_file() and not e.name.startswith(".")]
    return out


def _pair(
    images: dict[str, list[os.DirEntry]],
    masks: dict[str, list[os.DirEntry]],
    gt_root: Path,
    mask_re: re.Pattern,
    hint: str,
) -> list[Record]:
    """Join <group>/<stem>.png images with <group>/<stem>_<rater-tag><id>.<ext> masks, sorted."""
    by_slice: dict[tuple[str, str], list[tuple[str, Path]]] = {}
    for group, entries in masks.items():
        for e in entries:
            if m := mask_re.fullmatch(e.name):
                by_slice.setdefault((group, m["slice"]), []).append((m["rater"], Path(e.path)))
    records = []
    for group in sorted(images, key=natural_key):
        for e in sorted(images[group], key=lambda e: natural_key(e.name)):
            stem, ext = os.path.splitext(e.name)
            if ext.lower() != ".png":
                continue
            raters = by_slice.pop((group, stem), None)
            if not raters:
                raise InputError(f"{e.path}: image has no rater masks (expected {gt_root / group / stem}{hint})")
            raters.sort(key=lambda rp: natural_key(rp[0]))
            records.append(Record(f"{group}/{stem}", Path(e.path), tuple(p for _, p in raters)))
    if by_slice:
        example = min(p for raters in by_slice.values() for _, p in raters)
        log.warning("%d slice(s) with masks but no image ignored, e.g. %s", len(by_slice), example)
    return records


def _tree_key(*listings: dict[str, list[os.DirEntry]]) -> str:
    """Hash of every file's relative path, size and mtime: changes whenever the tree does."""
    lines = sorted(
        f"{i}/{g}/{e.name}\t{e.stat().st_size}\t{e.stat().st_mtime_ns}"
        for i, listing in enumerate(listings)
        for g, entries in listing.items()
        for e in entries
    )
    return hashlib.sha256("\n".join([MANIFEST_FORMAT, *lines]).encode()).hexdigest()


def _foreground_flags(split_dir: Path, records: list[Record], key: str) -> dict[str, bool]:
    """{name: does some rater mark foreground}, from the manifest when its key matches, else computed
    (checking every mask against its image's size) and cached."""
    path = split_dir / MANIFEST
    try:
        cached = json.loads(path.read_text())
        flags = cached["foreground"] if cached.get("format") == MANIFEST_FORMAT and cached.get("key") == key else {}
        if all(rec.name in flags for rec in records):
            return flags
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        pass  # absent or unreadable: recompute
    flags = {}
    for rec in tqdm(records, desc=f"indexing {split_dir}", leave=False, disable=None):
        h, w = image_size_of(rec.image)
        flags[rec.name] = False
        for mask_path in rec.raters:
            mask = read_mask(mask_path)
            if mask.shape != (h, w):
                raise _shape_error(mask_path, mask.shape, rec.image, h, w, 1)
            flags[rec.name] = flags[rec.name] or bool(mask.any())
    try:
        atomic_write_bytes(path, json.dumps({"format": MANIFEST_FORMAT, "key": key, "foreground": flags}).encode())
    except OSError as err:
        log.info("could not cache the slice selection in %s (%s); computed it without caching", path, err)
    return flags


def _lidc_records(split_dir: Path) -> list[Record]:
    """Every slice of the folder, `marked` from the (cached) foreground flags."""
    images_root = _require_dir(split_dir / "images", "images folder")
    gt_root = _require_dir(split_dir / "gt", "gt folder")
    images, masks = _listing(images_root), _listing(gt_root)
    records = _pair(images, masks, gt_root, re.compile(r"(?P<slice>.+)_l(?P<rater>[^_]+)\.png"), "_l<k>.png")
    if not records:
        raise InputError(f"{images_root}: no images (expected <patient>/<slice>.png)")
    foreground = _foreground_flags(split_dir, records, _tree_key(images, masks))
    _check_shapes(records, 1)  # also when the selection comes from the cached manifest
    return [replace(r, marked=foreground[r.name]) for r in records]


def _check_shapes(records: list[Record], n_classes: int) -> None:
    """Build-time check, before any training: every image's file is intact (PIL's verify: header and chunk
    checksums, nothing decoded) and every mask, from its header, has its image's size (and the layout's shape)."""
    for rec in records:
        h, w = image_size_of(rec.image, verify=True)
        for mask_path in rec.raters:
            shape = mask_shape_of(mask_path)
            if shape != expected_mask_shape(h, w, n_classes):
                raise _shape_error(mask_path, shape, rec.image, h, w, n_classes)


def _mbhseg_records(split_dir: Path, n_classes: int) -> list[Record]:
    images_root = split_dir / "imgs" if (split_dir / "imgs").is_dir() else split_dir / "images"
    _require_dir(images_root, "image folder (imgs/ or images/)")
    gt_root = _require_dir(split_dir / "gt", "gt folder")
    records = _pair(
        _listing(images_root),
        _listing(gt_root),
        gt_root,
        re.compile(r"(?P<slice>.+)_r(?P<rater>[^_]+)\.npy"),
        "_r<id>.npy",
    )
    if not records:
        raise InputError(f"{images_root}: no images (expected <case>/slice_<z>.png)")
    _check_shapes(records, n_classes)
    return records


def _refuge_records(split_dir: Path, target: str) -> list[Record]:
    with os.scandir(split_dir) as it:
        folders = sorted(
            (Path(e.path) for e in it if e.is_dir() and not e.name.startswith(".")), key=lambda p: natural_key(p.name)
        )
    records = []
    for folder in folders:
        names = set(os.listdir(folder))
        image = next((folder / f"{folder.name}{ext}" for ext in IMAGE_EXTS if f"{folder.name}{ext}" in names), None)
        if image is None:
            raise InputError(f"{folder}: no image {folder.name}.jpg")
        pattern = re.compile(re.escape(folder.name) + rf"_seg_{target}_(?P<rater>\d+)\.png")
        raters = [(m["rater"], folder / n) for n in names if (m := pattern.fullmatch(n))]
        if not raters:
            raise InputError(f"{image}: image has no {target} masks (expected {folder.name}_seg_{target}_<k>.png)")
        raters.sort(key=lambda rp: natural_key(rp[0]))
        records.append(Record(folder.name, image, tuple(p for _, p in raters)))
    if not records:
        raise InputError(f"{split_dir}: no images (expected <id>/<id>.jpg)")
    _check_shapes(records, 1)
    return records


# ----------------------------------------------------------------------------------------- validation carve


def _first_folder(name: str) -> str:
    return name.split("/", 1)[0]


def _whole_name(name: str) -> str:
    return name


@dataclass(frozen=True)
class Grouping:
    """What must stay within one split when validation is carved from the training folder: `kind` names the
    group in messages ("patient"), `of` maps a record name to its group."""

    kind: str
    of: Callable[[str], str]


def n_val_groups(n_groups: int, val_fraction: float) -> int:
    """k = round(val_fraction * n_groups), halves up, clamped to 1..n_groups-1 (train and val both non-empty)."""
    k = math.floor(round(val_fraction * n_groups, 9) + 0.5)  # round(., 9): 0.3 * 5 counts as 1.5, not 1.4999...
    return min(max(k, 1), n_groups - 1)


def val_groups(groups: Iterable[str], val_fraction: float) -> frozenset[str]:
    """The validation groups among `groups` (at least two): the `n_val_groups` whose UTF-8 names have the
    smallest SHA-256 digests. Independent of the order of `groups`; see the module docstring for stability."""
    names = set(groups)
    ranked = sorted(names, key=lambda g: (hashlib.sha256(g.encode("utf-8")).digest(), g))
    return frozenset(ranked[: n_val_groups(len(names), val_fraction)])


def _carve(records: list[Record], grouping: Grouping, split: str, val_fraction: float, folder: Path) -> list[Record]:
    """The records of `split` ('train' or 'val') among those of the training folder."""
    if val_fraction == 0:
        return records
    groups = {grouping.of(r.name) for r in records}
    if len(groups) < 2:
        raise InputError(
            f"{folder}: {len(groups)} {grouping.kind}(s), too few to carve a validation split from "
            f"(val_fraction 0 trains on the whole folder)"
        )
    held = val_groups(groups, val_fraction)
    log.info("%s: %d of %d %ss held out for validation", folder, len(held), len(groups), grouping.kind)
    return [r for r in records if (grouping.of(r.name) in held) == (split == "val")]


# ----------------------------------------------------------------------------------------- entry


# Options of the datasets (see the module docstring): a field declared with `option` is a flag (conf/options.py);
# every field is a keyword of build_dataset and an attribute of the options instance the layout's reader gets.


@dataclass(frozen=True)
class CarvedOptions:
    """Datasets whose validation split is carved out of the training folder."""

    val_fraction: float = option(
        settings.VAL_FRACTION,
        "share of the training patients / cases (REFUGE: images) held out as the validation split that chooses the "
        "best checkpoint (0: none)",
        check=within(0.0, 1.0, high_included=False),
    )


@dataclass(frozen=True)
class EmptySliceOptions:
    """Datasets whose slices nobody marks are skipped."""

    keep_empty: bool = option(False, "keep slices where no rater marks anything")


@dataclass(frozen=True)
class LIDCOptions(EmptySliceOptions, CarvedOptions):
    pass


@dataclass(frozen=True)
class REFUGEOptions(CarvedOptions):
    refuge_target: str = option("cup", "REFUGE structure to segment", choices=REFUGE_TARGETS)


@dataclass(frozen=True)
class SyntheticOptions(EmptySliceOptions):
    data_seed: int = option(
        settings.DATA_SEED,
        "seed of the generated synthetic data (seed N != 0 lives in data/synthetic_seed<N> by default)",
        check=seed_range(settings.MAX_SEED),
    )
    # the generated tree's sizes: keywords of build_dataset (tests, scripts), not flags
    n_train: int = N_TRAIN
    n_val: int = N_VAL
    n_test: int = N_TEST


@dataclass(frozen=True)
class LIDCReadersOptions:
    min_readers: int = option(
        2,
        "keep the nodules marked by at least this many of the scan's four readers (the others are raters with an "
        "empty mask)",
        check=within(1, 4),
    )
    slices_per_nodule: int = option(
        0,
        "keep this many slices of each nodule: its middle slice and the nearest ones (0: every slice a reader marks)",
        check=non_negative,
    )


def _lidc_readers_records(split_dir: Path, options: LIDCReadersOptions) -> list[Record]:
    """The crops of the nodules marked by at least `min_readers` readers (nodules.json), `slices_per_nodule` of
    each around its middle slice, with their pixel spacing (CROP_SPACING mm)."""
    counts = reader_counts(split_dir.parent)
    by_nodule: dict[str, list[Record]] = {}
    for rec in _lidc_records(split_dir):
        nodule = _first_folder(rec.name)
        if counts.get(nodule, 0) >= options.min_readers:
            by_nodule.setdefault(nodule, []).append(rec)
    spacing = (LIDC_READERS_PIXEL_MM, LIDC_READERS_PIXEL_MM)
    kept = []
    for records in by_nodule.values():
        records = sorted(records, key=lambda r: natural_key(r.name))
        k = options.slices_per_nodule or len(records)
        middle = (len(records) - 1) / 2
        nearest = sorted(range(len(records)), key=lambda i: (abs(i - middle), i))[:k]
        kept += [replace(records[i], spacing=spacing) for i in sorted(nearest)]
    return kept


@dataclass(frozen=True)
class Layout:
    """How a dataset lies on disk: its default folder, the reader of a folder's records (folder, options) ->
    records, the classes of its masks (1: binary), the split folder names, and either a "val" split folder or
    the grouping by which validation is carved from the training folder. `generate` makes generated data on
    first use ((root, options) -> root); its default folder then depends on the data seed. `options`: the
    dataclass of the dataset's own settings (flags, build_dataset keywords); the reader and the generator get its
    instance. `raters_across`: 'dataset' when rater k is the same person on every image (a session memory may
    learn from any two images), 'folder' when only within a patient / case folder."""

    default_path: str
    records: Callable[[Path, Any], list[Record]]
    n_classes: int = 1
    split_folders: Mapping[str, str] = field(default_factory=lambda: {"train": "train", "test": "test"})
    val_grouping: Grouping | None = None
    generate: Callable[[Path, Any], Path] | None = None
    options: type = CarvedOptions
    raters_across: str = "folder"

    def __post_init__(self):
        if ("val" in self.split_folders) == (self.val_grouping is not None):
            raise ValueError("a layout has either a val split folder or a val_grouping to carve one")


def _ensure_lidc_readers(root: Path, options: LIDCReadersOptions) -> Path:
    """A build found at `root` (of every nodule, or of some patients: `python -m pipeline.lidc_readers`), else the
    build of every nodule; -min_readers filters when reading."""
    return root if read_manifest(root) is not None else ensure_lidc_readers(root)


def _ensure_synthetic(root: Path, options: SyntheticOptions) -> Path:
    return ensure_synthetic(root, options.data_seed, options.n_train, options.n_test, options.n_val)


# Every dataset the command line offers (-dataset), in the order it lists them.
DATASETS: dict[str, Layout] = {
    "synthetic": Layout(
        SYNTHETIC_ROOT,
        lambda d, o: _lidc_records(d),
        split_folders={"train": "train", "val": "val", "test": "test"},
        generate=_ensure_synthetic,
        options=SyntheticOptions,
        raters_across="dataset",  # four styles, the same on every image
    ),
    "LIDC": Layout(
        "data/LIDC",
        lambda d, o: _lidc_records(d),
        val_grouping=Grouping("patient", _first_folder),
        options=LIDCOptions,
    ),
    "MBHSeg-Binary": Layout(
        "data/MBHSeg-Binary", lambda d, o: _mbhseg_records(d, 1), val_grouping=Grouping("case", _first_folder)
    ),
    "MBHSeg-Multiclass": Layout(
        "data/MBHSeg-Multi",
        lambda d, o: _mbhseg_records(d, MBHSEG_CLASSES),
        MBHSEG_CLASSES,
        val_grouping=Grouping("case", _first_folder),
    ),
    "LIDC-readers": Layout(
        LIDC_READERS_ROOT,
        _lidc_readers_records,
        split_folders={"train": "train", "val": "val", "test": "test"},
        generate=_ensure_lidc_readers,
        options=LIDCReadersOptions,
    ),
    "REFUGE": Layout(
        "data/REFUGE-Multirater",
        lambda d, o: _refuge_records(d, o.refuge_target),
        split_folders=REFUGE_FOLDERS,
        val_grouping=Grouping("image", _whole_name),
        options=REFUGEOptions,
    ),
}


def _check_data_seed(data_seed: int) -> None:
    if isinstance(data_seed, bool) or not isinstance(data_seed, numbers.Integral) or data_seed < 0:
        raise InputError(f"data seed must be a non-negative integer, got {data_seed!r}")


def _check_val_fraction(val_fraction: float) -> None:
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, numbers.Real) or not 0 <= val_fraction < 1:
        raise InputError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}")


def default_data_path(name: str, data_seed: int = settings.DATA_SEED) -> str:
    """The folder a dataset is read from when -data_path is not given. Generated data (synthetic) has one per
    data seed: data/synthetic for seed 0, data/synthetic_seed<N> otherwise; data read from disk ignores it."""
    if name not in DATASETS:
        raise InputError(f"unknown dataset '{name}' (valid: {', '.join(DATASETS)})")
    _check_data_seed(data_seed)
    layout = DATASETS[name]
    if layout.generate is None or data_seed == 0:
        return layout.default_path
    return f"{layout.default_path}_seed{data_seed}"


def has_val_split(name: str, val_fraction: float = settings.VAL_FRACTION) -> bool:
    """Whether `build_dataset(name, ..., 'val', val_fraction=val_fraction)` has a split to return."""
    _check_val_fraction(val_fraction)
    layout = DATASETS[name]
    return "val" in layout.split_folders or (layout.val_grouping is not None and val_fraction > 0)


def dataset_options(name: str, options: Mapping[str, Any]) -> Any:
    """The options instance of dataset `name` (its `Layout.options` dataclass) from keywords {field: value}; an
    InputError naming the keyword for one the dataset does not declare or a value that breaks the field's rule."""
    cls = DATASETS[name].options
    known = [f.name for f in fields(cls)]
    for key in options:
        if key not in known:
            raise InputError(f"dataset {name} has no option '{key}' (its options: {', '.join(known) or 'none'})")
    for f, _ in declared(cls):
        problem = field_problem(f, options[f.name]) if f.name in options else None
        if problem:
            raise InputError(f"dataset {name}, option {f.name}: {problem}")
    if "val_fraction" in options:
        _check_val_fraction(options["val_fraction"])
    if "data_seed" in options:
        _check_data_seed(options["data_seed"])
    return cls(**options)


def build_dataset(
    name: str,
    data_path: str | os.PathLike | None,
    split: str,
    image_size: int,
    *,
    valid_raters: str = "present",
    seed: int | None = None,
    **options: Any,
) -> MultiRaterDataset:
    """The `split` ('train'|'val'|'test') of dataset `name` under `data_path`, samples resized to image_size.

    valid_raters: 'present'|'nonempty' (every dataset). `options`: the fields of the dataset's options dataclass
    (`DATASETS[name].options`; the module docstring): keep_empty (LIDC, synthetic), refuge_target 'cup'|'disc'
    (REFUGE), val_fraction in [0, 1): the share of training groups carved out as the val split (LIDC, MBHSeg,
    REFUGE); data_seed, n_train, n_val, n_test (synthetic: generated on first use into data_path, default
    `default_data_path(name, data_seed)`). A keyword the dataset does not declare is refused.
    Raises InputError (one line naming the path or option) for a bad tree or option. `seed` is the earlier name of
    `data_seed` (kept for scripts written against it).
    """
    if name not in DATASETS:
        raise InputError(f"unknown dataset '{name}' (valid: {', '.join(DATASETS)})")
    if seed is not None:
        options = {**options, "data_seed": seed}
    if split not in SPLITS:
        raise InputError(f"unknown split '{split}' (valid: {', '.join(SPLITS)})")
    if valid_raters not in VALID_RULES:
        raise InputError(f"unknown valid_raters rule '{valid_raters}' (valid: {', '.join(VALID_RULES)})")
    if int(image_size) != image_size or image_size < 1:
        raise InputError(f"image_size must be a positive integer, got {image_size}")
    chosen = dataset_options(name, options)
    val_fraction = getattr(chosen, "val_fraction", 0.0)
    if split == "val" and not has_val_split(name, val_fraction):
        raise InputError(f"dataset {name} has no val split with val_fraction 0 (give a fraction in (0, 1))")
    layout = DATASETS[name]
    if data_path is None and layout.generate is None:
        raise InputError(f"dataset {name} needs a data path")
    data_seed = getattr(chosen, "data_seed", settings.DATA_SEED)
    root = Path(data_path if data_path is not None else default_data_path(name, data_seed))
    if layout.generate is not None:
        root = layout.generate(root, chosen)
    _require_dir(root, f"{name} data folder")
    carve = layout.val_grouping is not None and split != "test"  # train and val share the training folder
    split_dir = _require_dir(root / layout.split_folders["train" if carve else split], "split folder")
    records = layout.records(split_dir, chosen)
    if carve:
        records = _carve(records, layout.val_grouping, split, val_fraction, split_dir)
    kept = records if getattr(chosen, "keep_empty", False) else [r for r in records if r.marked]
    if not kept:
        raise InputError(f"{split_dir}: no slice of the {split} split has a marked lesion (keep_empty keeps them)")
    log.info("%s (%s): %d samples (%d without lesion skipped)", split_dir, split, len(kept), len(records) - len(kept))
    n_raters = max(len(rec.raters) for rec in kept)
    return MultiRaterDataset(
        kept, int(image_size), n_raters, layout.n_classes, valid_raters, name, chosen, layout.raters_across
    )
