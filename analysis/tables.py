"""Paper tables from run folders: test metrics at chosen rounds, mean ± std over seeds (SPEC §11).

    python tables.py logs_new/                                   # every run folder under logs_new/
    python tables.py logs_new/LIDC_SPA_* -metrics Dice_follow,GED -rounds 1,3,6 -out tables_out/lidc
    python tables.py -compare logs/AESPA logs/blind -metric Dice_follow -rounds all   # paired, see paired.py

Each run contributes the rows of its last epoch that has rows of `-split` (test by default) in
metrics.jsonl (SPEC §7.1). Runs whose args.json agree on every flag outside `IGNORED_FLAGS` form one
configuration (exp_name and paths compared without a `_seed<N>` suffix or a run-folder timestamp, so
data/synthetic and data/synthetic_seed1 agree); a configuration's cell is the mean ± sample std (ddof=1) over
all its runs, i.e. over training seeds (`-seed`) and data seeds (`-data_seed`) together; `n` is the number of
runs. A configuration of one run shows its value with no ± and an empty std in the CSV: the spread of one sample
is undefined, not 0.
Rows: one per configuration, named by exp_name with the differing flags as columns (and in the label
`exp_name (flag=value, ...)` of the CSV and the plot legend). Columns: `<metric>@<round>` for per-round metrics,
`NoC@τ` / `NoF@τ` once (one value per evaluation). Writes table.md, table.csv (<column>_mean, <column>_std),
table.tex (booktabs) and round_curves.png into -out (default tables_out/) and prints the Markdown table.
A run folder that cannot be read is an error; with -skip_bad it is listed on stderr and left out.
"""

from __future__ import annotations

import csv
import json
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cfg import OneLineParser
from engine.figures import pyplot
from engine.run_folder import read_metrics
from utils import InputError, natural_key, run_cli

DEFAULT_METRICS = ("Dice", "Dice_follow", "Gain_over_consensus", "GED", "Dice_match", "Dice_soft", "NoC@0.90")
DEFAULT_ROUNDS = "1,3,last"
DEFAULT_OUT = "tables_out"
PER_RUN_PREFIXES = ("NoC@", "NoF@")  # one value per evaluation, repeated on every round's row
# Flags that say where or how fast a run ran, not what was trained and measured: never split configurations.
IGNORED_FLAGS = frozenset(
    {
        "seed",
        "data_seed",  # what a configuration averages over: training and data seeds
        "log_dir",
        "resume",  # where the run folder is, whether it was restarted
        "device",
        "gpu",
        "gpu_device",
        "distributed",
        "w",  # hardware and data-loader workers
        "max_train_batches",
        "max_val_batches",  # smoke-test caps
        "val_freq",  # how often validation ran; the last epoch's rows do not depend on it
        "compile",
        "no_embedding_reuse",  # same results, other speed
    }
)
LABEL_FIRST = ("dataset", "mode")  # named first in configuration labels
# A run-folder timestamp (`_YYYY_MM_DD_HH_MM_SS`, maybe `_2`) and a `_seed<N>` suffix, at the end of a name or of a
# path part.
TIMESTAMP = re.compile(r"_\d{4}(?:_\d{2}){5}(?:_\d+)?(?=$|[/\\])")
SEED_SUFFIX = re.compile(r"[_-]seed[_-]?\d+(?=$|[/\\])", re.IGNORECASE)


def note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


@dataclass
class Run:
    """One run folder: its flags and the rows of its last evaluated epoch, by round (1-based)."""

    path: Path
    args: dict[str, Any]
    epoch: int
    rows: dict[int, dict[str, Any]]

    @property
    def n_rounds(self) -> int:
        return max(self.rows)


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
    flags: list[str] = field(default_factory=list)  # the flags that differ between configurations (CSV columns)
    shown: list[str] = field(default_factory=list)  # those named in labels and as Markdown / LaTeX columns


# ------------------------------------------------------------------------------------------------
# Reading run folders


