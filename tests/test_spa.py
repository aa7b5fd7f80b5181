"""SPA as the published method runs it: its own defaults, latent samples that differ from the first step, candidates
that are never empty clusters, and a collapse that shows in the metrics and the log."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_run_args

import train
from analysis.run_files import read_metrics
from cfg import build_parser, make_config
from engine.build import build_loader, build_model_from_config
from interaction.registry import MODES
from interaction.rounds import RoundState, image_embedding
from interaction.spa import find_candidates
from models import Decoded
from pipeline.batch import prepare_batch


def test_spa_defaults_are_spas_and_a_named_flag_wins(synthetic_root, tmp_path):
    spa = make_config(tiny_run_args(synthetic_root, tmp_path, "-mode", "SPA")).config
    assert (spa.model.fcomb, spa.loop.click_strategy, spa.loop.val_click_strategy) == ("reference", "topk", "topk")
    aespa = make_config(tiny_run_args(synthetic_root, tmp_path)).config
    assert (aespa.model.fcomb, aespa.loop.click_strategy, aespa.loop.val_click_strategy) == (
        "residual",
        "center",
        "center",
    )
    named = make_config(tiny_run_args(synthetic_root, tmp_path, "-mode", "SPA", "-fcomb", "residual")).config
    assert (named.model.fcomb, named.loop.click_strategy) == ("residual", "topk")
    assert "-mode SPA: reference" in " ".join(build_parser().format_help().split())


def fresh_samples(synthetic_root, tmp_path, fcomb: str) -> torch.Tensor:
    """Latent-sample probabilities (BxMxSxS) of a freshly built SPA model on test images, after the first click."""
    setup = make_config(tiny_run_args(synthetic_root, tmp_path, "-mode", "SPA", "-fcomb", fcomb, "-num_samples", "8"))
    cfg = setup.config
    torch.manual_seed(0)
    model, _ = build_model_from_config(cfg, setup.files)
    model.eval()
    batch = prepare_batch(next(iter(build_loader(cfg, "test"))), torch.device("cpu"), seed=0)
    user = MODES["SPA"].user(batch, cfg.loop, cfg.options, "validate")
    state = RoundState.for_user(user, batch.images.shape[-1], batch.images.device)
    with torch.no_grad():
        decoded = model.decode_round(image_embedding(model, batch), state.prompts(model), user.noise(model.latent_dim))
    return decoded.probs


def test_a_fresh_spa_model_has_samples_that_differ(synthetic_root, tmp_path):
    """The published fusion replaces the embedding with a random (orthogonal) projection of [embedding, z], so
    different latent samples give different predictions from the first step; the residual fusion starts as plain
    SAM, its samples identical (the collapse the README describes)."""
    spa = fresh_samples(synthetic_root, tmp_path, "reference")
    spread = spa.std(1, unbiased=False)  # BxSxS
    assert float(spread.mean()) > 1e-5 and float(spread.amax()) > 1e-4  # measured: 3e-4 and 8e-4
    target = (spa.mean(1) > spa.mean()).float()  # any target: the click map is where the candidates differ
    cand = find_candidates(decoded_of(spa), target, k=2, source=torch.Generator().manual_seed(0))
    assert float(cand.extra["Empty_click_map"].mean()) < 0.5  # most images get a click map from the first step
    residual = fresh_samples(synthetic_root, tmp_path / "r", "residual")
    assert float(residual.std(1, unbiased=False).amax()) == 0.0


def decoded_of(probs: torch.Tensor) -> Decoded:
    logits = torch.logit(probs.clamp(1e-4, 1 - 1e-4))
    return Decoded(logits[..., ::4, ::4], logits)


def test_identical_samples_are_reported_as_a_collapse_and_no_empty_cluster_is_selected():
    """Four identical samples: k-means leaves clusters empty; the user must select the one that holds them (not an
    empty centre, whose mask prompt would be all zero), and the round reports a zero spread and an empty click
    map. Two distinct groups: a non-zero spread, a click map, and the selected candidate better than the mean."""
    target = torch.zeros(1, 8, 8)
    target[0, 2:6, 2:6] = 1
    same = torch.full((1, 4, 8, 8), 0.3)
    cand = find_candidates(decoded_of(same), target, k=2, source=torch.Generator().manual_seed(0))
    assert bool(cand.members.all())  # every sample is in the selected cluster
    assert float(cand.extra["Sample_spread"]) == pytest.approx(0.0, abs=1e-7)
    assert float(cand.extra["Empty_click_map"]) == 1.0
    two = torch.cat([target.expand(2, 8, 8), torch.zeros(2, 8, 8)])[None] * 0.94 + 0.01  # 2 like the target, 2 empty:
    # the std of (0.95, 0.95, 0.01, 0.01) is 0.47 on the 16 target pixels, 0 on the other 48; their mean, 0.48 there,
    # is an empty mask
    cand = find_candidates(decoded_of(two), target, k=2, source=torch.Generator().manual_seed(0))
    assert cand.members.tolist() == [[True, True, False, False]]
    assert float(cand.extra["Empty_click_map"]) == 0.0 and float(cand.extra["Sample_spread"]) == pytest.approx(
        16 / 64 * 0.47
    )
    assert float(cand.extra["Selected_minus_follow"]) == pytest.approx(1.0, abs=1e-6)  # 1 (the target) - 0 (empty)


def test_spa_run_logs_the_liveness_of_its_samples(synthetic_root, tmp_path):
    out = train.main(tiny_run_args(synthetic_root, tmp_path, "-mode", "SPA", "-max_train_batches", "2"))
    rows = read_metrics(tmp_path / out["run_dir"] / "metrics.jsonl")
    for r in rows:
        assert {"Sample_spread", "Empty_click_map", "Selected_minus_follow"} <= set(r), r
        assert 0.0 <= r["Empty_click_map"] <= 1.0 and r["Sample_spread"] >= 0.0


def test_a_collapsed_latent_is_a_warning_in_the_log(synthetic_root, tmp_path):
    """Residual fusion starts as plain SAM: its samples are identical, and the log says so after the first epoch."""
    args = ("-mode", "SPA", "-fcomb", "residual", "-max_train_batches", "1", "-noc_clicks", "0")
    out = train.main(tiny_run_args(synthetic_root, tmp_path, *args))
    log = (tmp_path / out["run_dir"] / "Log" / "log.txt").read_text()
    assert "WARNING epoch 1: the latent samples do not differ" in log
