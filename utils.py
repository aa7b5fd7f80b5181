"""Small helpers shared across the project: errors for bad input, device choice, seeding, atomic saves.

Nothing here runs at import time.
"""

from __future__ import annotations

import os
import random
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch


class InputError(Exception):
    """Bad user input (a file, a folder, a flag). The message is one line naming it and the problem.

    Command-line entry points print it as `error: <message>` and exit with status 2 (see `run_cli`).
    """


def run_cli(main: Callable[[list[str] | None], Any], argv: list[str] | None = None) -> None:
    """Run a command-line `main(argv)`; turn an `InputError` into one line on stderr and exit 2."""
    try:
        main(argv)
    except InputError as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def one_line(err: BaseException) -> str:
    """The message of an error as one line; an error re-raised from a DataLoader worker carries the worker's
    traceback, whose last line is the original `Class: message`."""
    text = str(err).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return " ".join(text.split()) or type(err).__name__


def natural_key(name: str) -> tuple:
    """Sort key comparing digit runs as numbers ("slice_9" < "slice_10"); ties broken by the raw name."""
    parts = re.split(r"(\d+)", name)  # str, int, str, int, ... at fixed parities: always comparable
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), name


def choose_device(name: str = "auto", local_rank: int | None = None) -> torch.device:
    """The one place a device is chosen: `auto` is CUDA when available, else CPU.

    A torchrun process (`local_rank` given) on CUDA takes the GPU of its local rank, one GPU per process.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"-device {name}: CUDA is not available on this machine (use -device cpu)")
    if device.type == "cuda" and local_rank is not None:
        device = torch.device(device.type, local_rank)
    return device


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save` to a temporary file in the same folder, then rename: a crash never leaves a truncated file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
