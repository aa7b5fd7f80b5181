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

from builders import adopt_checkpoint_settings, build_loader, build_model_from_config, maybe_compile
from cfg import given_flags, parse_config
from conf import global_settings as settings
from distributed import broadcast_state, check_in_sync, cleanup_distributed, is_main_process, setup_distributed
from engine import evaluate, save_epoch_figures, train_one_epoch
from optim_step import Stepper, build_optimizer
from run_config import RunConfig
from runlog import RunFolder, format_table
from training_state import load_training_checkpoint, restore_rng, save_checkpoint
from utils import InputError, run_cli, seed_everything

BEST_METRIC = "Dice_follow"  # at the last round of the test split: does the model follow the user?


def last_round(rows: list[dict], key: str) -> float:
    return float(rows[-1][key])


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(argv, prog="train.py")
    device, rank = setup_distributed(cfg.device)
    try:
        return train(cfg, device, rank, argv)
    finally:
        cleanup_distributed()


def train(cfg: RunConfig, device: torch.device, rank: int, argv: list[str] | None = None) -> dict:
    resume = load_training_checkpoint(cfg.resume) if cfg.resume else None
    run_root, notes = None, []
    if resume is not None:  # the run continues with the checkpoint's architecture and name
        cfg, notes = adopt_checkpoint_settings(cfg, resume, given_flags(argv))
        # the checkpoint holds every weight
        cfg = cfg.with_flags(exp_name=resume["args"].get("exp_name", cfg.exp_name), sam_ckpt=None)
        run_root = Path(cfg.resume).resolve().parent.parent
        if not (run_root / "args.json").is_file():
            raise InputError(f"-resume {cfg.resume}: not inside a run folder (expected <run>/Model/<checkpoint>)")
    seed_everything(cfg.seed)  # the same initial weights on every rank
    # Everything that can refuse bad input comes before the run folder, so a failed start leaves none.
    model, reports, cfg = build_model_from_config(cfg)
    loader_generator = torch.Generator()
    train_loader, test_loader = build_loader(cfg, "train", loader_generator), build_loader(cfg, "test")
    run = RunFolder(cfg, root=run_root, enabled=is_main_process())
    run.log(f"{'resuming' if resume else 'starting'} run {run.root} on {device} (rank {rank})")
    for line in notes + [report.summary() for report in reports]:
        run.log(line)
    model.to(device)
    maybe_compile(model, cfg)
    optimizer = build_optimizer(model, cfg.lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, settings.STEP_SIZE, settings.GAMMA)
    stepper = Stepper(optimizer, device, cfg.amp)
    if cfg.amp != "off" and stepper.amp == "off":
        run.log(f"-amp {cfg.amp}: mixed precision runs on CUDA only; this {device.type} run uses float32")
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + rank)  # clicks, raters, latent samples
    seed_everything(cfg.seed + rank)  # from here on each rank draws its own numbers
    start_epoch, best_metric, best_epoch = 1, None, None
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        stepper.load_state_dict(resume.get("amp", {}))
        restore_rng(resume["rng"], {"train": generator})
        start_epoch, best_metric, best_epoch = resume["epoch"] + 1, resume["best_metric"], resume["best_epoch"]
    broadcast_state(model)
    n_params = sum(p.numel() for p in model.parameters())
    run.log(
        f"model {cfg.model.encoder} at {cfg.model.image_size} px, {n_params / 1e6:.2f} M parameters, mode {cfg.mode}"
    )
    run.log(
        f"data {cfg.data.dataset} at {cfg.data.data_path}: {len(train_loader.dataset)} train, "
        f"{len(test_loader.dataset)} test samples"
    )
    test_rows: list[dict] = []
    for epoch in range(start_epoch, cfg.epochs + 1):
        loader_generator.manual_seed(cfg.seed * 100_003 + epoch)  # the data order of an epoch depends on it alone
        if hasattr(train_loader.sampler, "set_epoch"):
            train_loader.sampler.set_epoch(epoch)
        start = time.time()
        train_rows = train_one_epoch(model, train_loader, stepper, cfg, epoch, generator, device)
        scheduler.step()
        check_in_sync(model)
        run.write_metrics(train_rows)
        run.log(
            f"epoch {epoch}/{cfg.epochs} train loss {last_round(train_rows, 'loss'):.4f} "
            f"Dice_follow {last_round(train_rows, 'Dice_follow'):.4f} lr {scheduler.get_last_lr()[0]:.2e} "
            f"({time.time() - start:.0f} s)"
        )
        if epoch % cfg.val_freq == 0 or epoch == cfg.epochs:
            start = time.time()
            test_rows = evaluate(model, test_loader, cfg, epoch, device)
            run.write_metrics(test_rows)
            score = last_round(test_rows, BEST_METRIC)
            run.log(
                f"epoch {epoch} test {BEST_METRIC} {score:.4f} Gain_over_consensus "
                f"{last_round(test_rows, 'Gain_over_consensus'):.4f} ({time.time() - start:.0f} s)"
            )
            if is_main_process():
                save_epoch_figures(run, model, test_loader, cfg, device, epoch)
            if best_metric is None or score > best_metric:
                best_metric, best_epoch = score, epoch
                if is_main_process():
                    save_checkpoint(
                        run.model_dir / "checkpoint_best.pth",
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
    if test_rows:
        run.log(f"test split, epoch {test_rows[-1]['epoch']} ({cfg.mode}), per round:\n" + format_table(test_rows))
    run.log(
        f"best {BEST_METRIC} {best_metric:.4f} at epoch {best_epoch}; run folder {run.root}"
        if best_metric is not None
        else f"run folder {run.root}"
    )
    run.close()
    return {"run_dir": str(run.root), "test": test_rows, "best_metric": best_metric, "best_epoch": best_epoch}


if __name__ == "__main__":
    run_cli(main)
