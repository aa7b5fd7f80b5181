"""Train AESPA or SPA.  `python train.py` trains AESPA on the built-in synthetic data with the small encoder.

    python train.py -exp_name LIDC_AESPA -sam_ckpt ./checkpoint/medsam_vit_b.pth -image_size 128 -b 64 \
        -dataset LIDC -data_path ./data/LIDC -mode AESPA
    torchrun --nproc_per_node 2 train.py ...        # several GPUs (or CPU processes with gloo)
    python train.py -resume logs_new/<run>/Model/checkpoint_last.pth
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from cfg import given_flags, parse_config
from conf import global_settings as settings
from engine.build import (
    build_loader,
    build_model_from_config,
    freeze_and_cache,
    has_val_split,
    maybe_compile,
    resume_config,
)
from engine.checkpoints import load_training_checkpoint, restore_rng, save_checkpoint
from engine.config import RunConfig
from engine.distributed import (
    broadcast_state,
    check_in_sync,
    cleanup_distributed,
    is_main_process,
    setup_distributed,
)
from engine.loops import evaluate, save_epoch_figures, train_one_epoch
from engine.optim import Stepper, build_optimizer
from engine.run_folder import RunFolder, early_warnings, format_table
from utils import InputError, copy_atomically, run_cli, seed_everything

BEST_METRIC = "Dice_follow"  # at the last round of the validation split: does the model follow the user?


def last_round(rows: list[dict], key: str) -> float:
    return float(rows[-1][key])


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(argv, prog="train.py")
    resume, changed = None, {}
    if cfg.resume:  # the run continues as it was: its flags, except those allowed to change and named again
        resume = load_training_checkpoint(cfg.resume)
        if not (Path(cfg.resume).resolve().parent.parent / "args.json").is_file():
            raise InputError(f"-resume {cfg.resume}: not inside a run folder (expected <run>/Model/<checkpoint>)")
        cfg, changed = resume_config(cfg, resume, given_flags(argv), cfg.resume)
    device, rank = setup_distributed(cfg.device)
    try:
        return train(cfg, device, rank, resume, changed)
    finally:
        cleanup_distributed()


def evaluate_split(
    run: RunFolder, model, loader, cfg: RunConfig, epoch: int, device: torch.device, split: str, cache
) -> list[dict]:
    """Evaluate a split, write its metrics.jsonl rows, per_image.csv rows, following matrix and figures."""
    start = time.time()
    result = evaluate(model, loader, cfg, epoch, device, split, cache)
    run.write_metrics(result.rows)
    run.write_per_image(result.per_image)
    if result.matrix is not None:
        run.write_json(f"follow_matrix_{split}_epoch{epoch:03d}.json", result.matrix)
    follow = result.rows[-1].get("Follow_accuracy", float("nan"))
    run.log(
        f"epoch {epoch} {split} {BEST_METRIC} {last_round(result.rows, BEST_METRIC):.4f} Follow_accuracy "
        f"{follow:.4f} Gain_over_consensus {last_round(result.rows, 'Gain_over_consensus'):.4f} "
        f"({time.time() - start:.0f} s)"
    )
    if is_main_process():
        save_epoch_figures(run, model, loader, cfg, device, epoch, split, result.matrix, cache)
    return result.rows


def train(
    cfg: RunConfig,
    device: torch.device,
    rank: int,
    resume: dict | None = None,
    changed: dict[str, tuple] | None = None,
) -> dict:
    """Train (or resume) a run; `resume` is the checkpoint it continues from, `changed` the flags named again."""
    run_root = Path(cfg.resume).resolve().parent.parent if resume is not None else None
    seed_everything(cfg.seed)  # the same initial weights on every rank
    # Everything that can refuse bad input comes before the run folder, so a failed start leaves none.
    with early_warnings() as warnings:
        model, reports, cfg = build_model_from_config(cfg)
        loader_generator = torch.Generator()
        train_loader, test_loader = build_loader(cfg, "train", loader_generator), build_loader(cfg, "test")
        val_loader = build_loader(cfg, "val") if has_val_split(cfg) else None
    run = RunFolder(cfg, root=run_root, enabled=is_main_process())
    run.log(f"{'resuming' if resume else 'starting'} run {run.root} on {device} (rank {rank})")
    notes = warnings + run.clean_up(resume["epoch"] if resume is not None else 0)
    if resume is not None:
        notes.append(
            f"resumed after epoch {resume['epoch']} with the run's flags"
            + "".join(f"; -{f} {old} -> {new}" for f, (old, new) in (changed or {}).items())
        )
        run.record_resume(resume["epoch"], changed or {})
    model.to(device)
    cache, cache_notes = freeze_and_cache(model, cfg)
    for line in notes + [report.summary() for report in reports] + cache_notes:
        run.log(line)
    maybe_compile(model, cfg)
    optimizer = build_optimizer(model, cfg.lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, settings.STEP_SIZE, settings.GAMMA)
    stepper = Stepper(optimizer, device, cfg.amp)
    if cfg.amp != "off" and stepper.amp == "off":
        run.log(f"-amp {cfg.amp}: mixed precision runs on CUDA only; this {device.type} run uses float32")
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + rank)  # clicks, raters, latent samples
    seed_everything(cfg.seed + rank)  # from here on each rank draws its own numbers
    start_epoch, best_metric, best_epoch, best_state = 1, None, None, None
    tested: dict[int, list[dict]] = {}  # test rows by epoch (-test_every_val)
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        stepper.load_state_dict(resume.get("amp", {}))
        restore_rng(resume["rng"], {"train": generator})
        start_epoch, best_metric, best_epoch = resume["epoch"] + 1, resume["best_metric"], resume["best_epoch"]
    broadcast_state(model)
    n_params = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    run.log(
        f"model {cfg.model.encoder} at {cfg.model.image_size} px, {n_params / 1e6:.2f} M parameters "
        f"({trained / 1e6:.2f} M trained), mode {cfg.mode}"
    )
    val_size = len(val_loader.dataset) if val_loader is not None else 0
    run.log(
        f"data {cfg.data.dataset} at {cfg.data.data_path}: {len(train_loader.dataset)} train, {val_size} val, "
        f"{len(test_loader.dataset)} test samples"
    )
    if val_loader is None:
        run.log("no validation split (-val_fraction 0): the last epoch's model is the one tested")
    for epoch in range(start_epoch, cfg.epochs + 1):
        loader_generator.manual_seed(cfg.seed * 100_003 + epoch)  # the data order of an epoch depends on it alone
        if hasattr(train_loader.sampler, "set_epoch"):
            train_loader.sampler.set_epoch(epoch)
        start = time.time()
        train_rows = train_one_epoch(model, train_loader, stepper, cfg, epoch, generator, device, cache)
        scheduler.step()
        check_in_sync(model)
        run.write_metrics(train_rows)
        run.log(
            f"epoch {epoch}/{cfg.epochs} train loss {last_round(train_rows, 'loss'):.4f} "
            f"Dice_follow {last_round(train_rows, 'Dice_follow'):.4f} lr {scheduler.get_last_lr()[0]:.2e} "
            f"({time.time() - start:.0f} s)"
        )
        improved = False
        if epoch % cfg.val_freq == 0 or epoch == cfg.epochs:
            if val_loader is not None:  # the best checkpoint is chosen on the validation split, never on test
                score = last_round(
                    evaluate_split(run, model, val_loader, cfg, epoch, device, "val", cache), BEST_METRIC
                )
                improved = best_metric is None or score > best_metric
                if improved:
                    best_metric, best_epoch = score, epoch
            if cfg.loop.test_every_val:
                tested[epoch] = evaluate_split(run, model, test_loader, cfg, epoch, device, "test", cache)
        if val_loader is None and epoch == cfg.epochs:
            best_epoch, improved = epoch, True
        if improved:  # every rank keeps the best weights (all ranks hold the same ones)
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        if is_main_process():
            save_checkpoint(
                run.model_dir / "checkpoint_last.pth",
                epoch=epoch,
                cfg=cfg,
                model=model,
                optimizer=optimizer,
                scheduler=scheduler,
                best_metric=best_metric,
                best_epoch=best_epoch,
                generators={"train": generator},
                extra={"amp": stepper.state_dict()},
            )
            if improved:
                copy_atomically(run.model_dir / "checkpoint_last.pth", run.model_dir / "checkpoint_best.pth")
    test_rows = final_test(run, model, test_loader, cfg, device, best_epoch, best_state, tested, cache)
    run.log(
        f"best val {BEST_METRIC} {best_metric:.4f} at epoch {best_epoch}; run folder {run.root}"
        if best_metric is not None
        else f"run folder {run.root}"
    )
    run.close()
    return {"run_dir": str(run.root), "test": test_rows, "best_metric": best_metric, "best_epoch": best_epoch}


def final_test(
    run: RunFolder,
    model,
    test_loader,
    cfg: RunConfig,
    device: torch.device,
    best_epoch: int | None,
    best_state: dict | None,
    tested: dict[int, list[dict]],
    cache,
) -> list[dict]:
    """The test split, evaluated once with the best checkpoint (chosen on the validation split); reused when
    -test_every_val already evaluated that epoch."""
    if best_epoch is None:
        return []
    if best_epoch in tested:
        rows = tested[best_epoch]
    else:
        if best_state is None:  # a resumed run whose best epoch came before the resume: its file, on every rank
            best_state = load_training_checkpoint(run.model_dir / "checkpoint_best.pth")["model"]
        model.load_state_dict(best_state)
        rows = evaluate_split(run, model, test_loader, cfg, best_epoch, device, "test", cache)
    selected_on = "val" if has_val_split(cfg) else "last epoch"
    summary = {"best_epoch": best_epoch, "selected_on": selected_on, "test_epoch": best_epoch, "metric": BEST_METRIC}
    run.write_json("summary.json", summary)
    run.log(f"test split, best checkpoint (epoch {best_epoch}, {cfg.mode}), per round:\n" + format_table(rows))
    return rows


if __name__ == "__main__":
    run_cli(main)
