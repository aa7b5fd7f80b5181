"""Click simulation (clicks.py): hand-computed cases and a brute-force numpy oracle."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interaction.clicks import (
    _edt2_scipy,
    _edt2_torch,
    _topk_row_major,
    append_click,
    center_click,
    next_click,
    topk_click,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def brute_edt2(mask: np.ndarray) -> np.ndarray:
    """HxW bool -> squared distance to the nearest False pixel, the ring of pixels just outside counting as False."""
    h, w = mask.shape
    pad = np.pad(mask, 1)
    zr, zc = np.nonzero(~pad)
    out = np.zeros((h, w))
    for r in range(h):
        for c in range(w):
            if mask[r, c]:
                out[r, c] = ((zr - (r + 1)) ** 2 + (zc - (c + 1)) ** 2).min()
    return out


def brute_center(pred, ref, excl, boundary):
    """Independent RITM clicker for one HxW image: ((x, y), label)."""
    fn, fp = ref & ~pred, pred & ~ref
    if boundary:
        fn, fp = fn & ~excl, fp & ~excl
    dfn, dfp = brute_edt2(fn) * ~excl, brute_edt2(fp) * ~excl
    if max(dfn.max(), dfp.max()) > 0:
        d = dfn if dfn.max() > dfp.max() else dfp
    else:
        fg = ref & ~excl if boundary else ref
        d = brute_edt2(fg if fg.any() else ~fg) * ~excl
    r, c = np.unravel_index(np.argmax(d), d.shape)  # first maximum, row-major
    return (c, r), int(ref[r, c])


def square(h, w, r0, r1, c0, c1, batch=1):
    m = torch.zeros(batch, h, w)
    m[:, r0 : r1 + 1, c0 : c1 + 1] = 1
    return m


# ---------------------------------------------------------------- distance transforms


@pytest.mark.parametrize("edt", [_edt2_scipy, _edt2_torch])
def test_edt_matches_brute_force(edt):
    g = gen(0)
    masks = torch.rand(5, 9, 13, generator=g) > torch.tensor([0.1, 0.3, 0.5, 0.0, 1.0])[:, None, None]
    got = edt(masks)
    for b in range(5):
        np.testing.assert_array_equal(got[b].numpy(), brute_edt2(masks[b].numpy()))


def test_edt_hand_values():
    # a 1x5 strip of ones: the border rows above/below are at distance 1 from every pixel
    assert _edt2_scipy(torch.ones(1, 1, 5, dtype=torch.bool)).tolist() == [[[1, 1, 1, 1, 1]]]
    # 5x5 all ones: centre is 3 pixels from the padding
    assert _edt2_torch(torch.ones(1, 5, 5, dtype=torch.bool))[0, 2, 2] == 9


# ---------------------------------------------------------------- centre clicks (hand-computed)


def test_center_square_empty_prediction():
    # reference rows 1..5, cols 3..7 of a 9x11 image: centre row 3, col 5 -> (x, y) = (5, 3)
    ref = square(9, 11, 1, 5, 3, 7)
    points, labels, has_error = center_click(torch.zeros_like(ref), ref, return_has_error=True)
    assert points.tolist() == [[5.0, 3.0]] and labels.tolist() == [1] and has_error.tolist() == [True]
    assert points.dtype == torch.float32 and labels.dtype == torch.long


def test_center_prediction_bigger_than_reference():
    # pred rows/cols 1..10 of 12x12, ref rows/cols 2..4. FP ring depth at (7,7): min(border 4,
    # ref corner (4,4) at sqrt(18)) = 4; every other FP pixel is < 4 deep.
    ref, pred = square(12, 12, 2, 4, 2, 4), square(12, 12, 1, 10, 1, 10)
    points, labels = center_click(pred, ref)
    assert points.tolist() == [[7.0, 7.0]] and labels.tolist() == [0]


def test_center_border_is_boundary_and_xy_order():
    # FP blob in the top-right corner (rows 0..4, cols 7..11 of 8x12): touching the top and right
    # edges, its deepest pixel is its centre (row 2, col 9, depth 3), not the corner.
    pred = square(8, 12, 0, 4, 7, 11)
    points, labels = center_click(pred, torch.zeros_like(pred))
    assert points.tolist() == [[9.0, 2.0]] and labels.tolist() == [0]


def test_center_positive_iff_false_negative_deeper():
    ref = square(10, 20, 1, 8, 1, 8) + square(10, 20, 3, 5, 14, 16)  # FN 8x8 (depth 4) ...
    pred = square(10, 20, 2, 6, 12, 18)  # ... FP ring around the 3x3 part (depth 1)
    points, labels = center_click(pred, ref.clamp(max=1))
    assert labels.tolist() == [1] and points[0, 0] <= 8


@pytest.mark.parametrize("boundary, expected", [(False, [4.0, 4.0]), (True, [3.0, 3.0])])
def test_center_excluded_pixel_not_chosen_again(boundary, expected):
    # 9x9 FN square at rows/cols 1..9 of 11x11; its centre (5,5) was clicked. RITM: next deepest
    # pixels have depth 4 (rows/cols 4..6), first is (4,4). As boundary: corners (3,3).. at sqrt(8).
    ref = square(11, 11, 1, 9, 1, 9)
    excl = torch.zeros(1, 11, 11, dtype=torch.bool)
    assert center_click(torch.zeros_like(ref), ref)[0].tolist() == [[5.0, 5.0]]
    excl[0, 5, 5] = True
    points, labels = center_click(torch.zeros_like(ref), ref, excl, exclude_as_boundary=boundary)
    assert points.tolist() == [expected] and labels.tolist() == [1]


def test_center_no_error_fallback():
    ref = torch.cat([square(9, 11, 1, 5, 3, 7), torch.zeros(1, 9, 11)])  # second reference empty
    points, labels, has_error = center_click(ref.clone(), ref, return_has_error=True)
    assert has_error.tolist() == [False, False]
    # deepest foreground pixel (5, 3), positive. Empty reference: the whole 9x11 background, depth 5
    # at row 4, cols 4..6 (rows limit it); the first is (4, 4), negative
    assert points.tolist() == [[5.0, 3.0], [4.0, 4.0]] and labels.tolist() == [1, 0]


def test_center_accepts_probabilities_and_bool():
    ref = square(9, 11, 1, 5, 3, 7)
    a = center_click(torch.full_like(ref, 0.4), ref.bool())  # 0.4 binarises to background
    b = center_click(torch.zeros_like(ref, dtype=torch.bool), ref)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("boundary", [False, True])
def test_center_matches_brute_force_oracle(boundary):
    g = gen(1)
    b, h, w = 12, 10, 14
    ref = torch.rand(b, h, w, generator=g) > 0.5
    pred = torch.rand(b, h, w, generator=g) > 0.5
    # smooth-ish regions so that depths exceed 1; a few images with no error at all
    ref = torch.nn.functional.avg_pool2d(ref[:, None].float(), 3, 1, 1)[:, 0] > 0.5
    pred = torch.nn.functional.avg_pool2d(pred[:, None].float(), 3, 1, 1)[:, 0] > 0.5
    pred[:2] = ref[:2]
    ref[1] = False
    pred[1] = False
    excl = torch.rand(b, h, w, generator=g) > 0.9
    points, labels = center_click(pred.float(), ref.float(), excl, exclude_as_boundary=boundary)
    for i in range(b):
        xy, lab = brute_center(pred[i].numpy(), ref[i].numpy(), excl[i].numpy(), boundary)
        assert points[i].tolist() == list(map(float, xy)) and labels[i].item() == lab, i


def test_center_batch_independent():
    g = gen(2)
    ref = torch.rand(4, 16, 16, generator=g) > 0.4
    pred = torch.rand(4, 16, 16, generator=g) > 0.6
    p1, l1 = center_click(pred, ref)
    ref2, pred2 = ref.clone(), pred.clone()
    ref2[[0, 1, 3]] = torch.rand(3, 16, 16, generator=g) > 0.5
    p2, l2 = center_click(pred2, ref2)
    assert torch.equal(p1[2], p2[2]) and l1[2] == l2[2]
    p3, l3 = center_click(pred[2:3], ref[2:3])
    assert torch.equal(p1[2:3], p3) and torch.equal(l1[2:3], l3)


# ---------------------------------------------------------------- top-k clicks


def test_topk_within_top_k_and_labels():
    b, h, w, k = 3, 8, 10, 5
    error = torch.rand(b, h, w, generator=gen(3))  # distinct values: the top-k set is unambiguous
    source = torch.rand(b, h, w, generator=gen(4)) > 0.5
    top = np.argsort(-error.flatten(1).numpy(), axis=1)[:, :k]
    seen = [set() for _ in range(b)]
    for seed in range(200):
        points, labels = topk_click(error, source, k=k, generator=gen(seed))
        for i in range(b):
            x, y = int(points[i, 0]), int(points[i, 1])
            assert y * w + x in top[i]
            assert labels[i].item() == int(source[i, y, x])
            seen[i].add(y * w + x)
    assert all(s == set(t) for s, t in zip(seen, top))  # uniform choice reaches every candidate


def test_topk_order_is_stable_descending_sort():
    # values with many ties, negatives, -0.0 and -inf; oracle: numpy's stable argsort of -value
    vals = torch.tensor([0.5, -0.0, 0.0, 1.0, -2.0, float("-inf"), 0.5, 1.0, -0.5, 0.25, 1e-30, -1e-30])
    key = torch.stack([vals, vals.flip(0), torch.zeros(12), torch.rand(12, generator=gen(12))])  # 4x12
    expected = np.argsort(-key.numpy(), axis=1, kind="stable")[:, :7]
    assert _topk_row_major(key, 7).tolist() == expected.tolist()


def test_topk_deterministic_for_seed():
    error = torch.rand(4, 16, 16, generator=gen(5))
    source = error > 0.5
    a = topk_click(error, source, generator=gen(7))
    b = topk_click(error, source, generator=gen(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_topk_ties_are_row_major():
    # binary error: 30 tied pixels (rows 2..4, cols 1..10); candidates are the first k=4 row-major
    error = square(6, 12, 2, 4, 1, 10)
    allowed = {(x, 2) for x in range(1, 5)}
    for seed in range(50):
        points, labels = topk_click(error, error, k=4, generator=gen(seed))
        assert tuple(int(v) for v in points[0]) in allowed and labels.item() == 1


def test_topk_exclusion():
    error = torch.rand(1, 6, 6, generator=gen(8))
    excl = error > error.flatten().sort().values[2]  # only the 3 smallest-error pixels stay eligible
    for seed in range(50):
        points, _ = topk_click(error, error > 0.5, k=20, generator=gen(seed), exclude=excl)
        x, y = int(points[0, 0]), int(points[0, 1])
        assert not excl[0, y, x]
    # nothing eligible: exclusion ignored, the top-1 pixel is chosen
    points, _ = topk_click(error, error > 0.5, k=1, exclude=torch.ones_like(excl))
    flat = int(error.flatten().argmax())
    assert points.tolist() == [[flat % 6, flat // 6]]


def test_topk_batch_independent():
    error = torch.rand(4, 12, 12, generator=gen(9))
    source = error > 0.3
    p1, l1 = topk_click(error, source, k=10, generator=gen(11))
    error2 = error.clone()
    error2[[0, 1, 3]] = torch.rand(3, 12, 12, generator=gen(10))
    p2, l2 = topk_click(error2, error2 > 0.3, k=10, generator=gen(11))
    assert torch.equal(p1[2], p2[2]) and l1[2] == l2[2]


# ---------------------------------------------------------------- dispatch and accumulation


def test_next_click_dispatch_and_label_source():
    ref = square(9, 11, 1, 5, 3, 7)
    pred = torch.zeros_like(ref)
    points, labels = next_click("center", pred, ref)
    assert points.tolist() == [[5.0, 3.0]] and labels.tolist() == [1]
    points, labels = next_click("center", pred, ref, label_source=torch.zeros_like(ref))
    assert points.tolist() == [[5.0, 3.0]] and labels.tolist() == [0]
    points, labels = next_click("topk", pred, ref, generator=gen(0), k=3)
    assert points[0, 1] == 1 and 3 <= points[0, 0] <= 5 and labels.tolist() == [1]  # first 3 tied pixels
    with pytest.raises(ValueError, match="strategy"):
        next_click("random", pred, ref)


def test_append_click_accumulates():
    excl = torch.zeros(2, 5, 7, dtype=torch.bool)
    points, labels, excl = append_click(None, None, excl, torch.tensor([[6.0, 0.0], [1.0, 4.0]]), torch.tensor([1, 0]))
    assert points.shape == (2, 1, 2) and labels.tolist() == [[1], [0]]
    points, labels, excl2 = append_click(
        points, labels, excl, torch.tensor([[2.0, 3.0], [0.0, 0.0]]), torch.tensor([0, 1])
    )
    assert points.tolist() == [[[6, 0], [2, 3]], [[1, 4], [0, 0]]] and labels.tolist() == [[1, 0], [0, 1]]
    assert excl.sum() == 2 and excl2.sum() == 4  # not modified in place
    assert excl2[0, 0, 6] and excl2[0, 3, 2] and excl2[1, 4, 1] and excl2[1, 0, 0]  # [b, y, x]


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="reference"):
        center_click(torch.zeros(1, 4, 4), torch.zeros(1, 4, 5))
    with pytest.raises(ValueError, match="k must be"):
        topk_click(torch.zeros(1, 4, 4), torch.zeros(1, 4, 4), k=0)
