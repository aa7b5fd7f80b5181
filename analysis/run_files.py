"""The files of a run folder as data: metrics.jsonl and per_image.csv read (every line checked) and, for a resume,
repaired. No torch: tables.py and the paired comparisons read run folders with this alone.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from conf import metrics
from utils import InputError, atomic_write_bytes

# per_image.csv: one row per (evaluation, image, followed rater, round); followed -1 when the target is not a rater.
PER_IMAGE_COLUMNS = (
    "epoch",
    "split",
    "mode",
    "round",
    "clicks",
    "image",
    "followed",
    *metrics.names("per_image"),
    "empty_followed",
)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl rows; a bad line is reported (InputError) with its 1-based line number."""
    try:
        lines = Path(path).read_bytes().splitlines()
    except OSError as err:
        raise InputError(f"{path}: not readable ({err})") from None
    return [_parse_metrics_line(line, path, n) for n, line in enumerate(lines, start=1) if line.strip()]


def _parse_metrics_line(line: bytes, path: Path, n: int) -> dict[str, Any]:
    """The row on metrics.jsonl line `n` (1-based); InputError naming the file and line when it is not one."""
    try:
        row = json.loads(line)
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise InputError(f"{path} line {n}: not valid JSON ({getattr(err, 'msg', err)})") from None
    if not (
        isinstance(row, dict)
        and isinstance(row.get("split"), str)
        and _is_count(row.get("epoch"))
        and _is_count(row.get("round"))
    ):
        raise InputError(f"{path} line {n}: expected an object with an integer epoch and round and a split")
    return row


def repair_metrics(path: Path, through_epoch: int) -> list[str]:
    """Fit a stopped run's metrics.jsonl for its resume from the checkpoint of epoch `through_epoch`.

    Cuts a partial last line (a kill mid-write leaves one without its newline that does not parse) and drops the
    rows of later epochs (written by an epoch whose checkpoint was never saved), so that every (split, epoch,
    round) appears once after the resume. Any other malformed line is an InputError naming the file and line:
    nothing is skipped silently. The file is rewritten atomically, only when something changed, keeping the
    bytes of every kept line. Returns human-readable notes of what was done (empty: nothing to repair).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:  # stopped before its first row
        return []
    except OSError as err:
        raise InputError(f"{path}: not readable ({err})") from None
    lines = data.split(b"\n")
    tail = lines.pop()  # what follows the last newline: empty for a file of whole lines
    notes = []
    if tail:
        try:
            _parse_metrics_line(tail, path, len(lines) + 1)
            lines.append(tail)
            notes.append("added the missing newline after the last row")
        except InputError:
            notes.append(f"cut a partial last line ({len(tail)} bytes)")
    kept, dropped = [], {}
    for n, line in enumerate(lines, start=1):
        if line.strip():  # blank lines are kept as they are (readers skip them)
            epoch = _parse_metrics_line(line, path, n)["epoch"]
            if epoch > through_epoch:
                dropped[epoch] = dropped.get(epoch, 0) + 1
                continue
        kept.append(line)
    notes += [f"dropped {k} row{'s' * (k != 1)} of epoch {e}" for e, k in sorted(dropped.items())]
    if notes:
        atomic_write_bytes(path, b"".join(line + b"\n" for line in kept))
    return notes


def repair_per_image(path: Path, through_epoch: int) -> list[str]:
    """per_image.csv for a resume after epoch `through_epoch`: a partial last line cut, rows of later epochs dropped
    (rewritten atomically when something changed) -> notes."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")
    tail, notes = lines.pop(), []
    if tail:
        notes.append(f"cut a partial last line ({len(tail)} bytes)")
    header, rows = (lines[0], lines[1:]) if lines else (b"", [])
    try:
        epoch_at = next(csv.reader([header.decode()])).index("epoch")
        kept = [row for row in rows if not row or int(next(csv.reader([row.decode()]))[epoch_at]) <= through_epoch]
    except (UnicodeDecodeError, ValueError, IndexError, StopIteration):
        raise InputError(f"{path}: not a per_image.csv this project wrote (no readable epoch column)") from None
    if len(kept) < len(rows):
        notes.append(f"dropped {len(rows) - len(kept)} rows of epochs after {through_epoch}")
    if notes:
        atomic_write_bytes(path, b"".join(line + b"\n" for line in [header, *kept]))
    return notes
