"""Time training steps and validation batches for any configuration of the train/val flags; print one JSON.

    python bench.py                                     # the default configuration (LiteMedSAM frozen, 64 px)
    python bench.py -encoder vit_b -image_size 128 -b 4 -mode AESPA -noc_clicks 0
    python bench.py -encoder vit_b -image_size 128 -b 64 -amp bf16        # on a GPU

Each measurement is the median of `-repeats` runs after `-warmup` runs, on the first batch of the
training split. `overhead_share` is the share of a training step spent outside the network's forward and
backward passes (clicks, metrics, mixture updates, k-means, optimiser steps); forward time is taken by
hooks on the model's parts, backward time inside the optimisation steps.
"""

from __future__ import annotations

import json
import resource
import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager

import torch

from cfg import make_config, run_command
from engine.build import build_loader, build_model_from_config, freeze_and_cache, maybe_compile
from engine.checkpoints import seed_everything
from engine.distributed import choose_device
from engine.loops import with_embedding
from engine.optim import Stepper, autocast_context, build_optimizer
from interaction import rounds, validation
from interaction.registry import MODES
from pipeline.batch import prepare_batch
from utils import InputError, OneLineParser

NETWORK_PARTS = ("image_encoder", "prompt_encoder", "mask_decoder", "fcomb", "mean_var_head", "weight_head")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class NetworkClock:
    """Seconds spent in the forward passes of the model's parts and in backward passes."""

    def __init__(self, model: torch.nn.Module, device: torch.device):
        self.device, self.seconds, self._start = device, 0.0, 0.0
        for name in NETWORK_PARTS:
            part = getattr(model, name)
            part.register_forward_pre_hook(lambda *_: self._begin())
            part.register_forward_hook(lambda *_: self._end())

    def _begin(self) -> None:
        sync(self.device)
        self._start = time.perf_counter()

    def _end(self) -> None:
        sync(self.device)
        self.seconds += time.perf_counter() - self._start

    @contextmanager
    def timing(self):
        self._begin()
        yield
        self._end()


class TimedStepper(Stepper):
    """A Stepper whose backward passes count as network time."""

    clock: NetworkClock

    def backward(self, loss: torch.Tensor) -> None:
        with self.clock.timing():
            super().backward(loss)


def median_seconds(fn: Callable[[], None], device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Wall times of `repeats` runs of fn after `warmup` untimed ones (CUDA synchronised)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux: the process's peak


def bench_flags(parser: OneLineParser) -> list[str]:
    group = parser.add_argument_group("bench")
    group.add_argument("-warmup", type=int, default=1, help="untimed runs before measuring")
    group.add_argument("-repeats", type=int, default=3, help="timed runs; the median is reported")
    return ["warmup", "repeats"]


def main(argv: list[str] | None = None) -> dict:
    setup = make_config(argv, "bench", prog="bench.py", extra_flags=bench_flags)
    cfg, args = setup.config, setup.extra
    if args.repeats < 1 or args.warmup < 0:
        raise InputError(f"-repeats must be >= 1 and -warmup >= 0, got {args.repeats} and {args.warmup}")
    device = choose_device(cfg.device)
    seed_everything(cfg.seed)
    model, _ = build_model_from_config(cfg, setup.files)
    model.to(device)
    cache, _ = freeze_and_cache(model, cfg)  # -freeze_encoder: embeddings from the cache (computed in the warm-up)
    maybe_compile(model, cfg)
    stepper = TimedStepper(build_optimizer(model, cfg.lr), device, cfg.amp)
    stepper.clock = clock = NetworkClock(model, device)
    mode = MODES[cfg.mode]
    generator = torch.Generator().manual_seed(cfg.seed)
    data = next(iter(build_loader(cfg, "train", generator)))

    def train_step() -> None:
        model.train()
        if cfg.model.frozen:
            model.image_encoder.eval()
        batch = with_embedding(prepare_batch(data, device, generator=generator), cache)
        (mode.train_batch or rounds.train_batch)(model, stepper, batch, cfg, mode)

    def val_batch(reuse: bool) -> Callable[[], None]:
        run_cfg = cfg.with_flags(no_embedding_reuse=not reuse)

        def run() -> None:
            model.eval()
            with torch.no_grad(), autocast_context(device, cfg.amp):
                batch = with_embedding(prepare_batch(data, device, seed=cfg.seed), cache)
                (mode.validate_batch or validation.validate_batch)(model, batch, run_cfg, mode)

        return run

    median_seconds(train_step, device, args.warmup, 0)  # warm up, then time with a fresh clock
    clock.seconds = 0.0
    train_times = median_seconds(train_step, device, 0, args.repeats)
    network_share = clock.seconds / sum(train_times)
    val_reuse = median_seconds(val_batch(True), device, args.warmup, args.repeats)
    val_no_reuse = median_seconds(val_batch(False), device, args.warmup, args.repeats)
    train_s, reuse_s, no_reuse_s = (statistics.median(t) for t in (train_times, val_reuse, val_no_reuse))
    batch = len(data["name"])
    result = {
        "mode": cfg.mode,
        "encoder": cfg.model.encoder,
        "freeze_encoder": cfg.model.frozen,
        "image_size": cfg.model.image_size,
        "batch": batch,
        "clicks": cfg.loop.clicks,
        "noc_clicks": cfg.loop.noc_clicks,
        "num_samples": mode.user.latent_samples(cfg.options),
        "device": str(device),
        "amp": stepper.amp,
        "threads": torch.get_num_threads(),
        "train_step_s": round(train_s, 4),
        "images_per_s": round(batch / train_s, 3),
        "overhead_share": round(1.0 - network_share, 4),
        "val_batch_s": round(reuse_s, 4),
        "val_batch_s_no_reuse": round(no_reuse_s, 4),
        "reuse_speedup": round(no_reuse_s / reuse_s, 2),
        "peak_mem_mb": round(peak_memory_mb(device), 1),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    run_command(main)
