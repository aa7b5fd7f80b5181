"""Train AESPA or SPA.  `python train.py` trains AESPA on the built-in synthetic data from LiteMedSAM's bundled
weights, its image encoder frozen (embeddings cached), at 64 px.

    python train.py -exp_name LIDC_AESPA -sam_ckpt ./checkpoint/medsam_vit_b.pth -image_size 128 -b 64 \
        -dataset LIDC -data_path ./data/LIDC -mode AESPA
    torchrun --nproc_per_node 2 train.py ...        # several GPUs (or CPU processes with gloo)
    python train.py -resume logs_new/<run>/Model/checkpoint_last.pth

Read top to bottom: set up (model, data, run folder, optimiser), then per epoch train, validate (the validation
split chooses the best checkpoint), save; at the end the test split, once, with the best checkpoint.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from analysis.run_files import SUMMARY
from cfg import Setup, make_config, run_command
from conf import global_settings as settings
from engine.build import build_loader, build_model_from_config, freeze_and_cache, has_val_split, maybe_compile
from engine.checkpoints import load_training_checkpoint, restore_rng, save_checkpoint, seed_everything
from engine.config import RunConfig
from engine.distributed import broadcast_state, check_in_sync, distributed_session, is_main_process
from engine.loops import evaluate, record_evaluation, train_one_epoch
from engine.optim import Diverged, Stepper, build_optimizer
from engine.run_folder import BEST_CHECKPOINT, LAST_CHECKPOINT, RunFolder, early_warnings, format_table
from engine.sessions import evaluate_sessions, log_sessions, session_length
from utils import InputError, copy_atomically

BEST_METRIC = "Dice_follow"  # at the last round of the validation split: does the model follow the user?
COLLAPSED_SPREAD = 1e-3  # Sample_spread (mean std of the samples' probabilities) below this: a collapsed latent


def main(argv: list[str] | None = None) -> dict:
    setup = make_config(argv, "train", prog="train.py")
    with distributed_session(setup.config.device) as (device, rank):
        return train(setup, device, rank)


def train(setup: Setup, device: torch.device, rank: int) -> dict:
    """Train (or resume) the run `setup` describes on `device` (rank `rank` of a torchrun job)."""
    cfg = setup.config
    seed_everything(cfg.seed)  # the same initial weights on every rank
    with early_warnings() as warnings:  # everything that can refuse bad input comes before the run folder
        model, reports = build_model_from_config(cfg, setup.files)
        data = Data.build(cfg)
    run = open_run_folder(cfg, setup, warnings + [r.summary() for r in reports], device, rank)
    try:  # the run folder (its lock, its log) is closed however the run ends
        model.to(device)
        cache = set_up_cache(run, model, cfg)
        maybe_compile(model, cfg)
        state = TrainingState.start(model, cfg, device, rank, setup.resume)
        log_model_and_data(run, model, cfg, data, state)

        for epoch in range(state.first_epoch, cfg.epochs + 1):
            data.start_epoch(cfg, epoch)
            start = time.time()
            try:
                train_rows = train_one_epoch(
                    model, data.train, state.stepper, cfg, epoch, state.generator, device, cache
                )
            except Diverged as err:  # the run ends in one line that says what its folder keeps
                raise run.stopped(err, epoch) from None
            state.scheduler.step()
            check_in_sync(model)
            run.write_metrics(train_rows)
            log_training(run, cfg, epoch, train_rows, state, time.time() - start)
            warn_if_samples_collapsed(run, epoch, train_rows)
            improved = validate(run, model, data, cfg, epoch, device, cache, state)
            save(run, model, cfg, epoch, state, improved)

        test_rows = final_test(run, model, data, cfg, device, state, cache)
        if cache is not None:
            run.log(cache.summary())
    finally:
        run.close()
    return {
        "run_dir": str(run.root),
        "test": test_rows,
        "best_metric": state.best_metric,
        "best_epoch": state.best_epoch,
    }


# --- set up -------------------------------------------------------------------------------------------------


@dataclass
class Data:
    """The run's loaders (no validation loader with -val_fraction 0) and the generator of the training order."""

    train: torch.utils.data.DataLoader
    val: torch.utils.data.DataLoader | None
    test: torch.utils.data.DataLoader
    order: torch.Generator

    @classmethod
    def build(cls, cfg: RunConfig) -> Data:
        order = torch.Generator()
        val = build_loader(cfg, "val") if has_val_split(cfg) else None
        return cls(build_loader(cfg, "train", order), val, build_loader(cfg, "test"), order)

    def start_epoch(self, cfg: RunConfig, epoch: int) -> None:
        """The data order of an epoch depends on (seed, epoch) alone: a resumed run sees what a straight one saw."""
        self.order.manual_seed(cfg.seed * 100_003 + epoch)
        if hasattr(self.train.sampler, "set_epoch"):
            self.train.sampler.set_epoch(epoch)


