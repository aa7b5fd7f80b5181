"""The command lines users run: docs/training.md's commands verbatim, the published checkpoint, and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from datatrees import write_lidc_tree, write_mbhseg_tree

import train
import val

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"

# docs/training.md, verbatim (the original bash.sh).
COMMANDS = [
    "python train.py -exp_name 'LIDC_SPA' -sam_ckpt ./checkpoint/medsam_vit_b.pth -image_size 128 -b 64 -dataset LIDC -data_path './data/LIDC' -mode SPA",
    "python train.py -exp_name 'LIDC_AESPA' -sam_ckpt ./checkpoint/medsam_vit_b.pth -image_size 128 -b 64 -dataset LIDC -data_path './data/LIDC' -mode AESPA",
    "python train.py -exp_name 'LIDC_SPA' -sam_ckpt ./checkpoint/medsam_vit_b.pth -image_size 128 -b 64 -dataset LIDC -data_path './data/LIDC' -num_samples 24 -n_clusters 4 -n_components 16 -mode SPA",
    "python train.py -exp_name 'MBHSeg_AESPA' -sam_ckpt ./checkpoint/medsam_vit_b.pth -image_size 256 -b 64 -dataset MBHSeg-Binary -data_path './data/MBHSeg-Binary' -mode AESPA",
    "python val.py -sam_ckpt './checkpoint/medsam_vit_b.pth' -weights './checkpoint/checkpoint_aespa_lidc.pth' -image_size 128 -b 1 -dataset LIDC -data_path './data/LIDC' -mode AESPA",
]
# Appended by the test so that each command only starts: one batch of one epoch, two rounds, short NoC, no figures.
SMOKE = [
    "-epochs",
    "1",
    "-max_train_batches",
    "1",
    "-max_val_batches",
    "1",
    "-clicks",
    "2",
    "-noc_clicks",
    "2",
    "-w",
    "0",
    "-plots",
    "none",
]


def constant_state(shapes: dict[str, list[int]], value: float = 0.01) -> dict[str, torch.Tensor]:
    """Full-shape tensors backed by one element each: an official-layout checkpoint of a few KB."""
    return {k: torch.full((1,), value).expand(v) for k, v in shapes.items()}


def reference_checkpoint(seed: int = 0) -> dict:
    """The original project's published container (docs/differences.md#the-published-checkpoint) with random tensors and numpy mixture arrays."""
    shapes = json.loads((DATA / "aespa_reference_state_dict_shapes.json").read_text())
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    w = rng.random(16)
    return {
        "epoch": 100,
        "model": "sam",
        "path_helper": {"prefix": "logs/LIDC_AESPA"},
        "state_dict": {k: torch.randn(v, generator=g) * 0.02 for k, v in shapes.items()},
        "optimizer": {"state": {}, "param_groups": []},
        "EM_weights": w / w.sum(),
        "EM_means": rng.uniform(-100, 100, 16),
        "EM_variances": rng.uniform(0.1, 10, 16),
    }


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A working directory laid out as the README says: ./checkpoint/ and ./data/ (tiny stand-ins)."""
    root = tmp_path_factory.mktemp("work")
    (root / "checkpoint").mkdir()
    shapes = json.loads((DATA / "sam_vit_b_state_dict_shapes.json").read_text())
    torch.save(constant_state(shapes), root / "checkpoint" / "medsam_vit_b.pth")
    torch.save(reference_checkpoint(), root / "checkpoint" / "checkpoint_aespa_lidc.pth")
    write_lidc_tree(root / "data" / "LIDC", n_patients=2, slices=2, raters=4, size=128)  # one patient for validation
    write_mbhseg_tree(root / "data" / "MBHSeg-Binary", n_cases=2, slices=2, raters=3, size=64)
    return root


def argv_of(command: str) -> tuple[str, list[str]]:
    import shlex

    words = shlex.split(command)
    return words[1], words[2:]


@pytest.mark.slow
@pytest.mark.parametrize(
    "command", COMMANDS, ids=["LIDC_SPA", "LIDC_AESPA", "LIDC_SPA_ablation", "MBHSeg_AESPA", "val_published"]
)
def test_spec_commands_parse_and_start(workdir, monkeypatch, command):
    monkeypatch.chdir(workdir)
    script, argv = argv_of(command)
    if script == "train.py":
        out = train.main(argv + SMOKE)
        assert (Path(out["run_dir"]) / "Model" / "checkpoint_last.pth").is_file()
        assert all(np.isfinite(r["loss"]) for r in out["test"])
    else:
        rows = val.main(argv + SMOKE)
        assert len(rows) == 2 and all(np.isfinite(r["Dice_follow"]) for r in rows)


# --- bad input: one line naming it, a non-zero exit, no traceback -----------------------------------------


def run_cli(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["-dataset", "LIDC", "-data_path", "no/such/folder"], ["no/such/folder"]),
        (["-sam_ckpt", "missing/medsam_vit_b.pth"], ["missing/medsam_vit_b.pth", "not found"]),
        (["-dataset", "CHAOS"], ["-dataset", "CHAOS"]),
        (["-image_size", "100"], ["-image_size", "multiple of 16"]),
    ],
    ids=["missing-data", "missing-checkpoint", "wrong-dataset", "bad-size"],
)
def test_bad_input_is_one_line(tmp_path, args, fragments):
    assert_one_line_error(run_cli("train.py", *args, "-log_dir", str(tmp_path / "logs"), cwd=tmp_path), *fragments)


def test_empty_dataset_is_one_line(tmp_path):
    (tmp_path / "LIDC" / "train" / "images").mkdir(parents=True)
    (tmp_path / "LIDC" / "train" / "gt").mkdir(parents=True)
    proc = run_cli(
        "train.py",
        "-dataset",
        "LIDC",
        "-data_path",
        str(tmp_path / "LIDC"),
        "-log_dir",
        str(tmp_path / "logs"),
        cwd=tmp_path,
    )
    assert_one_line_error(proc, str(tmp_path / "LIDC"))


def test_val_without_weights_is_one_line(tmp_path):
    assert_one_line_error(run_cli("val.py", cwd=tmp_path), "-weights")
