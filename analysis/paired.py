"""Paired comparison of two configurations on the same images: `python tables.py -compare A B`.

A and B are each a run folder or a folder of run folders of ONE configuration (runs that differ only in the
training seed `-seed` and the data seed `-data_seed`). Every run folder holds `per_image.csv`, one row per
(evaluation, image, followed rater, round); the final test's rows (marked final) are used, else those of the last
epoch that has rows of `-split`.

Pairing. A row is keyed by (data seed, image, followed rater, round): images generated with different data seeds
are different images even when their names agree, so they are never paired with each other. Within one data seed,
a side's runs (its training seeds) are averaged per key first; the runs of one data seed must hold the same keys.
A and B must then hold the same keys at the chosen rounds: rows present on one side only are refused (one line
saying how many), because a paired difference over partly different images, raters or rounds is not one.
Rows whose value is NaN on either side are left out with a note saying how many.

Statistics, per round: the mean over pairs of A - B, and a 95 % percentile bootstrap interval that resamples
IMAGES ((data seed, image) clusters) with replacement, so an image's followed-rater rows move together; a
resample's statistic is the same pair-weighted mean. The generator is seeded (`BOOTSTRAP_SEED`) once per round,
so an interval does not depend on which other rounds were asked for.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from analysis.run_files import is_final, read_per_image_rows
from analysis.runs import (
    DEFAULT_ROUNDS,
    Run,
    config_flags,
    find_run_folders,
    note,
    read_json_object,
    warn_if_incomplete,
)
from conf.metrics import current_name
from utils import InputError, natural_key

BOOTSTRAP_SEED = 0
N_BOOT = 2000  # bootstrap resamples (-bootstrap)
LEVEL = 0.95
MIN_BOOTSTRAP = 100
KEY_COLUMNS = ("epoch", "split", "round", "clicks", "image", "followed")  # required in per_image.csv
NOT_METRICS = {*KEY_COLUMNS, "mode", "empty_followed"}
EMPTY_CHOICES = ("all", "nonempty", "empty")  # which pairs, by whether the followed rater's mask is empty
CHUNK = 4_000_000  # resample-index entries held at once (memory bound for many images)

Key = tuple[int, str, int, int]  # (data seed, image, followed rater slot, round)


@dataclass
class Cell:
    """One (image, followed, round) of a side: the metric (mean over training seeds) and its context."""

    value: float
    clicks: int
    empty: int | None  # empty_followed (None when the file has no such column)


@dataclass
class Side:
    """One configuration: its run folders and the cells of all of them, averaged over training seeds."""

    path: Path
    runs: list[Path]
    seeds: list[str]  # distinct training seeds
    data_seeds: list[int]
    epochs: list[int]
    cells: dict[Key, Cell]
    datasets: list[str] = field(default_factory=list)

    @property
    def n_rounds(self) -> int:
        return max(k[3] for k in self.cells)


@dataclass
class RoundResult:
    round: int
    clicks: int
    mean_a: float
    mean_b: float
    diff: float  # mean over pairs of A - B
    low: float  # percentile bootstrap interval of `diff`
    high: float
    images: int  # (data seed, image) clusters
    pairs: int


@dataclass
class Comparison:
    a: Side
    b: Side
    metric: str
    split: str
    n_boot: int
    empty: str
    results: list[RoundResult] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------
# Statistics


def cluster_bootstrap(
    diffs: np.ndarray, clusters: np.ndarray, n_boot: int, seed: int = BOOTSTRAP_SEED, level: float = LEVEL
) -> tuple[float, float, float]:
    """Mean of `diffs` (P) and a percentile bootstrap interval resampling whole clusters.

    diffs: P paired differences; clusters: P cluster labels (any hashable dtype numpy can sort). A resample draws
    K of the K clusters with replacement and takes the mean over all pairs of the drawn clusters (a cluster drawn
    twice counts twice). Returns (mean, low, high) with low/high the (1 - level)/2 and (1 + level)/2 quantiles.
    """
    if diffs.shape != clusters.shape or diffs.ndim != 1 or diffs.size == 0:
        raise ValueError(f"cluster_bootstrap: diffs and clusters must be equal, non-empty 1-D ({diffs.shape})")
    _, codes = np.unique(clusters, return_inverse=True)
    sums = np.bincount(codes, weights=diffs)  # K: per-cluster sum of differences
    sizes = np.bincount(codes).astype(float)  # K: pairs per cluster
    k = sums.size
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    step = max(1, CHUNK // k)
    for start in range(0, n_boot, step):
        idx = rng.integers(0, k, size=(min(step, n_boot - start), k))  # resamples x K cluster draws
        means[start : start + idx.shape[0]] = sums[idx].sum(1) / sizes[idx].sum(1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(diffs.mean()), float(low), float(high)


# ------------------------------------------------------------------------------------------------
# Reading per_image.csv


def parse_int(text: str | None, column: str, path: Path, line: int) -> int:
    try:
        return int(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):  # None: the line has fewer fields than the header
        raise InputError(f"{path} line {line}: {column} '{text}' is not an integer") from None


def parse_float(text: str | None, column: str, path: Path, line: int) -> float:
    """A value; an empty cell is NaN (an undefined metric), left out of the comparison with a note."""
    if text is not None and not text.strip():
        return math.nan
    try:
        return float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InputError(f"{path} line {line}: {column} '{text}' is not a number") from None


def in_protocol(row: dict[str, str], positions: tuple[int, ...] | None) -> bool:
    """Whether a per_image.csv row belongs to the protocol asked for: the per-image protocol's (`positions` None: no
    position), or the session protocol's at one of `positions` (docs/evaluation.md#the-session-protocol)."""
    position = row.get("position") or ""
    if positions is None:
        return position == ""
    return position != "" and position.isdigit() and int(position) in positions


