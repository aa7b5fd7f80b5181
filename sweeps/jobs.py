"""One job of a sweep: a `python train.py ...` / `python val.py ...` line, its folder, what to do with it, running it.

A job's identity is its command: `<exp_name>_<hash>` (the hash of its flags in a fixed order, the variables the
sweep file set for it and its folder), so reading the file again finds the same jobs. Each job has a folder in
the sweep's state folder:

    <out>/jobs/<job id>/
        job.json          the job's record: state, attempts (action, exit status), where its run folder went
        job.log           stdout and stderr of every attempt, each after a header line
        <run folder>/     the run while it is not finished: the job runs with -log_dir here, so its folder is
                          known; a run folder that a job left without a checkpoint waits in previous/
    <the job's own -log_dir>/<run folder>/   a finished run, moved where `bash <file>` would have put it

What a job needs (`plan`): nothing when its run is finished (train.py: summary.json; val.py: exit status 0),
`train.py -resume <run>` when its run folder has Model/checkpoint_last.pth, else a fresh start; a job that failed
(non-zero exit, not an interruption) only with -retry_failed. `execute` carries the plan out, one process; the
local runner (local.py) and a submitit task (cluster.py) both call it.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:  # POSIX: a run folder's lock says whether a process is running it
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

from analysis.run_files import SUMMARY
from conf.global_settings import LOG_DIR
from sweeps.discover import Call
from utils import atomic_write_bytes, claim_folder

RECORD, LOG, PREVIOUS = "job.json", "job.log", "previous"
# The run folder's files the runner reads (engine/run_folder.py names them; tests/test_sweep.py checks they agree:
# the runner does not import the engine, which imports torch).
LAST_CHECKPOINT, LOCK_FILE = "Model/checkpoint_last.pth", ".lock"
INTERRUPTED = (130, 143, -signal.SIGTERM, -signal.SIGINT)  # Ctrl-C, SIGTERM: train.py's statuses, or the signal
FLAG = re.compile(r"--?[A-Za-z_][\w-]*(=.*)?", re.DOTALL)
GLOB = re.compile(r"[*?[]")


def flag_groups(args: tuple[str, ...]) -> list[tuple[str, tuple[str, ...]]]:
    """Arguments as (flag, values) groups in their order: ['-b', '4', '-x=1'] -> [('b', ('4',)), ('x', ('1',))].
    A word after a flag that is not a flag itself (a negative number is not) is one of its values."""
    groups: list[tuple[str, tuple[str, ...]]] = []
    for word in args:
        if FLAG.fullmatch(word):
            name, eq, value = word.partition("=")
            groups.append((name.lstrip("-"), (value,) if eq else ()))
        elif groups:
            groups[-1] = (groups[-1][0], (*groups[-1][1], word))
        else:
            groups.append(("", (word,)))
    return groups


def flag_value(args: tuple[str, ...], name: str) -> str | None:
    """The last value given to -name (argparse: the last one wins), or None."""
    values = [v for flag, v in flag_groups(args) if flag == name and v]
    return values[-1][-1] if values else None


def without_flag(args: tuple[str, ...], name: str) -> list[str]:
    return [w for flag, values in flag_groups(args) if flag != name for w in ([f"-{flag}"] if flag else []) + [*values]]


def job_id(script: str, args: tuple[str, ...], env: tuple[tuple[str, str], ...], cwd: str) -> str:
    """`<exp_name or script>_<8 hex>`: the hash of the flags sorted by name (their order does not matter, the order
    of a flag's repeats does), the variables the file set for the line and its folder."""
    key = {"script": script, "flags": sorted(flag_groups(args), key=lambda g: g[0]), "env": env, "cwd": cwd}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
    label = re.sub(r"[^A-Za-z0-9._-]+", "_", flag_value(args, "exp_name") or Path(script).stem).strip("._") or "job"
    return f"{label}_{digest}"


@dataclass(frozen=True)
class Job:
    """A train.py / val.py line of a sweep file (its script and flags as written) and its folder in the state."""

    id: str
    script: str
    args: tuple[str, ...]
    cwd: str
    env: tuple[tuple[str, str], ...]
    line: int | None
    folder: Path

    @classmethod
    def of_call(cls, call: Call, jobs_folder: Path, sweep_cwd: str) -> Job:
        script, *args = call.script_args
        name = job_id(os.path.basename(script), tuple(args), call.env, os.path.relpath(call.cwd, sweep_cwd))
        return cls(name, script, tuple(args), call.cwd, call.env, call.line, jobs_folder / name)

    @property
    def trains(self) -> bool:
        return os.path.basename(self.script) == "train.py"

    @property
    def destination(self) -> Path:
        """Where `bash <file>` would have put the run folder: the line's -log_dir (or train.py's default)."""
        return Path(self.cwd) / (flag_value(self.args, "log_dir") or LOG_DIR)

    @property
    def log(self) -> Path:
        return self.folder / LOG

    def waits_for(self) -> str | None:
        """An argument holding a glob that matches nothing (yet): the runs of earlier lines it names."""
        for word in self.args:
            if GLOB.search(word) and not glob.glob(os.path.join(self.cwd, word)):
                return word
        return None

    def text(self) -> str:
        """The line as the file ran it, with the variables it set for it."""
        return " ".join(
            [*(f"{k}={shlex.quote(v)}" for k, v in self.env), shlex.join(["python", self.script, *self.args])]
        )

    def command(self, python: str, resume: Path | None) -> list[str]:
        """The process to run: the line with -log_dir in the job's folder, or a resume of its run folder."""
        if resume is not None:
            return [python, self.script, "-resume", str(resume)]
        return [python, self.script, *without_flag(self.args, "log_dir"), "-log_dir", str(self.folder)]


# --- the job's record ---------------------------------------------------------------------------------------------


def read_record(job: Job) -> dict[str, Any]:
    try:
        return json.loads((job.folder / RECORD).read_text())
    except (OSError, ValueError):
        return {}


def write_record(job: Job, **changes: Any) -> dict[str, Any]:
    """Merge `changes` into job.json (written atomically: a reader sees the old record or the new one)."""
    record = {**read_record(job), "id": job.id, "command": job.text(), "line": job.line, **changes}
    record["updated"] = time.time()
    atomic_write_bytes(job.folder / RECORD, (json.dumps(record, indent=1) + "\n").encode())
    return record


def last_line(path: Path, limit: int = 4096) -> str:
    """The last non-empty line of a log (its last `limit` bytes read); progress bars' carriage returns split lines."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - limit))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [s.strip() for s in re.split(r"[\r\n]+", text) if s.strip()]
    return lines[-1] if lines else ""


# --- what a job needs ---------------------------------------------------------------------------------------------


def run_folders(job: Job) -> list[Path]:
    """The run folders in the job's folder (oldest first by their timestamped names)."""
    if not job.folder.is_dir():
        return []
    return sorted(p for p in job.folder.iterdir() if p.is_dir() and p.name != PREVIOUS and (p / "args.json").exists())


def holder(run: Path) -> str | None:
    """The pid of the process running `run` (its .lock held), or None."""
    lock = run / LOCK_FILE
    if fcntl is None or not lock.is_file():
        return None
    fd = os.open(lock, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # refused while another process holds it exclusively
    except BlockingIOError:
        return lock.read_text(errors="replace").strip() or "?"
    except OSError:  # a file system without locks: nothing to tell
        return None
    finally:
        os.close(fd)  # our own shared lock, if taken, goes with it
    return None


@dataclass(frozen=True)
class Plan:
    """What a job needs: skip (finished), failed (earlier, not retried), elsewhere (another process runs it),
    finish (its run is complete in the job's folder: move it), resume, start."""

    action: str
    run: Path | None = None
    note: str = ""


def finished(job: Job, run: Path, record: dict[str, Any]) -> bool:
    """A complete run: train.py's summary.json (written last); val.py's exit status 0 for this folder (or, once
    moved out of the job's folder, its record's done)."""
    if job.trains:
        return (run / SUMMARY).is_file()
    if run.parent != job.folder:
        return record.get("state") == "done"
    return any(a.get("run") == run.name and a.get("exit") == 0 for a in attempts(record))


def attempts(record: dict[str, Any]) -> list[dict[str, Any]]:
    return record.get("attempts", [])


def plan(job: Job, retry_failed: bool = False) -> Plan:
    record = read_record(job)
    state = record.get("state")
    note = ""
    if state == "done":
        run = Path(record["run_dir"])
        if run.is_dir() and finished(job, run, record):
            return Plan("skip", run, "finished earlier")
        note = f"its run folder {run} is gone: runs again"
    runs = run_folders(job)
    if state == "moving" and not runs and Path(record["dest"]).is_dir() and not is_empty_folder(Path(record["dest"])):
        return Plan("finish", Path(record["dest"]))  # the move happened, its record did not
    run = runs[-1] if runs else None
    pid = holder(run) if run is not None else None
    if pid is not None:
        return Plan("elsewhere", run, f"process {pid} is running it")
    if state == "failed" and not retry_failed:
        return Plan("failed", run, f"failed earlier ({record.get('reason')}); -retry_failed runs it again")
    if run is not None and finished(job, run, record):
        return Plan("finish", run)
    if run is not None and job.trains and (run / LAST_CHECKPOINT).is_file():
        return Plan("resume", run, note)
    return Plan("start", run, note)


# --- running it ---------------------------------------------------------------------------------------------------


def move_folder(source: Path, dest: Path) -> None:
    """Move `source` onto `dest`, an empty folder (`claim`): a rename; across file systems a copy into a temporary
    sibling of `dest`, renamed onto it, then the source removed."""
    try:
        os.rename(source, dest)
    except OSError as err:
        if err.errno != errno.EXDEV:
            raise
        tmp = dest.with_name(f".{dest.name}.moving")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source, tmp, symlinks=True)
        os.rename(tmp, dest)
        shutil.rmtree(source)


def is_empty_folder(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def finish(job: Job, run: Path) -> Path:
    """Move a complete run from the job's folder to the job's destination (its record says where first, so a kill
    in between is finished by the next sweep) -> where it is."""
    if run.parent == job.folder:
        record = read_record(job)
        planned = Path(record["dest"]) if record.get("state") == "moving" else None
        dest = planned if planned is not None and is_empty_folder(planned) else claim_folder(job.destination / run.name)
        write_record(job, state="moving", dest=str(dest))
        move_folder(run, dest)
        run = dest
    write_record(job, state="done", run_dir=str(run))
    return run


def set_aside(job: Job, run: Path) -> None:
    """A run folder a job left without a checkpoint (or a failed one), moved to previous/ before the job starts
    again: kept for its log, out of the way of the new run."""
    move_folder(run, claim_folder(job.folder / PREVIOUS / run.name))


def execute(
    job: Job,
    python: str,
    slot_env: dict[str, str],
    retry_failed: bool = False,
    started: Callable[[subprocess.Popen], None] = lambda proc: None,
    stopping: Callable[[], bool] = lambda: False,
    spawn: Callable[..., subprocess.Popen] = subprocess.Popen,
) -> str:
    """Do what the job needs (see `plan`) in one process -> its state: done, failed, interrupted, skip,
    elsewhere. `slot_env` holds the slot's device and thread variables (the line's own variables win over the
    thread count: a file that asks for OMP_NUM_THREADS=1 gets it); `started(proc)` is told of the process (to stop
    it), `stopping()` says the sweep is stopping (a job not yet started does not start)."""
    job.folder.mkdir(parents=True, exist_ok=True)
    todo = plan(job, retry_failed)
    if todo.action in ("skip", "failed", "elsewhere"):
        return todo.action
    if todo.action == "finish":
        finish(job, todo.run)
        return "done"
    if stopping():
        return "interrupted"
    if todo.action == "start" and todo.run is not None:
        set_aside(job, todo.run)
    resume = todo.run if todo.action == "resume" else None
    command = job.command(python, resume)
    env = {**os.environ, **slot_env, **dict(job.env)}
    state = "resumed" if resume is not None else "running"
    write_record(job, state=state, started=time.time())
    with job.log.open("ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {todo.action}: {shlex.join(command)}\n".encode())
        log.flush()
        proc = spawn(command, cwd=job.cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        started(proc)
        code = proc.wait()
    runs = run_folders(job)
    run = runs[-1] if runs else None
    record = read_record(job)
    attempt = {"action": todo.action, "exit": code, "run": run.name if run else None, "ended": time.time()}
    record = write_record(job, attempts=[*attempts(record), attempt])
    if code == 0 and run is not None and finished(job, run, record):
        finish(job, run)
        return "done"
    if code in INTERRUPTED or (code < 0 and stopping()):  # a kill after the sweep's grace period too
        write_record(job, state="interrupted")
        return "interrupted"
    reason = f"exit {code}" if code != 0 else "exit 0 without a finished run folder"
    write_record(job, state="failed", reason=reason)
    return "failed"
