"""The extension recipes of docs/design.md#extending, tried the way timm tests its registries: parametrised over every
registered mode and every dataset.

* A metric added as one row of conf/metrics.py, with its value computed where metrics are computed, runs in every
  mode through training, validation, the final test, metrics.jsonl, per_image.csv, the console table and tables.py;
  one computed only for the modes that follow a rater leaves the other modes' cells empty (the SPA KeyError of
  issue 31); one with a value per interaction (per_run) is repeated on every round's row.
* A dataset option added as one field of the dataset's options dataclass is a flag (in -h, in args.json, restored from
  a checkpoint), a build_dataset keyword that reaches the layout's reader and the dataset, and is refused, on the
  command line and by build_dataset, for every other dataset.

The expected values come from relations the code does not compute for the test (a metric defined as twice
Dice_follow must read twice the Dice_follow of the same row), never from the code's own output.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import make_dataclass, replace
from pathlib import Path

import pytest
import torch
from conftest import tiny_run_args
from datatrees import write_lidc_readers_tree, write_lidc_tree, write_mbhseg_tree, write_refuge_tree

import tables
import train
import val
from analysis.run_files import read_metrics
from cfg import build_parser, make_config
from conf import metrics as metric_table
from conf.metrics import Metric
from conf.options import option, positive
from dataset import DATASETS, build_dataset
from engine.build import build_loader, build_model_from_config
from engine.loops import evaluate
from interaction import rounds, validation
from interaction.registry import MODES
from multirater_metrics import dice
from utils import InputError

# ------------------------------------------------------------------------------------------------
# A metric in one row

TWICE = Metric("Dice_follow_twice", "a test's metric: twice Dice_follow", console=True, plot=True, per_image=True)
OWN = Metric("Own_dice_twice", "a test's metric of the modes that follow a rater", console=True, per_image=True)
MEAN = Metric("Mean_dice_follow", "a test's per-interaction metric: mean Dice_follow over the rounds", per_image=True)


FAST = ("-b", "2", "-clicks", "2", "-noc_clicks", "0", "-max_train_batches", "1", "-max_val_batches", "1")


def add_rows(monkeypatch, *rows: Metric) -> None:
    """The recipe's one row (per metric) in the metric table."""
    monkeypatch.setattr(metric_table, "METRICS", (*metric_table.METRICS, *rows))


def compute_twice_with_the_personalised_metrics(monkeypatch) -> None:
    """Where every mode's per-round metrics are computed, in training and evaluation alike (the lookup the round
    engine makes of multirater_metrics.personalised_metrics)."""
    computed = rounds.personalised_metrics

    def with_twice(*args, **kwargs):
        values = computed(*args, **kwargs)
        return {**values, TWICE.name: 2 * values["Dice_follow"]}

    monkeypatch.setattr(rounds, "personalised_metrics", with_twice)


def run_folder(log_dir: Path) -> Path:
    (found,) = [p for p in log_dir.iterdir() if (p / "metrics.jsonl").is_file()]
    return found


