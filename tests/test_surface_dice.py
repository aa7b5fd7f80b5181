"""Normalised surface Dice and the challenge's click-curve metrics (docs/metrics.md#surface-dice,
docs/metrics.md#interactive): `surface_dice` against MONAI's `compute_surface_dice` on a table of 2-D and 3-D cases
(anisotropic spacing, masks touching the border, per-sample spacing in one batch), tiny cases computed by hand, the
empty-mask rules, a 3-D case with its spacing from an affine; `click_auc` against scipy's trapezoid as the CVPR 2025
evaluator calls it; the sample spacing the loaders give; NSD and the AUCs in validation."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from datatrees import write_lidc_tree, write_refuge_tree
from scipy.integrate import cumulative_trapezoid

from dataset import build_dataset
from interaction.validation import AUC_CLICKS, click_curve_metrics, surface_metrics
from multirater_metrics import NSD_TOLERANCE, boundary, click_auc, spacing_of, surface_dice, surface_dice_case

monai_metrics = pytest.importorskip("monai.metrics")


def monai_nsd(pred: torch.Tensor, ref: torch.Tensor, spacing, tolerance: float) -> float:
    """MONAI's NSD of one pair of binary masks (its one-hot, background-excluded form)."""
    pred, ref = (torch.stack([~m, m])[None].float() for m in (pred, ref))  # 1x2xspatial: background, foreground
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its warnings about empty masks
        value = monai_metrics.compute_surface_dice(pred, ref, [tolerance], spacing=list(spacing))
    return float(value[0, 0])


def blob(shape: tuple[int, ...], seed: int, level: float = 0.5) -> torch.Tensor:
    """A smooth random mask (noise averaged over a 3-wide window, thresholded): blobs with holes and many edges."""
    noise = torch.rand((1, 1, *shape), generator=torch.Generator().manual_seed(seed))
    pool = F.avg_pool2d if len(shape) == 2 else F.avg_pool3d
    return pool(noise, 3, 1, 1)[0, 0] > level


def square(size: int, rows: range, cols: range) -> torch.Tensor:
    out = torch.zeros(size, size, dtype=torch.bool)
    out[rows.start : rows.stop, cols.start : cols.stop] = True
    return out


CASES_2D = [  # (shape, seed of pred, seed of ref, spacing (row, col) mm, tolerance mm)
    ((20, 23), 1, 2, (1.0, 1.0), 2.0),
    ((20, 23), 3, 4, (1.0, 1.0), 0.0),
    ((20, 23), 5, 6, (0.4, 1.7), 1.0),
    ((16, 16), 7, 8, (2.5, 0.5), 2.0),
    ((31, 12), 9, 10, (0.7, 0.7), 3.5),
    ((24, 24), 11, 11, (1.3, 0.9), 0.0),  # identical masks
]


@pytest.mark.parametrize("shape, seed_p, seed_r, spacing, tolerance", CASES_2D)
def test_2d_against_monai(shape, seed_p, seed_r, spacing, tolerance):
    pred, ref = blob(shape, seed_p), blob(shape, seed_r)
    ours = surface_dice(pred[None], ref[None], spacing, tolerance)
    assert ours.shape == (1,) and ours.dtype == torch.float32
    assert float(ours[0]) == pytest.approx(monai_nsd(pred, ref, spacing, tolerance), abs=1e-6)


@pytest.mark.parametrize("spacing, tolerance", [((1.0, 1.0, 1.0), 1.5), ((3.0, 0.8, 0.6), 2.0), ((0.5, 2.0, 1.1), 0.0)])
def test_3d_against_monai(spacing, tolerance):
    pred, ref = blob((7, 12, 10), 21, 0.52), blob((7, 12, 10), 22, 0.52)
    ours = float(surface_dice(pred[None], ref[None], spacing, tolerance)[0])
    assert ours == pytest.approx(monai_nsd(pred, ref, spacing, tolerance), abs=1e-6)


def test_a_batch_with_a_spacing_per_sample_scores_each_sample_as_alone():
    """Per-sample kernels padded to the widest: each row equals MONAI's value with that row's spacing."""
    preds = torch.stack([blob((18, 18), s) for s in (31, 32, 33)])
    refs = torch.stack([blob((18, 18), s) for s in (41, 42, 43)])
    spacing = torch.tensor([[1.0, 1.0], [0.3, 2.2], [4.0, 0.6]])
    ours = surface_dice(preds, refs, spacing, 2.0)
    expected = [monai_nsd(p, r, s.tolist(), 2.0) for p, r, s in zip(preds, refs, spacing)]
    assert ours.tolist() == pytest.approx(expected, abs=1e-6)


