"""Whole MBH-Seg cases that cannot be scored wrong (issue 34): a run's outputs never mix with another's, a prediction
must be in its case's geometry and hold whole numbers, scans must be finite, predict.py takes only the flags it
uses and honours a box-trained checkpoint, rater ids that differ between cases still give complete submissions,
the budget protocol clicks false positives on slices the followed rater leaves empty, and the smaller guards of
the scorer and the synthetic set. Tiny cases written into tmp_path; expected values from hand."""

from __future__ import annotations

import csv
import json
import logging
from argparse import Namespace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from demo_support import make_checkpoint
from test_volumes import SHAPE, case_tree, l_shape, write_case, write_prediction

import multirater_metrics
import predict
from interaction.volume import Session
from utils import InputError, run_cli
from volumes import scoring, synthetic
from volumes.nifti import load_image
from volumes.synthetic import affine_of, to_storage


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pth", size=32)


def run_predict(checkpoint: Path, gt: Path, out: Path, *extra: str) -> list[dict]:
    return predict.main(["-weights", str(checkpoint), "-data_path", str(gt), "-out", str(out), "-budget", "2", *extra])


def two_cases(tmp_path: Path, second: str = "2") -> Path:
    """case_0 (raters 1 and 2) and case_1 (raters 1 and `second`), lesions of class 3."""
    write_case(tmp_path / "gt" / "case_0", "LPS", {"1": l_shape(3), "2": l_shape(3)})
    write_case(tmp_path / "gt" / "case_1", "RAS", {"1": l_shape(3), second: l_shape(3)})
    return tmp_path / "gt"


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- 1. a run's outputs never mix with an earlier run's -------------------------------------------------------


def test_a_run_stopped_after_one_case_leaves_the_earlier_run_whole(tmp_path, checkpoint, monkeypatch):
    gt = two_cases(tmp_path)
    out = tmp_path / "out"
    run_predict(checkpoint, gt, out)  # binary track: class 1
    before = snapshot(out)
    real_case, seen = predict.Case, []

    def stop_at_the_second(folder, *args):
        if seen:
            raise KeyboardInterrupt  # as Ctrl-C (or SIGTERM, which run_cli unwinds the same way) would
        seen.append(folder)
        return real_case(folder, *args)

    monkeypatch.setattr(predict, "Case", stop_at_the_second)
    with pytest.raises(KeyboardInterrupt):
        run_predict(checkpoint, gt, out, "-track", "multiclass")  # would write class 3 over case_0
    assert snapshot(out) == before  # not one file of the stopped run, interaction.csv included
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gt", "out"]  # its fresh folder removed
    monkeypatch.setattr(predict, "Case", real_case)
    run_predict(checkpoint, gt, out, "-track", "multiclass")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["run"]["track"] == "multiclass"
    with (out / "interaction.csv").open() as f:
        assert {r["track"] for r in csv.DictReader(f)} == {"multiclass"}


def test_the_scorer_refuses_a_folder_that_does_not_match_its_runs_manifest(tmp_path, checkpoint):
    gt = two_cases(tmp_path)
    run_predict(checkpoint, gt, tmp_path / "a")
    run_predict(checkpoint, gt, tmp_path / "b", "-track", "multiclass")
    follow = tmp_path / "a" / "follow_1"
    multirater_metrics.main(["-pred", str(follow), "-gt", str(gt)])  # as written: scored
    (follow / "case_1.nii.gz").write_bytes((tmp_path / "b" / "follow_1" / "case_1.nii.gz").read_bytes())
    with pytest.raises(InputError, match=r"follow_1/case_1.nii.gz: changed since the run .*a/manifest.json"):
        multirater_metrics.main(["-pred", str(follow), "-gt", str(gt)])
    (follow / "case_1.nii.gz").unlink()
    with pytest.raises(InputError, match=r"follow_1/case_1.nii.gz: written by the run .* now missing"):
        multirater_metrics.main(["-pred", str(follow), "-gt", str(gt)])
    (follow / "case_1.nii").write_bytes(b"")  # a file the run never wrote
    with pytest.raises(InputError, match=r"follow_1/case_1.nii: not written by the run"):
        multirater_metrics.main(["-pred", str(follow), "-gt", str(gt)])
    stray = tmp_path / "a" / "follow_9"  # a folder beside the run's that its manifest does not list
    write_prediction(stray, gt / "case_0", l_shape(3))
    with pytest.raises(InputError, match=r"follow_9: not written by the run"):
        multirater_metrics.main(["-pred", str(stray), "-gt", str(gt)])


