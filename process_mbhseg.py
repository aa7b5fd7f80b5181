"""MBH-Seg NIfTI volumes -> 2-D axial PNG slices and per-rater masks (docs/data.md#mbh-seg).

    python process_mbhseg.py --src data/MBHSeg --dst data [--window_level 40 --window_width 80] [--keep_empty]

Input:  <src>/{train,test}/<case>/image.nii.gz (finite HU) and label_annot_<id>.nii.gz (whole numbers 0..5, 0
        background; a NaN scan or a label of other values is refused naming the file, never rounded).
Output: <dst>/MBHSeg-Binary/<split>/imgs/<case>/slice_<z>.png        8-bit windowed CT
        <dst>/MBHSeg-Binary/<split>/gt/<case>/slice_<z>_r<id>.npy     uint8 HxW 0/255 (label > 0)
        <dst>/MBHSeg-Multi/<split>/imgs/<case>/slice_<z>.png         the same image
        <dst>/MBHSeg-Multi/<split>/gt/<case>/slice_<z>_r<id>.npy      uint8 HxWx6 0/255 one-hot

Orientation: volumes are first brought to the closest canonical (RAS+) orientation, so array axes run
to the patient's Right, Anterior and Superior; z is the index along the third axis (inferior -> superior).
Each slice is written in the radiological display convention: PNG rows run anterior -> posterior
(canonical axis 1 reversed), PNG columns patient's right -> left (canonical axis 0 reversed), i.e.
png[row, col] = volume[X-1-col, Y-1-row, z]. Image and masks go through the same function.

Window: value = round(255 * clip((HU - (level - width/2)) / width, 0, 1)), rounding half to even.
Only slices where some rater marks foreground are kept unless --keep_empty. Every file is written
through a temporary file and a rename, and skipped when its bytes are already there, so a rerun
changes nothing; files of an earlier run that this run would not produce (e.g. empty slices after
dropping --keep_empty) are removed from the case folders.
"""

from __future__ import annotations

import argparse
import io
import re
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from utils import InputError, atomic_write_bytes, run_cli
from volumes.nifti import (
    N_CLASSES,
    case_folders,
    check_window,
    display_slice,
    load_image,
    load_label,
    read_case,
    window,
)

SPLITS = ("train", "test")
OUTPUTS = {"binary": "MBHSeg-Binary", "multi": "MBHSeg-Multi"}
OUTPUT_RE = re.compile(r"slice_\d+(_r.+\.npy|\.png)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Convert MBH-Seg NIfTI volumes into 2-D slices and per-rater masks.")
    parser.add_argument("--src", default="data/MBHSeg", help="raw data: <src>/{train,test}/<case>/*.nii.gz")
    parser.add_argument("--dst", default="data", help="output root: writes <dst>/MBHSeg-Binary and <dst>/MBHSeg-Multi")
    parser.add_argument("--window_level", type=float, default=40.0, help="CT window centre in HU")
    parser.add_argument("--window_width", type=float, default=80.0, help="CT window width in HU (> 0)")
    parser.add_argument("--keep_empty", action="store_true", help="also keep slices no rater marks")
    return parser.parse_args(argv)


def find_cases(src: Path) -> list[tuple[str, Path, Path, list[tuple[str, Path]]]]:
    """(split, case folder, image file, [(rater id, label file)]) for every case, checked, sorted."""
    if not src.is_dir():
        raise InputError(f"--src {src}: folder not found")
    splits = [s for s in SPLITS if (src / s).is_dir()]
    if not splits:
        raise InputError(f"--src {src}: no train/ or test/ folder")
    cases = []
    for split in splits:
        for case in case_folders(src / split):
            cases.append((split, case, *read_case(case)))
    if not cases:
        raise InputError(f"--src {src}: no cases in {', '.join(splits)}")
    return cases


def write_if_changed(path: Path, data: bytes) -> bool:
    """Write `data` atomically (temporary file + rename) unless the file already holds it; True if written."""
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    atomic_write_bytes(path, data)
    return True


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return buffer.getvalue()


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def case_outputs(
    image: Path, raters: list[tuple[str, Path]], level: float, width: float, keep_empty: bool
) -> dict[str, dict[str, bytes]]:
    """{'binary'|'multi': {relative file name: bytes}} of one case (names relative to imgs|gt/<case>/)."""
    volume = load_image(image)
    hu = volume.data  # XxYxZ, canonical
    labels = [load_label(path, volume).data for _, path in raters]  # on the image's voxel grid
    marked = np.stack([label > 0 for label in labels]).any(axis=(0, 1, 2))  # Z: some rater marks the slice
    one_hot = np.eye(N_CLASSES, dtype=np.uint8) * 255  # label value -> 0/255 one-hot row
    out: dict[str, dict[str, bytes]] = {"binary": {}, "multi": {}}
    for z in range(hu.shape[2]):
        if not (keep_empty or marked[z]):
            continue
        png = _png_bytes(window(display_slice(hu, z), level, width))
        for kind in out:
            out[kind][f"imgs/slice_{z}.png"] = png
        for (rater, _), label in zip(raters, labels):
            plane = display_slice(label, z)  # YxX
            out["binary"][f"gt/slice_{z}_r{rater}.npy"] = _npy_bytes((plane > 0).astype(np.uint8) * 255)
            out["multi"][f"gt/slice_{z}_r{rater}.npy"] = _npy_bytes(one_hot[plane])  # YxXx6
    return out


def _remove_stale(folder: Path, keep: set[str]) -> int:
    """Delete earlier outputs (slice_* files) in `folder` that are not in `keep`; their count."""
    if not folder.is_dir():
        return 0
    stale = [p for p in folder.iterdir() if OUTPUT_RE.fullmatch(p.name) and p.name not in keep]
    for path in stale:
        path.unlink()
    return len(stale)


def main(argv: list[str] | None = None) -> dict[str, int]:
    args = parse_args(argv)
    check_window(args.window_level, args.window_width, dash="--")
    src, dst = Path(args.src), Path(args.dst)
    cases = find_cases(src)
    counts = {"slices": 0, "written": 0, "unchanged": 0, "removed": 0}
    for split, case, image, raters in tqdm(cases, desc="MBH-Seg cases", unit="case"):
        outputs = case_outputs(image, raters, args.window_level, args.window_width, args.keep_empty)
        counts["slices"] += sum(1 for name in outputs["binary"] if name.startswith("imgs/"))
        for kind, files in outputs.items():
            base = dst / OUTPUTS[kind] / split
            for name, data in files.items():
                folder, file = name.split("/")
                counts["written" if write_if_changed(base / folder / case.name / file, data) else "unchanged"] += 1
            for folder in ("imgs", "gt"):
                keep = {n.split("/")[1] for n in files if n.startswith(folder + "/")}
                counts["removed"] += _remove_stale(base / folder / case.name, keep)
    print(
        f"{len(cases)} cases, {counts['slices']} slices kept -> {dst / OUTPUTS['binary']}, "
        f"{dst / OUTPUTS['multi']}: {counts['written']} files written, {counts['unchanged']} unchanged, "
        f"{counts['removed']} stale removed"
    )
    return counts


if __name__ == "__main__":
    run_cli(main)
