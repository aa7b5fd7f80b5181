"""Preference heads, the full model, and loading the published AESPA checkpoint format (docs/model.md#preference-heads,
docs/differences.md#the-published-checkpoint)."""

import io
import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from models import (
    AESPAModel,
    aespa_config,
    build_model,
    build_sam_from_config,
    mixture_latent,
    responsibilities,
    sam_config,
)
from models.preference import MeanVarianceHead, WeightHead

DATA = Path(__file__).parent / "data"


def tiny_model(fusion="residual", protocol="project", seed=0):
    torch.manual_seed(seed)
    return AESPAModel(aespa_config(sam_config("vit_t", 64), 8, fusion, protocol=protocol)).eval()


def test_responsibilities_hand_computed():
    # p = (0.5, 1.0), w = (0.5, 0.5), mu = (0, 1), var = (1, 1).
    # p=0.5 is equidistant from both means -> r = (0.5, 0.5).
    # p=1.0: N(1;0,1) ∝ e^-0.5, N(1;1,1) ∝ 1 -> r = (e^-0.5, 1) / (1 + e^-0.5).
    e = math.exp(-0.5)
    expected = torch.tensor([[(0.5 + e / (1 + e)) / 2, (0.5 + 1 / (1 + e)) / 2]])
    got = responsibilities(
        torch.tensor([[0.5, 1.0]]), torch.tensor([[0.5, 0.5]]), torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 1.0]])
    )
    torch.testing.assert_close(got, expected)


def reference_responsibilities(p, w, mu, var):
    """Independent float64 version with scipy: log-densities, normalised with logsumexp."""
    from scipy.special import logsumexp
    from scipy.stats import norm

    logd = np.log(w)[None, :] + norm.logpdf(p[:, None], loc=mu[None, :], scale=np.sqrt(var)[None, :])  # NxK
    return np.exp(logd - logsumexp(logd, axis=1, keepdims=True)).mean(0)


@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_responsibilities_match_a_float64_reference(scale):
    # scale 100: the original's initial mixture (means in ±100, variances up to 10), where float32 densities
    # underflow for most pixels; the log-space result still matches the exact one.
    rng = np.random.default_rng(3)
    p = rng.random(500)
    w = rng.random(6)
    w /= w.sum()
    mu, var = (rng.random(6) * 2 - 1) * scale, rng.random(6) * 9.9 + 0.1
    got = responsibilities(
        torch.tensor(p[None], dtype=torch.float32), *(torch.tensor(a[None], dtype=torch.float32) for a in (w, mu, var))
    )
    np.testing.assert_allclose(got[0].numpy(), reference_responsibilities(p, w, mu, var), atol=2e-5)


def test_responsibilities_far_pixel_goes_to_nearest_component_and_zero_weights_give_zero():
    # Far from both components (densities underflow in float32): the nearer mean (+100 is nearer to p=0.5
    # than -200 at equal variance) takes the pixel.
    got = responsibilities(
        torch.full((1, 10), 0.5),
        torch.tensor([[0.5, 0.5]]),
        torch.tensor([[100.0, -200.0]]),
        torch.tensor([[1e-3, 1e-3]]),
    )
    torch.testing.assert_close(got, torch.tensor([[1.0, 0.0]]))
    zero = responsibilities(torch.rand(1, 10), torch.zeros(1, 2), torch.tensor([[0.0, 1.0]]), torch.ones(1, 2))
    assert torch.equal(zero, torch.zeros(1, 2))


def test_responsibilities_vectorised_over_batch_and_chunks():
    g = torch.Generator().manual_seed(1)
    probs = torch.rand(3, 1, 16, 16, generator=g)
    w = torch.softmax(torch.randn(3, 4, generator=g), 1)
    mu, var = torch.rand(3, 4, generator=g), torch.rand(3, 4, generator=g) + 0.05
    whole = responsibilities(probs, w, mu, var)
    chunked = responsibilities(probs, w, mu, var, chunk=4 * 3 * 7)  # 7 pixels a chunk
    torch.testing.assert_close(whole, chunked)
    for b in range(3):
        torch.testing.assert_close(
            whole[b : b + 1], responsibilities(probs[b : b + 1], w[b : b + 1], mu[b : b + 1], var[b : b + 1])
        )
    torch.testing.assert_close(whole.sum(1), torch.ones(3))


