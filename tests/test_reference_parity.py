"""The original project's network, component by component, against what its own code recorded.

tests/data/ref_aespa_tiny (see its README.txt): a small model of the original's architecture in the original's
checkpoint format, and six rounds of its AESPA validation. Each component is fed the fixture's recorded inputs
of that round, so a mismatch points at one piece. Also: the architecture read from checkpoint shapes, and the
prompt encoder's padding point for an empty point set (official SAM fixture tests/data/sam_tiny_parity.pt).
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models import (
    AESPAModel,
    CheckpointError,
    Decoded,
    build_sam_from_config,
    load_weights,
    mixture_latent,
    read_checkpoint,
    responsibilities,
    sam_config,
)
from models.reference_format import (
    assumed_settings,
    convert_reference_checkpoint,
    reference_decoder_heads,
    reference_model_config,
)
from models.sam import CONFIG_KEYS

DATA = Path(__file__).parent / "data"
REF = DATA / "ref_aespa_tiny"
TOL, LOGIT_TOL = 1e-5, 1e-4
ROUNDS = range(6)
K = 16


def assert_close(got: torch.Tensor, want: torch.Tensor, tol: float = TOL) -> None:
    assert got.shape == want.shape, f"shape {tuple(got.shape)} != {tuple(want.shape)}"
    err = (got.float() - want.float()).abs().max().item() if want.numel() else 0.0
    assert err <= tol, f"max |diff| {err:.2e} > {tol:.0e}"


@pytest.fixture(scope="module")
def fx():
    return torch.load(REF / "fixture.pt", weights_only=True)


@pytest.fixture(scope="module")
def container():
    return read_checkpoint(REF / "checkpoint.pth")  # the project's safe reader (numpy allow-list)


def load(container, **overrides) -> AESPAModel:
    config = {**reference_model_config(container, 64, "fixture"), **overrides}
    model = AESPAModel(config).eval()
    load_weights(model, convert_reference_checkpoint(container, "fixture"), source="fixture")
    return model


@pytest.fixture(scope="module")
def model(container):
    return load(container)


# --- architecture from the checkpoint ----------------------------------------------------------------


def test_config_read_from_fixture_checkpoint(container):
    truth = json.loads((REF / "config.json").read_text())  # the values the original was built with
    config = reference_model_config(container, 64, "fixture")
    for key in (*CONFIG_KEYS, "n_components", "latent_dim"):
        assert config[key] == truth[key], key
    conventions = ("fusion", "protocol", "decoder_block", "point_order", "multimask_output")
    assert [config[k] for k in conventions] == ["reference", "reference", "reference", "yx", 1]
    assert "decoder_num_heads=2 assumed" in assumed_settings(config)
    assert reference_model_config(container, source="fixture")["img_size"] == 64  # the trained size by default
    assert reference_model_config(container, 128, "fixture")["img_size"] == 128


def test_config_of_published_vit_b_layout():
    """The published checkpoint's layout (key shapes at image size 128) gives SAM ViT-B."""
    shapes = json.loads((DATA / "aespa_reference_state_dict_shapes.json").read_text())
    state = {k: torch.empty(v, device="meta") for k, v in shapes.items()}  # shapes only, no memory
    container = {
        "state_dict": state,
        "EM_weights": np.full(16, 1 / 16),
        "EM_means": np.zeros(16),
        "EM_variances": np.ones(16),
    }
    config = reference_model_config(container, 128, "published")
    vit_b = dict(
        embed_dim=768,
        depth=12,
        num_heads=12,
        global_attn_indexes=[2, 5, 8, 11],
        window_size=14,
        patch_size=16,
        out_chans=256,
        prompt_embed_dim=256,
        decoder_num_heads=8,
        decoder_mlp_dim=2048,
    )
    assert {k: config[k] for k in vit_b} == vit_b
    assert {k: config[k] for k in CONFIG_KEYS} == sam_config("vit_b", 128)
    assert reference_model_config(container, source="published")["img_size"] == 128  # global tables: 2*8-1 rows
    assert (config["n_components"], config["latent_dim"]) == (16, 64)


