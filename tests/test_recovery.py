"""Nothing lost, nothing wrong (issue 24): a resume cannot destroy a run, the final test is part of the run and
replaced rather than appended, best and last agree after a kill, one process per run folder, a cache that cannot
serve corruption, flags a mode does not use refused, and one-line messages. Kills are simulated by writing the
state a kill leaves."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_run_args

import tables
import train
import val
from analysis.run_files import is_final, read_metrics, read_per_image_rows, rewrite_per_image
from engine.run_folder import lock_run_folder, unlock
from pipeline.embedding_cache import EmbeddingCache, entry_checksum
from utils import InputError

ROOT = Path(__file__).resolve().parents[1]
TINY = ("-max_train_batches", "1", "-noc_clicks", "0")


def model_dir(run: str | Path) -> Path:
    return Path(run) / "Model"


def keys(run: str | Path) -> list[tuple]:
    return [
        (r["split"], r["epoch"], r["round"], bool(r.get("final"))) for r in read_metrics(Path(run) / "metrics.jsonl")
    ]


def per_image_lines(run: str | Path) -> list[str]:
    return (Path(run) / "per_image.csv").read_text().splitlines()


@pytest.fixture(scope="module")
def finished_run(synthetic_root, tmp_path_factory):
    """A finished run of 2 epochs, validated after each, best at an epoch chosen by its validation split."""
    logs = tmp_path_factory.mktemp("finished")
    args = tiny_run_args(synthetic_root, logs, *TINY, "-epochs", "2", "-val_freq", "1", "-val_fraction", "0.5")
    return Path(train.main(args)["run_dir"])


@pytest.fixture
def two_epoch_run(finished_run, tmp_path):
    """A copy of the finished run for one test to resume, damage or lock."""
    return Path(shutil.copytree(finished_run, tmp_path / "logs" / finished_run.name))


# --- 1: a resume continues from the last checkpoint only ------------------------------------------------------


def test_a_resume_from_any_other_checkpoint_is_refused_naming_the_last(two_epoch_run):
    before = (two_epoch_run / "metrics.jsonl").read_bytes(), (model_dir(two_epoch_run) / "checkpoint_last.pth").stat()
    with pytest.raises(InputError, match="continues from its last checkpoint, .*checkpoint_last.pth") as err:
        train.main(["-resume", str(model_dir(two_epoch_run) / "checkpoint_best.pth"), "-epochs", "3"])
    assert "\n" not in str(err.value)
    assert (two_epoch_run / "metrics.jsonl").read_bytes() == before[0]  # nothing the run finished is touched
    assert (model_dir(two_epoch_run) / "checkpoint_last.pth").stat().st_mtime_ns == before[1].st_mtime_ns


# --- 2: the final test replaced, never appended -------------------------------------------------------------------


def test_final_test_rows_are_replaced_on_every_resume(two_epoch_run):
    last = str(model_dir(two_epoch_run) / "checkpoint_last.pth")
    train.main(["-resume", last, "-epochs", "3"])
    train.main(["-resume", last, "-epochs", "4"])
    k = keys(two_epoch_run)
    assert len(k) == len(set(k))  # every (split, epoch, round, final) once
    final = [key for key in k if key[3]]
    summary = json.loads((two_epoch_run / "summary.json").read_text())
    assert final == [("test", summary["test_epoch"], r, True) for r in (1, 2, 3)]  # one final test: the best's
    lines = per_image_lines(two_epoch_run)
    finals = [line for line in lines[1:] if line.endswith(",1")]
    assert len(finals) == len(set(finals)) and {line.split(",")[0] for line in finals} == {str(summary["test_epoch"])}
    matrices = sorted(p.name for p in two_epoch_run.glob("follow_matrix_test_*.json"))
    assert matrices == [f"follow_matrix_test_epoch{summary['test_epoch']:03d}.json"]


def test_tables_refuses_duplicated_rows_naming_the_file(two_epoch_run, tmp_path):
    metrics = two_epoch_run / "metrics.jsonl"
    rows = read_metrics(metrics)
    with metrics.open("a") as f:  # what two processes writing one run folder leave
        f.write("".join(json.dumps(r) + "\n" for r in rows if r.get("final")))
    with pytest.raises(InputError, match=f"{metrics}: test rows of epoch .* appear twice"):
        tables.main([str(two_epoch_run), "-out", str(tmp_path / "t")])


# --- 3 and 4: best and last agree after a kill; a kill during the final test -------------------------------------


def test_a_best_checkpoint_lost_to_a_kill_is_restored_from_the_last(two_epoch_run):
    best, last = model_dir(two_epoch_run) / "checkpoint_best.pth", model_dir(two_epoch_run) / "checkpoint_last.pth"
    state = torch.load(last, weights_only=True)
    state["best_epoch"] = state["epoch"]  # the last epoch improved: its checkpoint was saved, then the kill
    torch.save(state, last)
    best.unlink()  # ... while the best file was being written
    (two_epoch_run / "summary.json").unlink()
    out = train.main(["-resume", str(last)])  # nothing to train: the final test is missing, so it runs
    assert torch.load(best, weights_only=True)["epoch"] == state["epoch"]
    assert out["best_epoch"] == state["epoch"]
    assert json.loads((two_epoch_run / "summary.json").read_text())["test_epoch"] == state["epoch"]
    assert "restored from" in (two_epoch_run / "Log" / "log.txt").read_text()


def test_a_kill_during_the_final_test_is_recovered_by_a_resume(two_epoch_run):
    metrics = two_epoch_run / "metrics.jsonl"
    lines = metrics.read_bytes().splitlines(keepends=True)
    kept = [line for line in lines if b'"final": true' not in line]
    metrics.write_bytes(b"".join(kept) + lines[-1][:30])  # killed while writing the test rows
    (two_epoch_run / "summary.json").unlink()
    train.main(["-resume", str(model_dir(two_epoch_run) / "checkpoint_last.pth")])
    k = keys(two_epoch_run)
    assert len(k) == len(set(k)) and sum(key[3] for key in k) == 3
    assert (two_epoch_run / "summary.json").is_file()
    with pytest.raises(InputError, match="nothing left to do"):  # the run folder names its last checkpoint
        train.main(["-resume", str(two_epoch_run)])


# --- 7: one process per run folder --------------------------------------------------------------------------------


def test_a_second_process_on_a_run_folder_is_refused_and_a_killed_one_leaves_no_lock(two_epoch_run):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from engine.run_folder import lock_run_folder; "
         "lock_run_folder(__import__('pathlib').Path(sys.argv[1])); print('locked', flush=True); time.sleep(60)",
         str(two_epoch_run)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(InputError, match=f"{two_epoch_run}: another process \\(pid {holder.pid}\\)"):
            train.main(["-resume", str(model_dir(two_epoch_run) / "checkpoint_last.pth"), "-epochs", "3"])
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    unlock(lock_run_folder(two_epoch_run))  # the kill released it


# --- 6: the embedding cache never serves a damaged entry ---------------------------------------------------------


class CountingEncoder(torch.nn.Module):
    """A stand-in frozen encoder: 2x2 average pooling, counting the images it encodes."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1))
        self.calls = 0

    def forward(self, x):
        self.calls += x.shape[0]
        return torch.nn.functional.avg_pool2d(x, 2) * self.scale


