"""Small helpers shared across the project: errors for bad input, the one-line command-line runner, natural
sorting, atomic file writes, a one-line argparse parser, matplotlib without a display.

Nothing here runs at import time, and nothing here imports torch (tables.py and the analysis of finished runs
use it without torch).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import secrets
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO


class InputError(Exception):
    """Bad user input (a file, a folder, a flag). The message is one line naming it and the problem.

    Command-line entry points print it as `error: <message>` and exit with status 2 (see `run_cli`).
    """


def run_cli(
    main: Callable[[list[str] | None], Any],
    argv: list[str] | None = None,
    input_errors: tuple[type[BaseException], ...] = (InputError,),
) -> None:
    """Run a command-line `main(argv)`; turn an `InputError` (or another of `input_errors`, e.g. the model
    package's CheckpointError) into one line on stderr and exit 2."""
    signal.signal(signal.SIGTERM, _terminate)  # a kill unwinds like Ctrl-C: atomic writes remove their temporaries
    try:
        main(argv)
    except input_errors as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        sys.exit(2)
    except BaseException as err:
        stop = interruption(err)
        if stop is None:
            raise
        print("interrupted", file=sys.stderr)
        sys.exit(128 + getattr(stop, "signum", signal.SIGINT))  # the shell's convention: 130 Ctrl-C, 143 SIGTERM


def interruption(err: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C or SIGTERM (`Terminated`) behind `err`: `err` itself, or the interrupt that was being unwound when
    `err` arose (a library cleaning up after it, e.g. torch.save's zip writer closing a half-written archive,
    raises its own error) -> None when no interrupt is involved."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, KeyboardInterrupt):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


class Terminated(KeyboardInterrupt):
    """A termination signal (SIGTERM), unwound like Ctrl-C; `signum` gives the exit status 128 + signum."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


def _terminate(signum, frame) -> None:
    raise Terminated(signum)


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


# The temporary file of an atomic write: `.{name}.{8 characters}.tmp` beside its target (our hex names, or
# tempfile.mkstemp's [a-z0-9_] names of earlier versions).
TEMPORARY_NAME = re.compile(r"\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp")


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> None:
    """`write(f)` into a temporary file in the same folder, then rename: a crash never leaves a truncated file.

    The temporary is created with mode 0o666, which the umask trims like any file open() creates (mkstemp's
    0o600 would make checkpoints private unlike the rest of the run folder).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"{path.parent}: no free temporary file name for {path.name}")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        stop = interruption(err)
        if stop is not None and stop is not err:  # a writer's error raised while a signal unwound it: the signal
            raise stop from None
        raise
    _sync_folder(path.parent)  # the rename itself durable: a file written after this one never lands before it


def _sync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a platform without directory handles (Windows): the rename is as durable as it gets
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def copy_atomically(source: str | os.PathLike, path: str | os.PathLike) -> None:
    """Copy a file through a temporary file and a rename (see `atomic_write`)."""
    with open(source, "rb") as src:
        atomic_write(path, lambda f: shutil.copyfileobj(src, f, 1 << 20))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` through a temporary file and a rename (see `atomic_write`)."""
    atomic_write(path, lambda f: f.write(data))


def unusable_folder(path: str | os.PathLike) -> str | None:
    """Why files cannot be created in the folder `path` or a folder made there (a file in the way, no write
    permission on the deepest folder that exists), or None."""
    path = Path(path)
    for part in [path, *path.parents]:
        if part.exists():
            if not part.is_dir():
                return f"{part} is a file, not a folder"
            if not os.access(part, os.W_OK | os.X_OK):
                return f"{part} is not writable"
            return None
    return None


def remove_stale_temporaries(folder: str | os.PathLike, older_than: float = 0.0) -> list[Path]:
    """Delete the temporary files that interrupted atomic writes left in `folder` (plain files named exactly
    `.{name}.{8 characters}.tmp`, nothing else; with `older_than` only those not modified for that many seconds);
    the paths removed. Call it when no write to `folder` is under way (a run starting or resuming), or with
    `older_than` for a folder other processes may be writing."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    now = time.time()
    stale = sorted(
        p
        for p in folder.iterdir()
        if TEMPORARY_NAME.fullmatch(p.name)
        and p.is_file()
        and not p.is_symlink()
        and now - p.stat().st_mtime >= older_than
    )
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (`error: ...`) and exits with status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message} (see {self.prog} -h)\n")


def pyplot():
    """matplotlib.pyplot drawing into files only (no display); imported on first use (it is slow)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def claim_folder(path: Path) -> Path:
    """Create `path` as an empty folder, or `path_2`, `path_3`, ... when it is taken (two runs started in the same
    second, two sweep jobs finishing at once): mkdir is atomic, so no two processes ever claim one name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        candidate = path if n == 1 else path.with_name(f"{path.name}_{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise FileExistsError(f"{path}: no free name")


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes (hex), read 1 MB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
