"""A small synthetic MBH-Seg set in the challenge's raw layout, so that the whole-case path (process_mbhseg.py,
training, predict.py, multirater_metrics.py) can be tried without the real data:

    python -m volumes.synthetic data/MBHSeg-synthetic [-train 12] [-test 4] [-seed 0]

writes <out>/{train,test}/case_<NNN>/image.nii.gz (CT in HU: air, skull, brain, one or two haemorrhages) and
label_annot_{1,2,5}.nii.gz (rater ids need not run 1, 2, 3). Each haemorrhage is an ellipsoid of one class 1..5;
rater 1 marks it 1 voxel inside its boundary, rater 2 1 voxel outside, rater 5 exactly but misses faint ones. The
cases are stored in different orientations (RAS, LPS, and one whose slice axis comes first), as scanners write
them. Case i is drawn from numpy's default_rng([seed, split, i]): the same seed writes the same files, and a
rerun with fewer cases removes the case folders it no longer writes.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from utils import InputError, OneLineParser, run_cli

SHAPE = (48, 56, 10)  # x, y, z in canonical order
RATERS = {"1": -1.0, "2": 1.0, "5": 0.0}  # rater id -> boundary offset in voxels
FAINT_HU = 58  # rater 5 does not mark haemorrhages fainter than this
SPLITS = {"train": 0, "test": 1}
ORIENTATIONS = ("RAS", "LPS", "SRA")  # the case's storage: its voxel axes as patient directions
CASE_RE = re.compile(r"case_\d{3,}")  # the case folders this module writes


def affine_of(orientation: str) -> np.ndarray:
    """A 1 x 1 x 5 mm affine whose voxel axes point as `orientation` says (e.g. LPS: x to the left, ...)."""
    directions = {"R": (0, 1), "L": (0, -1), "A": (1, 1), "P": (1, -1), "S": (2, 1), "I": (2, -1)}
    spacing = (1.0, 1.0, 5.0)
    affine = np.zeros((4, 4))
    affine[3, 3] = 1.0
    for axis, code in enumerate(orientation):
        world, sign = directions[code]
        affine[world, axis] = sign * spacing[world]
    return affine


def to_storage(canonical: np.ndarray, orientation: str) -> np.ndarray:
    """A canonical (RAS) array in the voxel order of `orientation`."""
    order = ["RLAPSI".index(c) // 2 for c in orientation]  # canonical axis of each stored axis
    flips = [c in "LPI" for c in orientation]
    out = np.transpose(canonical, order)
    for axis, flip in enumerate(flips):
        if flip:
            out = np.flip(out, axis)
    return np.ascontiguousarray(out)


def make_case(rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(HU volume int16, {rater id: label volume uint8}) in canonical order."""
    x, y, z = np.meshgrid(*(np.arange(n, dtype=float) for n in SHAPE), indexing="ij")
    cx, cy = (SHAPE[0] - 1) / 2, (SHAPE[1] - 1) / 2
    head = ((x - cx) / 21) ** 2 + ((y - cy) / 25) ** 2
    hu = np.where(head < 1.0, 1000.0, -1000.0)  # skull
    hu = np.where(head < 0.8, 35.0 + rng.normal(0, 3, SHAPE), hu)  # brain
    lesions = []
    for _ in range(rng.integers(1, 3)):
        centre = np.array([rng.uniform(cx - 8, cx + 8), rng.uniform(cy - 10, cy + 10), rng.uniform(3, SHAPE[2] - 4)])
        radii = np.array([rng.uniform(4, 8), rng.uniform(4, 8), rng.uniform(1.2, 2.5)])
        inside = (((np.stack([x, y, z], -1) - centre) / radii) ** 2).sum(-1) < 1.0
        brightness = rng.uniform(50, 80)
        hu = np.where(inside, brightness + rng.normal(0, 3, SHAPE), hu)
        lesions.append((inside, int(rng.integers(1, 6)), brightness))
    labels = {}
    for rater, offset in RATERS.items():
        label = np.zeros(SHAPE, np.uint8)
        for inside, cls, brightness in lesions:
            if rater == "5" and brightness < FAINT_HU:
                continue
            if offset < 0:  # in-plane boundary moved, slice by slice (5 mm slices)
                mask = ndimage.binary_erosion(inside, np.ones((3, 3, 1)))
            elif offset > 0:
                mask = ndimage.binary_dilation(inside, np.ones((3, 3, 1)))
            else:
                mask = inside
            label[mask] = cls
        labels[rater] = label
    return hu.astype(np.int16), labels


def write(out: str | Path, n_train: int = 12, n_test: int = 4, seed: int = 0) -> Path:
    """The synthetic raw tree under `out`, rewritten whole: case folders (case_<NNN>) an earlier, larger run left in
    a split are removed, so the tree holds exactly these cases."""
    if min(n_train, n_test) < 0 or n_train + n_test == 0:
        raise InputError(f"-train {n_train} -test {n_test}: case counts must be >= 0 and not both 0")
    if seed < 0:
        raise InputError(f"-seed {seed}: must be >= 0 (numpy's seed sequences take no negative numbers)")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: a file, not a folder")
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            rng = np.random.default_rng([seed, SPLITS[split], i])
            hu, labels = make_case(rng)
            orientation = ORIENTATIONS[i % len(ORIENTATIONS)]
            affine, case = affine_of(orientation), out / split / f"case_{i:03d}"
            case.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(to_storage(hu, orientation), affine), case / "image.nii.gz")
            for rater, label in labels.items():
                nib.save(nib.Nifti1Image(to_storage(label, orientation), affine), case / f"label_annot_{rater}.nii.gz")
        folder = out / split
        stale = (
            [p for p in folder.iterdir() if CASE_RE.fullmatch(p.name) and int(p.name[5:]) >= n]
            if folder.is_dir()
            else []
        )
        for case in stale:
            shutil.rmtree(case)
    return out


def main(argv: list[str] | None = None) -> Path:
    p = OneLineParser(prog="python -m volumes.synthetic", description="Write a synthetic raw MBH-Seg set.")
    p.add_argument("out", help="output folder: <out>/{train,test}/case_<NNN>/")
    p.add_argument("-train", type=int, default=12, help="training cases (>= 0)")
    p.add_argument("-test", type=int, default=4, help="test cases (>= 0)")
    p.add_argument("-seed", type=int, default=0, help="seed of the cases (>= 0)")
    args = p.parse_args(argv)
    out = write(args.out, args.train, args.test, args.seed)
    print(f"{args.train} train and {args.test} test cases, raters {', '.join(RATERS)} -> {out}")
    return out


if __name__ == "__main__":
    run_cli(main)