def test_latent_hand_computed():
    # w = (.25, .75), mu = (2, 4), sigma = (2, 4): centre = .5 + 3 = 3.5, spread = .5 + 3 = 3.5.
    w, mu, var = torch.tensor([[0.25, 0.75]]), torch.tensor([[2.0, 4.0]]), torch.tensor([[4.0, 16.0]])
    z = mixture_latent(w, mu, var, torch.tensor([[1.0, -1.0, 0.0]]), latent_dim=3)
    torch.testing.assert_close(z, torch.tensor([[7.0, 0.0, 3.5]]))
    torch.testing.assert_close(mixture_latent(w, mu, var, None, latent_dim=3), torch.full((1, 3), 3.5))


def test_heads_shapes_and_weight_softmax():
    head = MeanVarianceHead(32, n_components=5)
    means, var = head(torch.randn(3, 4, 32), torch.randn(1, 32, 4, 4))
    assert means.shape == var.shape == (3, 5) and (var > 0).all()
    w = WeightHead(5)(torch.rand(3, 5))
    torch.testing.assert_close(w.sum(1), torch.ones(3))


def inputs(b, size=64, seed=0, patch=8):
    """Images, clicks, a mask prompt (4G x 4G, G = size / patch), mixture weights and latent noise."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(b, 3, size, size, generator=g)
    points = torch.randint(0, size, (b, 2, 2), generator=g).float()
    labels = torch.tensor([[1, 0]] * b)
    low = 4 * (size // patch)
    mask = torch.randn(b, 1, low, low, generator=g)
    weights = torch.softmax(torch.randn(b, 8, generator=g), 1)
    eps = torch.randn(b, 64, generator=g)
    return images, points, labels, mask, weights, eps


@pytest.mark.parametrize("fusion", ["reference", "residual"])
def test_prediction_does_not_depend_on_batch_neighbours(fusion):
    model = tiny_model(fusion)
    if fusion == "residual":  # make the fusion do something, so the test means something
        torch.nn.init.normal_(model.fcomb.layers[-1].weight, std=0.1)
    batch = inputs(4)
    with torch.no_grad():
        together = model(*batch[:4], weights=batch[4], eps=batch[5])["logits"]
        for b in range(4):
            alone = model(*(t[b : b + 1] for t in batch[:4]), weights=batch[4][b : b + 1], eps=batch[5][b : b + 1])
            assert (alone["logits"] - together[b : b + 1]).abs().max() <= 1e-6
        # the same image with other neighbours
        other = inputs(4, seed=1)
        mixed = [torch.cat([a[:1], o[1:]]) for a, o in zip(batch, other)]
        again = model(*mixed[:4], weights=mixed[4], eps=mixed[5])["logits"]
    assert (again[:1] - together[:1]).abs().max() <= 1e-6


def test_compat_batch_mixture_does_depend_on_neighbours():
    """The original's batch-averaged mixture (`-compat reference`): the check above would catch it."""
    model = tiny_model("reference", protocol="reference")
    batch = inputs(3)
    with torch.no_grad():
        together = model(*batch[:4], weights=batch[4], eps=batch[5])["logits"]
        alone = model(*(t[:1] for t in batch[:4]), weights=batch[4][:1], eps=batch[5][:1])["logits"]
    assert (alone - together[:1]).abs().max() > 1e-4


def test_residual_fusion_at_init_is_plain_sam():
    model = tiny_model("residual")
    sam = build_sam_from_config(sam_config("vit_t", 64)).eval()
    sam.load_state_dict(
        {
            k: v
            for k, v in model.state_dict().items()
            if k.split(".")[0] in ("image_encoder", "prompt_encoder", "mask_decoder")
        }
    )
    images, points, labels, mask, weights, eps = inputs(2)
    with torch.no_grad():
        ours = model(images, points, labels, mask, weights, eps)["low_res"]
        plain, _ = sam.predict(images, points=(points, labels), mask_input=mask)
        assert torch.equal(ours, plain)
        # the reference layout is not the identity at initialisation
        ref = tiny_model("reference")
        ref.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("fcomb.")}, strict=False)
        assert (ref(images, points, labels, mask, weights, eps)["low_res"] - plain).abs().max() > 1e-3


