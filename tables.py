"""Paper tables and paired comparisons from finished run folders (docs/design.md#stable-entry-points); never imports
torch.

    python tables.py logs_new/                                   # every run folder under logs_new/
    python tables.py logs_new/LIDC_SPA_* -metrics Dice_follow,GED -rounds 1,3,6 -out tables_out/lidc
    python tables.py -compare logs/AESPA logs/blind -metric Dice_follow -rounds all

Tables: analysis/tables.py (mean ± std over seeds); paired comparisons: analysis/paired.py (cluster bootstrap).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from analysis import paired
from analysis.runs import DEFAULT_ROUNDS
from analysis.sessions_table import MAX_POSITION, make_session_table, parse_positions
from analysis.tables import DEFAULT_OUT, default_metrics, make_table
from conf import metrics
from utils import InputError, OneLineParser, run_cli


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
    compare.add_argument(
        "-gain",
        default=None,
        metavar="A",
        help="one configuration: the paired difference of its last and first rounds (-rounds FIRST,LAST) with the "
        "same bootstrap interval: does interaction help? writes gain.md",
    )
    compare.add_argument(
        "-metric",
        default=None,
        help="column of per_image.csv to compare (default Dice_follow; " + ", ".join(metrics.names("per_image")) + ")",
    )
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
        help=f"comma-separated metric names of metrics.jsonl (default: {','.join(default_metrics())}); "
        "NoC@/NoF@ values are one per run",
    )
    p.add_argument(
        "-rounds",
        default=None,
        help=f"comma-separated 1-based rounds, 'last' = the last round of every run (default: {DEFAULT_ROUNDS}); "
        "with -compare also 'all'",
    )
    p.add_argument(
        "-positions",
        default=None,
        help="the session protocol (docs/evaluation.md#the-session-protocol): 'all' or positions such as 4-8 or 1,2; "
        "with run folders a table by position (sessions.md, sessions.csv, sessions.png), with -compare/-gain the "
        "pairs at those positions (default: the per-image protocol)",
    )
    p.add_argument(
        "-split",
        choices=("test", "val", "train"),
        default="test",
        help="rows to read: the final test's (test split), else the last epoch that has rows of this split",
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


def main(argv: list[str] | None = None) -> Any:
    """A table (returns the Table) or, with -compare, a paired comparison (returns a paired.Comparison)."""
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    if args.digits < 0:
        raise InputError(f"-digits: must not be negative, got {args.digits}")
    if out.exists() and not out.is_dir():
        raise InputError(f"-out {out}: exists and is not a folder")
    if args.compare is not None and args.gain is not None:
        raise InputError("-gain: one configuration's rounds, or -compare A B, not both")
    if args.compare is not None:
        return compare_main(args, out)
    if args.gain is not None:
        if args.runs or args.metrics is not None or args.skip_bad:
            raise InputError("-gain A: a paired comparison; give neither run folders, -metrics nor -skip_bad")
        return paired.run_gain(
            args.gain,
            args.metric or "Dice_follow",
            args.split,
            args.rounds,
            paired.N_BOOT if args.bootstrap is None else args.bootstrap,
            args.empty or "all",
            out,
            args.digits,
            pair_positions(args),
        )
    given = [f for f in ("metric", "bootstrap", "empty") if getattr(args, f) is not None]
    if given:
        raise InputError(f"-{given[0]}: only with -compare A B or -gain A")
    if not args.runs:
        raise InputError("RUN_DIR: give at least one run folder (or -compare A B)")
    if args.positions is not None:
        return make_session_table(
            args.runs, args.split, args.positions, args.metrics, args.rounds, out, args.digits, args.skip_bad
        )
    return make_table(args.runs, args.split, args.metrics, args.rounds, out, args.digits, args.skip_bad)


def pair_positions(args: Any) -> tuple[int, ...] | None:
    """-positions for a paired comparison: None (the per-image protocol), or the positions ('all': 1..1000)."""
    if args.positions is None:
        return None
    return parse_positions(args.positions) or tuple(range(1, MAX_POSITION + 1))


def compare_main(args: Any, out: Path) -> Any:
    """`-compare A B`: the table-only inputs are refused rather than ignored."""
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
        n_boot=paired.N_BOOT if args.bootstrap is None else args.bootstrap,
        empty=args.empty or "all",
        out=out,
        digits=args.digits,
        positions=pair_positions(args),
    )


if __name__ == "__main__":
    run_cli(main)
