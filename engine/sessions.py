"""The session protocol (docs/evaluation.md#the-session-protocol): a user annotates a series of images following one
rater, and a model with a session memory (`-memory style`) carries what it learnt of that rater from one image to
the next.

The split's images are grouped into sessions of `-session_length` N images: within each group of images whose
raters keep their identity (the whole split for synthetic data; a patient, case or nodule elsewhere: the dataset's
`session_key`), shuffled with a fixed seed and cut into consecutive runs of N (a group's last session may be
shorter). The plan depends on the images and N alone, so every model and seed meets the same sessions and paired
comparisons pair the same positions. Each session is followed through by each of its raters in turn; an image at
position p is evaluated with the validation protocol of docs/evaluation.md#validation-protocol and the memory of the
session's images before it:

    model   the mean style vector of the last `-memory_window` images, each read from the image and the final
            prediction (after the protocol's last click) the user ended with there
    oracle  the same from the followed rater's own masks (an upper bound: what a perfect memory would hold)
    none    no memory: the memory reset at every image (the per-image protocol, reported by position)

A model without memory (or a rule) is evaluated the same way: its numbers do not depend on the position.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from engine.config import RunConfig
from engine.distributed import gather_objects, world_size
from engine.loops import Evaluation, follow_matrix, metric_rows, progress, with_embedding
from engine.optim import autocast_context
from engine.run_folder import RunFolder, format_table
from interaction import validation
from interaction.registry import MODES
from models import AESPAModel
from multirater_metrics import MetricAccumulator
from pipeline.batch import prepare_batch
from pipeline.embedding_cache import EmbeddingCache

PLAN_SEED = 0  # the session plan is the same for every run on the same images
DEFAULT_LENGTH = 8  # -session_length for a model with a session memory


def session_length(cfg: RunConfig) -> int:
    """-session_length, or its default: 8 for a model with a session memory, 1 (the per-image protocol) else."""
    return cfg.loop.session_length or (DEFAULT_LENGTH if cfg.model.memory != "none" else 1)


def session_keys(dataset) -> list[str]:
    """Per image of `dataset` (an engine.build.Indexed or a dataset), the key of the images whose rater k is the
    same person ('' for all: raters keep their identity across the dataset)."""
    base = getattr(dataset, "dataset", dataset)
    key = getattr(base, "session_key", None)
    return [key(i) if key is not None else "" for i in range(len(base))]


def plan_sessions(keys: list[str], length: int, seed: int = PLAN_SEED) -> list[list[int]]:
    """Indices grouped into sessions of `length`: per key (sorted), its indices in a seeded random order, cut into
    consecutive runs of `length` (the last one of a key may be shorter)."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, key in enumerate(keys):
        groups[key].append(i)
    generator = torch.Generator().manual_seed(seed)
    sessions = []
    for key in sorted(groups):
        members = groups[key]
        order = [members[i] for i in torch.randperm(len(members), generator=generator).tolist()]
        sessions += [order[i : i + length] for i in range(0, len(order), length)]
    return sessions


