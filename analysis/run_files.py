"""The files of a run folder as data: metrics.jsonl and per_image.csv read (every line checked) and, for a resume,
repaired. No torch: tables.py and the paired comparisons read run folders with this alone.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from conf import metrics
from utils import InputError, atomic_write_bytes

FINAL = "final"  # rows of the final test carry final: true (metrics.jsonl) / 1 (per_image.csv)
SUMMARY = "summary.json"  # written last by a run's final test: its presence says the run is complete


def per_image_columns() -> list[str]:
    """The columns of a new per_image.csv, one row per (evaluation, image, followed rater, round): the key columns
    (followed -1 when the target is not a rater; position and session empty in the per-image protocol, the image's
    1-based position in its session and the session's number in the session protocol), the per_image metrics of
    conf/metrics.py as the table is now, and whether the followed mask is empty and the row belongs to the final
    test."""
    keys = ["epoch", "split", "mode", "round", "clicks", "image", "followed", "position", "session"]
    return [*keys, *metrics.names("per_image"), "empty_followed", FINAL]


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl rows; a bad line is reported (InputError) with its 1-based line number."""
    return [row for _, row in read_numbered_metrics(path)]


def read_numbered_metrics(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """metrics.jsonl rows with their 1-based line numbers."""
    try:
        lines = Path(path).read_bytes().splitlines()
    except OSError as err:
        raise InputError(f"{path}: not readable ({err})") from None
    return [(n, _parse_metrics_line(line, path, n)) for n, line in enumerate(lines, start=1) if line.strip()]


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


def _whole_lines(path: Path, parse: Callable[[bytes, int], Any] | None) -> tuple[list[bytes], list[str]]:
    """A file's complete lines (a partial last line cut: a kill mid-write leaves one without its newline; with
    `parse` a last line that parses only lacks its newline and is kept) and notes saying what was cut."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:  # stopped before its first row
        return [], []
    except OSError as err:
        raise InputError(f"{path}: not readable ({err})") from None
    lines = data.split(b"\n")
    tail = lines.pop()  # what follows the last newline: empty for a file of whole lines
    if not tail:
        return lines, []
    if parse is not None:
        try:
            parse(tail, len(lines) + 1)
            return [*lines, tail], ["added the missing newline after the last row"]
        except InputError:
            pass
    return lines, [f"cut a partial last line ({len(tail)} bytes)"]


def is_final(row: Mapping[str, Any]) -> bool:
    """Whether a metrics.jsonl / per_image.csv row belongs to the run's final test (the test split evaluated once
    with the best checkpoint)."""
    return str(row.get(FINAL, "")).lower() in ("true", "1")


def rewrite_metrics(
    path: Path, drop: Callable[[dict], bool], extra: list[dict] | None = None
) -> tuple[dict, list[str]]:
    """Rewrite metrics.jsonl atomically without the rows `drop` selects (and with `extra` rows appended), a partial
    last line cut; every kept line keeps its bytes. Any other malformed line is an InputError naming the file and
    line: nothing is skipped silently. -> ({epoch: rows dropped}, notes on cut lines); not rewritten when nothing
    changes."""
    path = Path(path)
    lines, notes = _whole_lines(path, lambda line, n: _parse_metrics_line(line, path, n))
    kept, dropped = [], {}
    for n, line in enumerate(lines, start=1):
        if line.strip():  # blank lines are kept as they are (readers skip them)
            row = _parse_metrics_line(line, path, n)
            if drop(row):
                dropped[row["epoch"]] = dropped.get(row["epoch"], 0) + 1
                continue
        kept.append(line)
    kept += [json.dumps(row).encode() for row in extra or []]
    if notes or dropped or extra:
        atomic_write_bytes(path, b"".join(line + b"\n" for line in kept))
    return dropped, notes


def read_summary(run: Path) -> dict[str, Any]:
    """A run folder's summary.json (written last by its final test), or {} when there is none (or it is unreadable)."""
    try:
        summary = json.loads((Path(run) / SUMMARY).read_text())
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}


def repair_metrics(path: Path, through_epoch: int) -> list[str]:
    """Fit a stopped run's metrics.jsonl for its resume from the checkpoint of epoch `through_epoch`: a partial
    last line cut, the rows of later epochs dropped (written by an epoch whose checkpoint was never saved), so that
    every (split, epoch, round, final) appears once after the resume. -> notes (empty: nothing to repair)."""
    dropped, notes = rewrite_metrics(path, lambda row: row["epoch"] > through_epoch)
    return notes + [f"dropped {k} row{'s' * (k != 1)} of epoch {e}" for e, k in sorted(dropped.items())]


