"""Modes as plug-ins (interaction/mode.py, interaction/registry.py): a mode defined here with its own flag runs
through train.py and val.py after one registry line, its flag is refused under another mode, and every
optimisation step of the built-in modes updates exactly the parameter groups docs/interaction.md says."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import tiny_run_args

import train
import val
from analysis.run_files import read_metrics
from cfg import build_parser, make_config
from conf.options import option
from engine.build import build_loader, build_model_from_config
from engine.optim import PARAM_GROUPS, Stepper, build_optimizer
from interaction import rounds as interaction
from interaction.aespa import FollowingUser, FollowOptions
from interaction.mode import Mode
from interaction.registry import MODES
from multirater_metrics import neutral_mask
from pipeline.batch import prepare_batch


@dataclass(frozen=True)
class ToyOptions(FollowOptions):
    """The toy mode's own flag: whose mask the target is."""

    toy_target: str = option("consensus", "toy mode: train towards the majority or the followed rater",
                             choices=("consensus", "followed"))  # fmt: skip


class ToyUser(FollowingUser):
    """Clicks from the followed rater, as AESPA's user; the target is the raters' majority mask or the followed
    rater's mask, as its flag says."""

    calls = {"click": 0, "targets": set()}

    def _target(self):
        ToyUser.calls["targets"].add(self.options.toy_target)
        if self.options.toy_target == "followed":
            return self.followed.float()
        return neutral_mask(self.raters, self.valid).float()

    def click(self, selection, exclude, strategy):
        ToyUser.calls["click"] += 1
        return super().click(selection, exclude, strategy)


# the mode's one file: the above and this line
TOY = Mode(name="toy", summary="a test's mode: a target chosen by its own flag", user=ToyUser, options=ToyOptions)


def test_a_mode_with_its_own_flag_is_one_file_and_one_registry_line(synthetic_root, tmp_path, monkeypatch):
    monkeypatch.setitem(MODES, "toy", TOY)  # the registry line
    args = ("-mode", "toy", "-toy_target", "followed", "-max_train_batches", "2")
    out = train.main(tiny_run_args(synthetic_root, tmp_path, *args))
    trained_clicks = ToyUser.calls["click"]
    assert trained_clicks > 0 and ToyUser.calls["targets"] == {"followed"}  # the toy's user read its flag
    assert json.loads((Path(out["run_dir"]) / "args.json").read_text())["toy_target"] == "followed"
    rows = read_metrics(Path(out["run_dir"]) / "metrics.jsonl")
    assert {r["mode"] for r in rows} == {"toy"}
    assert [r["clicks"] for r in rows if r["split"] == "test"] == [0, 1, 2]  # first_round_clicks = 0
    best = Path(out["run_dir"]) / "Model" / "checkpoint_best.pth"
    evaluated = val.main(tiny_run_args(synthetic_root, tmp_path / "val", "-weights", str(best)))  # mode from it
    assert {r["mode"] for r in evaluated} == {"toy"} and len(evaluated) == 3
    assert ToyUser.calls["click"] > trained_clicks
    help_text = build_parser().format_help()
    assert "-toy_target" in help_text and "for toy" in help_text  # its flag is listed, with the mode using it


def test_a_flag_of_another_mode_is_refused_naming_flag_and_mode(synthetic_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(MODES, "toy", TOY)
    with pytest.raises(SystemExit) as stop:
        train.main(tiny_run_args(synthetic_root, tmp_path, "-toy_target", "followed"))  # AESPA does not use it
    assert stop.value.code == 2
    assert "argument -toy_target: not used by -mode AESPA (only by toy)" in capsys.readouterr().err
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


class RecordingStepper(Stepper):
    """Records, for every optimisation step, which parameter groups (engine.optim.PARAM_GROUPS) changed."""

    def __init__(self, model, optimizer):
        super().__init__(optimizer, torch.device("cpu"))
        self.model, self.changed = model, []

    def step(self, loss: torch.Tensor) -> None:
        before = {n: p.detach().clone() for n, p in self.model.named_parameters()}
        super().step(loss)
        parts = {n.split(".")[0] for n, p in self.model.named_parameters() if not torch.equal(before[n], p)}
        self.changed.append(
            {group for group, modules in PARAM_GROUPS.items() if parts & set(modules)}
            | ({"other"} if parts - {m for ms in PARAM_GROUPS.values() for m in ms} else set())
        )


@pytest.mark.parametrize(
    "mode, extra, per_round",
    [
        ("AESPA", (), [{"network"}, {"weight"}]),
        ("AESPA", ("-train_prompt",), [{"network"}, {"prompt"}, {"weight"}]),
        ("SPA", (), [{"network"}, {"prompt"}, {"weight"}]),
    ],
    ids=["AESPA", "AESPA-train_prompt", "SPA"],
)
def test_each_step_updates_only_its_parameter_group(synthetic_root, tmp_path, mode, extra, per_round):
    """docs/interaction.md#aespa-rounds, docs/interaction.md#spa-rounds: the network step moves the image encoder,
    fusion and decoder; the prompt step the prompt encoder and the mean/variance head; the weight-head step the weight
    head only."""
    setup = make_config(tiny_run_args(synthetic_root, tmp_path, "-mode", mode, "-clicks", "2", "-b", "2", *extra))
    cfg = setup.config
    torch.manual_seed(0)
    model, _ = build_model_from_config(cfg, setup.files)
    model.train()
    stepper = RecordingStepper(model, build_optimizer(model, 1e-3))
    generator = torch.Generator().manual_seed(0)
    batch = prepare_batch(next(iter(build_loader(cfg, "train", generator))), torch.device("cpu"), generator=generator)
    interaction.train_batch(model, stepper, batch, cfg, MODES[mode])
    assert stepper.changed == per_round * 2  # two rounds