def test_a_plain_folder_of_another_tools_predictions_is_scored(tmp_path):
    gt = two_cases(tmp_path)
    for case in ("case_0", "case_1"):
        write_prediction(tmp_path / "theirs", gt / case, l_shape(3))  # the raters' own label: Dice 1
    mean = multirater_metrics.main(["-pred", str(tmp_path / "theirs"), "-gt", str(gt)])
    assert mean["Dice_mean"] == pytest.approx(1.0)


def test_an_out_folder_of_other_files_is_refused_before_anything_is_computed(tmp_path, checkpoint):
    gt = two_cases(tmp_path)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(InputError, match=r"-out .*mine: .* holds files that are not a predict.py run's"):
        run_predict(checkpoint, gt, tmp_path / "mine")
    assert snapshot(tmp_path / "mine") == {"notes.txt": b"keep"}


# --- 2. orientation ---------------------------------------------------------------------------------------------


def test_a_prediction_in_another_orientation_is_refused_naming_both(tmp_path):
    """The rater's own label stored LPS with its LPS affine (the same voxels in the world) for a case stored RAS:
    the challenge compares arrays, so this would score 0: refused."""
    label = l_shape(2)
    gt = case_tree(tmp_path, {"1": label, "2": label}, orientation="RAS")
    (tmp_path / "pred").mkdir()
    nib.save(nib.Nifti1Image(to_storage(label, "LPS"), affine_of("LPS")), tmp_path / "pred" / "case_0.nii.gz")
    with pytest.raises(InputError, match=r"case_0.nii.gz: stored LPS, the case's image RAS"):
        scoring.score_folder(tmp_path / "pred", gt, "challenge")
    moved = affine_of("RAS")
    moved[0, 3] = 7.0  # the right orientation and shape, another origin
    nib.save(nib.Nifti1Image(label, moved), tmp_path / "pred" / "case_0.nii.gz")
    with pytest.raises(InputError, match=r"case_0.nii.gz: affine differs"):
        scoring.score_folder(tmp_path / "pred", gt, "challenge")


# --- 3. values that are not whole numbers --------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0.5, 0.7])
def test_a_probability_map_prediction_is_refused_not_rounded(tmp_path, value):
    label = l_shape(1)
    gt = case_tree(tmp_path, {"1": label, "2": label}, orientation="RAS")
    (tmp_path / "pred").mkdir()
    probs = label.astype(np.float32) * value
    nib.save(nib.Nifti1Image(probs, affine_of("RAS")), tmp_path / "pred" / "case_0.nii.gz")
    n = int((label > 0).sum())
    with pytest.raises(InputError, match=rf"case_0.nii.gz: {n} voxels are not whole numbers .*a probability map\?"):
        scoring.score_folder(tmp_path / "pred", gt, "challenge")


