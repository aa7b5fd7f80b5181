"""A CT-like image (HU) around an LIDC nodule, made up: the annotation database has no intensities.

Every intensity of the LIDC-readers data comes from here; every mask comes from the readers (pipeline/
lidc_database.py). The volume, on a window of the scan's own voxel grid (Z slices x H rows x W columns, spacing
dz mm between slices and p mm between pixels), is

    lung parenchyma    -850 HU with two scales of smooth texture (about 35 HU over 3 mm, 15 HU over 0.8 mm)
    vessels            6 to 12 branching trees of tubes, +40 HU, 0.6 to 2 mm in radius at the root, narrowing at
                       each branch, with a 0.5 mm partial-volume ramp; they stop short of the nodule (a sphere
                       around the readers' union, 2 mm out), so no vessel runs into any reader's outline
    the lesion         occupancy = the mean of the marking readers' masks, smoothed (Gaussian, 0.6 mm): 1 where
                       all of them mark, a fraction where some do, so its edge favours no single reader (where
                       half of them mark, the lesion is at half contrast); density from the readers' mean texture
                       rating: 1 ground glass -620 HU, 2 -480, 3 part solid -300, 4 -120, 5 solid +30, with a
                       smooth internal heterogeneity (60 HU for ground glass down to 15 HU for solid)
    noise              Gaussian, 20 HU, slightly correlated (0.5 px)

and is rounded to int16 within [-1024, 3071]. It depends only on its inputs and `seed` (the nodule's ids).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

PARENCHYMA_HU, VESSEL_HU = -850.0, 40.0
TEXTURE_HU = {1: -620.0, 2: -480.0, 3: -300.0, 4: -120.0, 5: 30.0}  # lesion density by texture rating
HETEROGENEITY_HU = (60.0, 15.0)  # internal variation of ground glass (texture 1) and solid (5) lesions
NOISE_HU = 20.0
EDGE_MM = 0.6  # smoothing of the readers' mean mask
VESSEL_RAMP_MM = 0.5
VESSEL_GAP_MM = 2.0  # vessels stop this far outside the sphere around the readers' union
HU_RANGE = (-1024, 3071)


def lesion_density(texture: float) -> float:
    """HU of a lesion whose readers' mean texture rating is `texture` (1..5, linear between the ratings)."""
    ratings = sorted(TEXTURE_HU)
    return float(np.interp(texture, ratings, [TEXTURE_HU[r] for r in ratings]))


