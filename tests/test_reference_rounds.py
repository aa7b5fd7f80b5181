"""`-compat reference` reproduces the original project's validation, round by round (tests/data/ref_aespa_tiny,
recorded by the original's own code): the fixture's checkpoint is loaded through the path `val.py -weights`
takes, its recorded clicks are replayed, and every recorded tensor of the six rounds must match."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import val
from cfg import make_config
from engine.build import build_model_from_config
from models.reference_format import load_reference_model, predict_rounds
from utils import InputError

REF = Path(__file__).parent / "data" / "ref_aespa_tiny"
CHECKPOINT = REF / "checkpoint.pth"
TOL, LOGIT_TOL, SELF_FED_TOL = 1e-5, 1e-4, 1e-2
COMPARED = ("sparse", "dense", "latent", "fused_embedding", "low_res_logits", "probs", "em")


@pytest.fixture(scope="module")
def fx():
    return torch.load(REF / "fixture.pt", weights_only=True)


@pytest.fixture(scope="module")
def model():
    """Loaded as `val.py -weights checkpoint.pth` loads it (the architecture read from the file)."""
    setup = make_config(["-weights", str(CHECKPOINT), "-image_size", "64"])
    cfg = setup.config
    model, reports = build_model_from_config(cfg, setup.files)
    assert (cfg.model.compat, cfg.model.fcomb, cfg.model.n_components) == ("reference", "reference", 16)
    assert len(reports[0].loaded) + len(reports[0].resampled) == len(model.state_dict())  # every tensor
    return model.eval()


def recorded_clicks(fx) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(r["points_yx"], r["labels"]) for r in fx["rounds"]]


def max_diff(got: torch.Tensor, want: torch.Tensor) -> float:
    assert got.shape == want.shape, (tuple(got.shape), tuple(want.shape))
    return (got.float() - want.float()).abs().max().item()


def test_load_reference_model_is_the_val_path(model):
    other = load_reference_model(CHECKPOINT)
    assert other.config == model.config
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), name


def test_every_round_matches_when_fed_the_recorded_previous_round(fx, model):
    previous = [
        (r["mask_prompt"] if r["has_mask_prompt"] else None, r["weight_head_input"] if t else None)
        for t, r in enumerate(fx["rounds"])
    ]  # round 1: no mask prompt, the stored weights
    out = predict_rounds(model, fx["inputs"]["images"], recorded_clicks(fx), previous)
    for t, (ours, want) in enumerate(zip(out, fx["rounds"]), start=1):
        for key in COMPARED:
            tol = LOGIT_TOL if key == "low_res_logits" else TOL
            assert max_diff(ours[key], want[key]) <= tol, (t, key)
        for key in ("means", "variances", "weights"):  # batch-level K vectors, the same for every image
            assert max_diff(ours[key], want[key].expand_as(ours[key])) <= TOL, (t, key)


def test_six_rounds_fed_by_themselves_stay_within_1e_2(fx, model):
    out = predict_rounds(model, fx["inputs"]["images"], recorded_clicks(fx))
    for t, (ours, want) in enumerate(zip(out, fx["rounds"]), start=1):
        for key in ("low_res_logits", "probs", "em"):
            assert max_diff(ours[key], want[key]) <= SELF_FED_TOL, (t, key)
    assert max_diff(out[0]["low_res_logits"], fx["rounds"][0]["low_res_logits"]) <= LOGIT_TOL  # round 1 exact


def test_the_project_protocol_does_not_reproduce_the_original(fx, model):
    """The round protocol matters: the same weights run per image (no padding token, stored mixture in round 1,
    bilinear upsampling) give other predictions from round 1 on."""
    import copy

    project = copy.deepcopy(model)
    project.config["protocol"], project.reference_protocol = "project", False
    out = predict_rounds(project, fx["inputs"]["images"], recorded_clicks(fx)[:1])
    assert max_diff(out[0]["probs"], fx["rounds"][0]["probs"]) > 0.1


def write_fixture_tree(fx, root: Path) -> Path:
    """A LIDC-layout tree of the fixture's three images and raters (in test/, and a copy as train/)."""
    images, raters = fx["inputs"]["images"], fx["inputs"]["raters"]  # Bx3xSxS in k/255, BxRxSxS {0,1}
    for split in ("train", "test"):
        for b in range(images.shape[0]):
            (root / split / "images" / "p0").mkdir(parents=True, exist_ok=True)
            (root / split / "gt" / "p0").mkdir(parents=True, exist_ok=True)
            pixels = (images[b].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
            Image.fromarray(pixels).save(root / split / "images" / "p0" / f"s{b}.png")
            for k in range(raters.shape[1]):
                mask = (raters[b, k].numpy() > 0.5).astype(np.uint8) * 255
                Image.fromarray(mask).save(root / split / "gt" / "p0" / f"s{b}_l{k}.png")
    return root


def test_val_py_runs_the_fixture_checkpoint_on_a_lidc_tree(fx, tmp_path):
    root = write_fixture_tree(fx, tmp_path / "LIDC")
    common = [
        "-weights",
        str(CHECKPOINT),
        "-dataset",
        "LIDC",
        "-data_path",
        str(root),
        "-image_size",
        "64",
        "-b",
        "3",
        "-w",
        "0",
        "-valid_raters",
        "nonempty",
        "-val_follow",
        "random",
        "-noc_clicks",
        "2",
        "-log_dir",
        str(tmp_path / "logs"),
    ]
    rows = val.main(common + ["-compat", "reference"])
    assert [r["clicks"] for r in rows] == [0, 1, 2, 3, 4, 5]
    assert all(np.isfinite(r["Dice_follow"]) for r in rows)
    detected = val.main(common)  # no -compat: the format is recognised and run under its conventions
    assert [r["Dice_follow"] for r in detected] == [r["Dice_follow"] for r in rows]
    log = next((tmp_path / "logs").glob("*_val_*/Log/log.txt"), None)
    assert log is not None and "decoder_num_heads=2 assumed" in log.read_text()
    with pytest.raises(InputError, match="-compat none: .* runs only under -compat reference"):
        val.main(common + ["-compat", "none"])
