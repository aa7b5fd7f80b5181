"""The one table of the metrics a run writes (metrics.jsonl, per_image.csv): one name per quantity, whether higher
is better, and where it shows — the console table after an evaluation, a panel of the round-curve figure, a
default column of paper tables, per_image.csv (and so paired comparisons). The run folder, the figures,
tables.py and the validation code read it; the values come from multirater_metrics.py and interaction/.

A name ending in "@" is a family (`NoC@0.90`, `Dice_follow@rater2`). `aliases` are names older run folders
used for the same quantity (read by tables.py, never written).

Adding a metric (docs/design.md#extending): compute it where metrics are computed and add one row here. Everything
that shows metrics reads this table when it runs (never a copy made at import), so the row alone decides where the
metric shows. A per_image metric has one value per interaction row (image x followed rater): per round, or, with
per_run, one per evaluation (repeated on every round's row); a mode that does not compute it leaves its cells
empty (NaN).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    doc: str
    higher_is_better: bool = True
    console: bool = False  # a column of the per-round table printed after an evaluation
    plot: bool = False  # a panel of plots/round_curves_<split>.png
    paper: bool = False  # a default column of tables.py
    per_image: bool = False  # written per (image, followed rater, round) to per_image.csv: paired-comparable
    per_run: bool = False  # one value per evaluation (repeated on every round's row), not one per round
    aliases: tuple[str, ...] = ()


METRICS: tuple[Metric, ...] = (
    Metric("loss", "BCE (pos_weight 2) against the round's target", False),
    Metric(
        "Dice_neutral",
        "Dice against the valid raters' majority mask",
        console=True,
        plot=True,
        paper=True,
        per_image=True,
        aliases=("Dice",),
    ),
    Metric("IoU_neutral", "IoU against the majority mask", console=True, aliases=("IoU",)),
    Metric(
        "Dice_follow",
        "Dice against the followed rater (SPA: the preference target)",
        console=True,
        plot=True,
        paper=True,
        per_image=True,
    ),
    Metric("IoU_follow", "IoU against the followed rater"),
    Metric(
        "NSD_follow",
        "normalised surface Dice at 2 mm (pixel spacing of the data) against the followed rater",
        console=True,
        plot=True,
        per_image=True,
    ),
    Metric(
        "Gain_over_consensus",
        "Dice_follow minus the majority mask's Dice against the followed rater",
        console=True,
        plot=True,
        paper=True,
        per_image=True,
    ),
    Metric("Delta_follow_vs_neutral", "Dice_follow minus Dice_neutral"),
    Metric("Follow_accuracy", "share of rows closer to the followed rater than to every other one", console=True),
    Metric("Dice_personal_mean", "mean Dice against every valid rater", console=True, plot=True),
    Metric(
        "GED", "generalised energy distance of the candidate set (1 - IoU)", False, console=True, plot=True, paper=True
    ),
    Metric("Dice_max", "mean over candidates of the best rater's Dice"),
    Metric("Dice_max_reverse", "mean over raters of the best candidate's Dice"),
    Metric("Dice_match", "Hungarian-matched Dice of candidates and raters", console=True, paper=True),
    Metric("Dice_soft", "Dice of the mean maps at thresholds 0.1..0.9", console=True, plot=True, paper=True),
    Metric("Dice_follow_nonempty", "Dice_follow of the rows whose followed mask is not empty"),
    Metric("Dice_follow_empty", "Dice_follow of the rows whose followed mask is empty"),
    Metric("Gain_over_consensus_nonempty", "Gain_over_consensus of the rows whose followed mask is not empty"),
    Metric("Dice_follow@rater", "Dice_follow of the rows following rater slot k"),
    Metric("Dice_selected", "SPA: Dice of the candidate the user selects, against the target"),
    Metric("Selected_minus_follow", "SPA: Dice_selected - Dice_follow (candidates that differ: > 0)", console=True),
    Metric("Sample_spread", "SPA: mean over pixels of the samples' standard deviation of probability", console=True),
    Metric(
        "Empty_click_map", "SPA: share of images whose click map (|selected - others|) is empty", False, console=True
    ),
    Metric("NoC@", "clicks to reach Dice_follow τ (failures count the budget)", False, paper=True, per_run=True),
    # the CVPR 2025 interactive-segmentation challenge's, over the predictions made with 1..5 clicks
    Metric(
        "DSC_AUC",
        "area under Dice_follow over 1..5 clicks (trapezoid, one unit per click: 0..4)",
        console=True,
        paper=True,
        per_image=True,
        per_run=True,
    ),
    Metric(
        "NSD_AUC",
        "area under NSD_follow over 1..5 clicks (trapezoid, one unit per click: 0..4)",
        console=True,
        paper=True,
        per_image=True,
        per_run=True,
    ),
    Metric("DSC_Final", "Dice_follow after 5 clicks", console=True, per_image=True, per_run=True),
    Metric("NSD_Final", "NSD_follow after 5 clicks", console=True, per_image=True, per_run=True),
    Metric("NoF@", "share of rows never reaching τ within the budget", False, per_run=True),
    Metric("NoI@", "SPA's convention: rounds to reach τ within 6, failures count 10", False, per_run=True),
)
PAPER_DEFAULTS = ("NoC@0.90",)  # family members shown by default in paper tables
_index: tuple[tuple[Metric, ...], dict[str, Metric], dict[str, str]] = ((), {}, {})


def _lookup() -> tuple[dict[str, Metric], dict[str, str]]:
    """{name: entry} and {alias: name} of METRICS as it is now (rebuilt when the table is replaced)."""
    global _index
    if _index[0] is not METRICS:
        _index = (METRICS, {m.name: m for m in METRICS}, {a: m.name for m in METRICS for a in m.aliases})
    return _index[1], _index[2]


def metric(name: str) -> Metric | None:
    """The table's entry of a metric name (a family member by its prefix), or None for an unknown name."""
    by_name, aliases = _lookup()
    name = aliases.get(name, name)
    if name in by_name:
        return by_name[name]
    head, at, _ = name.partition("@")
    return by_name.get(head + at) if at else None


def names(where: str) -> list[str]:
    """The plain metric names (not families) marked for `where`: console, plot, paper or per_image."""
    return [m.name for m in METRICS if getattr(m, where) and not m.name.endswith("@")]


def is_per_run(name: str) -> bool:
    entry = metric(name)
    return entry is not None and entry.per_run


def current_name(name: str) -> str:
    """The name a metric has today (an older run folder's alias mapped)."""
    return _lookup()[1].get(name, name)
