"""Evaluate a model with the validation protocol of docs/evaluation.md#validation-protocol (each valid rater followed
in turn by default).

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

from cfg import Setup, make_config, run_command
from engine.build import build_loader, build_model_from_config, freeze_and_cache
from engine.distributed import distributed_session, is_main_process
from engine.loops import evaluate, record_evaluation
from engine.run_folder import RunFolder, early_warnings, format_table
from engine.sessions import evaluate_sessions, log_sessions, session_length
from interaction.registry import MODES
from utils import InputError

NEEDS_WEIGHTS = (
    "-weights is required: the checkpoint to evaluate (e.g. logs_new/<run>/Model/checkpoint_best.pth); "
    "-sam_ckpt alone evaluates pretrained weights untrained; -mode consensus / click_editor need neither"
)


def what_is_evaluated(setup: Setup) -> list[str]:
    """Notes saying what is evaluated; refuses a learning mode with neither -weights nor -sam_ckpt."""
    cfg = setup.config
    if cfg.model.weights:
        return []
    if not MODES[cfg.mode].learns:
        return [f"-mode {cfg.mode}: a baseline without a network"]
    if cfg.model.sam_ckpt and "sam_ckpt" in setup.explicit:
        return [f"zero-shot: {cfg.model.sam_ckpt} evaluated untrained (the residual fusion starts as plain SAM)"]
    raise InputError(NEEDS_WEIGHTS)


def prepare(setup: Setup, device: torch.device):
    """Everything that can refuse bad input, before the run folder: the model (none for a baseline), its cache,
    the test loader -> (notes, model, reports, cache, loader)."""
    cfg = setup.config
    notes = setup.notes + what_is_evaluated(setup)
    model, reports, cache = None, [], None
    if MODES[cfg.mode].learns:
        model, reports = build_model_from_config(cfg, setup.files)
        model.to(device).eval()
        cache, cache_notes = freeze_and_cache(model, cfg)
        notes += cache_notes
    return notes, model, reports, cache, build_loader(cfg, "test")


def main(argv: list[str] | None = None) -> list[dict]:
    setup = make_config(argv, "evaluate", prog="val.py")
    cfg, epoch = setup.config, setup.epoch
    with distributed_session(cfg.device) as (device, _):
        with early_warnings() as warnings:
            notes, model, reports, cache, loader = prepare(setup, device)
        run = RunFolder(cfg, suffix="_val", enabled=is_main_process())  # after everything that can refuse input
        for line in warnings + notes + [report.summary() for report in reports]:
            run.log(line)
        what = cfg.model.weights or cfg.model.sam_ckpt or "no weights"
        run.log(
            f"evaluating {what} ({cfg.mode}, {cfg.model.encoder} at {cfg.model.image_size} px) on "
            f"{len(loader.dataset)} test samples of {cfg.data.dataset}"
        )
        result = evaluate(model, loader, cfg, epoch, device, "test", cache)
        sessions = None
        if session_length(cfg) > 1:
            sessions = evaluate_sessions(model, loader, cfg, epoch, device, "test", cache)
        record_evaluation(run, result if sessions is None else result + sessions, cfg, epoch, "test")
        follow = f", follow {cfg.options.val_follow}" if hasattr(cfg.options, "val_follow") else ""
        run.log(f"test split ({cfg.mode}{follow}), per round:\n" + format_table(result.rows))
        counts = {k: v for k, v in result.rows[-1].items() if k.startswith(("NoC", "NoF", "NoI"))}
        if counts:
            run.log("  ".join(f"{k} {v:.3f}" for k, v in counts.items()))
        if sessions is not None:
            record_evaluation(run, sessions, cfg, epoch, "test", rows=False)  # its matrix and figure
            log_sessions(run, sessions.rows, "test", cfg)
        run.close()
    return result.rows


if __name__ == "__main__":
    run_command(main)
