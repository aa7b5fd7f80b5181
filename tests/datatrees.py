"""Tiny on-disk data trees in each layout of docs/data.md, for tests (`from datatrees import write_lidc_tree`).

Every writer is deterministic, returns the dataset root it filled and writes both splits by default.
Rater k's mask is a disk of radius size/4 + k around the centre (raters overlap but disagree), so a
slice's masks are never empty unless asked for. Indices in `empty_*` / `missing_*` arguments are
(patient|case|image, slice[, rater]) positions counted from 0.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

SPLITS = ("train", "test")


def disk(size: int | tuple[int, int], radius: float, centre: tuple[float, float] | None = None) -> np.ndarray:
    """HxW bool disk (pixel centres within `radius` of `centre`, default the image centre)."""
    h, w = (size, size) if isinstance(size, int) else size
    cy, cx = centre if centre is not None else ((h - 1) / 2, (w - 1) / 2)
    yy, xx = np.indices((h, w))
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2


def grey_image(size: int | tuple[int, int], seed: int) -> np.ndarray:
    """HxW uint8: a left-to-right ramp plus seeded noise."""
    h, w = (size, size) if isinstance(size, int) else size
    ramp = np.linspace(20, 220, w)[None, :].repeat(h, 0)
    noise = np.random.default_rng(seed).integers(-20, 21, (h, w))
    return np.clip(ramp + noise, 0, 255).astype(np.uint8)


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def write_npy(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array)
    return path


def write_lidc_tree(
    root: str | Path,
    splits: Sequence[str] = SPLITS,
    n_patients: int = 2,
    slices: int = 2,
    raters: int = 4,
    size: int = 32,
    empty_slices: Iterable[tuple[int, int]] = (),
    empty_masks: Iterable[tuple[int, int, int]] = (),
    missing_masks: Iterable[tuple[int, int, int]] = (),
    seed: int = 0,
    first: int = 0,
) -> Path:
    """LIDC layout: root/<split>/images/LIDC-<p>/z-<s>.0_c0.png, root/<split>/gt/LIDC-<p>/z-<s>.0_c0_l<k>.png.

    empty_slices (p, s): all raters' masks empty; empty_masks (p, s, k): that mask empty;
    missing_masks (p, s, k): that file not written. Masks are 0/255 8-bit PNGs. Patients are numbered
    first..first+n_patients-1.
    """
    root = Path(root)
    empty_slices, empty_masks, missing = set(empty_slices), set(empty_masks), set(missing_masks)
    for split in splits:
        for p in range(first, first + n_patients):
            for s in range(slices):
                stem = f"LIDC-{p:04d}/z-{s}.0_c0"
                write_png(root / split / "images" / f"{stem}.png", grey_image(size, seed + 100 * p + s))
                for k in range(raters):
                    if (p, s, k) in missing:
                        continue
                    empty = (p, s) in empty_slices or (p, s, k) in empty_masks
                    mask = np.zeros((size, size), bool) if empty else disk(size, size / 4 + k)
                    write_png(root / split / "gt" / f"{stem}_l{k}.png", mask.astype(np.uint8) * 255)
    return root


def write_mbhseg_tree(
    root: str | Path,
    multiclass: bool = False,
    splits: Sequence[str] = SPLITS,
    n_cases: int = 2,
    slices: int = 2,
    raters: int = 3,
    size: int = 32,
    image_dir: str = "imgs",
    missing_masks: Iterable[tuple[int, int, int]] = (),
    seed: int = 0,
    first: int = 0,
) -> Path:
    """MBHSeg layout: root/<split>/<image_dir>/case_<c>/slice_<z>.png, root/<split>/gt/case_<c>/slice_<z>_r<k+1>.npy.

    Binary masks: uint8 HxW 0/255. Multiclass: uint8 HxWx6 0/255 one-hot, rater k's disk labelled
    class 1 + (k + z) % 5 (so raters disagree on the class too), background channel 0 elsewhere.
    Cases are numbered first..first+n_cases-1.
    """
    root = Path(root)
    missing = set(missing_masks)
    for split in splits:
        for c in range(first, first + n_cases):
            for z in range(slices):
                stem = f"case_{c}/slice_{z}"
                write_png(root / split / image_dir / f"{stem}.png", grey_image(size, seed + 100 * c + z))
                for k in range(raters):
                    if (c, z, k) in missing:
                        continue
                    mask = disk(size, size / 4 + k)
                    if multiclass:
                        labels = np.where(mask, 1 + (k + z) % 5, 0)
                        array = (np.eye(6, dtype=np.uint8) * 255)[labels]  # HxWx6
                    else:
                        array = mask.astype(np.uint8) * 255
                    write_npy(root / split / "gt" / f"{stem}_r{k + 1}.npy", array)
    return root


def write_refuge_tree(
    root: str | Path,
    splits: Sequence[str] = SPLITS,
    n_images: int = 2,
    raters: int = 7,
    size: tuple[int, int] = (40, 48),
    seed: int = 0,
) -> Path:
    """REFUGE layout: root/{Training-400,Test-400}/n<i>/n<i>.jpg (RGB) with n<i>_seg_{cup,disc}_<k>.png, k = 1..raters.

    Rater k's cup is a disk of radius h/8 + k/2, its disc one of radius h/4 + k/2 (disc contains cup).
    """
    root = Path(root)
    folders = {"train": "Training-400", "test": "Test-400"}
    for split in splits:
        for i in range(n_images):
            ident = f"n{i + 1:04d}"
            folder = root / folders[split] / ident
            grey = grey_image(size, seed + i)
            rgb = np.stack([grey, grey // 2, 255 - grey], axis=-1)  # HxWx3, channels differ
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rgb).save(folder / f"{ident}.jpg", quality=95)
            for k in range(1, raters + 1):
                for target, radius in (("cup", size[0] / 8 + k / 2), ("disc", size[0] / 4 + k / 2)):
                    write_png(folder / f"{ident}_seg_{target}_{k}.png", disk(size, radius).astype(np.uint8) * 255)
    return root


@dataclass
class RawMBHSeg:
    """What `write_mbhseg_raw` wrote: the root and, in canonical RAS orientation, the HU volume and labels."""

    root: Path
    hu: np.ndarray  # XxYxZ int16
    labels: list[np.ndarray]  # per rater, XxYxZ uint8 in 0..5
    affine: np.ndarray  # 4x4 RAS affine of the RAS-stored cases


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def write_mbhseg_raw(
    root: str | Path,
    split: str = "train",
    n_cases: int = 2,
    raters: int = 3,
    shape: tuple[int, int, int] = (12, 10, 5),
    fg_slices: Sequence[int] = (1, 3),
    lps_cases: Iterable[int] = (1,),
) -> RawMBHSeg:
    """Raw MBH-Seg: root/<split>/case_<c>/image.nii.gz and label_annot_<k+1>.nii.gz (k = 0..raters-1).

    Every case holds the same anatomy; cases in `lps_cases` are stored in LPS orientation (data flipped
    along x and y, affine with negative x/y axes), the others in RAS. Rater k marks class k % 5 + 1 in a
    k-dependent block of slice fg_slices[k % len(fg_slices)]; other slices have no foreground.
    HU: -1000 (air) everywhere except a ramp over the first row (x) of every slice: hu[x, 0, z] = 10 * x + z.
    """
    root = Path(root)
    X, Y, Z = shape
    hu = np.full(shape, -1000, np.int16)
    hu[:, 0, :] = 10 * np.arange(X)[:, None] + np.arange(Z)[None, :]
    labels = []
    for k in range(raters):
        label = np.zeros(shape, np.uint8)
        label[1 + k : 4 + k, 2 : 5 + k, fg_slices[k % len(fg_slices)]] = k % 5 + 1
        labels.append(label)
    ras = np.diag([0.5, 0.6, 2.0, 1.0])
    ras[:3, 3] = (10.0, 20.0, 30.0)
    lps = ras.copy()  # voxel (i, j) of the flipped array is voxel (X-1-i, Y-1-j) of the RAS one
    lps[:3, :3] = np.diag([-0.5, -0.6, 2.0])
    lps[:2, 3] = ras[:2, 3] + np.diag(ras)[:2] * (np.array([X, Y]) - 1)
    lps_cases = set(lps_cases)
    for c in range(n_cases):
        flip = (lambda a: a[::-1, ::-1, :].copy()) if c in lps_cases else (lambda a: a)
        affine = lps if c in lps_cases else ras
        case = root / split / f"case_{c}"
        write_nifti(case / "image.nii.gz", flip(hu), affine)
        for k, label in enumerate(labels):
            write_nifti(case / f"label_annot_{k + 1}.nii.gz", flip(label), affine)
    return RawMBHSeg(root, hu, labels, ras)


def write_two_style_tree(root: str | Path, n_train: int = 32, n_test: int = 8, size: int = 64, seed: int = 0) -> Path:
    """LIDC layout, one bright disk of radius r in 10..16 px per image at a random place, and two raters with
    systematic styles: rater 0 marks radius r - 3 (tight), rater 1 radius r + 3 (generous)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            radius = rng.uniform(10, 16)
            cy, cx = rng.uniform(radius + 4, size - radius - 4, 2)
            dist = np.hypot(yy - cy, xx - cx)
            image = 0.3 + 0.4 * (dist < radius) + 0.05 * rng.standard_normal((size, size))
            stem = f"p{i:03d}/s0"
            write_png(root / split / "images" / f"{stem}.png", (np.clip(image, 0, 1) * 255).astype(np.uint8))
            for k, offset in enumerate((-3, 3)):
                write_png(root / split / "gt" / f"{stem}_l{k}.png", ((dist < radius + offset) * 255).astype(np.uint8))
    return root


def write_lidc_readers_tree(root: str | Path, readers: Sequence[int] = (4, 2, 1)) -> Path:
    """The LIDC-readers layout without the database: LIDC-layout crops in train/val/test, one nodule folder per
    patient (`LIDC-<p>`, p = 0, 1, 2 marked by `readers[p]` readers), nodules.json with the reader counts and a
    manifest, as `python -m pipeline.lidc_readers` writes them (dataset.py then reads the tree as it is)."""
    root = write_lidc_tree(root, ("train", "val", "test"), n_patients=len(readers), slices=3)
    records = [
        {"name": f"LIDC-{p:04d}", "split": split, "readers": n}
        for split in ("train", "val", "test")
        for p, n in enumerate(readers)
    ]
    (root / "nodules.json").write_text(json.dumps(records))
    (root / "lidc_readers.json").write_text(json.dumps({"settings": {"generator": "a test's tree"}}))
    return root
