"""tables.py: run folders written by hand -> mean ± sample std over seeds of the last epoch's test rows, in
Markdown, CSV and LaTeX, plus one-line errors for bad input."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tables
from analysis.runs import normalise
from utils import InputError

ROOT = Path(__file__).resolve().parents[1]
ROUNDS = 3
# Dice_follow chosen per (num_samples, seed) and round 1..3; NoC@0.90 once per run. Values avoid rounding ties.
DICE_FOLLOW = {
    (12, 0): [0.5012, 0.6131, 0.7043],
    (12, 1): [0.5376, 0.6518, 0.7417],
    (48, 0): [0.5523, 0.7011, 0.8122],
    (48, 1): [0.5901, 0.7282, 0.8368],
}
NOC = {(12, 0): 7.0, (12, 1): 9.0, (48, 0): 4.0, (48, 1): 5.5}


def base_args(**changes) -> dict:
    """A few flags of args.json as train.py writes it."""
    args = {
        "exp_name": "LIDC_SPA",
        "mode": "SPA",
        "dataset": "LIDC",
        "data_path": "./data/LIDC",
        "num_samples": 48,
        "n_clusters": 4,
        "n_components": 16,
        "clicks": ROUNDS,
        "seed": 0,
        "log_dir": "logs_new",
        "device": "auto",
        "resume": None,
        "weights": None,
    }
    args.update(changes)
    return args


def rows_of(epoch: int, split: str, dice_follow: list[float], **extra) -> list[dict]:
    return [
        {
            "epoch": epoch,
            "split": split,
            "mode": "SPA",
            "round": t,
            "clicks": t,
            "loss": 0.1,
            "Dice_follow": v,
            "Dice": v - 0.1,
            **extra,
        }
        for t, v in enumerate(dice_follow, start=1)
    ]


def write_run(folder: Path, args: dict, rows: list[dict]) -> Path:
    folder.mkdir(parents=True)
    (folder / "args.json").write_text(json.dumps(args, indent=2))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


@pytest.fixture()
def logs(tmp_path: Path) -> Path:
    """Two configurations (num_samples 12 / 48) x two seeds. Epoch 1: train + test rows (not the last test);
    epoch 2: train + test rows (the ones to use); epoch 3: train rows only (training went on, no evaluation yet)."""
    root = tmp_path / "logs"
    for (samples, seed), values in DICE_FOLLOW.items():
        rows = rows_of(1, "train", [0.9] * ROUNDS) + rows_of(1, "test", [0.01] * ROUNDS, **{"NoC@0.90": 99.0})
        rows += rows_of(2, "train", [0.8] * ROUNDS) + rows_of(2, "test", values, **{"NoC@0.90": NOC[samples, seed]})
        rows += rows_of(3, "train", [0.95] * ROUNDS)
        args = base_args(exp_name=f"LIDC_SPA_samples{samples}", num_samples=samples, seed=seed, log_dir=f"logs_{seed}")
        write_run(root / f"LIDC_SPA_samples{samples}_2026_01_0{seed + 1}_10_00_00", args, rows)
    return root


def expected(samples: int, column: int) -> tuple[float, float]:
    """Mean and sample std (ddof=1) over the two seeds: column 0..2 = Dice_follow@1..3, 3 = NoC@0.90."""
    values = np.array([(DICE_FOLLOW[samples, s] + [NOC[samples, s]])[column] for s in (0, 1)])
    return float(values.mean()), float(values.std(ddof=1))


def test_table_means_stds_and_files(logs: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    table = tables.main([str(logs), "-metrics", "Dice_follow,NoC@0.90", "-rounds", "1,2,3", "-out", str(out)])
    assert [h for h, _, _ in table.columns] == ["Dice_follow@1", "Dice_follow@2", "Dice_follow@3", "NoC@0.90"]
    assert table.flags == ["num_samples"]  # seed, log_dir and the folder timestamps do not split configurations
    assert [c.label for c in table.configs] == ["LIDC_SPA_samples12", "LIDC_SPA_samples48"]  # names tell them apart
    assert [len(c.runs) for c in table.configs] == [2, 2]
    for i, samples in enumerate((12, 48)):
        for j in range(4):
            mean, std = expected(samples, j)
            assert table.mean[i, j] == pytest.approx(mean, abs=1e-12)
            assert table.std[i, j] == pytest.approx(std, abs=1e-12)

    # hand check of one cell: Dice_follow@3 of num_samples 12 = mean(0.7043, 0.7417), std = |a - b| / sqrt(2)
    assert table.mean[0, 2] == pytest.approx(0.7230)
    assert table.std[0, 2] == pytest.approx(0.0374 / np.sqrt(2))

    markdown = (out / "table.md").read_text()
    assert markdown.strip() == capsys.readouterr().out.strip()
    latex = (out / "table.tex").read_text()
    assert "\\toprule" in latex and "\\bottomrule" in latex and "Dice\\_follow@3" in latex
    assert "configuration & num\\_samples & $n$ & Dice\\_follow@1" in latex  # the differing flag is a column
    assert "LIDC\\_SPA\\_samples12 & 12 & 2 & " in latex
    assert "| configuration | num_samples | n | Dice_follow@1 |" in markdown
    for samples in (12, 48):
        for j in range(4):
            mean, std = expected(samples, j)
            assert f"{mean:.3f} ± {std:.3f}" in markdown
            assert f"{mean:.3f} $\\pm$ {std:.3f}" in latex
    with (out / "table.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["num_samples"] for r in rows] == ["12", "48"] and [r["n"] for r in rows] == ["2", "2"]
    assert rows[0]["epochs"] == "2;2"
    for row, samples in zip(rows, (12, 48)):
        for j, header in enumerate(["Dice_follow@1", "Dice_follow@2", "Dice_follow@3", "NoC@0.90"]):
            mean, std = expected(samples, j)
            assert float(row[f"{header}_mean"]) == pytest.approx(mean, abs=1e-12)
            assert float(row[f"{header}_std"]) == pytest.approx(std, abs=1e-12)
    assert (out / "round_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_defaults_single_run_and_ignored_flags(tmp_path: Path, capsys) -> None:
    """Default rounds are 1, 3 and the last; default metrics missing from every run are left out with a note; runs
    differing only in ignored flags, a `_seed<N>` suffix and a timestamped checkpoint path are one configuration;
    a configuration of one run shows no ± and an empty CSV std."""
    rows = rows_of(1, "test", [0.4, 0.5, 0.6, 0.7], **{"NoC@0.90": 3.0})
    for seed in (0, 1):
        weights = f"logs_new/LIDC_SPA_seed{seed}_2026_01_0{seed + 1}_10_00_00/Model/checkpoint_best.pth"
        args = base_args(exp_name=f"LIDC_SPA_seed{seed}", seed=seed, weights=weights, device=f"cuda:{seed}", w=seed)
        write_run(tmp_path / f"val_{seed}", args, rows)
    write_run(tmp_path / "other", base_args(n_clusters=2), rows_of(1, "test", [0.25, 0.5, 0.75, 0.8]))
    out = tmp_path / "out"
    table = tables.main([str(tmp_path / "val_0"), str(tmp_path / "val_1"), str(tmp_path / "other"), "-out", str(out)])
    assert [h for h, _, _ in table.columns] == [
        "Dice_neutral@1",
        "Dice_neutral@3",
        "Dice_neutral@4",
        "Dice_follow@1",
        "Dice_follow@3",
        "Dice_follow@4",
        "NoC@0.90",
    ]
    assert "no run has GED; left out" in capsys.readouterr().err
    merged = [c for c in table.configs if len(c.runs) == 2]
    assert len(merged) == 1 and merged[0].exp_name == "LIDC_SPA"
    single = next(c for c in table.configs if len(c.runs) == 1)
    assert single.label == "LIDC_SPA (n_clusters=2, weights=None)"
    markdown = (out / "table.md").read_text()
    assert "| LIDC_SPA | 2 | None | 1 | 0.150 | 0.650 | 0.700 | 0.250 | 0.750 | 0.800 | - |" in markdown
    assert "0.500 ± 0.000" in markdown  # two identical seeds: a spread of 0, shown
    with (out / "table.csv").open() as f:
        row = next(r for r in csv.DictReader(f) if r["n"] == "1")
    assert row["Dice_follow@3_mean"] == "0.75" and row["Dice_follow@3_std"] == ""


def test_parent_folder_skips_runs_without_results(logs: Path, tmp_path: Path, capsys) -> None:
    (logs / "just_started").mkdir()
    (logs / "just_started" / "args.json").write_text(json.dumps(base_args()))
    table = tables.main([str(logs), "-metrics", "Dice_follow", "-rounds", "last", "-out", str(tmp_path / "o")])
    assert sum(len(c.runs) for c in table.configs) == 4
    assert "skipped" in capsys.readouterr().err


def one_error(tmp_path: Path, *argv: str) -> str:
    """Run tables.py as users do; it must exit 2 with one `error:` line and no traceback."""
    proc = subprocess.run(
        [sys.executable, "tables.py", *argv, "-out", str(tmp_path / "o")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr
    return lines[0]


def test_cli_missing_folder(tmp_path: Path) -> None:
    assert str(tmp_path / "nope") in one_error(tmp_path, str(tmp_path / "nope"))


def test_cli_malformed_metrics_names_file_and_line(logs: Path, tmp_path: Path) -> None:
    run = sorted(logs.iterdir())[0]
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[4] = lines[4][:-5]  # a truncated JSON object on line 5
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    message = one_error(tmp_path, str(logs))
    assert f"{run / 'metrics.jsonl'} line 5" in message


@pytest.mark.parametrize(
    "case, expect",
    [
        ("not_a_run", "no args.json"),
        ("no_metrics", "no metrics.jsonl"),
        ("no_test_rows", "no test rows"),
        ("unknown_metric", "-metrics Dice_folow"),
        ("round_beyond", "-rounds 7"),
        ("bad_row", "line 2"),
    ],
)
def test_bad_input_raises_input_error(tmp_path: Path, case: str, expect: str) -> None:
    run = tmp_path / "run"
    argv = [str(run), "-out", str(tmp_path / "o")]
    if case == "not_a_run":
        run.mkdir()
    elif case == "no_metrics":
        run.mkdir()
        (run / "args.json").write_text(json.dumps(base_args()))
    elif case == "no_test_rows":
        write_run(run, base_args(), rows_of(1, "train", [0.5] * ROUNDS))
    elif case == "bad_row":
        write_run(run, base_args(), rows_of(1, "test", [0.5]) + [{"epoch": "one", "split": "test", "round": 1}])
    else:
        write_run(run, base_args(), rows_of(1, "test", [0.5] * ROUNDS))
        argv += ["-metrics", "Dice_folow"] if case == "unknown_metric" else ["-rounds", "1,7"]
    with pytest.raises(InputError, match="^[^\n]*$") as err:
        tables.main(argv)
    assert expect in str(err.value)


def add_broken_runs(logs: Path) -> list[Path]:
    """Two unreadable runs beside the good ones: args.json cut short, and a metrics.jsonl line cut short."""
    bad_args = write_run(
        logs / "bad_args",
        base_args(exp_name="LIDC_SPA_samples12", num_samples=12, seed=5),
        rows_of(2, "test", [0.0] * ROUNDS, **{"NoC@0.90": 1.0}),
    )
    (bad_args / "args.json").write_text('{"exp_name": "LIDC_SPA_samples12", "num_')
    bad_row = write_run(
        logs / "bad_row",
        base_args(exp_name="LIDC_SPA_samples48", num_samples=48, seed=6),
        rows_of(2, "test", [0.0] * ROUNDS, **{"NoC@0.90": 1.0}),
    )
    with (bad_row / "metrics.jsonl").open("a") as f:
        f.write('{"epoch": 2, "split": "te\n')
    return [bad_args, bad_row]


def test_skip_bad_lists_unreadable_runs_and_tabulates_the_others(logs: Path, tmp_path: Path, capsys) -> None:
    bad = add_broken_runs(logs)
    argv = [str(logs), "-metrics", "Dice_follow,NoC@0.90", "-rounds", "1,2,3", "-out", str(tmp_path / "o")]
    with pytest.raises(InputError, match="^[^\n]*$"):  # without the flag a broken run stays an error
        tables.main(argv)
    table = tables.main(argv + ["-skip_bad"])
    err = capsys.readouterr().err
    assert f"skipped {bad[0]}: {bad[0] / 'args.json'}" in err
    assert f"skipped {bad[1]}: {bad[1] / 'metrics.jsonl'} line 4" in err
    assert [len(c.runs) for c in table.configs] == [2, 2]  # the good runs only, values as without the broken ones
    for i, samples in enumerate((12, 48)):
        for j in range(4):
            mean, std = expected(samples, j)
            assert table.mean[i, j] == pytest.approx(mean, abs=1e-12)
            assert table.std[i, j] == pytest.approx(std, abs=1e-12)


def test_skip_bad_with_every_run_broken_is_one_error(tmp_path: Path) -> None:
    """The skipped runs are listed (why each is unreadable), then one `error:` line; exit 2, no traceback."""
    bad = add_broken_runs(tmp_path / "logs")
    argv = [str(tmp_path / "logs"), "-skip_bad", "-out", str(tmp_path / "o")]
    proc = subprocess.run([sys.executable, "tables.py", *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    notes = sorted(lines[:-1])  # the JSON decoder's own words after these prefixes vary with the Python version
    assert len(notes) == 2
    assert notes[0].startswith(f"note: skipped {bad[0]}: {bad[0] / 'args.json'}: not readable as JSON ("), notes[0]
    assert notes[1].startswith(f"note: skipped {bad[1]}: {bad[1] / 'metrics.jsonl'} line 4: not valid JSON ("), notes[1]
    assert lines[-1] == f"error: {tmp_path / 'logs'}: no run folder with test rows (2 unreadable run folders skipped)"
    assert not (tmp_path / "o").exists()


def test_training_and_data_seeds_form_one_configuration(tmp_path: Path, capsys) -> None:
    """Four runs: seeds 0/1 x data seeds 0/1, data_path data/synthetic vs data/synthetic_seed1 -> one configuration,
    mean ± sample std over the four; a run with another n_clusters stays apart."""
    values = {(0, 0): 0.50, (1, 0): 0.54, (0, 1): 0.60, (1, 1): 0.64}  # (seed, data_seed) -> Dice_follow@1
    for (seed, data_seed), v in values.items():
        path = "./data/synthetic" + (f"_seed{data_seed}" if data_seed else "")
        args = base_args(exp_name="syn", dataset="LIDC", data_path=path, seed=seed, data_seed=data_seed)
        write_run(tmp_path / f"syn_s{seed}_d{data_seed}", args, rows_of(1, "test", [v, v + 0.1]))
    other = base_args(exp_name="syn", data_path="./data/synthetic", n_clusters=2, seed=0, data_seed=1)
    write_run(tmp_path / "other", other, rows_of(1, "test", [0.3, 0.4]))
    out = tmp_path / "out"
    table = tables.main([str(tmp_path), "-metrics", "Dice_follow", "-rounds", "1,2", "-out", str(out)])
    assert table.flags == ["n_clusters"]
    assert [len(c.runs) for c in table.configs] == [1, 4]
    # by hand: mean 0.57; deviations -0.07, -0.03, 0.03, 0.07 -> sum of squares 0.0116, ddof 1
    assert table.mean[1, 0] == pytest.approx(0.57) and table.std[1, 0] == pytest.approx(np.sqrt(0.0116 / 3))
    assert table.mean[1, 1] == pytest.approx(0.67) and table.std[1, 1] == pytest.approx(np.sqrt(0.0116 / 3))
    assert table.mean[0, 0] == pytest.approx(0.3) and np.isnan(table.std[0, 0])
    assert "share a seed" not in capsys.readouterr().err  # seed 0 twice, but with different data seeds
    markdown = (out / "table.md").read_text()
    assert "| syn | 4 | 4 | 0.570 ± 0.062 | 0.670 ± 0.062 |" in markdown  # n_clusters, n (runs), cells
    with (out / "table.csv").open() as f:
        row = next(r for r in csv.DictReader(f) if r["n"] == "4")
    assert sorted(row["seeds"].split(";")) == ["0", "0", "1", "1"]
    assert sorted(row["data_seeds"].split(";")) == ["0", "0", "1", "1"]


def test_plot_follow_matrix_writes_a_png_of_the_documented_size(tmp_path: Path) -> None:
    """3 raters, 2 rounds: panels of max(2.5, 1.25 + 0.5 * 3) = 2.75 in, width 2 * 2.75 + 1 = 6.5 in, height
    2.75 + 1 = 3.75 in, at 100 dpi -> 650 x 375 px. 7 rounds of 4 raters wrap to 2 rows of 6: 3.25 * 6 + 1 = 20.5 in
    by 3.25 * 2 + 1 = 7.5 in."""
    from PIL import Image

    from engine.figures import plot_follow_matrix

    def matrix(r: int, rounds: int) -> dict:
        m = [[0.9 if i == j else 0.4 for j in range(r)] for i in range(r)]
        m[0][1] = None  # no pair: drawn grey
        entries = [{"round": t, "clicks": t - 1, "matrix": m, "counts": [[1] * r] * r} for t in range(1, rounds + 1)]
        return {"epoch": 3, "split": "test", "raters": [f"rater {k}" for k in range(r)], "rounds": entries}

    plot_follow_matrix(matrix(3, 2), tmp_path / "a.png")
    plot_follow_matrix(matrix(4, 7), tmp_path / "b.png")
    with Image.open(tmp_path / "a.png") as a, Image.open(tmp_path / "b.png") as b:
        assert (a.format, a.size, b.size) == ("PNG", (650, 375), (2050, 750))
    bad = matrix(3, 1)
    bad["rounds"][0]["matrix"] = [[0.5, 0.5], [0.5, 0.5]]
    with pytest.raises(ValueError, match="expected 3x3"):
        plot_follow_matrix(bad, tmp_path / "c.png")


@pytest.mark.parametrize(
    "name, expect",
    [
        ("default_seed0", "default"),
        ("default_seed2_data1", "default"),  # bash_results.sh's names: training then data seed
        ("click_editor_data_seed1", "click_editor"),
        ("blind_paint_seed1_data1_2026_12_03_14_29_09", "blind_paint"),
        ("data/synthetic_seed1", "data/synthetic"),
        ("logs/x_seed3/Model/checkpoint_best.pth", "logs/x/Model/checkpoint_best.pth"),
        ("spa_seed0_aespa_protocol", "spa_seed0_aespa_protocol"),  # seeds only at the end count
        ("my_data", "my_data"),
        ("data7x", "data7x"),
    ],
)
def test_seed_suffixes_are_stripped_from_names_and_paths(name: str, expect: str) -> None:
    assert normalise(name) == expect


# --- runs whose final test is incomplete, undefined values, -gain on one round -------------------------------------


def finished_run(folder: Path, summary: dict | None, **args) -> Path:
    """A run whose last test rows are of epoch 2, with the given summary.json (None: none)."""
    rows = rows_of(1, "test", [0.1, 0.2]) + rows_of(2, "test", [0.4, 0.5])
    write_run(folder, base_args(**args), rows)
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def test_a_run_whose_final_test_did_not_complete_is_tabulated_with_a_warning_naming_it(tmp_path: Path, capsys) -> None:
    complete = finished_run(tmp_path / "complete", {"best_epoch": 2, "test_epoch": 2})
    unfinished = finished_run(tmp_path / "no_summary", None, seed=1)
    stale = finished_run(tmp_path / "stale", {"best_epoch": 1, "test_epoch": 1}, seed=2)
    table = tables.main(
        [str(complete), str(unfinished), str(stale), "-metrics", "Dice_follow", "-out", str(tmp_path / "o")]
    )
    assert len(table.configs[0].runs) == 3  # tabulated, not refused
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    assert warnings == [
        f"warning: {unfinished}: no summary.json, so its final test did not complete (still training, stopped or "
        "killed, or an older version's run); its test rows of epoch 2 are used; resume the run to complete it",
        f"warning: {stale}: summary.json names test epoch 1, but its test rows are of epoch 2 (a final test "
        "interrupted before summary.json was rewritten?); the rows are used; resume the run to complete it",
    ]


def test_the_validation_split_needs_no_summary(tmp_path: Path, capsys) -> None:
    write_run(tmp_path / "run", base_args(), rows_of(1, "val", [0.4, 0.5]))
    tables.main([str(tmp_path / "run"), "-split", "val", "-metrics", "Dice_follow", "-out", str(tmp_path / "o")])
    assert "warning" not in capsys.readouterr().err


def test_an_undefined_metric_shows_nan_and_a_missing_one_a_dash(tmp_path: Path, capsys) -> None:
    """Dice_soft NaN in both runs (measured, undefined, as Follow_accuracy is where every image has one rater);
    Dice_match absent from one of the two runs (not measured): 'nan' and '-' in Markdown and LaTeX, 'nan' and an
    empty cell in the CSV."""
    for seed in (0, 1):
        extra = {"Dice_soft": float("nan")} | ({"Dice_match": 0.5} if seed == 0 else {})
        finished_run(tmp_path / f"run{seed}", {"test_epoch": 2}, seed=seed)
        rows = rows_of(2, "test", [0.4, 0.5], **extra)
        (tmp_path / f"run{seed}" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert "NaN" in (tmp_path / "run0" / "metrics.jsonl").read_text()  # what json.dumps writes for a NaN
    out = tmp_path / "o"
    table = tables.main([str(tmp_path), "-rounds", "2", "-out", str(out)])
    assert [h for h, _, _ in table.columns] == ["Dice_neutral@2", "Dice_follow@2", "Dice_match@2", "Dice_soft@2"]
    assert "| LIDC_SPA | 2 | 0.400 ± 0.000 | 0.500 ± 0.000 | - | nan |" in (out / "table.md").read_text()
    assert "& - & nan \\\\" in (out / "table.tex").read_text()
    with (out / "table.csv").open() as f:
        row = next(csv.DictReader(f))
    assert (row["Dice_soft@2_mean"], row["Dice_soft@2_std"]) == ("nan", "")  # no spread of undefined values
    assert (row["Dice_match@2_mean"], row["Dice_match@2_std"]) == ("", "")


def test_gain_of_a_run_with_one_round_names_what_was_given(tmp_path: Path) -> None:
    run = tmp_path / "A"
    write_run(run, base_args(), rows_of(1, "test", [0.4]))
    (run / "summary.json").write_text(json.dumps({"test_epoch": 1}))
    header = "epoch,split,mode,round,clicks,image,followed,Dice_follow,empty_followed,final"
    (run / "per_image.csv").write_text(f"{header}\n1,test,AESPA,1,0,img0,0,0.4,0,1\n1,test,AESPA,1,0,img1,1,0.6,0,1\n")
    message = one_error(tmp_path, "-gain", str(run))
    one_round = "its test rows have one round only (no click after the first prediction): no gain to measure"
    assert message == f"error: -gain {run}: {one_round}"
    assert "None" not in message