def _smooth_noise(
    rng: np.random.Generator, shape: tuple[int, ...], sigma_voxels: Sequence[float], step: int = 1
) -> np.ndarray:
    """Gaussian-smoothed white noise with unit standard deviation; with step > 1 drawn on a grid `step` times
    coarser in-plane and upsampled by repetition and a `step`-wide box filter (linear interpolation's look, for a
    wide sigma at a fraction of the cost)."""
    coarse = (shape[0], -(-shape[1] // step), -(-shape[2] // step))
    sigma = (sigma_voxels[0], sigma_voxels[1] / step, sigma_voxels[2] / step)
    field = ndimage.gaussian_filter(rng.standard_normal(coarse, dtype=np.float32), sigma, mode="reflect", truncate=3.0)
    if step > 1:
        field = np.repeat(np.repeat(field, step, axis=1), step, axis=2)[:, : shape[1], : shape[2]]
        field = ndimage.uniform_filter(field, (1, step, step), mode="nearest")
    return field / max(float(field.std()), 1e-6)


def _length(v: np.ndarray) -> float:
    return math.sqrt(float(v @ v))  # np.linalg.norm costs more than the arithmetic for a 3-vector


def _vessel_segments(
    rng: np.random.Generator, extent: np.ndarray, centre: np.ndarray, keep_out: float
) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Segments (start, end, radius) in mm of 6-12 branching trees in the box [0, extent] (z, y, x), none within
    `keep_out` mm of `centre`."""
    segments = []
    step = 2.5
    for _tree in range(int(rng.integers(6, 13))):
        for _attempt in range(20):  # a root outside the kept-out sphere
            root = rng.uniform(0.0, 1.0, 3) * extent
            if _length(root - centre) > keep_out + 3.0:
                break
        else:
            continue
        direction = rng.standard_normal(3)
        branches = [(root, direction / _length(direction), float(rng.uniform(0.6, 2.0)))]
        while branches and len(segments) < 600:
            point, direction, radius = branches.pop()
            for _step in range(40):
                direction = direction + rng.normal(0.0, 0.25, 3)
                direction /= _length(direction)
                end = point + step * direction
                if _length(end - centre) < keep_out or np.any(end < -3.0) or np.any(end > extent + 3.0):
                    break
                segments.append((point, end, radius))
                point = end
                if rng.random() < 0.12:  # branch: a thinner child turned off the parent's course
                    turn = rng.standard_normal(3)
                    child = direction + 0.8 * (turn - (turn @ direction) * direction)
                    branches.append((point, child / _length(child), radius * float(rng.uniform(0.55, 0.8))))
                    radius *= 0.85
                if radius < 0.3:
                    break
    return segments


def _vessel_occupancy(shape: tuple[int, int, int], spacing: np.ndarray, segments) -> np.ndarray:
    """ZxHxW float32 in [0, 1]: how much of each voxel the tubes fill (a linear ramp VESSEL_RAMP_MM wide)."""
    occupancy = np.zeros(shape, np.float32)
    if not segments:
        return occupancy
    start, end = (np.array([s[i] for s in segments]) for i in (0, 1))  # Nx3 mm
    radius = np.array([s[2] for s in segments], np.float32)[:, None]
    reach = radius + VESSEL_RAMP_MM
    low = np.floor((np.minimum(start, end) - reach) / spacing).astype(int)  # Nx3 voxel boxes around the segments
    size = (np.ceil((np.maximum(start, end) + reach) / spacing).astype(int) + 1 - low).max(0)
    local = np.indices(size).reshape(3, -1)  # 3xV: every segment gets a box of the largest box's size
    voxels = [low[:, i, None] + local[i] for i in range(3)]  # 3 of NxV voxel indices
    offsets = [(voxels[i] * spacing[i] - start[:, i, None]).astype(np.float32) for i in range(3)]  # mm from start
    axis = (end - start).astype(np.float32)
    t = sum(o * axis[:, i, None] for i, o in enumerate(offsets)) / (axis * axis).sum(1)[:, None]
    t = np.clip(t, 0.0, 1.0)
    distance = np.sqrt(sum((o - t * axis[:, i, None]) ** 2 for i, o in enumerate(offsets)))
    fill = np.clip((radius - distance) / VESSEL_RAMP_MM + 0.5, 0.0, 1.0)
    inside = fill > 0
    for i in range(3):
        inside &= (voxels[i] >= 0) & (voxels[i] < shape[i])
    flat = np.ravel_multi_index(tuple(v[inside] for v in voxels), shape)
    np.maximum.at(occupancy.reshape(-1), flat, fill[inside])
    return occupancy


def synthesize(readers: np.ndarray, spacing: tuple[float, float], texture: float, seed: Sequence[int]) -> np.ndarray:
    """ZxHxW int16 HU on the window of `readers` (RxZxHxW bool: the masks of the R >= 1 readers who marked the
    nodule); `spacing` (dz, p) in mm; `texture` the readers' mean rating; `seed` the nodule's ids."""
    rng = np.random.default_rng(list(seed))
    shape = readers.shape[1:]
    dz, p = spacing
    voxel = np.array([dz, p, p])
    coarse = _smooth_noise(rng, shape, 3.0 / voxel, step=4)
    fine = _smooth_noise(rng, shape, 0.8 / voxel)  # also the lesion's internal heterogeneity
    hu = PARENCHYMA_HU + 35.0 * coarse + 15.0 * fine

    union = readers.any(0)
    marked = np.argwhere(union)
    low, high = marked.min(0) * voxel, marked.max(0) * voxel
    centre = (low + high) / 2.0
    keep_out = float(np.linalg.norm(high - low)) / 2.0 + VESSEL_GAP_MM
    vessels = _vessel_occupancy(shape, voxel, _vessel_segments(rng, np.array(shape) * voxel, centre, keep_out))
    hu += vessels * (VESSEL_HU - hu)

    occupancy = ndimage.gaussian_filter(readers.mean(0, dtype=np.float32), EDGE_MM / voxel, mode="constant")
    weight = (np.clip(texture, 1.0, 5.0) - 1.0) / 4.0
    spread = HETEROGENEITY_HU[0] + weight * (HETEROGENEITY_HU[1] - HETEROGENEITY_HU[0])
    lesion = lesion_density(texture) + spread * fine
    hu += occupancy * (lesion - hu)

    hu += NOISE_HU * _smooth_noise(rng, shape, (0.0, 0.5, 0.5))
    return np.clip(np.rint(hu), *HU_RANGE).astype(np.int16)
