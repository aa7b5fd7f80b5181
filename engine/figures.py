"""Figures a run leaves in `plots/`: per-round metric curves, curves over epochs, a qualitative grid.
Drawing only: the engine (engine.loops.record_evaluation) passes the evaluation's rows and tensors in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from conf import metrics
from utils import pyplot

PANELS_PER_ROW = 3


def plot_round_curves(series: dict[str, list[dict]], path: Path, title: str = "") -> None:
    """One panel per metric marked `plot` in conf/metrics.py, x = clicks, one line per labelled list of per-round
    rows."""
    plt = pyplot()
    panels = metrics.names("plot")
    n_rows = max(1, -(-len(panels) // PANELS_PER_ROW))
    fig, axes = plt.subplots(n_rows, PANELS_PER_ROW, figsize=(12, 3.25 * n_rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, metric in zip(axes.flat, panels):
        for label, rows in series.items():
            pts = [(r["clicks"], r[metric]) for r in rows if metric in r]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=label)
        ax.set_title(metric)
        ax.set_xlabel("clicks")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def last_rounds(rows: list[dict]) -> dict[tuple[str, int], dict]:
    """The last round of every (split, epoch): the per-image protocol's row, else (an evaluation of the session
    protocol alone) the mean over positions of their last-round values."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["split"], r["epoch"]), []).append(r)
    last = {}
    for key, group in groups.items():
        plain = [r for r in group if "position" not in r] or group
        final = max(r["round"] for r in plain)
        at_last = [r for r in plain if r["round"] == final]
        names = {k for r in at_last for k, v in r.items() if isinstance(v, float)}
        last[key] = {k: float(np.mean([r[k] for r in at_last if k in r])) for k in names}
    return last


