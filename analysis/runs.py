"""Reading finished run folders: their flags (args.json) and the rows of their last evaluated epoch
(metrics.jsonl), for tables.py and the paired comparisons. No torch.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analysis.run_files import SUMMARY, is_final, read_numbered_metrics, read_summary
from conf.metrics import current_name
from utils import InputError

DEFAULT_ROUNDS = "1,3,last"
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
# A run-folder timestamp (`_YYYY_MM_DD_HH_MM_SS`, maybe `_2`) and seed suffixes (`_seed<N>`, `_data<N>`,
# `_data_seed<N>`, in any order), at the end of a name or of a path part.
TIMESTAMP = re.compile(r"_\d{4}(?:_\d{2}){5}(?:_\d+)?(?=$|[/\\])")
SEED_SUFFIX = re.compile(r"(?:[_-](?:data[_-]?)?seed[_-]?\d+|[_-]data[_-]?\d+)+(?=$|[/\\])", re.IGNORECASE)


def note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def warn_if_incomplete(folder: Path, split: str, epoch: int) -> None:
    """A run's test rows are its final test's only when summary.json, written last by that test, names their epoch;
    otherwise (no summary.json: the run is still training, stopped, was killed during its final test or is an older
    version's; another epoch: a final test replaced but not finished) they are still tabulated, with a warning line
    naming the run. Only the test split has a final test."""
    if split != "test":
        return
    summary = read_summary(folder)
    if not summary:
        warn(
            f"{folder}: no {SUMMARY}, so its final test did not complete (still training, stopped or killed, or an "
            f"older version's run); its test rows of epoch {epoch} are used; resume the run to complete it"
        )
    elif summary.get("test_epoch") != epoch:
        warn(
            f"{folder}: {SUMMARY} names test epoch {summary.get('test_epoch')}, but its test rows are of epoch "
            f"{epoch} (a final test interrupted before {SUMMARY} was rewritten?); the rows are used; resume the run "
            "to complete it"
        )


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


def load_run(folder: Path, split: str, explicit: bool, position: int | None = None) -> Run | None:
    """A run's flags and its `split` rows of one protocol — the per-image protocol's (`position` None), or the
    session protocol's at that position (docs/evaluation.md#the-session-protocol) — the final test's (rows marked
    final) when it has one, else the last evaluated epoch's. A (split, epoch, round) that appears twice among them
    is an InputError naming the file and the line (a run folder written twice over). A run found inside a parent
    folder that has no results yet (still running, or stopped before its first evaluation) is skipped with a note;
    one named explicitly is an error."""
    metrics_file = folder / "metrics.jsonl"
    if not metrics_file.is_file():
        if explicit:
            raise InputError(f"{folder}: not a run folder with results (no metrics.jsonl)")
        note(f"skipped {folder}: no metrics.jsonl yet")
        return None
    rows = [
        {**r, "line": n}
        for n, r in read_numbered_metrics(metrics_file)
        if r["split"] == split and r.get("position") == position
    ]
    if not rows:
        what = f"{split} rows" + ("" if position is None else f" of the session protocol at position {position}")
        if explicit:
            raise InputError(f"{metrics_file}: no {what} (not evaluated so yet)")
        note(f"skipped {folder}: no {what} yet")
        return None
    final = [r for r in rows if is_final(r)]
    rows = final or rows
    epoch = max(r["epoch"] for r in rows)
    by_round: dict[int, dict[str, Any]] = {}
    for r in rows:
        if r["epoch"] == epoch:
            if r["round"] in by_round:
                raise InputError(
                    f"{metrics_file}: {split} rows of epoch {epoch}, round {r['round']} appear twice (line "
                    f"{r['line']}): a run folder written over by two processes or an older version's resume"
                )
            by_round[r["round"]] = with_current_names({k: v for k, v in r.items() if k != "line"})
    run = Run(folder, read_json_object(folder / "args.json"), epoch, dict(sorted(by_round.items())))
    warn_if_incomplete(folder, split, epoch)
    return run


def load_runs(
    paths: Sequence[str], split: str = "test", skip_bad: bool = False, position: int | None = None
) -> list[Run]:
    """Every run with `split` rows (of the session protocol at `position`, see `load_run`); with `skip_bad` an
    unreadable run (bad args.json, a malformed metrics.jsonl line, ...) is listed on stderr and left out instead of
    being an error."""
    runs, skipped = [], 0
    for folder, explicit in find_run_folders(paths):
        try:
            run = load_run(folder, split, explicit and position is None, position)
        except InputError as err:
            if not skip_bad:
                raise
            note(f"skipped {folder}: {err}")
            skipped, run = skipped + 1, None
        if run is not None:
            runs.append(run)
    if not runs:
        reason = f" ({skipped} unreadable run folders skipped)" if skipped else ""
        where = "" if position is None else f" of the session protocol at position {position}"
        raise InputError(f"{', '.join(paths)}: no run folder with {split} rows{where}{reason}")
    return runs


def normalise(value: Any) -> Any:
    """Strip run-folder timestamps and `_seed<N>` suffixes from strings (exp_name, checkpoint paths)."""
    return SEED_SUFFIX.sub("", TIMESTAMP.sub("", value)) if isinstance(value, str) else value


def config_flags(run: Run) -> dict[str, Any]:
    return {k: normalise(v) for k, v in run.args.items() if k not in IGNORED_FLAGS}


def with_current_names(row: dict[str, Any]) -> dict[str, Any]:
    """A metrics.jsonl row with the metric names of today (an older run's `Dice` read as `Dice_neutral`)."""
    return {current_name(k) if current_name(k) not in row else k: v for k, v in row.items()}
