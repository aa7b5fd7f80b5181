"""Passes over a loader: one training epoch and one evaluation, averaged per click round across ranks."""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

import torch
from tqdm import tqdm

import function
import function_aespa
from distributed import is_main_process
from interaction import prepare_batch
from models import AESPAModel
from multirater_metrics import MetricAccumulator
from optim_step import Stepper, autocast_context


def progress(iterable, desc: str):
    """A tqdm bar on the main process; redrawn at most every 30 s when stderr is a file (nohup, batch jobs)."""
    interactive = sys.stderr.isatty()
    return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=interactive, mininterval=0.1 if interactive else 30.0,
                disable=not is_main_process())


def loop_module(args: argparse.Namespace):
    """The mode's loop functions: `function` (SPA) or `function_aespa` (AESPA)."""
    return function if args.mode == "SPA" else function_aespa


def clicks_of_round(mode: str, round_: int) -> int:
    """Clicks the round-th prediction (1-based) used: AESPA predicts once before any click, SPA starts with one."""
    return round_ - 1 if mode == "AESPA" else round_


def metric_rows(acc: MetricAccumulator, extra: dict[str, float], epoch: int, split: str, mode: str) -> list[dict[str, Any]]:
    """The `metrics.jsonl` rows of one pass: one per round, with the per-pass values (NoC) on every row."""
    rows = []
    for round_, values in acc.compute().items():
        row: dict[str, Any] = {"epoch": epoch, "split": split, "mode": mode, "round": round_,
                               "clicks": clicks_of_round(mode, round_)}  # fmt: skip
        row.update({k: float(v) for k, v in sorted(values.items())})
        row.update(extra)
        rows.append(row)
    return rows


def train_one_epoch(model: AESPAModel, loader, stepper: Stepper, args: argparse.Namespace, epoch: int,
                    generator: torch.Generator, device: torch.device) -> list[dict[str, Any]]:  # fmt: skip
    """One epoch of the mode's training loop; returns the per-round rows (train split)."""
    model.train()
    step = loop_module(args).train_batch
    acc = MetricAccumulator()
    bar = progress(loader, f"epoch {epoch} train")
    for i, data in enumerate(bar):
        if args.max_train_batches and i >= args.max_train_batches:
            break
        batch = prepare_batch(data, device, generator=generator, augment=args.augment == "flip")
        if batch is None:
            continue
        rows = step(model, stepper, batch, args)
        for t, row in enumerate(rows, start=1):
            acc.update(row, round=t)
        loss = float(rows[-1]["loss"].mean())  # one device sync per batch
        bar.set_postfix(loss=f"{loss:.4f}", dice_follow=f"{float(rows[-1]['Dice_follow'].mean()):.3f}", refresh=False)
        if not math.isfinite(loss):
            raise FloatingPointError(f"epoch {epoch}: the training loss is not finite ({loss})")
    return metric_rows(acc.all_reduce(device), {}, epoch, "train", args.mode)


@torch.no_grad()
def evaluate(model: AESPAModel, loader, args: argparse.Namespace, epoch: int, device: torch.device) -> list[dict[str, Any]]:
    """SPEC §4.4 validation over a loader; every random draw is keyed per image (seed `-seed`), so the result
    does not depend on the batch size or on how the split is sharded across ranks."""
    model.eval()
    validate = loop_module(args).validate_batch
    acc, noc_acc = MetricAccumulator(), MetricAccumulator()
    bar = progress(loader, f"epoch {epoch} test")
    with autocast_context(device, args.amp):
        for i, data in enumerate(bar):
            if args.max_val_batches and i >= args.max_val_batches:
                break
            batch = prepare_batch(data, device, seed=args.seed)
            if batch is None:
                continue
            rows, noc_values = validate(model, batch, args)
            for t, row in enumerate(rows, start=1):
                acc.update(row, round=t)
            noc_acc.update(noc_values)
            bar.set_postfix(dice_follow=f"{float(rows[-1]['Dice_follow'].mean()):.3f}", refresh=False)
    noc_means = {k: float(v) for k, v in noc_acc.all_reduce(device).compute().items()}
    return metric_rows(acc.all_reduce(device), noc_means, epoch, "test", args.mode)
