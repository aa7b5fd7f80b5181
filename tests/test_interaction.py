"""The pieces of the interaction loops, on hand-made raters (docs/interaction.md#aespa-rounds,
docs/interaction.md#spa-rounds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interaction.aespa import update_consistent
from interaction.raters import draw_among, mean_of, raters_agreeing, switch_raters
from interaction.spa import initial_click, preference_target
from pipeline.augment import augment_batch, dihedral
from pipeline.rng import KeyedRandom


def disk(size: int, radius: float) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return ((yy - size / 2 + 0.5) ** 2 + (xx - size / 2 + 0.5) ** 2 < radius**2).float()


def nested(n: int, size: int = 16) -> torch.Tensor:
    """n images with three nested disk raters (radius 3 < 5 < 7): n x 3 x size x size."""
    return torch.stack([disk(size, 3), disk(size, 5), disk(size, 7)])[None].expand(n, -1, -1, -1).contiguous()


def test_preference_target_distribution_on_nested_raters():
    # Mean map values: 1 (inside r1), 2/3 (r1..r2), 1/3 (r2..r3), 0. Divergent: 1/3 and 2/3.
    # Branch "divergent" (p .8): 1/3 -> label round(1/3)=0 (p .8: raters 1, 2 agree -> majority r2) or 1 (p .2:
    #   rater 3 -> r3); 2/3 -> label 1 (p .8: raters 2, 3 -> union r3) or 0 (p .2: rater 1 -> r1).
    # Branch "all values" (p .2, each of the 4 values p .05): 0 and 1 -> all raters agree -> majority r2.
    # P(r1) = .4*.2 + .05*.2 = .09; P(r3) = .4*.2 + .4*.8 + .05*.2 + .05*.8 = .45; P(r2) = .46.
    n = 3000
    raters = nested(n)
    target = preference_target(raters, torch.ones(n, 3, dtype=torch.bool), KeyedRandom(0, torch.arange(n)))
    which = [(target == raters[:, k]).flatten(1).all(1) for k in range(3)]
    assert bool(torch.stack(which).any(0).all())  # every target is one of the raters' masks
    freq = [float(w.float().mean()) for w in which]
    np.testing.assert_allclose(freq, [0.09, 0.46, 0.45], atol=0.035)


def test_initial_click_is_where_all_raters_agree():
    raters = nested(4)
    valid = torch.ones(4, 3, dtype=torch.bool)
    points, labels = initial_click(raters, valid, raters[:, 1], KeyedRandom(1, torch.arange(4)))
    assert labels.tolist() == [1, 1, 1, 1]
    x, y = points[:, 0].long(), points[:, 1].long()
    assert bool(raters[torch.arange(4), 0, y, x].eq(1).all())  # inside the smallest disk
    # a rater that marks nothing: no common foreground, so a common-background click
    raters[:, 0] = 0
    points, labels = initial_click(raters, valid, raters[:, 1], KeyedRandom(1, torch.arange(4)))
    x, y = points[:, 0].long(), points[:, 1].long()
    assert labels.tolist() == [0, 0, 0, 0] and bool((raters[torch.arange(4), :, y, x] == 0).all())


def test_raters_agreeing_and_the_soft_target():
    raters = nested(1)
    valid = torch.tensor([[True, True, True]])
    centre, ring = torch.tensor([[8.0, 8.0]]), torch.tensor([[8.0, 13.0]])  # (x, y): r2 < 5 px < r3
    assert raters_agreeing(raters, valid, ring, torch.tensor([1])).tolist() == [[False, False, True]]
    assert raters_agreeing(raters, valid, ring, torch.tensor([0])).tolist() == [[True, True, False]]
    assert raters_agreeing(raters, valid, centre, torch.tensor([1])).tolist() == [[True, True, True]]
    invalid = torch.tensor([[True, False, True]])
    assert raters_agreeing(raters, invalid, centre, torch.tensor([1])).tolist() == [[True, False, True]]
    soft = mean_of(raters, torch.tensor([[True, True, False]]))
    torch.testing.assert_close(soft, (raters[:, 0] + raters[:, 1]) / 2)


def test_target_from_all_keeps_raters_consistent_with_every_click():
    consistent = torch.tensor([[True, True, False]])
    agree = torch.tensor([[False, True, True]])
    assert update_consistent(consistent, agree, "last").tolist() == [[False, True, True]]
    assert update_consistent(consistent, agree, "all").tolist() == [[False, True, False]]
    # no rater agrees with every click: fall back to the last click's raters
    assert update_consistent(torch.tensor([[True, False, False]]), agree, "all").tolist() == [[False, True, True]]


def test_rater_draws_and_switching():
    n = 4000
    valid = torch.tensor([[True, False, True, True]]).expand(n, -1)
    drawn = draw_among(valid, KeyedRandom(0, torch.arange(n)))
    counts = torch.bincount(drawn, minlength=4).float() / n
    np.testing.assert_allclose(counts.numpy(), [1 / 3, 0, 1 / 3, 1 / 3], atol=0.03)
    followed = torch.zeros(n, dtype=torch.long)
    switched = switch_raters(followed, valid, 0.2, KeyedRandom(1, torch.arange(n)))
    assert float((switched != 0).float().mean()) == pytest.approx(0.2, abs=0.03)
    assert not bool((switched == 1).any())  # never to an invalid rater
    assert torch.equal(switch_raters(followed, valid, 0.0, None), followed)


def test_augmentation_moves_image_and_raters_together():
    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    raters = images[:, :2].clone()  # "masks" equal to the first two image channels
    out_images, out_raters = augment_batch(images, raters, torch.Generator().manual_seed(3))
    torch.testing.assert_close(out_raters, out_images[:, :2])
    # every output is one of the eight symmetries of its input
    for b in range(2):
        assert any(torch.equal(out_images[b], dihedral(images[b], k)) for k in range(8))
    assert len({tuple(dihedral(images[0], k).flatten().tolist()) for k in range(8)}) == 8


def test_mirror_draws_only_the_four_axis_keeping_symmetries():
    image = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # the four that keep the axes, written out by hand
    mirrors = [[[1, 2], [3, 4]], [[2, 1], [4, 3]], [[3, 4], [1, 2]], [[4, 3], [2, 1]]]
    images = image.expand(64, 3, 2, 2).clone()
    out, _ = augment_batch(images, images[:, :1].clone(), torch.Generator().manual_seed(0), "mirror")
    seen = {tuple(o[0].flatten().int().tolist()) for o in out}
    assert seen == {tuple(v for row in m for v in row) for m in mirrors}  # all four drawn, no quarter turn