def open_run_folder(cfg: RunConfig, setup: Setup, notes: list[str], device: torch.device, rank: int) -> RunFolder:
    """A new run folder, or the resumed run's (cleaned up to its checkpoint's epoch); the set-up notes logged."""
    resume = setup.resume
    root = Path(cfg.resume).resolve().parent.parent if resume is not None else None
    run = RunFolder(cfg, root=root, enabled=is_main_process())
    run.log(f"{'resuming' if resume else 'starting'} run {run.root} on {device} (rank {rank})")
    notes = notes + setup.notes + run.clean_up(resume["epoch"] if resume is not None else 0)
    if resume is not None and is_main_process():
        notes += restore_best_checkpoint(run, resume)
    if resume is not None:
        changes = "".join(f"; -{f} {old} -> {new}" for f, (old, new) in setup.changed.items())
        notes.append(f"resumed after epoch {resume['epoch']} with the run's flags{changes}")
        run.record_resume(resume["epoch"], setup.changed)
    for line in notes:
        run.log(line)
    return run


def restore_best_checkpoint(run: RunFolder, resume: dict) -> list[str]:
    """checkpoint_best.pth must hold the epoch the last checkpoint names as best. When that epoch is the last one,
    the last checkpoint holds its weights: a best file that a kill left missing or older is restored from it. Any
    other mismatch is an InputError naming both files (the best weights are gone)."""
    best, last = run.model_dir / BEST_CHECKPOINT, run.model_dir / LAST_CHECKPOINT
    want = resume["best_epoch"]
    held = load_training_checkpoint(best)["epoch"] if best.is_file() else None
    if want is None or held == want:
        return []
    if want == resume["epoch"]:
        copy_atomically(last, best)
        return [f"{best}: restored from {last} (epoch {want}; a kill had left {held or 'no file'})"]
    raise InputError(
        f"{best}: holds epoch {held}, but {last} names epoch {want} as the best; the best weights are lost"
    )


def set_up_cache(run: RunFolder, model, cfg: RunConfig):
    cache, notes = freeze_and_cache(model, cfg)
    for line in notes:
        run.log(line)
    return cache


