"""Paper tables from run folders: test metrics at chosen rounds, mean ± std over seeds
(docs/design.md#stable-entry-points).

    python tables.py logs_new/                                   # every run folder under logs_new/
    python tables.py logs_new/LIDC_SPA_* -metrics Dice_follow,GED -rounds 1,3,6 -out tables_out/lidc
    python tables.py -compare logs/AESPA logs/blind -metric Dice_follow -rounds all   # paired: analysis/paired.py

Each run contributes its final test's rows (marked final), else the rows of its last epoch that has rows of
`-split` (test by default) in
metrics.jsonl (docs/run-folder.md). Runs whose args.json agree on every flag outside `IGNORED_FLAGS` form one
configuration (exp_name and paths compared without a `_seed<N>` suffix or a run-folder timestamp, so
data/synthetic and data/synthetic_seed1 agree); a configuration's cell is the mean ± sample std (ddof=1) over
all its runs, i.e. over training seeds (`-seed`) and data seeds (`-data_seed`) together; `n` is the number of
runs. A configuration of one run shows its value with no ± and an empty std in the CSV: the spread of one sample
is undefined, not 0. A cell shows `-` where a run of the configuration has no value for it (not measured, e.g. an
older run without the metric) and `nan` where every run has one but it is not a number (measured, undefined:
Follow_accuracy where every image has a single rater); the CSV leaves the first empty and writes `nan` for the
second.
Rows: one per configuration, named by exp_name with the differing flags as columns (and, where configurations
share an exp_name, in the label `exp_name (flag=value, ...)` of the CSV and the plot legend). Columns:
`<metric>@<round>` for per-round metrics, `NoC@τ` / `NoF@τ` once (one value per evaluation). Writes table.md,
table.csv (<column>_mean, <column>_std), table.tex (booktabs) and round_curves.png into -out (default tables_out/)
and prints the Markdown table.
A run folder that cannot be read is an error; with -skip_bad it is listed on stderr and left out.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from analysis.runs import DEFAULT_ROUNDS, Run, config_flags, load_runs, note
from conf import metrics as metric_table
from utils import InputError, natural_key, pyplot

DEFAULT_OUT = "tables_out"
LABEL_FIRST = ("dataset", "mode")  # named first in configuration labels


def default_metrics() -> list[str]:
    """The columns of a table without -metrics: the paper metrics of conf/metrics.py and PAPER_DEFAULTS."""
    return [*metric_table.names("paper"), *metric_table.PAPER_DEFAULTS]


@dataclass
class Config:
    """Runs that differ only in ignored flags (seeds); `flags`: the values of the flags that differ across configs."""

    exp_name: str
    flags: dict[str, Any]
    runs: list[Run]
    label: str = ""


@dataclass
class Table:
    configs: list[Config]
    columns: list[tuple[str, str, int | None]]  # (header, metric, round; None for a per-run metric)
    mean: np.ndarray  # CxN (configs x columns), NaN where a run lacks the value
    std: np.ndarray  # CxN sample std over runs, NaN for a single run
    measured: np.ndarray  # CxN bool: every run of the configuration has a value (a number or NaN) in the column
    flags: list[str] = field(default_factory=list)  # the flags that differ between configurations (CSV columns)
    shown: list[str] = field(default_factory=list)  # those named in labels and as Markdown / LaTeX columns


# ------------------------------------------------------------------------------------------------
# Configurations


def label_flags(configs: list[Config], differing: list[str]) -> list[str]:
    """Differing flags named in labels: dataset and mode first, then alphabetical; data_path is left out when it
    follows dataset one to one (the CSV keeps every differing flag)."""
    ordered = [f for f in LABEL_FIRST if f in differing] + sorted(f for f in differing if f not in LABEL_FIRST)
    if "data_path" in ordered and "dataset" in ordered:
        pairs = {(str(c.flags["dataset"]), str(c.flags["data_path"])) for c in configs}
        if len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs}):
            ordered.remove("data_path")
    return ordered


def group_configs(runs: list[Run]) -> tuple[list[Config], list[str], list[str]]:
    """Runs grouped by their non-ignored flags -> (configurations in natural label order, flags that differ, flags
    named in labels)."""
    keyed: dict[str, list[Run]] = {}
    for run in runs:
        keyed.setdefault(json.dumps(config_flags(run), sort_keys=True, default=str), []).append(run)
    all_flags = [config_flags(group[0]) for group in keyed.values()]
    names = sorted({k for f in all_flags for k in f} - {"exp_name"})
    differing = [k for k in names if len({json.dumps(f.get(k), default=str) for f in all_flags}) > 1]
    configs = [
        Config(str(f.get("exp_name", group[0].path.name)), {k: f.get(k) for k in differing}, group)
        for f, group in zip(all_flags, keyed.values())
    ]
    shown = label_flags(configs, differing)
    for c in configs:
        # a label names the flags only where the exp_name alone is ambiguous (the table's columns show them all)
        namesakes = [o for o in configs if o.exp_name == c.exp_name]
        own = [k for k in shown if len({json.dumps(o.flags[k], default=str) for o in namesakes}) > 1]
        named = ", ".join(f"{k}={c.flags[k]}" for k in own)
        c.label = f"{c.exp_name} ({named})" if named else c.exp_name
        seeds = [(str(r.args.get("seed")), str(r.args.get("data_seed", 0))) for r in c.runs]
        if len(set(seeds)) < len(seeds):
            paths = ", ".join(str(r.path) for r in c.runs)
            note(f"{c.label}: several runs share a seed and data seed ({paths}); all are averaged")
        if len({r.epoch for r in c.runs}) > 1:
            note(f"{c.label}: runs evaluated at different epochs ({', '.join(f'{r.path}: {r.epoch}' for r in c.runs)})")
    return sorted(configs, key=lambda c: natural_key(c.label)), differing, shown


# ------------------------------------------------------------------------------------------------
# The table


def is_per_run(metric: str) -> bool:
    """One value per evaluation (NoC@τ, ...), repeated on every round's row (conf/metrics.py)."""
    return metric_table.is_per_run(metric)