def per_image(run: Path) -> list[dict[str, str]]:
    with (run / "per_image.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("mode", list(MODES))
def test_a_metric_in_one_row_runs_through_every_mode(mode, synthetic_root, tmp_path, monkeypatch):
    add_rows(monkeypatch, TWICE)
    compute_twice_with_the_personalised_metrics(monkeypatch)
    logs = tmp_path / "logs"
    flags = ("-mode", mode, "-val_fraction", "0.25", "-val_freq", "1", *FAST)
    (train.main if MODES[mode].learns else val.main)(tiny_run_args(synthetic_root, logs, *flags))
    run = run_folder(logs)
    rows = read_metrics(run / "metrics.jsonl")
    splits = {"train", "val", "test"} if MODES[mode].learns else {"test"}
    assert {r["split"] for r in rows} == splits
    for r in rows:  # every split, every round: the row's own value, twice its Dice_follow
        assert r[TWICE.name] == pytest.approx(2 * r["Dice_follow"], abs=1e-6), (r["split"], r["round"])
    cells = [r for r in per_image(run) if r["split"] in ("val", "test")]
    assert cells and {r["split"] for r in cells} == splits - {"train"}
    for r in cells:
        assert float(r[TWICE.name]) == pytest.approx(2 * float(r["Dice_follow"]), abs=1e-6)
    log = (run / "Log" / "log.txt").read_text()
    assert f"| {TWICE.name} |" in log  # a column of the console table
    table = tables.main(
        [str(run), "-metrics", f"{TWICE.name},Dice_follow", "-rounds", "1", "-out", str(tmp_path / "t")]
    )
    assert table.mean[0, 0] == pytest.approx(2 * table.mean[0, 1], abs=1e-6)


@pytest.mark.parametrize("mode", list(MODES))
def test_a_metric_of_some_modes_leaves_the_others_cells_empty(mode, synthetic_root, tmp_path, monkeypatch):
    """A per-round metric computed only where a rater is followed (beside Follow_accuracy, in validation.py's
    `following`) and a per-interaction one (beside DSC_AUC, in `click_curve_metrics`): every mode evaluates, the
    final test's per_image rows included."""
    add_rows(monkeypatch, OWN, replace(MEAN, per_run=True))
    following, curves = validation.following, validation.click_curve_metrics

    def with_own(batch, user, pred):
        values = following(batch, user, pred)
        return {**values, OWN.name: 2 * dice(pred, user.followed)} if user.rater is not None else values

    def with_mean(per_round, clicks):
        mean = torch.stack([values["Dice_follow"] for values in per_round], 1).mean(1)
        return {**curves(per_round, clicks), MEAN.name: mean}

    monkeypatch.setattr(validation, "following", with_own)
    monkeypatch.setattr(validation, "click_curve_metrics", with_mean)
    setup = make_config(tiny_run_args(synthetic_root, tmp_path, "-mode", mode, "-max_val_batches", "1"))
    cfg = setup.config
    model = build_model_from_config(cfg, setup.files)[0] if MODES[mode].learns else None
    result = evaluate(model, build_loader(cfg, "test"), cfg, 1, torch.device("cpu"))
    by_interaction: dict[tuple, list[dict]] = {}
    for r in result.per_image:
        by_interaction.setdefault((r["image"], r["followed"]), []).append(r)
        if r["followed"] >= 0:  # a followed rater: its own value
            assert r[OWN.name] == pytest.approx(2 * r["Dice_follow"], abs=1e-6)
        else:  # SPA's preference target: not computed, an empty cell (and no KeyError)
            assert math.isnan(r[OWN.name])
    assert len(by_interaction) >= 4
    for cells in by_interaction.values():  # one value per interaction, on each of its rounds
        expected = sum(c["Dice_follow"] for c in cells) / len(cells)
        assert [c[MEAN.name] for c in cells] == pytest.approx([expected] * len(cells), abs=1e-6)
    follows = any(r["followed"] >= 0 for r in result.per_image)
    assert follows == (mode != "SPA") and all((OWN.name in r) == follows for r in result.rows)


def test_a_plotted_metric_beyond_six_gets_its_own_panel(tmp_path, monkeypatch):
    """The round-curve figure grows with the table (no panel silently dropped)."""
    from engine import figures

    panels = []
    real = figures.pyplot

    def recording():
        plt = real()
        subplots = plt.subplots

        def spy(*args, **kwargs):
            fig, axes = subplots(*args, **kwargs)
            panels.append(axes)
            return fig, axes

        monkeypatch.setattr(plt, "subplots", spy)
        return plt

    extra = [replace(TWICE, name=f"Extra_{k}") for k in range(4)]
    add_rows(monkeypatch, *extra)
    monkeypatch.setattr(figures, "pyplot", recording)
    rows = [{"clicks": c, **{m.name: 0.1 * c for m in metric_table.METRICS}} for c in range(3)]
    figures.plot_round_curves({"run": rows}, tmp_path / "curves.png")
    titles = [ax.get_title() for ax in panels[0].flat if ax.get_visible()]
    assert titles == metric_table.names("plot") and titles[-4:] == [m.name for m in extra]


# ------------------------------------------------------------------------------------------------
# A dataset option in one field

TREES = {
    "synthetic": lambda root: root,  # generated on first use
    "LIDC": write_lidc_tree,
    "MBHSeg-Binary": write_mbhseg_tree,
    "MBHSeg-Multiclass": lambda root: write_mbhseg_tree(root, multiclass=True),
    "REFUGE": write_refuge_tree,
    "LIDC-readers": write_lidc_readers_tree,
}
SMALL_SYNTHETIC = [("n_train", int, 4), ("n_val", int, 2), ("n_test", int, 2)]  # not flags: build_dataset keywords


def add_option(monkeypatch, name: str) -> list:
    """The recipe's one field (`tile`, with a rule) in dataset `name`'s options dataclass; returns the list of the
    options instances its layout's reader receives (a spy, not part of the recipe)."""
    layout = DATASETS[name]
    fields = [("tile", int, option(3, "a test's dataset option", check=positive))]
    fields += SMALL_SYNTHETIC if name == "synthetic" else []
    options = make_dataclass(f"Tiled{layout.options.__name__}", fields, bases=(layout.options,), frozen=True)
    received = []

    def reader(folder, chosen):
        received.append(chosen)
        return layout.records(folder, chosen)

    monkeypatch.setitem(DATASETS, name, replace(layout, options=options, records=reader))
    return received


def data_flags(name: str, root: Path, log_dir: Path, *extra: str) -> list[str]:
    carved = "val_fraction" in [f for f in DATASETS[name].options.__dataclass_fields__]
    return [
        *("-dataset", name, "-data_path", str(root), "-image_size", "32", "-b", "2", "-w", "0"),
        *("-sam_ckpt", "none", "-log_dir", str(log_dir), "-plots", "none"),
        *(("-val_fraction", "0") if carved else ()),
        *extra,
    ]


@pytest.mark.parametrize("name", list(DATASETS))
def test_a_dataset_option_in_one_field_reaches_the_reader(name, tmp_path, monkeypatch, capsys):
    if name not in TREES:
        pytest.fail(f"dataset {name} has no tiny tree in TREES: add one so that its options are tried")
    received = add_option(monkeypatch, name)
    root = TREES[name](tmp_path / name)
    assert "-tile TILE" in build_parser().format_help() and f"for {name}" in build_parser().format_help()
    cfg = make_config(data_flags(name, root, tmp_path / "logs", "-tile", "7")).config
    assert cfg.data.options.tile == 7 and cfg.flags()["tile"] == 7
    loader = build_loader(cfg, "train")
    assert loader.dataset.dataset.options.tile == 7 and received[-1].tile == 7
    sample = next(iter(loader))
    assert sample["image"].shape[-2:] == (32, 32)
    assert build_dataset(name, root, "test", 16, tile=5).options.tile == 5 and received[-1].tile == 5
    with pytest.raises(InputError, match=f"dataset {name}, option tile: must be positive, got 0"):
        build_dataset(name, root, "test", 16, tile=0)
    for other in DATASETS:
        if other == name:
            continue
        with pytest.raises(InputError, match=f"dataset {other} has no option 'tile'"):
            build_dataset(other, root, "test", 16, tile=7)
        capsys.readouterr()
        with pytest.raises(SystemExit) as stop:
            make_config(data_flags(other, root, tmp_path / "logs", "-tile", "7"))
        assert stop.value.code == 2
        assert f"argument -tile: not used by -dataset {other} (only by {name})" in capsys.readouterr().err


def test_a_dataset_option_is_recorded_and_restored_from_a_checkpoint(tmp_path, monkeypatch):
    """train.py writes the option into args.json and the checkpoint; val.py -weights reads it back from there."""
    received = add_option(monkeypatch, "LIDC")
    root = write_lidc_tree(tmp_path / "lidc", n_patients=2, slices=2)
    out = train.main(tiny_run_args(root, tmp_path / "logs", "-tile", "5", *FAST))
    assert json.loads((Path(out["run_dir"]) / "args.json").read_text())["tile"] == 5
    received.clear()
    best = Path(out["run_dir"]) / "Model" / "checkpoint_best.pth"
    val.main(["-weights", str(best), "-data_path", str(root), "-log_dir", str(tmp_path / "val"), "-w", "0", *FAST])
    assert received and {o.tile for o in received} == {5}
