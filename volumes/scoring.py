"""Scoring whole MBH-Seg cases: one multi-class prediction volume against every rater's label, per case, then the
mean over cases, under two conventions.

challenge  the MBH-Seg 2025 evaluator's behaviour, so that a score here predicts the leaderboard's:
           * Dice against a rater averages the per-class Dice over the classes 1..5 present in that rater's label
             (a class only the prediction has costs nothing); against an empty label, with x predicted foreground
             voxels, Dice = 2(100 - x) / (200 - x) for x <= 100, else 0;
           * Dice_max = the best rater's Dice; with one prediction Dice_match = the mean Dice over raters;
           * GED binarises the prediction (every predicted class becomes class 1) but keeps the raters' classes;
             d = 1 - the mean IoU over the 5 classes, a class absent from both masks counting IoU 0; 0 when every
             mask is empty, 1 when exactly one side is; on binary data this is this project's plain GED / 5;
           * Dice_soft thresholds the mean of the raters' class numbers (and the prediction's values) at
             0.1, 0.3, 0.5, 0.7, 0.9 (strictly above) and averages the five whole-volume Dice (both empty: 1);
           * a case with fewer than two raters is refused (the evaluator stops there).
plain      this project's definitions (docs/metrics.md) on foreground masks (label > 0): dice(a, b) = (2|a∧b| + 1e-8) /
           (|a| + |b| + 1e-8), GED with d = 1 - IoU and the same empty rules, Dice_match by Hungarian assignment
           (one prediction: the mean over raters), Dice_soft of the raters' mean foreground.

Every count comes from a 6x6 joint histogram of two uint8 volumes (np.bincount), so a 512x512x40 case with four
raters needs a few arrays of its size in memory, never float64 copies of it.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from utils import InputError, atomic_write_bytes, natural_key, unusable_folder
from volumes.nifti import N_CLASSES, case_folders, orientation, read_case, read_labels
from volumes.submission import PREDICTION_RE, check_prediction_folder

log = logging.getLogger(__name__)

CONVENTIONS = ("challenge", "plain")
KEYS = ("Dice_mean", "Dice_max", "Dice_match", "GED", "Dice_soft")
SOFT_THRESHOLDS = (0.1, 0.3, 0.5, 0.7, 0.9)
EMPTY_LIMIT = 100  # challenge: Dice against an empty label falls linearly to 0 at this many predicted voxels
EPS = 1e-8
AFFINE_TOLERANCE = 1e-2  # mm: a prediction's affine against its case image's (float32 headers round)


def joint(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """6x6 counts n[i, j] = voxels where a == i and b == j (two uint8 label volumes of one shape)."""
    index = a.astype(np.int32, copy=False) * N_CLASSES + b
    return np.bincount(index.ravel(), minlength=N_CLASSES * N_CLASSES).reshape(N_CLASSES, N_CLASSES)


def class_dice(n: np.ndarray, c: int) -> float:
    """Dice of class c from a joint histogram (rows: the first volume, columns: the second)."""
    inter, a, b = n[c, c], n[c].sum(), n[:, c].sum()
    return 2 * inter / (a + b) if a + b else 1.0


def challenge_dice(pred: np.ndarray, label: np.ndarray) -> float:
    """The evaluator's Dice of a prediction against one rater (see the module docstring)."""
    n = joint(pred, label)
    present = [c for c in range(1, N_CLASSES) if n[:, c].sum() > 0]
    if not present:
        x = int(n[1:].sum())  # predicted foreground voxels
        return 2 * (EMPTY_LIMIT - x) / (2 * EMPTY_LIMIT - x) if x <= EMPTY_LIMIT else 0.0
    return float(np.mean([class_dice(n, c) for c in present]))


def plain_dice(pred: np.ndarray, label: np.ndarray) -> float:
    n = joint(pred, label)
    inter, a, b = n[1:, 1:].sum(), n[1:].sum(), n[:, 1:].sum()
    return float((2 * inter + EPS) / (a + b + EPS))


def distance(a: np.ndarray, b: np.ndarray, classes: bool) -> float:
    """1 - IoU: over the 5 classes, absent ones counting 0 (`classes`), or of the foreground masks."""
    n = joint(a, b)
    if not classes:
        inter, union = n[1:, 1:].sum(), n[1:].sum() + n[:, 1:].sum() - n[1:, 1:].sum()
        return 1.0 - inter / (union + EPS)
    ious = [n[c, c] / (n[c].sum() + n[:, c].sum() - n[c, c] + EPS) for c in range(1, N_CLASSES)]
    return 1.0 - float(np.mean(ious))


