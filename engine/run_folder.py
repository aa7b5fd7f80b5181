"""The run folder (docs/run-folder.md) and everything a run writes into it.

<log_dir>/<exp_name>_<YYYY_MM_DD_HH_MM_SS>/
    args.json   resumes.jsonl   Log/log.txt   Log/events.*   Model/checkpoint_{best,last}.pth   metrics.jsonl
    per_image.csv   follow_matrix_<split>_epochNNN.json   summary.json   plots/   .lock
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

try:  # POSIX: a run folder's lock; elsewhere runs are not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

from analysis.run_files import (
    FINAL,
    csv_lines,
    is_final,
    per_image_header,
    read_metrics,
    read_summary,
    repair_metrics,
    repair_per_image,
    rewrite_metrics,
    rewrite_per_image,
)
from conf import metrics
from engine.config import RunConfig
from utils import InputError, atomic_write_bytes, claim_folder, remove_stale_temporaries

DATE = "%Y-%m-%d %H:%M:%S"
WARNING_FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", DATE)


class _Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname.lower()} ({record.name}): {record.getMessage()}")


@contextlib.contextmanager
def early_warnings() -> Iterator[list[str]]:
    """Warnings of the library modules while a run is set up, before its folder exists: shown on stderr and kept
    (the yielded list) for the run log."""
    kept, shown = _Kept(), logging.StreamHandler(sys.stderr)
    shown.setLevel(logging.WARNING)
    shown.setFormatter(WARNING_FORMAT)
    root = logging.getLogger()
    root.addHandler(kept)
    root.addHandler(shown)
    try:
        yield kept.lines
    finally:
        root.removeHandler(kept)
        root.removeHandler(shown)


def make_logger(name: str, log_file: Path | None, enabled: bool = True) -> logging.Logger:
    """A logger writing `time level message` lines to stdout and, when given, to `log_file`."""
    logger = logging.getLogger(name)
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO if enabled else logging.CRITICAL + 1)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", DATE)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if log_file is not None:
        handlers.append(logging.FileHandler(log_file))
    for h in handlers:
        h.setFormatter(fmt)
        logger.addHandler(h)
    return logger


LOCK_FILE = ".lock"
LAST_CHECKPOINT, BEST_CHECKPOINT = "checkpoint_last.pth", "checkpoint_best.pth"  # in Model/


def lock_run_folder(root: Path) -> tuple[int, ...]:
    """One process per run folder: an exclusive lock on the run folder itself and on <run>/.lock (which holds the
    owner's pid), both released by the operating system when the process ends, killed or not. Deleting .lock does
    not free the run: the folder's lock is kept whatever becomes of the files in it. A file system that cannot lock
    a folder (NFS) keeps the lock on .lock alone. -> the locks' file descriptors (keep them open until the run
    ends; see `unlock`); InputError naming the folder and the holder's pid when another process holds either."""
    if fcntl is None:
        return ()
    held: list[int] = []
    try:
        folder = os.open(root, os.O_RDONLY)
        held.append(folder)
        if not _try_lock(folder, root):
            os.close(held.pop())  # a file system without folder locks: the file's lock alone
        file = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
        held.append(file)
        _try_lock(file, root)
        os.ftruncate(file, 0)
        os.write(file, f"{os.getpid()}\n".encode())
    except BaseException:
        unlock(tuple(held))
        raise
    return tuple(held)