def test_decoder_heads_rule():
    assert [reference_decoder_heads(w) for w in (32, 64, 128, 256, 512)] == [2, 4, 8, 8, 8]


def test_config_refuses_unreadable_layouts(container):
    state = dict(container["state_dict"])
    del state["image_encoder.blocks.1.attn.rel_h"]
    with pytest.raises(CheckpointError, match="relative-position table 'image_encoder.blocks.1.attn.rel_pos_h'"):
        reference_model_config({**container, "state_dict": state}, 64, "x.pth")
    with pytest.raises(CheckpointError, match="not a positive multiple of the patch size 8"):
        reference_model_config(container, 60, "x.pth")
    with pytest.raises(CheckpointError, match="not an original-format"):
        reference_model_config({"state_dict": state}, 64, "x.pth")


# --- image side --------------------------------------------------------------------------------------


def test_pos_embed_resampled_at_load_equals_per_forward_resize(container, model):
    """The original resizes its 1 x 1024/p x 1024/p x D table bicubically at every forward; the loader once."""
    table = container["state_dict"]["image_encoder.pos_embed"]
    assert table.shape == (1, 128, 128, 64)
    per_forward = F.interpolate(table.permute(0, 3, 1, 2), size=(8, 8), mode="bicubic", align_corners=False)
    assert_close(model.image_encoder.pos_embed.detach(), per_forward.permute(0, 2, 3, 1))


def test_image_encoder(fx, model):
    with torch.no_grad():
        assert_close(model.image_encoder(fx["inputs"]["images"]), fx["sam_embedding"])


def test_dense_pe(fx, model):
    assert_close(model.prompt_encoder.get_dense_pe(), fx["dense_pe"])


# --- per round ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("t", ROUNDS)
def test_prompt_encoder(fx, model, t):
    r = fx["rounds"][t]
    mask = r["mask_prompt"] if r["has_mask_prompt"] else None
    with torch.no_grad():  # (y, x) clicks fed unchanged into the (x, y) slot, as the original does
        sparse, dense = model.prompt_encoder(points=(r["points_yx"], r["labels"]), boxes=None, masks=mask)
    assert sparse.shape[1] == t + 1  # t clicks + the padding point, also at round 1 (no click)
    assert_close(sparse, r["sparse"])
    assert_close(dense, r["dense"])


@pytest.mark.parametrize("t", ROUNDS)
def test_mean_variance_head(fx, model, t):
    r = fx["rounds"][t]
    with torch.no_grad():
        means, variances = model.mean_var_head(r["sparse"], fx["dense_pe"])
    raw = r["mean_var_raw"]  # fc3's output: [:K] means, [K:] raw variances
    assert_close(means, raw[:, :K])
    assert_close(variances, raw[:, K:].clamp(min=0) + 1e-6)
    assert_close(means.mean(0), r["means"])  # the original averages both over the batch
    assert_close(variances.mean(0), r["variances"])


@pytest.mark.parametrize("t", ROUNDS)
def test_weight_head(fx, model, t):
    r = fx["rounds"][t]
    with torch.no_grad():
        out = model.weight_head(r["weight_head_input"])
    assert_close(out, r["weight_head_output"])
    batch = out.mean(0)
    assert_close(batch / batch.sum(), r["weights"])


@pytest.mark.parametrize("t", ROUNDS)
def test_latent_and_fusion(fx, model, t):
    r = fx["rounds"][t]
    b = r["latent"].shape[0]
    z = mixture_latent(*(r[k].expand(b, -1) for k in ("weights", "means", "variances")), latent_dim=64)
    assert_close(z, r["latent"])
    assert model.fcomb.layout == "reference"
    with torch.no_grad():
        assert_close(model.fcomb(fx["sam_embedding"], r["latent"]), r["fused_embedding"])


