"""Running jobs on a SLURM cluster through submitit: one cluster job per line of the sweep file.

`-slurm slurm_partition=gpu,timeout_min=600,gpus_per_node=1,cpus_per_task=8` are submitit's own parameters
(`AutoExecutor.update_parameters`), passed through as written; numbers become numbers. Each cluster job runs
`jobs.execute` (the same code as the local runner) inside a `Task`, a submitit Checkpointable: when SLURM is about
to stop the job (time limit, preemption) submitit calls `Task.checkpoint`, which stops train.py with SIGTERM (it
leaves its last checkpoint) and resubmits the task, which then resumes the run (`train.py -resume`). train.py
itself ignores submitit's USR2 and runs in its own session, so only the task decides when it stops.

`-cluster local` runs the same tasks through submitit's local executor (how the tests run this path here).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import submitit

from sweeps.jobs import Job, execute, read_record, write_record
from sweeps.status import Board
from utils import InputError, one_line

# submitit's states of a job that is still queued or running on the cluster (sacct's words).
ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED", "UNKNOWN"}


def parameters(text: str) -> dict[str, Any]:
    """'a=1,b=gpu,c=0.5' -> {'a': 1, 'b': 'gpu', 'c': 0.5}."""
    out: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise InputError(f"-slurm {text}: expected key=value pairs separated by commas, got '{item}'")
        for kind in (int, float):
            try:
                out[key] = kind(value)
                break
            except ValueError:
                continue
        else:
            out[key] = value
    return out


def slot_env() -> dict[str, str]:
    """On a cluster node: the threads SLURM gave the task (its GPUs come as CUDA_VISIBLE_DEVICES already)."""
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    return {"OMP_NUM_THREADS": cpus} if cpus else {}


def spawn_without_usr2(*args, **kwargs) -> subprocess.Popen:
    """Popen with SIGUSR2 ignored in the child (an ignored signal stays ignored across exec): the cluster's
    warning signal is the task's to act on, and its default action would kill train.py on the spot."""
    previous = signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    try:
        return subprocess.Popen(*args, **kwargs)
    finally:
        signal.signal(signal.SIGUSR2, previous)


class Task(submitit.helpers.Checkpointable):
    """One job run on a cluster node; checkpoint() stops it resumably and resubmits it."""

    def __init__(self, job: Job, python: str, retry_failed: bool, grace: float = 120.0):
        self.job, self.python, self.retry_failed, self.grace = job, python, retry_failed, grace
        self._process: subprocess.Popen | None = None

    def __call__(self) -> str:
        return execute(
            self.job, self.python, slot_env(), self.retry_failed, started=self._keep, spawn=spawn_without_usr2
        )

    def _keep(self, proc: subprocess.Popen) -> None:
        self._process = proc

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        proc = self._process
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=self.grace)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        write_record(self.job, state="interrupted", reason="")
        return submitit.helpers.DelayedSubmission(Task(self.job, self.python, self.retry_failed, self.grace))

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_process": None}  # a process does not travel to the next node


def executor(folder: Path, cluster: str, params: dict[str, Any]) -> submitit.AutoExecutor:
    ex = submitit.AutoExecutor(folder=folder, cluster=cluster)
    try:
        ex.update_parameters(**params)
    except (ValueError, TypeError, NameError) as err:  # submitit names an unknown parameter with a NameError
        raise InputError(f"-slurm: {one_line(err)}") from None
    return ex


def still_active(job: Job, cluster: str) -> submitit.Job | None:
    """The cluster job an earlier sweep submitted for `job`, when it is still queued or running (SLURM only: a local
    executor's jobs end with the process that started them)."""
    sent = read_record(job).get("submitted")
    if cluster != "slurm" or not sent or sent.get("cluster") != "slurm":
        return None
    found = submitit.SlurmJob(folder=sent["folder"], job_id=sent["job_id"])
    return found if found.state in ACTIVE else None


def run_on_cluster(
    jobs: list[Job],
    board: Board,
    folder: Path,
    cluster: str,
    params: dict[str, Any],
    python: str,
    retry_failed: bool,
) -> int | None:
    """Submit the jobs (or wait for those an earlier sweep submitted) and wait for all of them. Ctrl-C or SIGTERM
    stops the waiting, not the cluster jobs: the next sweep waits for them again -> the signal, or None."""
    ex = executor(folder, cluster, params)
    # the node imports the sweeps package (unpickling a Task): the project's folder on its path
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path.cwd()), os.environ.get("PYTHONPATH")]))
    waiting: dict[str, tuple[Job, submitit.Job]] = {}
    for job in jobs:
        found = still_active(job, cluster)
        if found is None:
            ex.update_parameters(name=job.id)
            found = ex.submit(Task(job, python, retry_failed))
            sent = {"cluster": ex.cluster, "job_id": str(found.job_id), "folder": str(folder)}
            write_record(job, submitted=sent)
        board.mark(job, "submitted", f"{ex.cluster} job {found.job_id}")
        waiting[job.id] = (job, found)
    stop: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: stop.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while waiting and not stop:
            for key, (job, submitted) in list(waiting.items()):
                if submitted.done():
                    del waiting[key]
                    try:
                        submitted.result()
                    except Exception as err:  # the task raised, or the cluster stopped it for good
                        write_record(job, state="failed", reason=one_line(err))
            board.redraw()
            time.sleep(1.0)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    board.update()
    if stop:
        print(f"sweep: {len(waiting)} cluster jobs keep running; run the sweep again to wait for them", file=sys.stderr)
    return stop[0] if stop else None
