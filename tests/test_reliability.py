"""What a crash leaves behind: checkpoint file modes, orphan temporaries of an interrupted save, and a
metrics.jsonl repaired for a resume (a partial last line, rows of epochs whose checkpoint was never saved)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import utils
from analysis.run_files import read_metrics, repair_metrics
from engine.checkpoints import save_atomically
from utils import InputError

ROOT = Path(__file__).resolve().parents[1]


# --- checkpoint file mode -------------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_a_checkpoint_gets_the_mode_of_an_ordinary_file(tmp_path, umask):
    old = os.umask(umask)
    try:
        (tmp_path / "plain.txt").write_bytes(b"x")  # what open() gives every other file of a run
        save_atomically({"w": torch.zeros(2)}, tmp_path / "checkpoint_last.pth")
    finally:
        os.umask(old)
    plain = stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    assert plain == 0o666 & ~umask  # the oracle: the umask rule itself
    assert stat.S_IMODE((tmp_path / "checkpoint_last.pth").stat().st_mode) == plain
    assert torch.equal(torch.load(tmp_path / "checkpoint_last.pth", weights_only=True)["w"], torch.zeros(2))


# --- orphan temporaries ---------------------------------------------------------------------------------------


def killed_during_save(folder: Path) -> None:
    """A process killed (os._exit, no cleanup runs) after writing the temporary file, before the rename."""
    code = (
        "import os, sys, torch, utils\n"
        "from engine.checkpoints import save_atomically\n"
        "utils.os.replace = lambda *a: os._exit(9)\n"
        "save_atomically({'w': torch.zeros(3)}, sys.argv[1])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(folder / "checkpoint_last.pth")],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 9, proc.stderr


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path):
    model = tmp_path / "Model"
    model.mkdir()
    killed_during_save(model)
    orphans = [p for p in model.iterdir() if p.name.endswith(".tmp")]
    assert len(orphans) == 1 and orphans[0].name.startswith(".checkpoint_last.pth.")  # the real leftover
    older = model / ".checkpoint_best.pth.k3j9x_2a.tmp"  # tempfile.mkstemp's spelling (earlier versions)
    older.write_bytes(b"half")
    keep = [
        ".something.pth",
        "checkpoint_last.pth",
        ".checkpoint_last.pth.tmp",
        ".checkpoint_last.pth.abcdefg.tmp",
        ".checkpoint_last.pth.abcdefghi.tmp",
        ".checkpoint_last.pth.ABCDEFGH.tmp",
        "checkpoint.pth.abcdefgh.tmp",
        ".checkpoint_last.pth.abcdefgh.tmp.bak",
        ".x.abcdefgh.tmpx",
    ]
    for name in keep:
        (model / name).write_bytes(b"keep")
    (model / ".folder.abcdefgh.tmp").mkdir()  # named like one, but a folder
    (model / ".link.abcdefgh.tmp").symlink_to(model / ".something.pth")  # a link: its target is not ours

    removed = utils.remove_stale_temporaries(model)

    assert sorted(removed) == sorted([orphans[0], older])
    left = sorted(p.name for p in model.iterdir())
    assert left == sorted(keep + [".folder.abcdefgh.tmp", ".link.abcdefgh.tmp"])
    assert (model / ".something.pth").read_bytes() == b"keep"
    assert utils.remove_stale_temporaries(model) == []  # nothing left to remove
    assert utils.remove_stale_temporaries(tmp_path / "absent") == []  # a run that has saved nothing yet


def test_the_atomic_writes_leave_no_temporary_and_replace_the_file(tmp_path):
    utils.atomic_write_bytes(tmp_path / "a.json", b"1")
    utils.atomic_write_bytes(tmp_path / "a.json", b"22")
    assert (tmp_path / "a.json").read_bytes() == b"22"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


# --- metrics.jsonl repair on resume ---------------------------------------------------------------------------


def row(epoch: int, split: str, round_: int, dice: float = 0.5) -> str:
    return json.dumps({"epoch": epoch, "split": split, "mode": "SPA", "round": round_, "Dice": dice}) + "\n"


def epoch_rows(epoch: int, rounds: int = 4) -> list[str]:
    """What one epoch writes: its train rows, then its test rows."""
    return [row(epoch, s, t) for s in ("train", "test") for t in range(1, rounds + 1)]


def test_a_partial_last_line_is_cut_and_reported(tmp_path):
    path = tmp_path / "metrics.jsonl"
    whole = "".join(epoch_rows(1) + epoch_rows(2))
    partial = row(3, "train", 1)[:37]  # a kill mid-write: no newline, does not parse
    path.write_text(whole + partial)
    assert repair_metrics(path, through_epoch=2) == ["cut a partial last line (37 bytes)"]
    assert path.read_text() == whole
    assert len(read_metrics(path)) == 16


def test_rows_of_epochs_after_the_checkpoint_are_dropped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    kept = epoch_rows(1) + epoch_rows(2)
    path.write_text("".join(kept + epoch_rows(3)))  # epoch 3 wrote its rows, its checkpoint was never saved
    assert repair_metrics(path, through_epoch=2) == ["dropped 8 rows of epoch 3"]
    assert path.read_text() == "".join(kept)  # the kept lines byte for byte


def test_both_repairs_at_once_and_several_epochs(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(epoch_rows(1) + epoch_rows(2) + epoch_rows(3)[:5]) + '{"epoch": 3, "spl')
    notes = repair_metrics(path, through_epoch=1)
    assert notes == ["cut a partial last line (17 bytes)", "dropped 8 rows of epoch 2", "dropped 5 rows of epoch 3"]
    assert path.read_text() == "".join(epoch_rows(1))


def test_a_sound_file_is_left_alone(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(epoch_rows(1)))
    before = path.stat().st_mtime_ns
    assert repair_metrics(path, through_epoch=1) == []
    assert path.stat().st_mtime_ns == before and path.read_text() == "".join(epoch_rows(1))
    assert repair_metrics(tmp_path / "none.jsonl", through_epoch=3) == []  # killed before its first row


def test_a_complete_last_row_without_its_newline_is_kept(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(epoch_rows(1)) + row(2, "train", 1).rstrip("\n"))
    notes = repair_metrics(path, through_epoch=2)
    assert notes == ["added the missing newline after the last row"]
    assert path.read_text() == "".join(epoch_rows(1)) + row(2, "train", 1)


@pytest.mark.parametrize(
    "bad, line",
    [
        ('{"epoch": 1, "split": "train", "ro\n', 3),  # cut short but followed by more rows: not a kill
        ('{"epoch": "one", "split": "train", "round": 1}\n', 3),
        ("[1, 2]\n", 3),
    ],
)
def test_any_other_malformed_line_is_an_error_naming_file_and_line(tmp_path, bad, line):
    path = tmp_path / "metrics.jsonl"
    text = row(1, "train", 1) + row(1, "train", 2) + bad + row(1, "test", 1)
    path.write_text(text)
    with pytest.raises(InputError, match="^[^\n]*$") as err:
        repair_metrics(path, through_epoch=1)
    assert f"{path} line {line}" in str(err.value)
    assert path.read_text() == text  # nothing rewritten
