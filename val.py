"""Evaluate a checkpoint with the validation protocol of SPEC §4.4 (each valid rater followed in turn by default).

    python val.py -weights logs_new/<run>/Model/checkpoint_best.pth
    python val.py -sam_ckpt ./checkpoint/medsam_vit_b.pth -weights ./checkpoint/checkpoint_aespa_lidc.pth \
        -image_size 128 -b 1 -dataset LIDC -data_path ./data/LIDC -mode AESPA

Architecture flags come from a project checkpoint's saved args; the original's published checkpoint runs
under `-compat reference`. Results go to a run folder `<log_dir>/<exp_name>_val_<time>/` and stdout.
"""

from __future__ import annotations

import torch

from builders import adopt_checkpoint_settings, build_loader, build_model_from_args
from cfg import given_flags, parse_args
from distributed import cleanup_distributed, is_main_process, setup_distributed
from engine import evaluate
from models import read_checkpoint
from plots import save_epoch_plots
from runlog import RunFolder, format_table
from utils import InputError, run_cli


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv, prog="val.py")
    if not args.weights:
        raise InputError("-weights is required: the checkpoint to evaluate (e.g. logs_new/<run>/Model/checkpoint_best.pth)")
    explicit = given_flags(argv)
    device, _ = setup_distributed(args)
    try:
        obj = read_checkpoint(args.weights)
        notes = adopt_checkpoint_settings(args, obj, explicit, evaluating=True)
        epoch = int(obj.get("epoch", 0) or 0) if isinstance(obj, dict) else 0
        args.epochs = epoch or args.epochs  # val.py trains nothing: args.json records the evaluated model's epochs
        model, reports = build_model_from_args(args, preloaded={args.weights: obj})
        loader = build_loader(args, "test")
        run = RunFolder(args, suffix="_val", enabled=is_main_process())  # after everything that can refuse input
        for line in notes + [report.summary() for report in reports]:
            run.log(line)
        model.to(device).eval()
        run.log(f"evaluating {args.weights} ({args.mode}, {args.encoder} at {args.image_size} px) on "
                f"{len(loader.dataset)} test samples of {args.dataset}")  # fmt: skip
        with torch.no_grad():
            rows = evaluate(model, loader, args, epoch, device)
        run.write_metrics(rows)
        if is_main_process():
            save_epoch_plots(run, model, loader, args, device, epoch)
        run.log(f"test split ({args.mode}, follow {args.val_follow}), per round:\n" + format_table(rows))
        noc = {k: v for k, v in rows[-1].items() if k.startswith(("NoC", "NoF"))}
        if noc:
            run.log("  ".join(f"{k} {v:.3f}" for k, v in noc.items()))
        run.close()
        return rows
    finally:
        cleanup_distributed()


if __name__ == "__main__":
    run_cli(main)
