"""Passes over a loader: one training epoch and one evaluation (with the inputs of its figures), per click round,
averaged across ranks; and what an evaluation leaves in the run folder (`record_evaluation`, for train.py and
val.py alike). The mode (`-mode`) comes from the registry (interaction/registry.py)."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from engine import figures
from engine.config import RunConfig
from engine.distributed import gather_objects, is_main_process
from engine.optim import Stepper, autocast_context
from engine.run_folder import RunFolder
from interaction import rounds, validation
from interaction.mode import Mode
from interaction.registry import MODES
from models import AESPAModel
from multirater_metrics import MetricAccumulator
from pipeline.batch import Batch, prepare_batch
from pipeline.embedding_cache import EmbeddingCache

FIGURE_IMAGES = 4  # rows of the qualitative grid: the split's first images


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


def with_embedding(batch: Batch | None, cache: EmbeddingCache | None) -> Batch | None:
    """The batch with its frozen encoder's embeddings from the cache (`-freeze_encoder`)."""
    if batch is not None and cache is not None:
        batch.embedding = cache(batch.images)
    return batch


def metric_rows(
    acc: MetricAccumulator, extra: dict[str, float], epoch: int, split: str, mode: Mode, cfg: RunConfig
) -> list[dict[str, Any]]:
    """The `metrics.jsonl` rows of one pass: one per round, with the per-pass values (NoC) on every row. Keys
    without a value (no row had one) and the following matrix's entries are left out."""
    rows = []
    for round_, values in acc.compute().items():
        row: dict[str, Any] = {
            "epoch": epoch,
            "split": split,
            "mode": mode.name,
            "round": round_,
            "clicks": mode.clicks_of_round(round_, cfg.options),
            "box": int(mode.user.has_box(cfg.options)),
        }
        row.update(
            {
                k: float(v)
                for k, v in sorted(values.items())
                if not k.startswith(validation.MATRIX_PREFIX) and math.isfinite(v)
            }
        )
        row.update(extra)
        rows.append(row)
    return rows


def follow_matrix(acc: MetricAccumulator, epoch: int, split: str, mode: Mode, cfg: RunConfig, n_raters: int) -> dict:
    """The following matrix of one pass (validation.py): per round, R x R mean Dice (None where no pair) and counts."""
    means, counts = acc.compute(), acc.compute("count")
    per_round = []
    for round_, values in means.items():
        matrix = [[None] * n_raters for _ in range(n_raters)]
        count = [[0] * n_raters for _ in range(n_raters)]
        for key, value in values.items():
            if key.startswith(validation.MATRIX_PREFIX):
                i, j = map(int, key[len(validation.MATRIX_PREFIX) :].split("/"))
                matrix[i][j], count[i][j] = float(value), int(counts[round_][key])
        clicks = mode.clicks_of_round(round_, cfg.options)
        per_round.append({"round": round_, "clicks": clicks, "matrix": matrix, "counts": count})
    return {"epoch": epoch, "split": split, "raters": [f"rater {k}" for k in range(n_raters)], "rounds": per_round}


def train_one_epoch(
    model: AESPAModel,
    loader,
    stepper: Stepper,
    cfg: RunConfig,
    epoch: int,
    generator: torch.Generator,
    device: torch.device,
    cache: EmbeddingCache | None = None,
) -> list[dict[str, Any]]:
    """One epoch of the mode's training loop; returns the per-round rows (train split)."""
    model.train()
    if cfg.model.frozen:
        model.image_encoder.eval()
    mode = MODES[cfg.mode]
    step = mode.train_batch or rounds.train_batch
    acc = MetricAccumulator()
    bar = progress(loader, f"epoch {epoch} train")
    for i, data in enumerate(bar):
        if cfg.loop.max_train_batches and i >= cfg.loop.max_train_batches:
            break
        batch = prepare_batch(data, device, generator=generator, augment=cfg.data.augment)
        if batch is None:
            continue
        rows = step(model, stepper, with_embedding(batch, cache), cfg, mode)
        for t, row in enumerate(rows, start=1):
            acc.update(row, round=t)
        loss = float(rows[-1]["loss"].mean())  # one device sync per batch
        bar.set_postfix(loss=f"{loss:.4f}", dice_follow=f"{float(rows[-1]['Dice_follow'].mean()):.3f}", refresh=False)
        stepper.check_loss(loss, f"epoch {epoch}, batch {i + 1}")
    return metric_rows(acc.all_reduce(device), {}, epoch, "train", mode, cfg)


@dataclass
class Evaluation:
    """One pass over a split: metrics.jsonl rows, per_image.csv rows, the following matrix (None: no raters
    followed), and the qualitative grid's inputs (the split's first images; None off the main process). `protocol`:
    'image' (every image on its own) or 'session' (engine/sessions.py: rows and matrices by position)."""

    rows: list[dict[str, Any]]
    per_image: list[dict[str, Any]]
    matrix: dict | None
    figure: dict | None = None
    protocol: str = "image"

    def __add__(self, other: Evaluation) -> Evaluation:
        """Both evaluations of one split as one record (the final test of both protocols); the first's matrix and
        figure."""
        return Evaluation(self.rows + other.rows, self.per_image + other.per_image, self.matrix, self.figure)


