"""torchrun with the gloo backend on CPU (docs/speed.md): a short training, and a validation whose metrics equal the
single-process ones for the same checkpoint (every test image counted once across ranks)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_run_args

import val
from analysis.run_files import read_metrics
from engine.distributed import choose_device
from utils import InputError

ROOT = Path(__file__).resolve().parents[1]


def torchrun(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}  # two processes on two cores
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(ROOT / script),
        *args,
    ]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_torchrun_training_and_validation_match_a_single_process(synthetic_root, tmp_path):
    # a short distributed training: one run folder, written by rank 0 only, with finite rows
    torchrun(
        "train.py", *tiny_run_args(synthetic_root, tmp_path / "ddp", "-epochs", "1", "-noc_clicks", "2"), cwd=tmp_path
    )
    runs = list((tmp_path / "ddp").iterdir())
    assert len(runs) == 1
    rows = read_metrics(runs[0] / "metrics.jsonl")
    assert {r["split"] for r in rows} == {"train", "test"} and len(rows) == 6

    # the same checkpoint validated by one process and by two: the same metrics
    ckpt = runs[0] / "Model" / "checkpoint_last.pth"
    single = val.main(tiny_run_args(synthetic_root, tmp_path / "single", "-weights", str(ckpt), "-noc_clicks", "2"))
    torchrun(
        "val.py",
        *tiny_run_args(synthetic_root, tmp_path / "two", "-weights", str(ckpt), "-noc_clicks", "2"),
        cwd=tmp_path,
    )
    (two_dir,) = list((tmp_path / "two").iterdir())
    two = read_metrics(two_dir / "metrics.jsonl")
    assert len(two) == len(single) == 3
    for a, b in zip(single, two):
        for key, value in a.items():
            if isinstance(value, float):
                assert b[key] == pytest.approx(value, abs=1e-5), key


@pytest.mark.parametrize(
    "name, local_rank, want",
    [
        ("cpu", None, "cpu"),
        ("cpu", 1, "cpu"),  # gloo ranks share the CPU
        ("auto", 1, "cuda:1" if torch.cuda.is_available() else "cpu"),  # one GPU per torchrun process
        ("cuda:0", 1, "cuda:1" if torch.cuda.is_available() else None),
    ],
)
def test_choose_device_gives_each_rank_its_own_gpu(name, local_rank, want):
    if want is None:  # asking for CUDA where there is none is an input error, not a silent CPU run
        with pytest.raises(InputError, match="CUDA is not available"):
            choose_device(name, local_rank)
    else:
        assert choose_device(name, local_rank) == torch.device(want)