def test_no_click_round_uses_the_stored_mixture():
    model = tiny_model()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        out = model(images)
    assert torch.equal(out["means"], model.mixture_means.expand(2, -1))
    assert torch.equal(out["weights"], model.mixture_weights.expand(2, -1))
    z = model.latent(out["weights"], out["means"], out["variances"])
    torch.testing.assert_close(z[:, 0], (model.mixture_weights * model.mixture_means).sum().expand(2))
    assert out["logits"].shape == (2, 1, 64, 64)


def test_medsam_layout_checkpoint_into_full_model_reports_fresh_heads(tmp_path):
    sam = build_sam_from_config(sam_config("vit_t", 128))
    torch.save(sam.state_dict(), tmp_path / "sam.pth")
    model, report = build_model("vit_t", 64, n_components=8, checkpoint=str(tmp_path / "sam.pth"))
    assert len(report.loaded) + len(report.resampled) == len(sam.state_dict())
    assert {k.split(".")[0] for k in report.initialised} == {
        "fcomb",
        "mean_var_head",
        "weight_head",
        "mixture_weights",
        "mixture_means",
        "mixture_variances",
    }
    assert "image_encoder.pos_embed" in {k for k, _, _ in report.resampled}


# --- the published AESPA checkpoint (docs/differences.md#the-published-checkpoint) -------------------------------


def reference_checkpoint(seed=0):
    shapes = json.loads((DATA / "aespa_reference_state_dict_shapes.json").read_text())
    g = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(v, generator=g) * 0.02 for k, v in shapes.items()}
    rng = np.random.default_rng(seed)
    w = rng.random(16)
    return {
        "epoch": 100,
        "model": "sam",
        "state_dict": state,
        "optimizer": {"state": {}, "param_groups": []},
        "path_helper": {"prefix": "logs/LIDC_AESPA"},
        "EM_weights": w / w.sum(),
        "EM_means": rng.uniform(-100, 100, 16),
        "EM_variances": rng.uniform(0.1, 10, 16),
    }


def as_numpy1_pickle(path: Path) -> None:
    """Rewrite a saved checkpoint so its pickle names numpy 1's module path (`numpy.core.multiarray`)."""
    src = zipfile.ZipFile(io.BytesIO(path.read_bytes()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray\n" in data
                data = data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
            dst.writestr(info, data)
    path.write_bytes(out.getvalue())


@pytest.mark.parametrize("numpy1", [False, True])
def test_published_aespa_checkpoint_loads_safely_and_completely(tmp_path, numpy1):
    ckpt = reference_checkpoint()
    path = tmp_path / "checkpoint_aespa_lidc.pth"
    torch.save(ckpt, path)
    if numpy1:
        as_numpy1_pickle(path)
    model, report = build_model(
        "vit_b",
        128,
        n_components=16,
        fusion="reference",
        checkpoint=str(path),
        point_order="yx",
        protocol="reference",
        decoder_block="reference",
    )
    assert report.initialised == []
    assert len(report.loaded) + len(report.resampled) == len(model.state_dict())
    assert [k for k, _, _ in report.resampled] == ["image_encoder.pos_embed"]  # rel tables already at 2*8-1 rows
    state = ckpt["state_dict"]
    assert torch.equal(model.image_encoder.blocks[2].attn.rel_pos_h, state["image_encoder.blocks.2.attn.rel_h"])
    assert torch.equal(
        model.mask_decoder.transformer.layers[1].mlp.lin2.weight,
        state["mask_decoder.transformer.layers.1.mlp.fc.weight"],
    )
    assert torch.equal(model.fcomb.layers[4].weight, state["image_encoder.fcomb.layers.4.weight"])
    assert torch.equal(model.weight_head.fc6.bias, state["EM_weights.fc6.bias"])
    assert torch.equal(model.mean_var_head.conv1d_2.weight, state["EM_mean_variance.conv1d_2.weight"])
    np.testing.assert_allclose(model.mixture_means.numpy(), ckpt["EM_means"], rtol=1e-6)


def test_vit_b_forward_backward_at_128():
    torch.manual_seed(0)
    model, _ = build_model("vit_b", 128, n_components=16)
    images = torch.rand(2, 3, 128, 128)
    points, labels = torch.tensor([[[30.0, 40.0]], [[90.0, 20.0]]]), torch.ones(2, 1, dtype=torch.long)
    out = model(images, points, labels)
    target = (torch.rand(2, 1, 128, 128) > 0.5).float()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(out["logits"], target)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.image_encoder.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.image_encoder.patch_embed.proj.weight.grad.abs().sum() > 0