def per_image_protocol(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of the per-image protocol (those of the session protocol carry a position)."""
    return [r for r in rows if "position" not in r]


@torch.no_grad()
def evaluate(
    model: AESPAModel | None,
    loader,
    cfg: RunConfig,
    epoch: int,
    device: torch.device,
    split: str = "test",
    cache: EmbeddingCache | None = None,
) -> Evaluation:
    """docs/evaluation.md#validation-protocol validation over a loader; every random draw is keyed per image (seed
    `-seed`), so the result does not depend on the batch size or on how the split is sharded across ranks. NoC is
    counted on every split but the validation split, which only chooses the checkpoint (its 20-click interactions cost
    3x the rounds)."""
    if model is not None:
        model.eval()
    mode = MODES[cfg.mode]
    validate = mode.validate_batch or validation.validate_batch
    acc, counts = MetricAccumulator(), MetricAccumulator()
    per_image: list[dict[str, Any]] = []
    n_raters, figure = 0, None
    bar = progress(loader, f"epoch {epoch} {split}")
    with autocast_context(device, cfg.amp):
        for i, data in enumerate(bar):
            if cfg.loop.max_val_batches and i >= cfg.loop.max_val_batches:
                break
            batch = with_embedding(prepare_batch(data, device, seed=cfg.seed), cache)
            if batch is None:
                continue
            if figure is None and is_main_process() and cfg.plots != "none":
                figure = qualitative_inputs(model, batch.take(FIGURE_IMAGES), cfg, mode)
            n_raters = max(n_raters, batch.raters.shape[1])
            result = validate(model, batch, cfg, mode, noc=split != "val")
            for t, values in enumerate(result.rounds, start=1):
                acc.update(values, round=t)
            counts.update(result.counts)
            per_image += [{"epoch": epoch, "split": split, **row} for row in result.per_image]
            bar.set_postfix(dice_follow=f"{float(result.rounds[-1]['Dice_follow'].mean()):.3f}", refresh=False)
    totals = acc.all_reduce(device)
    count_means = {k: float(v) for k, v in counts.all_reduce(device).compute().items()}
    has_matrix = any(k.startswith(validation.MATRIX_PREFIX) for values in totals.compute().values() for k in values)
    matrix = follow_matrix(totals, epoch, split, mode, cfg, n_raters) if has_matrix else None
    rows = metric_rows(totals, count_means, epoch, split, mode, cfg)
    return Evaluation(rows, gather_objects(per_image), matrix, figure)


def qualitative_inputs(model: AESPAModel | None, batch: Batch, cfg: RunConfig, mode: Mode) -> dict[str, Any]:
    """The qualitative grid's inputs for a few images: each image followed through every round (figures only)."""
    followed, preds, clicks = (mode.qualitative or validation.qualitative)(model, batch, cfg, mode)
    return {
        "images": batch.images,
        "raters": batch.raters,
        "valid": batch.valid,
        "followed": followed,
        "preds": preds,
        "points": clicks.points,
        "labels": clicks.labels,
        "clicks_before_first": mode.first_round_clicks(cfg.options),
    }


def record_evaluation(
    run: RunFolder,
    result: Evaluation,
    cfg: RunConfig,
    epoch: int,
    split: str,
    final: bool = False,
    rows: bool = True,
) -> None:
    """What an evaluation leaves in the run folder (train.py and val.py alike): its metrics.jsonl and per_image.csv
    rows (a `final` test's replacing an earlier final test's), its following matrix, and its figures (round
    curves, curves over epochs, the following matrix, the qualitative grid), all from the evaluation in memory."""
    if final:
        run.replace_final_test(result.rows, result.per_image)
    elif rows:  # (rows False: they are written with another evaluation's, e.g. a final test of both protocols)
        run.write_metrics(result.rows)
        run.write_per_image(result.per_image)
    sessions = result.protocol == "session"
    name = f"follow_matrix_{split}{'_sessions' if sessions else ''}_epoch{epoch:03d}"
    if result.matrix is not None:
        run.write_json(f"{name}.json", result.matrix)
    if not run.enabled or cfg.plots == "none":
        return
    figures.plot_epoch_curves(run.history, run.plot_dir / "epochs.png")
    if sessions:
        figures.plot_sessions(result.rows, run.plot_dir / f"sessions_{split}.png", f"{cfg.exp_name}: by position")
        return
    figures.plot_round_curves(
        {f"{split}, epoch {epoch}": per_image_protocol(result.rows)},
        run.plot_dir / f"round_curves_{split}.png",
        f"{cfg.exp_name}: per round",
    )
    if result.matrix is not None:
        figures.plot_follow_matrix(result.matrix, run.plot_dir / f"{name}.png")
    if result.figure is not None:
        figures.qualitative_grid(**result.figure, path=run.plot_dir / f"qualitative_{split}_epoch{epoch:03d}.png")
