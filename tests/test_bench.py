"""bench.py prints one JSON object with the timings SPEC §11 names."""

from __future__ import annotations

import json

import pytest
from conftest import tiny_run_args

import bench


def test_bench_prints_the_timings(synthetic_root, tmp_path, capsys):
    result = bench.main(tiny_run_args(synthetic_root, tmp_path, "-repeats", "1", "-warmup", "0", "-b", "2", "-w", "0"))
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == result
    for key in ("train_step_s", "val_batch_s", "val_batch_s_no_reuse", "images_per_s", "peak_mem_mb"):
        assert result[key] > 0, key
    assert 0.0 < result["overhead_share"] < 1.0
    assert result["images_per_s"] == pytest.approx(2 / result["train_step_s"], rel=1e-2)
