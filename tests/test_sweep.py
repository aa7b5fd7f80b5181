"""The sweep runner (sweep.py, sweeps/; issue 35): sweep files read as they are, jobs run in parallel slots, a sweep
run again skips finished jobs, resumes interrupted ones and reruns failed ones only when asked; SIGTERM stops every
job resumably; the same jobs through submitit's local executor. Most tests run stand-ins of train.py / val.py /
tables.py (tests/sweep_fakes.py: a sweep of them takes a second); those marked slow run the real train.py."""

from __future__ import annotations

import ast
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tiny_run_args
from sweep_fakes import write_fakes

from sweeps import cluster, discover, jobs
from sweeps.jobs import Job, flag_groups, job_id, plan
from sweeps.local import slots
from sweeps.run import main
from utils import InputError

ROOT = Path(__file__).resolve().parents[1]


def sweep_file(folder: Path, body: str) -> Path:
    path = folder / "sweep.sh"
    path.write_text("#!/usr/bin/env bash\nset -euo pipefail\n" + body)
    return path


def ledger(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def fakes(tmp_path, monkeypatch):
    """A folder holding the stand-ins, as the working folder; $FAKE_LEDGER lists the runs that finished."""
    monkeypatch.chdir(write_fakes(tmp_path))
    monkeypatch.setenv("FAKE_LEDGER", str(tmp_path / "ledger.txt"))
    return tmp_path


# --- reading a sweep file ---------------------------------------------------------------------------------------------


def test_flag_groups_and_job_ids():
    assert flag_groups(("-b", "4", "-x=1", "-lr", "-1", "-train_prompt")) == [
        ("b", ("4",)),
        ("x", ("1",)),
        ("lr", ("-1",)),  # a negative number is a value, not a flag
        ("train_prompt", ()),
    ]
    a = job_id("train.py", ("-exp_name", "A", "-b", "4", "-seed", "0"), (), ".")
    assert a.startswith("A_") and len(a) == len("A_") + 8
    assert job_id("train.py", ("-seed", "0", "-b", "4", "-exp_name", "A"), (), ".") == a  # flag order
    assert job_id("train.py", ("-exp_name", "A", "-b", "4", "-seed", "1"), (), ".") != a  # a value
    assert job_id("train.py", ("-exp_name", "A", "-b", "4", "-seed", "0"), (("OMP_NUM_THREADS", "1"),), ".") != a
    assert job_id("val.py", ("-exp_name", "A", "-b", "4", "-seed", "0"), (), ".") != a


def test_a_sweep_file_is_read_as_bash_runs_it(tmp_path):
    path = sweep_file(
        tmp_path,
        "for s in 0 1; do\n"  # line 3
        '  OMP_NUM_THREADS=1 python train.py -exp_name "run $s" -seed $s\n'  # line 4
        "done\n"
        "python -u val.py -weights none/*/best.pth\n"  # line 6
        "torchrun --nproc_per_node 2 train.py -exp_name dist\n"  # line 7
        "python train.py -resume logs_new/x\n"  # line 8
        "python tables.py logs_new -out t\n",  # line 9
    )
    found = discover.sort_calls(discover.read_calls(path, dict(os.environ)))
    assert [(c.script_args, c.env, c.line) for c in found.jobs] == [
        (("train.py", "-exp_name", "run 0", "-seed", "0"), (("OMP_NUM_THREADS", "1"),), 4),
        (("train.py", "-exp_name", "run 1", "-seed", "1"), (("OMP_NUM_THREADS", "1"),), 4),
        (("val.py", "-weights", "none/*/best.pth"), (), 6),
    ]
    assert [(c.line, reason.split(" ")[1]) for c, reason in found.not_jobs] == [(7, "torchrun"), (8, "-resume")]
    assert [c.argv for c in found.after] == [("tables.py", "logs_new", "-out", "t")] and not found.before
    job = Job.of_call(found.jobs[2], tmp_path / "jobs", str(tmp_path))
    assert job.waits_for() == "none/*/best.pth"  # a glob that matches nothing yet


def test_a_file_that_stops_is_one_line(tmp_path):
    path = sweep_file(tmp_path, 'echo "out/ exists; move it away first" >&2; exit 1\n')
    with pytest.raises(InputError, match="exit status 1 while reading it: out/ exists; move it away first"):
        discover.read_calls(path, dict(os.environ))


def read_jobs(name: str, env: dict[str, str]) -> discover.Discovery:
    return discover.sort_calls(discover.read_calls(ROOT / name, {**os.environ, **env}))


def test_the_projects_sweep_files_are_read_as_they_are(tmp_path):
    bash = read_jobs("bash.sh", {})
    assert [c.script for c in bash.jobs] == ["train.py"] * 4 + ["val.py"] + ["train.py"] * 6  # its 11 lines
    ablation = read_jobs("bash_ablation.sh", {"SEEDS": "0 1"})
    assert len(ablation.jobs) == 28 and {c.argv[c.argv.index("-log_dir") + 1] for c in ablation.jobs} == {
        "logs_ablation"
    }
    assert [c.argv[:2] for c in ablation.after] == [("tables.py", "logs_ablation/LIDC_SPA_*")] + [
        ("tables.py", "logs_ablation/MBHSeg_SPA_*")
    ]
    out = tmp_path / "results"
    results = read_jobs("bash_results.sh", {"OUT": str(out)})
    # synthetic: 4 oracle evaluations, 6 without memory, 3 with, 2 blind; sessions: 3 seeds x (reset, oracle,
    # switch); cases: 3 trainings; lidc: 2 oracles, 3 x (no memory, memory, blind), 3 x (blind + paint, memory
    # reset). The sessions' and the paint lines wait for the runs whose checkpoints they read
    assert len(results.jobs) == (4 + 6 + 3 + 2) + 9 + 3 + (2 + 9 + 6)
    waiting = [Job.of_call(c, tmp_path, str(ROOT)).waits_for() for c in results.jobs]
    assert sum(w is not None for w in waiting) == 9 + 6
    assert dict(results.jobs[0].env) == {} and dict(results.jobs[4].env) == {"OMP_NUM_THREADS": "1"}  # kept
    with pytest.raises(InputError, match="move it away first"):  # a second plain reading: the file's guard
        read_jobs("bash_results.sh", {"OUT": str(out)})
    assert len(read_jobs("bash_results.sh", {"OUT": str(out), "AESPA_SWEEP_CONTINUES": "1"}).jobs) == 44


def test_slots():
    assert slots("cpu:2", cpus=4) == [{"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "2"}] * 2
    four = slots("0,1", per_gpu=2, cpus=16)
    assert [s["CUDA_VISIBLE_DEVICES"] for s in four] == ["0", "0", "1", "1"]
    assert {s["OMP_NUM_THREADS"] for s in four} == {"4"}
    for bad in ("cpu:0", "cpu:x", "0,,1", "1,1"):
        with pytest.raises(InputError, match="-gpus"):
            slots(bad)


def test_slurm_parameters_pass_through():
    assert cluster.parameters("slurm_partition=gpu,timeout_min=600,mem_gb=7.5") == {
        "slurm_partition": "gpu",
        "timeout_min": 600,
        "mem_gb": 7.5,
    }
    with pytest.raises(InputError, match="expected key=value"):
        cluster.parameters("gpu")
    with pytest.raises(InputError, match="-slurm"):  # submitit's own refusal of a name it does not know
        cluster.executor(Path("unused"), "local", {"no_such_parameter": 1})


def test_the_runner_reads_the_run_folder_as_the_engine_writes_it():
    from analysis.run_files import SUMMARY
    from engine import run_folder

    assert jobs.LAST_CHECKPOINT == f"Model/{run_folder.LAST_CHECKPOINT}" and jobs.LOCK_FILE == run_folder.LOCK_FILE
    assert SUMMARY == "summary.json"


def test_the_runner_imports_no_torch_and_only_torch_free_layers():
    allowed = {"sweeps", "utils", "conf", "analysis"}
    for path in (ROOT / "sweeps").glob("*.py"):
        tree = ast.parse(path.read_text())
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        project = {p.stem for p in ROOT.glob("*.py")} | {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()}
        assert names & project <= allowed, path
    code = "import sys, sweeps.run, sweeps.cluster; print([m for m in sys.modules if m.startswith('torch')])"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "[]", proc.stderr


# --- running jobs (stand-ins) -------------------------------------------------------------------------------------


def test_jobs_run_in_slots_later_lines_wait_for_earlier_runs_and_a_second_sweep_skips_them(fakes, capsys):
    path = sweep_file(
        fakes,
        "for s in 0 1 2 3; do python train.py -exp_name a -seed $s -log_dir runs/train; done\n"
        "for run in runs/train/a_*; do python val.py -weights $run/Model/checkpoint_last.pth -exp_name v "
        "-log_dir runs/val; done\n"
        "python tables.py runs -out table.txt\n",
    )
    assert main([str(path), "-gpus", "cpu:2", "-out", "state"]) == 0
    trained = sorted((fakes / "runs" / "train").iterdir())
    assert len(trained) == 4 and all((r / "summary.json").is_file() for r in trained)
    assert {json.loads((r / "args.json").read_text())["seed"] for r in trained} == {"0", "1", "2", "3"}
    threads = {json.loads((r / "args.json").read_text())["threads"] for r in trained}
    assert threads == {str(max(1, len(os.sched_getaffinity(0)) // 2))}  # each job its share of the CPUs
    assert len(list((fakes / "runs" / "val").iterdir())) == 4  # the val line read again once the runs existed
    assert len((fakes / "table.txt").read_text().split()) == 8  # tables after every job
    assert len(ledger(fakes / "ledger.txt")) == 8
    assert not list((fakes / "state" / "jobs").glob("*/*/args.json"))  # every run moved out of the state
    status = json.loads((fakes / "state" / "sweep_status.json").read_text())
    assert status["counts"] == {"done": 8}

    capsys.readouterr()
    assert main([str(path), "-gpus", "cpu:2", "-out", "state"]) == 0
    assert len(ledger(fakes / "ledger.txt")) == 8  # nothing ran twice
    assert "finished earlier" in (fakes / "state" / "sweep_status.md").read_text()


def test_a_failed_job_reruns_only_with_retry_failed(fakes):
    path = sweep_file(
        fakes,
        "python train.py -exp_name ok -log_dir runs\npython train.py -exp_name f -needs go -log_dir runs\n"
        "python tables.py runs -out table.txt\n",
    )
    assert main([str(path), "-gpus", "cpu:1", "-out", "state"]) == 1
    assert not (fakes / "table.txt").exists()  # no tables of an incomplete sweep
    (fakes / "go").write_text("")
    assert main([str(path), "-gpus", "cpu:1", "-out", "state"]) == 1  # failed earlier: not rerun
    assert len(ledger(fakes / "ledger.txt")) == 1
    assert main([str(path), "-gpus", "cpu:1", "-out", "state", "-retry_failed"]) == 0
    assert len(ledger(fakes / "ledger.txt")) == 2 and (fakes / "table.txt").exists()


def test_a_run_another_process_holds_is_left_alone(fakes):
    path = sweep_file(fakes, "python train.py -exp_name held -log_dir runs\n")
    (job,) = [Job.of_call(c, fakes / "state" / "jobs", str(fakes)) for c in discover.read_calls(path, dict(os.environ))]
    run = job.folder / "held_2026_01_01_00_00_00"
    (run / "Model").mkdir(parents=True)
    (run / "args.json").write_text("{}")
    fd = os.open(run / ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, b"4242\n")
        assert plan(job) == jobs.Plan("elsewhere", run, "process 4242 is running it")
        assert main([str(path), "-gpus", "cpu:1", "-out", "state"]) == 1
    finally:
        os.close(fd)
    assert plan(job).action == "start" and not ledger(fakes / "ledger.txt")


def test_sigterm_stops_every_job_and_the_next_sweep_resumes_them(fakes):
    path = sweep_file(
        fakes, "for s in 0 1; do python train.py -exp_name slow -seed $s -epochs 3 -sleep 1 -log_dir runs; done\n"
    )
    sweep = subprocess.Popen(
        [sys.executable, str(ROOT / "sweep.py"), str(path), "-gpus", "cpu:2", "-out", "state"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while len(list(fakes.glob("state/jobs/*/*/Model/checkpoint_last.pth"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    sweep.send_signal(signal.SIGTERM)
    assert sweep.wait(timeout=60) == 143
    assert not ledger(fakes / "ledger.txt")
    assert main([str(path), "-gpus", "cpu:2", "-out", "state"]) == 0
    runs = sorted((fakes / "runs").iterdir())
    assert len(runs) == 2 and len(ledger(fakes / "ledger.txt")) == 2
    for run in runs:  # each epoch trained once: the second sweep resumed after the checkpoint
        assert (run / "epochs.txt").read_text().split() == ["1", "2", "3"]


def test_a_cluster_task_stops_its_run_resumably_and_resubmits_itself(fakes):
    path = sweep_file(fakes, "python train.py -exp_name c -epochs 3 -sleep 1 -log_dir runs\n")
    (job,) = [Job.of_call(c, fakes / "state" / "jobs", str(fakes)) for c in discover.read_calls(path, dict(os.environ))]
    task = cluster.Task(job, sys.executable, retry_failed=False, grace=30)
    job.folder.mkdir(parents=True)
    proc = cluster.spawn_without_usr2(job.command(sys.executable, None), cwd=job.cwd, start_new_session=True)
    task._keep(proc)
    while not list(job.folder.glob("*/Model/checkpoint_last.pth")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR2)  # the cluster's warning reaches train.py too: ignored there
    time.sleep(0.3)
    assert proc.poll() is None
    again = task.checkpoint()  # what submitit calls on the warning
    assert proc.returncode == 143 and jobs.read_record(job)["state"] == "interrupted"
    assert again.function is not task and again.function._process is None
    assert again.function() == "done"  # the resubmitted task resumes the run
    (run,) = (fakes / "runs").iterdir()
    assert (run / "epochs.txt").read_text().split() == ["1", "2", "3"]


# --- the real train.py (slow) -------------------------------------------------------------------------------------

TINY_SWEEP = """export OMP_NUM_THREADS=1
for seed in 0 1; do
    for lr in 0.01 0.003; do
        python train.py $TINY -lr $lr -seed $seed -exp_name tiny_s${seed}_lr$lr -log_dir "$LOGS"
    done
done
python tables.py "$LOGS" -out "$TABLES"
"""


def tiny_sweep(folder: Path, data: Path) -> tuple[Path, dict[str, str]]:
    """Four real training runs of seconds (vit_t at 32 px, 3 epochs of 2 batches) and their table."""
    tiny = tiny_run_args(
        data, folder, "-image_size", "32", "-clicks", "2", "-noc_clicks", "0", "-epochs", "3", "-max_train_batches", "2"
    )
    tiny = tiny[: tiny.index("-log_dir")] + tiny[tiny.index("-log_dir") + 2 :]
    env = {"TINY": " ".join(tiny), "LOGS": str(folder / "logs"), "TABLES": str(folder / "tables")}
    return sweep_file(folder, TINY_SWEEP), env


def run_sweep(path: Path, env: dict[str, str], *flags: str, wait: bool = True) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "sweep.py"), str(path), *flags],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if wait:
        proc.communicate(timeout=300)
    return proc


def metrics_by_run(logs: Path) -> dict[str, str]:
    """{exp_name: its metrics.jsonl} of every run folder under `logs` (exactly one per exp_name)."""
    found = {}
    for run in sorted(logs.iterdir()):
        name = json.loads((run / "args.json").read_text())["exp_name"]
        assert name not in found, f"{name}: two run folders"
        found[name] = (run / "metrics.jsonl").read_text()
    return found


@pytest.fixture(scope="module")
def cluster_sweep(synthetic_root, tmp_path_factory):
    """The tiny sweep through submitit's local executor (every job at once), never interrupted."""
    folder = tmp_path_factory.mktemp("cluster")
    path, env = tiny_sweep(folder, synthetic_root)
    proc = run_sweep(path, env, "-slurm", "timeout_min=5", "-cluster", "local", "-out", str(folder / "state"))
    return folder, proc.returncode


@pytest.mark.slow
def test_the_jobs_through_submitits_local_executor(cluster_sweep):
    folder, code = cluster_sweep
    assert code == 0
    assert len(list((folder / "state" / "submitit").glob("*_result.pkl"))) == 4  # one cluster job per line
    assert len(metrics_by_run(folder / "logs")) == 4 and (folder / "tables" / "table.csv").is_file()


@pytest.mark.slow
def test_a_sweep_stopped_by_sigterm_and_run_again_equals_one_never_stopped(cluster_sweep, synthetic_root, tmp_path):
    straight, code = cluster_sweep
    assert code == 0
    path, env = tiny_sweep(tmp_path, synthetic_root)
    flags = ("-gpus", "cpu:2", "-out", str(tmp_path / "state"))
    first = run_sweep(path, env, *flags, wait=False)
    while not list(tmp_path.glob("state/jobs/*/*/Model/checkpoint_last.pth")) and first.poll() is None:
        time.sleep(0.02)
    first.send_signal(signal.SIGTERM)
    out, _ = first.communicate(timeout=120)
    assert first.returncode == 143, out
    # the runs the stop left with a checkpoint (at least the one seen, unless it finished before the signal came)
    to_resume = {p.parts[-4] for p in tmp_path.glob("state/jobs/*/*/Model/checkpoint_last.pth")}
    second = run_sweep(path, env, *flags)
    assert second.returncode == 0
    records = {p.parent.name: json.loads(p.read_text()) for p in tmp_path.glob("state/jobs/*/job.json")}
    assert len(records) == 4
    for job in to_resume:  # continued, not started again
        assert records[job]["attempts"][-1]["action"] == "resume"
    records = list(records.values())
    for record in records:  # no job ran twice to completion
        assert [a["exit"] for a in record["attempts"]].count(0) == 1
    for run in (tmp_path / "logs").iterdir():
        assert (run / "Log" / "log.txt").read_text().count("test split, best checkpoint") == 1
    # no run lost, each the same as the uninterrupted sweep's (there through submitit), and the same tables
    assert metrics_by_run(tmp_path / "logs") == metrics_by_run(straight / "logs")
    for name in ("table.csv", "table.md"):
        assert (tmp_path / "tables" / name).read_bytes() == (straight / "tables" / name).read_bytes()