def test_masks_touching_the_border_and_single_pixels():
    """The outside of the grid is background: a mask filling a border row has that row as boundary."""
    full = torch.zeros(6, 6, dtype=torch.bool)
    full[:, :3] = True  # the left half, touching three borders
    dot = torch.zeros(6, 6, dtype=torch.bool)
    dot[0, 0] = True
    for pred, ref in ((full, dot), (dot, full), (full, full.flip(1))):
        ours = float(surface_dice(pred[None], ref[None], (1.0, 1.0), 1.0)[0])
        assert ours == pytest.approx(monai_nsd(pred, ref, (1.0, 1.0), 1.0), abs=1e-6)


def test_hand_computed_shifted_squares():
    """A 3x3 square and the same square one column to the right: 8 boundary pixels each, 4 shared.

    Tolerance 0: the 4 shared on each side -> 8/16. Tolerance 1 mm, spacing 1: every boundary pixel has one of the
    other square's within 1 px -> 1. Spacing (1, 2) mm (rows, columns), tolerance 1: a column step is 2 mm; A keeps
    the 4 shared and (2,3), whose row neighbours (1,3), (3,3) are B's boundary at 1 mm -> 5; B keeps the 4 shared and
    (2,2) -> 5: 10/16. Tolerance 2 mm, same spacing: A's left column is 2 mm from B's (exactly the tolerance, which
    counts) -> 1.
    """
    a = square(8, range(1, 4), range(1, 4))
    b = square(8, range(1, 4), range(2, 5))
    assert int(boundary(a, 2).sum()) == 8 and not bool(boundary(a, 2)[2, 2])  # the centre is interior
    cases = [((1.0, 1.0), 0.0, 0.5), ((1.0, 1.0), 1.0, 1.0), ((1.0, 2.0), 1.0, 10 / 16), ((1.0, 2.0), 2.0, 1.0)]
    for spacing, tolerance, expected in cases:
        assert float(surface_dice(a[None], b[None], spacing, tolerance)[0]) == pytest.approx(expected, abs=1e-7)
        assert float(surface_dice(b[None], a[None], spacing, tolerance)[0]) == pytest.approx(expected, abs=1e-7)


def test_empty_masks():
    """Both empty: 1 (as Dice; MONAI returns NaN there); one empty: 0, whatever the tolerance."""
    empty, dot = torch.zeros(5, 5), torch.zeros(5, 5)
    dot[2, 2] = 1.0
    pred = torch.stack([empty, empty, dot, dot])
    ref = torch.stack([empty, dot, empty, dot])
    assert surface_dice(pred, ref, tolerance=100.0).tolist() == [1.0, 0.0, 0.0, 1.0]
    assert torch.isnan(torch.tensor(monai_nsd(empty > 0, empty > 0, (1.0, 1.0), 1.0)))


def test_probabilities_are_binarised_and_bad_arguments_refused():
    probs = torch.full((1, 4, 4), 0.4)
    probs[0, 1:3, 1:3] = 0.6
    mask = probs > 0.5
    assert float(surface_dice(probs, mask.float())[0]) == 1.0
    with pytest.raises(ValueError, match="tolerance"):
        surface_dice(mask, mask, tolerance=-1.0)
    with pytest.raises(ValueError, match="spacing"):
        surface_dice(mask, mask, spacing=(1.0, 0.0))
    with pytest.raises(ValueError, match="shape"):
        surface_dice(mask, mask[:, :3])


def test_a_3d_case_takes_its_spacing_from_the_affine():
    """Axes permuted and flipped in the affine: the column lengths are the spacing; cropping changes nothing."""
    pred = torch.zeros(30, 40, 12, dtype=torch.bool)
    ref = torch.zeros_like(pred)
    pred[10:16, 12:20, 4:8] = True
    ref[11:17, 12:21, 5:8] = True
    affine = np.array([[0.0, 0.0, -3.0, 10.0], [0.8, 0.0, 0.0, -5.0], [0.0, 0.6, 0.0, 2.0], [0.0, 0.0, 0.0, 1.0]])
    assert spacing_of(affine) == pytest.approx((0.8, 0.6, 3.0))
    ours = surface_dice_case(pred.numpy().astype(np.uint8), ref.numpy(), affine)
    assert ours == pytest.approx(monai_nsd(pred, ref, (0.8, 0.6, 3.0), NSD_TOLERANCE), abs=1e-6)
    assert surface_dice_case(np.zeros((4, 4, 4)), np.zeros((4, 4, 4)), np.eye(4)) == 1.0


