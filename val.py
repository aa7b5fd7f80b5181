"""Evaluate a model with the validation protocol of SPEC §4.4 (each valid rater followed in turn by default).

    python val.py -weights logs_new/<run>/Model/checkpoint_best.pth
    python val.py -sam_ckpt ./checkpoint/medsam_vit_b.pth -weights ./checkpoint/checkpoint_aespa_lidc.pth \
        -image_size 128 -b 1 -dataset LIDC -data_path ./data/LIDC -mode AESPA
    python val.py -mode click_editor                          # a baseline: no network, no weights
    python val.py -sam_ckpt lite_medsam -encoder lite_medsam   # zero-shot: pretrained weights, untrained

Architecture flags come from a project checkpoint's saved args; the original's published checkpoint runs
under `-compat reference`. Results go to a run folder `<log_dir>/<exp_name>_val_<time>/` and stdout.
"""

from __future__ import annotations

import torch

from cfg import given_flags, parse_config
from engine.build import (
    adopt_checkpoint_settings,
    build_loader,
    build_model_from_config,
    freeze_and_cache,
    resolved_image_size,
)
from engine.config import RunConfig
from engine.distributed import cleanup_distributed, is_main_process, setup_distributed
from engine.loops import evaluate, save_epoch_figures
from engine.run_folder import RunFolder, early_warnings, format_table
from interaction.mode import get_mode
from models import read_checkpoint
from utils import InputError, run_cli

NEEDS_WEIGHTS = (
    "-weights is required: the checkpoint to evaluate (e.g. logs_new/<run>/Model/checkpoint_best.pth); "
    "-sam_ckpt alone evaluates pretrained weights untrained; -mode consensus / click_editor need neither"
)


def what_to_evaluate(cfg: RunConfig, explicit: set[str]) -> tuple[RunConfig, int, dict, list[str]]:
    """-> (the config with the checkpoint's settings, the evaluated model's epochs, preloaded files, notes)."""
    if cfg.model.weights:
        obj = read_checkpoint(cfg.model.weights)
        cfg, notes = adopt_checkpoint_settings(cfg, obj, explicit, evaluating=True)
        epoch = int(obj.get("epoch", 0) or 0) if isinstance(obj, dict) else 0
        return cfg, epoch, {cfg.model.weights: obj}, notes
    if not get_mode(cfg.mode).learns:
        return cfg, 0, {}, [f"-mode {cfg.mode}: a baseline without a network"]
    if cfg.model.sam_ckpt:
        note = f"zero-shot: {cfg.model.sam_ckpt} evaluated untrained (the residual fusion starts as plain SAM)"
        return cfg, 0, {}, [note]
    raise InputError(NEEDS_WEIGHTS)


def prepare(cfg: RunConfig, explicit: set[str], device: torch.device):
    """Everything that can refuse bad input, before the run folder: the model (none for a baseline), its cache,
    the test loader -> (config, epoch, notes, model, reports, cache, loader)."""
    cfg, epoch, preloaded, notes = what_to_evaluate(cfg, explicit)
    cfg = cfg.with_flags(epochs=epoch or cfg.epochs)  # val.py trains nothing: args.json records the model's epochs
    model, reports, cache = None, [], None
    if get_mode(cfg.mode).learns:
        model, reports, cfg = build_model_from_config(cfg, preloaded=preloaded)
        model.to(device).eval()
        cache, cache_notes = freeze_and_cache(model, cfg)
        notes += cache_notes
    else:
        cfg = cfg.with_flags(image_size=resolved_image_size(cfg))
    return cfg, epoch, notes, model, reports, cache, build_loader(cfg, "test")


def main(argv: list[str] | None = None) -> list[dict]:
    cfg = parse_config(argv, prog="val.py")
    explicit = given_flags(argv)
    device, _ = setup_distributed(cfg.device)
    try:
        with early_warnings() as warnings:
            cfg, epoch, notes, model, reports, cache, loader = prepare(cfg, explicit, device)
        run = RunFolder(cfg, suffix="_val", enabled=is_main_process())  # after everything that can refuse input
        for line in warnings + notes + [report.summary() for report in reports]:
            run.log(line)
        what = cfg.model.weights or cfg.model.sam_ckpt or "no weights"
        run.log(
            f"evaluating {what} ({cfg.mode}, {cfg.model.encoder} at {cfg.model.image_size} px) on "
            f"{len(loader.dataset)} test samples of {cfg.data.dataset}"
        )
        with torch.no_grad():
            result = evaluate(model, loader, cfg, epoch, device, "test", cache)
        run.write_metrics(result.rows)
        run.write_per_image(result.per_image)
        if result.matrix is not None:
            run.write_json(f"follow_matrix_test_epoch{epoch:03d}.json", result.matrix)
        if is_main_process():
            save_epoch_figures(run, model, loader, cfg, device, epoch, "test", result.matrix, cache)
        run.log(f"test split ({cfg.mode}, follow {cfg.loop.val_follow}), per round:\n" + format_table(result.rows))
        counts = {k: v for k, v in result.rows[-1].items() if k.startswith(("NoC", "NoF", "NoI"))}
        if counts:
            run.log("  ".join(f"{k} {v:.3f}" for k, v in counts.items()))
        run.close()
        return result.rows
    finally:
        cleanup_distributed()


if __name__ == "__main__":
    run_cli(main)
