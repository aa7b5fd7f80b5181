"""Runs that survive (issue 16): resume keeps the run's settings and record, repairs what a kill left, is exact
with DataLoader workers; bad flags and files are one line before anything is written."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_run_args
from PIL import Image

import train
import val
from analysis.run_files import read_metrics
from utils import InputError

ROOT = Path(__file__).resolve().parents[1]


def last_checkpoint(run: str | Path) -> Path:
    return Path(run) / "Model" / "checkpoint_last.pth"


def rows(run: str | Path) -> list[dict]:
    return read_metrics(Path(run) / "metrics.jsonl")


def test_resume_continues_the_run_as_it_was(synthetic_root, tmp_path):
    first = train.main(tiny_run_args(synthetic_root, tmp_path, "-max_train_batches", "1", "-noc_clicks", "0"))
    run = Path(first["run_dir"])
    args_before = (run / "args.json").read_bytes()
    # no other flag: not the defaults (synthetic data, -b 8, 6 clicks) but the run's own (LIDC tree, -b 4, 3 clicks)
    train.main(["-resume", str(last_checkpoint(run)), "-epochs", "2"])
    log = (run / "Log" / "log.txt").read_text()
    assert log.count(f"data LIDC at {synthetic_root}") == 2
    assert {r["round"] for r in rows(run) if r["epoch"] == 2} == {1, 2, 3}
    assert (run / "args.json").read_bytes() == args_before  # the run's record is never rewritten
    record = json.loads((run / "resumes.jsonl").read_text())
    assert record["after_epoch"] == 1 and record["changed"] == {"epochs": {"from": 1, "to": 2}}
    assert "-epochs 1 -> 2" in log


def test_resume_refuses_flags_that_change_the_run_and_runs_with_nothing_to_do(synthetic_root, tmp_path):
    first = train.main(tiny_run_args(synthetic_root, tmp_path, "-max_train_batches", "1", "-noc_clicks", "0"))
    ckpt = str(last_checkpoint(first["run_dir"]))
    with pytest.raises(InputError, match="-lr 0.001 differs from the run's 0.0001"):
        train.main(["-resume", ckpt, "-epochs", "2", "-lr", "1e-3"])
    with pytest.raises(InputError, match="-dataset synthetic differs from the run's LIDC"):
        train.main(["-resume", ckpt, "-epochs", "2", "-dataset", "synthetic"])
    with pytest.raises(InputError, match="nothing left to do, the run has trained 1 of 1 epochs"):
        train.main(["-resume", ckpt])
    assert not (Path(first["run_dir"]) / "resumes.jsonl").exists()


def test_val_py_takes_the_data_of_the_checkpoints_run(synthetic_root, tmp_path):
    first = train.main(tiny_run_args(synthetic_root, tmp_path, "-max_train_batches", "1", "-noc_clicks", "0"))
    out = val.main(["-weights", str(last_checkpoint(first["run_dir"])), "-log_dir", str(tmp_path / "v"),
                    "-noc_clicks", "0", "-w", "0"])  # fmt: skip
    assert len(out) == 6  # the evaluation's own protocol (6 rounds), on the run's LIDC tree
    log = next((tmp_path / "v").glob("*_val_*/Log/log.txt")).read_text()
    assert f"from the checkpoint's run: -dataset LIDC, -data_path {synthetic_root}" in log


def test_a_half_written_line_and_later_epochs_are_cut_on_resume(synthetic_root, tmp_path):
    """A kill while an epoch's rows were written (before its checkpoint was saved) leaves a partial line and
    rows of an epoch the checkpoint does not know: the resumed run writes every (split, epoch, round) once."""
    args = tiny_run_args(synthetic_root, tmp_path, "-max_train_batches", "1", "-noc_clicks", "0", "-epochs", "2")
    straight = train.main(args + ["-exp_name", "straight"])
    stopped = train.main(tiny_run_args(synthetic_root, tmp_path, "-max_train_batches", "1", "-noc_clicks", "0",
                                       "-exp_name", "stopped"))  # fmt: skip
    run = Path(stopped["run_dir"])
    epoch2 = [r for r in rows(straight["run_dir"]) if r["epoch"] == 2]
    with (run / "metrics.jsonl").open("a") as f:  # epoch 2's rows written, then killed mid-line
        f.write("".join(json.dumps(r) + "\n" for r in epoch2[:2]) + json.dumps(epoch2[2])[:40])
    shutil.copy(last_checkpoint(run), run / "Model" / ".checkpoint_last.pth.0badcafe.tmp")  # killed while saving
    train.main(["-resume", str(last_checkpoint(run)), "-epochs", "2"])
    log = (run / "Log" / "log.txt").read_text()
    assert "metrics.jsonl: cut a partial last line" in log and "metrics.jsonl: dropped 2 rows of epoch 2" in log
    assert not list((run / "Model").glob(".*.tmp")) and ".checkpoint_last.pth.0badcafe.tmp" in log
    resumed = rows(run)
    keys = [(r["split"], r["epoch"], r["round"]) for r in resumed]
    assert len(keys) == len(set(keys))
    assert [r for r in resumed if r["split"] == "train"] == [
        r for r in rows(straight["run_dir"]) if r["split"] == "train"
    ]


@pytest.mark.slow
def test_resume_with_workers_is_exact(synthetic_root, tmp_path):
    common = ("-max_train_batches", "2", "-noc_clicks", "0", "-w", "2", "-val_freq", "1")
    straight = train.main(tiny_run_args(synthetic_root, tmp_path, *common, "-epochs", "2", "-exp_name", "straight"))
    stopped = train.main(tiny_run_args(synthetic_root, tmp_path, *common, "-epochs", "1", "-exp_name", "stopped"))
    train.main(["-resume", str(last_checkpoint(stopped["run_dir"])), "-epochs", "2"])
    a = torch.load(last_checkpoint(straight["run_dir"]), weights_only=True)["model"]
    b = torch.load(last_checkpoint(stopped["run_dir"]), weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    train_rows = lambda run: [r for r in rows(run) if r["split"] == "train"]  # noqa: E731
    assert train_rows(straight["run_dir"]) == train_rows(stopped["run_dir"])
    assert [r for r in rows(straight["run_dir"]) if r["split"] == "test"] == [
        r for r in rows(stopped["run_dir"]) if r["split"] == "test" and r["epoch"] == 2
    ]


def run_cli(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)  # fmt: skip


@pytest.mark.parametrize(
    "script, args, fragment",
    [
        ("train.py", ["-log_dir", "a_file"], "-log_dir a_file: a_file is a file"),
        ("train.py", ["-log_dir", "a_file/runs"], "a_file is a file, not a folder"),
        ("val.py", ["-log_dir", "a_file", "-mode", "consensus"], "-log_dir a_file"),
        ("train.py", ["-lr", "nan"], "-lr: must be a finite positive number"),
        ("train.py", ["-lr", "inf"], "-lr: must be a finite positive number"),
        ("train.py", ["-device", "foo"], "-device: 'foo' is not a device"),
        ("train.py", ["-seed", str(2**70)], "-seed: must be in 0.."),
        ("bench.py", ["-repeats", "0"], "-repeats must be >= 1"),
    ],
    ids=["log_dir-file", "log_dir-under-file", "val-log_dir", "lr-nan", "lr-inf", "device", "seed", "repeats"],
)
def test_bad_flags_are_one_line_and_write_nothing(tmp_path, script, args, fragment):
    (tmp_path / "a_file").write_text("not a folder")
    proc = run_cli(script, *args, cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and fragment in lines[0], proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]  # no run folder, no data generated


def test_a_corrupt_test_image_is_found_before_training(synthetic_root, tmp_path):
    tree = tmp_path / "tree"
    shutil.copytree(synthetic_root, tree)
    bad = sorted((tree / "test" / "images").rglob("*.png"))[0]
    bad.write_bytes(bad.read_bytes()[:-30])  # truncated: the header survives, the end does not
    with pytest.raises(InputError, match=str(bad)):
        train.main(tiny_run_args(tree, tmp_path / "logs"))
    assert not (tmp_path / "logs").exists()


def test_library_warnings_reach_the_run_log(synthetic_root, tmp_path):
    tree = tmp_path / "tree"
    shutil.copytree(synthetic_root, tree)
    orphan = tree / "train" / "gt" / "p000" / "nothing_here_l0.png"
    Image.new("L", (128, 128)).save(orphan)  # masks without an image: the loader warns
    out = train.main(tiny_run_args(tree, tmp_path / "logs", "-max_train_batches", "1", "-noc_clicks", "0"))
    assert "with masks but no image ignored" in (Path(out["run_dir"]) / "Log" / "log.txt").read_text()
