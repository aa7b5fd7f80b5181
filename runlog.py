"""The run folder (SPEC §7.1): args.json, a human-readable log, tensorboard events, metrics.jsonl, plots.

    <log_dir>/<exp_name>_<YYYY_MM_DD_HH_MM_SS>/
        args.json   Log/log.txt   Log/events.*   Model/checkpoint_{best,last}.pth   metrics.jsonl   plots/
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Iterable

from utils import InputError

# Columns of the per-round table printed after validation (all are in metrics.jsonl).
TABLE_COLUMNS = ("round", "clicks", "Dice", "IoU", "Dice_follow", "Gain_over_consensus", "Dice_personal_mean",
                 "GED", "Dice_match", "Dice_soft")  # fmt: skip


def make_logger(name: str, log_file: Path | None, enabled: bool = True) -> logging.Logger:
    """A logger writing `time level message` lines to stdout and, when given, to `log_file`."""
    logger = logging.getLogger(name)
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO if enabled else logging.CRITICAL + 1)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if log_file is not None:
        handlers.append(logging.FileHandler(log_file))
    for h in handlers:
        h.setFormatter(fmt)
        logger.addHandler(h)
    return logger


def claim_folder(path: Path) -> Path:
    """Create `path`, or `path_2`, `path_3`, ... when a run started in the same second already took it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        candidate = path if n == 1 else path.with_name(f"{path.name}_{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise FileExistsError(f"{path}: could not create a fresh run folder")


class RunFolder:
    """Creates (or, on resume, reopens) a run folder and writes everything a run leaves behind.

    Only the main process writes (`enabled=False` on the other ranks makes every method a no-op).
    """

    def __init__(self, args: argparse.Namespace, root: Path | None = None, enabled: bool = True, suffix: str = ""):
        self.enabled = enabled
        if root is None:
            stamp = time.strftime("%Y_%m_%d_%H_%M_%S")
            root = Path(args.log_dir) / f"{args.exp_name}{suffix}_{stamp}"
            root = claim_folder(root) if enabled else root
        self.root = Path(root)
        self.model_dir, self.log_dir, self.plot_dir = self.root / "Model", self.root / "Log", self.root / "plots"
        self.metrics_file = self.root / "metrics.jsonl"
        self._writer = None
        if enabled:
            for d in (self.model_dir, self.log_dir, self.plot_dir):
                d.mkdir(parents=True, exist_ok=True)
            args_json = {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, type(None)))}
            (self.root / "args.json").write_text(json.dumps(args_json, indent=2, sort_keys=True) + "\n")
        self.logger = make_logger(f"aespa.{id(self)}", self.log_dir / "log.txt" if enabled else None, enabled)

    def log(self, message: str) -> None:
        self.logger.info(message)

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
        with self.metrics_file.open("a") as f:
            for row in rows:
                f.write(json.dumps(row, sort_keys=False) + "\n")
        for row in rows:
            for key, value in row.items():
                if isinstance(value, float) and key not in ("epoch", "round", "clicks"):
                    self.scalar(f"{row['split']}/{key}/round_{row['round']}", value, row["epoch"])

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        for h in self.logger.handlers:
            h.close()


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl rows; a bad line is reported (InputError) with its 1-based line number."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not readable ({err})") from None
    rows = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{path} line {n}: not valid JSON ({err.msg})") from None
        if not (isinstance(row, dict) and isinstance(row.get("split"), str) and _is_count(row.get("epoch"))
                and _is_count(row.get("round"))):  # fmt: skip
            raise InputError(f"{path} line {n}: expected an object with an integer epoch and round and a split")
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]], columns: Iterable[str] = TABLE_COLUMNS) -> str:
    """A markdown table of per-round rows (missing values shown as '-')."""
    columns = [c for c in columns if any(c in r for r in rows)]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c, "-")
            cells.append(f"{v:.4f}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
