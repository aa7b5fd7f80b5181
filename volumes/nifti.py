"""MBH-Seg volumes: NIfTI files read into one canonical orientation, and predictions written back in each case's
own geometry.

Every volume is brought to the closest canonical (RAS+) orientation, so array axes run to the patient's Right,
Anterior and Superior; z is the index along the third axis. A rater's label is taken on its image's voxel grid:
it is reoriented with the image's transform (not its own), so a label whose affine disagrees with the image's
still lands on the voxels it was drawn on (the disagreement is reported). `to_file_order` undoes the
reorientation, and `save_like` writes an array with a case's shape, affine and header (uint8, no scaling).

Slices are shown in the radiological convention: rows anterior -> posterior, columns patient's right -> left,
i.e. slice[row, col] = volume[X-1-col, Y-1-row, z] (`display_slice`, `from_display`).
"""

from __future__ import annotations

import gzip
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

from utils import InputError, atomic_write_bytes, natural_key, one_line

log = logging.getLogger(__name__)

N_CLASSES = 6  # MBH-Seg labels: 0 background, 1 EDH, 2 IPH, 3 IVH, 4 SAH, 5 SDH
CANONICAL = axcodes2ornt(("R", "A", "S"))
LABEL_RE = re.compile(r"label_annot_(?P<rater>.+?)\.nii(\.gz)?")


@dataclass
class Volume:
    """A volume in canonical orientation (`data` XxYxZ) and its file: the image object (shape, affine, header) and
    the orientation transform from the file's voxel order to the canonical one."""

    data: np.ndarray
    image: nib.Nifti1Image
    ornt: np.ndarray
    path: Path

    @property
    def shape(self) -> tuple[int, ...]:
        """The file's own array shape."""
        return tuple(self.image.shape[:3])


def _read(path: Path) -> nib.Nifti1Image:
    try:
        image = nib.load(path)
        image.get_data_dtype()
    except Exception as err:  # nibabel, gzip and zlib raise many types for a bad file
        raise InputError(f"{path}: unreadable NIfTI ({one_line(err)})") from err
    return image


def _array(image: nib.Nifti1Image, path: Path, labels: bool) -> np.ndarray:
    try:
        data = np.asanyarray(image.dataobj) if labels else image.get_fdata(dtype=np.float32)
    except Exception as err:
        raise InputError(f"{path}: unreadable NIfTI ({one_line(err)})") from err
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"{path}: expected a 3-D volume, got shape {data.shape}")
    return data


def load_image(path: str | Path) -> Volume:
    """A CT image, float32 HU, in canonical orientation; refuses (one line naming the file) NaN or inf voxels."""
    path = Path(path)
    image = _read(path)
    data = _array(image, path, labels=False)
    bad = int(data.size - np.count_nonzero(np.isfinite(data)))
    if bad:
        raise InputError(f"{path}: {bad} of {data.size} CT voxels are not finite (NaN or inf)")
    ornt = io_orientation(image.affine)
    return Volume(apply_orientation(data, ornt), image, ornt, path)


def orientation(image: nib.Nifti1Image) -> str:
    """The patient directions of a file's voxel axes, e.g. 'LPS' (nibabel's aff2axcodes)."""
    return "".join(str(code) for code in nib.aff2axcodes(image.affine))


