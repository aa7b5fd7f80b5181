"""Evaluate a checkpoint with the validation protocol of SPEC §4.4 (each valid rater followed in turn by default).

    python val.py -weights logs_new/<run>/Model/checkpoint_best.pth
    python val.py -sam_ckpt ./checkpoint/medsam_vit_b.pth -weights ./checkpoint/checkpoint_aespa_lidc.pth \
        -image_size 128 -b 1 -dataset LIDC -data_path ./data/LIDC -mode AESPA

Architecture flags come from a project checkpoint's saved args; the original's published checkpoint runs
under `-compat reference`. Results go to a run folder `<log_dir>/<exp_name>_val_<time>/` and stdout.
"""

from __future__ import annotations

import torch

from builders import adopt_checkpoint_settings, build_loader, build_model_from_config
from cfg import given_flags, parse_config
from distributed import cleanup_distributed, is_main_process, setup_distributed
from engine import evaluate, save_epoch_figures
from models import read_checkpoint
from runlog import RunFolder, format_table
from utils import InputError, run_cli


def main(argv: list[str] | None = None) -> list[dict]:
    cfg = parse_config(argv, prog="val.py")
    if not cfg.model.weights:
        raise InputError(
            "-weights is required: the checkpoint to evaluate (e.g. logs_new/<run>/Model/checkpoint_best.pth)"
        )
    explicit = given_flags(argv)
    device, _ = setup_distributed(cfg.device)
    try:
        obj = read_checkpoint(cfg.model.weights)
        cfg, notes = adopt_checkpoint_settings(cfg, obj, explicit, evaluating=True)
        epoch = int(obj.get("epoch", 0) or 0) if isinstance(obj, dict) else 0
        cfg = cfg.with_flags(epochs=epoch or cfg.epochs)  # val.py trains nothing: args.json records the model's epochs
        model, reports, cfg = build_model_from_config(cfg, preloaded={cfg.model.weights: obj})
        loader = build_loader(cfg, "test")
        run = RunFolder(cfg, suffix="_val", enabled=is_main_process())  # after everything that can refuse input
        for line in notes + [report.summary() for report in reports]:
            run.log(line)
        model.to(device).eval()
        run.log(
            f"evaluating {cfg.model.weights} ({cfg.mode}, {cfg.model.encoder} at {cfg.model.image_size} px) on "
            f"{len(loader.dataset)} test samples of {cfg.data.dataset}"
        )
        with torch.no_grad():
            rows = evaluate(model, loader, cfg, epoch, device)
        run.write_metrics(rows)
        if is_main_process():
            save_epoch_figures(run, model, loader, cfg, device, epoch)
        run.log(f"test split ({cfg.mode}, follow {cfg.loop.val_follow}), per round:\n" + format_table(rows))
        noc = {k: v for k, v in rows[-1].items() if k.startswith(("NoC", "NoF"))}
        if noc:
            run.log("  ".join(f"{k} {v:.3f}" for k, v in noc.items()))
        run.close()
        return rows
    finally:
        cleanup_distributed()


if __name__ == "__main__":
    run_cli(main)