def read_json_object(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: not readable as JSON ({getattr(err, 'msg', err)})") from None
    if not isinstance(obj, dict):
        raise InputError(f"{path}: expected a JSON object of flags")
    return obj


def find_run_folders(paths: Sequence[str]) -> list[tuple[Path, bool]]:
    """Run folders (holding args.json) named or found under the given folders -> [(folder, named explicitly)]."""
    found: dict[Path, tuple[Path, bool]] = {}
    for p in map(Path, paths):
        if not p.exists():
            raise InputError(f"{p}: no such folder")
        if not p.is_dir():
            raise InputError(f"{p}: not a folder (expected a run folder or a folder of run folders)")
        if (p / "args.json").is_file():
            found[p.resolve()] = (p, True)
            continue
        inside = sorted(a.parent for a in p.rglob("args.json"))
        if not inside:
            raise InputError(f"{p}: not a run folder (no args.json) and holds no run folders")
        for q in inside:
            found.setdefault(q.resolve(), (q, False))
    return list(found.values())


def load_run(folder: Path, split: str, explicit: bool) -> Run | None:
    """A run's flags and last-epoch `split` rows. A run found inside a parent folder that has no results yet (still
    running, or stopped before its first evaluation) is skipped with a note; one named explicitly is an error."""
    metrics_file = folder / "metrics.jsonl"
    if not metrics_file.is_file():
        if explicit:
            raise InputError(f"{folder}: not a run folder with results (no metrics.jsonl)")
        note(f"skipped {folder}: no metrics.jsonl yet")
        return None
    rows = [r for r in read_metrics(metrics_file) if r["split"] == split]
    if not rows:
        if explicit:
            raise InputError(f"{metrics_file}: no {split} rows (the run has not been evaluated yet)")
        note(f"skipped {folder}: no {split} rows yet")
        return None
    epoch = max(r["epoch"] for r in rows)
    by_round = {r["round"]: r for r in rows if r["epoch"] == epoch}  # a later duplicate (re-evaluation) wins
    return Run(folder, read_json_object(folder / "args.json"), epoch, dict(sorted(by_round.items())))


def load_runs(paths: Sequence[str], split: str = "test", skip_bad: bool = False) -> list[Run]:
    """Every run with `split` rows; with `skip_bad` an unreadable run (bad args.json, a malformed metrics.jsonl line,
    ...) is listed on stderr and left out instead of being an error."""
    runs, skipped = [], 0
    for folder, explicit in find_run_folders(paths):
        try:
            run = load_run(folder, split, explicit)
        except InputError as err:
            if not skip_bad:
                raise
            note(f"skipped {folder}: {err}")
            skipped, run = skipped + 1, None
        if run is not None:
            runs.append(run)
    if not runs:
        reason = f" ({skipped} unreadable run folders skipped)" if skipped else ""
        raise InputError(f"{', '.join(paths)}: no run folder with {split} rows{reason}")
    return runs


# ------------------------------------------------------------------------------------------------
# Configurations


def normalise(value: Any) -> Any:
    """Strip run-folder timestamps and `_seed<N>` suffixes from strings (exp_name, checkpoint paths)."""
    return SEED_SUFFIX.sub("", TIMESTAMP.sub("", value)) if isinstance(value, str) else value


def config_flags(run: Run) -> dict[str, Any]:
    return {k: normalise(v) for k, v in run.args.items() if k not in IGNORED_FLAGS}


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
        named = ", ".join(f"{k}={c.flags[k]}" for k in shown)
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
    return metric.startswith(PER_RUN_PREFIXES)


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
    row = run.rows[run.n_rounds if round_ is None else round_]
    value = row.get(metric)
    return float(value) if isinstance(value, (int, float)) else math.nan


def build_table(runs: list[Run], metrics: list[str], rounds: list[int]) -> Table:
    configs, differing, shown = group_configs(runs)
    columns: list[tuple[str, str, int | None]] = []
    for m in metrics:
        columns += [(m, m, None)] if is_per_run(m) else [(f"{m}@{r}", m, r) for r in rounds]
    mean = np.full((len(configs), len(columns)), math.nan)
    std = np.full_like(mean, math.nan)
    for i, c in enumerate(configs):
        for j, (_, metric, round_) in enumerate(columns):
            values = np.array([run_value(run, metric, round_) for run in c.runs])  # one per seed
            mean[i, j] = values.mean()
            if len(values) > 1:
                std[i, j] = values.std(ddof=1)
    return Table(configs, columns, mean, std, differing, shown)


# ------------------------------------------------------------------------------------------------
# Writers


def cell(mean: float, std: float, digits: int, pm: str = " ± ") -> str:
    if not math.isfinite(mean):
        return "-"
    return f"{mean:.{digits}f}" + (f"{pm}{std:.{digits}f}" if math.isfinite(std) else "")


def to_markdown(table: Table, digits: int) -> str:
    """Columns: exp_name, each differing flag, n (runs averaged), then the metric columns."""
    header = ["configuration", *table.shown, "n"] + [h for h, _, _ in table.columns]
    left = 1 + len(table.shown)  # text columns, left-aligned; numbers right-aligned
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * left + ["---:"] * (len(header) - left)) + "|"]
    for i, c in enumerate(table.configs):
        cells = [c.exp_name, *(str(c.flags[k]) for k in table.shown), str(len(c.runs))]
        cells += [cell(m, s, digits) for m, s in zip(table.mean[i], table.std[i])]
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
        cells += [cell(m, s, digits, pm=" $\\pm$ ") for m, s in zip(table.mean[i], table.std[i])]
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
            for m, s in zip(table.mean[i], table.std[i]):
                row += [repr(float(m)) if math.isfinite(m) else "", repr(float(s)) if math.isfinite(s) else ""]
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


# ------------------------------------------------------------------------------------------------
# Command line