def read_per_image(
    folder: Path, split: str, metric: str, positions: tuple[int, ...] | None = None
) -> tuple[int, dict[tuple[str, int, int], Cell]]:
    """folder/per_image.csv's `split` rows of one protocol (`in_protocol`) of the final test (rows marked final),
    else of the last epoch that has such rows -> (epoch, {(image, followed, round): Cell}) (in a session plan an
    image has one position). A key that appears twice among them, a row cut short (a kill while writing) or a row
    with the wrong number of fields is an InputError naming the file and line."""
    path = folder / "per_image.csv"
    if not path.is_file():
        raise InputError(f"{folder}: no per_image.csv (a run folder of an evaluation that writes per-image values)")
    header, numbered, notes = read_per_image_rows(path)
    if notes:  # a last line cut short: a kill while writing
        raise InputError(f"{path} line {len(numbered) + 2}: cut short (a kill while writing?)")
    numbered = [(n, row) for n, _, row in numbered]
    missing = [c for c in KEY_COLUMNS if c not in header]
    if missing:
        raise InputError(f"{path}: header lacks {', '.join(missing)} (it has: {', '.join(header)})")
    column = next((c for c in header if c == metric or current_name(c) == metric), None)  # older runs' names
    if column is None or metric in NOT_METRICS:
        known = [c for c in header if c not in NOT_METRICS]
        raise InputError(f"-metric {metric}: not a metric column of {path} (it has: {', '.join(known)})")
    rows = [(n, r) for n, r in numbered if r.get("split") == split and in_protocol(r, positions)]
    rows = [(n, r) for n, r in rows if is_final(r)] or rows
    if not rows:
        where = "" if positions is None else f" of the session protocol at positions {list(positions)}"
        raise InputError(f"{path}: no {split} rows{where}")
    epochs = [parse_int(r["epoch"], "epoch", path, n) for n, r in rows]
    last = max(epochs)
    cells: dict[tuple[str, int, int], Cell] = {}
    for (n, r), epoch in zip(rows, epochs):
        if epoch != last:
            continue
        key = (r["image"], parse_int(r["followed"], "followed", path, n), parse_int(r["round"], "round", path, n))
        if key in cells:
            raise InputError(f"{path} line {n}: image {key[0]}, rater {key[1]}, round {key[2]} appears twice")
        empty = parse_int(r["empty_followed"], "empty_followed", path, n) if r.get("empty_followed") else None
        clicks = parse_int(r["clicks"], "clicks", path, n)
        cells[key] = Cell(parse_float(r[column], column, path, n), clicks, empty)
    return last, cells


