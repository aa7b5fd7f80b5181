"""The tables of docs/results.md from the runs bash_results.sh makes: tables.py's tables and paired comparisons into
assets/results/, each folder with a provenance.json (the command, commit, machine, threads and seeds that made it),
which analysis/results_page.py then renders into README.md and docs/.

    python -m analysis.results_tables logs_results assets/results synthetic sessions cases lidc
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from analysis import paired
from analysis.runs import find_run_folders, read_json_object
from analysis.sessions_table import make_session_table
from analysis.tables import make_table
from utils import InputError, run_cli

ROUNDS = "1,2,3,4,5,6"
METRICS = "Dice_follow,Dice_follow_nonempty,Follow_accuracy,NSD_follow,DSC_AUC,NoC@0.85,NoC@0.90"
SESSION_METRICS = "Dice_follow,Follow_accuracy,NoC@0.85,NoC@0.90"
COMMAND = "bash bash_results.sh"


def machine() -> str:
    """The CPU model and how many cores this process may use (Linux /proc/cpuinfo, else the platform's name)."""
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model}, {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()} cores"


def commit() -> str:
    found = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return found.stdout.strip() or "unknown"


def seeds_of(folders: list[Path]) -> str:
    """'training 0, 1, 2 x data 0, 1' from the args.json of the runs under `folders`."""
    runs = [read_json_object(f / "args.json") for path in folders for f, _ in find_run_folders([str(path)])]
    train = sorted({int(a.get("seed", 0)) for a in runs})
    data = sorted({int(a.get("data_seed", 0)) for a in runs})
    return f"training {', '.join(map(str, train))} x data {', '.join(map(str, data))}"


