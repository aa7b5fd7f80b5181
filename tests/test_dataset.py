"""dataset.py: every layout's samples, resizing, padding, validity, manifest, broken trees; binarize_multiclass."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from datatrees import disk, write_lidc_tree, write_mbhseg_tree, write_npy, write_png, write_refuge_tree

import dataset
from dataset import build_dataset, natural_key
from multiclass import binarize_multiclass
from utils import InputError


def _check_sample(sample: dict, n_raters: int, n_classes: int, size: int) -> None:
    assert set(sample) == {"image", "multi_rater", "valid_raters", "name"}
    image, masks = sample["image"], sample["multi_rater"]
    assert image.shape == (3, size, size) and image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert masks.shape == (n_raters, n_classes, size, size) and masks.dtype == torch.float32
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    assert sample["valid_raters"].shape == (n_raters,) and sample["valid_raters"].dtype == torch.bool
    assert isinstance(sample["name"], str)


def _names(ds) -> list[str]:
    return [ds[i]["name"] for i in range(len(ds))]


def _input_error(path, *args, **kwargs) -> str:
    """Build a dataset expecting an InputError; check it is one line naming `path`."""
    with pytest.raises(InputError) as err:
        ds = build_dataset(*args, **kwargs)
        for i in range(len(ds)):
            ds[i]
    message = str(err.value)
    assert str(path) in message and "\n" not in message, message
    return message


# ------------------------------------------------------------------------------------------- LIDC


def test_lidc_samples(tmp_path):
    root = write_lidc_tree(tmp_path / "LIDC", n_patients=2, slices=3, size=32)
    ds = build_dataset("LIDC", root, "train", 16)
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
    assert len(build_dataset("LIDC", root, "test", 16)) == 6


def test_sorting_is_numeric_aware(tmp_path):
    root = write_lidc_tree(tmp_path / "LIDC", splits=("train",), n_patients=1, slices=11, size=8)
    assert _names(build_dataset("LIDC", root, "train", 8)) == [f"LIDC-0000/z-{s}.0_c0" for s in range(11)]
    keys = ["slice_10", "slice_9", "slice_1", "a", "slice_01"]
    assert sorted(keys, key=natural_key) == ["a", "slice_01", "slice_1", "slice_9", "slice_10"]


def test_padding_and_rater_slots(tmp_path):
    # slice (0, 0) lacks rater l1: slots hold l0, l2, l3 then one padded rater
    root = write_lidc_tree(tmp_path / "LIDC", n_patients=1, slices=2, size=16, missing_masks=[(0, 0, 1)])
    ds = build_dataset("LIDC", root, "train", 16)
    sample = ds[0]
    assert sample["valid_raters"].tolist() == [True, True, True, False]
    assert sample["multi_rater"][3].sum() == 0
    for slot, k in ((0, 0), (1, 2), (2, 3)):
        expected = torch.from_numpy(disk(16, 4 + k)).float()
        assert torch.equal(sample["multi_rater"][slot, 0], expected)
    # a split whose slices all have at most 3 raters pads to 3
    root3 = write_lidc_tree(tmp_path / "LIDC3", n_patients=1, slices=2, size=16, raters=3)
    assert build_dataset("LIDC", root3, "train", 16).n_raters == 3


def test_valid_raters_present_vs_nonempty(tmp_path):
    root = write_lidc_tree(tmp_path / "LIDC", n_patients=1, slices=1, size=16, empty_masks=[(0, 0, 2)])
    present = build_dataset("LIDC", root, "train", 16)[0]
    nonempty = build_dataset("LIDC", root, "train", 16, valid_raters="nonempty")[0]
    assert present["valid_raters"].tolist() == [True, True, True, True]
    assert nonempty["valid_raters"].tolist() == [True, True, False, True]
    assert present["multi_rater"][2].sum() == 0


def test_empty_slices_skipped_and_manifest(tmp_path, monkeypatch):
    root = write_lidc_tree(tmp_path / "LIDC", splits=("train",), n_patients=1, slices=3, size=16, empty_slices=[(0, 1)])
    assert _names(build_dataset("LIDC", root, "train", 16)) == ["LIDC-0000/z-0.0_c0", "LIDC-0000/z-2.0_c0"]
    assert len(build_dataset("LIDC", root, "train", 16, keep_empty=True)) == 3
    manifest = root / "train" / dataset.MANIFEST
    cached = json.loads(manifest.read_text())
    assert cached["foreground"] == {"LIDC-0000/z-0.0_c0": True, "LIDC-0000/z-1.0_c0": False, "LIDC-0000/z-2.0_c0": True}
    # the cache is what decides while the files are unchanged ...
    cached["foreground"]["LIDC-0000/z-2.0_c0"] = False
    manifest.write_text(json.dumps(cached))
    assert len(build_dataset("LIDC", root, "train", 16)) == 1
    # ... and is recomputed once a file changes (here: the empty slice gets a lesion)
    write_png(root / "train" / "gt" / "LIDC-0000" / "z-1.0_c0_l0.png", disk(16, 3).astype(np.uint8) * 255)
    assert len(build_dataset("LIDC", root, "train", 16)) == 3

    # read-only data folder: computed without caching, no failure
    manifest.unlink()

    def refuse(*_args, **_kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(dataset, "atomic_write_bytes", refuse)
    assert len(build_dataset("LIDC", root, "train", 16)) == 3
    assert not manifest.exists()


def test_resized_mask_exact_pixels(tmp_path):
    mask = np.array([[1, 0, 0, 1, 1], [0, 1, 0, 0, 1], [1, 1, 0, 1, 0], [0, 0, 1, 1, 1], [1, 0, 1, 0, 0]], np.uint8)
    root = tmp_path / "LIDC"
    write_png(root / "train" / "images" / "p" / "s.png", np.full((5, 5), 128, np.uint8))
    write_png(root / "train" / "gt" / "p" / "s_l0.png", mask * 255)
    # 5 -> 3: output pixel i reads input floor((i + 0.5) * 5 / 3) = 0, 2, 4 (rows and columns)
    small = build_dataset("LIDC", root, "train", 3)[0]["multi_rater"][0, 0]
    assert small.tolist() == [[1, 0, 1], [1, 0, 0], [1, 1, 0]]
    # 5 -> 8: floor((i + 0.5) * 5 / 8) = 0, 0, 1, 2, 2, 3, 4, 4
    big = build_dataset("LIDC", root, "train", 8)[0]["multi_rater"][0, 0]
    assert big[:, 0].tolist() == [1, 1, 0, 1, 1, 0, 1, 1]  # column 0 of the input, rows repeated as above
    assert big[3].tolist() == [1, 1, 1, 0, 0, 1, 0, 0]  # input row 2, columns 0,0,1,2,2,3,4,4


def test_image_resized_bilinearly(tmp_path):
    root = tmp_path / "LIDC"
    write_png(root / "train" / "images" / "p" / "s.png", np.array([[0, 255], [0, 255]], np.uint8))
    write_png(root / "train" / "gt" / "p" / "s_l0.png", np.full((2, 2), 255, np.uint8))
    image = build_dataset("LIDC", root, "train", 4)[0]["image"]
    # align_corners=False: output x samples input x = (i + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25 (clamped)
    expected = torch.tensor([0.0, 0.25, 0.75, 1.0]).expand(3, 4, 4)
    assert torch.allclose(image, expected, atol=1e-6)


def test_dataloader_with_workers(tmp_path):
    root = write_lidc_tree(tmp_path / "LIDC", n_patients=2, slices=3, size=32)
    loader = torch.utils.data.DataLoader(build_dataset("LIDC", root, "train", 32), batch_size=4, num_workers=2)
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
    ds = build_dataset("MBHSeg-Binary", root, "train", 16)
    assert _names(ds) == ["case_0/slice_0", "case_0/slice_1", "case_1/slice_0", "case_1/slice_1"]
    for i in range(len(ds)):
        _check_sample(ds[i], 3, 1, 16)
    assert ds[2]["valid_raters"].tolist() == [True, True, False] and ds[2]["multi_rater"][2].sum() == 0
    assert ds[0]["valid_raters"].all()


def test_mbhseg_multiclass(tmp_path):
    root = write_mbhseg_tree(
        tmp_path / "MBHSeg-Multi", multiclass=True, n_cases=1, slices=2, raters=3, size=32, missing_masks=[(0, 1, 0)]
    )
    ds = build_dataset("MBHSeg-Multiclass", root, "train", 16)
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
    cup = build_dataset("REFUGE", root, "train", 32)
    disc = build_dataset("REFUGE", root, "test", 32, refuge_target="disc")
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


# ------------------------------------------------------------------------------------------- errors


def test_unknown_names_and_options(tmp_path):
    message = _input_error("synthetic, LIDC, MBHSeg-Binary, MBHSeg-Multiclass, REFUGE", "lidc", tmp_path, "train", 16)
    assert "lidc" in message
    root = write_lidc_tree(tmp_path / "LIDC", n_patients=1, slices=1, size=8)
    _input_error("valid", "LIDC", root, "val", 16)
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
