"""Batched k-means (kmeans.py): exact recovery, brute-force optimum, a numpy Lloyd reference."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from interaction.kmeans import batched_kmeans, kmeans_pp_init


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def canonical(labels) -> list[int]:
    """Relabel clusters by order of first appearance: equal lists <=> equal partitions."""
    names: dict[int, int] = {}
    return [names.setdefault(int(v), len(names)) for v in labels]


def sse(x: np.ndarray, labels) -> float:
    labels = np.asarray(labels)
    return sum(((x[labels == c] - x[labels == c].mean(0)) ** 2).sum() for c in set(labels.tolist()))


def numpy_lloyd(x: np.ndarray, centers: np.ndarray, iters: int):
    """Plain per-image Lloyd (float64), same empty-cluster rule: the e-th empty cluster takes the
    e-th farthest point from its centre, if that distance is positive."""
    d = ((x[:, None] - centers[None]) ** 2).sum(-1)
    labels = d.argmin(1)
    for _ in range(iters):
        new_centers = centers.copy()
        own = d[np.arange(len(x)), labels]
        far = sorted(range(len(x)), key=lambda n: -own[n])  # stable: ties by index
        empties = 0
        for c in range(len(centers)):
            members = labels == c
            if members.any():
                new_centers[c] = x[members].mean(0)
            else:
                donor = far[min(empties, len(x) - 1)]
                if own[donor] > 0:
                    new_centers[c] = x[donor]
                empties += 1
        centers = new_centers
        d = ((x[:, None] - centers[None]) ** 2).sum(-1)
        new = d.argmin(1)
        if (new == labels).all():
            break
        labels = new
    return labels, centers


def blobs(b: int, n: int, k: int, d: int, seed: int, spread: float = 0.05):
    """B images of N points around k far-apart centres; returns x BxNxD and true labels BxN."""
    g = gen(seed)
    centres = torch.randn(b, k, d, generator=g, dtype=torch.float64) * 10
    truth = torch.stack([torch.randperm(n, generator=g) % k for _ in range(b)])  # BxN, every cluster used
    x = centres.gather(1, truth[:, :, None].expand(-1, -1, d)) + spread * torch.randn(
        b, n, d, generator=g, dtype=torch.float64
    )
    return x, truth


def test_separated_clusters_recovered_exactly():
    x, truth = blobs(b=5, n=40, k=4, d=7, seed=0)
    labels, centers = batched_kmeans(x, 4, generator=gen(1))
    assert labels.shape == (5, 40) and centers.shape == (5, 4, 7) and labels.dtype == torch.long
    for i in range(5):
        assert canonical(labels[i]) == canonical(truth[i])
        for c in range(4):  # centres are the cluster means
            torch.testing.assert_close(centers[i, c], x[i, labels[i] == c].mean(0))


def test_brute_force_optimum_six_points():
    # easy 2-cluster cases: the objective must equal the optimum over all 2^5 partitions
    for seed in range(5):
        rng = np.random.default_rng(seed)
        pts = np.concatenate([rng.normal(0, 1, (3, 2)), rng.normal(6, 1, (3, 2))])[rng.permutation(6)]
        best = min(sse(pts, (0,) + bits) for bits in itertools.product((0, 1), repeat=5))
        labels, _ = batched_kmeans(torch.from_numpy(pts)[None], 2, generator=gen(seed))
        assert sse(pts, labels[0].numpy()) == pytest.approx(best)


def test_lloyd_matches_numpy_reference():
    g = gen(2)
    x = torch.rand(6, 30, 5, generator=g, dtype=torch.float64)
    x[3, :, :] = 0.5  # all points equal: clusters become empty and cannot be reseeded
    init = x[:, :4].clone()  # first 4 points as initial centres (duplicates in image 3)
    init[5, 1] = 100.0  # a centre far from everything: its cluster starts empty and is reseeded
    labels, centers = batched_kmeans(x, 4, iters=30, init=init)
    for i in range(6):
        ref_labels, ref_centers = numpy_lloyd(x[i].numpy(), init[i].numpy(), iters=30)
        np.testing.assert_array_equal(labels[i].numpy(), ref_labels)
        np.testing.assert_allclose(centers[i].numpy(), ref_centers, atol=1e-12)


def test_restarts_reach_the_true_partition():
    # 4 prototypes in 1000-d plus uniform noise: the true partition is optimal, yet a single greedy
    # k-means++ run merges two clusters in some of the 40 images (as sklearn's n_init=1 does)
    g = gen(11)
    noise = torch.rand(40, 48, 1000, generator=g)
    x = torch.rand(40, 4, 1000, generator=g)[:, torch.arange(48) % 4] * 0.6 + noise * 0.4
    labels, _ = batched_kmeans(x, 4, generator=gen(12), n_init=4)
    for i in range(40):
        assert canonical(labels[i]) == canonical(torch.arange(48) % 4), i


@pytest.mark.parametrize("n_init", [1, 3])
def test_image_results_do_not_depend_on_other_images(n_init):
    x, _ = blobs(b=4, n=24, k=3, d=5, seed=3, spread=2.0)
    labels, centers = batched_kmeans(x, 3, generator=gen(4), n_init=n_init)
    x2 = x.clone()
    x2[[0, 1, 3]] = torch.randn(3, 24, 5, generator=gen(5), dtype=torch.float64) * 3
    labels2, centers2 = batched_kmeans(x2, 3, generator=gen(4), n_init=n_init)
    assert torch.equal(labels[2], labels2[2])
    torch.testing.assert_close(centers[2], centers2[2], rtol=0, atol=1e-12)


def test_autocast_and_half_inputs_use_full_precision():
    x, truth = blobs(b=2, n=30, k=3, d=2000, seed=13, spread=0.5)
    x = x.float()
    expected = batched_kmeans(x, 3, generator=gen(14))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = batched_kmeans(x, 3, generator=gen(14))
    assert torch.equal(expected[0], got[0]) and torch.equal(expected[1], got[1])
    labels, centers = batched_kmeans(x.bfloat16(), 3, generator=gen(14))
    assert centers.dtype == torch.float32
    assert all(canonical(labels[i]) == canonical(truth[i]) for i in range(2))


def test_deterministic_for_seed():
    x = torch.rand(3, 20, 8, generator=gen(6))
    a = batched_kmeans(x, 4, generator=gen(7))
    b = batched_kmeans(x, 4, generator=gen(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_kmeans_pp_seeds_are_distinct_points_in_distinct_blobs():
    x, truth = blobs(b=3, n=30, k=4, d=6, seed=8)
    seeds = kmeans_pp_init(x, 4, gen(9))  # 3x4 point indices
    assert seeds.shape == (3, 4) and seeds.dtype == torch.long
    # blobs 10 apart with spread 0.05: another point of an already-seeded blob has probability < 1e-4
    for i in range(3):
        assert len({int(truth[i, j]) for j in seeds[i]}) == 4


@pytest.mark.parametrize("n", [3, 7])
def test_more_clusters_than_distinct_points(n):
    base = torch.tensor([[0.0, 0.0], [1.0, 2.0], [5.0, 5.0]])
    x = base[torch.arange(n) % 3][None].repeat(2, 1, 1)  # 2xNx2 with 3 distinct points
    labels, centers = batched_kmeans(x, 5, generator=gen(10))
    assert labels.shape == (2, n) and centers.shape == (2, 5, 2)
    assert labels.min() >= 0 and labels.max() < 5 and torch.isfinite(centers).all()
    assert torch.equal(centers.gather(1, labels[:, :, None].expand(-1, -1, 2)), x)  # zero objective


def test_bad_arguments():
    with pytest.raises(ValueError, match="BxNxD"):
        batched_kmeans(torch.zeros(4, 3), 2)
    with pytest.raises(ValueError, match="must be >= 1"):
        batched_kmeans(torch.zeros(1, 4, 3), 0)
