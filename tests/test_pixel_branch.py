"""The pixel branch (models/pixel_branch.py): folding, the zero start, gradients, configuration and loading."""

import pytest
import torch

from cfg import make_config
from engine.config import config_from_flags
from engine.optim import build_optimizer
from models import AESPAModel, aespa_config, build_model, build_sam_from_config, sam_config
from models.pixel_branch import FOLDED_CHANS, fold_pixels, unfold_pixels


def model_pair(seed=0):
    """The same tiny model without and with the branch (every shared tensor equal)."""
    torch.manual_seed(seed)
    plain = AESPAModel(aespa_config(sam_config("vit_t", 64), 8)).eval()
    torch.manual_seed(seed)
    branched = AESPAModel(aespa_config(sam_config("vit_t", 64), 8, pixel_branch="unet")).eval()
    missing, unexpected = branched.load_state_dict(plain.state_dict(), strict=False)
    assert unexpected == [] and missing and all(k.startswith("pixel_branch.") for k in missing)
    return plain, branched


def clicks(b):
    g = torch.Generator().manual_seed(1)
    return torch.rand(b, 2, 2, generator=g) * 63, torch.tensor([[1, 0]] * b)


def test_fold_then_unfold_is_the_image_at_the_mask_features_size():
    images = torch.rand(2, 3, 16, 16)
    folded = fold_pixels(images, 4)  # G = 4: the mask features are 16x16, the image's own size
    assert folded.shape == (2, FOLDED_CHANS, 4, 4)
    assert torch.equal(unfold_pixels(folded), images)
    # each grid cell carries its own 4x4 block: cell (1, 2) of channel 0 is pixel (4, 8) of the red plane
    assert folded[0, 0, 1, 2] == images[0, 0, 4, 8]
    # a larger image is averaged down to 4G (area): 2x2 blocks of a 32-px image
    big = torch.rand(1, 3, 32, 32)
    expected = big.reshape(1, 3, 16, 2, 16, 2).mean((3, 5))
    torch.testing.assert_close(unfold_pixels(fold_pixels(big, 4)), expected)


def test_a_new_branch_changes_nothing_and_a_trained_one_does():
    plain, branched = model_pair()
    images = torch.rand(2, 3, 64, 64)
    points, labels = clicks(2)
    with torch.no_grad():
        a = plain(images, points, labels)["logits"]
        b = branched(images, points, labels)["logits"]
        assert torch.equal(a, b)  # the branch's last layer starts at zero
        torch.nn.init.normal_(branched.pixel_branch.out.weight, std=0.1)
        c = branched(images, points, labels)["logits"]
    assert (c - a).abs().max() > 1e-3


def test_the_branch_learns_in_the_network_step():
    _, model = model_pair()
    model.train()
    optimizer = build_optimizer(model, 1e-3)
    network = next(g for g in optimizer.param_groups if g["name"] == "network")
    ids = {id(p) for p in network["params"]}
    assert all(id(p) in ids for p in model.pixel_branch.parameters())
    images, target = torch.rand(2, 3, 64, 64), (torch.rand(2, 1, 64, 64) > 0.5).float()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(images)["logits"], target)
    loss.backward()
    # at the zero start only the last layer has a gradient (the rest reaches the mask through it)
    assert model.pixel_branch.out.weight.grad.abs().sum() > 0
    before = model.pixel_branch.out.weight.detach().clone()
    optimizer.step()
    assert not torch.equal(before, model.pixel_branch.out.weight)


def test_latent_samples_see_the_same_pixels():
    """decode_round with M samples runs the branch once per image: sample m equals the one-sample decode."""
    _, model = model_pair()
    torch.nn.init.normal_(model.pixel_branch.out.weight, std=0.1)
    images = torch.rand(2, 3, 64, 64)
    eps = torch.randn(2, 3, model.latent_dim)
    with torch.no_grad():
        features = model.image_features(images)
        prompts = model.prompt(2)
        many = model.decode_round(features, prompts, eps).logits
        for m in range(3):
            one = model.decode_round(features, prompts, eps[:, m : m + 1]).logits
            torch.testing.assert_close(many[:, m], one[:, 0])


def test_features_without_their_pixels_are_refused():
    plain, branched = model_pair()
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad(), pytest.raises(ValueError, match="expected .* the folded pixels"):
        branched.decode_round(plain.image_features(images), branched.prompt(1))
    with torch.no_grad(), pytest.raises(ValueError, match="channels"):
        plain.decode_round(branched.image_features(images), plain.prompt(1))


def test_sam_weights_load_with_a_fresh_branch(tmp_path):
    sam = build_sam_from_config(sam_config("vit_t", 64))
    torch.save(sam.state_dict(), tmp_path / "sam.pth")
    model, report = build_model("vit_t", 64, n_components=8, checkpoint=str(tmp_path / "sam.pth"), pixel_branch="unet")
    fresh = {k for k in report.initialised if k.startswith("pixel_branch.")}
    assert fresh == {f"pixel_branch.{k}" for k in model.pixel_branch.state_dict()}


@pytest.mark.parametrize(
    "flags, expected",
    [
        ([], "unet"),  # the default: LiteMedSAM, frozen
        (["-pixel_branch", "none"], "none"),
        (["-sam_ckpt", "none"], "none"),  # vit_t from scratch, its encoder trained
        (["-sam_ckpt", "none", "-freeze_encoder", "yes"], "unet"),
        (["-sam_ckpt", "none", "-pixel_branch", "unet"], "unet"),
    ],
)
def test_auto_means_a_branch_with_a_frozen_encoder(flags, expected):
    assert make_config(flags, "train", prog="train.py").config.model.pixel_branch == expected


@pytest.mark.parametrize(
    "flags, expected",
    [
        ([], "flip"),  # the default: all eight symmetries, also with a frozen encoder
        (["-sam_ckpt", "none"], "flip"),
        (["-augment", "mirror"], "mirror"),
        (["-augment", "none"], "none"),
    ],
)
def test_augment_flag(flags, expected):
    assert make_config(flags, "train", prog="train.py").config.data.augment == expected


def test_records_of_older_versions_had_no_branch():
    assert config_from_flags({"encoder": "lite_medsam"}).model.pixel_branch == "none"
    assert config_from_flags({"encoder": "lite_medsam"}).data.augment == "flip"  # and the eight symmetries
    assert config_from_flags({"pixel_branch": "unet"}).model.pixel_branch == "unet"