def one_configuration(folder: Path, runs: list[Run]) -> None:
    """Refuse a side whose runs differ in more than seeds, data seeds and where they ran (tables.IGNORED_FLAGS)."""
    flags = [config_flags(r) for r in runs]
    keys = {json.dumps(f, sort_keys=True, default=str) for f in flags}
    if len(keys) > 1:
        names = sorted({k for f in flags for k in f})
        differ = [k for k in names if len({json.dumps(f.get(k), default=str) for f in flags}) > 1]
        raise InputError(
            f"{folder}: holds runs of {len(keys)} configurations (they differ in {', '.join(differ)}); "
            "give one configuration's run folders"
        )


def average_runs(
    folder: Path, per_run: list[tuple[Path, int, dict[tuple[str, int, int], Cell]]], same_target: bool = True
) -> dict[Key, Cell]:
    """Runs (path, data seed, cells) -> cells keyed with the data seed, averaged over the runs of each data seed.

    same_target: the runs must agree on each cell's clicks and empty_followed (the same pair); False where the
    target may differ by run (SPA's own protocol draws it, `followed` -1) and only a within-run difference is
    wanted (`gain`): a cell whose runs disagree on empty_followed gets None there."""
    by_seed: dict[int, list[tuple[Path, dict]]] = {}
    for path, data_seed, cells in per_run:
        by_seed.setdefault(data_seed, []).append((path, cells))
    out: dict[Key, Cell] = {}
    for data_seed, group in sorted(by_seed.items()):
        first_path, first = group[0]
        for path, cells in group[1:]:
            if cells.keys() != first.keys():
                raise InputError(
                    f"{folder}: runs {first_path} and {path} (data_seed {data_seed}) hold different "
                    f"(image, followed, round) rows ({len(first)} vs {len(cells)}, {len(first.keys() ^ cells.keys())} "
                    "not in both)"
                )
        for key, cell in first.items():
            clicks_differ = any(c[key].clicks != cell.clicks for _, c in group)
            empty_differs = any(c[key].empty != cell.empty for _, c in group)
            if clicks_differ or (empty_differs and same_target):
                raise InputError(
                    f"{folder}: runs of data_seed {data_seed} disagree on the clicks or empty_followed "
                    f"of image {key[0]}, followed {key[1]}, round {key[2]}"
                )
            value = float(np.mean([c[key].value for _, c in group]))
            out[(data_seed, *key)] = Cell(value, cell.clicks, None if empty_differs else cell.empty)
    return out


def load_side(
    path: str, split: str, metric: str, same_target: bool = True, positions: tuple[int, ...] | None = None
) -> Side:
    """A configuration's run folders -> their per-image cells averaged over training seeds, per data seed
    (`same_target`: see `average_runs`; `positions`: see `in_protocol`)."""
    folder = Path(path)
    found = [f for f, _ in find_run_folders([path])]
    runs = [Run(f, read_json_object(f / "args.json"), 0, {}) for f in found]
    one_configuration(folder, runs)
    per_run, epochs = [], []
    for run in runs:
        epoch, cells = read_per_image(run.path, split, metric, positions)
        warn_if_incomplete(run.path, split, epoch)
        data_seed = run.args.get("data_seed", 0)  # runs from before -data_seed used the fixed data seed 0
        if not isinstance(data_seed, int):
            raise InputError(f"{run.path / 'args.json'}: data_seed must be an integer, got {data_seed!r}")
        per_run.append((run.path, data_seed, cells))
        epochs.append(epoch)
    if len(set(epochs)) > 1:
        listed = ", ".join(f"{r.path}: {e}" for r, e in zip(runs, epochs))
        note(f"{folder}: runs evaluated at different epochs ({listed})")
    seeds = sorted({str(r.args.get("seed")) for r in runs}, key=natural_key)
    data_seeds = sorted({d for _, d, _ in per_run})
    datasets = sorted({str(r.args.get("dataset")) for r in runs})
    cells = average_runs(folder, per_run, same_target)
    return Side(folder, [r.path for r in runs], seeds, data_seeds, epochs, cells, datasets)


# ------------------------------------------------------------------------------------------------
# Pairing