def resolve_rounds(text: str, runs: list[Run], explicit: bool) -> list[int]:
    """'1,3,last' -> sorted round numbers; `last` is the last round every run has. Default rounds beyond it are
    dropped; an explicit one is an error naming the run."""
    last = min(r.n_rounds for r in runs)
    rounds = []
    for token in filter(None, (t.strip() for t in text.split(","))):
        if token == "last":
            rounds.append(last)
        elif token.isdigit() and int(token) >= 1:
            rounds.append(int(token))
        else:
            raise InputError(f"-rounds: expected 1-based round numbers or 'last', got '{token}'")
    for r in rounds if explicit else ():
        short = next((run for run in runs if r not in run.rows), None)
        if short is not None:
            raise InputError(
                f"-rounds {r}: beyond {short.path}, whose epoch {short.epoch} has rounds 1..{short.n_rounds}"
            )
    return sorted({r for r in rounds if r <= last})


def check_metrics(metrics: list[str], runs: list[Run], explicit: bool) -> list[str]:
    """Explicit metrics must be in every run's rows; default ones are kept when some run has them."""
    kept = []
    for m in metrics:
        lacking = [run for run in runs if m not in run.rows[run.n_rounds]]
        if lacking and explicit:
            known = sorted(
                k for k in lacking[0].rows[lacking[0].n_rounds] if k not in ("epoch", "split", "mode", "round")
            )
            raise InputError(f"-metrics {m}: not in {lacking[0].path / 'metrics.jsonl'} (it has: {', '.join(known)})")
        if len(lacking) == len(runs):
            note(f"no run has {m}; left out")
        else:
            kept.append(m)
    return kept