def record(out: Path, part: str, folders: list[Path], threads: str = "1") -> None:
    """provenance.json of the files in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    note = {
        "command": f"PARTS={part} {COMMAND}",
        "commit": commit(),
        "machine": machine(),
        "threads": threads,
        "seeds": seeds_of(folders),
    }
    (out / "provenance.json").write_text(json.dumps(note, indent=1) + "\n")


def table(runs: Path, dest: Path, part: str, names: list[str], metrics: str = METRICS) -> None:
    folders = [runs / n for n in names]
    make_table([str(f) for f in folders], "test", metrics, ROUNDS, dest, 3, False)
    record(dest, part, folders)


def compare(runs: Path, dest: Path, part: str, a: str, b: str, rounds: str = ROUNDS, **kw) -> None:
    """A - B paired, on all pairs and on the pairs whose followed mask is not empty."""
    for empty in ("all", "nonempty"):
        out = dest.parent / f"{dest.name}_{empty}"
        paired.run_compare(
            str(runs / a), str(runs / b), "Dice_follow", "test", rounds, paired.N_BOOT, empty, out, 3, **kw
        )
        record(out, part, [runs / a, runs / b])


def synthetic(runs: Path, results: Path) -> None:
    table(runs, results / "synthetic", "synthetic", ["memory", "no_memory", "blind", "consensus", "click_editor"])
    for a in ("memory", "no_memory"):
        for other in ("no_memory", "click_editor", "consensus", "blind"):
            if other != a:
                compare(runs, results / f"synthetic_{a}_vs_{other}", "synthetic", f"{a}/data0", f"{other}/data0")


def sessions(runs: Path, results: Path) -> None:
    part = "sessions"
    names = ["memory/data0", "sessions_none", "sessions_oracle", "no_memory", "click_editor/data0"]
    dest = results / "sessions"
    make_session_table([str(runs / n) for n in names], "test", "all", SESSION_METRICS, "1,last", dest, 3, False)
    record(dest, part, [runs / n for n in names])
    dest = results / "sessions_switch"
    make_session_table([str(runs / "sessions_switch")], "test", "all", SESSION_METRICS, "1,last", dest, 3, False)
    record(dest, part, [runs / "sessions_switch"])
    late = tuple(range(4, 9))
    for other, positions, label in (
        ("sessions_none", late, "reset"),
        ("no_memory/data0", late, "no_memory"),
        ("no_memory/data0", (1,), "no_memory_first"),
        ("click_editor/data0", late, "click_editor"),
    ):
        compare(runs, results / f"sessions_memory_vs_{label}", part, "memory/data0", other, positions=positions)


def cases(runs: Path, results: Path) -> None:
    """Whole synthetic cases, budget protocol: each (seed, case, followed rater)'s 3-D Dice against the followed
    rater after the last click, with the case memory and without, paired (a cluster bootstrap over cases)."""
    final: dict[str, dict[tuple, float]] = {}
    for memory in ("model", "none", "oracle"):
        final[memory] = {}
        for folder in sorted((runs / "cases").glob(f"predict_{memory}_seed*")):
            seed = folder.name.rsplit("seed", 1)[1]
            with (folder / "interaction.csv").open() as f:
                rows = list(csv.DictReader(f))
            last = max(int(r["clicks"]) for r in rows)
            for r in rows:
                if int(r["clicks"]) == last:
                    final[memory][(seed, r["case"], r["followed"])] = float(r["Dice"])
    if not final["model"]:
        raise InputError(f"{runs / 'cases'}: no predict_model_seed* folders with interaction.csv")
    keys = sorted(final["model"])
    lines = [
        "| case memory | cases x raters x seeds | 3-D Dice after the budget | − no memory, 95 % interval |",
        "|---|---:|---:|---:|",
    ]
    base = np.array([final["none"][k] for k in keys])
    clusters = np.array([k[1] for k in keys])
    for memory in ("none", "model", "oracle"):
        values = np.array([final[memory][k] for k in keys])
        if memory == "none":
            lines.append(f"| none (each slice on its own) | {len(keys)} | {values.mean():.3f} | |")
            continue
        diff, low, high = paired.cluster_bootstrap(values - base, clusters, paired.N_BOOT)
        lines.append(f"| {memory} | {len(keys)} | {values.mean():.3f} | {diff:+.3f} [{low:+.3f}, {high:+.3f}] |")
    dest = results / "cases"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "cases.md").write_text("\n".join(lines) + "\n")
    record(dest, "cases", [runs / "cases" / "cases_models"])


def lidc(runs: Path, results: Path) -> None:
    part = "lidc"
    names = ["lidc_no_memory", "lidc_memory", "lidc_blind", "lidc_blind_paint", "lidc_consensus", "lidc_click_editor"]
    table(runs, results / "lidc", part, names)
    for a in ("lidc_no_memory", "lidc_memory"):
        for other in ("lidc_no_memory", "lidc_blind", "lidc_click_editor", "lidc_blind_paint", "lidc_consensus"):
            if other != a:
                name = f"{a}_vs_{other.removeprefix('lidc_')}"
                compare(runs, results / name, part, a, other)
    dest = results / "lidc_sessions"
    names = ["lidc_memory", "lidc_sessions_none", "lidc_click_editor"]
    make_session_table(
        [str(runs / n) for n in names], "test", "all", "Dice_follow,Follow_accuracy", "1,last", dest, 3, False
    )
    record(dest, part, [runs / n for n in names])


PARTS: dict[str, Callable[[Path, Path], None]] = {
    "synthetic": synthetic,
    "sessions": sessions,
    "cases": cases,
    "lidc": lidc,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m analysis.results_tables", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", help="the folder bash_results.sh wrote its runs into (logs_results)")
    parser.add_argument("results", help="where the tables go (assets/results)")
    parser.add_argument("parts", nargs="+", choices=list(PARTS))
    args = parser.parse_args(argv)
    for part in args.parts:
        print(f"tables of {part}", file=sys.stderr)
        PARTS[part](Path(args.runs), Path(args.results))


if __name__ == "__main__":
    run_cli(main)
