"""The SAM parts against outputs of the official segment-anything 1.0 code (tests/data/sam_tiny_parity.pt)."""

import json
from pathlib import Path

import pytest
import torch

from models import build_sam_from_config, sam_config

DATA = Path(__file__).parent / "data"
TOL = 1e-5


@pytest.fixture(scope="module")
def parity():
    return torch.load(DATA / "sam_tiny_parity.pt", weights_only=True)


@pytest.fixture(scope="module")
def sam(parity, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    torch.save(parity["state_dict"], path)
    return build_sam_from_config(parity["config"], checkpoint=str(path)).eval()


def close(a, b):
    assert a.shape == b.shape
    return (a - b).abs().max().item() <= TOL


def test_image_encoder(parity, sam):
    image = parity["inputs"]["image_uint8"].float() / 255
    with torch.no_grad():
        assert close(sam.image_encoder(image), parity["outputs"]["image_embeddings"])


def test_prompt_encoder(parity, sam):
    inp, out = parity["inputs"], parity["outputs"]
    pe = sam.prompt_encoder
    with torch.no_grad():
        sparse, dense = pe(points=(inp["points_xy"], inp["point_labels"]), boxes=None, masks=inp["mask_input"])
        assert close(sparse, out["sparse_points_mask"]) and close(dense, out["dense_points_mask"])
        sparse, dense = pe(points=None, boxes=inp["boxes_xyxy"], masks=None)
        assert close(sparse, out["sparse_box"]) and close(dense, out["dense_no_mask"])
        sparse, _ = pe(points=None, boxes=None, masks=None)
        assert sparse.shape == out["sparse_no_prompt"].shape
        assert close(pe.get_dense_pe(), out["dense_pe"])


@pytest.mark.parametrize("shape", ["Bx4", "Bx1x4"])
def test_box_prompt_in_both_of_sams_shapes(parity, sam, shape):
    """SAM reshapes any (..., 4) box tensor into corners; MedSAM's inference passes Bx1x4. Both give official SAM's
    tokens (recorded from Bx4), and a NaN box (this project's "no box for this image") gives padding tokens."""
    inp, out = parity["inputs"], parity["outputs"]
    boxes = inp["boxes_xyxy"] if shape == "Bx4" else inp["boxes_xyxy"][:, None, :]
    pe = sam.prompt_encoder
    with torch.no_grad():
        sparse, dense = pe(points=None, boxes=boxes, masks=None)
        assert close(sparse, out["sparse_box"]) and close(dense, out["dense_no_mask"])
        holed = boxes.clone()
        holed[1] = float("nan")
        sparse, _ = pe(points=None, boxes=holed, masks=None)
    assert close(sparse[:1], out["sparse_box"][:1])
    padding = pe.not_a_point_embed.weight.expand(2, -1)
    assert torch.equal(sparse[1], padding)


def test_box_tensor_with_several_boxes_per_image_is_refused(parity, sam):
    boxes = parity["inputs"]["boxes_xyxy"][:, None, :].expand(-1, 2, -1)
    with pytest.raises(ValueError, match=r"Bx4 or Bx1x4.*\(2, 2, 4\)"):
        sam.prompt_encoder(points=None, boxes=boxes, masks=None)


@pytest.mark.parametrize("multimask, suffix", [(False, "single"), (True, "multi")])
def test_mask_decoder_batched(parity, sam, multimask, suffix):
    out = parity["outputs"]
    with torch.no_grad():
        masks, iou = sam.mask_decoder(
            image_embeddings=out["image_embeddings"],
            image_pe=out["dense_pe"],
            sparse_prompt_embeddings=out["sparse_points_mask"],
            dense_prompt_embeddings=out["dense_points_mask"],
            multimask_output=multimask,
        )
    assert close(masks, out[f"low_res_masks_{suffix}"])
    assert close(iou, out[f"iou_{suffix}"])


def test_end_to_end_predict(parity, sam):
    """Image, clicks and mask prompt through all three parts: image b decoded with prompt set b."""
    inp, out = parity["inputs"], parity["outputs"]
    with torch.no_grad():
        masks, _ = sam.predict(
            inp["image_uint8"].float() / 255,
            points=(inp["points_xy"], inp["point_labels"]),
            mask_input=inp["mask_input"],
        )
    # Encoder differences (<= 1e-5) propagate through the decoder, hence a slightly wider tolerance here.
    assert (masks - out["low_res_masks_single"]).abs().max().item() < 1e-4


def test_vit_b_has_the_official_keys_and_shapes():
    expected = json.loads((DATA / "sam_vit_b_state_dict_shapes.json").read_text())
    with torch.device("meta"):
        sam = build_sam_from_config(sam_config("vit_b", 1024))
    got = {k: list(v.shape) for k, v in sam.state_dict().items()}
    assert len(expected) == 314
    assert got == expected