def read_labels(path: str | Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    """A label (or prediction) file as uint8 classes 0..5 in its own voxel order, and its image object; refuses (one
    line naming the file) non-finite values, values that are not whole numbers (never rounded: a probability map is
    not a label) and values outside 0..5."""
    path = Path(path)
    label = _read(path)
    values = _array(label, path, labels=True)
    if np.issubdtype(values.dtype, np.floating):
        if not np.isfinite(values).all():
            raise InputError(f"{path}: {int((~np.isfinite(values)).sum())} label voxels are not finite (NaN or inf)")
        fractional = values != np.floor(values)
        if fractional.any():
            example = float(values[fractional].flat[0])
            raise InputError(
                f"{path}: {int(fractional.sum())} voxels are not whole numbers (e.g. {example:g}): a probability "
                f"map? labels and predictions hold classes 0..{N_CLASSES - 1}"
            )
    low, high = int(values.min()), int(values.max())
    if low < 0 or high >= N_CLASSES:
        raise InputError(f"{path}: label values must lie in 0..{N_CLASSES - 1}, found {low}..{high}")
    return values.astype(np.uint8), label


def load_label(path: str | Path, image: Volume) -> Volume:
    """A rater's label (uint8 classes 0..5) on `image`'s voxel grid, in the image's canonical orientation. Refuses
    (one line naming the file) another shape, non-finite values, values that are not whole numbers and values outside
    0..5; an affine that disagrees with the image's is reported (warning naming both files) and the voxel grid is
    used as is."""
    path = Path(path)
    values, label = read_labels(path)
    if values.shape != image.shape:
        raise InputError(f"{path}: label shape {values.shape} does not match image shape {image.shape} ({image.path})")
    if not np.allclose(label.affine, image.image.affine, atol=1e-2):
        log.warning(
            "%s: affine differs from %s's; using the voxel grid as is (the image's orientation)", path, image.path
        )
    return Volume(apply_orientation(values, image.ornt), label, image.ornt, path)


def case_folders(folder: str | Path) -> list[Path]:
    """The case folders of a folder (hidden ones left out), ids compared as numbers."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(
        (p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: natural_key(p.name)
    )


def read_case(case: str | Path) -> tuple[Path, list[tuple[str, Path]]]:
    """A case folder's image (`image.nii.gz` or `.nii`) and raters (`label_annot_<id>.nii[.gz]`, sorted by id, ids
    compared as numbers); InputError naming the folder when the image or the labels are missing or an id repeats."""
    case = Path(case)
    images = [case / n for n in ("image.nii.gz", "image.nii") if (case / n).is_file()]
    if not images:
        raise InputError(f"{case}: no image.nii.gz")
    if len(images) > 1:
        raise InputError(f"{case}: two images, {images[0]} and {images[1]}: keep one")
    raters = sorted(
        ((m["rater"], case / n) for n in os.listdir(case) if (m := LABEL_RE.fullmatch(n))),
        key=lambda r: natural_key(r[0]),
    )
    if not raters:
        raise InputError(f"{case}: no label_annot_<id>.nii.gz files")
    for (rater, first), (other, second) in zip(raters, raters[1:]):  # sorted: a shared id is adjacent
        if rater == other:
            raise InputError(f"{case}: {first} and {second} are both rater {rater}: keep one")
    return images[0], raters


def to_file_order(canonical: np.ndarray, volume: Volume) -> np.ndarray:
    """A canonical-orientation array (XxYxZ) back in `volume`'s file voxel order and shape."""
    return apply_orientation(canonical, ornt_transform(CANONICAL, volume.ornt))


def save_like(array: np.ndarray, volume: Volume, path: str | Path) -> None:
    """Write a file-order uint8 array as a NIfTI with `volume`'s shape, affine and header (data type uint8, scaling
    reset), atomically (gzip when the name ends in .gz)."""
    if tuple(array.shape) != volume.shape:
        raise ValueError(f"array of shape {array.shape} for a volume of shape {volume.shape}")
    header = volume.image.header.copy()
    header.set_data_dtype(np.uint8)
    out = nib.Nifti1Image(np.ascontiguousarray(array, dtype=np.uint8), volume.image.affine, header)
    out.header.set_slope_inter(1.0, 0.0)
    data = out.to_bytes()
    path = Path(path)
    atomic_write_bytes(path, gzip.compress(data, mtime=0) if path.name.endswith(".gz") else data)


def check_window(level: float, width: float, dash: str = "-") -> None:
    """The CT window flags (`{dash}window_level`, `{dash}window_width`) of predict.py and process_mbhseg.py: a finite
    level and a finite width > 0, or an InputError naming the flag."""
    if not math.isfinite(level):
        raise InputError(f"{dash}window_level must be a finite number of HU, got {level}")
    if not (math.isfinite(width) and width > 0):
        raise InputError(f"{dash}window_width must be a finite number of HU > 0, got {width}")


def window(hu: np.ndarray, level: float, width: float) -> np.ndarray:
    """HU -> uint8 through the CT window [level - width/2, level + width/2] (rounding half to even)."""
    scaled = np.clip((hu - (level - width / 2)) / width, 0.0, 1.0) * 255.0
    return np.rint(scaled).astype(np.uint8)


def display_slice(volume: np.ndarray, z: int) -> np.ndarray:
    """Axial slice z of an XxYxZ[xC] canonical volume as YxX[xC] rows/columns (see the module docstring)."""
    return np.swapaxes(volume[:, :, z], 0, 1)[::-1, ::-1]


def display_spacing(volume: Volume) -> tuple[float, float, float]:
    """mm per element of a stack of displayed slices (Z planes of YxX, `display_slice`): the canonical Z, Y, X voxel
    sizes, from the file's affine (the length of each file axis' column) and the reorientation."""
    file_sizes = np.linalg.norm(np.asarray(volume.image.affine, dtype=np.float64)[:3, :3], axis=0)
    canonical = [0.0, 0.0, 0.0]
    for file_axis, (axis, _) in enumerate(volume.ornt):
        canonical[int(axis)] = float(file_sizes[file_axis])
    return canonical[2], canonical[1], canonical[0]


def from_display(plane: np.ndarray) -> np.ndarray:
    """A YxX displayed slice back as the XxY plane of the canonical volume (the inverse of `display_slice`)."""
    return np.swapaxes(plane[::-1, ::-1], 0, 1)