def plot_epoch_curves(rows: list[dict], path: Path) -> None:
    """Train loss, and last-round Dice_follow / Follow_accuracy of every evaluated split (val, test) against epochs."""
    plt = pyplot()
    last = last_rounds(rows)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    panels = [("loss", ("train",)), ("Dice_follow", ("val", "test")), ("Follow_accuracy", ("val", "test"))]
    for ax, (metric, splits) in zip(axes, panels):
        for split in splits:
            pts = sorted((e, r[metric]) for (s, e), r in last.items() if s == split and metric in r)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=split)
        ax.set_title(f"{metric} (last round)")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_sessions(rows: list[dict], path: Path, title: str = "") -> None:
    """The session protocol by position: Dice_follow and Follow_accuracy of the first prediction (no click) and of
    the last round, one point per position of the session."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, metric in zip(axes, ("Dice_follow", "Follow_accuracy")):
        for pick, label in ((min, "first prediction"), (max, "last round")):
            points = {}
            for r in rows:
                if metric in r and "position" in r:
                    best = points.get(r["position"])
                    if best is None or pick(best["round"], r["round"]) == r["round"]:
                        points[r["position"]] = r
            if points:
                xs = sorted(points)
                ax.plot(xs, [points[x][metric] for x in xs], marker="o", label=f"{label}")
        ax.set_title(metric)
        ax.set_xlabel("image of the session")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def qualitative_grid(
    images: torch.Tensor,
    raters: torch.Tensor,
    valid: torch.Tensor,
    followed: torch.Tensor,
    preds: list[torch.Tensor],
    points: torch.Tensor,
    labels: torch.Tensor,
    path: Path,
    clicks_before_first: int = 0,
) -> None:
    """Rows = images; columns = image, each valid rater, the followed mask, the prediction of every round
    (probabilities) with the clicks it used (green: positive, red: negative)."""
    plt = pyplot()
    n, r = images.shape[0], raters.shape[1]
    cols = 2 + r + len(preds)
    fig, axes = plt.subplots(n, cols, figsize=(1.6 * cols, 1.6 * n), squeeze=False)
    for i in range(n):
        panels = [("image", images[i].permute(1, 2, 0), None)]
        panels += [(f"rater {k}" if valid[i, k] else "-", raters[i, k], "gray") for k in range(r)]
        panels += [("followed", followed[i], "gray")]
        panels += [(f"round {t + 1}", p[i], "magma") for t, p in enumerate(preds)]
        for j, (name, img, cmap) in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(img.float().cpu().numpy(), cmap=cmap, vmin=0, vmax=1)
            if j >= 2 + r:  # a prediction: show the clicks it was made with
                used = clicks_before_first + (j - 2 - r)
                for (x, y), lab in zip(points[i, :used].tolist(), labels[i, :used].tolist()):
                    ax.plot(x, y, "+" if lab else "x", color="lime" if lab else "red", ms=6, mew=2)
            ax.set_title(name, fontsize=7)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def follow_matrix_size(n_raters: int, n_rounds: int) -> tuple[float, float, int]:
    """Figure size in inches (width, height) and panels per row of `plot_follow_matrix`: square panels of
    max(2.5, 1.25 + 0.5 R) inches, at most 6 per row, plus 1 inch for the colour bar and 1 for the titles."""
    panel = max(2.5, 1.25 + 0.5 * n_raters)
    cols = min(6, n_rounds)
    rows = -(-n_rounds // cols)  # ceil
    return panel * cols + 1.0, panel * rows + 1.0, cols


def plot_follow_matrix(matrix: dict, path: Path, dpi: int = 100) -> None:
    """Heat-maps of a following matrix (follow_matrix.json), one panel per round, on a shared 0..1 colour scale.

    Panel rows: the prediction made following rater i; columns: the rater j it is scored against (mean Dice).
    Cells carry their value; a cell without pairs (null) is grey and marked "-". The diagonal (scored against the
    rater it followed) is outlined and its values are bold, so a method that follows shows a bright diagonal.
    """
    from matplotlib.patches import Rectangle

    raters, rounds = list(matrix.get("raters") or []), list(matrix.get("rounds") or [])
    r = len(raters)
    if not r or not rounds:
        raise ValueError("plot_follow_matrix: the matrix needs 'raters' and 'rounds'")
    plt = pyplot()
    width, height, cols = follow_matrix_size(r, len(rounds))
    fig = plt.figure(figsize=(width, height), dpi=dpi, layout="constrained")  # the size stays as set
    panels = fig.subplots(-(-len(rounds) // cols), cols, squeeze=False)
    cmap = plt.get_cmap("viridis").with_extremes(bad="0.85")
    image = None
    for k, (ax, entry) in enumerate(zip(panels.flat, rounds)):
        values = np.array([[np.nan if v is None else float(v) for v in row] for row in entry["matrix"]])  # RxR
        if values.shape != (r, r):
            raise ValueError(f"plot_follow_matrix: round {entry.get('round')}: matrix {values.shape}, expected {r}x{r}")
        image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0.0, vmax=1.0)
        for i in range(r):
            for j in range(r):
                v = values[i, j]
                text = "-" if np.isnan(v) else f"{v:.2f}"
                colour = "black" if np.isnan(v) or v > 0.6 else "white"  # viridis is light above ~0.6
                ax.text(
                    j,
                    i,
                    text,
                    ha="center",
                    va="center",
                    fontsize=8,
                    color=colour,
                    fontweight="bold" if i == j else "normal",
                )
            ax.add_patch(Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=2))
        ax.set_xticks(range(r), raters, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(r), raters if k % cols == 0 else [], fontsize=7)  # names on the first column only
        ax.set_xlabel("scored against", fontsize=8)
        if k % cols == 0:
            ax.set_ylabel("followed", fontsize=8)
        ax.set_title(f"round {entry.get('round')} ({entry.get('clicks')} clicks)", fontsize=9)
    for ax in list(panels.flat)[len(rounds) :]:
        ax.axis("off")
    fig.colorbar(image, ax=panels.ravel().tolist(), shrink=0.8, label="mean Dice")
    fig.suptitle(f"following matrix: {matrix.get('split', '')} split, epoch {matrix.get('epoch', '')}", fontsize=10)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
