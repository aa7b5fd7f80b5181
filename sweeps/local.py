"""Running jobs on this machine, one per slot: `-gpus 0,1,2,3` (with `-per_gpu K`, K jobs share a GPU) or
`-gpus cpu:N` (N CPU jobs). Each job sees its GPU alone (CUDA_VISIBLE_DEVICES; none for a CPU slot, so
`-device auto` takes the CPU) and an equal share of the CPU threads (OMP_NUM_THREADS, unless its line sets it).

Ctrl-C or SIGTERM: every running job gets SIGTERM (train.py then stops where it is, leaving its last checkpoint:
the next sweep resumes it), no new job starts, and after `grace` seconds a job still running is killed; a second
Ctrl-C kills at once. -> the signal that stopped the sweep, or None.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable

from sweeps.jobs import Job, execute
from sweeps.status import Board
from utils import InputError


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def visible_gpus() -> list[str]:
    """The GPUs this process may use: CUDA_VISIBLE_DEVICES when set, else those nvidia-smi lists (no torch here)."""
    named = os.environ.get("CUDA_VISIBLE_DEVICES")
    if named is not None:
        return [g.strip() for g in named.split(",") if g.strip()]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(k) for k, line in enumerate(listed.splitlines()) if line.startswith("GPU ")]


def slots(gpus: str, per_gpu: int = 1, cpus: int | None = None) -> list[dict[str, str]]:
    """The environment of each slot. `gpus`: 'auto' (every visible GPU, else one CPU slot), '0,1,3', 'cpu:N'."""
    cpus = cpus or cpu_count()
    if per_gpu < 1:
        raise InputError(f"-per_gpu must be at least 1, got {per_gpu}")
    if gpus == "auto":
        found = visible_gpus()
        gpus = ",".join(found) if found else "cpu:1"
    if gpus.startswith("cpu:"):
        count = gpus[4:]
        if not count.isdigit() or int(count) < 1:
            raise InputError(f"-gpus {gpus}: expected cpu:N with N >= 1 CPU jobs at a time")
        devices = [""] * int(count)
    else:
        ids = [g.strip() for g in gpus.split(",")]
        if not all(ids) or len(set(ids)) != len(ids):
            raise InputError(f"-gpus {gpus}: expected GPU indices separated by commas (0,1,2,3), 'cpu:N' or 'auto'")
        devices = [g for g in ids for _ in range(per_gpu)]
    threads = str(max(1, cpus // len(devices)))
    return [{"CUDA_VISIBLE_DEVICES": device, "OMP_NUM_THREADS": threads} for device in devices]


class Pool:
    """Worker threads, one per slot, each running jobs one after another through `execute`."""

    def __init__(self, slot_envs: list[dict[str, str]], board: Board, python: str, retry_failed: bool, grace: float):
        self.slot_envs, self.board, self.python = slot_envs, board, python
        self.retry_failed, self.grace = retry_failed, grace
        self.stop = threading.Event()
        self.stopped_by: int | None = None
        self.stop_time = 0.0
        self.running: dict[str, subprocess.Popen] = {}
        self.lock = threading.Lock()
        self.outcomes: dict[str, str] = {}

    def run(self, jobs: list[Job]) -> int | None:
        todo: queue.Queue[Job] = queue.Queue()
        for job in jobs:
            todo.put(job)
        workers = [threading.Thread(target=self.work, args=(todo, env), daemon=True) for env in self.slot_envs]
        previous = {s: signal.signal(s, self.on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            for w in workers:
                w.start()
            while any(w.is_alive() for w in workers):
                self.board.redraw()
                if self.stop.is_set() and time.monotonic() - self.stop_time > self.grace:
                    self.kill_all()
                time.sleep(0.5)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        self.board.update()
        return self.stopped_by

    def work(self, todo: queue.Queue, slot_env: dict[str, str]) -> None:
        while not self.stop.is_set():
            try:
                job = todo.get_nowait()
            except queue.Empty:
                return
            try:
                self.outcomes[job.id] = execute(
                    job, self.python, slot_env, self.retry_failed, self.started(job), self.stop.is_set
                )
            except Exception as err:  # a job's own trouble (a move refused, a full disk) never stops the others
                self.board.mark(job, "failed", f"{type(err).__name__}: {err}")
                self.outcomes[job.id] = "failed"
            with self.lock:
                self.running.pop(job.id, None)
            self.board.update()

    def started(self, job: Job) -> Callable[[subprocess.Popen], None]:
        def register(proc: subprocess.Popen) -> None:
            with self.lock:
                self.running[job.id] = proc
            if self.stop.is_set():  # the stop came between the job's plan and its start
                proc.send_signal(signal.SIGTERM)
            self.board.update()

        return register

    def on_signal(self, signum: int, frame) -> None:
        if self.stop.is_set():
            self.kill_all()
            return
        self.stopped_by, self.stop_time = signum, time.monotonic()
        self.stop.set()
        with self.lock:
            procs = list(self.running.values())
        for proc in procs:  # the job's main process, as `kill <pid>` would: it stops its loader workers itself
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    def kill_all(self) -> None:
        with self.lock:
            procs = list(self.running.values())
        for proc in procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
