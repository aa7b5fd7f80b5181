"""Validation protocol (docs/evaluation.md#validation-protocol): embedding reuse changes nothing, results do not depend
on batching."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_run_args

from cfg import make_config
from engine.build import build_loader, build_model_from_config
from engine.loops import evaluate


def evaluate_with(synthetic_root, tmp_path, *extra: str) -> list[dict]:
    setup = make_config(tiny_run_args(synthetic_root, tmp_path, "-noc_clicks", "4", *extra))
    cfg = setup.config
    torch.manual_seed(0)
    model, _ = build_model_from_config(cfg, setup.files)
    last_conv = [m for m in model.fcomb.layers if isinstance(m, torch.nn.Conv2d)][-1]
    torch.nn.init.normal_(last_conv.weight, std=0.05)  # let the latent matter
    return evaluate(model.eval(), build_loader(cfg, "test"), cfg, 0, torch.device("cpu")).rows


def assert_rows_equal(a: list[dict], b: list[dict], tol: float) -> None:
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for key, value in ra.items():
            if isinstance(value, float):
                assert rb[key] == pytest.approx(value, abs=tol), key


@pytest.mark.parametrize("mode", ["AESPA", "SPA"])
def test_embedding_reuse_gives_the_same_results(synthetic_root, tmp_path, mode):
    reused = evaluate_with(synthetic_root, tmp_path, "-mode", mode)
    recomputed = evaluate_with(synthetic_root, tmp_path, "-mode", mode, "-no_embedding_reuse")
    assert_rows_equal(reused, recomputed, 1e-5)


@pytest.mark.parametrize("follow", ["all", "random"])
def test_validation_does_not_depend_on_the_batch_size(synthetic_root, tmp_path, follow):
    """Every random draw is keyed on the image: -b 1 and -b 3 give the same metrics (val.py -b 1 reproduces
    what a run logged at -b 8), as does sharding across ranks."""
    extra = ("-val_follow", follow, "-val_click_strategy", "topk")
    one = evaluate_with(synthetic_root, tmp_path, *extra, "-b", "1")
    three = evaluate_with(synthetic_root, tmp_path, *extra, "-b", "3")
    assert_rows_equal(one, three, 1e-5)


def test_spa_draws_of_an_image_do_not_depend_on_its_batch(synthetic_root, tmp_path):
    """SPA's preference target, first click and latent noise of an image are the same alone or in a batch.
    (Its metrics can still differ in the last digits: batched kernels round differently for other batch
    sizes and k-means may then assign a pixel on a cluster edge differently.)"""
    from interaction.spa import initial_click, preference_target
    from pipeline.batch import prepare_batch
    from pipeline.rng import normal

    setup = make_config(tiny_run_args(synthetic_root, tmp_path, "-mode", "SPA", "-b", "3"))
    cfg = setup.config
    data = next(iter(build_loader(cfg.with_flags(image_size=64), "test")))

    def draws(batch):
        target = preference_target(batch.raters, batch.valid, batch.source)
        points, labels = initial_click(batch.raters, batch.valid, target, batch.source)
        return target, points, labels, normal((batch.size, 4, 64), torch.device("cpu"), batch.source)

    together = draws(prepare_batch(data, torch.device("cpu"), seed=0))
    for b in range(3):
        alone = draws(prepare_batch({k: v[b : b + 1] for k, v in data.items()}, torch.device("cpu"), seed=0))
        for x, y in zip(together, alone):
            assert torch.equal(x[b : b + 1], y)