@dataclass
class TrainingState:
    """What the epochs change and a checkpoint carries: optimiser, scheduler, the generator of clicks, raters and
    latent samples, and the best validation score so far (with a copy of its weights)."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    stepper: Stepper
    generator: torch.Generator
    first_epoch: int = 1
    best_metric: float | None = None
    best_epoch: int | None = None
    best_state: dict | None = None

    @classmethod
    def start(cls, model, cfg: RunConfig, device: torch.device, rank: int, resume: dict | None) -> TrainingState:
        optimizer = build_optimizer(model, cfg.lr)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, settings.STEP_SIZE, settings.GAMMA)
        state = cls(optimizer, scheduler, Stepper(optimizer, device, cfg.amp), torch.Generator())
        state.generator.manual_seed(cfg.seed * 1000 + rank)  # clicks, raters, latent samples
        seed_everything(cfg.seed + rank)  # from here on each rank draws its own numbers
        if resume is not None:
            model.load_state_dict(resume["model"])
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
            state.stepper.load_state_dict(resume.get("amp", {}))
            restore_rng(resume["rng"], {"train": state.generator})
            state.first_epoch = resume["epoch"] + 1
            state.best_metric, state.best_epoch = resume["best_metric"], resume["best_epoch"]
        broadcast_state(model)
        return state


def log_model_and_data(run: RunFolder, model, cfg: RunConfig, data: Data, state: TrainingState) -> None:
    n_params = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    branch = model.pixel_branch
    with_branch = "" if branch is None else f", pixel branch {sum(p.numel() for p in branch.parameters()) / 1e3:.0f} k"
    run.log(
        f"model {cfg.model.encoder} at {cfg.model.image_size} px, {n_params / 1e6:.2f} M parameters "
        f"({trained / 1e6:.2f} M trained{with_branch}), mode {cfg.mode}"
    )
    if cfg.amp != state.stepper.amp:
        run.log(
            f"-amp {cfg.amp}: not available on this {cfg.device} device (bf16 needs CUDA or a CPU with bf16 units, "
            "fp16 CUDA); this run uses float32"
        )
    val_size = len(data.val.dataset) if data.val is not None else 0
    run.log(
        f"data {cfg.data.dataset} at {cfg.data.data_path}: {len(data.train.dataset)} train, {val_size} val, "
        f"{len(data.test.dataset)} test samples"
    )
    if data.val is None:
        run.log("no validation split (-val_fraction 0): the last epoch's model is the one tested")


# --- one epoch ------------------------------------------------------------------------------------------------


def last_round(rows: list[dict], key: str) -> float:
    return float(rows[-1][key])


def log_training(run: RunFolder, cfg: RunConfig, epoch: int, rows: list[dict], state: TrainingState, seconds: float):
    run.log(
        f"epoch {epoch}/{cfg.epochs} train loss {last_round(rows, 'loss'):.4f} "
        f"Dice_follow {last_round(rows, 'Dice_follow'):.4f} lr {state.scheduler.get_last_lr()[0]:.2e} "
        f"({seconds:.0f} s)"
    )


def warn_if_samples_collapsed(run: RunFolder, epoch: int, rows: list[dict]) -> None:
    """SPA's candidates need latent samples that differ: say so in the log when they do not (a collapse would
    otherwise pass for a weak model)."""
    spread = rows[-1].get("Sample_spread")
    if spread is not None and spread < COLLAPSED_SPREAD:
        run.warning(
            f"epoch {epoch}: the latent samples do not differ (Sample_spread {spread:.2e} at the last round): "
            "SPA's candidates are one prediction and its clicks carry no information"
        )


def evaluate_split(
    run: RunFolder, model, loader, cfg: RunConfig, epoch: int, device, split: str, cache, final: bool = False
) -> list[dict]:
    """Evaluate a split and record it in the run folder (rows, per-image values, following matrix, figures). The
    final test of a model with a session memory (`-session_length` > 1) runs both protocols, recorded together."""
    start = time.time()
    result = evaluate(model, loader, cfg, epoch, device, split, cache)
    sessions = None
    if final and session_length(cfg) > 1:
        sessions = evaluate_sessions(model, loader, cfg, epoch, device, split, cache)
    record_evaluation(run, result if sessions is None else result + sessions, cfg, epoch, split, final)
    follow = result.rows[-1].get("Follow_accuracy", float("nan"))
    run.log(
        f"epoch {epoch} {split} {BEST_METRIC} {last_round(result.rows, BEST_METRIC):.4f} Follow_accuracy "
        f"{follow:.4f} Gain_over_consensus {last_round(result.rows, 'Gain_over_consensus'):.4f} "
        f"({time.time() - start:.0f} s)"
    )
    if sessions is not None:
        record_evaluation(run, sessions, cfg, epoch, split, rows=False)  # its matrix and figure
        log_sessions(run, sessions.rows, split, cfg)
    return result.rows


def validate_sessions(run: RunFolder, model, loader, cfg: RunConfig, epoch: int, device, cache) -> float:
    """The validation split under the session protocol (a model with a session memory is chosen on what it is for):
    recorded as any evaluation; -> the mean over every (position, image, rater) of the last round's Dice_follow."""
    start = time.time()
    result = evaluate_sessions(model, loader, cfg, epoch, device, "val", cache, noc=False)
    record_evaluation(run, result, cfg, epoch, "val")
    last = max(r["round"] for r in result.per_image)
    scores = [r[BEST_METRIC] for r in result.per_image if r["round"] == last]
    score = sum(scores) / len(scores)
    run.log(
        f"epoch {epoch} val sessions {BEST_METRIC} {score:.4f} (last round, all positions; {time.time() - start:.0f} s)"
    )
    return score


