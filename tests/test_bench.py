"""bench.py prints one JSON object with the timings docs/design.md#stable-entry-points names."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_run_args

import bench
from engine import optim


def test_bench_prints_the_timings(synthetic_root, tmp_path, capsys):
    result = bench.main(tiny_run_args(synthetic_root, tmp_path, "-repeats", "1", "-warmup", "0", "-b", "2", "-w", "0"))
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == result
    for key in ("train_step_s", "val_batch_s", "val_batch_s_no_reuse", "images_per_s", "peak_mem_mb"):
        assert result[key] > 0, key
    assert 0.0 < result["overhead_share"] < 1.0
    assert result["images_per_s"] == pytest.approx(2 / result["train_step_s"], rel=1e-2)


def test_bf16_on_a_cpu_follows_the_detected_capability(monkeypatch):
    """-amp bf16 runs CPU autocast where the CPU has bf16 units (matrix products in bfloat16) and float32 where it
    has none; fp16 stays a CUDA feature."""
    cpu = torch.device("cpu")
    a = torch.randn(4, 4)
    monkeypatch.setattr(optim, "cpu_has_bf16", lambda: True)
    assert optim.effective_amp(cpu, "bf16") == "bf16" and optim.effective_amp(cpu, "fp16") == "off"
    with optim.autocast_context(cpu, "bf16"):
        assert (a @ a).dtype == torch.bfloat16
    monkeypatch.setattr(optim, "cpu_has_bf16", lambda: False)
    assert optim.effective_amp(cpu, "bf16") == "off"
    with optim.autocast_context(cpu, "bf16"):
        assert (a @ a).dtype == torch.float32


@pytest.mark.skipif(not optim.cpu_has_bf16(), reason="this CPU has no bf16 units")
def test_a_bf16_training_step_on_this_cpu(synthetic_root, tmp_path):
    out = bench.main(tiny_run_args(synthetic_root, tmp_path, "-amp", "bf16", "-repeats", "1", "-warmup", "0"))
    assert out["amp"] == "bf16" and out["train_step_s"] > 0