class SessionMemories:
    """What each (session, user) has left so far: its images' style vectors, newest last. User k follows rater k,
    or from position `switch_at` on (1-based; 0: never) rater k + 1 (modulo the raters): the memory of a user who
    switched holds the old rater's style first."""

    def __init__(self, window: int, switch_at: int = 0) -> None:
        self.window, self.switch_at = window, switch_at
        self.styles: dict[tuple[int, int], list[torch.Tensor]] = defaultdict(list)

    def user(self, rater: int, position: int, n_raters: int) -> int:
        """The user who follows `rater` at the 1-based `position`."""
        switched = self.switch_at > 0 and position >= self.switch_at
        return (rater - 1) % n_raters if switched else rater

    def for_batch(
        self, sessions: list[int], n_raters: int, dim: int, device, position: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """BxRxD memories of the users following each rater at `position` (the mean of their last `window` style
        vectors) and BxR counts of the images they hold."""
        memory = torch.zeros(len(sessions), n_raters, dim, device=device)
        count = torch.zeros(len(sessions), n_raters, dtype=torch.long, device=device)
        for b, s in enumerate(sessions):
            for k in range(n_raters):
                recent = self.styles.get((s, self.user(k, position, n_raters)), [])[-self.window :]
                if recent:
                    memory[b, k] = torch.stack(recent).mean(0)
                    count[b, k] = len(recent)
        return memory, count

    def add(self, sessions: list[int], raters: list[int], styles: torch.Tensor, position: int, n_raters: int) -> None:
        """The style vectors of the images the users following `raters` (at `position`) ended with."""
        for s, k, style in zip(sessions, raters, styles):
            self.styles[(s, self.user(k, position, n_raters))].append(style)


@torch.no_grad()
def evaluate_sessions(
    model: AESPAModel | None,
    loader: DataLoader,
    cfg: RunConfig,
    epoch: int,
    device: torch.device,
    split: str = "test",
    cache: EmbeddingCache | None = None,
    noc: bool = True,
) -> Evaluation:
    """The session protocol over `loader`'s dataset -> metrics.jsonl rows per (position, round), marked with
    `protocol: session`, `session_length` and `position` (1-based); per_image.csv rows with the position and the
    session; the following matrix of each position. Sessions are shared out across ranks."""
    if model is not None:
        model.eval()
    mode, loop, length = MODES[cfg.mode], cfg.loop, session_length(cfg)
    source = loop.session_memory if model is not None and model.memory is not None else "none"
    plan = plan_sessions(session_keys(loader.dataset), length)
    rank, world = (torch.distributed.get_rank(), world_size()) if world_size() > 1 else (0, 1)
    mine = [(sid, images) for sid, images in enumerate(plan) if sid % world == rank]
    memories = SessionMemories(loop.memory_window, loop.session_switch)
    validate = mode.validate_batch or validation.validate_batch
    per_position, per_image, n_raters = [], [], 0
    with autocast_context(device, cfg.amp):
        for position in range(length):
            items = [(sid, images[position]) for sid, images in mine if len(images) > position]
            session_of = {index: sid for sid, index in items}
            acc, counts = MetricAccumulator(), MetricAccumulator()
            subset = Subset(loader.dataset, [index for _, index in items])
            batches = DataLoader(subset, batch_size=loader.batch_size, num_workers=loader.num_workers)
            for data in progress(batches, f"epoch {epoch} {split} sessions, image {position + 1}"):
                batch = with_embedding(prepare_batch(data, device, seed=cfg.seed), cache)
                if batch is None:
                    continue
                sessions = [session_of[int(k)] for k in batch.keys]
                n_raters = max(n_raters, batch.raters.shape[1])
                if source != "none":
                    batch.memory, batch.memory_count = memories.for_batch(
                        sessions, batch.raters.shape[1], model.memory.dim, device, position + 1
                    )
                result = validate(model, batch, cfg, mode, noc=noc)
                for t, values in enumerate(result.rounds, start=1):
                    acc.update(values, round=t)
                counts.update(result.counts)
                rows_session = [sessions[i] for i in result.user.rows.tolist()]
                tags = {"epoch": epoch, "split": split, "position": position + 1}
                # per_image rows come round by round, each round's rows in the user's row order
                per_image += [
                    {**tags, **row, "session": rows_session[i % len(rows_session)]}
                    for i, row in enumerate(result.per_image)
                ]
                if source != "none" and result.user.rater is not None:
                    rows = result.user.rows
                    raters = result.user.rater
                    ended = (result.final > 0.5).float() if source == "model" else batch.raters[rows, raters]
                    styles = model.memory.styles(batch.images[rows], ended).float()
                    memories.add(rows_session, raters.tolist(), styles, position + 1, batch.raters.shape[1])
            per_position.append((acc.all_reduce(device), counts.all_reduce(device)))
    rows, matrices = [], []
    for position, (totals, counts) in enumerate(per_position, start=1):
        extra = {k: float(v) for k, v in counts.compute().items()}
        tags = {"protocol": "session", "session_length": length, "position": position}
        if loop.session_switch:
            tags["session_switch"] = loop.session_switch
        rows += [{**row, **tags} for row in metric_rows(totals, extra, epoch, split, mode, cfg)]
        has_matrix = any(k.startswith(validation.MATRIX_PREFIX) for v in totals.compute().values() for k in v)
        if has_matrix:
            matrices.append({"position": position, **follow_matrix(totals, epoch, split, mode, cfg, n_raters)})
    matrix = {"session_length": length, "memory": source, "positions": matrices} if matrices else None
    return Evaluation(rows, gather_objects(per_image), matrix, protocol="session")


def session_table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per position of a session evaluation's rows: Dice_follow at 0 clicks and after the last round,
    Follow_accuracy at both, NoC@0.85/0.90 (the console summary train.py and val.py print)."""
    by_position: dict[int, dict[int, dict]] = defaultdict(dict)
    for row in rows:
        by_position[row["position"]][row["round"]] = row
    out = []
    for position in sorted(by_position):
        rounds = by_position[position]
        first, last = rounds[min(rounds)], rounds[max(rounds)]
        line = {"position": position, "clicks": f"{first['clicks']} / {last['clicks']}"}
        for key in ("Dice_follow", "Follow_accuracy"):
            line[key] = f"{first.get(key, float('nan')):.4f} / {last.get(key, float('nan')):.4f}"
        for key in ("NoC@0.85", "NoC@0.90"):
            if key in last:
                line[key] = f"{last[key]:.2f}"
        out.append(line)
    return out


def log_sessions(run: RunFolder, rows: list[dict], split: str, cfg: RunConfig) -> None:
    """The session protocol's summary by position in the log (grep "sessions")."""
    table = session_table(rows)
    memory = cfg.loop.session_memory if cfg.model.memory != "none" else "none"
    run.log(
        f"{split} split, sessions of {session_length(cfg)} images (memory: {memory}), first prediction / last round, "
        "by position:\n" + format_table(table, columns=list(table[0]))
    )