def validate(
    run: RunFolder, model, data: Data, cfg: RunConfig, epoch: int, device, cache, state: TrainingState
) -> bool:
    """Every -val_freq epochs and after the last: the validation split (never the test split) chooses the best
    checkpoint; -test_every_val also tests. -> whether this epoch is the new best."""
    improved = False
    if epoch % cfg.val_freq == 0 or epoch == cfg.epochs:
        if data.val is not None:
            if cfg.model.memory != "none" and session_length(cfg) > 1:  # chosen on what the model is for
                score = validate_sessions(run, model, data.val, cfg, epoch, device, cache)
            else:
                score = last_round(evaluate_split(run, model, data.val, cfg, epoch, device, "val", cache), BEST_METRIC)
            improved = state.best_metric is None or score > state.best_metric
            if improved:
                state.best_metric, state.best_epoch = score, epoch
        if cfg.loop.test_every_val:
            evaluate_split(run, model, data.test, cfg, epoch, device, "test", cache)
    if data.val is None and epoch == cfg.epochs:
        state.best_epoch, improved = epoch, True
    if improved:  # every rank keeps the best weights (all ranks hold the same ones)
        state.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    return improved


def save(run: RunFolder, model, cfg: RunConfig, epoch: int, state: TrainingState, improved: bool) -> None:
    """checkpoint_last.pth every epoch (and checkpoint_best.pth when it improved), rank 0 only."""
    if not is_main_process():
        return
    save_checkpoint(
        run.model_dir / LAST_CHECKPOINT,
        epoch=epoch,
        cfg=cfg,
        model=model,
        optimizer=state.optimizer,
        scheduler=state.scheduler,
        best_metric=state.best_metric,
        best_epoch=state.best_epoch,
        generators={"train": state.generator},
        extra={"amp": state.stepper.state_dict()},
    )
    if improved:  # after the last checkpoint, which then holds these weights: a kill between leaves it to restore from
        copy_atomically(run.model_dir / LAST_CHECKPOINT, run.model_dir / BEST_CHECKPOINT)


# --- the end ----------------------------------------------------------------------------------------------------


def final_test(run: RunFolder, model, data: Data, cfg: RunConfig, device, state: TrainingState, cache) -> list[dict]:
    """The test split, evaluated once with the best checkpoint (chosen on the validation split), part of the run:
    its rows (marked final) replace an earlier final test's, and summary.json, written last, says it is complete."""
    best_epoch = state.best_epoch
    if best_epoch is None:
        return []
    best = state.best_state
    if best is None:  # a resumed run whose best epoch came before the resume: its file, on every rank
        best = load_training_checkpoint(run.model_dir / BEST_CHECKPOINT)["model"]
    model.load_state_dict(best)
    stale = run.final_test_epoch()
    rows = evaluate_split(run, model, data.test, cfg, best_epoch, device, "test", cache, final=True)
    if stale not in (None, best_epoch) and not cfg.loop.test_every_val:
        run.remove_test_files(stale)  # an earlier final test's matrix and figures, of another epoch
    selected_on = "val" if data.val is not None else "last epoch"
    if data.val is not None and cfg.model.memory != "none" and session_length(cfg) > 1:
        selected_on = "val, session protocol"
    summary = {
        "best_epoch": best_epoch,
        "selected_on": selected_on,
        "session_length": session_length(cfg),
        "test_epoch": best_epoch,
        "metric": BEST_METRIC,
        "trained_epochs": cfg.epochs,
    }
    run.write_json(SUMMARY, summary)
    run.log(f"test split, best checkpoint (epoch {best_epoch}, {cfg.mode}), per round:\n" + format_table(rows))
    if state.best_metric is not None:
        run.log(f"best val {BEST_METRIC} {state.best_metric:.4f} at epoch {best_epoch}; run folder {run.root}")
    else:
        run.log(f"run folder {run.root}")
    return rows


if __name__ == "__main__":
    run_command(main)