def ged(pred: np.ndarray, labels: Sequence[np.ndarray], classes: bool) -> float:
    """GED of one prediction against the raters (d = `distance`), with the empty-set rules."""
    pred_fg, label_fg = bool(pred.any()), any(bool(label.any()) for label in labels)
    if not pred_fg and not label_fg:
        return 0.0
    if pred_fg != label_fg:
        return 1.0
    cross = np.mean([distance(pred, label, classes) for label in labels])
    within = np.mean([distance(a, b, classes) for a in labels for b in labels])
    return float(2 * cross - within - distance(pred, pred, classes))


def dice_soft(pred: np.ndarray, labels: Sequence[np.ndarray], binary: bool) -> float:
    """Mean over the thresholds of the Dice of (prediction > t) and (mean of the raters > t); values are class
    numbers (challenge) or foreground (plain)."""
    total = np.zeros(pred.shape, np.uint16)
    for label in labels:
        total += (label > 0) if binary else label
    p = (pred > 0) if binary else pred
    scores = []
    for t in SOFT_THRESHOLDS:
        a, b = p > t, total > t * len(labels)
        size = int(a.sum()) + int(b.sum())
        scores.append(2 * int((a & b).sum()) / size if size else 1.0)
    return float(np.mean(scores))


def score_case(
    pred: np.ndarray, labels: Sequence[np.ndarray], convention: str, ids: Sequence[str] | None = None
) -> dict[str, float]:
    """One case's scores: `pred` and `labels` uint8 class volumes of one shape (file order); `ids` name the raters
    (their Dice columns, Dice_rater<id>; default 0, 1, ...)."""
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    challenge = convention == "challenge"
    per_rater = [(challenge_dice if challenge else plain_dice)(pred, label) for label in labels]
    binary_pred = (pred > 0).astype(np.uint8)
    ids = list(ids) if ids is not None else [str(k) for k in range(len(labels))]
    out = {f"Dice_rater{rater}": d for rater, d in zip(ids, per_rater)}
    out.update(
        Dice_mean=float(np.mean(per_rater)),
        Dice_max=float(max(per_rater)),
        Dice_match=float(np.mean(per_rater)),  # one prediction: every rater is matched to it
        GED=ged(binary_pred, labels if challenge else [(label > 0).astype(np.uint8) for label in labels], challenge),
        Dice_soft=dice_soft(pred, labels, binary=not challenge),
    )
    return out


def prediction_files(pred_dir: Path) -> dict[str, Path]:
    """{case name: its prediction file} of a prediction folder: `<case>.nii.gz`, else `<case>.nii` (warned: the
    challenge's evaluator reads only .nii.gz). InputError for a folder that is missing, a file, or holds no
    prediction but subfolders that do (the parent of predict.py's follow_* folders)."""
    if not pred_dir.exists():
        raise InputError(f"-pred {pred_dir}: folder not found")
    if not pred_dir.is_dir():
        raise InputError(f"-pred {pred_dir}: a file, not a folder of <case>.nii.gz predictions")
    found: dict[str, list[Path]] = {}
    for path in sorted(pred_dir.iterdir(), key=lambda p: p.name):
        if path.is_file() and (m := PREDICTION_RE.fullmatch(path.name)):
            found.setdefault(m["case"], []).append(path)
    if not found:
        inside = [p.name for p in sorted(pred_dir.iterdir(), key=lambda p: natural_key(p.name)) if p.is_dir()]
        holding = [n for n in inside if any(PREDICTION_RE.fullmatch(f.name) for f in (pred_dir / n).iterdir())]
        if holding:
            raise InputError(
                f"-pred {pred_dir}: no prediction here, but in {', '.join(holding)}: name one of them, e.g. "
                f"-pred {pred_dir / holding[0]}"
            )
    files = {}
    for case, paths in found.items():
        gz = [p for p in paths if p.name.endswith(".gz")]
        if gz and len(paths) > 1:
            log.warning("%s beside %s: scoring the .nii.gz (the challenge's evaluator ignores .nii)", paths[0], gz[0])
        elif not gz:
            log.warning(
                "%s: the challenge's evaluator reads only .nii.gz predictions (compress it to submit)", paths[0]
            )
        files[case] = gz[0] if gz else paths[0]
    return files


