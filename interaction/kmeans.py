"""Batched k-means: every image clusters its own N vectors (SPA's candidates, docs/interaction.md#spa-rounds step 2).

All images run together on x's device. Centres are kept as weights over the points (a centre is a
mean of points, a point, or an initial centre), so distances come from the BxNxN Gram matrix:
x is read twice in all (Gram matrix, final centres) however many Lloyd iterations and k-means++
restarts run, and memory stays O(B*n_init*N*N + B*k*D) besides x itself (never BxNxNxD or BxNxkxD).
"""

from __future__ import annotations

import math

import torch

from pipeline.rng import uniform


def _gram(x: torch.Tensor, init: torch.Tensor | None) -> torch.Tensor:
    """Gram matrix BxMxM (float64) of the rows of [x; init] (M = N, or N + k with `init`), built in
    blocks so that x is never copied."""
    if init is None:
        return torch.bmm(x, x.transpose(1, 2)).double()
    top = torch.cat([torch.bmm(x, x.transpose(1, 2)), torch.bmm(x, init.transpose(1, 2))], dim=2)  # BxNx(N+k)
    bottom = torch.cat([torch.bmm(init, x.transpose(1, 2)), torch.bmm(init, init.transpose(1, 2))], dim=2)
    return torch.cat([top, bottom], dim=1).double()


def _sq_dists(gram: torch.Tensor, weights: torch.Tensor, n: int) -> torch.Tensor:
    """Squared distances BxNxk of the N points to the k centres c = weights @ [x; init], weights BxkxM.

    ||x - c||^2 = x.x - 2 x.c + c.c; values within rounding of zero (relative to x.x + c.c) are
    snapped to 0 so that points sitting on a centre tie exactly."""
    xc = torch.bmm(gram[:, :n], weights.transpose(1, 2))  # BxNxk
    cc = (torch.bmm(weights, gram) * weights).sum(-1)  # Bxk
    xx = gram.diagonal(dim1=1, dim2=2)[:, :n]  # BxN
    scale = xx[:, :, None] + cc[:, None, :]
    d = scale - 2 * xc
    return torch.where(d <= 64 * torch.finfo(d.dtype).eps * scale, torch.zeros_like(d), d)


def _kmeans_pp(gram: torch.Tensor, n: int, u: torch.Tensor) -> torch.Tensor:
    """Greedy k-means++ on BxMxM `gram` (points are its first n rows) with uniforms BxkxL -> Bxk
    seed indices. Each step draws L candidates with probability proportional to the squared distance
    to the nearest seed (uniformly when all of them are 0) and keeps the one that lowers the summed
    distance most (sklearn's greedy variant, L = 2 + ln k)."""
    k = u.shape[1]
    eye = torch.eye(n, dtype=gram.dtype, device=gram.device)
    idx = (u[:, 0, 0] * n).long().clamp(max=n - 1)  # B: the first seed is uniform
    nearest = _sq_dists(gram, eye[idx][:, None, :], n)[:, :, 0]  # BxN
    chosen = [idx]
    for j in range(1, k):  # k is small; the loop is over seeds, never over images
        cum = nearest.cumsum(1)  # BxN
        total = cum[:, -1:]  # Bx1
        by_distance = torch.searchsorted(cum, u[:, j] * total, right=True)  # BxL
        cand = torch.where(total > 0, by_distance, (u[:, j] * n).long()).clamp(max=n - 1)  # BxL
        d = torch.minimum(nearest[:, :, None], _sq_dists(gram, eye[cand], n))  # BxNxL
        best = d.sum(1).argmin(1)  # B
        chosen.append(cand.gather(1, best[:, None])[:, 0])
        nearest = d.gather(2, best[:, None, None].expand(-1, n, 1))[:, :, 0]
    return torch.stack(chosen, 1)


def _trials(k: int) -> int:
    return 2 + int(math.log(k))