def resolve_rounds(text: str | None, a: Side, b: Side) -> list[int]:
    """'1,3,last' or 'all' -> sorted rounds; `last` is the last round both sides have. None: the default rounds
    (DEFAULT_ROUNDS), those beyond `last` dropped; an explicit round missing on a side is an error."""
    explicit = text is not None
    text = DEFAULT_ROUNDS if text is None else text
    last = min(a.n_rounds, b.n_rounds)
    rounds: set[int] = set()
    for token in filter(None, (t.strip() for t in text.split(","))):
        if token == "last":
            rounds.add(last)
        elif token == "all":
            rounds.update(range(1, last + 1))
        elif token.isdigit() and int(token) >= 1:
            rounds.add(int(token))
        else:
            raise InputError(f"-rounds: expected 1-based round numbers, 'last' or 'all', got '{token}'")
    if not explicit:
        rounds = {r for r in rounds if r <= last}
    if not rounds:
        raise InputError("-rounds: no round given")
    for side in (a, b):
        have = {k[3] for k in side.cells}
        for r in sorted(rounds - have):
            raise InputError(f"-rounds {r}: not in {side.path} (its per_image.csv has rounds {sorted(have)})")
    return sorted(rounds)


def describe(key: Key) -> str:
    return f"data_seed {key[0]}, image {key[1]}, followed {key[2]}, round {key[3]}"


def paired_keys(a: Side, b: Side, rounds: list[int], empty: str) -> list[Key]:
    """The keys both sides hold at `rounds`, filtered by `empty`; refuses keys held by one side only."""
    ka = {k for k in a.cells if k[3] in rounds}
    kb = {k for k in b.cells if k[3] in rounds}
    common = ka & kb
    if not common:
        fa, fb = sorted({k[2] for k in ka}), sorted({k[2] for k in kb})
        raise InputError(
            f"{a.path} and {b.path}: no (data_seed, image, followed, round) in common at rounds {rounds} "
            f"(data seeds {a.data_seeds} vs {b.data_seeds}, followed {fa} vs {fb}, "
            f"{len({k[:2] for k in ka} & {k[:2] for k in kb})} images in common; datasets {a.datasets} vs "
            f"{b.datasets})"
        )
    if ka != kb:
        first = min(ka ^ kb, key=lambda k: (k[0], natural_key(k[1]), k[2], k[3]))
        raise InputError(
            f"{a.path} and {b.path}: {len(ka - kb)} (data_seed, image, followed, round) rows only in A and "
            f"{len(kb - ka)} only in B, {len(common)} in both (first: {describe(first)}); "
            "a paired comparison needs the same images, raters and rounds on both sides"
        )
    keys = sorted(common, key=lambda k: (k[3], k[0], natural_key(k[1]), k[2]))
    for key in keys:
        ca, cb = a.cells[key], b.cells[key]
        if ca.clicks != cb.clicks:
            raise InputError(
                f"round {key[3]}: {a.path} has {ca.clicks} clicks and {b.path} {cb.clicks} "
                f"({describe(key)}); compare rounds with equal click counts"
            )
        if ca.empty != cb.empty:
            raise InputError(
                f"{describe(key)}: empty_followed is {ca.empty} in {a.path} and {cb.empty} in {b.path} "
                "(not the same data?)"
            )
    if empty != "all":
        if any(a.cells[k].empty is None for k in keys):
            raise InputError(f"-empty {empty}: per_image.csv has no empty_followed column")
        keys = [k for k in keys if a.cells[k].empty == (1 if empty == "empty" else 0)]
        if not keys:
            raise InputError(f"-empty {empty}: no such pairs at rounds {rounds}")
    return keys