def run_value(run: Run, metric: str, round_: int | None) -> float:
    """The run's value of a column (`round_` None: a per-run metric, read from the last round's row): NaN where it
    has none (see `has_value`) or where the value is NaN."""
    value = run.rows[run.n_rounds if round_ is None else round_].get(metric)
    return float(value) if is_number(value) else math.nan


def has_value(run: Run, metric: str, round_: int | None) -> bool:
    """Whether the run measured a column: a number there, NaN included (JSON's NaN: measured, undefined)."""
    return is_number(run.rows[run.n_rounds if round_ is None else round_].get(metric))


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def build_table(runs: list[Run], metrics: list[str], rounds: list[int]) -> Table:
    configs, differing, shown = group_configs(runs)
    columns: list[tuple[str, str, int | None]] = []
    for m in metrics:
        columns += [(m, m, None)] if is_per_run(m) else [(f"{m}@{r}", m, r) for r in rounds]
    mean = np.full((len(configs), len(columns)), math.nan)
    std = np.full_like(mean, math.nan)
    measured = np.zeros(mean.shape, dtype=bool)
    for i, c in enumerate(configs):
        for j, (_, metric, round_) in enumerate(columns):
            values = np.array([run_value(run, metric, round_) for run in c.runs])  # one per seed
            mean[i, j] = values.mean()
            if len(values) > 1:
                std[i, j] = values.std(ddof=1)
            measured[i, j] = all(has_value(run, metric, round_) for run in c.runs)
    return Table(configs, columns, mean, std, measured, differing, shown)


# ------------------------------------------------------------------------------------------------
# Writers


def cell(mean: float, std: float, digits: int, pm: str = " ± ", measured: bool = True) -> str:
    """A Markdown / LaTeX cell: `-` not measured, `nan` measured but undefined, else mean (± std over runs)."""
    if not measured:
        return "-"
    if not math.isfinite(mean):
        return "nan"
    return f"{mean:.{digits}f}" + (f"{pm}{std:.{digits}f}" if math.isfinite(std) else "")


def metric_cells(table: Table, i: int, digits: int, pm: str = " ± ") -> list[str]:
    """The metric cells of configuration `i`."""
    return [cell(m, s, digits, pm, k) for m, s, k in zip(table.mean[i], table.std[i], table.measured[i])]


def to_markdown(table: Table, digits: int) -> str:
    """Columns: exp_name, each differing flag, n (runs averaged), then the metric columns."""
    header = ["configuration", *table.shown, "n"] + [h for h, _, _ in table.columns]
    left = 1 + len(table.shown)  # text columns, left-aligned; numbers right-aligned
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * left + ["---:"] * (len(header) - left)) + "|"]
    for i, c in enumerate(table.configs):
        cells = [c.exp_name, *(str(c.flags[k]) for k in table.shown), str(len(c.runs))]
        cells += metric_cells(table, i, digits)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def latex_escape(text: str) -> str:
    specials = {
        "\\": r"\textbackslash{}",
        "&": r"\&",
        "%": r"\%",
        "$": r"\$",
        "#": r"\#",
        "_": r"\_",
        "{": r"\{",
        "}": r"\}",
        "~": r"\textasciitilde{}",
        "^": r"\textasciicircum{}",
    }
    return "".join(specials.get(ch, ch) for ch in text)


def to_latex(table: Table, digits: int) -> str:
    left = 1 + len(table.shown)
    header = ["configuration", *map(latex_escape, table.shown), "$n$"] + [latex_escape(h) for h, _, _ in table.columns]
    lines = [
        "% tables.py: mean $\\pm$ sample std over seeds; needs \\usepackage{booktabs}",
        "\\begin{tabular}{" + "l" * left + "r" * (len(header) - left) + "}",
        "\\toprule",
        " & ".join(header) + " \\\\",
        "\\midrule",
    ]
    for i, c in enumerate(table.configs):
        cells = [latex_escape(str(v)) for v in (c.exp_name, *(c.flags[k] for k in table.shown))] + [str(len(c.runs))]
        cells += metric_cells(table, i, digits, pm=" $\\pm$ ")
        lines.append(" & ".join(cells) + " \\\\")
    return "\n".join(lines + ["\\bottomrule", "\\end{tabular}"]) + "\n"