@pytest.mark.parametrize(
    "damage, problem",
    [
        ("zeros_plain", "is not an entry of this cache format"),
        ("flipped_byte", "does not match its checksum"),
        ("nan", "holds non-finite values"),
        ("wrong_shape", "has shape (3, 5, 5), the encoder's is (3, 4, 4)"),
        ("other_image", "was stored for another image"),
    ],
)
def test_a_damaged_cache_entry_is_recomputed_rewritten_and_reported(tmp_path, caplog, damage, problem):
    images = torch.rand(2, 3, 8, 8)
    encoder = CountingEncoder()
    want = EmbeddingCache(encoder, tmp_path)(images)
    entry, other = sorted(EmbeddingCache(encoder, tmp_path).folder.glob("*.pt"))
    if damage == "other_image":  # a valid entry copied under another image's key: its values are the other's
        shutil.copyfile(other, entry)
    elif damage == "zeros_plain":
        torch.save(torch.zeros(3, 4, 4), entry)  # the right shape, but not an entry with its checksum
    elif damage == "flipped_byte":
        data = bytearray(entry.read_bytes())
        stored = torch.load(entry, weights_only=True)["embedding"]
        at = bytes(data).find(stored.numpy().tobytes()[:16])  # a byte inside the tensor's values
        data[at + 3] ^= 0x40
        entry.write_bytes(bytes(data))
    else:
        bad = torch.full((3, 4, 4), float("nan")) if damage == "nan" else torch.ones(3, 5, 5)
        sha = entry_checksum(entry.stem, bad)  # a well-formed entry of the entry's key: only its values are wrong
        torch.save({"embedding": bad, "shape": list(bad.shape), "key": entry.stem, "sha256": sha}, entry)
    fresh = EmbeddingCache(encoder, tmp_path)
    calls = encoder.calls
    got = fresh(images)
    assert torch.equal(got, want)  # never the damaged values
    assert fresh.rejected == 1 and f"{entry}: cached embedding {problem}" in caplog.text
    assert encoder.calls > calls
    again = EmbeddingCache(encoder, tmp_path)
    again(images)
    assert again.rejected == 0 and again.disk_hits == 2  # rewritten: served from disk next time


def test_stale_cache_temporaries_are_removed(tmp_path):
    encoder = CountingEncoder()
    folder = EmbeddingCache(encoder, tmp_path).folder
    folder.mkdir(parents=True)
    stale, live = folder / ".abc.pt.0123abcd.tmp", folder / ".def.pt.4567abcd.tmp"
    stale.write_bytes(b"x")
    live.write_bytes(b"y")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    EmbeddingCache(encoder, tmp_path)
    assert not stale.exists() and live.exists()  # a recent one may belong to a run writing right now


