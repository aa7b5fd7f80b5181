"""Tests of multirater_metrics: hand-computed 4x4 cases, properties, MONAI agreement, NoC, accumulator.

Named 4x4 masks of the hand-computed cases (rows top to bottom):
  A  = 1100/1100/0000/0000  (4 px)        B  = 1111/0000/0000/0000  (4 px)   A∩B = 2 px, A∪B = 6 px
  B3 = 1110/0000/0000/0000  (3 px, ⊂ B)   C  = 0000/0000/0011/0011  (4 px, disjoint from A, B, B3)
  D  = 0000/0000/1111/0000  (4 px, disjoint from A, B, B3)          E  = empty
Pairwise values used below:  dice(A,B) = 2·2/8 = 1/2, iou(A,B) = 2/6 = 1/3;  dice(B,B3) = 2·3/7 = 6/7,
iou(B,B3) = 3/4;  dice(A,B3) = 2·2/7 = 4/7, iou(A,B3) = 2/5;  disjoint non-empty pairs: dice ≈ 0
(1e-8/8), iou = 0;  empty vs empty: dice = 1, iou = 0 (so d = 1 − iou = 1, the challenge's rule).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from scipy.optimize import linear_sum_assignment

from engine.distributed import choose_device
from multirater_metrics import (
    SET_KEYS,
    MetricAccumulator,
    dice,
    iou,
    neutral_mask,
    noc,
    pairwise_dice,
    pairwise_iou,
    personalised_metrics,
    set_metrics,
)

TOL = 1e-6


def mask(rows: str) -> torch.Tensor:
    """'1100/1100/0000/0000' -> 4x4 float mask."""
    return torch.tensor([[float(c) for c in row] for row in rows.split("/")])


A, B, B3 = mask("1100/1100/0000/0000"), mask("1111/0000/0000/0000"), mask("1110/0000/0000/0000")
C, D, E = mask("0000/0000/0011/0011"), mask("0000/0000/1111/0000"), torch.zeros(4, 4)
# probabilities: 0.95 on A∩B, 0.4 on A\B -> binarised (> 0.5) it is A∩B
PROB = 0.95 * A * B + 0.4 * A * (1 - B)

# name: (predictions, raters, valid or None, expected GED, Dice_max, Dice_max_reverse, Dice_match, Dice_soft)
SET_CASES = {
    # nothing anywhere: GED 0 by rule; every dice is empty-vs-empty = 1; mean maps empty at every t -> 1
    "all_empty": ([E, E], [E, E, E], None, 0.0, 1.0, 1.0, 1.0, 1.0),
    # predictions empty, a rater not: GED 1 by rule; dice(E, A) ≈ 0 everywhere; mean(P) empty vs A at every t -> 0
    "pred_set_empty": ([E, E], [A], None, 1.0, 0.0, 0.0, 0.0, 0.0),
    "rater_set_empty": ([A], [E, E], None, 1.0, 0.0, 0.0, 0.0, 0.0),
    # same set in another order: d(p,l) = d(l,l) = d(p,p) = (0 + 2/3 + 2/3 + 0)/4 = 1/3 -> GED 2/3 - 1/3 - 1/3 = 0;
    # each mask has its twin -> dice 1; mean maps identical -> Dice_soft 1
    "identical_sets": ([A, B], [B, A], None, 0.0, 1.0, 1.0, 1.0, 1.0),
    # disjoint: GED = 2·1 - 0 - 0 = 2; every dice ≈ 0; mean maps A vs C at every t -> 0
    "disjoint": ([A], [C], None, 2.0, 0.0, 0.0, 0.0, 0.0),
    # one rater, one prediction: d = 2/3 -> GED 4/3; dice 1/2; mean maps A vs B at every t -> 1/2
    "single_rater": ([A], [B], None, 4 / 3, 0.5, 0.5, 0.5, 0.5),
    # R > M: d(p,l) = (0 + 2/3)/2 = 1/3, d(l,l) = (2/3·2)/4 = 1/3, d(p,p) = 0 -> GED 2/3 - 1/3 = 1/3;
    # Dice_max = 1; reverse = (1 + 1/2)/2 = 3/4;
    # match: rater A gets A (1), rater B unassigned takes its best (1/2) -> 3/4;
    # soft: mean(L) = 1 on A∩B, 1/2 on AΔB; t=.1,.3: A vs A∪B = 8/10; t=.5,.7,.9: A vs A∩B = 4/6
    # -> (1.6 + 2)/5 = 0.72
    "more_raters": ([A], [A, B], None, 1 / 3, 1.0, 0.75, 0.75, 0.72),
    # R < M: d(p,l) = (0 + 2/3 + 2/3 + 0 + 1 + 1)/6 = 5/9, d(l,l) = 1/3, d(p,p) = (4/3 + 4)/9 = 16/27
    # -> GED 10/9 - 1/3 - 16/27 = 5/27; Dice_max = (1 + 1 + 0)/3; reverse 1; match A-A, B-B -> 1;
    # soft: mean(P) = 2/3 on A∩B, 1/3 on AΔB and C; mean(L) = 1 on A∩B, 1/2 on AΔB;
    # t=.1,.3: 10 px vs 6 px, overlap 6 -> 12/16; t=.5: A∩B vs A∩B -> 1; t=.7,.9: empty vs A∩B -> 0 => 2.5/5
    "fewer_raters": ([A, B, C], [A, B], None, 5 / 27, 2 / 3, 1.0, 1.0, 0.5),
    # both raters prefer B3: best per rater 6/7 and 1 (reverse 13/14) but the assignment gives B3 to rater B3 and
    # D to rater B (1 + 0 > 6/7 + 0) -> match 1/2; Dice_max = (1 + 0)/2;
    # GED: d(p,l) = (1/4 + 0 + 1 + 1)/4 = 9/16, d(l,l) = (2·1/4)/4 = 1/8, d(p,p) = 2/4 -> 9/8 - 1/8 - 1/2 = 1/2;
    # soft: mean(P) = 1/2 on B3 and D; mean(L) = 1 on B3, 1/2 on B\B3; t=.1,.3: 7 px vs 4 px, overlap 3 -> 6/11;
    # t >= .5: mean(P) is never > t -> empty vs B3 -> 0  =>  2·(6/11)/5 = 12/55
    "assignment_not_greedy": ([B3, D], [B, B3], None, 0.5, 0.5, 13 / 14, 0.5, 12 / 55),
    # the invalid third rater (C) must change nothing: same numbers as identical_sets
    "invalid_rater_ignored": ([A, B], [B, A, C], [True, True, False], 0.0, 1.0, 1.0, 1.0, 1.0),
    # an empty member counts with iou(E,E) = 0: d(p,l) = (0 + 1)/2, d(l,l) = 0, d(p,p) = (0 + 1 + 1 + 1)/4
    # -> GED 1 - 3/4 = 1/4; Dice_max (1 + 0)/2; reverse 1; match 1;
    # soft: mean(P) = 1/2 on A -> t=.1,.3: 1, else 0 -> 2/5
    "empty_member": ([A, E], [A], None, 0.25, 0.5, 1.0, 1.0, 0.4),
    # probabilities: binarised A∩B vs A: iou 1/2 -> GED 2·1/2 = 1; dice 4/6 = 2/3;
    # soft on raw values: t=.1,.3: A vs A = 1; t=.5,.7,.9: A∩B vs A = 2/3 -> (2 + 2)/5 = 0.8
    "probabilities": ([PROB], [A], None, 1.0, 2 / 3, 2 / 3, 2 / 3, 0.8),
    # the same prediction already binarised: soft is 2/3 at every t
    "binary_of_probabilities": ([A * B], [A], None, 1.0, 2 / 3, 2 / 3, 2 / 3, 2 / 3),
}


def _stack(masks, n: int) -> torch.Tensor:
    """Masks -> n x 4 x 4, padded with random junk (never valid)."""
    junk = (torch.rand(n - len(masks), 4, 4, generator=torch.Generator().manual_seed(n)) > 0.5).float()
    return torch.cat([torch.stack(masks), junk])


def _expected(case) -> dict[str, float]:
    return dict(zip(SET_KEYS, case[3:]))


@pytest.mark.parametrize("name", list(SET_CASES))
def test_set_metrics_hand_cases(name):
    preds, raters, valid, *_ = SET_CASES[name]
    valid_t = None if valid is None else torch.tensor([valid])
    out = set_metrics(torch.stack(preds)[None], torch.stack(raters)[None], valid_t)
    assert list(out) == list(SET_KEYS)
    for key, want in _expected(SET_CASES[name]).items():
        assert out[key].shape == (1,)
        assert out[key].item() == pytest.approx(want, abs=TOL), key


def test_set_metrics_batches_images_with_different_valid_raters():
    """All cases with the same M in one batch, raters padded with invalid junk to a common R."""
    by_m: dict[int, list] = {}
    for case in SET_CASES.values():
        by_m.setdefault(len(case[0]), []).append(case)
    for cases in by_m.values():
        n = max(len(c[1]) for c in cases) + 1  # at least one padded rater per image
        preds = torch.stack([torch.stack(c[0]) for c in cases])  # BxMx4x4
        raters = torch.stack([_stack(c[1], n) for c in cases])  # Bxnx4x4
        valid = torch.zeros(len(cases), n, dtype=torch.bool)
        for b, c in enumerate(cases):
            valid[b, : len(c[1])] = torch.tensor(c[2] if c[2] is not None else [True] * len(c[1]))
        out = set_metrics(preds, raters[:, :, None], valid)  # BxRx1xHxW accepted too
        for b, c in enumerate(cases):
            for key, want in _expected(c).items():
                assert out[key][b].item() == pytest.approx(want, abs=TOL), key


def test_set_metrics_input_errors():
    with pytest.raises(ValueError, match="no valid rater"):
        set_metrics(torch.zeros(2, 1, 4, 4), torch.zeros(2, 2, 4, 4), torch.tensor([[True, False], [False, False]]))
    with pytest.raises(ValueError, match="raters"):
        set_metrics(torch.zeros(1, 1, 4, 4), torch.zeros(1, 2, 5, 4))
    with pytest.raises(ValueError, match="preds"):
        set_metrics(torch.zeros(1, 4, 4), torch.zeros(1, 2, 4, 4))
    with pytest.raises(ValueError, match="M = 0"):
        set_metrics(torch.zeros(1, 0, 4, 4), torch.zeros(1, 2, 4, 4))


def test_set_metrics_ignores_autocast():
    """Overlap counts above 256 would be rounded by a bf16 matrix product."""
    g = torch.Generator().manual_seed(0)
    preds, raters = torch.rand(2, 3, 40, 40, generator=g), (torch.rand(2, 3, 40, 40, generator=g) > 0.3).float()
    plain = set_metrics(preds, raters)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = set_metrics(preds, raters)
    for key in SET_KEYS:
        assert under[key].dtype == torch.float32
        torch.testing.assert_close(under[key], plain[key])


# ------------------------------------------------------------------------------------------------
# Properties on random masks


def random_masks(seed: int, b: int, k: int, size: int = 8) -> torch.Tensor:
    """BxKxSxS binary masks of random densities (some empty)."""
    g = torch.Generator().manual_seed(seed)
    density = torch.rand(b, k, 1, 1, generator=g) * 0.6
    density[torch.rand(b, k, generator=g) < 0.15] = 0.0  # a few empty masks
    return (torch.rand(b, k, size, size, generator=g) < density).float()


@pytest.mark.parametrize("seed", range(4))
def test_set_metric_symmetries(seed):
    p, rl = random_masks(seed, 5, 3), random_masks(100 + seed, 5, 4)
    pl, lp = set_metrics(p, rl), set_metrics(rl, p)
    torch.testing.assert_close(pl["GED"], lp["GED"], atol=TOL, rtol=0)
    torch.testing.assert_close(pl["Dice_max"], lp["Dice_max_reverse"], atol=TOL, rtol=0)
    torch.testing.assert_close(pl["Dice_soft"], lp["Dice_soft"], atol=TOL, rtol=0)


@pytest.mark.parametrize("seed", range(4))
def test_set_metrics_range_and_order_invariance(seed):
    g = torch.Generator().manual_seed(seed)
    probs = torch.rand(4, 3, 8, 8, generator=g)  # probabilities, not only binary
    rl = random_masks(seed, 4, 5)
    valid = torch.rand(4, 5, generator=g) < 0.7
    valid[:, 0] = True
    out = set_metrics(probs, rl, valid)
    for key in SET_KEYS[1:]:
        assert bool(((out[key] >= 0) & (out[key] <= 1)).all()), key
    perm_p, perm_l = torch.randperm(3, generator=g), torch.randperm(5, generator=g)
    shuffled = set_metrics(probs[:, perm_p], rl[:, perm_l], valid[:, perm_l])
    for key in SET_KEYS:
        torch.testing.assert_close(shuffled[key], out[key], atol=TOL, rtol=0)


def test_set_metrics_batched_equals_one_image_at_a_time():
    p, rl = random_masks(7, 3, 2), random_masks(8, 3, 4)
    valid = torch.tensor([[True, False, True, True], [True, False, False, False], [True, True, True, True]])
    out = set_metrics(p, rl, valid)
    for b in range(3):
        alone = set_metrics(p[b : b + 1], rl[b : b + 1, valid[b]])  # invalid raters dropped
        for key in SET_KEYS:
            assert out[key][b].item() == pytest.approx(alone[key].item(), abs=TOL), key


def _ref_dice(a: np.ndarray, b: np.ndarray) -> float:
    return (2 * (a & b).sum() + 1e-8) / (a.sum() + b.sum() + 1e-8)


def _ref_iou(a: np.ndarray, b: np.ndarray) -> float:
    return (a & b).sum() / ((a | b).sum() + 1e-8)


def reference_set_metrics(preds: np.ndarray, raters: np.ndarray) -> dict[str, float]:
    """Independent, loop-by-loop reading of docs/metrics.md for one image: preds MxHxW, valid raters RxHxW."""
    p, rl = preds > 0.5, raters > 0.5
    if not p.any() and not rl.any():
        ged = 0.0
    elif not p.any() or not rl.any():
        ged = 1.0
    else:
        mean_d = lambda xs, ys: np.mean([1 - _ref_iou(x, y) for x in xs for y in ys])  # noqa: E731
        ged = 2 * mean_d(p, rl) - mean_d(rl, rl) - mean_d(p, p)
    d = np.array([[_ref_dice(r, q) for q in p] for r in rl])  # R x M
    rows, cols = linear_sum_assignment(1 - d)
    assigned = dict(zip(rows, cols))
    match = np.mean([d[r, assigned[r]] if r in assigned else d[r].max() for r in range(len(rl))])
    soft = np.mean([_ref_dice(preds.mean(0) > t, raters.mean(0) > t) for t in (0.1, 0.3, 0.5, 0.7, 0.9)])
    return dict(zip(SET_KEYS, (ged, d.max(0).mean(), d.max(1).mean(), match, soft)))


@pytest.mark.parametrize("seed", range(3))
def test_set_metrics_match_a_loop_reference(seed):
    g = torch.Generator().manual_seed(seed)
    probs = torch.randint(0, 9, (6, 3, 8, 8), generator=g) / 8.0  # multiples of 1/8: exact means in any precision
    rl = random_masks(seed, 6, 5)
    valid = torch.rand(6, 5, generator=g) < 0.6
    valid[:, 0] = True
    out = set_metrics(probs, rl, valid)
    for b in range(6):
        want = reference_set_metrics(probs[b].numpy(), rl[b, valid[b]].numpy())
        for key in SET_KEYS:
            assert out[key][b].item() == pytest.approx(want[key], abs=TOL), (b, key)


# ------------------------------------------------------------------------------------------------
# Primitives against MONAI and by hand


def test_dice_and_iou_agree_with_monai_on_nonempty_masks():
    from monai.metrics import compute_dice, compute_iou  # here: keeps monai out of the spawned ranks below

    g = torch.Generator().manual_seed(3)
    a = (torch.rand(6, 16, 16, generator=g) < 0.4).float()
    b = (torch.rand(6, 16, 16, generator=g) < 0.3).float()
    a[:, 0, 0] = b[:, 0, 0] = 1  # never empty: MONAI returns NaN for an empty reference
    want_dice = compute_dice(a[:, None], b[:, None])[:, 0]  # Bx1xHxW -> B
    want_iou = compute_iou(a[:, None], b[:, None])[:, 0]
    torch.testing.assert_close(dice(a, b), want_dice, atol=TOL, rtol=0)
    torch.testing.assert_close(iou(a, b), want_iou, atol=TOL, rtol=0)
    # pairwise versions: every (m, r) pair against MONAI on the broadcast pair
    pm, pr = a.view(2, 3, 16, 16), b.view(2, 3, 16, 16)
    want = compute_dice(
        pm[:, :, None].expand(2, 3, 3, 16, 16).reshape(18, 1, 16, 16),
        pr[:, None].expand(2, 3, 3, 16, 16).reshape(18, 1, 16, 16),
    ).view(2, 3, 3)
    torch.testing.assert_close(pairwise_dice(pm, pr), want, atol=TOL, rtol=0)
    want = compute_iou(
        pm[:, :, None].expand(2, 3, 3, 16, 16).reshape(18, 1, 16, 16),
        pr[:, None].expand(2, 3, 3, 16, 16).reshape(18, 1, 16, 16),
    ).view(2, 3, 3)
    torch.testing.assert_close(pairwise_iou(pm, pr), want, atol=TOL, rtol=0)


def test_primitive_rules_by_hand():
    assert dice(E, E).item() == 1.0  # (0 + 1e-8) / (0 + 1e-8)
    assert iou(E, E).item() == 0.0  # 0 / 1e-8
    assert dice(E, A).item() == pytest.approx(1e-8 / 4, abs=1e-12)  # 1e-8 / (4 + 1e-8)
    assert dice(A, B).item() == pytest.approx(0.5, abs=TOL)
    assert iou(A, B).item() == pytest.approx(1 / 3, abs=TOL)
    # strict > 0.5: a pixel at exactly 0.5 is background, 0.51 foreground; bool masks as they are
    half = 0.5 * A + 0.51 * B * (1 - A)  # foreground only on B\A (2 px)
    assert dice(half, B).item() == pytest.approx(2 * 2 / (2 + 4), abs=TOL)
    assert dice(A.bool(), B.bool()).item() == pytest.approx(0.5, abs=TOL)
    # any leading dims, broadcasting
    assert dice(torch.stack([A, B])[:, None], torch.stack([A, B, C])[None]).shape == (2, 3)


# ------------------------------------------------------------------------------------------------
# Personalised metrics


def test_neutral_mask_by_hand():
    two = torch.stack([A, B])[None]  # a 1/2 vote is not a majority -> A∩B
    assert torch.equal(neutral_mask(two), (A * B).bool()[None])
    three = torch.stack([A, A, B, B])[None]  # valid A, A, B: A∩B 3/3, A\B 2/3, B\A 1/3 -> A
    assert torch.equal(neutral_mask(three, torch.tensor([[True, True, True, False]])), A.bool()[None])
    assert torch.equal(neutral_mask(three), (A * B).bool()[None])  # all four valid: A\B is only 2/4


def test_personalised_metrics_by_hand():
    # raters A, A, B (+ an invalid B that would move the majority to A∩B): neutral n = A
    raters = torch.stack([torch.stack([A, A, B, B])] * 3)  # 3x4x4x4
    valid = torch.tensor([[True, True, True, False]] * 2 + [[True, True, True, False]])
    preds = torch.stack([B3, B, 0.9 * A + 0.5 * B * (1 - A)])  # third: probabilities, binarised = A
    followed = torch.stack([B, B, A])
    out = personalised_metrics(preds, raters, valid, followed)
    expected = {
        # p = B3, r = B: dice 6/7, iou 3/4; vs n = A: dice 4/7, iou 2/5; dice(n, r) = 1/2;
        # per rater (A, A, B): (4/7 + 4/7 + 6/7)/3 = 2/3
        "Dice_follow": [6 / 7, 1.0, 1.0],
        "IoU_follow": [3 / 4, 1.0, 1.0],
        "Dice_neutral": [4 / 7, 1 / 2, 1.0],
        "IoU_neutral": [2 / 5, 1 / 3, 1.0],
        "Delta_follow_vs_neutral": [2 / 7, 1 / 2, 0.0],
        # p = B follows B exactly: 1 - dice(A, B) = 1/2 > 0;  p = n = r = A: 1 - 1 = 0
        "Gain_over_consensus": [6 / 7 - 1 / 2, 1 / 2, 0.0],
        # p = B: (1/2 + 1/2 + 1)/3; p = A: (1 + 1 + 1/2)/3
        "Dice_personal_mean": [2 / 3, 2 / 3, 5 / 6],
    }
    assert set(out) == set(expected)
    for key, want in expected.items():
        torch.testing.assert_close(out[key], torch.tensor(want), atol=TOL, rtol=0, msg=key)


# ------------------------------------------------------------------------------------------------
# NoC


def test_noc_by_hand():
    scores = torch.tensor(
        [
            [0.50, 0.82, 0.86, 0.95],  # 0.80 at click 2, 0.85 at 3, 0.90 at 4
            [0.90, 0.90, 0.90, 0.90],  # reached at click 1 (>=)
            [0.10, 0.20, 0.30, 0.84],
        ]
    )  # 0.80 at click 4 (a success); 0.85, 0.90 never
    out = noc(scores)
    assert list(out) == ["NoC@0.80", "NoF@0.80", "NoC@0.85", "NoF@0.85", "NoC@0.90", "NoF@0.90"]
    assert out["NoC@0.80"].tolist() == [2, 1, 4] and out["NoF@0.80"].tolist() == [0, 0, 0]
    assert out["NoC@0.85"].tolist() == [3, 1, 4] and out["NoF@0.85"].tolist() == [0, 0, 1]
    assert out["NoC@0.90"].tolist() == [4, 1, 4] and out["NoF@0.90"].tolist() == [0, 0, 1]
    short = noc(scores, thresholds=(0.8, 0.9), budget=3)  # only clicks 1..3 count; failures count 3
    assert short["NoC@0.80"].tolist() == [2, 1, 3] and short["NoF@0.80"].tolist() == [0, 0, 1]
    assert short["NoC@0.90"].tolist() == [3, 1, 3] and short["NoF@0.90"].tolist() == [1, 0, 1]
    with pytest.raises(ValueError):
        noc(scores, budget=0)


# ------------------------------------------------------------------------------------------------
# Accumulator


def test_accumulator_means_and_nan_policy():
    acc = MetricAccumulator()
    acc.update({"Dice": torch.tensor([0.5, 1.0]), "GED": torch.tensor([0.2, math.nan])})
    acc.update({"Dice": torch.tensor([0.0]), "GED": 0.4})
    assert acc.compute() == pytest.approx({"Dice": 1.5 / 3, "GED": (0.2 + 0.4) / 2})
    assert acc.compute("sum") == pytest.approx({"Dice": 1.5, "GED": 0.6})
    assert acc.compute("count") == {"Dice": 3, "GED": 2}
    assert acc.compute("nan_count") == {"Dice": 0, "GED": 1}
    acc.update({"Only_nan": torch.tensor([math.nan])})
    assert math.isnan(acc.compute()["Only_nan"])
    acc.reset()
    assert acc.compute() == {}


def test_accumulator_rounds_and_merge():
    acc = MetricAccumulator()
    acc.update({"Dice": torch.tensor([0.2, 0.4])}, round=2)
    acc.update({"Dice": torch.tensor([0.6])}, round=1)
    acc.update({"Dice": torch.tensor([0.8])}, round=2)
    per_round = acc.compute()
    assert list(per_round) == [1, 2]
    assert per_round[1] == pytest.approx({"Dice": 0.6})
    assert per_round[2] == pytest.approx({"Dice": (0.2 + 0.4 + 0.8) / 3})
    with pytest.raises(ValueError):
        acc.update({"Dice": torch.tensor([1.0])})  # rounds on some updates only
    other = MetricAccumulator()
    other.update({"Dice": torch.tensor([1.0]), "NoF@0.90": torch.tensor([1.0, 0.0])}, round=2)
    acc.merge(other)  # what two ranks' all_reduce amounts to
    assert acc.compute()[2] == pytest.approx({"Dice": (1.4 + 1.0) / 4, "NoF@0.90": 0.5})
    assert acc.compute("sum")[2]["NoF@0.90"] == 1.0  # a failure count
    copied = acc.all_reduce()  # no process group: an equal copy
    assert copied is not acc and copied.compute() == acc.compute()


def _all_reduce_worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        acc = MetricAccumulator()
        if rank == 0:
            acc.update({"Dice": torch.tensor([0.0, 1.0])}, round=1)
        else:  # this rank also saw a key the other did not
            acc.update({"Dice": torch.tensor([0.5])}, round=1)
            acc.update({"NoF@0.90": torch.tensor([1.0])}, round=2)
        reduced = acc.all_reduce()
        torch.save(
            {"mean": reduced.compute(), "count": reduced.compute("count"), "local": acc.compute("count")},
            Path(out_dir) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_accumulator_all_reduce_two_gloo_ranks(tmp_path):
    mp.spawn(_all_reduce_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert list(got["mean"]) == [1, 2]
        assert got["mean"][1] == pytest.approx({"Dice": (0.0 + 1.0 + 0.5) / 3})
        assert got["mean"][2] == pytest.approx({"NoF@0.90": 1.0})
        assert got["count"] == {1: {"Dice": 3}, 2: {"NoF@0.90": 1}}  # every image counted once
    assert torch.load(tmp_path / "rank0.pt", weights_only=True)["local"] == {1: {"Dice": 2}}  # not mutated


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_metrics_run_on_the_inputs_device():
    gpu_device = choose_device("cuda")
    p, rl = random_masks(11, 3, 2), random_masks(12, 3, 4)
    valid = torch.tensor([[True, True, False, True]] * 3)
    cpu, gpu = set_metrics(p, rl, valid), set_metrics(p.to(gpu_device), rl.to(gpu_device), valid.to(gpu_device))
    for key in SET_KEYS:
        assert gpu[key].device.type == gpu_device.type
        torch.testing.assert_close(gpu[key].cpu(), cpu[key], atol=TOL, rtol=0)
    out = personalised_metrics(p[:, 0].to(gpu_device), rl.to(gpu_device), valid.to(gpu_device), rl[:, 0].to(gpu_device))
    assert all(v.device.type == gpu_device.type for v in out.values())
    assert noc(torch.rand(3, 5, device=gpu_device))["NoC@0.80"].device.type == gpu_device.type


def test_pred_valid_matches_dropping_the_invalid_predictions():
    """Padding prediction sets with junk marked invalid changes nothing: images may have sets of different sizes."""
    g = torch.Generator().manual_seed(7)
    raters = (torch.rand(2, 3, 8, 8, generator=g) > 0.5).float()
    preds = torch.rand(2, 4, 8, 8, generator=g)
    pred_valid = torch.tensor([[True, True, False, False], [True, True, True, False]])
    padded = set_metrics(preds, raters, pred_valid=pred_valid)
    for b, m in enumerate((2, 3)):
        alone = set_metrics(preds[b : b + 1, :m], raters[b : b + 1])
        for key in SET_KEYS:
            torch.testing.assert_close(padded[key][b : b + 1], alone[key], msg=key)
    # and the padding does matter when it is not marked invalid
    assert not torch.allclose(set_metrics(preds, raters)["Dice_soft"], padded["Dice_soft"])
