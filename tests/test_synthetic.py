"""pipeline/synthetic.py: determinism, reuse/refusal, the val split and extending old trees, the LIDC-layout files,
rater disagreement and styles, the default folder per data seed."""

from __future__ import annotations

import hashlib
import inspect
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import dataset
from dataset import build_dataset, default_data_path
from pipeline import synthetic as sd
from utils import InputError


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    """docs/metrics.md Dice on bool masks (empty vs empty = 1)."""
    return (2 * np.logical_and(a, b).sum() + 1e-8) / (a.sum() + b.sum() + 1e-8)


def test_same_seed_gives_byte_identical_files(tmp_path):
    sd.generate(tmp_path / "a", seed=3, n_train=5, n_test=3, n_val=2)
    sd.generate(tmp_path / "b", seed=3, n_train=5, n_test=3, n_val=2)
    sd.generate(tmp_path / "c", seed=4, n_train=5, n_test=3, n_val=2)
    sd.generate(tmp_path / "d", seed=3, n_train=2, n_test=1, n_val=1)
    a, b, c, d = (_files(tmp_path / n) for n in "abcd")
    assert len(a) == 1 + (5 + 2 + 3) * 5  # synthetic.json + per image: 1 image, 4 masks
    assert a == b
    image = "train/images/p000/slice_01.png"
    assert a[image] != c[image]  # another seed, other images
    assert a[image] == d[image]  # a case does not depend on how many were asked for
    assert a["train/images/p000/slice_00.png"] != a["test/images/p000/slice_00.png"]  # separate streams
    assert a["val/images/p000/slice_00.png"] == d["val/images/p000/slice_00.png"]  # val: counts do not matter either


def test_reuse_and_refusal(tmp_path):
    root = tmp_path / "synthetic"
    assert sd.ensure_synthetic(root, seed=1, n_train=3, n_test=2, n_val=2) == root
    mtimes = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    sd.ensure_synthetic(root, seed=1, n_train=3, n_test=2, n_val=2)
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == mtimes
    with pytest.raises(InputError) as err:
        sd.ensure_synthetic(root, seed=2, n_train=3, n_test=2, n_val=2)
    assert str(root) in str(err.value) and "seed" in str(err.value) and "\n" not in str(err.value)

    other = tmp_path / "not_synthetic"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(InputError) as err:
        sd.ensure_synthetic(other, n_train=3, n_test=2)
    assert str(other) in str(err.value) and "\n" not in str(err.value)
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary folder left behind


def test_loader_reads_the_generated_files(tmp_path):
    root = tmp_path / "synthetic"
    ds = build_dataset("synthetic", root, "test", 64, data_seed=5, n_train=4, n_test=3, n_val=1)
    assert len(ds) == 3 and ds.n_raters == 4
    sample = ds[0]
    assert sample["image"].shape == (3, 64, 64) and sample["multi_rater"].shape == (4, 1, 64, 64)
    assert sample["valid_raters"].all() and sample["name"] == "p000/slice_00"
    case = sd.make_case(sd.case_stream(5, "test", 0))
    for k in range(4):
        on_disk = np.asarray(Image.open(root / "test" / "gt" / "p000" / f"slice_00_l{k}.png"))
        assert np.array_equal(on_disk == 255, case.raters[k]) and set(np.unique(on_disk)) <= {0, 255}
    assert np.array_equal(np.asarray(Image.open(root / "test" / "images" / "p000" / "slice_00.png")), case.image)
    # native 128 px read at 128: the masks are the files' pixels
    full = build_dataset("synthetic", root, "test", 128, data_seed=5, n_train=4, n_test=3, n_val=1)[0]
    assert np.array_equal(full["multi_rater"][:, 0].numpy().astype(bool), case.raters)


@pytest.fixture(scope="module")
def default_test_split() -> list[sd.SyntheticCase]:
    """The default configuration's test split, drawn in memory (the files hold the same, see above)."""
    defaults = inspect.signature(sd.ensure_synthetic).parameters
    seed, n_test = defaults["seed"].default, defaults["n_test"].default
    assert (seed, n_test) == (0, 100)
    return [sd.make_case(sd.case_stream(seed, "test", i)) for i in range(n_test)]


def test_inter_rater_dice_in_range(default_test_split):
    pairs = {
        (i, j): np.mean([_dice(c.raters[i], c.raters[j]) for c in default_test_split])
        for i, j in itertools.combinations(range(4), 2)
    }
    assert 0.6 <= np.mean(list(pairs.values())) <= 0.9, pairs
    assert all(0.4 < d < 0.95 for d in pairs.values()), pairs  # every pair genuinely disagrees


