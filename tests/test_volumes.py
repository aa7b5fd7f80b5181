"""Whole MBH-Seg cases (issue 23): NIfTI in, predictions back in each case's own geometry, scored per case as the
challenge scores them, on tiny cases written here in three orientations."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from demo_support import make_checkpoint

import multirater_metrics
import predict
import process_mbhseg
from utils import InputError
from volumes import scoring
from volumes.nifti import display_slice, from_display, load_image, load_label, read_labels, save_like, to_file_order
from volumes.synthetic import affine_of, to_storage

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (20, 24, 6)  # canonical x, y, z
ORIENTATIONS = ("RAS", "LPS", "SRA")  # the last: the slice axis stored first


def l_shape(cls: int = 2) -> np.ndarray:
    """An L-shaped lesion on slices 2 and 3 (asymmetric in x and y, so a flip or a swap would show)."""
    label = np.zeros(SHAPE, np.uint8)
    label[4:14, 5:8, 2:4] = cls
    label[4:7, 8:18, 2:4] = cls
    return label


def write_case(folder: Path, orientation: str, labels: dict[str, np.ndarray]) -> Path:
    """image.nii.gz (HU: a bright lesion where rater `first` marks) and label_annot_<id>.nii.gz, stored in
    `orientation`."""
    folder.mkdir(parents=True)
    first = next(iter(labels.values()))
    hu = np.where(first > 0, 70, 30).astype(np.int16)
    affine = affine_of(orientation)
    nib.save(nib.Nifti1Image(to_storage(hu, orientation), affine), folder / "image.nii.gz")
    for rater, label in labels.items():
        nib.save(nib.Nifti1Image(to_storage(label, orientation), affine), folder / f"label_annot_{rater}.nii.gz")
    return folder


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_processed_masks_written_back_are_the_rater_label(tmp_path, orientation):
    """process_mbhseg.py's per-rater one-hot slices, taken as a prediction and written back in the case's geometry,
    give the rater's label file exactly: same array, shape and affine."""
    label = l_shape()
    case = write_case(tmp_path / "raw" / "test" / "case_0", orientation, {"1": label, "5": np.zeros(SHAPE, np.uint8)})
    process_mbhseg.main(["--src", str(tmp_path / "raw"), "--dst", str(tmp_path / "out"), "--keep_empty"])
    image = load_image(case / "image.nii.gz")
    gt = tmp_path / "out" / "MBHSeg-Multi" / "test" / "gt" / "case_0"
    planes = [np.load(gt / f"slice_{z}_r1.npy").argmax(-1).astype(np.uint8) for z in range(SHAPE[2])]
    canonical = np.stack([from_display(p) for p in planes], axis=2)
    save_like(to_file_order(canonical, image), image, tmp_path / "pred.nii.gz")
    written, original = nib.load(tmp_path / "pred.nii.gz"), nib.load(case / "label_annot_1.nii.gz")
    assert written.shape == original.shape and np.allclose(written.affine, original.affine)
    assert np.array_equal(np.asanyarray(written.dataobj), np.asanyarray(original.dataobj))
    assert written.get_data_dtype() == np.uint8 and written.header.get_slope_inter() in ((1.0, 0.0), (None, None))
    assert np.array_equal(display_slice(load_label(case / "label_annot_1.nii.gz", image).data, 2), planes[2])


def case_tree(tmp_path: Path, raters: dict[str, np.ndarray], orientation: str = "LPS") -> Path:
    write_case(tmp_path / "gt" / "case_0", orientation, raters)
    return tmp_path / "gt"


def write_prediction(folder: Path, case_gt: Path, array: np.ndarray) -> None:
    """A prediction of canonical `array` for a case, in the case's geometry."""
    image = load_image(case_gt / "image.nii.gz")
    folder.mkdir(parents=True, exist_ok=True)
    save_like(to_file_order(array, image), image, folder / f"{case_gt.name}.nii.gz")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_an_oracle_prediction_scores_dice_max_1_and_dice_match_the_raters_agreement(tmp_path):
    a, b = l_shape(2), np.zeros(SHAPE, np.uint8)
    b[4:14, 5:9, 2:4] = 2  # another rater: a thicker bar, no foot
    gt = case_tree(tmp_path, {"1": a, "5": b})
    write_prediction(tmp_path / "pred", gt / "case_0", a)  # rater 1's own label
    (row,) = scoring.score_folder(tmp_path / "pred", gt, "challenge")
    assert row["Dice_max"] == pytest.approx(1.0)
    assert row["Dice_match"] == pytest.approx((1.0 + dice(a > 0, b > 0)) / 2)  # hand: mean over the two raters


