"""Random draws for the loops: a torch.Generator in training, per-image keyed streams in validation.

Validation must give each image the same clicks, latent samples and k-means seeds whatever batch it sits
in: `val.py -b 1` reproduces the metrics a run logged at `-b 8`, and a validation split over several
ranks equals the single-process one. `KeyedRandom` makes every draw a hash of (seed, image key, draw
number, position): a counter-based generator (splitmix64 mixing in int64 tensor arithmetic), so it is
vectorised over the batch and identical on every device.

Every draw in the project goes through `uniform(shape, device, source)` with `shape[0]` the batch.
"""

from __future__ import annotations

import math

import torch

_GOLDEN = -0x61C8864680B583EB  # 0x9E3779B97F4A7C15 as a signed 64-bit integer
_M1 = -0x40A7B892E31B1A47  # 0xBF58476D1CE4E5B9
_M2 = -0x6B2FB644ECCEEE15  # 0x94D049BB133111EB


def _shr(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic on negative values)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _mix(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser: a bijective scrambling of 64-bit integers (multiplication wraps)."""
    x = (x ^ _shr(x, 30)) * _M1
    x = (x ^ _shr(x, 27)) * _M2
    return x ^ _shr(x, 31)


class KeyedRandom:
    """Per-image random streams: draw n of image `key` depends only on (seed, key, n), not on its neighbours.

    keys: B int64 (e.g. dataset indices). Each call to `uniform` is one draw for every row.
    """

    def __init__(self, seed: int, keys: torch.Tensor):
        self.keys = keys.long()
        self.seed = int(seed)
        self.calls = 0

    def subset(self, rows: torch.Tensor, salt: torch.Tensor | None = None) -> KeyedRandom:
        """Streams for a selection of rows (`rows` P), optionally split further by `salt` P (e.g. a rater index);
        the draw counter carries over, so the subset continues in step with its parent."""
        keys = self.keys.to(rows.device)[rows]
        if salt is not None:
            keys = _mix(keys * 64 + salt.long() + 1)
        sub = KeyedRandom(self.seed, keys)
        sub.calls = self.calls
        return sub

    def uniform(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """U[0, 1) float64 of `shape` (shape[0] = number of keys) on `device`."""
        if shape[0] != len(self.keys):
            raise ValueError(f"keyed draws for {len(self.keys)} images, asked for shape {tuple(shape)}")
        self.calls += 1
        keys = self.keys.to(device)
        calls = torch.tensor(self.calls, dtype=torch.int64, device=device)
        base = _mix(_mix(keys * _GOLDEN + self.seed) + calls * _GOLDEN)  # B (int64 products wrap around)
        n = math.prod(shape[1:])
        pos = torch.arange(1, n + 1, device=device, dtype=torch.int64)
        bits = _mix(base[:, None] + pos[None, :] * _GOLDEN)  # Bxn
        return (_shr(bits, 11).double() / float(1 << 53)).reshape(shape)


def uniform(
    shape: tuple[int, ...], device: torch.device, source: torch.Generator | KeyedRandom | None = None
) -> torch.Tensor:
    """U[0, 1) float64 numbers on `device`: from keyed per-image streams, or from a generator (drawn on the
    generator's own device, so one CPU generator gives the same numbers on every device)."""
    if isinstance(source, KeyedRandom):
        return source.uniform(shape, device)
    if source is None:
        return torch.rand(shape, device=device, dtype=torch.float64)
    return torch.rand(shape, generator=source, device=source.device, dtype=torch.float64).to(device)


def normal(
    shape: tuple[int, ...], device: torch.device, source: torch.Generator | KeyedRandom | None = None
) -> torch.Tensor:
    """N(0, 1) float32 numbers (Box-Muller on two uniform draws)."""
    u1, u2 = uniform(shape, device, source), uniform(shape, device, source)
    return (torch.sqrt(-2.0 * torch.log1p(-u1)) * torch.cos(2 * math.pi * u2)).float()