def kmeans_pp_init(x: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Greedy k-means++ seeding per image: BxNxD -> Bxk long indices of the seed points. The uniforms
    are drawn up front per image, so image b's seeds do not depend on the other images."""
    u = uniform((x.shape[0], k, _trials(k)), x.device, generator)  # BxkxL
    return _kmeans_pp(_gram(x, None), x.shape[1], u)


def _update(labels: torch.Tensor, weights: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
    """New centre weights Bxkx(M): means of the assigned points. An empty cluster moves to a point far
    from its centre (the e-th empty cluster of an image takes the e-th farthest point, sklearn's
    rule); when every point sits on its centre it keeps its previous centre."""
    b, k, m = weights.shape
    n = labels.shape[1]
    onehot = torch.nn.functional.one_hot(labels, k).to(weights.dtype).transpose(1, 2)  # BxkxN
    counts = onehot.sum(2, keepdim=True)  # Bxkx1
    means = torch.nn.functional.pad(onehot / counts.clamp_min(1), (0, m - n))  # Bxkx(M)
    empty = counts[:, :, 0] == 0  # Bxk
    if not bool(empty.any()):
        return means
    far_dist, far = dist.gather(2, labels[:, :, None])[:, :, 0].sort(dim=1, descending=True, stable=True)  # BxN
    rank = (empty.long().cumsum(1) - 1).clamp(0, n - 1)  # Bxk: which far point an empty cluster takes
    movable = empty & (far_dist.gather(1, rank) > 0)
    reseed = torch.nn.functional.one_hot(far.gather(1, rank), m).to(weights.dtype)  # Bxkx(M)
    keep = torch.where(empty[:, :, None], weights, means)
    return torch.where(movable[:, :, None], reseed, keep)


def _lloyd(
    gram: torch.Tensor, weights: torch.Tensor, n: int, iters: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lloyd iterations from centre weights Bxkx(M) -> labels BxN, weights, inertia B."""
    dist = _sq_dists(gram, weights, n)  # BxNxk
    labels = dist.argmin(2)
    for _ in range(iters):
        weights = _update(labels, weights, dist)
        dist = _sq_dists(gram, weights, n)
        new = dist.argmin(2)
        if torch.equal(new, labels):
            break
        labels = new
    return labels, weights, dist.gather(2, labels[:, :, None]).sum((1, 2))


def batched_kmeans(
    x: torch.Tensor,
    k: int,
    iters: int = 20,
    generator: torch.Generator | None = None,
    init: torch.Tensor | None = None,
    n_init: int = 4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on each image's N points.

    Args:
        x: BxNxD float. Distances use the Gram matrix, so they carry rounding errors of order
            eps * ||x||^2 (float32: negligible for probability maps; pass float64 for exact ties).
        k: clusters per image (may exceed N or the number of distinct points: clusters stay empty).
        iters: maximum number of centre updates; stops earlier once no assignment changes.
        generator: seeds k-means++ (deterministic for a fixed seed; see `clicks.uniform`).
        init: BxkxD initial centres instead of k-means++ (then `n_init` is ignored).
        n_init: k-means++ restarts per image, the lowest summed squared distance wins. Restarts
            share the Gram matrix, so they cost little (no pass over x).
    Returns: labels BxN long in [0, k) (each point's nearest returned centre, ties to the lower
        index) and centers BxkxD (cluster means; an empty cluster keeps its last centre).
    """
    if x.dim() != 3:
        raise ValueError(f"x must be BxNxD, got shape {tuple(x.shape)}")
    if k < 1 or n_init < 1:
        raise ValueError(f"k and n_init must be >= 1, got k={k}, n_init={n_init}")
    if x.dtype in (torch.float16, torch.bfloat16):  # Gram products over D need float32 at least
        x = x.float()
    with torch.autocast(x.device.type, enabled=False):  # callers may sit inside an autocast region
        return _kmeans(x, k, iters, generator, init, n_init)


def _kmeans(
    x: torch.Tensor, k: int, iters: int, generator: torch.Generator | None, init: torch.Tensor | None, n_init: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`batched_kmeans` after argument checks: k-means++ restarts or `init`, Lloyd, final centres."""
    b, n, _ = x.shape
    init = None if init is None else init.to(x)
    gram = _gram(x, init)  # BxMxM
    if init is not None:
        weights = torch.eye(n + k, dtype=gram.dtype, device=x.device)[n:].expand(b, k, n + k)  # the init rows
        labels, weights, _ = _lloyd(gram, weights, n, iters)
        centers = torch.bmm(weights[:, :, :n].to(x.dtype), x) + torch.bmm(weights[:, :, n:].to(x.dtype), init)
        return labels, centers
    u = uniform((b, n_init, k, _trials(k)), x.device, generator).flatten(0, 1)  # (B*R)xkxL
    gram = gram.repeat_interleave(n_init, dim=0)  # (B*R)xNxN, restarts of an image are adjacent
    seeds = torch.nn.functional.one_hot(_kmeans_pp(gram, n, u), n).to(gram.dtype)  # (B*R)xkxN
    labels, weights, inertia = _lloyd(gram, seeds, n, iters)
    best = inertia.view(b, n_init).argmin(1) + torch.arange(b, device=x.device) * n_init  # B, first best
    return labels[best], torch.bmm(weights[best].to(x.dtype), x)  # BxN, BxkxD
