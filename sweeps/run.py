"""The sweep runner's command: read the sweep file, run its jobs (here, one per slot, or on a cluster), read the file
again for the jobs that waited on earlier runs, then run its other python lines (tables.py) as written.

    python sweep.py bash_ablation.sh -gpus 0,1,2,3                 # one job per GPU
    python sweep.py bash_ablation.sh -gpus 0,1 -per_gpu 2          # two jobs per GPU
    python sweep.py bash.sh -gpus cpu:2                            # two CPU jobs at a time
    python sweep.py bash_ablation.sh -slurm slurm_partition=gpu,timeout_min=600,gpus_per_node=1
    python sweep.py bash_ablation.sh -dry_run                      # the jobs and what each needs, nothing run

Running it again skips finished jobs, resumes interrupted ones and reruns failed ones only with -retry_failed.
Exit status: 0 when every job is done and every other line ran; 1 otherwise; 130 / 143 when stopped by Ctrl-C /
SIGTERM (every job resumable). See docs/sweeps.md.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from sweeps.discover import Call, Discovery, read_calls, sort_calls
from sweeps.jobs import Job, plan
from sweeps.local import Pool, slots
from sweeps.status import Board
from utils import InputError, OneLineParser

STATE_ROOT = "logs_sweep"  # <STATE_ROOT>/<sweep file's name>/ unless -out
CONTINUES = "AESPA_SWEEP_CONTINUES"  # set while reading a file again (a later pass, a restarted sweep): see below
CLUSTER_RETRIES = 3  # a cluster job stopped from outside (preempted without warning) is resubmitted this often


def build_parser() -> OneLineParser:
    p = OneLineParser(
        prog="sweep.py",
        description="Run the train.py / val.py lines of a sweep file as parallel, "
        "resumable jobs (one per GPU or CPU slot, or one per SLURM job through submitit).",
    )
    p.add_argument("file", help="a sweep file run with bash (bash.sh, bash_ablation.sh, bash_results.sh)")
    p.add_argument(
        "-gpus",
        default="auto",
        help="GPU indices (0,1,2,3), cpu:N (N CPU jobs at a time) or auto "
        "(every visible GPU, else one CPU job at a time)",
    )
    p.add_argument("-per_gpu", type=int, default=1, help="jobs sharing one GPU (small runs)")
    p.add_argument("-out", default=None, help=f"the sweep's state: job records and logs (default {STATE_ROOT}/<file>)")
    p.add_argument(
        "-retry_failed", action="store_true", help="run failed jobs again (a resume when they have a checkpoint)"
    )
    p.add_argument(
        "-slurm",
        default=None,
        metavar="K=V,...",
        help="submit each job through submitit with these "
        "AutoExecutor parameters (e.g. slurm_partition=gpu,timeout_min=600,gpus_per_node=1)",
    )
    p.add_argument(
        "-cluster",
        default="slurm",
        choices=("slurm", "local"),
        help="with -slurm: submitit's SLURM executor, or its local executor (the same tasks on this machine)",
    )
    p.add_argument("-grace", type=float, default=120.0, help="seconds a stopped job gets to exit before it is killed")
    p.add_argument("-dry_run", action="store_true", help="list the jobs and what each needs; run nothing")
    return p


def read_sweep(sweep_file: Path, out: Path) -> tuple[list[Job], Discovery]:
    """One reading of the file -> its jobs and its calls. A file read again after jobs ran (this sweep or an
    earlier one) is told so by AESPA_SWEEP_CONTINUES=1 (bash_results.sh's guard against an existing output folder
    is for a second `bash` run, not for this)."""
    env = dict(os.environ)
    if (out / "jobs").is_dir() and any((out / "jobs").iterdir()):
        env[CONTINUES] = "1"
    found = sort_calls(read_calls(sweep_file, env, sys.executable))
    cwd = os.getcwd()
    jobs, seen = [], set()
    for call in found.jobs:
        job = Job.of_call(call, out / "jobs", cwd)
        if job.id not in seen:  # a line repeated as it is is one job (its run would be the same)
            seen.add(job.id)
            jobs.append(job)
    return jobs, found


def run_calls(calls: list[Call], what: str) -> list[str]:
    """Run the non-job python lines as written (output shown) -> one line per failure."""
    failures = []
    for call in calls:
        print(f"sweep: {what}: {call.text()}", flush=True)
        code = subprocess.run(
            [sys.executable, *call.argv], cwd=call.cwd, env={**os.environ, **dict(call.env)}
        ).returncode
        if code != 0:
            failures.append(f"{call.where()}: exit {code}: {call.text()}")
    return failures


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sweep_file = Path(args.file)
    if not sweep_file.is_file():
        raise InputError(f"{sweep_file}: no such sweep file")
    out = Path(args.out or Path(STATE_ROOT) / sweep_file.stem)
    slot_envs = slots(args.gpus, args.per_gpu)
    params = None
    if args.slurm is not None:
        from sweeps import cluster  # submitit: only for cluster sweeps

        params = cluster.parameters(args.slurm)
    board = Board(out)
    jobs, found = read_sweep(sweep_file, out)
    for call, reason in found.not_jobs:
        print(f"sweep: not a job, {call.where()}: {call.text()}: {reason}", file=sys.stderr)
    if args.dry_run:
        return dry_run(jobs, found, args.retry_failed)
    failures = run_calls(found.before, "before the jobs")
    handled: dict[str, int] = {}
    while True:
        board.show(jobs)
        todo = []
        for job in jobs:
            need = plan(job, args.retry_failed)
            if job.waits_for() is not None:
                board.mark(job, "waiting", f"no file matches {job.waits_for()} yet")
            elif need.action == "skip":
                board.mark(job, "done", "" if job.id in handled else need.note)
            elif need.action in ("failed", "elsewhere"):
                board.mark(job, need.action, need.note)
            elif handled.get(job.id, 0) == 0 or (params is not None and handled[job.id] <= CLUSTER_RETRIES):
                board.mark(job, "queued", need.note or ("resumes its run" if need.action == "resume" else ""))
                todo.append(job)
        if not todo:
            break
        for job in todo:
            handled[job.id] = handled.get(job.id, 0) + 1
        if params is None:
            stopped = Pool(slot_envs, board, sys.executable, args.retry_failed, args.grace).run(todo)
        else:
            folder = out / "submitit"
            stopped = cluster.run_on_cluster(
                todo, board, folder, args.cluster, params, sys.executable, args.retry_failed
            )
        if stopped is not None:
            board.final()
            print(f"sweep: stopped by signal {stopped}; run it again to continue", file=sys.stderr)
            return 128 + stopped
        jobs, found = read_sweep(sweep_file, out)
    counts = board.final()
    for job in jobs:
        state = board.row(job)["state"]
        if job.waits_for() is not None:
            failures.append(f"line {job.line}: waits for {job.waits_for()}, which no job made: {job.text()}")
        elif state != "done":
            failures.append(f"{job.id} (line {job.line}): {state}, see {job.log}")
    if failures:  # as `set -e` would: no tables of an incomplete sweep
        failures.append(f"the {len(found.after)} lines after the jobs (tables) not run: not every job is done")
    else:
        failures += run_calls(found.after, "after the jobs")
    for line in failures:
        print(f"sweep: {line}", file=sys.stderr)
    print(f"sweep: {', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}; status {out}/sweep_status.md")
    return 1 if failures else 0


def dry_run(jobs: list[Job], found: Discovery, retry_failed: bool) -> int:
    for job in jobs:
        need = plan(job, retry_failed)
        action = f"waits for {job.waits_for()}" if job.waits_for() else need.action
        print(f"{job.id}\t{action}\t{need.note}\t{job.text()}")
    for what, calls in (("before", found.before), ("after", found.after)):
        for call in calls:
            print(f"({what} the jobs)\t{shlex.join(call.argv)}")
    return 0