def test_the_majority_is_a_poor_stand_in_for_each_rater(default_test_split):
    """Following the user's rater must pay off: the majority mask (> half of the raters) matches a rater
    at mean Dice below 0.8, so Gain_over_consensus > 0 is reachable for a model that follows."""
    scores = []
    for c in default_test_split:
        majority = 2 * c.raters.sum(0) > len(c.raters)
        scores += [_dice(majority, r) for r in c.raters]
    assert np.mean(scores) < 0.8


def test_rater_styles_are_distinct(default_test_split):
    faint = sd.FAINT_CONTRAST
    clear_cases = [c for c in default_test_split if min(c.contrasts) >= faint]
    ratio = {k: np.mean([c.raters[k].sum() / c.truth.sum() for c in clear_cases]) for k in range(4)}
    # on clear lesions: tight < faithful (misses_faint) < convex < generous, well apart. For a disk of radius
    # r in [10, 24] px, 4 px in gives ((r - 4) / r)^2 <= 0.69, 5 px out >= 1.46, a 2 px out hull >= 1.17.
    assert ratio[0] < 0.75 and 0.9 < ratio[3] < 1.1 and 1.15 < ratio[2] < 1.6 and ratio[1] > 1.5, ratio
    order = sorted(ratio.values())
    assert all(b - a > 0.1 for a, b in zip(order, order[1:])), ratio
    # faint lesions: rater 3 leaves them out, the others mark them
    faint_lesions = [(c, m) for c in default_test_split for m, v in zip(c.lesions, c.contrasts) if v < faint]
    assert len(faint_lesions) >= 10
    for k in range(4):
        marked = np.mean([(c.raters[k] & m).sum() / m.sum() > 0.2 for c, m in faint_lesions])
        assert marked == 0.0 if k == 3 else marked == 1.0, (k, marked)
    # the convex rater contains the true lesion (up to jitter at the boundary)
    covered = np.mean([(c.raters[2] & c.truth).sum() / c.truth.sum() for c in default_test_split])
    assert covered > 0.97


# ------------------------------------------------------------------------------------------- val split, data seed


def _array_digest(case: sd.SyntheticCase) -> str:
    return hashlib.sha256(case.image.tobytes() + case.raters.tobytes()).hexdigest()[:16]


def test_train_and_test_cases_are_those_of_the_released_generator():
    """Adding the val stream must not change a train or test case: digests of the decoded arrays written by
    GENERATOR aespa-synthetic/2 before the val split existed (commit a7416dc)."""
    released = {("train", 0): "f891067ebcf60930", ("test", 0): "530933195abd2640", ("train", 259): "edf92213f5fcbb0c"}
    assert {key: _array_digest(sd.make_case(sd.case_stream(0, *key))) for key in released} == released
    assert sd.GENERATOR == "aespa-synthetic/2"


def test_val_split_has_its_own_stream(tmp_path):
    root = tmp_path / "synthetic"
    sizes = {"n_train": 12, "n_val": 12, "n_test": 12}
    val = build_dataset("synthetic", root, "val", 128, data_seed=2, keep_empty=True, **sizes)
    assert len(val) == 12 and json.loads((root / "synthetic.json").read_text())["n_val"] == 12
    images = {
        s: [np.asarray(Image.open(p)) for p in sorted((root / s / "images").rglob("*.png"))] for s in sd.SPLIT_STREAM
    }
    assert all(len(images[s]) == 12 for s in images)
    for i, image in enumerate(images["val"]):  # the val stream's cases, no image of train or test among them
        assert np.array_equal(image, sd.make_case(sd.case_stream(2, "val", i)).image)
        assert not any(np.array_equal(image, other) for other in images["train"] + images["test"])
    # synthetic data is not carved: train is the whole train folder, val the generated one; val_fraction is refused
    train = build_dataset("synthetic", root, "train", 64, data_seed=2, keep_empty=True, **sizes)
    assert len(train) == 12
    with pytest.raises(InputError, match="dataset synthetic has no option 'val_fraction'"):
        build_dataset("synthetic", root, "val", 64, data_seed=2, keep_empty=True, val_fraction=0.5, **sizes)


