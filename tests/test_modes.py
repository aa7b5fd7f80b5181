"""Modes as plug-ins (modes.py): a mode defined here alone runs through train.py and val.py, and every
optimisation step of the built-in modes updates exactly the parameter groups SPEC §4 says."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_run_args

import train
import val
from cfg import parse_config
from engine.build import build_loader, build_model_from_config
from engine.optim import PARAM_GROUPS, Stepper, build_optimizer
from engine.run_folder import read_metrics
from interaction import rounds as interaction
from interaction.aespa import FollowedRaterUser
from interaction.mode import Mode, get_mode, mode_names, register_mode
from multirater_metrics import neutral_mask
from pipeline.batch import prepare_batch


class ConsensusTargetUser(FollowedRaterUser):
    """Clicks from the followed rater, as AESPA's user, but the target is always the raters' majority mask."""

    calls = {"click": 0, "restart": 0}

    def restart(self) -> None:
        super().restart()
        self.target = neutral_mask(self.raters, self.valid).float()
        ConsensusTargetUser.calls["restart"] += 1

    def click(self, selection, exclude, strategy):
        points, labels = super().click(selection, exclude, strategy)
        self.target = neutral_mask(self.raters, self.valid).float()
        ConsensusTargetUser.calls["click"] += 1
        return points, labels


TOY = register_mode(
    Mode(
        name="toy_consensus",
        summary="a test's mode: consensus target, followed rater's clicks",
        user=ConsensusTargetUser,
    )
)


def test_a_mode_defined_in_a_test_runs_through_train_and_val(synthetic_root, tmp_path):
    assert "toy_consensus" in mode_names() and get_mode("toy_consensus") is TOY
    out = train.main(tiny_run_args(synthetic_root, tmp_path, "-mode", "toy_consensus", "-max_train_batches", "2"))
    trained_clicks = ConsensusTargetUser.calls["click"]
    assert trained_clicks > 0  # the toy's user made the clicks
    rows = read_metrics(Path(out["run_dir"]) / "metrics.jsonl")
    assert {r["mode"] for r in rows} == {"toy_consensus"}
    assert [r["clicks"] for r in rows if r["split"] == "test"] == [0, 1, 2]  # first_round_clicks = 0
    best = Path(out["run_dir"]) / "Model" / "checkpoint_best.pth"
    evaluated = val.main(
        tiny_run_args(synthetic_root, tmp_path / "val", "-weights", str(best))
    )  # mode from the checkpoint
    assert {r["mode"] for r in evaluated} == {"toy_consensus"} and len(evaluated) == 3
    assert ConsensusTargetUser.calls["click"] > trained_clicks


class RecordingStepper(Stepper):
    """Records, for every optimisation step, which parameter groups (optim_step.PARAM_GROUPS) changed."""

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
    """SPEC §4.1/§4.2: the network step moves the image encoder, fusion and decoder; the prompt step the prompt
    encoder and the mean/variance head; the weight-head step the weight head only."""
    cfg = parse_config(tiny_run_args(synthetic_root, tmp_path, "-mode", mode, "-clicks", "2", "-b", "2", *extra))
    torch.manual_seed(0)
    model, _, cfg = build_model_from_config(cfg)
    model.train()
    stepper = RecordingStepper(model, build_optimizer(model, 1e-3))
    generator = torch.Generator().manual_seed(0)
    batch = prepare_batch(next(iter(build_loader(cfg, "train", generator))), torch.device("cpu"), generator=generator)
    interaction.train_batch(model, stepper, batch, cfg, get_mode(mode))
    assert stepper.changed == per_round * 2  # two rounds
