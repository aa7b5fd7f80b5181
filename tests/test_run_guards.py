"""Guards of a run folder against misuse (docs/run-folder.md, "The rules that keep a run whole"): the lock survives
a deleted .lock file; a run name cannot leave -log_dir; a diverging run ends in one line and keeps its checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_run_args

import train
from analysis.run_files import read_metrics
from cfg import INPUT_ERRORS
from engine.optim import Diverged, Stepper
from engine.run_folder import LOCK_FILE, lock_run_folder, unlock
from utils import InputError, run_cli

ROOT = Path(__file__).resolve().parents[1]


def hold_lock(folder: Path) -> subprocess.Popen:
    """Another process holding the run folder's lock until it is killed."""
    code = (
        "import sys, time, pathlib; from engine.run_folder import lock_run_folder; "
        "lock_run_folder(pathlib.Path(sys.argv[1])); print('locked', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(folder)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_deleting_the_lock_file_does_not_let_a_second_process_in(tmp_path):
    holder = hold_lock(tmp_path)
    try:
        assert (tmp_path / LOCK_FILE).read_text().strip() == str(holder.pid)
        (tmp_path / LOCK_FILE).unlink()  # "cleanup" during a live run
        with pytest.raises(InputError, match=f"{tmp_path}: another process \\(pid \\?\\) is running this run"):
            lock_run_folder(tmp_path)
        with pytest.raises(InputError, match="another process"):  # refused again: the failed try took nothing
            lock_run_folder(tmp_path)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    held = lock_run_folder(tmp_path)  # the kill released it
    try:
        assert (tmp_path / LOCK_FILE).read_text().strip() == str(os.getpid())
    finally:
        unlock(held)


def test_a_lock_is_released_by_unlock_and_taken_again(tmp_path):
    held = lock_run_folder(tmp_path)
    with pytest.raises(InputError, match="another process"):  # a second lock in one process is refused too
        lock_run_folder(tmp_path)
    unlock(held)
    unlock(lock_run_folder(tmp_path))


# A SIGTERM that lands while torch.save writes a file: the writer's callback raises the signal's exception into
# torch's zip writer, which then raises its own error as it closes the archive.
SIGTERM_DURING_SAVE = """
import os, signal, sys, torch
from pathlib import Path
from utils import run_cli

real_fdopen = os.fdopen


class SignalledFile:
    '''The temporary file of an atomic write; a SIGTERM arrives during its second write.'''

    def __init__(self, f):
        self.f, self.writes = f, 0

    def write(self, data):
        self.writes += 1
        if self.writes == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.f.__exit__(*exc)


def main(argv):
    what, folder = sys.argv[1], Path(sys.argv[2])
    os.fdopen = lambda *a, **k: SignalledFile(real_fdopen(*a, **k))
    if what == "checkpoint":
        from engine.checkpoints import save_atomically

        save_atomically({"weights": torch.arange(50000.0), "more": torch.ones(50000)}, folder / "checkpoint.pth")
    else:
        from pipeline.embedding_cache import EmbeddingCache

        EmbeddingCache(torch.nn.AvgPool2d(2), folder)(torch.rand(2, 3, 16, 16))
    print("not interrupted")


run_cli(main, [])
"""


@pytest.mark.parametrize("what", ["checkpoint", "cache"])
def test_sigterm_inside_torch_save_ends_as_interrupted_with_nothing_half_written(tmp_path, what):
    old = tmp_path / "checkpoint.pth"
    old.write_bytes(b"the previous checkpoint")
    proc = subprocess.run(
        [sys.executable, "-c", SIGTERM_DURING_SAVE, what, str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (proc.returncode, proc.stderr, proc.stdout) == (143, "interrupted\n", "")
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["checkpoint.pth"]  # no temporary, no cache entry
    assert old.read_bytes() == b"the previous checkpoint"


# --- -exp_name, -lr and a diverging run ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, message",
    [
        (["-exp_name", "../x"], "argument -exp_name ../x: a run name is one folder name inside -log_dir, without '/'"),
        (["-exp_name", "a/b"], "argument -exp_name a/b: a run name is one folder name inside -log_dir, without '/'"),
        (["-exp_name", "x" * 201], "argument -exp_name: at most 200 bytes (a folder name), got 201"),
        (
            ["-lr", "1e9"],
            "argument -lr: must be at most 1 (Adam moves each weight by about lr per step), got 1e+09",
        ),
    ],
    ids=["parent", "nested", "long", "lr"],
)
def test_a_run_name_outside_log_dir_and_an_absurd_lr_are_refused(synthetic_root, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as stop:
        train.main(tiny_run_args(synthetic_root, tmp_path / "logs", *flags))
    assert stop.value.code == 2
    assert capsys.readouterr().err == f"error: {message} (see train.py -h)\n"
    assert not (tmp_path / "logs").exists() and not (tmp_path / "x_").exists()


def test_exp_name_dot_dot_alone_stays_inside_log_dir(synthetic_root, tmp_path):
    run = Path(
        train.main(tiny_run_args(synthetic_root, tmp_path / "logs", "-exp_name", "..", "-max_train_batches", "1"))[
            "run_dir"
        ]
    )
    assert run.parent == tmp_path / "logs" and run.name.startswith(".._")


@pytest.fixture
def poisoned_after(monkeypatch):
    """Training whose weights turn NaN at the first optimisation step after `epochs` saved epochs (set the list's
    one element): the loss then is not finite, as in a run that diverges."""
    saved_epochs, after = [0], [0]
    real_update, real_save = Stepper.update, train.save

    def update(self):
        real_update(self)
        if saved_epochs[0] >= after[0]:
            with torch.no_grad():
                for group in self.optimizer.param_groups:
                    for p in group["params"]:
                        p.fill_(float("nan"))

    def save(*args, **kwargs):
        real_save(*args, **kwargs)
        saved_epochs[0] += 1

    monkeypatch.setattr(Stepper, "update", update)
    monkeypatch.setattr(train, "save", save)
    return after


def test_a_diverging_first_epoch_ends_in_one_line_saying_no_checkpoint_was_written(
    synthetic_root, tmp_path, poisoned_after
):
    logs = tmp_path / "logs"
    with pytest.raises(Diverged) as err:
        train.main(tiny_run_args(synthetic_root, logs, "-epochs", "2"))
    (run,) = logs.iterdir()
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("epoch 1, batch 1: the training loss is not finite (nan); the run diverged at learning")
    assert message.endswith(f"the run stops, no checkpoint was written ({run} holds no finished epoch)")
    assert message in (run / "Log" / "log.txt").read_text()
    assert not list((run / "Model").iterdir()) and not (run / "metrics.jsonl").exists()
    unlock(lock_run_folder(run))  # the run let go of its folder


def test_a_run_diverging_later_keeps_its_last_good_checkpoint(synthetic_root, tmp_path, poisoned_after):
    poisoned_after[0] = 1  # one epoch trains and is saved, the second diverges
    logs = tmp_path / "logs"
    with pytest.raises(Diverged, match="epoch 2, batch 1: the training loss is not finite") as err:
        train.main(tiny_run_args(synthetic_root, logs, "-epochs", "3", "-max_train_batches", "1"))
    (run,) = logs.iterdir()
    last = run / "Model" / "checkpoint_last.pth"
    assert str(err.value).endswith(f"the run stops, {last} keeps epoch 1, the last finished")
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in checkpoint["model"].values() if t.is_floating_point())
    assert {row["epoch"] for row in read_metrics(run / "metrics.jsonl")} == {1}


def test_a_diverged_run_is_one_line_and_exit_status_2_on_the_command_line(
    synthetic_root, tmp_path, capsys, monkeypatch, poisoned_after
):
    monkeypatch.setattr(signal, "signal", lambda *args: None)  # pytest keeps its own SIGTERM handling
    with pytest.raises(SystemExit) as stop:
        run_cli(train.main, tiny_run_args(synthetic_root, tmp_path / "logs", "-max_train_batches", "1"), INPUT_ERRORS)
    assert stop.value.code == 2
    err = capsys.readouterr().err.rsplit("\r", 1)[-1]  # after the progress bar's last redraw
    assert err.startswith("error: epoch 1, batch 1: the training loss is not finite") and err.count("\n") == 1
