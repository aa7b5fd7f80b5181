"""Tables and a figure of the session protocol by position (docs/evaluation.md#the-session-protocol), from run folders.

    python tables.py logs_new/ -positions all                     # every position of every run's sessions
    python tables.py RUN... -positions 1-8 -metrics Dice_follow -rounds 1,last

For each position of the sessions (the image's place in its session), the runs' rows at that position are grouped
into configurations and averaged as `tables.py` does for the per-image protocol (analysis/tables.py: mean ± sample
std over runs). Rows: configuration × position; columns `<metric>@<round>` (default Dice_follow and Follow_accuracy
at the first and the last round, NoC@0.85, NoC@0.90). Writes sessions.md, sessions.csv (<column>_mean, <column>_std)
and sessions.png (each column against the position, one line per configuration, ± std band) into -out.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from analysis.runs import load_runs
from analysis.tables import Table, build_table, check_metrics, metric_cells, resolve_rounds
from conf import metrics as metric_table
from utils import InputError, pyplot

DEFAULT_METRICS = ("Dice_follow", "Follow_accuracy", "NoC@0.85", "NoC@0.90")
DEFAULT_ROUNDS = "1,last"
MAX_POSITION = 1000  # positions probed with -positions all


def parse_positions(text: str) -> tuple[int, ...] | None:
    """'all' -> None (every position the runs have); '4-8' / '1,3,5' / '2' -> the positions."""
    if text == "all":
        return None
    out: set[int] = set()
    for token in filter(None, (t.strip() for t in text.split(","))):
        first, dash, last = token.partition("-")
        if not first.isdigit() or (dash and not last.isdigit()) or int(first) < 1:
            raise InputError(f"-positions: expected 'all', positions such as 4-8 or 1,2,3 (from 1), got '{token}'")
        out.update(range(int(first), int(last or first) + 1))
    if not out:
        raise InputError("-positions: no position given")
    return tuple(sorted(out))


def tables_by_position(
    paths: list[str], split: str, positions: tuple[int, ...] | None, metrics: str | None, rounds: str | None, skip_bad
) -> dict[int, Table]:
    """{position: the table of the runs' rows at that position}; positions None: every one some run has."""
    candidates = positions or range(1, MAX_POSITION + 1)
    out = {}
    for p in candidates:
        try:
            runs = load_runs(paths, split, skip_bad, position=p)
        except InputError:
            if positions is not None:
                raise
            break  # -positions all: the positions end where no run has rows
        names = [m.strip() for m in (metrics or ",".join(DEFAULT_METRICS)).split(",") if m.strip()]
        kept = check_metrics([metric_table.current_name(m) for m in names], runs, explicit=metrics is not None)
        chosen = resolve_rounds(rounds or DEFAULT_ROUNDS, runs, explicit=rounds is not None)
        out[p] = build_table(runs, kept, chosen)
    if not out:
        raise InputError(f"{', '.join(paths)}: no run folder with {split} rows of the session protocol")
    return out


def to_markdown(tables: dict[int, Table], digits: int) -> str:
    first = next(iter(tables.values()))
    header = ["configuration", "position", "n"] + [h for h, _, _ in first.columns]
    lines = ["| " + " | ".join(header) + " |", "|---|---:|---:|" + "---:|" * len(first.columns)]
    labels = [c.label for c in first.configs]
    for label in labels:
        for p, table in tables.items():
            row = next((j for j, c in enumerate(table.configs) if c.label == label), None)
            if row is not None:
                cells = [label, str(p), str(len(table.configs[row].runs)), *metric_cells(table, row, digits)]
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(tables: dict[int, Table], path: Path) -> None:
    first = next(iter(tables.values()))
    columns = [h for h, _, _ in first.columns]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["configuration", "position", "n", *(f"{c}_{s}" for c in columns for s in ("mean", "std"))])
        for p, table in tables.items():
            for i, c in enumerate(table.configs):
                values = [x for j in range(len(columns)) for x in (table.mean[i, j], table.std[i, j])]
                writer.writerow([c.label, p, len(c.runs), *("" if math.isnan(v) else repr(float(v)) for v in values)])


def plot(tables: dict[int, Table], path: Path, split: str) -> None:
    first = next(iter(tables.values()))
    plt = pyplot()
    n = len(first.columns)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for j, (ax, (header, _, _)) in enumerate(zip(axes.flat, first.columns)):
        for label in [c.label for c in first.configs]:
            xs, mean, std = [], [], []
            for p, table in tables.items():
                i = next((k for k, c in enumerate(table.configs) if c.label == label), None)
                if i is not None and not math.isnan(table.mean[i, j]):
                    xs.append(p)
                    mean.append(table.mean[i, j])
                    std.append(0.0 if math.isnan(table.std[i, j]) else table.std[i, j])
            if xs:
                line = ax.plot(xs, mean, marker="o", ms=3, label=label)[0]
                low, high = np.array(mean) - np.array(std), np.array(mean) + np.array(std)
                ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.2, lw=0)
        ax.set_title(header)
        ax.set_xlabel("image of the session")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(2, max(1, len(labels))), fontsize=8)
    fig.suptitle(f"{split} split, session protocol: mean ± std over runs, by position")
    fig.tight_layout(rect=(0, 0.04 + 0.035 * math.ceil(len(labels) / 2), 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def make_session_table(
    paths: list[str],
    split: str,
    positions_text: str,
    metrics: str | None,
    rounds: str | None,
    out: Path,
    digits: int,
    skip_bad: bool,
) -> dict[int, Table]:
    """`tables.py RUN_DIR... -positions P`: write sessions.md, sessions.csv and sessions.png into `out`, print."""
    tables = tables_by_position(paths, split, parse_positions(positions_text), metrics, rounds, skip_bad)
    out.mkdir(parents=True, exist_ok=True)
    markdown = to_markdown(tables, digits)
    (out / "sessions.md").write_text(markdown + "\n")
    write_csv(tables, out / "sessions.csv")
    plot(tables, out / "sessions.png", split)
    print(markdown)
    return tables