def test_predict_refuses_a_float_label_of_halves(tmp_path, checkpoint):
    gt = case_tree(tmp_path, {"1": l_shape(1), "2": l_shape(1)}, orientation="RAS")
    half = l_shape(1).astype(np.float32) * 0.5  # rounded half to even, this was an empty rater
    bad = gt / "case_0" / "label_annot_2.nii.gz"
    nib.save(nib.Nifti1Image(half, affine_of("RAS")), bad)
    with pytest.raises(InputError, match=f"{bad}: .* not whole numbers"):
        run_predict(checkpoint, gt, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- 4. non-finite scans and the window flags --------------------------------------------------------------------


def test_predict_refuses_a_scan_with_nan_voxels_naming_it(tmp_path, checkpoint):
    gt = case_tree(tmp_path, {"1": l_shape(1), "2": l_shape(1)}, orientation="RAS")
    image = gt / "case_0" / "image.nii.gz"
    hu = np.asanyarray(nib.load(image).dataobj).astype(np.float32)
    hu[0, 0, :2] = np.nan
    nib.save(nib.Nifti1Image(hu, affine_of("RAS")), image)
    with pytest.raises(InputError, match=rf"{image}: 2 of {hu.size} CT voxels are not finite"):
        run_predict(checkpoint, gt, tmp_path / "out")


@pytest.mark.parametrize("flag, value", [("-window_width", "0"), ("-window_width", "-5"), ("-window_level", "nan")])
def test_predict_refuses_unusable_windows(tmp_path, checkpoint, flag, value):
    gt = case_tree(tmp_path, {"1": l_shape(1), "2": l_shape(1)})
    with pytest.raises(InputError, match=rf"^{flag} must be a finite number of HU"):
        run_predict(checkpoint, gt, tmp_path / "out", f"{flag}={value}")


# --- 5. flags predict.py does not use; a box-trained checkpoint --------------------------------------------------


@pytest.mark.parametrize(
    "flag",
    [
        ["-first_prompt", "box"],
        ["-paint_clicks", "0"],
        ["-val_click_strategy", "topk"],
        ["-epochs", "3"],
        ["-resume", "x"],
        ["-dataset", "LIDC"],
        ["-log_dir", "runs"],
        ["-w", "0"],
    ],
)
def test_predict_refuses_flags_it_does_not_use(tmp_path, checkpoint, flag):
    gt = case_tree(tmp_path, {"1": l_shape(1), "2": l_shape(1)})
    with pytest.raises(InputError, match=rf"^argument {flag[0]}: not used by predict.py"):
        run_predict(checkpoint, gt, tmp_path / "out", *flag)


def test_a_box_trained_checkpoint_gets_the_followed_masks_box(tmp_path, checkpoint):
    state = torch.load(checkpoint, weights_only=True)
    state["args"]["first_prompt"] = "box"
    boxed = tmp_path / "boxed.pth"
    torch.save(state, boxed)
    gt = case_tree(tmp_path, {"1": l_shape(1), "2": l_shape(1)})
    plain = run_predict(checkpoint, gt, tmp_path / "plain", "-protocol", "marked", "-clicks", "1")
    rows = run_predict(boxed, gt, tmp_path / "boxed", "-protocol", "marked", "-clicks", "1")
    assert {r["first_prompt"] for r in rows} == {"box"} and {r["first_prompt"] for r in plain} == {"none"}
    assert rows[0]["Dice"] != plain[0]["Dice"]  # the box changes the first prediction
    # the box is the target's extreme columns and rows (SAM's x0, y0, x1, y1), here rows 3..6, columns 2..9
    from interaction.volume import VolumeInteraction
    from models import build_model

    model = build_model("vit_t", 32, checkpoint=str(checkpoint))[0].eval()
    vi = VolumeInteraction(model, model.image_features(torch.rand(1, 3, 32, 32)))
    target = torch.zeros(32, 32, dtype=torch.bool)
    target[3:7, 2:10] = True
    assert vi.session(0, 1, target, box=True).state.box.tolist() == [[2.0, 3.0, 9.0, 6.0]]
    assert vi.session(0, 1, target).state.box is None


# --- 6. rater ids that differ between cases ------------------------------------------------------------------------


def test_rater_ids_that_differ_between_cases_give_complete_rank_folders(tmp_path, checkpoint, capsys):
    gt = two_cases(tmp_path, second="3")  # case_0: raters 1, 2; case_1: raters 1, 3
    out = tmp_path / "out"
    run_predict(checkpoint, gt, out)
    printed = capsys.readouterr().out
    assert "complete submissions (a prediction for every case): follow_1, follow_rank1, follow_rank2" in printed
    assert sorted(p.name for p in (out / "follow_2").iterdir()) == ["case_0.nii.gz"]
    assert sorted(p.name for p in (out / "follow_rank2").iterdir()) == ["case_0.nii.gz", "case_1.nii.gz"]
    # rank 2 of case_1 is rater 3: the same prediction as follow_3's
    assert (out / "follow_rank2" / "case_1.nii.gz").read_bytes() == (out / "follow_3" / "case_1.nii.gz").read_bytes()
    multirater_metrics.main(["-pred", str(out / "follow_rank2"), "-gt", str(gt)])
    with pytest.raises(
        InputError,
        match=r"follow_2: no prediction for case case_1 .*complete folders of this run: "
        r"follow_1, follow_rank1, follow_rank2",
    ):
        multirater_metrics.main(["-pred", str(out / "follow_2"), "-gt", str(gt)])


# --- 7. the budget protocol on slices the followed rater leaves empty ----------------------------------------------


class FakeVolumeInteraction:
    """Click-free predictions given by the test; a click makes the session's prediction its target."""

    def __init__(self, click_free: torch.Tensor):
        self.click_free, self.embeddings, self.clicked = click_free, click_free, []

    def session(self, z: int, cls: int, target: torch.Tensor, box: bool = False) -> Session:
        return Session(z, cls, target, None, self.click_free[z].clone())

    def click(self, session: Session) -> None:
        self.clicked.append(session.z)
        session.probs = session.target.float()
        session.clicks += 1


def test_the_budget_protocol_clicks_false_positives_on_a_slice_the_rater_leaves_empty():
    size = 24  # the display planes are 24x20 (rows y, columns x), resized to 24x24 for the model
    label = np.zeros(SHAPE, np.uint8)
    label[4:10, 4:10, 2] = 1  # slice 2: 36 voxels
    case = object.__new__(predict.Case)
    case.z, case.height, case.width = SHAPE[2], SHAPE[1], SHAPE[0]
    case.display_spacing = (1.0, 1.0, 1.0)
    click_free = torch.zeros(SHAPE[2], size, size)
    click_free[0, 2:14, 2:14] = 1.0  # slice 0, which the rater leaves empty: 144 false-positive pixels
    truth = torch.from_numpy(predict.resize_mask(case.planes(label, None)[2], size))
    first_column = int(truth.any(0).nonzero()[0])
    click_free[2] = truth.float()
    click_free[2, :, : first_column + 3] = 0.0  # slice 2: 3 columns of the lesion missed (fewer than slice 0's 144)
    assert 0 < int((truth & (click_free[2] < 0.5)).sum()) < 144
    vi = FakeVolumeInteraction(click_free)
    args = Namespace(track="binary", protocol="budget", budget=1)
    planes, curve = predict.follow(case, vi, label, args, rounds=1, size=size, box=False)
    assert vi.clicked == [0]  # the most wrong slice is the empty one
    assert not planes[0].any()  # its false positives removed
    assert curve[1][1] > curve[0][1]


# --- 8. smaller guards ---------------------------------------------------------------------------------------------


def test_an_out_that_is_a_file_is_refused_before_any_case(tmp_path, checkpoint):
    gt = case_tree(tmp_path, {"1": l_shape(1), "2": l_shape(1)})
    (tmp_path / "out").write_text("a file")
    with pytest.raises(InputError, match=r"^-out .*out: .*out is a file, not a folder"):
        run_predict(checkpoint, gt, tmp_path / "out")
    (tmp_path / "blocked").write_text("a file")
    with pytest.raises(InputError, match=r"^-out .*blocked/out: .*blocked is a file, not a folder"):
        run_predict(checkpoint, gt, tmp_path / "blocked" / "out")


def test_predict_does_not_check_a_log_dir_it_never_writes(tmp_path, checkpoint, monkeypatch):
    gt = case_tree(tmp_path, {"1": l_shape(1), "2": l_shape(1)})
    monkeypatch.chdir(tmp_path)
    (tmp_path / "logs_new").write_text("a file where train.py's default -log_dir would go")
    run_predict(checkpoint, gt, tmp_path / "out")
    assert (tmp_path / "out" / "manifest.json").is_file()


def test_the_scores_file_goes_beside_the_submission_and_an_unwritable_place_is_refused_first(tmp_path):
    gt = two_cases(tmp_path)
    for case in ("case_0", "case_1"):
        write_prediction(tmp_path / "sub", gt / case, l_shape(3))
    (tmp_path / "file").write_text("")
    with pytest.raises(InputError, match=r"^-scores .*file/x.csv: .*file is a file, not a folder"):
        multirater_metrics.main(
            ["-pred", str(tmp_path / "sub"), "-gt", str(gt), "-scores", str(tmp_path / "file/x.csv")]
        )
    multirater_metrics.main(["-pred", str(tmp_path / "sub"), "-gt", str(gt)])
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["case_0.nii.gz", "case_1.nii.gz"]
    assert (tmp_path / "scores_sub.csv").read_text().splitlines()[-1].startswith("mean,,1.000000,")


def test_nii_predictions_and_predictions_without_a_case_are_warned(tmp_path, caplog):
    gt = two_cases(tmp_path)
    pred = tmp_path / "pred"
    write_prediction(pred, gt / "case_0", l_shape(3))
    image = load_image(gt / "case_0" / "image.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros(image.shape, np.uint8), image.image.affine), pred / "case_0.nii")  # empty
    image = load_image(gt / "case_1" / "image.nii.gz")
    nib.save(nib.Nifti1Image(to_storage(l_shape(3), "RAS"), image.image.affine), pred / "case_1.nii")
    write_prediction(pred, gt / "case_0", l_shape(3))
    (pred / "case_0.nii.gz").rename(pred / "case_7.nii.gz")  # no such case
    write_prediction(pred, gt / "case_0", l_shape(3))
    with caplog.at_level(logging.WARNING):
        rows = scoring.score_folder(pred, gt, "challenge")
    assert [r["Dice_mean"] for r in rows] == [pytest.approx(1.0), pytest.approx(1.0)]  # the .nii.gz of case_0 wins
    assert f"{pred / 'case_0.nii'} beside {pred / 'case_0.nii.gz'}: scoring the .nii.gz" in caplog.text
    assert f"{pred / 'case_1.nii'}: the challenge's evaluator reads only .nii.gz" in caplog.text
    assert "1 prediction(s) without a case" in caplog.text and "case_7.nii.gz" in caplog.text


def test_pred_at_the_parent_of_follow_folders_or_missing_is_named(tmp_path, checkpoint, capsys):
    gt = case_tree(tmp_path, {"1": l_shape(1), "5": l_shape(1)})
    run_predict(checkpoint, gt, tmp_path / "out")
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:  # the command line's runner, in this process (a subprocess costs 2 s)
        run_cli(multirater_metrics.main, ["-pred", str(tmp_path / "out"), "-gt", str(gt)])
    assert stop.value.code == 2 and capsys.readouterr().err.strip().splitlines() == [
        f"error: -pred {tmp_path / 'out'}: no prediction here, but in follow_1, follow_5, follow_rank1, follow_rank2: "
        f"name one of them, e.g. -pred {tmp_path / 'out' / 'follow_1'}"
    ]
    with pytest.raises(InputError, match=r"^-pred .*nowhere: folder not found"):
        scoring.score_folder(tmp_path / "nowhere", gt, "challenge")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["-train", "-1"], "-train -1 -test 4: case counts must be >= 0"),
        (["-train", "0", "-test", "0"], "not both 0"),
        (["-seed", "-1"], "-seed -1: must be >= 0"),
    ],
)
def test_synthetic_refuses_bad_counts_and_seeds_in_one_line(tmp_path, argv, message):
    with pytest.raises(InputError, match=message):
        synthetic.main([str(tmp_path / "set"), *argv])
    assert not (tmp_path / "set").exists()


def test_a_synthetic_rerun_with_fewer_cases_leaves_only_its_own(tmp_path):
    synthetic.write(tmp_path / "set", n_train=0, n_test=3)
    (tmp_path / "set" / "test" / "notes").mkdir()  # not a case folder of this module: kept
    synthetic.write(tmp_path / "set", n_train=0, n_test=1)
    assert sorted(p.name for p in (tmp_path / "set" / "test").iterdir()) == ["case_000", "notes"]
