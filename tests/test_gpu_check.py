"""gpu_check.sh (issue 35): on a machine without CUDA it says so in one line, runs the CPU parts and writes one JSON
summary; the pieces the GPU checks are made of judge what they should (Dice within the CPU spread, a failed run)."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
import torch

import gpu_check

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU machine's path")
def test_gpu_check_on_a_cpu_machine_says_what_it_skipped_and_runs_the_cpu_parts(tmp_path):
    summary_file = tmp_path / "summary.json"
    proc = subprocess.run(
        ["bash", "gpu_check.sh", "-out", str(summary_file), "-work", str(tmp_path / "work")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    said = [line for line in lines if line.startswith("gpu_check: no CUDA device")]
    assert len(said) == 1 and all(name in said[0] for name in gpu_check.CUDA_CHECKS)
    summary = json.loads(summary_file.read_text())
    assert json.loads(lines[-1]) == summary  # the summary is also the last line printed
    assert summary["skipped"] == list(gpu_check.CUDA_CHECKS) and summary["failed"] == []
    assert summary["ok"] == ["cpu_training", "bench_cpu"]
    training, bench = summary["checks"]["cpu_training"], summary["checks"]["bench_cpu"]
    assert len(training["losses"]) == 2 and all(math.isfinite(x) for x in training["losses"])  # 2 batches
    assert bench["device"] == "cpu" and bench["batch"] == 2 and bench["images_per_s"] > 0


def test_dice_within_the_cpu_spread():
    mean1, std1 = gpu_check.CPU_SPREAD[1]
    mean6, std6 = gpu_check.CPU_SPREAD[6]
    inside = [{"round": 1, "Dice_follow": mean1 - 2 * std1}, {"round": 6, "Dice_follow": mean6 + 2.9 * std6}]
    assert gpu_check.within_spread(inside)["status"] == "ok"
    below = [inside[0], {"round": 6, "Dice_follow": mean6 - 3.1 * std6}]
    result = gpu_check.within_spread(below)
    assert result["status"] == "failed" and result["dice"]["Dice_follow@6"]["within"] is False
    assert gpu_check.within_spread(inside[:1])["status"] == "failed"  # a missing round is not a pass


def test_a_training_check_that_fails_says_why(tmp_path):
    result = gpu_check.training("bad", ["-no_such_flag"], tmp_path)
    assert result["status"] == "failed" and result["reason"].startswith("exit 2: ")
    assert "-no_such_flag" in result["reason"]


def test_statuses_count_each_bench_configuration():
    checks = {
        "parity": {"status": "ok"},
        "bench_gpu": {"a_off": {"status": "ok"}, "a_bf16": {"status": "failed"}},
        "compile": {"status": "skipped"},
    }
    assert gpu_check.statuses(checks) == {
        "ok": ["parity", "bench_gpu.a_off"],
        "failed": ["bench_gpu.a_bf16"],
        "skipped": ["compile"],
    }


@pytest.mark.slow
def test_forward_parity_of_a_device_with_itself_is_exact():
    """The parity check's own path (model, inputs, comparison), on the CPU against itself: no difference at all."""
    result = gpu_check.forward_parity("cpu")
    assert result["status"] == "ok" and result["max_abs_diff"] == 0.0 and result["max_abs_logit"] > 0