def _try_lock(fd: int, root: Path) -> bool:
    """Take an exclusive lock on `fd` without waiting -> False where the file system cannot lock it; InputError
    naming the holder (the pid in <run>/.lock, "?" when that file is gone) when another process holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            owner = (root / LOCK_FILE).read_text(errors="replace").strip() or "?"
        except OSError:
            owner = "?"
        raise InputError(f"{root}: another process (pid {owner}) is running this run; wait for it or stop it") from None
    except OSError:  # EBADF, ENOLCK, EOPNOTSUPP: no lock of this kind here
        return False
    return True


def unlock(fds: tuple[int, ...]) -> None:
    """Release the locks of `lock_run_folder`."""
    for fd in fds:
        os.close(fd)


class RunFolder:
    """Creates (or, on resume, reopens) a run folder and writes everything a run leaves behind.

    Only the main process writes (`enabled=False` on the other ranks makes every method a no-op).
    """

    def __init__(self, cfg: RunConfig, root: Path | None = None, enabled: bool = True, suffix: str = ""):
        """A new run folder under -log_dir, or (`root`) the folder of a run being resumed: its args.json, the
        record of the run as it started, is never rewritten."""
        self.enabled = enabled
        new = root is None
        if new:
            stamp = time.strftime("%Y_%m_%d_%H_%M_%S")
            root = Path(cfg.log_dir) / f"{cfg.exp_name}{suffix}_{stamp}"
            root = claim_folder(root) if enabled else root
        self.root = Path(root)
        self._lock = lock_run_folder(self.root) if enabled else ()
        self._warnings: list[logging.Handler] = []
        self._writer, self.logger = None, None
        try:
            self._open(cfg, new, enabled)
        except BaseException:  # the lock is not kept by a folder that failed to open
            self.close()
            raise

    def _open(self, cfg: RunConfig, new: bool, enabled: bool) -> None:
        self.model_dir, self.log_dir, self.plot_dir = self.root / "Model", self.root / "Log", self.root / "plots"
        self.metrics_file = self.root / "metrics.jsonl"
        self.per_image_file = self.root / "per_image.csv"
        self.history: list[dict[str, Any]] = []  # every metrics.jsonl row of the run (figures over epochs)
        if enabled:
            for d in (self.model_dir, self.log_dir, self.plot_dir):
                d.mkdir(parents=True, exist_ok=True)
            if new:
                (self.root / "args.json").write_text(json.dumps(cfg.flags(), indent=2, sort_keys=True) + "\n")
        self.logger = make_logger(f"aespa.{id(self)}", self.log_dir / "log.txt" if enabled else None, enabled)
        # warnings of the library modules (dataset, caches, ...) reach the run log as well as stderr (on the main
        # process only: another rank's folder is not there to open)
        if enabled:
            self._warnings = [logging.FileHandler(self.log_dir / "log.txt"), logging.StreamHandler(sys.stderr)]
        for handler in self._warnings:
            handler.setLevel(logging.WARNING)
            handler.setFormatter(WARNING_FORMAT)
            logging.getLogger().addHandler(handler)

    def clean_up(self, through_epoch: int) -> list[str]:
        """Before a run starts or resumes after epoch `through_epoch`: temporary files of interrupted saves removed,
        metrics.jsonl and per_image.csv cut to what that epoch's checkpoint knows -> notes for the log."""
        if not self.enabled:
            return []
        notes = [
            f"removed {p} (left by an interrupted save)"
            for folder in (self.root, self.model_dir)
            for p in remove_stale_temporaries(folder)
        ]
        notes += [f"metrics.jsonl: {note}" for note in repair_metrics(self.metrics_file, through_epoch)]
        notes += [f"per_image.csv: {note}" for note in repair_per_image(self.per_image_file, through_epoch)]
        self.history = read_metrics(self.metrics_file) if self.metrics_file.exists() else []
        return notes

    def record_resume(self, epoch: int, changed: dict[str, tuple]) -> None:
        """Append a resume to resumes.jsonl: when, after which epoch, which flags were named with new values."""
        if self.enabled:
            record = {
                "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                "after_epoch": epoch,
                "changed": {f: {"from": old, "to": new} for f, (old, new) in changed.items()},
            }
            with (self.root / "resumes.jsonl").open("a") as f:
                f.write(json.dumps(record) + "\n")

    def log(self, message: str) -> None:
        self.logger.info(message)

    def warning(self, message: str) -> None:
        """A WARNING line in the log (and on stdout): grep WARNING."""
        self.logger.warning(message)

    @property
    def writer(self):
        """tensorboardX writer, created on first use (its import is slow)."""
        if self._writer is None and self.enabled:
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(logdir=str(self.log_dir))
        return self._writer

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.enabled and math.isfinite(value):
            self.writer.add_scalar(tag, value, step)

    def write_metrics(self, rows: Iterable[dict[str, Any]]) -> None:
        """Append rows to metrics.jsonl (one JSON object per round) and mirror them in tensorboard."""
        if not self.enabled:
            return
        rows = list(rows)
        self.history += rows
        with self.metrics_file.open("a") as f:
            for row in rows:
                f.write(json.dumps(row, sort_keys=False) + "\n")
        self._mirror(rows)

    def _mirror(self, rows: list[dict[str, Any]]) -> None:
        """Metric rows as tensorboard scalars."""
        for row in rows:
            for key, value in row.items():
                if isinstance(value, float) and key not in ("epoch", "round", "clicks"):
                    self.scalar(f"{row['split']}/{key}/round_{row['round']}", value, row["epoch"])

    def final_test_epoch(self) -> int | None:
        """The epoch an earlier final test evaluated (summary.json), or None."""
        return read_summary(self.root).get("test_epoch")

    def remove_test_files(self, epoch: int) -> None:
        """The test split's following matrix and figures of `epoch` (an earlier final test's, now replaced)."""
        if self.enabled:
            for path in (
                self.root / f"follow_matrix_test_epoch{epoch:03d}.json",
                self.plot_dir / f"follow_matrix_test_epoch{epoch:03d}.png",
                self.plot_dir / f"qualitative_test_epoch{epoch:03d}.png",
            ):
                path.unlink(missing_ok=True)

    def write_per_image(self, rows: list[dict[str, Any]]) -> None:
        """Append rows to per_image.csv (one per image, followed rater and round; the header when new)."""
        if not self.enabled or not rows:
            return
        text = csv_lines(rows, per_image_header(self.per_image_file))
        with self.per_image_file.open("a", newline="") as f:
            f.write(text)

    def replace_final_test(self, rows: list[dict[str, Any]], per_image: list[dict[str, Any]]) -> None:
        """The final test's rows (marked `final`) in metrics.jsonl and per_image.csv, replacing an earlier final
        test's (a resumed run tests again): each file rewritten atomically, so a kill leaves the old test or the new
        one, never both and never half."""
        if not self.enabled:
            return
        rows = [{**row, FINAL: True} for row in rows]
        rewrite_metrics(self.metrics_file, is_final, rows)
        rewrite_per_image(self.per_image_file, is_final, [{**row, FINAL: 1} for row in per_image])
        self.history = [r for r in self.history if not is_final(r)] + rows
        self._mirror(rows)

    def stopped(self, problem: InputError, epoch: int) -> InputError:
        """The run stops during `epoch` (e.g. its training diverged): the line that says so and what the folder
        keeps — the last checkpoint, of the epoch before, or none — logged and returned to raise."""
        last = self.model_dir / LAST_CHECKPOINT
        if epoch > 1 and last.is_file():
            kept = f"{last} keeps epoch {epoch - 1}, the last finished"
        else:
            kept = f"no checkpoint was written ({self.root} holds no finished epoch)"
        message = f"{problem}; the run stops, {kept}"
        if self.enabled:
            self.logger.error(message)
        return type(problem)(message)

    def write_json(self, name: str, obj: dict) -> None:
        """Write a JSON file into the run folder (atomically)."""
        if self.enabled:
            atomic_write_bytes(self.root / name, (json.dumps(obj, indent=1) + "\n").encode())

    def close(self) -> None:
        unlock(self._lock)
        self._lock = ()
        for handler in self._warnings:
            logging.getLogger().removeHandler(handler)
            handler.close()
        self._warnings = []
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        for h in self.logger.handlers if self.logger is not None else []:
            h.close()


def format_table(rows: list[dict[str, Any]], columns: Iterable[str] | None = None) -> str:
    """A markdown table of per-round rows (missing values shown as '-'); by default the console metrics of
    conf/metrics.py, those with one value per evaluation (per_run) once, on a line below the table."""
    if columns is None:
        console = metrics.names("console")
        columns = ["round", "clicks", *(c for c in console if not metrics.is_per_run(c))]
        once = [c for c in console if metrics.is_per_run(c) and rows and c in rows[-1]]
    else:
        once = []
    columns = [c for c in columns if any(c in r for r in rows)]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c, "-")
            cells.append(f"{v:.4f}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    if once:
        lines.append("  ".join(f"{c} {rows[-1][c]:.4f}" for c in once))
    return "\n".join(lines)
