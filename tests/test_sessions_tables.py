"""tables.py on the session protocol's rows (analysis/sessions_table.py, analysis/paired.py with -positions): a table
by position from hand-written run folders, the per-image protocol's tables unmoved by session rows beside them, and
paired comparisons restricted to positions."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

import tables
from utils import InputError

# Dice_follow of the session protocol per (seed, position) at rounds 1..2; the per-image protocol's rows differ.
SESSIONS = {
    (0, 1): [0.61, 0.81],
    (0, 2): [0.72, 0.86],
    (1, 1): [0.63, 0.83],
    (1, 2): [0.78, 0.90],
}


def rows(seed: int) -> list[dict]:
    out = [
        {"epoch": 3, "split": "test", "mode": "AESPA", "round": t, "clicks": t - 1, "Dice_follow": 0.5, "final": True}
        for t in (1, 2)
    ]
    for (s, position), values in SESSIONS.items():
        if s == seed:
            out += [
                {
                    "epoch": 3,
                    "split": "test",
                    "mode": "AESPA",
                    "round": t,
                    "clicks": t - 1,
                    "Dice_follow": v,
                    "final": True,
                    "protocol": "session",
                    "session_length": 2,
                    "position": position,
                }
                for t, v in enumerate(values, start=1)
            ]
    return out


@pytest.fixture()
def logs(tmp_path: Path) -> Path:
    for seed in (0, 1):
        folder = tmp_path / "logs" / f"mem_seed{seed}_2026_01_01_00_00_0{seed}"
        folder.mkdir(parents=True)
        args = {"exp_name": f"mem_seed{seed}", "mode": "AESPA", "dataset": "synthetic", "seed": seed, "memory": "style"}
        (folder / "args.json").write_text(json.dumps(args))
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(seed)))
        (folder / "summary.json").write_text(json.dumps({"test_epoch": 3}))
    return tmp_path / "logs"


def test_a_table_by_position_averages_the_runs_at_each_position(logs: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    tables.main([str(logs), "-positions", "all", "-metrics", "Dice_follow", "-rounds", "1,2", "-out", str(out)])
    with (out / "sessions.csv").open() as f:
        got = {int(r["position"]): r for r in csv.DictReader(f)}
    assert sorted(got) == [1, 2]
    for position in (1, 2):
        for t in (1, 2):
            values = [SESSIONS[seed, position][t - 1] for seed in (0, 1)]
            assert float(got[position][f"Dice_follow@{t}_mean"]) == pytest.approx(np.mean(values))
            assert float(got[position][f"Dice_follow@{t}_std"]) == pytest.approx(np.std(values, ddof=1))
    assert (out / "sessions.png").stat().st_size > 0
    assert "| mem | 2 | 2 | 0.750 ± 0.042 | 0.880 ± 0.028 |" in capsys.readouterr().out


def test_the_per_image_table_ignores_the_session_rows(logs: Path, tmp_path: Path):
    table = tables.main([str(logs), "-metrics", "Dice_follow", "-rounds", "1,2", "-out", str(tmp_path / "t")])
    assert table.mean[0].tolist() == [0.5, 0.5]


def test_positions_are_parsed_or_refused_in_one_line(logs: Path, tmp_path: Path):
    tables.main([str(logs), "-positions", "2", "-metrics", "Dice_follow", "-out", str(tmp_path / "p2")])
    with (tmp_path / "p2" / "sessions.csv").open() as f:
        assert [r["position"] for r in csv.DictReader(f)] == ["2"]
    for bad in ("0", "x", "3-", ","):
        with pytest.raises(InputError, match="^-positions"):
            tables.main([str(logs), "-positions", bad, "-out", str(tmp_path / "bad")])
    with pytest.raises(InputError, match="session protocol at position 5"):
        tables.main([str(logs), "-positions", "5", "-out", str(tmp_path / "none")])


@pytest.mark.parametrize(
    "position, positions, kept",
    [
        ("", None, True),
        ("3", None, False),
        ("", (1, 2), False),
        ("3", (3, 4), True),
        ("5", (3, 4), False),
    ],
)
def test_paired_rows_of_one_protocol(position, positions, kept):
    from analysis.paired import in_protocol

    assert in_protocol({"position": position, "image": "p0/s1"}, positions) is kept
    if position == "":
        assert in_protocol({"image": "older run, no position column"}, positions) is kept