def compare(
    path_a: str,
    path_b: str,
    metric: str,
    split: str,
    rounds_text: str | None,
    n_boot: int,
    empty: str = "all",
    positions: tuple[int, ...] | None = None,
) -> Comparison:
    """Per round: the mean paired difference A - B with its cluster-bootstrap interval (see the module docstring)."""
    if n_boot < MIN_BOOTSTRAP:
        raise InputError(f"-bootstrap: at least {MIN_BOOTSTRAP} resamples, got {n_boot}")
    if empty not in EMPTY_CHOICES:
        raise InputError(f"-empty: one of {', '.join(EMPTY_CHOICES)}, got '{empty}'")
    a = load_side(path_a, split, metric, positions=positions)
    b = load_side(path_b, split, metric, positions=positions)
    if {p.resolve() for p in a.runs} & {p.resolve() for p in b.runs}:
        raise InputError(f"{path_a} and {path_b}: A and B share run folders: a paired difference of a run with itself")
    rounds = resolve_rounds(rounds_text, a, b)
    keys = paired_keys(a, b, rounds, empty)
    result = Comparison(a, b, metric, split, n_boot, empty)
    dropped = 0
    for t in rounds:
        ks = [k for k in keys if k[3] == t and math.isfinite(a.cells[k].value) and math.isfinite(b.cells[k].value)]
        dropped += sum(k[3] == t for k in keys) - len(ks)
        if not ks:
            note(f"round {t}: no pair with finite {metric} on both sides; left out")
            continue
        va = np.array([a.cells[k].value for k in ks])  # P
        vb = np.array([b.cells[k].value for k in ks])  # P
        clusters = np.array([f"{k[0]}/{k[1]}" for k in ks])  # P: (data seed, image)
        diff, low, high = cluster_bootstrap(va - vb, clusters, n_boot)
        images = len(set(clusters.tolist()))
        result.results.append(
            RoundResult(t, a.cells[ks[0]].clicks, float(va.mean()), float(vb.mean()), diff, low, high, images, len(ks))
        )
    if dropped:
        note(f"{dropped} pairs with a non-finite {metric} on either side left out")
    if not result.results:
        raise InputError(f"-metric {metric}: no pair with finite values on both sides")
    return result


def gain(
    path: str,
    metric: str,
    split: str,
    rounds_text: str | None,
    n_boot: int,
    empty: str = "all",
    positions: tuple[int, ...] | None = None,
) -> RoundResult:
    """Does interaction help? The mean paired difference of a configuration's metric between its last and first
    rounds (`rounds_text` "FIRST,LAST", default the first and the last), per (data seed, image, followed rater),
    with the same cluster-bootstrap interval over images as `compare`. A difference within one run needs no
    agreement between runs on the target: SPA's own protocol draws it per run (the mean of the runs' differences
    is the difference of their means, so cells are averaged first as in `compare`)."""
    if n_boot < MIN_BOOTSTRAP:
        raise InputError(f"-bootstrap: at least {MIN_BOOTSTRAP} resamples, got {n_boot}")
    side = load_side(path, split, metric, same_target=False, positions=positions)
    if rounds_text is None and side.n_rounds < 2:
        raise InputError(
            f"-gain {path}: its {split} rows have one round only (no click after the first prediction): no gain to "
            "measure"
        )
    tokens = [t.strip() for t in (rounds_text or f"1,{side.n_rounds}").split(",") if t.strip()]
    if len(tokens) != 2 or not all(t.isdigit() for t in tokens) or int(tokens[0]) >= int(tokens[1]):
        raise InputError(f"-rounds {rounds_text}: with -gain, two rounds FIRST,LAST (FIRST < LAST), e.g. 1,6")
    first, last = map(int, tokens)
    keys = [k for k in side.cells if k[3] == last and (*k[:3], first) in side.cells]
    if empty != "all":
        mixed = [k for k in keys if side.cells[k].empty is None]
        if mixed:
            raise InputError(
                f"-empty {empty}: {path} does not say whether the target is empty for {len(mixed)} (image, followed) "
                "pairs (no empty_followed column, or runs whose target differs by run disagree); use -empty all"
            )
        keys = [k for k in keys if side.cells[k].empty == (1 if empty == "empty" else 0)]
    if not keys:
        raise InputError(f"-rounds {first},{last}: {path} has no (image, followed rater) at both rounds")
    keys.sort(key=lambda k: (k[0], natural_key(k[1]), k[2]))
    v_last = np.array([side.cells[k].value for k in keys])
    v_first = np.array([side.cells[(*k[:3], first)].value for k in keys])
    clusters = np.array([f"{k[0]}/{k[1]}" for k in keys])
    diff, low, high = cluster_bootstrap(v_last - v_first, clusters, n_boot)
    clicks = side.cells[keys[0]].clicks
    return RoundResult(
        last,
        clicks,
        float(v_last.mean()),
        float(v_first.mean()),
        diff,
        low,
        high,
        len(set(clusters.tolist())),
        len(keys),
    )