# --- 9: flags a mode or a dataset does not use -------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (("-mode", "click_editor", "-weights", "ckpt.pth"), "-weights: -mode click_editor is a baseline"),
        (("-mode", "consensus", "-sam_ckpt", "lite_medsam"), "-sam_ckpt: -mode consensus is a baseline"),
        (("-dataset", "synthetic", "-val_fraction", "0.2"), "-val_fraction: not used by -dataset synthetic"),
        (("-num_samples", "12"), "-num_samples: not used by -mode AESPA (only by SPA)"),
    ],
    ids=["editor-weights", "consensus-sam_ckpt", "synthetic-val_fraction", "aespa-num_samples"],
)
def test_a_flag_that_is_not_used_is_refused_in_one_line(tmp_path, capsys, extra, fragment):
    with pytest.raises(SystemExit) as stop:
        val.main(["-log_dir", str(tmp_path / "logs"), *extra])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and len(err.splitlines()) == 1 and fragment in err, err
    assert not (tmp_path / "logs").exists()


def test_resume_refuses_a_new_log_dir(two_epoch_run, tmp_path):
    with pytest.raises(InputError, match="-log_dir .* differs from the run's"):
        train.main(["-resume", str(model_dir(two_epoch_run) / "checkpoint_last.pth"), "-epochs", "3", "-log_dir",
                    str(tmp_path / "elsewhere")])  # fmt: skip
    assert not (tmp_path / "elsewhere").exists()


# --- 10: messages -------------------------------------------------------------------------------------------------


def test_sigterm_exits_143(synthetic_root, tmp_path):
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *tiny_run_args(synthetic_root, tmp_path, "-epochs", "50")],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    for line in proc.stdout:  # wait until it trains
        if "model vit_t" in line:
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "Traceback" not in err


def test_an_explicit_encoder_that_the_checkpoint_contradicts_names_what_it_holds(synthetic_root, tmp_path):
    with pytest.raises(InputError, match="-encoder vit_b: .* holds a lite_medsam model .* use -encoder lite_medsam"):
        train.main(tiny_run_args(synthetic_root, tmp_path, "-encoder", "vit_b", "-sam_ckpt", "lite_medsam"))


def write_per_image(folder: Path, dataset: str, lines: list[str]) -> Path:
    folder.mkdir(parents=True)
    (folder / "args.json").write_text(json.dumps({"exp_name": folder.name, "dataset": dataset, "seed": 0}))
    header = "epoch,split,mode,round,clicks,image,followed,Dice_neutral,Dice_follow,Gain_over_consensus,empty_followed"
    (folder / "per_image.csv").write_text("\n".join([header, *lines]))
    return folder


def row(image: str, value: float) -> str:
    return f"1,test,AESPA,1,0,{image},0,0.5,{value},0.0,0"


@pytest.mark.parametrize(
    "case, fragment",
    [
        ("cut", "line 3: cut short (a kill while writing?)"),
        ("middle", "line 2: 4 fields, the header has 11"),
        ("same", "A and B share run folders"),
        ("datasets", "datasets ['synthetic'] vs ['LIDC']"),
    ],
)
def test_paired_comparison_messages_name_what_is_wrong(tmp_path, case, fragment):
    a = write_per_image(tmp_path / "a", "synthetic", [row("p0", 0.5), row("p1", 0.6) + "\n"])
    b = write_per_image(tmp_path / "b", "synthetic", [row("p0", 0.4), row("p1", 0.5) + "\n"])
    if case == "cut":
        (b / "per_image.csv").write_text((b / "per_image.csv").read_text()[:-9])  # a kill mid-line
    elif case == "middle":
        text = (b / "per_image.csv").read_text().splitlines()
        (b / "per_image.csv").write_text("\n".join([text[0], "1,test,AESPA,1", *text[2:]]) + "\n")
    elif case == "same":
        b = a
    else:
        b = write_per_image(tmp_path / "lidc", "LIDC", [row("LIDC-0001/z-1.0", 0.4)])
    with pytest.raises(InputError, match=None) as err:
        tables.main(["-compare", str(a), str(b), "-out", str(tmp_path / "out")])
    assert fragment in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_an_older_per_image_csv_gets_the_final_column_and_its_final_test_replaced(tmp_path):
    """A run folder of an earlier version (no `final` column) resumed twice: its final test rows are marked and
    replaced, not appended unmarked."""
    path = tmp_path / "per_image.csv"
    old = "epoch,split,mode,round,clicks,image,followed,Dice_follow,Dice,Gain_over_consensus,empty_followed"
    path.write_bytes(f"{old}\r\n1,val,AESPA,1,0,p0,0,0.5,0.5,0.0,0\r\n".encode())
    row = {"epoch": 2, "split": "test", "mode": "AESPA", "round": 1, "clicks": 0, "image": "p0", "followed": 0}
    row |= {"Dice_follow": 0.7, "Dice_neutral": 0.6, "Gain_over_consensus": 0.1, "empty_followed": 0, "final": 1}
    for _ in range(2):
        rewrite_per_image(path, is_final, [row])
    columns, rows, notes = read_per_image_rows(path)
    assert columns[-1] == "final" and not notes
    assert [(r["split"], r["final"], r["Dice"]) for _, _, r in rows] == [("val", "", "0.5"), ("test", "1", "0.6")]
