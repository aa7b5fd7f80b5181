"""The sweep's status table: one row per job (state, note, log, the log's last line), redrawn every second on a
terminal, one line per change otherwise (a log file, CI), and written to <out>/sweep_status.md and .json on
every change and at the end.

States: queued, waiting (its arguments name runs of earlier lines that do not exist yet), submitted (to the
cluster), running, resumed (running from its checkpoint), done, failed, interrupted (stopped; the next sweep
resumes it), elsewhere (another process runs its run folder). A row's state is the newer of what this process
marked and what the job's record says (on a cluster the job writes its record itself).
"""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

from sweeps.jobs import Job, last_line, read_record
from utils import atomic_write_bytes

STATUS = "sweep_status"  # .md and .json in the sweep's state folder
COLUMNS = ("job", "line", "state", "note", "run", "log", "last line")


class Board:
    def __init__(self, out: Path, stream: TextIO | None = None):
        self.out, self.stream = out, stream or sys.stdout
        self.tty = self.stream.isatty()
        self.jobs: list[Job] = []
        self.marks: dict[str, tuple[str, str, float]] = {}
        self.printed: dict[str, str] = {}
        self.lock = threading.Lock()
        self.written = ""

    def show(self, jobs: list[Job]) -> None:
        """The jobs of the latest reading of the sweep file."""
        with self.lock:
            self.jobs = list(jobs)

    def mark(self, job: Job, state: str, note: str = "") -> None:
        with self.lock:
            self.marks[job.id] = (state, note, time.time())
        self.update()

    def row(self, job: Job) -> dict[str, Any]:
        record = read_record(job)
        state, note, stamp = self.marks.get(job.id, ("queued", "", 0.0))
        if record.get("updated", 0.0) > stamp and record.get("state"):
            state, note = record["state"], record.get("reason", "") if record["state"] == "failed" else ""
        return {
            "job": job.id,
            "line": job.line,
            "state": state,
            "note": note,
            "run": record.get("run_dir", "") if state == "done" else "",
            "log": str(job.log),
            "last line": last_line(job.log),
            "command": job.text(),
        }

    def rows(self) -> list[dict[str, Any]]:
        with self.lock:
            jobs = list(self.jobs)
        return [self.row(job) for job in jobs]

    def update(self) -> None:
        """Print the changes (not on a terminal, where `redraw` shows the table) and rewrite the files."""
        rows = self.rows()
        if not self.tty:
            for r in rows:
                said = f"{r['state']} {r['note']}".strip()
                if self.printed.get(r["job"]) != said:
                    self.printed[r["job"]] = said
                    where = f" (line {r['line']})" if r["line"] is not None else ""
                    self.stream.write(f"sweep: {r['job']}{where}: {said}; log {r['log']}\n")
            self.stream.flush()
        self.write(rows)

    def redraw(self) -> None:
        """On a terminal: the table, cut to its width (called about once a second)."""
        rows = self.rows()
        if self.tty:
            width = shutil.get_terminal_size().columns
            lines = [text[:width] for text in summary_lines(rows)]
            self.stream.write("\x1b[H\x1b[J" + "\n".join(lines) + "\n")
            self.stream.flush()
        else:
            self.update()
        self.write(rows)

    def write(self, rows: list[dict[str, Any]]) -> None:
        text = markdown(rows)
        if text == self.written:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.out / f"{STATUS}.md", text.encode())
        counts = dict(Counter(r["state"] for r in rows))
        blob = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "counts": counts, "jobs": rows}
        atomic_write_bytes(self.out / f"{STATUS}.json", (json.dumps(blob, indent=1) + "\n").encode())
        self.written = text

    def final(self) -> dict[str, int]:
        """The table once more, in full (whatever the stream), and the count of each state."""
        rows = self.rows()
        self.write(rows)
        self.stream.write(markdown(rows))
        self.stream.flush()
        return dict(Counter(r["state"] for r in rows))


def cell(value: Any) -> str:
    return "" if value is None else str(value).replace("|", "\\|")


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(r[c]) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def summary_lines(rows: list[dict[str, Any]]) -> list[str]:
    counts = Counter(r["state"] for r in rows)
    head = "sweep: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    return [head] + [f"{r['state']:<11} {r['job']:<40} {r['last line']}" for r in rows]
