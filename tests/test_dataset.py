"""dataset.py: every layout's samples, resizing, padding, validity, manifest, broken trees; binarize_multiclass."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
import torch
from datatrees import disk, write_lidc_tree, write_mbhseg_tree, write_npy, write_png, write_refuge_tree

import dataset
from dataset import build_dataset, natural_key
from pipeline.multiclass import binarize_multiclass
from utils import InputError


def _check_sample(sample: dict, n_raters: int, n_classes: int, size: int) -> None:
    assert set(sample) == {"image", "multi_rater", "valid_raters", "name", "spacing", "session"}
    assert sample["session"] == sample["name"].split("/")[0]  # these layouts' raters are people per folder
    assert sample["spacing"].shape == (2,) and sample["spacing"].dtype == torch.float32
    image, masks = sample["image"], sample["multi_rater"]
    assert image.shape == (3, size, size) and image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert masks.shape == (n_raters, n_classes, size, size) and masks.dtype == torch.float32
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    assert sample["valid_raters"].shape == (n_raters,) and sample["valid_raters"].dtype == torch.bool
    assert isinstance(sample["name"], str)


def _whole(*args, **kwargs):
    """build_dataset without a validation carve (val_fraction 0): train is the whole training folder."""
    return build_dataset(*args, **{"val_fraction": 0, **kwargs})


def _names(ds) -> list[str]:
    return [ds[i]["name"] for i in range(len(ds))]


def _input_error(path, *args, **kwargs) -> str:
    """Build a dataset expecting an InputError; check it is one line naming `path`."""
    with pytest.raises(InputError) as err:
        ds = _whole(*args, **kwargs)
        for i in range(len(ds)):
            ds[i]
    message = str(err.value)
    assert str(path) in message and "\n" not in message, message
    return message


# ------------------------------------------------------------------------------------------- LIDC


def test_lidc_samples(tmp_path):
    root = write_lidc_tree(tmp_path / "LIDC", n_patients=2, slices=3, size=32)
    ds = _whole("LIDC", root, "train", 16)
    assert len(ds) == 6 and ds.n_raters == 4
    for i in range(len(ds)):
        sample = ds[i]
        _check_sample(sample, 4, 1, 16)
        assert sample["valid_raters"].all()
        assert torch.equal(sample["image"][0], sample["image"][1])  # grey replicated
    # rater k is a disk of radius 8 + k at 32 px: areas strictly increase with k
    areas = ds[0]["multi_rater"].sum((1, 2, 3))
    assert (areas[1:] > areas[:-1]).all()
    assert _names(ds) == [f"LIDC-{p:04d}/z-{s}.0_c0" for p in range(2) for s in range(3)]
    assert len(_whole("LIDC", root, "test", 16)) == 6


def test_sorting_is_numeric_aware(tmp_path):
    root = write_lidc_tree(tmp_path / "LIDC", splits=("train",), n_patients=1, slices=11, size=8)
    assert _names(_whole("LIDC", root, "train", 8)) == [f"LIDC-0000/z-{s}.0_c0" for s in range(11)]
    keys = ["slice_10", "slice_9", "slice_1", "a", "slice_01"]
    assert sorted(keys, key=natural_key) == ["a", "slice_01", "slice_1", "slice_9", "slice_10"]


def test_padding_and_rater_slots(tmp_path):
    # slice (0, 0) lacks rater l1: slots hold l0, l2, l3 then one padded rater
    root = write_lidc_tree(tmp_path / "LIDC", n_patients=1, slices=2, size=16, missing_masks=[(0, 0, 1)])
    ds = _whole("LIDC", root, "train", 16)
    sample = ds[0]
    assert sample["valid_raters"].tolist() == [True, True, True, False]
    assert sample["multi_rater"][3].sum() == 0
    for slot, k in ((0, 0), (1, 2), (2, 3)):
        expected = torch.from_numpy(disk(16, 4 + k)).float()
        assert torch.equal(sample["multi_rater"][slot, 0], expected)
    # a split whose slices all have at most 3 raters pads to 3
    root3 = write_lidc_tree(tmp_path / "LIDC3", n_patients=1, slices=2, size=16, raters=3)
    assert _whole("LIDC", root3, "train", 16).n_raters == 3


def test_valid_raters_present_vs_nonempty(tmp_path):
    root = write_lidc_tree(tmp_path / "LIDC", n_patients=1, slices=1, size=16, empty_masks=[(0, 0, 2)])
    present = _whole("LIDC", root, "train", 16)[0]
    nonempty = _whole("LIDC", root, "train", 16, valid_raters="nonempty")[0]
    assert present["valid_raters"].tolist() == [True, True, True, True]
    assert nonempty["valid_raters"].tolist() == [True, True, False, True]
    assert present["multi_rater"][2].sum() == 0


def test_empty_slices_skipped_and_manifest(tmp_path, monkeypatch):
    root = write_lidc_tree(tmp_path / "LIDC", splits=("train",), n_patients=1, slices=3, size=16, empty_slices=[(0, 1)])
    assert _names(_whole("LIDC", root, "train", 16)) == ["LIDC-0000/z-0.0_c0", "LIDC-0000/z-2.0_c0"]
    assert len(_whole("LIDC", root, "train", 16, keep_empty=True)) == 3
    manifest = root / "train" / dataset.MANIFEST
    cached = json.loads(manifest.read_text())
    assert cached["foreground"] == {"LIDC-0000/z-0.0_c0": True, "LIDC-0000/z-1.0_c0": False, "LIDC-0000/z-2.0_c0": True}
    # the cache is what decides while the files are unchanged ...
    cached["foreground"]["LIDC-0000/z-2.0_c0"] = False
    manifest.write_text(json.dumps(cached))
    assert len(_whole("LIDC", root, "train", 16)) == 1
    # ... and is recomputed once a file changes (here: the empty slice gets a lesion)
    write_png(root / "train" / "gt" / "LIDC-0000" / "z-1.0_c0_l0.png", disk(16, 3).astype(np.uint8) * 255)
    assert len(_whole("LIDC", root, "train", 16)) == 3

    # read-only data folder: computed without caching, no failure
    manifest.unlink()

    def refuse(*_args, **_kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(dataset, "atomic_write_bytes", refuse)
    assert len(_whole("LIDC", root, "train", 16)) == 3
    assert not manifest.exists()


def test_resized_mask_exact_pixels(tmp_path):
    mask = np.array([[1, 0, 0, 1, 1], [0, 1, 0, 0, 1], [1, 1, 0, 1, 0], [0, 0, 1, 1, 1], [1, 0, 1, 0, 0]], np.uint8)
    root = tmp_path / "LIDC"
    write_png(root / "train" / "images" / "p" / "s.png", np.full((5, 5), 128, np.uint8))
    write_png(root / "train" / "gt" / "p" / "s_l0.png", mask * 255)
    # 5 -> 3: output pixel i reads input floor((i + 0.5) * 5 / 3) = 0, 2, 4 (rows and columns)
    small = _whole("LIDC", root, "train", 3)[0]["multi_rater"][0, 0]
    assert small.tolist() == [[1, 0, 1], [1, 0, 0], [1, 1, 0]]
    # 5 -> 8: floor((i + 0.5) * 5 / 8) = 0, 0, 1, 2, 2, 3, 4, 4
    big = _whole("LIDC", root, "train", 8)[0]["multi_rater"][0, 0]
    assert big[:, 0].tolist() == [1, 1, 0, 1, 1, 0, 1, 1]  # column 0 of the input, rows repeated as above
    assert big[3].tolist() == [1, 1, 1, 0, 0, 1, 0, 0]  # input row 2, columns 0,0,1,2,2,3,4,4


def test_image_resized_bilinearly(tmp_path):
    root = tmp_path / "LIDC"
    write_png(root / "train" / "images" / "p" / "s.png", np.array([[0, 255], [0, 255]], np.uint8))
    write_png(root / "train" / "gt" / "p" / "s_l0.png", np.full((2, 2), 255, np.uint8))
    image = _whole("LIDC", root, "train", 4)[0]["image"]
    # align_corners=False: output x samples input x = (i + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25 (clamped)
    expected = torch.tensor([0.0, 0.25, 0.75, 1.0]).expand(3, 4, 4)
    assert torch.allclose(image, expected, atol=1e-6)


def test_dataloader_with_workers(tmp_path):
    root = write_lidc_tree(tmp_path / "LIDC", n_patients=2, slices=3, size=32)
    loader = torch.utils.data.DataLoader(_whole("LIDC", root, "train", 32), batch_size=4, num_workers=2)
    batches = list(loader)
    assert [b["multi_rater"].shape[0] for b in batches] == [4, 2]
    assert batches[0]["multi_rater"].shape == (4, 4, 1, 32, 32) and len(batches[0]["name"]) == 4


# ------------------------------------------------------------------------------------------- MBHSeg


@pytest.mark.parametrize("image_dir", ["imgs", "images"])
def test_mbhseg_binary(tmp_path, image_dir):
    root = write_mbhseg_tree(
        tmp_path / "MBHSeg-Binary",
        n_cases=2,
        slices=2,
        raters=3,
        size=32,
        image_dir=image_dir,
        missing_masks=[(1, 0, 2)],
    )
    ds = _whole("MBHSeg-Binary", root, "train", 16)
    assert _names(ds) == ["case_0/slice_0", "case_0/slice_1", "case_1/slice_0", "case_1/slice_1"]
    for i in range(len(ds)):
        _check_sample(ds[i], 3, 1, 16)
    assert ds[2]["valid_raters"].tolist() == [True, True, False] and ds[2]["multi_rater"][2].sum() == 0
    assert ds[0]["valid_raters"].all()


def test_mbhseg_multiclass(tmp_path):
    root = write_mbhseg_tree(
        tmp_path / "MBHSeg-Multi", multiclass=True, n_cases=1, slices=2, raters=3, size=32, missing_masks=[(0, 1, 0)]
    )
    ds = _whole("MBHSeg-Multiclass", root, "train", 16)
    assert ds.n_classes == 6
    sample = ds[0]
    _check_sample(sample, 3, 6, 16)
    assert (sample["multi_rater"].sum(1) == 1).all()  # one-hot survives the resize
    for k in range(3):  # rater k's disk is class 1 + k on slice 0
        assert sample["multi_rater"][k, 1 + k].sum() > 0
        assert sample["multi_rater"][k, 1:].sum() == sample["multi_rater"][k, 1 + k].sum()
    padded = ds[1]
    assert padded["valid_raters"].tolist() == [True, True, False]
    assert padded["multi_rater"][2].sum() == 0  # padded: zeros in every channel


def test_mbhseg_wrong_kind_of_mask(tmp_path):
    binary = write_mbhseg_tree(tmp_path / "bin", n_cases=1, slices=1)
    multi = write_mbhseg_tree(tmp_path / "multi", multiclass=True, n_cases=1, slices=1)
    _input_error(binary / "train" / "gt" / "case_0" / "slice_0_r1.npy", "MBHSeg-Multiclass", binary, "train", 16)
    _input_error(multi / "train" / "gt" / "case_0" / "slice_0_r1.npy", "MBHSeg-Binary", multi, "train", 16)


# ------------------------------------------------------------------------------------------- REFUGE


def test_refuge_cup_and_disc(tmp_path):
    root = write_refuge_tree(tmp_path / "REFUGE-Multirater", n_images=2, raters=7, size=(40, 48))
    cup = _whole("REFUGE", root, "train", 32)
    disc = _whole("REFUGE", root, "test", 32, refuge_target="disc")
    assert _names(cup) == ["n0001", "n0002"] and len(disc) == 2
    for ds in (cup, disc):
        for i in range(len(ds)):
            _check_sample(ds[i], 7, 1, 32)
            assert ds[i]["valid_raters"].all()
    assert not torch.equal(cup[0]["image"][0], cup[0]["image"][2])  # colour kept
    cup_area, disc_area = cup[0]["multi_rater"].sum((1, 2, 3)), disc[0]["multi_rater"].sum((1, 2, 3))
    assert (disc_area > cup_area).all()


def test_refuge_split_folders(tmp_path):
    root = write_refuge_tree(tmp_path / "REFUGE", splits=("train",))
    _input_error(root / "Test-400", "REFUGE", root, "test", 32)


# ------------------------------------------------------------------------------------------- validation split


def _groups(ds) -> set[str]:
    return {rec.name.split("/")[0] for rec in ds.records}


def _first_by_sha256(names, k: int) -> set[str]:
    """The documented rule, written independently: the k names with the smallest SHA-256 of their UTF-8 bytes."""
    return set(sorted(names, key=lambda n: hashlib.sha256(n.encode("utf-8")).hexdigest())[:k])


def _mbhseg_multi(root, **kwargs):
    return write_mbhseg_tree(root, multiclass=True, **kwargs)


@pytest.mark.parametrize(
    "name, writer, count, group",
    [
        ("LIDC", write_lidc_tree, "n_patients", "LIDC-{:04d}"),
        ("MBHSeg-Binary", write_mbhseg_tree, "n_cases", "case_{}"),
        ("MBHSeg-Multiclass", _mbhseg_multi, "n_cases", "case_{}"),
    ],
)
def test_val_split_by_patient_or_case(tmp_path, name, writer, count, group):
    root = tmp_path / name
    writer(root, splits=("train",), slices=2, size=8, **{count: 10})
    writer(root, splits=("test",), slices=2, size=8, first=10, **{count: 3})
    train, val, test = (build_dataset(name, root, s, 8, val_fraction=0.2) for s in ("train", "val", "test"))
    everything = _names(_whole(name, root, "train", 8))
    assert len(everything) == 20
    # round(0.2 * 10) = 2 groups held out, those the documented hash rule picks
    assert _groups(val) == _first_by_sha256([group.format(i) for i in range(10)], 2)
    assert len(_groups(train)) == 8 and not _groups(train) & _groups(val)
    assert sorted(_names(train) + _names(val)) == sorted(everything) and not set(_names(train)) & set(_names(val))
    assert _groups(test) == {group.format(i) for i in (10, 11, 12)}  # the test folder as it is
    assert _names(test) == _names(_whole(name, root, "test", 8))
    assert _names(build_dataset(name, root, "val", 8, val_fraction=0.2)) == _names(val)


def test_refuge_val_split_by_image(tmp_path):
    root = write_refuge_tree(tmp_path / "REFUGE", n_images=5, size=(8, 8))
    train, val = (build_dataset("REFUGE", root, s, 8, val_fraction=0.3) for s in ("train", "val"))
    ids = [f"n{i:04d}" for i in range(1, 6)]
    assert set(_names(val)) == _first_by_sha256(ids, 2)  # round(0.3 * 5) = round(1.5) = 2, halves up
    assert sorted(_names(train) + _names(val)) == ids
    assert _names(build_dataset("REFUGE", root, "test", 8, val_fraction=0.3)) == ids  # Test-400 untouched


class _ReversedScandir:
    """os.scandir listing entries in reverse name order (a file system that lists differently)."""

    scandir = staticmethod(os.scandir)

    def __init__(self, path):
        self.entries = sorted(self.scandir(path), key=lambda e: e.name, reverse=True)

    def __enter__(self):
        return iter(self.entries)

    def __exit__(self, *_exc) -> bool:
        return False

    def __iter__(self):
        return iter(self.entries)


def test_val_split_does_not_depend_on_listing_order(tmp_path, monkeypatch):
    trees = {
        "LIDC": write_lidc_tree(tmp_path / "LIDC", splits=("train",), n_patients=7, slices=2, size=8),
        "REFUGE": write_refuge_tree(tmp_path / "REFUGE", splits=("train",), n_images=6, size=(8, 8)),
    }

    def splits() -> dict:
        return {
            (n, s): set(_names(build_dataset(n, r, s, 8, val_fraction=0.3)))
            for n, r in trees.items()
            for s in ("train", "val")
        }

    before = splits()
    listdir = os.listdir
    monkeypatch.setattr(os, "scandir", _ReversedScandir)
    monkeypatch.setattr(os, "listdir", lambda path: sorted(listdir(path), reverse=True))
    assert splits() == before
    assert len({n.split("/")[0] for n in before["LIDC", "val"]}) == 2  # round(0.3 * 7) = round(2.1) = 2
    assert len(before["REFUGE", "val"]) == 2  # round(0.3 * 6) = round(1.8) = 2


def test_val_split_ignores_empty_slices(tmp_path):
    """Groups are those of the folder: dropping a patient whose slices are all empty does not move the others."""
    empty = [(p, 0) for p in range(6)] + [(3, 1)]  # patient 3 has no marked slice at all
    root = write_lidc_tree(tmp_path / "LIDC", splits=("train",), n_patients=6, slices=2, size=8, empty_slices=empty)
    for split in ("train", "val"):
        kept = _groups(build_dataset("LIDC", root, split, 8, val_fraction=0.5))
        everything = _groups(build_dataset("LIDC", root, split, 8, val_fraction=0.5, keep_empty=True))
        assert kept == everything - {"LIDC-0003"}
    # 3 of the folder's 6 patients; LIDC-0003 is among them, so carving after the drop (3 of 5) would differ
    held = _first_by_sha256([f"LIDC-{p:04d}" for p in range(6)], 3)
    assert "LIDC-0003" in held and _groups(build_dataset("LIDC", root, "val", 8, val_fraction=0.5)) == held - {
        "LIDC-0003"
    }


def test_n_val_groups_by_hand():
    # (groups, fraction) -> round half up, at least 1, at most groups - 1
    cases = {(10, 0.1): 1, (10, 0.2): 2, (5, 0.3): 2, (25, 0.1): 3, (15, 0.1): 2, (5, 0.1): 1, (3, 0.01): 1}
    cases |= {(2, 0.9): 1, (20, 0.95): 19, (1000, 0.1): 100, (875, 0.1): 88}
    assert {key: dataset.n_val_groups(*key) for key in cases} == cases


def test_val_groups_stay_put_when_groups_come_and_go():
    names = [f"LIDC-IDRI-{i:04d}" for i in range(80)]
    for n in range(2, 80):
        old, new = dataset.val_groups(names[:n], 0.1), dataset.val_groups(names[: n + 1], 0.1)
        moved = (old ^ new) - {names[n]}  # groups other than the added one that changed split
        assert len(moved) <= 1, (n, moved)
    assert dataset.val_groups(reversed(names), 0.1) == dataset.val_groups(names, 0.1)
    small, large = dataset.val_groups(names, 0.1), dataset.val_groups(names, 0.3)
    assert len(small) == 8 and len(large) == 24 and small < large  # a larger fraction keeps the smaller's groups


def test_val_fraction_zero_and_bad_values(tmp_path):
    root = write_lidc_tree(tmp_path / "LIDC", splits=("train",), n_patients=3, slices=2, size=8)
    assert len(build_dataset("LIDC", root, "train", 8, val_fraction=0)) == 6  # no val split: the whole folder
    message = _input_error("val_fraction", "LIDC", root, "val", 8, val_fraction=0)
    assert "LIDC" in message
    for bad in (-0.1, 1, 1.0, 1.5, float("nan"), True, "0.1", None):
        _input_error("val_fraction", "LIDC", root, "train", 8, val_fraction=bad)
    for bad in (-0.5, 1.0):  # refused for every dataset, also where it does not apply
        _input_error("val_fraction", "synthetic", tmp_path / "synthetic", "val", 8, val_fraction=bad)
        _input_error("val_fraction", "LIDC", root, "test", 8, val_fraction=bad)
    one = write_lidc_tree(tmp_path / "one", splits=("train",), n_patients=1, slices=2, size=8)
    message = _input_error(one / "train", "LIDC", one, "val", 8, val_fraction=0.1)
    assert "1 patient" in message
    assert not (tmp_path / "synthetic").exists()  # refused before generating anything


def test_has_val_split():
    assert dataset.has_val_split("LIDC", 0.1) and not dataset.has_val_split("LIDC", 0)
    assert dataset.has_val_split("synthetic", 0) and dataset.has_val_split("REFUGE", 0.5)
    with pytest.raises(InputError):
        dataset.has_val_split("LIDC", 1.0)


def test_every_layout_has_a_val_split():
    for layout in dataset.DATASETS.values():
        assert ("val" in layout.split_folders) == (layout.val_grouping is None)  # one or the other
    with pytest.raises(ValueError):
        dataset.Layout("x", lambda d, o: [])  # neither a val folder nor a grouping


# ------------------------------------------------------------------------------------------- errors


def test_unknown_names_and_options(tmp_path):
    message = _input_error(
        "synthetic, LIDC, MBHSeg-Binary, MBHSeg-Multiclass, LIDC-readers, REFUGE", "lidc", tmp_path, "train", 16
    )
    assert "lidc" in message
    root = write_lidc_tree(tmp_path / "LIDC", n_patients=1, slices=1, size=8)
    _input_error("train, val, test", "LIDC", root, "dev", 16)
    _input_error("always", "LIDC", root, "train", 16, valid_raters="always")
    _input_error("rim", "REFUGE", root, "train", 16, refuge_target="rim")


def test_broken_trees(tmp_path):
    _input_error(tmp_path / "nowhere", "LIDC", tmp_path / "nowhere", "train", 16)

    root = write_lidc_tree(tmp_path / "a", splits=("train",), n_patients=1, slices=1, size=8)
    _input_error(root / "test", "LIDC", root, "test", 16)

    root = write_lidc_tree(tmp_path / "b", n_patients=1, slices=2, size=8)
    for k in range(4):
        os.unlink(root / "train" / "gt" / "LIDC-0000" / f"z-1.0_c0_l{k}.png")
    _input_error(root / "train" / "images" / "LIDC-0000" / "z-1.0_c0.png", "LIDC", root, "train", 16)

    root = write_lidc_tree(tmp_path / "c", n_patients=1, slices=1, size=8)
    bad = write_png(root / "train" / "gt" / "LIDC-0000" / "z-0.0_c0_l2.png", np.zeros((9, 8), np.uint8))
    _input_error(bad, "LIDC", root, "train", 16)

    root = write_lidc_tree(tmp_path / "d", n_patients=1, slices=1, size=8)
    bad = root / "train" / "gt" / "LIDC-0000" / "z-0.0_c0_l1.png"
    bad.write_bytes(b"\x89PNG garbage")
    _input_error(bad, "LIDC", root, "train", 16)

    root = write_lidc_tree(tmp_path / "e", n_patients=1, slices=1, size=8)
    bad = root / "train" / "images" / "LIDC-0000" / "z-0.0_c0.png"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated: header fine, pixels missing
    _input_error(bad, "LIDC", root, "train", 16)

    root = tmp_path / "f"
    for folder in ("images", "gt"):
        (root / "train" / folder).mkdir(parents=True)
    _input_error(root / "train" / "images", "LIDC", root, "train", 16)

    root = write_lidc_tree(tmp_path / "g", n_patients=1, slices=2, size=8, empty_slices=[(0, 0), (0, 1)])
    _input_error(root / "train", "LIDC", root, "train", 16)


def test_broken_mbhseg_and_refuge(tmp_path):
    root = write_mbhseg_tree(tmp_path / "a", n_cases=1, slices=1, size=8)
    bad = root / "train" / "gt" / "case_0" / "slice_0_r2.npy"
    bad.write_bytes(b"\x93NUMPY junk")
    _input_error(bad, "MBHSeg-Binary", root, "train", 16)

    root = write_mbhseg_tree(tmp_path / "b", n_cases=1, slices=1, size=8)
    bad = write_npy(root / "train" / "gt" / "case_0" / "slice_0_r3.npy", np.zeros((8, 7), np.uint8))
    _input_error(bad, "MBHSeg-Binary", root, "train", 16)

    root = write_mbhseg_tree(tmp_path / "c", n_cases=1, slices=1, size=8)
    for k in (1, 2, 3):
        os.unlink(root / "train" / "gt" / "case_0" / f"slice_0_r{k}.npy")
    _input_error(root / "train" / "imgs" / "case_0" / "slice_0.png", "MBHSeg-Binary", root, "train", 16)

    root = write_refuge_tree(tmp_path / "d", n_images=1)
    bad = root / "Training-400" / "n0001" / "n0001.jpg"
    bad.write_bytes(b"\xff\xd8\xff not a jpeg")
    _input_error(bad, "REFUGE", root, "train", 16)

    root = write_refuge_tree(tmp_path / "e", n_images=1, size=(40, 48))
    bad = write_png(root / "Training-400" / "n0001" / "n0001_seg_cup_3.png", np.zeros((48, 40), np.uint8))
    _input_error(bad, "REFUGE", root, "train", 16)


# ------------------------------------------------------------------------------------------- multiclass


def _one_hot(labels: list[list[list[int]]]) -> torch.Tensor:
    """R label maps (HxW ints) -> Rx6xHxW one-hot."""
    return torch.nn.functional.one_hot(torch.tensor(labels), 6).permute(0, 3, 1, 2).float()


def test_binarize_multiclass_cases():
    # image 0: class 2 everywhere the raters agree, class 4 only rater 0 marks (disagreement)
    agree_dis = _one_hot([[[2, 4], [0, 0]], [[2, 0], [0, 0]], [[2, 0], [0, 0]]])
    # image 1: only class 5, all raters agree -> always class 5
    single = _one_hot([[[5, 0], [0, 0]], [[5, 0], [0, 0]], [[5, 0], [0, 0]]])
    # image 2: no foreground at all -> zeros
    empty = _one_hot([[[0, 0], [0, 0]]] * 3)
    # image 3: class 3 marked only by the invalid rater 2 -> ignored; class 1 by both valid raters
    invalid = _one_hot([[[1, 0], [0, 0]], [[1, 0], [0, 0]], [[0, 3], [3, 3]]])
    n = 2000
    batch = torch.stack([agree_dis, single, empty, invalid]).repeat(n, 1, 1, 1, 1)  # (4n)x3x6x2x2
    valid = torch.tensor([[True, True, True]] * 3 + [[True, True, False]]).repeat(n, 1)
    out = binarize_multiclass(batch, valid, torch.Generator().manual_seed(0))
    assert out.shape == (4 * n, 3, 1, 2, 2)
    first = out[0::4, :, 0]  # nx3x2x2
    is_four = (first == batch[0::4, :, 4]).all((1, 2, 3))
    is_two = (first == batch[0::4, :, 2]).all((1, 2, 3))
    assert (is_four | is_two).all()
    # P(class 4) = 0.8 (prefer disagreement) + 0.2 * 1/2 (uniform over {2, 4}) = 0.9
    assert abs(is_four.float().mean().item() - 0.9) < 0.03
    assert torch.equal(out[1::4, :, 0], batch[1::4, :, 5])
    assert out[2::4].sum() == 0
    expected = batch[3::4, :, 1].clone()
    expected[:, 2] = 0  # invalid rater: zeros
    assert torch.equal(out[3::4, :, 0], expected)


def test_binarize_multiclass_deterministic():
    batch = _one_hot([[[1, 2], [3, 0]], [[1, 0], [3, 4]]])[None].repeat(64, 1, 1, 1, 1)
    valid = torch.ones(64, 2, dtype=torch.bool)
    a = binarize_multiclass(batch, valid, torch.Generator().manual_seed(7))
    b = binarize_multiclass(batch, valid, torch.Generator().manual_seed(7))
    c = binarize_multiclass(batch, valid, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert set(a.unique().tolist()) <= {0.0, 1.0}
