"""tables.py -compare (paired.py): per-image files written by hand with a known difference between two
configurations -> the mean paired difference and its image-level bootstrap interval; one-line refusals."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tables
from analysis import paired
from utils import InputError

ROOT = Path(__file__).resolve().parents[1]
HEADER = "epoch,split,mode,round,clicks,image,followed,Dice_follow,Dice,Gain_over_consensus,empty_followed".split(",")
N_IMAGES, N_RATERS, N_ROUNDS = 24, 4, 3
# Image-level noise with mean exactly 0 over the images: +-0.03 alternating (24 images, 12 of each sign).
IMAGE_NOISE = {f"p{i:03d}/slice_{i % 3}": 0.03 * (1 if i % 2 else -1) for i in range(N_IMAGES)}


def base_value(data_seed: int, image: str, followed: int, round_: int) -> float:
    """A's Dice_follow before training-seed offsets; varies with everything so pairs must match key by key."""
    i = int(image[1:4])
    return 0.4 + 0.05 * round_ + 0.004 * i + 0.01 * followed + 0.02 * data_seed


def write_run(folder: Path, rows: list[dict], seed: int = 0, data_seed: int = 0, **args) -> Path:
    folder.mkdir(parents=True)
    flags = {"exp_name": "syn_AESPA", "mode": "AESPA", "dataset": "LIDC", "seed": seed, "data_seed": data_seed}
    flags["data_path"] = "./data/synthetic" + (f"_seed{data_seed}" if data_seed else "")
    (folder / "args.json").write_text(json.dumps({**flags, **args}))
    with (folder / "per_image.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, HEADER)
        writer.writeheader()
        writer.writerows(rows)
    tested = [int(r["epoch"]) for r in rows if r["split"] == "test"]
    if tested:  # a finished run's summary.json names its test epoch (tables.py warns about a run without one)
        (folder / "summary.json").write_text(json.dumps({"test_epoch": max(tested)}))
    return folder


def rows_for(data_seed: int, value, epoch: int = 4, split: str = "test") -> list[dict]:
    """Every (image, followed, round) row; value(data_seed, image, followed, round) -> Dice_follow."""
    rows = []
    for t in range(1, N_ROUNDS + 1):
        for image in IMAGE_NOISE:
            for r in range(N_RATERS):
                v = value(data_seed, image, r, t)
                rows.append(
                    {
                        "epoch": epoch,
                        "split": split,
                        "mode": "AESPA",
                        "round": t,
                        "clicks": t - 1,
                        "image": image,
                        "followed": r,
                        "Dice_follow": repr(v),
                        "Dice": repr(v - 0.1),
                        "Gain_over_consensus": "0.0",
                        "empty_followed": int(image == "p000/slice_0" and r == 3),
                    }
                )
    return rows


def write_config(root: Path, value, seeds=(0, 1), data_seeds=(0, 1), seed_offset: float = 0.01) -> Path:
    """One configuration: a run per (training seed, data seed); seed s adds (s - mean seed) * seed_offset, so the
    runs' mean per pair is value(...) exactly while single runs differ."""
    centre = float(np.mean(seeds))
    for s in seeds:
        for d in data_seeds:
            shifted = lambda ds, im, f, t, s=s: value(ds, im, f, t) + (s - centre) * seed_offset
            # an earlier evaluation (epoch 2) and a val split in the same file: neither may be used
            rows = rows_for(d, lambda *k: 0.0, epoch=2) + rows_for(d, lambda *k: 0.0, split="val")
            write_run(root / f"run_s{s}_d{d}", rows + rows_for(d, shifted), seed=s, data_seed=d)
    return root


def compare(tmp_path: Path, a: Path, b: Path, *extra: str) -> paired.Comparison:
    return tables.main(["-compare", str(a), str(b), "-out", str(tmp_path / "out"), *extra])


def test_known_difference_mean_interval_and_counts(tmp_path: Path, capsys) -> None:
    """B = A - 0.05 - image noise (mean 0 over images): the mean difference is 0.05 at every round, the interval
    holds 0.05 and not 0; images of the two data seeds are kept apart (48 clusters), seeds averaged (pairs 192)."""
    a = write_config(tmp_path / "A", base_value)
    b = write_config(tmp_path / "B", lambda d, im, f, t: base_value(d, im, f, t) - 0.05 - IMAGE_NOISE[im])
    c = compare(tmp_path, a, b, "-rounds", "all")
    assert [r.round for r in c.results] == [1, 2, 3] and [r.clicks for r in c.results] == [0, 1, 2]
    for r in c.results:
        assert r.diff == pytest.approx(0.05, abs=1e-12)
        assert r.low < 0.05 < r.high and r.low > 0
        assert (r.images, r.pairs) == (2 * N_IMAGES, 2 * N_IMAGES * N_RATERS)
        # Oracle: the normal approximation of the interval for equal-size clusters, 1.96 * sd(cluster means) / sqrt(K);
        # the cluster means are 0.05 -+ 0.03 (noise), so sd = 0.03 exactly.
        half = 1.96 * 0.03 / np.sqrt(2 * N_IMAGES)
        assert (r.high - r.low) / 2 == pytest.approx(half, rel=0.2)
        mean_a = np.mean([base_value(d, im, f, r.round) for d in (0, 1) for im in IMAGE_NOISE for f in range(4)])
        assert r.mean_a == pytest.approx(mean_a, abs=1e-12) and r.mean_b == pytest.approx(mean_a - 0.05, abs=1e-12)
    printed = capsys.readouterr().out
    assert printed.strip() == (tmp_path / "out" / "compare.md").read_text().strip()
    assert "| 1 | 0 |" in printed and "+0.050 | [+0.0" in printed
    with (tmp_path / "out" / "compare.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["round"]) for r in rows] == [1, 2, 3]
    assert float(rows[0]["diff"]) == pytest.approx(0.05) and rows[0]["images"] == "48" and rows[0]["pairs"] == "192"
    first = (tmp_path / "out" / "compare.csv").read_text()
    compare(tmp_path, a, b, "-rounds", "all")  # a fixed bootstrap seed: the same numbers again
    assert (tmp_path / "out" / "compare.csv").read_text() == first


def test_no_difference_interval_contains_zero(tmp_path: Path) -> None:
    a = write_config(tmp_path / "A", base_value, data_seeds=(0,))
    b = write_config(tmp_path / "B", lambda d, im, f, t: base_value(d, im, f, t) + IMAGE_NOISE[im], data_seeds=(0,))
    c = compare(tmp_path, a, b)
    assert [r.round for r in c.results] == [1, 3]  # default rounds 1,3,last with 3 rounds
    for r in c.results:
        assert r.diff == pytest.approx(0.0, abs=1e-12)
        assert r.low < 0 < r.high
        assert (r.images, r.pairs) == (N_IMAGES, N_IMAGES * N_RATERS)


def three_images(tmp_path: Path, diffs: dict[str, list[float]]) -> tuple[Path, Path]:
    """A run pair with one round: A = 0.5 everywhere, B = 0.5 - diff for (image, followed) from `diffs`."""
    rows_a, rows_b = [], []
    for image, ds in diffs.items():
        for f, d in enumerate(ds):
            row = {"epoch": 1, "split": "test", "mode": "AESPA", "round": 1, "clicks": 0, "image": image}
            row |= {"followed": f, "Dice": "0", "Gain_over_consensus": "0", "empty_followed": 0}
            rows_a.append({**row, "Dice_follow": "0.5"})
            rows_b.append({**row, "Dice_follow": repr(0.5 - d)})
    return write_run(tmp_path / "A", rows_a), write_run(tmp_path / "B", rows_b)


def test_three_images_equal_means_give_a_zero_width_interval(tmp_path: Path) -> None:
    """Each image's followed-rater differences vary, but every image's mean is 0.2: whichever images a resample
    draws, its mean is 0.2, so the image-level interval is [0.2, 0.2] (a row-level one would not be)."""
    a, b = three_images(tmp_path, {"x": [0.1, 0.3], "y": [0.2, 0.2], "z": [0.0, 0.4]})
    (r,) = compare(tmp_path, a, b).results
    assert (r.diff, r.images, r.pairs) == (pytest.approx(0.2), 3, 6)
    assert r.low == pytest.approx(0.2, abs=1e-12) and r.high == pytest.approx(0.2, abs=1e-12)


def test_three_images_bounds_are_the_extreme_image_means(tmp_path: Path) -> None:
    """Image means 0.2 (x), 0.2 (y), 0.6 (z), two pairs each; pair mean (0+0.4+0.2+0.2+0.5+0.7)/6 = 1/3.
    A resample of 3 images has a mean in [0.2, 0.6]; it is 0.2 when it draws no z (prob (2/3)^3 = 0.30) and 0.6
    when it draws z three times (prob 1/27 = 0.037), both above 2.5 %: the interval is exactly [0.2, 0.6].
    Resampling rows instead of images would reach below 0.2 (rows 0.0 exist)."""
    a, b = three_images(tmp_path, {"x": [0.0, 0.4], "y": [0.2, 0.2], "z": [0.5, 0.7]})
    (r,) = compare(tmp_path, a, b, "-bootstrap", "10000").results  # 370 expected all-z draws, 250 needed
    assert r.diff == pytest.approx(1 / 3)
    assert r.low == pytest.approx(0.2, abs=1e-12) and r.high == pytest.approx(0.6, abs=1e-12)


def test_cluster_bootstrap_weights_pairs_and_is_seeded() -> None:
    """Clusters of 1 and 3 pairs (diffs 1 and 0,0,0): resample means are 1 (aa, p 1/4), 1/4 (ab) or 0 (bb)."""
    diffs, clusters = np.array([1.0, 0.0, 0.0, 0.0]), np.array(["a", "b", "b", "b"])
    mean, low, high = paired.cluster_bootstrap(diffs, clusters, 4000)
    assert (mean, low, high) == (0.25, 0.0, 1.0)
    other = paired.cluster_bootstrap(np.array([0.3, 0.1, 0.8, 0.4]), np.array([0, 1, 2, 3]), 500)
    assert other == paired.cluster_bootstrap(np.array([0.3, 0.1, 0.8, 0.4]), np.array([0, 1, 2, 3]), 500)


def test_empty_filter(tmp_path: Path) -> None:
    """-empty nonempty drops the one (image, followed) pair whose followed mask is empty; -empty empty keeps it."""
    a = write_config(tmp_path / "A", base_value, seeds=(0,), data_seeds=(0,))
    b = write_config(tmp_path / "B", lambda *k: base_value(*k) - 0.1, seeds=(0,), data_seeds=(0,))
    (r,) = compare(tmp_path, a, b, "-rounds", "2", "-empty", "nonempty").results
    assert (r.pairs, r.images) == (N_IMAGES * N_RATERS - 1, N_IMAGES)
    (r,) = compare(tmp_path, a, b, "-rounds", "2", "-empty", "empty").results
    assert (r.pairs, r.images, r.mean_a) == (1, 1, pytest.approx(base_value(0, "p000/slice_0", 3, 2)))


def one_line(tmp_path: Path, *argv: str) -> str:
    with pytest.raises(InputError, match="^[^\n]*$") as err:
        tables.main([*argv, "-out", str(tmp_path / "out")])
    return str(err.value)


def test_refusals_are_one_line(tmp_path: Path) -> None:
    a = write_config(tmp_path / "A", base_value, seeds=(0,), data_seeds=(0, 1))
    b = write_config(tmp_path / "B", base_value, seeds=(0,), data_seeds=(0,))
    # B lacks data seed 1: 24 images x 4 raters x rounds {1, 3} only in A
    message = one_line(tmp_path, "-compare", str(a), str(b))
    assert f"{N_IMAGES * N_RATERS * 2} (data_seed, image, followed, round) rows only in A and 0 only in B" in message
    assert "-metric Dice_folow: not a metric column" in one_line(
        tmp_path, "-compare", str(a), str(a), "-metric", "Dice_folow"
    )
    assert "-metric image" in one_line(tmp_path, "-compare", str(a), str(a), "-metric", "image")
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "args.json").write_text("{}")
    assert f"{bare}: no per_image.csv" in one_line(tmp_path, "-compare", str(a), str(bare))
    spa = write_run(
        tmp_path / "spa", [{**row, "followed": -1} for row in rows_for(0, base_value) if row["followed"] == 0]
    )
    assert "no (data_seed, image, followed, round) in common" in one_line(tmp_path, "-compare", str(b), str(spa))
    write_run(tmp_path / "mixed" / "one", rows_for(0, base_value))
    write_run(tmp_path / "mixed" / "two", rows_for(0, base_value), n_clusters=2)
    assert "2 configurations (they differ in n_clusters)" in one_line(
        tmp_path, "-compare", str(a), str(tmp_path / "mixed")
    )
    shifted = write_run(tmp_path / "shifted", [{**row, "clicks": row["round"]} for row in rows_for(0, base_value)])
    assert "has 0 clicks" in one_line(tmp_path, "-compare", str(b), str(shifted))
    assert "-rounds 4: not in" in one_line(tmp_path, "-compare", str(b), str(shifted), "-rounds", "4")
    assert "A and B share run folders" in one_line(tmp_path, "-compare", str(a), str(a))
    assert "-bootstrap" in one_line(tmp_path, "-compare", str(a), str(a), "-bootstrap", "10")
    assert "-metric: only with -compare" in one_line(tmp_path, str(a), "-metric", "Dice")
    assert "not both" in one_line(tmp_path, str(a), "-compare", str(a), str(b))


def test_cli_error_exits_2_with_one_line(tmp_path: Path) -> None:
    a = write_config(tmp_path / "A", base_value, seeds=(0,), data_seeds=(0,))
    argv = ["tables.py", "-compare", str(a), str(tmp_path / "nope"), "-out", str(tmp_path / "o")]
    proc = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {tmp_path / 'nope'}: no such folder"


def test_gain_is_the_paired_difference_of_the_last_and_first_rounds(tmp_path):
    """base_value rises by exactly 0.05 per round for every pair, and the training-seed offsets cancel in the
    average: round 3 - round 1 = 0.10 with a zero-width interval; round 2 - round 1 = 0.05."""
    a = write_config(tmp_path / "A", base_value)
    r = tables.main(["-gain", str(a), "-rounds", "1,3", "-out", str(tmp_path / "out")])
    assert (r.diff, r.low, r.high) == pytest.approx((0.10, 0.10, 0.10), abs=1e-9)
    assert r.images == 2 * N_IMAGES and r.pairs == 2 * N_IMAGES * N_RATERS
    assert tables.main(["-gain", str(a), "-rounds", "1,2", "-out", str(tmp_path / "o2")]).diff == pytest.approx(0.05)
    assert "round 3 (2 clicks) - round 1: +0.100" in (tmp_path / "out" / "gain.md").read_text()
    assert "FIRST < LAST" in one_line(tmp_path, "-gain", str(a), "-rounds", "3,1")


def test_gain_pairs_within_runs_whose_targets_differ(tmp_path):
    """SPA's own protocol draws the target per run (followed -1): two training seeds disagree on empty_followed.
    -compare refuses to pair such runs; -gain differences within each run: seed 0 rises 0.10 and seed 1 0.20 from
    round 1 to 3 on every pair, so the gain is 0.15 exactly."""
    for s, step in ((0, 0.05), (1, 0.10)):
        rows = rows_for(0, lambda d, im, f, t, step=step: 0.3 + step * t)
        for row in rows:
            row["empty_followed"] = s  # the runs' targets differ
        write_run(tmp_path / "A" / f"run{s}", rows, seed=s)
    r = tables.main(["-gain", str(tmp_path / "A"), "-rounds", "1,3", "-out", str(tmp_path / "out")])
    assert (r.diff, r.low, r.high) == pytest.approx((0.15, 0.15, 0.15), abs=1e-9)
    assert "disagree on the clicks or empty_followed" in one_line(
        tmp_path, "-compare", str(tmp_path / "A"), str(tmp_path / "A")
    )
    assert "use -empty all" in one_line(tmp_path, "-gain", str(tmp_path / "A"), "-rounds", "1,3", "-empty", "nonempty")
