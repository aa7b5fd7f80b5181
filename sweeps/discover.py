"""Reading a sweep file as it is: bash runs it with a `python` (and `torchrun`) first on PATH that records each
call instead of running it (record_call.py); every other command of the file (loops, variables, mkdir, xargs)
runs as written. The calls are then sorted:

    jobs          python train.py ... / python val.py ...              one job each (jobs.Job)
    before        other python calls before the first job              run once, first, in order (data preparation)
    after         other python calls after the first job               run at the end, in order (tables.py)
    not_jobs      torchrun lines, train.py -resume lines               named, with the reason, never run

A line whose arguments hold a glob that matches nothing yet (`"$OUT"/default/run_seed*/Model/...`: the runs of
earlier lines) is a job that waits: the file is read again once the other jobs are done, and the glob then names
the runs.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from utils import InputError

RECORDER = Path(__file__).with_name("record_call.py")
JOB_SCRIPTS = ("train.py", "val.py")
# Variables bash itself sets or the runner sets for the reading: not part of what a line asks for.
SHELL_VARIABLES = frozenset({"PWD", "OLDPWD", "SHLVL", "_", "PATH", "BASH_ENV", "AESPA_SWEEP_LINE"})
# What a slot sets for each job (local.py): left out of the reading, so that a line setting one is seen doing so.
SLOT_VARIABLES = ("OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES")
INTERPRETER_OPTIONS = ("-u", "-B", "-O", "-OO")  # `python -u train.py` is still a job
# Sourced by bash before the file (BASH_ENV): keeps the line of the command being run in an exported variable, so
# that each recorded call knows its line (an inner `bash -c` of the file keeps the outer line).
LINE_TRAP = (
    "[ -n \"${AESPA_SWEEP_LINE:-}\" ] || { export AESPA_SWEEP_LINE=0; trap 'AESPA_SWEEP_LINE=$LINENO' DEBUG; }\n"
)
SHIM = '#!/bin/sh\nexec "$AESPA_SWEEP_PYTHON" "$AESPA_SWEEP_RECORDER" {launcher}"$@"\n'


@dataclass(frozen=True)
class Call:
    """One python (or torchrun) call of the sweep file: its arguments after the interpreter, its folder, the
    variables the file set for it, its line."""

    argv: tuple[str, ...]
    cwd: str
    env: tuple[tuple[str, str], ...]
    line: int | None
    launcher: str = "python"

    @property
    def script_args(self) -> tuple[str, ...]:
        """The arguments from the script on (`-u` and the like dropped)."""
        argv = list(self.argv)
        while argv and argv[0] in INTERPRETER_OPTIONS:
            argv.pop(0)
        return tuple(argv)

    @property
    def script(self) -> str:
        args = self.script_args
        return os.path.basename(args[0]) if args else ""

    def where(self) -> str:
        return f"line {self.line}" if self.line is not None else "a line"

    def text(self) -> str:
        return shlex.join([self.launcher, *self.argv])


@dataclass
class Discovery:
    jobs: list[Call] = field(default_factory=list)
    before: list[Call] = field(default_factory=list)
    after: list[Call] = field(default_factory=list)
    not_jobs: list[tuple[Call, str]] = field(default_factory=list)


def read_calls(sweep_file: Path, base_env: dict[str, str], python: str = sys.executable) -> list[Call]:
    """Run `sweep_file` with bash, python and torchrun recorded instead of run -> the calls in the order made.
    InputError (one line) when bash stops with an error (the file's own `exit 1`, a syntax error)."""
    with tempfile.TemporaryDirectory(prefix="aespa-sweep-") as tmp:
        shims = Path(tmp)
        for name, launcher in (("python", ""), ("python3", ""), ("torchrun", "--launcher torchrun ")):
            (shims / name).write_text(SHIM.replace("{launcher}", launcher))
            (shims / name).chmod(0o755)
        (shims / "line_trap.sh").write_text(LINE_TRAP)
        record = shims / "calls.jsonl"
        env = {
            **base_env,
            "PATH": f"{shims}{os.pathsep}{base_env.get('PATH', '')}",
            "BASH_ENV": str(shims / "line_trap.sh"),
            "AESPA_SWEEP_PYTHON": python,
            "AESPA_SWEEP_RECORDER": str(RECORDER),
            "AESPA_SWEEP_RECORD": str(record),
        }
        for name in ("AESPA_SWEEP_LINE", *SLOT_VARIABLES):
            env.pop(name, None)
        proc = subprocess.run(["bash", str(sweep_file)], env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            said = (proc.stderr.strip().splitlines() or ["no message"])[-1]
            raise InputError(f"{sweep_file}: bash stopped with exit status {proc.returncode} while reading it: {said}")
        lines = record.read_text().splitlines() if record.exists() else []
    return [call_of(json.loads(line), env) for line in lines]


def call_of(record: dict, reading_env: dict[str, str]) -> Call:
    """A recorded call, keeping the variables the file set or changed (not those it inherited)."""
    own = {
        k: v
        for k, v in record["env"].items()
        if reading_env.get(k) != v and k not in SHELL_VARIABLES and not k.startswith("AESPA_SWEEP")
    }
    return Call(tuple(record["argv"]), record["cwd"], tuple(sorted(own.items())), record["line"], record["launcher"])


def why_not_a_job(call: Call) -> str | None:
    """Why a train.py / val.py call cannot be a job, or None."""
    if call.launcher == "torchrun":
        return "a torchrun line runs one process per GPU itself; run it by hand (the runner gives each job one slot)"
    if call.script == "train.py" and any(a == "-resume" or a.startswith("-resume=") for a in call.script_args):
        return "a -resume line continues a run folder it names; run it by hand (the runner resumes its own jobs)"
    return None


def sort_calls(calls: list[Call]) -> Discovery:
    """Jobs, the python calls before the first job and after it, and the lines that cannot be jobs."""
    found = Discovery()
    for call in calls:
        if call.script in JOB_SCRIPTS or call.launcher == "torchrun":
            reason = why_not_a_job(call)
            if reason is None:
                found.jobs.append(call)
            else:
                found.not_jobs.append((call, reason))
        else:
            (found.after if found.jobs else found.before).append(call)
    return found