def read_per_image_rows(path: Path) -> tuple[list[str], list[tuple[int, bytes, dict[str, str]]], list[str]]:
    """per_image.csv as (header columns, [(line number, line, row)], notes on a cut last line). A row whose field
    count is not the header's is an InputError naming the file and line (a last line without its newline: cut
    short, a kill while writing)."""

    def complete(tail: bytes, n: int) -> None:  # a last line without its newline is whole when its fields are
        fields = next(csv.reader([tail.decode(errors="replace")]), [])
        if n == 1 or len(fields) != len(next(csv.reader([head.decode(errors="replace")]), [])):
            raise InputError("cut")

    head = Path(path).read_bytes().split(b"\n", 1)[0] if Path(path).is_file() else b""
    lines, notes = _whole_lines(Path(path), complete)
    notes = [note for note in notes if not note.startswith("added the missing newline")]
    if not lines:
        return [], [], notes
    try:
        header = next(csv.reader([lines[0].decode()]))
        rows = []
        for n, line in enumerate(lines[1:], start=2):
            if not line.strip():
                continue
            fields = next(csv.reader([line.decode()]))
            if len(fields) != len(header):
                raise InputError(f"{path} line {n}: {len(fields)} fields, the header has {len(header)}")
            rows.append((n, line, dict(zip(header, fields))))
    except (UnicodeDecodeError, csv.Error, StopIteration) as err:
        raise InputError(f"{path}: not a per_image.csv this project wrote ({err})") from None
    if "epoch" not in header:
        raise InputError(f"{path}: not a per_image.csv this project wrote (no epoch column)")
    return header, rows, notes


def rewrite_per_image(
    path: Path, drop: Callable[[dict], bool], extra: list[dict] | None = None
) -> tuple[int, list[str]]:
    """per_image.csv rewritten atomically without the rows `drop` selects (`extra` rows appended; a new file gets
    the header) -> (rows dropped, notes on a cut last line)."""
    path = Path(path)
    columns, rows, notes = read_per_image_rows(path)
    try:
        kept = [line for _, line, row in rows if not drop(row)]
    except ValueError as err:
        raise InputError(f"{path}: a row with an unreadable epoch ({err})") from None
    dropped = len(rows) - len(kept)
    if extra and columns and FINAL not in columns:  # an older run's file: give it the final column (empty below)
        columns = [*columns, FINAL]
        kept = [line.rstrip(b"\r") + b"," + line[len(line.rstrip(b"\r")) :] for line in kept]
    if notes or dropped or extra:
        header = csv_lines([], b"", columns).encode().rstrip(b"\r\n") if columns else b""
        body = b"".join(line + b"\n" for line in ([header] if header else []) + kept)
        atomic_write_bytes(path, body + csv_lines(extra or [], header).encode())
    return dropped, notes


def csv_lines(rows: list[dict], header: bytes = b"", columns: list[str] | None = None) -> str:
    """per_image.csv lines of `rows`: in the columns of an existing file's `header` (an older run's names mapped to
    today's), or, for a new file, `columns` (default `per_image_columns()`) with the header line first."""
    out = io.StringIO()
    columns = next(csv.reader([header.decode()])) if header else list(columns or per_image_columns())
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore")  # \r\n, as csv writes
    if not header:
        writer.writeheader()
    writer.writerows({c: row.get(c, row.get(metrics.current_name(c), "")) for c in columns} for row in rows)
    return out.getvalue()


def per_image_header(path: Path) -> bytes:
    """The header line of an existing per_image.csv (b"" when there is none yet)."""
    try:
        with Path(path).open("rb") as f:
            return f.readline().rstrip(b"\r\n")
    except FileNotFoundError:
        return b""


def repair_per_image(path: Path, through_epoch: int) -> list[str]:
    """per_image.csv for a resume after epoch `through_epoch`: a partial last line cut, rows of later epochs dropped
    (rewritten atomically when something changed) -> notes."""
    dropped, notes = rewrite_per_image(path, lambda row: int(row["epoch"]) > through_epoch)
    return notes + ([f"dropped {dropped} rows of epochs after {through_epoch}"] if dropped else [])