def test_click_auc_is_the_challenge_trapezoid():
    """The CVPR 2025 evaluator: cumulative_trapezoid(scores of the 5 click predictions, arange(5))[-1]."""
    curves = torch.tensor([[0.2, 0.4, 0.6, 0.8, 1.0], [0.9, 0.1, 0.5, 0.5, 0.0], [1.0] * 5])
    expected = [cumulative_trapezoid(c.numpy(), np.arange(5))[-1] for c in curves]
    assert click_auc(curves).tolist() == pytest.approx(expected, abs=1e-6)
    assert click_auc(curves)[0] == pytest.approx(2.4) and click_auc(curves)[2] == pytest.approx(4.0)
    with pytest.raises(ValueError):
        click_auc(torch.ones(3, 1))


def _rounds(values: list[float]) -> list[dict[str, torch.Tensor]]:
    return [{"Dice_follow": torch.tensor([v]), "NSD_follow": torch.tensor([v / 2])} for v in values]


def test_click_curves_use_the_predictions_made_with_one_to_five_clicks():
    """AESPA's rounds use 0..5 clicks (the first, with none, is left out); SPA's 1..6 (the sixth is left out)."""
    dice = [0.1, 0.2, 0.4, 0.6, 0.8, 1.0]
    aespa = click_curve_metrics(_rounds(dice), [0, 1, 2, 3, 4, 5])
    assert float(aespa["DSC_AUC"]) == pytest.approx(0.3 + 0.5 + 0.7 + 0.9)  # rounds 2..6
    assert float(aespa["NSD_AUC"]) == pytest.approx((0.3 + 0.5 + 0.7 + 0.9) / 2)
    assert float(aespa["DSC_Final"]) == pytest.approx(1.0) and float(aespa["NSD_Final"]) == pytest.approx(0.5)
    spa = click_curve_metrics(_rounds(dice), [1, 2, 3, 4, 5, 6])
    assert float(spa["DSC_AUC"]) == pytest.approx(0.15 + 0.3 + 0.5 + 0.7) and float(spa["DSC_Final"]) == pytest.approx(
        0.8
    )
    assert AUC_CLICKS == 5 and click_curve_metrics(_rounds(dice[:3]), [0, 1, 2]) == {}  # too few clicks: none


def test_samples_carry_the_spacing_of_their_grid(tmp_path, monkeypatch):
    """1 native pixel = 1 unit unless the layout knows better; resizing to S scales it by native size / S."""
    lidc = build_dataset("LIDC", write_lidc_tree(tmp_path / "lidc", size=32), "train", 16, val_fraction=0)
    assert lidc[0]["spacing"].tolist() == [2.0, 2.0]
    refuge = build_dataset("REFUGE", write_refuge_tree(tmp_path / "refuge", size=(40, 48)), "train", 16, val_fraction=0)
    assert refuge[0]["spacing"].tolist() == [2.5, 3.0]
    known = [r.__class__(**{**r.__dict__, "spacing": (0.5, 0.75)}) for r in lidc.records]
    lidc.records = known
    assert lidc[0]["spacing"].tolist() == [1.0, 1.5]


def test_validation_scores_each_row_in_its_image_spacing():
    """A batch of two images with different spacings, followed by three rows (rows 0, 0, 1)."""
    preds = torch.stack([blob((16, 16), s) for s in (51, 52, 53)]).float()
    followed = torch.stack([blob((16, 16), s) for s in (61, 62, 63)]).float()
    batch = SimpleNamespace(spacing=torch.tensor([[1.0, 1.0], [0.5, 2.0]]))
    user = SimpleNamespace(rows=torch.tensor([0, 0, 1]), followed=followed)
    values = surface_metrics(batch, user, preds)["NSD_follow"]
    spacings = [(1.0, 1.0), (1.0, 1.0), (0.5, 2.0)]
    expected = [monai_nsd(p > 0.5, f > 0.5, s, NSD_TOLERANCE) for p, f, s in zip(preds, followed, spacings)]
    assert values.tolist() == pytest.approx(expected, abs=1e-6)
    unknown = surface_metrics(SimpleNamespace(spacing=None), user, preds)["NSD_follow"]
    assert unknown[2] == pytest.approx(monai_nsd(preds[2] > 0.5, followed[2] > 0.5, (1.0, 1.0), NSD_TOLERANCE))
