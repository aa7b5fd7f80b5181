"""Figures a run leaves in `plots/`: per-round metric curves, curves over epochs, a qualitative grid.
Drawing only: the engine (engine.save_epoch_figures) runs the model and passes tensors in."""

from __future__ import annotations

from pathlib import Path

import torch

ROUND_METRICS = ("Dice_follow", "Dice", "Gain_over_consensus", "Dice_personal_mean", "GED", "Dice_soft")


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_round_curves(series: dict[str, list[dict]], path: Path, title: str = "") -> None:
    """One panel per metric, x = clicks, one line per labelled list of per-round rows."""
    plt = pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5))
    for ax, metric in zip(axes.flat, ROUND_METRICS):
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


def plot_epoch_curves(rows: list[dict], path: Path) -> None:
    """Train loss and last-round test Dice_follow / Gain_over_consensus against epochs."""
    plt = pyplot()
    last = {}
    for r in rows:  # keep the last round of every (split, epoch)
        key = (r["split"], r["epoch"])
        if key not in last or r["round"] > last[key]["round"]:
            last[key] = r
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, (split, metric) in zip(axes, [("train", "loss"), ("test", "Dice_follow"), ("test", "Gain_over_consensus")]):
        pts = sorted((e, r[metric]) for (s, e), r in last.items() if s == split and metric in r)
        if pts:
            ax.plot(*zip(*pts), marker="o")
        ax.set_title(f"{split} {metric} (last round)")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
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