def write_csv(table: Table, path: Path) -> None:
    """One row per configuration: label, exp_name, each differing flag, n, seeds, data_seeds, epochs (one per run,
    ';'-separated), then <col>_mean, <col>_std."""
    header = ["configuration", "exp_name", *table.flags, "n", "seeds", "data_seeds", "epochs"]
    header += [f"{h}_{stat}" for h, _, _ in table.columns for stat in ("mean", "std")]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for i, c in enumerate(table.configs):
            row = [
                c.label,
                c.exp_name,
                *(c.flags[k] for k in table.flags),
                len(c.runs),
                ";".join(str(r.args.get("seed")) for r in c.runs),
                ";".join(str(r.args.get("data_seed", 0)) for r in c.runs),
                ";".join(str(r.epoch) for r in c.runs),
            ]
            for m, s, k in zip(table.mean[i], table.std[i], table.measured[i]):
                row += [repr(float(m)) if k else "", repr(float(s)) if k and math.isfinite(s) else ""]
            writer.writerow(row)


def plot_curves(table: Table, metrics: list[str], path: Path, split: str) -> None:
    """One panel per per-round metric, x = clicks, one line per configuration: mean over its runs with a ±std band."""
    from matplotlib.ticker import MaxNLocator

    metrics = [m for m in metrics if not is_per_run(m)]
    if not metrics:
        return
    plt = pyplot()
    cols = min(3, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        for c in table.configs:
            n = min(r.n_rounds for r in c.runs)
            rounds = [t for t in range(1, n + 1) if all(t in r.rows for r in c.runs)]
            y = np.array([[run_value(r, metric, t) for t in rounds] for r in c.runs])  # runs x rounds
            x = [c.runs[0].rows[t].get("clicks", t) for t in rounds]
            mean = y.mean(0)
            line = ax.plot(x, mean, marker="o", ms=3, label=c.label)[0]
            if len(c.runs) > 1:
                spread = y.std(0, ddof=1)
                ax.fill_between(x, mean - spread, mean + spread, color=line.get_color(), alpha=0.2, lw=0)
        ax.set_title(metric)
        ax.set_xlabel("clicks")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    ncol = 1 if max(map(len, labels)) > 60 else min(2, len(labels))  # long labels (paths) get a line each
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8)
    fig.suptitle(f"{split} split, last epoch: mean ± std over runs (training and data seeds)")
    fig.tight_layout(rect=(0, 0.04 + 0.035 * math.ceil(len(labels) / ncol), 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def make_table(
    paths: Sequence[str], split: str, metrics: str | None, rounds: str | None, out: Path, digits: int, skip_bad: bool
) -> Table:
    """`tables.py RUN_DIR...`: build the table, write table.md, table.tex, table.csv and round_curves.png into `out`
    and print the Markdown."""
    runs = load_runs(paths, split, skip_bad)
    names = [m.strip() for m in (metrics or ",".join(default_metrics())).split(",") if m.strip()]
    kept = check_metrics([metric_table.current_name(m) for m in names], runs, explicit=metrics is not None)
    chosen = resolve_rounds(rounds or DEFAULT_ROUNDS, runs, explicit=rounds is not None)
    if not kept or not chosen:
        raise InputError("-metrics/-rounds: nothing to tabulate")
    table = build_table(runs, kept, chosen)
    out.mkdir(parents=True, exist_ok=True)
    markdown = to_markdown(table, digits)
    (out / "table.md").write_text(markdown + "\n")
    (out / "table.tex").write_text(to_latex(table, digits))
    write_csv(table, out / "table.csv")
    plot_curves(table, kept, out / "round_curves.png", split)
    print(markdown)
    print(
        f"{len(runs)} runs, {len(table.configs)} configurations -> "
        f"{out}/table.md, table.csv, table.tex, round_curves.png",
        file=sys.stderr,
    )
    return table
