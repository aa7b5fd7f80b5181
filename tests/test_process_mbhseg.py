"""process_mbhseg.py: slice selection, CT window, orientation, one-hot masks, reruns, errors, CLI."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from datatrees import write_mbhseg_raw, write_nifti
from PIL import Image

import process_mbhseg
from utils import InputError

REPO = Path(__file__).resolve().parents[1]


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def _snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in files}


@pytest.fixture()
def processed(tmp_path):
    raw = write_mbhseg_raw(tmp_path / "MBHSeg")  # case_0 stored RAS, case_1 LPS (flipped data)
    process_mbhseg.main(["--src", str(raw.root), "--dst", str(tmp_path / "out")])
    return raw, tmp_path / "out"


def test_keeps_exactly_the_slices_with_foreground(processed):
    _, out = processed
    for kind in ("MBHSeg-Binary", "MBHSeg-Multi"):
        for case in ("case_0", "case_1"):
            images = sorted(p.name for p in (out / kind / "train" / "imgs" / case).iterdir())
            assert images == ["slice_1.png", "slice_3.png"]
            masks = sorted(p.name for p in (out / kind / "train" / "gt" / case).iterdir())
            assert masks == [f"slice_{z}_r{k}.npy" for z in (1, 3) for k in (1, 2, 3)]


def test_window_values_and_orientation(processed):
    _, out = processed
    png = _png(out / "MBHSeg-Binary" / "train" / "imgs" / "case_0" / "slice_1.png")
    assert png.shape == (10, 12) and png.dtype == np.uint8  # rows = y (10), columns = x (12)
    # hu[x, y=0, z=1] = 10x + 1 lands on the last row (y reversed), x reversed along it;
    # round(255 * (10x + 1) / 80): x=0: 3.19->3, 1: 35.06->35, 2: 66.94->67, 3: 98.81->99, 4: 130.69->131,
    # 5: 162.56->163, 6: 194.44->194, 7: 226.31->226, x >= 8: above 80 HU -> 255.
    expected_last_row = [255, 255, 255, 255, 226, 194, 163, 131, 99, 67, 35, 3]
    assert png[-1].tolist() == expected_last_row
    assert (png[:-1] == 0).all()  # -1000 HU air


def test_window_flags(tmp_path):
    raw = write_mbhseg_raw(tmp_path / "MBHSeg", n_cases=1)
    process_mbhseg.main(
        ["--src", str(raw.root), "--dst", str(tmp_path / "out"), "--window_level", "100", "--window_width", "200"]
    )
    png = _png(tmp_path / "out" / "MBHSeg-Binary" / "train" / "imgs" / "case_0" / "slice_3.png")
    # window [0, 200]: hu = 10x + 3 -> round(255 * hu / 200): x=0: 3.825->4, x=5: 67.575->68, x=11: 144.075->144
    assert png[-1, 11] == 4 and png[-1, 6] == 68 and png[-1, 0] == 144


def test_masks_binary_and_one_hot(processed):
    raw, out = processed
    X, Y, _ = raw.hu.shape
    for k in (1, 2, 3):
        z = (1, 3)[(k - 1) % 2]
        binary = np.load(out / "MBHSeg-Binary" / "train" / "gt" / "case_0" / f"slice_{z}_r{k}.npy")
        multi = np.load(out / "MBHSeg-Multi" / "train" / "gt" / "case_0" / f"slice_{z}_r{k}.npy")
        assert binary.dtype == np.uint8 and binary.shape == (Y, X)
        assert multi.dtype == np.uint8 and multi.shape == (Y, X, 6)
        assert set(np.unique(binary)) <= {0, 255} and set(np.unique(multi)) <= {0, 255}
        # rater k (1-based) labelled class k on x in [k, k+2], y in [2, 3+k]; png[row, col] = vol[X-1-col, Y-1-row]
        expected = np.zeros((Y, X), bool)
        for x in range(k, k + 3):
            for y in range(2, 4 + k):
                expected[Y - 1 - y, X - 1 - x] = True
        assert np.array_equal(binary == 255, expected)
        assert np.array_equal(multi[..., k] == 255, expected)
        assert np.array_equal(multi[..., 0] == 255, ~expected)
        assert (multi.sum(-1) == 255).all()  # exactly one class per pixel


def test_orientations_give_identical_files(processed):
    _, out = processed
    for kind in ("MBHSeg-Binary", "MBHSeg-Multi"):
        for folder in ("imgs", "gt"):
            ras = out / kind / "train" / folder / "case_0"
            lps = out / kind / "train" / folder / "case_1"
            names = sorted(p.name for p in ras.iterdir())
            assert names == sorted(p.name for p in lps.iterdir())
            for name in names:
                assert (ras / name).read_bytes() == (lps / name).read_bytes(), name


def test_rerun_changes_nothing(processed):
    raw, out = processed
    before = _snapshot(out)
    counts = process_mbhseg.main(["--src", str(raw.root), "--dst", str(out)])
    assert counts["written"] == 0 and counts["removed"] == 0
    assert _snapshot(out) == before


def test_keep_empty_then_rerun_without_removes_stale(tmp_path):
    raw = write_mbhseg_raw(tmp_path / "MBHSeg", n_cases=1)
    out = tmp_path / "out"
    process_mbhseg.main(["--src", str(raw.root), "--dst", str(out), "--keep_empty"])
    imgs = out / "MBHSeg-Multi" / "train" / "imgs" / "case_0"
    assert sorted(p.name for p in imgs.iterdir()) == [f"slice_{z}.png" for z in range(5)]
    process_mbhseg.main(["--src", str(raw.root), "--dst", str(out)])
    assert sorted(p.name for p in imgs.iterdir()) == ["slice_1.png", "slice_3.png"]


def test_loaders_read_the_output(processed):
    from dataset import build_dataset

    _, out = processed
    binary = build_dataset("MBHSeg-Binary", out / "MBHSeg-Binary", "train", 16, val_fraction=0)
    multi = build_dataset("MBHSeg-Multiclass", out / "MBHSeg-Multi", "train", 16, val_fraction=0)
    assert [binary.records[i].name for i in range(len(binary))] == [
        "case_0/slice_1",
        "case_0/slice_3",
        "case_1/slice_1",
        "case_1/slice_3",
    ]
    assert binary[0]["multi_rater"].shape == (3, 1, 16, 16)
    assert multi[0]["multi_rater"].shape == (3, 6, 16, 16)


def _expect_error(src: Path, tmp_path: Path, needle: Path) -> None:
    with pytest.raises(InputError) as err:
        process_mbhseg.main(["--src", str(src), "--dst", str(tmp_path / "out")])
    assert str(needle) in str(err.value) and "\n" not in str(err.value)


def test_broken_inputs(tmp_path):
    _expect_error(tmp_path / "absent", tmp_path, tmp_path / "absent")

    raw = write_mbhseg_raw(tmp_path / "a", n_cases=1)
    (raw.root / "train" / "case_0" / "image.nii.gz").unlink()
    _expect_error(raw.root, tmp_path, raw.root / "train" / "case_0")

    raw = write_mbhseg_raw(tmp_path / "b", n_cases=1)
    for label in (raw.root / "train" / "case_0").glob("label_annot_*"):
        label.unlink()
    _expect_error(raw.root, tmp_path, raw.root / "train" / "case_0")

    raw = write_mbhseg_raw(tmp_path / "c", n_cases=1)
    bad = raw.root / "train" / "case_0" / "label_annot_2.nii.gz"
    write_nifti(bad, np.zeros((12, 10, 4), np.uint8), raw.affine)
    _expect_error(raw.root, tmp_path, bad)

    raw = write_mbhseg_raw(tmp_path / "d", n_cases=1)
    corrupt = raw.root / "train" / "case_0" / "image.nii.gz"
    corrupt.write_bytes(gzip.compress(b"not a nifti header" * 30)[:200])
    _expect_error(raw.root, tmp_path, corrupt)

    raw = write_mbhseg_raw(tmp_path / "e", n_cases=1)
    bad = raw.root / "train" / "case_0" / "label_annot_1.nii.gz"
    write_nifti(bad, np.full((12, 10, 5), 7, np.uint8), raw.affine)  # label value outside 0..5
    _expect_error(raw.root, tmp_path, bad)


def test_cli_error_is_one_line_without_traceback(tmp_path):
    missing = tmp_path / "nowhere"
    proc = subprocess.run(
        [sys.executable, "process_mbhseg.py", "--src", str(missing), "--dst", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(missing) in lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--window_width", "nan"),
        ("--window_width", "inf"),
        ("--window_width", "0"),
        ("--window_width", "-5"),
        ("--window_level", "nan"),
        ("--window_level", "inf"),
        ("--window_level", "-inf"),
    ],
)
def test_unusable_windows_are_refused_before_anything_is_written(tmp_path, flag, value):
    raw = write_mbhseg_raw(tmp_path / "MBHSeg", n_cases=1)
    with pytest.raises(InputError) as err:
        process_mbhseg.main(["--src", str(raw.root), "--dst", str(tmp_path / "out"), f"{flag}={value}"])
    assert flag in str(err.value) and value in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_cli_refuses_a_nan_window_in_one_line(tmp_path):
    raw = write_mbhseg_raw(tmp_path / "MBHSeg", n_cases=1)
    proc = subprocess.run(
        [
            sys.executable,
            "process_mbhseg.py",
            "--src",
            str(raw.root),
            "--dst",
            str(tmp_path / "out"),
            "--window_width",
            "nan",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: --window_width"), proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["label_annot_1", "image"])
def test_two_files_for_one_rater_or_image_are_refused_naming_both(tmp_path, kind):
    raw = write_mbhseg_raw(tmp_path / "MBHSeg", n_cases=1)
    case = raw.root / "train" / "case_0"
    gz = case / f"{kind}.nii.gz"
    plain = write_nifti(case / f"{kind}.nii", np.zeros(raw.hu.shape, np.uint8), raw.affine)  # beside the .gz
    with pytest.raises(InputError) as err:
        process_mbhseg.main(["--src", str(raw.root), "--dst", str(tmp_path / "out")])
    msg = str(err.value)
    assert str(gz) in msg and str(plain) in msg and "\n" not in msg, msg
    assert not (tmp_path / "out").exists()


def test_a_label_whose_affine_is_flipped_against_its_image_is_not_mirrored(tmp_path, caplog):
    """A label drawn on the image's voxel grid but saved with its x axis flipped in the affine: the tool warns
    that the affines differ and uses the voxel grid as is, so the mask lands on the voxels it was drawn on (the
    image's orientation decides), not mirrored."""
    shape = (20, 12, 3)
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    label = np.zeros(shape, np.uint8)
    label[8:15, 4:7, 1] = 2  # x 8..14
    case = tmp_path / "raw" / "train" / "case_0"
    write_nifti(case / "image.nii.gz", np.zeros(shape, np.int16), affine)
    flipped = affine.copy()
    flipped[0, 0], flipped[0, 3] = -1.0, shape[0] - 1.0  # x axis flipped in the label's affine only
    write_nifti(case / "label_annot_1.nii.gz", label, flipped)
    process_mbhseg.main(["--src", str(tmp_path / "raw"), "--dst", str(tmp_path / "out")])
    assert "affine differs" in caplog.text and "using the voxel grid as is" in caplog.text
    mask = np.load(tmp_path / "out" / "MBHSeg-Binary" / "train" / "gt" / "case_0" / "slice_1_r1.npy")
    # display: png[row, col] = volume[X-1-col, Y-1-row, z] of the image's (RAS) grid: x 8..14 -> columns 5..11
    cols = np.flatnonzero(mask.any(0))
    assert (cols.min(), cols.max()) == (shape[0] - 1 - 14, shape[0] - 1 - 8)


def test_non_finite_label_voxels_are_refused_naming_the_file(tmp_path):
    shape = (8, 8, 2)
    case = tmp_path / "raw" / "train" / "case_0"
    write_nifti(case / "image.nii.gz", np.zeros(shape, np.int16), np.eye(4))
    label = np.zeros(shape, np.float32)
    label[2, 2, 1] = np.nan
    bad = write_nifti(case / "label_annot_1.nii.gz", label, np.eye(4))
    with pytest.raises(InputError, match=f"{bad}: 1 label voxels are not finite"):
        process_mbhseg.main(["--src", str(tmp_path / "raw"), "--dst", str(tmp_path / "out")])


def test_a_label_that_is_not_whole_numbers_is_refused_not_rounded(tmp_path):
    """A float label of 0.5 was rounded half to even into an empty rater ("no lesion"): refused naming the file."""
    raw = write_mbhseg_raw(tmp_path / "MBHSeg", n_cases=1)
    bad = raw.root / "train" / "case_0" / "label_annot_2.nii.gz"
    write_nifti(bad, raw.labels[1].astype(np.float32) * 0.25, raw.affine)  # class 2 * 0.25 = 0.5
    with pytest.raises(InputError, match=f"{bad}: {int((raw.labels[1] > 0).sum())} voxels are not whole numbers"):
        process_mbhseg.main(["--src", str(raw.root), "--dst", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_a_scan_with_nan_voxels_is_refused_naming_it(tmp_path):
    raw = write_mbhseg_raw(tmp_path / "MBHSeg", n_cases=1)
    image = raw.root / "train" / "case_0" / "image.nii.gz"
    hu = np.full(raw.hu.shape, np.nan, np.float32)  # an all-NaN scan
    write_nifti(image, hu, raw.affine)
    with pytest.raises(InputError, match=f"{image}: {hu.size} of {hu.size} CT voxels are not finite"):
        process_mbhseg.main(["--src", str(raw.root), "--dst", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