def build_parser() -> OneLineParser:
    p = OneLineParser(
        prog="tables.py",
        description="Tables (Markdown, CSV, LaTeX) and round curves from run folders: "
        "the last epoch's test rows, mean ± std over runs that differ only in -seed and -data_seed. "
        "With -compare A B: the paired per-image difference of two configurations with a bootstrap interval.",
    )
    p.add_argument(
        "runs",
        nargs="*",
        metavar="RUN_DIR",
        help="run folders (holding args.json), or folders holding run folders (e.g. logs_new/)",
    )
    compare = p.add_argument_group("paired comparison (per_image.csv of each run; see paired.py)")
    compare.add_argument(
        "-compare",
        nargs=2,
        metavar=("A", "B"),
        default=None,
        help="two configurations, each a run folder or a folder of its run folders (seeds): "
        "mean paired difference A - B per round with a 95%% bootstrap interval over images; "
        "writes compare.md, compare.csv",
    )
    compare.add_argument("-metric", default=None, help="column of per_image.csv to compare (default Dice_follow)")
    compare.add_argument(
        "-bootstrap", type=int, default=None, help="bootstrap resamples of images (default 2000; fixed seed)"
    )
    compare.add_argument(
        "-empty",
        choices=("all", "nonempty", "empty"),
        default=None,
        help="pairs to use by whether the followed rater's mask is empty (default all)",
    )
    p.add_argument(
        "-metrics",
        default=None,
        help=f"comma-separated metric names of metrics.jsonl (default: {','.join(DEFAULT_METRICS)}); "
        "NoC@/NoF@ values are one per run",
    )
    p.add_argument(
        "-rounds",
        default=None,
        help=f"comma-separated 1-based rounds, 'last' = the last round of every run (default: {DEFAULT_ROUNDS}); "
        "with -compare also 'all'",
    )
    p.add_argument(
        "-split",
        choices=("test", "val", "train"),
        default="test",
        help="rows to read: the last epoch that has rows of this split",
    )
    p.add_argument(
        "-out",
        default=DEFAULT_OUT,
        help=f"folder for table.md, table.csv, table.tex, round_curves.png (default {DEFAULT_OUT}/)",
    )
    p.add_argument(
        "-digits", type=int, default=3, help="decimals in the Markdown and LaTeX tables (the CSV keeps full precision)"
    )
    p.add_argument(
        "-skip_bad",
        action="store_true",
        help="leave out run folders that cannot be read (listed on stderr) instead of stopping at the first",
    )
    return p


def main(argv: list[str] | None = None) -> Table | Any:
    """A table (returns the Table) or, with -compare, a paired comparison (returns a paired.Comparison)."""
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    if args.digits < 0:
        raise InputError(f"-digits: must not be negative, got {args.digits}")
    if out.exists() and not out.is_dir():
        raise InputError(f"-out {out}: exists and is not a folder")
    if args.compare is not None:
        return compare_main(args, out)
    given = [f for f in ("metric", "bootstrap", "empty") if getattr(args, f) is not None]
    if given:
        raise InputError(f"-{given[0]}: only with -compare A B")
    if not args.runs:
        raise InputError("RUN_DIR: give at least one run folder (or -compare A B)")
    runs = load_runs(args.runs, args.split, args.skip_bad)
    names = [m.strip() for m in (args.metrics or ",".join(DEFAULT_METRICS)).split(",") if m.strip()]
    metrics = check_metrics(names, runs, explicit=args.metrics is not None)
    rounds = resolve_rounds(args.rounds or DEFAULT_ROUNDS, runs, explicit=args.rounds is not None)
    if not metrics or not rounds:
        raise InputError("-metrics/-rounds: nothing to tabulate")
    table = build_table(runs, metrics, rounds)
    out.mkdir(parents=True, exist_ok=True)
    markdown = to_markdown(table, args.digits)
    (out / "table.md").write_text(markdown + "\n")
    (out / "table.tex").write_text(to_latex(table, args.digits))
    write_csv(table, out / "table.csv")
    plot_curves(table, metrics, out / "round_curves.png", args.split)
    print(markdown)
    print(
        f"{len(runs)} runs, {len(table.configs)} configurations -> "
        f"{out}/table.md, table.csv, table.tex, round_curves.png",
        file=sys.stderr,
    )
    return table


def compare_main(args: Any, out: Path) -> Any:
    """`-compare A B`: the table-only inputs are refused rather than ignored."""
    from analysis import paired  # imports this module: loaded on use only

    if args.runs:
        raise InputError(f"{args.runs[0]}: give run folders for a table, or -compare A B, not both")
    if args.metrics is not None:
        raise InputError("-metrics: a table flag; with -compare use -metric NAME (one metric)")
    if args.skip_bad:
        raise InputError("-skip_bad: a table flag; -compare reads every run of A and B")
    return paired.run_compare(
        *args.compare,
        metric=args.metric or "Dice_follow",
        split=args.split,
        rounds=args.rounds,  # None: the default rounds, those beyond the last dropped
        n_boot=2000 if args.bootstrap is None else args.bootstrap,
        empty=args.empty or "all",
        out=out,
        digits=args.digits,
    )


if __name__ == "__main__":
    run_cli(main)