def test_challenge_dice_rules(tmp_path):
    label = l_shape(2)
    pred = label.copy()
    pred[15:18, 20:23, 4] = 4  # a class the rater never marks: costs nothing
    assert scoring.challenge_dice(pred, label) == pytest.approx(1.0)
    two = label.copy()
    two[15:18, 20:23, 4] = 4  # the rater marks classes 2 and 4; the prediction only 2
    assert scoring.challenge_dice(label, two) == pytest.approx((1.0 + 0.0) / 2)
    empty = np.zeros(SHAPE, np.uint8)
    fifty = empty.copy()
    fifty.reshape(-1)[:50] = 1  # 50 false-positive voxels against an empty label
    assert scoring.challenge_dice(fifty, empty) == pytest.approx(2 * 50 / 150, abs=1e-4)  # 0.667
    many = empty.copy()
    many.reshape(-1)[:101] = 1
    assert scoring.challenge_dice(many, empty) == 0.0 and scoring.challenge_dice(empty, empty) == 1.0


def test_on_binary_data_the_challenge_ged_is_the_plain_ged_over_5():
    rng = np.random.default_rng(0)
    labels = [(rng.random(SHAPE) > t).astype(np.uint8) for t in (0.6, 0.7, 0.8)]
    pred = (rng.random(SHAPE) > 0.65).astype(np.uint8)
    challenge = scoring.score_case(pred, labels, "challenge")["GED"]
    plain = scoring.score_case(pred, labels, "plain")["GED"]
    assert challenge == pytest.approx(plain / 5, abs=1e-6)
    assert plain > 0.1  # not a trivial zero


def test_a_case_without_a_prediction_stops_the_scorer_naming_it(tmp_path):
    gt = case_tree(tmp_path, {"1": l_shape(), "2": l_shape()})
    write_case(gt / "case_1", "RAS", {"1": l_shape(), "2": l_shape()})
    write_prediction(tmp_path / "pred", gt / "case_0", l_shape())
    with pytest.raises(InputError, match="no prediction for case case_1"):
        scoring.score_folder(tmp_path / "pred", gt, "challenge")
    proc = subprocess.run(
        [sys.executable, "multirater_metrics.py", "-pred", str(tmp_path / "pred"), "-gt", str(gt)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'pred'}: no prediction for case case_1 (case_1.nii.gz)"
    ]


def test_a_prediction_of_another_shape_is_refused_naming_it(tmp_path):
    gt = case_tree(tmp_path, {"1": l_shape(), "2": l_shape()})
    (tmp_path / "pred").mkdir()
    nib.save(nib.Nifti1Image(np.zeros((5, 5, 5), np.uint8), affine_of("LPS")), tmp_path / "pred" / "case_0.nii.gz")
    with pytest.raises(InputError, match="case_0.nii.gz: shape \\(5, 5, 5\\)"):
        scoring.score_folder(tmp_path / "pred", gt, "plain")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pth", size=32)


@pytest.mark.parametrize("protocol", ["budget", "marked"])
def test_predict_writes_a_submission_per_followed_rater_that_the_scorer_reads(tmp_path, checkpoint, protocol):
    gt = case_tree(tmp_path, {"1": l_shape(2), "5": l_shape(3)}, orientation="SRA")
    args = ["-weights", str(checkpoint), "-data_path", str(gt), "-out", str(tmp_path / "out")]
    rows = predict.main([*args, "-protocol", protocol, "-budget", "3", "-clicks", "3"])
    folders = ["follow_1", "follow_5", "follow_rank1", "follow_rank2"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_dir()) == folders
    original = nib.load(gt / "case_0" / "label_annot_1.nii.gz")
    for rater in ("1", "5"):
        written = nib.load(tmp_path / "out" / f"follow_{rater}" / "case_0.nii.gz")
        assert written.shape == original.shape and np.allclose(written.affine, original.affine)
        assert written.get_data_dtype() == np.uint8
    clicks = [r["clicks"] for r in rows if r["followed"] == "1"]
    assert clicks == ([0, 1, 2, 3] if protocol == "budget" else [0, 1, 2])
    # the last NSD, computed on the display stack, equals the written prediction's in the file's own geometry
    written = nib.load(tmp_path / "out" / "follow_1" / "case_0.nii.gz").get_fdata() > 0
    nsd = multirater_metrics.surface_dice_case(written, original.get_fdata() > 0, original.affine)
    assert [r["NSD"] for r in rows if r["followed"] == "1"][-1] == pytest.approx(nsd, abs=1e-6)
    with (tmp_path / "out" / "interaction.csv").open() as f:
        assert {r["protocol"] for r in csv.DictReader(f)} == {protocol}
    mean = multirater_metrics.main(["-pred", str(tmp_path / "out" / "follow_1"), "-gt", str(gt)])
    assert 0.0 <= mean["Dice_mean"] <= 1.0
    assert (tmp_path / "out" / "scores_follow_1.csv").read_text().splitlines()[-1].startswith("mean,")
    assert not (tmp_path / "out" / "follow_1" / "scores.csv").exists()  # the submission holds predictions only


def test_predict_multiclass_writes_the_followed_raters_classes(tmp_path, checkpoint):
    gt = case_tree(tmp_path, {"1": l_shape(4), "2": l_shape(4)})
    args = ["-weights", str(checkpoint), "-data_path", str(gt), "-out", str(tmp_path / "out")]
    predict.main([*args, "-track", "multiclass", "-budget", "2"])
    values, _ = read_labels(tmp_path / "out" / "follow_1" / "case_0.nii.gz")
    assert set(np.unique(values).tolist()) <= {0, 4}