def _old_tree(root: Path, seed: int, n_train: int, n_test: int) -> Path:
    """A tree as generated before the val split: train and test, synthetic.json without n_val."""
    sd.generate(root, seed=seed, n_train=n_train, n_test=n_test, n_val=0)
    assert not (root / "val").exists()
    old = {"generator": sd.GENERATOR, "seed": seed, "n_train": n_train, "n_test": n_test, "size": 128}
    (root / "synthetic.json").write_text(json.dumps({**old, "raters": list(sd.RATER_STYLES)}, indent=1) + "\n")
    return root


def test_an_old_tree_is_extended_in_place(tmp_path):
    root = _old_tree(tmp_path / "synthetic", seed=1, n_train=3, n_test=2)
    before = _files(root)
    assert sd.ensure_synthetic(root, seed=1, n_train=3, n_test=2, n_val=2) == root
    after = _files(root)
    assert {k: after[k] for k in before if k != "synthetic.json"} == {
        k: v for k, v in before.items() if k != "synthetic.json"
    }
    fresh = tmp_path / "fresh"
    sd.generate(fresh, seed=1, n_train=3, n_test=2, n_val=2)
    assert after == _files(fresh)  # val/ and synthetic.json as a fresh generation writes them
    assert sorted(p.name for p in root.iterdir()) == ["synthetic.json", "test", "train", "val"]  # no temporary left
    mtimes = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    sd.ensure_synthetic(root, seed=1, n_train=3, n_test=2, n_val=2)
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == mtimes  # reused as is from now on


def test_an_old_tree_with_other_parameters_is_refused(tmp_path):
    root = _old_tree(tmp_path / "synthetic", seed=1, n_train=3, n_test=2)
    for asked, word in (({"seed": 2}, "seed=1 (asked 2)"), ({"n_test": 3}, "n_test=2 (asked 3)")):
        with pytest.raises(InputError) as err:
            sd.ensure_synthetic(root, **{"seed": 1, "n_train": 3, "n_test": 2, "n_val": 2, **asked})
        message = str(err.value)
        assert str(root) in message and word in message and "n_val" not in message and "\n" not in message
    assert not (root / "val").exists()


def test_a_val_folder_left_by_an_interrupted_extension(tmp_path):
    """val/ renamed in but synthetic.json not yet rewritten (another rank, or a crash): accepted when it holds
    what the parameters generate, refused in one line otherwise."""
    fresh = tmp_path / "fresh"
    sd.generate(fresh, seed=1, n_train=3, n_test=2, n_val=2)
    good = _old_tree(tmp_path / "good", seed=1, n_train=3, n_test=2)
    (fresh / "val").rename(good / "val")
    sd.ensure_synthetic(good, seed=1, n_train=3, n_test=2, n_val=2)
    assert json.loads((good / "synthetic.json").read_text())["n_val"] == 2
    bad = _old_tree(tmp_path / "bad", seed=1, n_train=3, n_test=2)
    (bad / "val").mkdir()
    (bad / "val" / "stray.txt").write_text("not generated")
    with pytest.raises(InputError) as err:
        sd.ensure_synthetic(bad, seed=1, n_train=3, n_test=2, n_val=2)
    assert str(bad / "val") in str(err.value) and "\n" not in str(err.value)
    assert "n_val" not in json.loads((bad / "synthetic.json").read_text())
    assert sorted(p.name for p in bad.iterdir()) == ["synthetic.json", "test", "train", "val"]


def test_default_folder_per_data_seed(tmp_path, monkeypatch):
    assert default_data_path("synthetic") == default_data_path("synthetic", 0) == "data/synthetic"
    assert default_data_path("synthetic", 3) == "data/synthetic_seed3"
    assert default_data_path("LIDC", 3) == default_data_path("LIDC") == "data/LIDC"  # read from disk: no seed
    for bad in (-1, 1.5, True):
        with pytest.raises(InputError):
            default_data_path("synthetic", bad)
    monkeypatch.chdir(tmp_path)
    sizes = {"n_train": 2, "n_val": 1, "n_test": 1}
    ds = build_dataset("synthetic", None, "val", 32, data_seed=3, keep_empty=True, **sizes)
    assert len(ds) == 1 and json.loads(Path("data/synthetic_seed3/synthetic.json").read_text())["seed"] == 3
    assert not Path("data/synthetic").exists()
    assert dataset.DATASETS["synthetic"].default_path == "data/synthetic"
    with pytest.raises(InputError) as err:  # a folder of another seed stays refused
        build_dataset("synthetic", "data/synthetic_seed3", "val", 32, data_seed=4, **sizes)
    assert "seed=3 (asked 4)" in str(err.value)