@pytest.mark.parametrize("t", ROUNDS)
def test_mask_decoder_reference_block(fx, model, t):
    r = fx["rounds"][t]
    with torch.no_grad():
        low, iou = model.mask_decoder(r["fused_embedding"], fx["dense_pe"], r["sparse"], r["dense"], False)
    assert_close(low, r["low_res_logits"], LOGIT_TOL)
    assert_close(iou, r["iou_pred"])


@pytest.fixture(scope="module")
def official_block_model(container):
    return load(container, decoder_block="official")  # same parameter names: the same checkpoint loads


@pytest.mark.parametrize("t", ROUNDS)
def test_official_block_does_not_reproduce_the_original(fx, official_block_model, t):
    r = fx["rounds"][t]
    with torch.no_grad():
        low, _ = official_block_model.mask_decoder(r["fused_embedding"], fx["dense_pe"], r["sparse"], r["dense"], False)
    assert (low - r["low_res_logits"]).abs().max() > 0.5  # measured 1.9 to 4.1


def reference_probs(model: AESPAModel, low: torch.Tensor) -> torch.Tensor:
    """The model's output step under the reference protocol: its upsampling, then Decoded's probabilities."""
    return Decoded(low, model.upscale(low), raw_in_unit=model.reference_protocol).probs


@pytest.mark.parametrize("t", ROUNDS)
def test_probabilities(fx, model, t):
    r = fx["rounds"][t]
    assert r["sigmoid_applied"] == 1
    assert_close(reference_probs(model, r["low_res_logits"]), r["probs"])


def test_probabilities_stay_raw_inside_unit_interval(model):
    low = torch.tensor([[[[0.2, 0.9], [0.0, 1.0]]]])  # 1x1x2x2, every value in [0, 1]: no sigmoid
    nearest = low.repeat_interleave(32, 2).repeat_interleave(32, 3)  # 64 px: each value a 32 x 32 block
    assert torch.equal(reference_probs(model, low), nearest)
    assert torch.equal(reference_probs(model, low - 0.5), torch.sigmoid(nearest - 0.5))


@pytest.mark.parametrize("t", ROUNDS)
def test_responsibilities(fx, t):
    r = fx["rounds"][t]
    b = r["probs"].shape[0]
    w, mu, var = r["weights"], r["means"], r["variances"]
    # The log-space version equals the original where its float32 densities are representable: check that
    # no pixel has all K densities underflowing (the original would give it zero weight).
    dens = w * torch.exp(torch.distributions.Normal(mu, var.sqrt()).log_prob(r["probs"].reshape(b, -1, 1)))
    assert (dens.sum(-1) > 0).all()
    assert_close(responsibilities(r["probs"], w.expand(b, -1), mu.expand(b, -1), var.expand(b, -1)), r["em"])


# --- the padding point of an empty point set (official SAM) ------------------------------------------


@pytest.fixture(scope="module")
def official_sam(tmp_path_factory):
    parity = torch.load(DATA / "sam_tiny_parity.pt", weights_only=True)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    torch.save(parity["state_dict"], path)
    return build_sam_from_config(parity["config"], checkpoint=str(path)).eval(), parity


def test_empty_point_set_gets_the_padding_token(official_sam):
    """Official SAM pads any point set with a (0, 0) point labelled -1 when no box is given; its embedding does
    not depend on the other points, so the official output's last token is the whole answer for 0 points."""
    sam, parity = official_sam
    b = parity["inputs"]["points_xy"].shape[0]
    with torch.no_grad():
        sparse, _ = sam.prompt_encoder(
            points=(torch.zeros(b, 0, 2), torch.zeros(b, 0, dtype=torch.long)), boxes=None, masks=None
        )
        none, _ = sam.prompt_encoder(points=None, boxes=None, masks=None)
    assert_close(sparse, parity["outputs"]["sparse_points_mask"][:, -1:])
    assert none.shape == parity["outputs"]["sparse_no_prompt"].shape  # no points at all: no token