def geometry_problem(pred: nib.Nifti1Image, image: nib.Nifti1Image) -> str | None:
    """Why a prediction is not in its case's geometry (the challenge compares voxel arrays): another orientation
    (naming both), another shape or another affine; None when it is."""
    if orientation(pred) != orientation(image):
        return (
            f"stored {orientation(pred)}, the case's image {orientation(image)}: write it in the case's own "
            "orientation (the challenge compares voxel arrays)"
        )
    if tuple(pred.shape[:3]) != tuple(image.shape[:3]):
        return f"shape {tuple(pred.shape[:3])}, the case's is {tuple(image.shape[:3])}"
    if not np.allclose(pred.affine, image.affine, atol=AFFINE_TOLERANCE):
        return "affine differs from the case's image's (another voxel grid?)"
    return None


def score_folder(pred_dir: str | Path, gt_dir: str | Path, convention: str) -> list[dict]:
    """Every case of the ground-truth tree (`<case>/label_annot_<id>.nii.gz`) against `pred_dir/<case>.nii.gz`, per
    case: rows {case, raters, scores...}. A case without a prediction, with a prediction not in the case's geometry
    (orientation, shape, affine), or (under the challenge convention) with fewer than two raters is an InputError
    naming it: none is left out of the mean. A folder a predict.py manifest describes must match it
    (volumes/submission.py); predictions without a case are named in a warning."""
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    if not gt_dir.is_dir():
        raise InputError(f"-gt {gt_dir}: folder not found")
    cases = case_folders(gt_dir)
    if not cases:
        raise InputError(f"-gt {gt_dir}: no case folders")
    predictions = prediction_files(pred_dir)
    check_prediction_folder(pred_dir, [case.name for case in cases])
    strays = sorted(set(predictions) - {case.name for case in cases}, key=natural_key)
    if strays:
        log.warning(
            "%s: %d prediction(s) without a case in %s, not scored: %s",
            pred_dir,
            len(strays),
            gt_dir,
            ", ".join(predictions[c].name for c in strays),
        )
    rows = []
    for case in cases:
        image_path, raters = read_case(case)
        if convention == "challenge" and len(raters) < 2:
            raise InputError(f"{case}: {len(raters)} rater(s); the challenge scores cases of two raters or more")
        pred_path = predictions.get(case.name)
        if pred_path is None:
            raise InputError(f"{pred_dir}: no prediction for case {case.name} ({case.name}.nii.gz)")
        image = nib.load(image_path)
        shape = tuple(image.shape[:3])
        pred, pred_image = read_labels(pred_path)
        problem = geometry_problem(pred_image, image)
        if problem:
            raise InputError(f"{pred_path}: {problem} ({image_path})")
        labels = [read_labels(path)[0] for _, path in raters]
        for (_, path), label in zip(raters, labels):
            if label.shape != shape:
                raise InputError(f"{path}: shape {label.shape}, the case's is {shape} ({image_path})")
        ids = [r for r, _ in raters]
        rows.append({"case": case.name, "raters": " ".join(ids), **score_case(pred, labels, convention, ids)})
    return rows


def mean_row(rows: list[dict]) -> dict:
    """The mean over cases of every score every case has (rater columns differ from case to case)."""
    keys = [k for k in rows[0] if k not in ("case", "raters") and all(k in r for r in rows)]
    return {"case": "mean", "raters": "", **{k: float(np.mean([r[k] for r in rows])) for k in keys}}


def write_scores(rows: list[dict], path: Path) -> None:
    """scores.csv: one row per case, then the mean."""
    raters = {k for r in rows for k in r if k.startswith("Dice_rater")}
    columns = ["case", "raters", *KEYS] + sorted(raters, key=natural_key)
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, columns, extrasaction="ignore")
    writer.writeheader()
    for row in [*rows, mean_row(rows)]:
        writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) and math.isfinite(v) else v) for k, v in row.items()})
    atomic_write_bytes(path, text.getvalue().encode())


def scores_path(pred_dir: Path, given: str | None) -> Path:
    """Where the scorer writes its CSV: `given` (-scores), else scores_<name>.csv beside the prediction folder (never
    inside it: the folder is the submission); InputError when it cannot be written there."""
    folder = Path(os.path.abspath(pred_dir))  # a name of its own even for "."
    path = Path(given) if given else folder.parent / f"scores_{folder.name}.csv"
    problem = f"{path} is a folder" if path.is_dir() else unusable_folder(path.parent)
    if problem:
        raise InputError(f"-scores {path}: {problem} (name another file with -scores)")
    return path