def run_gain(
    path: str,
    metric: str,
    split: str,
    rounds: str | None,
    n_boot: int,
    empty: str,
    out: Path,
    digits: int,
    positions: tuple[int, ...] | None = None,
) -> RoundResult:
    """`tables.py -gain A`: write gain.md into `out`, print it."""
    r = gain(path, metric, split, rounds, n_boot, empty, positions)
    first = rounds.split(",")[0] if rounds else "1"
    text = (
        f"{path}: {metric} round {r.round} ({r.clicks} clicks) - round {first}: {r.diff:+.{digits}f} "
        f"[{r.low:+.{digits}f}, {r.high:+.{digits}f}] (95 % cluster bootstrap over {r.images} images, {r.pairs} "
        f"pairs; {r.mean_a:.{digits}f} vs {r.mean_b:.{digits}f})"
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "gain.md").write_text(text + "\n")
    print(text)
    return r


# ------------------------------------------------------------------------------------------------
# Writers


def side_line(name: str, side: Side) -> str:
    epochs = ",".join(map(str, sorted(set(side.epochs))))
    return (
        f"{name} = `{side.path}`: {len(side.runs)} runs (training seeds {','.join(side.seeds)}; "
        f"data seeds {','.join(map(str, side.data_seeds))}), epoch {epochs}"
    )


def to_markdown(c: Comparison, digits: int = 3) -> str:
    signed = lambda x: f"{x:+.{digits}f}"
    empty = {
        "all": "",
        "nonempty": ", pairs with a non-empty followed mask",
        "empty": ", pairs with an empty followed mask",
    }
    lines = [
        f"Paired difference A - B of {c.metric}, {c.split} split{empty[c.empty]}: mean over (image, followed rater) "
        f"pairs; 95 % percentile bootstrap interval resampling images ({c.n_boot} resamples, seed {BOOTSTRAP_SEED}); "
        "training seeds averaged per image first, images of different data seeds kept apart.",
        "",
        f"- {side_line('A', c.a)}",
        f"- {side_line('B', c.b)}",
        "",
        "| round | clicks | A | B | A - B | 95 % interval | images | pairs |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in c.results:
        lines.append(
            f"| {r.round} | {r.clicks} | {r.mean_a:.{digits}f} | {r.mean_b:.{digits}f} | {signed(r.diff)} | "
            f"[{signed(r.low)}, {signed(r.high)}] | {r.images} | {r.pairs} |"
        )
    return "\n".join(lines)


def write_csv(c: Comparison, path: Path) -> None:
    header = ["metric", "split", "empty", "round", "clicks", "mean_A", "mean_B", "diff", "low", "high"]
    header += ["images", "pairs", "bootstrap", "A", "B"]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for r in c.results:
            values = [repr(v) for v in (r.mean_a, r.mean_b, r.diff, r.low, r.high)]
            writer.writerow(
                [
                    c.metric,
                    c.split,
                    c.empty,
                    r.round,
                    r.clicks,
                    *values,
                    r.images,
                    r.pairs,
                    c.n_boot,
                    str(c.a.path),
                    str(c.b.path),
                ]
            )


def run_compare(
    a: str,
    b: str,
    metric: str,
    split: str,
    rounds: str | None,
    n_boot: int,
    empty: str,
    out: Path,
    digits: int,
    positions: tuple[int, ...] | None = None,
) -> Comparison:
    """`tables.py -compare A B`: compute, write compare.md and compare.csv into `out`, print the Markdown."""
    c = compare(a, b, metric, split, rounds, n_boot, empty, positions)
    out.mkdir(parents=True, exist_ok=True)
    markdown = to_markdown(c, digits)
    (out / "compare.md").write_text(markdown + "\n")
    write_csv(c, out / "compare.csv")
    print(markdown)
    print(f"{len(c.results)} rounds -> {out}/compare.md, compare.csv", file=sys.stderr)
    return c
