"""Passes over a loader: one training epoch, one evaluation, and the figures of an evaluation; per click round,
averaged across ranks. The mode (`-mode`) comes from the registry (modes.py)."""

from __future__ import annotations

import math
import sys
from typing import Any

import torch
from tqdm import tqdm

import interaction
import plots
from batch import prepare_batch
from distributed import is_main_process
from models import AESPAModel
from modes import Mode, get_mode
from multirater_metrics import MetricAccumulator
from optim_step import Stepper, autocast_context
from run_config import RunConfig
from runlog import RunFolder, read_metrics


def progress(iterable, desc: str):
    """A tqdm bar on the main process; redrawn at most every 30 s when stderr is a file (nohup, batch jobs)."""
    interactive = sys.stderr.isatty()
    return tqdm(
        iterable,
        desc=desc,
        leave=False,
        dynamic_ncols=interactive,
        mininterval=0.1 if interactive else 30.0,
        disable=not is_main_process(),
    )


def entry(mode: Mode, name: str):
    """The mode's own entry point `name` (train_batch, validate_batch, qualitative), else the engine's."""
    return getattr(mode, name) or getattr(interaction, name)


def metric_rows(
    acc: MetricAccumulator, extra: dict[str, float], epoch: int, split: str, mode: Mode
) -> list[dict[str, Any]]:
    """The `metrics.jsonl` rows of one pass: one per round, with the per-pass values (NoC) on every row."""
    rows = []
    for round_, values in acc.compute().items():
        row: dict[str, Any] = {
            "epoch": epoch,
            "split": split,
            "mode": mode.name,
            "round": round_,
            "clicks": mode.clicks_of_round(round_),
        }
        row.update({k: float(v) for k, v in sorted(values.items())})
        row.update(extra)
        rows.append(row)
    return rows


def train_one_epoch(
    model: AESPAModel,
    loader,
    stepper: Stepper,
    cfg: RunConfig,
    epoch: int,
    generator: torch.Generator,
    device: torch.device,
) -> list[dict[str, Any]]:
    """One epoch of the mode's training loop; returns the per-round rows (train split)."""
    model.train()
    mode = get_mode(cfg.mode)
    step = entry(mode, "train_batch")
    acc = MetricAccumulator()
    bar = progress(loader, f"epoch {epoch} train")
    for i, data in enumerate(bar):
        if cfg.loop.max_train_batches and i >= cfg.loop.max_train_batches:
            break
        batch = prepare_batch(data, device, generator=generator, augment=cfg.data.augment == "flip")
        if batch is None:
            continue
        rows = step(model, stepper, batch, cfg, mode)
        for t, row in enumerate(rows, start=1):
            acc.update(row, round=t)
        loss = float(rows[-1]["loss"].mean())  # one device sync per batch
        bar.set_postfix(loss=f"{loss:.4f}", dice_follow=f"{float(rows[-1]['Dice_follow'].mean()):.3f}", refresh=False)
        if not math.isfinite(loss):
            raise FloatingPointError(f"epoch {epoch}: the training loss is not finite ({loss})")
    return metric_rows(acc.all_reduce(device), {}, epoch, "train", mode)


@torch.no_grad()
def evaluate(model: AESPAModel, loader, cfg: RunConfig, epoch: int, device: torch.device) -> list[dict[str, Any]]:
    """SPEC §4.4 validation over a loader; every random draw is keyed per image (seed `-seed`), so the result
    does not depend on the batch size or on how the split is sharded across ranks."""
    model.eval()
    mode = get_mode(cfg.mode)
    validate = entry(mode, "validate_batch")
    acc, noc_acc = MetricAccumulator(), MetricAccumulator()
    bar = progress(loader, f"epoch {epoch} test")
    with autocast_context(device, cfg.amp):
        for i, data in enumerate(bar):
            if cfg.loop.max_val_batches and i >= cfg.loop.max_val_batches:
                break
            batch = prepare_batch(data, device, seed=cfg.seed)
            if batch is None:
                continue
            rows, noc_values = validate(model, batch, cfg, mode)
            for t, row in enumerate(rows, start=1):
                acc.update(row, round=t)
            noc_acc.update(noc_values)
            bar.set_postfix(dice_follow=f"{float(rows[-1]['Dice_follow'].mean()):.3f}", refresh=False)
    noc_means = {k: float(v) for k, v in noc_acc.all_reduce(device).compute().items()}
    return metric_rows(acc.all_reduce(device), noc_means, epoch, "test", mode)


@torch.no_grad()
def save_epoch_figures(
    run: RunFolder, model: AESPAModel, loader, cfg: RunConfig, device: torch.device, epoch: int, n_images: int = 4
) -> None:
    """Round curves of this epoch's test rows, curves over epochs, and a qualitative grid of the first test images."""
    rows = read_metrics(run.metrics_file)
    test = [r for r in rows if r["split"] == "test" and r["epoch"] == epoch]
    plots.plot_round_curves(
        {f"epoch {epoch}": test}, run.plot_dir / "round_curves.png", f"{cfg.exp_name}: test, per round"
    )
    plots.plot_epoch_curves(rows, run.plot_dir / "epochs.png")
    batch = prepare_batch(next(iter(loader)), device, seed=cfg.seed)
    if batch is None:
        return
    batch = batch.take(n_images)
    model.eval()
    mode = get_mode(cfg.mode)
    followed, preds, clicks = entry(mode, "qualitative")(model, batch, cfg, mode)
    plots.qualitative_grid(
        batch.images,
        batch.raters,
        batch.valid,
        followed,
        preds,
        clicks.points,
        clicks.labels,
        run.plot_dir / f"qualitative_epoch{epoch:03d}.png",
        mode.first_round_clicks,
    )
