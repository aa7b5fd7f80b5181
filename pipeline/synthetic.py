"""Built-in synthetic multi-rater data (docs/data.md#synthetic-data), written in the LIDC layout and read by its loader.

    <root>/synthetic.json                                   generation parameters
    <root>/{train,val,test}/images/p<NNN>/slice_<SS>.png    128x128 grey, textured, 1-2 blob lesions
    <root>/{train,val,test}/gt/p<NNN>/slice_<SS>_l<k>.png   rater k's mask, 0/255, k = 0..3

Four raters each apply a systematic style to the true lesions, plus ~1 px of smooth boundary jitter:
    0 tight         4 px inside the true boundary
    1 generous      5 px outside it
    2 convex        the convex hull of each lesion, 2 px out
    3 misses_faint  the true boundary, but faint lesions (contrast < 0.13) are not marked at all
Case i of a split is drawn from its own stream, numpy default_rng([seed, split, i]): the same seed
gives byte-identical files, no two splits share a stream, and counts do not change other cases.

The validation split is generated like the others (its own streams), not carved from train, so the
loader's `val_fraction` does not apply here. Trees written before it existed (train and test only, same
parameters and GENERATOR) are extended in place with val/ on first use; their files are left untouched.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.spatial import ConvexHull
from tqdm import tqdm

from conf import global_settings as settings
from utils import InputError, atomic_write_bytes, one_line

DEFAULT_ROOT = settings.SYNTHETIC_DATA_PATH
N_TRAIN, N_VAL, N_TEST = 260, 40, 100  # images per split
GENERATOR = "aespa-synthetic/2"  # bump when the output of the same parameters changes
RATER_STYLES = ("tight", "generous", "convex", "misses_faint")
SIZE = 128
FAINT_CONTRAST = 0.13
JITTER = 0.7  # px, std of the raters' boundary jitter
# Boundary offset of each style in px (+ grows). Large enough that the majority mask is a poor stand-in
# for most raters, so following the user's rater pays off (mean Dice of the majority to a rater ~0.8).
STYLE_OFFSETS = {"tight": -4.0, "generous": 5.0, "convex": 2.0, "misses_faint": 0.0}
RADIUS_RANGE = (10.0, 24.0)
CONTRAST_RANGE = (0.06, 0.35)
SLICES_PER_PATIENT = 10
SPLIT_STREAM = {"train": 0, "test": 1, "val": 2}  # never renumber: the files of a seed depend on it


@dataclass
class SyntheticCase:
    """One image with its truth: image HxW uint8, lesions list of HxW bool, contrasts, raters RxHxW bool."""

    image: np.ndarray
    lesions: list[np.ndarray]
    contrasts: list[float]
    raters: np.ndarray

    @property
    def truth(self) -> np.ndarray:
        return np.logical_or.reduce(self.lesions)


def _smooth_noise(rng: np.random.Generator, sigma: float, shape: tuple[int, int], step: int = 1) -> np.ndarray:
    """Gaussian-smoothed white noise rescaled to unit standard deviation; with step > 1 drawn on a grid
    `step` times coarser and upsampled linearly (the same look for large sigma, a fraction of the cost)."""
    coarse = (shape[0] // step, shape[1] // step)
    field = ndimage.gaussian_filter(rng.standard_normal(coarse), sigma / step, mode="wrap", truncate=3.0)
    if step > 1:
        field = ndimage.zoom(field, step, order=1, mode="grid-wrap", grid_mode=True)
    return field / field.std()


def _box(mask: np.ndarray, pad: int) -> tuple[slice, slice]:
    """Bounding box of a non-empty mask grown by `pad` pixels, clipped to the image."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return (
        slice(max(rows[0] - pad, 0), min(rows[-1] + pad + 1, mask.shape[0])),
        slice(max(cols[0] - pad, 0), min(cols[-1] + pad + 1, mask.shape[1])),
    )


def _distance_map(mask: np.ndarray | None) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """(box, signed distance to the boundary in px inside box, positive inside) of a mask; None if empty.

    The boundary lies between pixels (±0.5); the box leaves 8 px around the mask, more than a rater's
    offset plus 3 std of jitter."""
    if mask is None or not mask.any():
        return None
    box = _box(mask, pad=8)
    crop = mask[box]
    return box, np.where(crop, ndimage.distance_transform_edt(crop) - 0.5, 0.5 - ndimage.distance_transform_edt(~crop))


def _convex_hull(mask: np.ndarray) -> np.ndarray:
    """Pixels whose centres lie in the convex hull of the (non-empty) mask's pixel centres (HxW bool)."""
    box = _box(mask, 0)
    crop = mask[box]
    padded = np.pad(crop, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    points = np.argwhere(crop & ~inner).astype(float)  # boundary pixels suffice for the hull: Nx2 (row, col)
    if len(points) < 3 or np.linalg.matrix_rank(points - points.mean(0)) < 2:
        return mask.copy()
    equations = ConvexHull(points).equations  # Fx3: a*row + b*col + c <= 0 inside
    grid = np.indices(crop.shape).reshape(2, -1).T.astype(float)  # (h*w)x2
    out = np.zeros_like(mask)
    out[box] = ((grid @ equations[:, :2].T + equations[:, 2]) <= 1e-9).all(1).reshape(crop.shape)
    return out


def _styled(rng: np.random.Generator, shape: tuple[int, int], distance: tuple | None, offset: float) -> np.ndarray:
    """The mask of `distance` (see `_distance_map`) with its boundary moved by `offset` px (+ grows) plus
    smooth jitter (std JITTER px)."""
    out = np.zeros(shape, bool)
    if distance is not None:
        box, signed = distance
        out[box] = signed + offset + JITTER * _smooth_noise(rng, 4.0, signed.shape) > 0
    return out


def _place_lesions(rng: np.random.Generator, size: int) -> list[tuple[float, float, float]]:
    """Centres and base radii of 1 or 2 lesions (kept inside the image and apart from each other)."""
    placed = []
    for _ in range(1 + int(rng.random() < 0.35)):
        for _attempt in range(20):
            radius = rng.uniform(*RADIUS_RANGE)
            margin = 1.4 * radius + 3
            cy, cx = rng.uniform(margin, size - margin, 2)
            if all(np.hypot(cy - y, cx - x) > 1.4 * (radius + r) + 3 for y, x, r in placed):
                placed.append((cy, cx, radius))
                break
    return placed


def make_case(rng: np.random.Generator, size: int = SIZE) -> SyntheticCase:
    """Draw one image, its true lesions and the four raters' masks from `rng`."""
    shape = (size, size)
    fine = _smooth_noise(rng, 1.5, shape)
    image = 0.3 + 0.08 * _smooth_noise(rng, 8.0, shape, step=4) + 0.03 * fine
    lesions, contrasts = [], []
    for cy, cx, radius in _place_lesions(rng, size):
        amps, phases = rng.uniform(0.0, 0.15, 3), rng.uniform(0.0, 2 * np.pi, 3)
        contrast = float(rng.uniform(*CONTRAST_RANGE))
        reach = int(1.45 * radius + 8)  # lobes stay within 1.45 radius; the soft edge fades within 8 px
        box = tuple(slice(max(int(c) - reach, 0), min(int(c) + reach + 1, size)) for c in (cy, cx))
        yy, xx = np.mgrid[box]
        theta, dist = np.arctan2(yy - cy, xx - cx), np.hypot(yy - cy, xx - cx)
        edge = radius * (1 + sum(a * np.cos(k * theta + p) for k, a, p in zip((2, 3, 4), amps, phases)))
        profile = 1.0 / (1.0 + np.exp(-(edge - dist) / 0.8))  # soft edge, 0.5 on the true boundary
        image[box] += contrast * (1.0 + 0.15 * fine[box]) * profile
        lesion = np.zeros(shape, bool)
        lesion[box] = edge > dist
        lesions.append(lesion)
        contrasts.append(contrast)
    image += rng.uniform(0.01, 0.05) * rng.standard_normal(shape)
    image8 = np.rint(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)

    truth = np.logical_or.reduce(lesions)
    seen = [m for m, c in zip(lesions, contrasts) if c >= FAINT_CONTRAST]
    truth_distance = _distance_map(truth)
    bases = {  # style -> distance map of the mask the rater starts from
        "tight": truth_distance,
        "generous": truth_distance,
        "convex": _distance_map(np.logical_or.reduce([_convex_hull(m) for m in lesions])),
        "misses_faint": truth_distance
        if len(seen) == len(lesions)
        else _distance_map(np.logical_or.reduce(seen) if seen else None),
    }
    raters = np.stack([_styled(rng, shape, bases[style], STYLE_OFFSETS[style]) for style in RATER_STYLES])  # RxHxW
    return SyntheticCase(image8, lesions, contrasts, raters)


def case_stream(seed: int, split: str, index: int) -> np.random.Generator:
    """The random stream of case `index` of `split` (independent of the counts asked for)."""
    return np.random.default_rng([seed, SPLIT_STREAM[split], index])


def _parameters(seed: int, n_train: int, n_test: int, n_val: int = N_VAL) -> dict:
    return {
        "generator": GENERATOR,
        "seed": seed,
        "n_train": n_train,
        "n_val": n_val,
        "n_test": n_test,
        "size": SIZE,
        "raters": list(RATER_STYLES),
    }


def _write_split(root: Path, split: str, seed: int, count: int) -> None:
    """Write cases 0..count-1 of `split` into root/<split>/ (which must not exist yet)."""
    for i in tqdm(range(count), desc=f"synthetic {split} images", leave=False, disable=None):
        case = make_case(case_stream(seed, split, i))
        patient, stem = f"p{i // SLICES_PER_PATIENT:03d}", f"slice_{i % SLICES_PER_PATIENT:02d}"
        images, gt = root / split / "images" / patient, root / split / "gt" / patient
        if i % SLICES_PER_PATIENT == 0:
            images.mkdir(parents=True)
            gt.mkdir(parents=True)
        Image.fromarray(case.image).save(images / f"{stem}.png", format="PNG")
        for k, mask in enumerate(case.raters):
            Image.fromarray(mask.astype(np.uint8) * 255).save(gt / f"{stem}_l{k}.png", format="PNG")


def _write_parameters(root: Path, parameters: dict) -> None:
    atomic_write_bytes(root / "synthetic.json", (json.dumps(parameters, indent=1) + "\n").encode())


def generate(
    root: str | os.PathLike, seed: int = 0, n_train: int = N_TRAIN, n_test: int = N_TEST, n_val: int = N_VAL
) -> None:
    """Write the data set into the (new or empty) folder `root`, synthetic.json last."""
    root = Path(root)
    for split, count in (("train", n_train), ("val", n_val), ("test", n_test)):
        _write_split(root, split, seed, count)
    _write_parameters(root, _parameters(seed, n_train, n_test, n_val))


def _read_parameters(root: Path) -> dict | None:
    try:
        found = json.loads((root / "synthetic.json").read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def _file_bytes(folder: Path) -> dict[str, bytes]:
    """{path relative to folder: content} of every file under folder."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _add_val_split(root: Path, parameters: dict) -> Path:
    """Extend a tree generated before the validation split existed (its synthetic.json has no n_val): val/ is
    generated in a temporary folder inside root and renamed into place, synthetic.json rewritten last; train/
    and test/ are not touched."""
    try:
        tmp = Path(tempfile.mkdtemp(prefix=".val.tmp-", dir=root))
    except OSError as err:
        raise InputError(f"{root}: cannot add the validation split ({one_line(err)})") from err
    try:
        _write_split(tmp, "val", parameters["seed"], parameters["n_val"])
        try:
            os.replace(tmp / "val", root / "val")  # atomic; fails when a non-empty val/ is already there
        except OSError:
            # put there by a concurrent process (a DDP rank) or by an extension interrupted before it rewrote
            # synthetic.json: accepted only when it holds exactly the files these parameters generate
            if _file_bytes(root / "val") != _file_bytes(tmp / "val"):
                raise InputError(
                    f"{root / 'val'}: exists but is not the validation split of {root / 'synthetic.json'}; delete it"
                ) from None
        _write_parameters(root, parameters)
    except OSError as err:
        raise InputError(f"{root}: cannot add the validation split ({one_line(err)})") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def ensure_synthetic(
    root: str | os.PathLike = DEFAULT_ROOT,
    seed: int = 0,
    n_train: int = N_TRAIN,
    n_test: int = N_TEST,
    n_val: int = N_VAL,
) -> Path:
    """`root`, generated first when absent or empty; reused when its synthetic.json matches the
    parameters; extended with val/ when it was generated with the same parameters before the validation
    split existed; otherwise InputError (one line). Generation happens in a temporary sibling folder that
    is renamed into place, so concurrent processes (DDP ranks) never see a half-written tree."""
    root = Path(root)
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise InputError(f"synthetic data seed must be a non-negative integer, got {seed}")
    if min(n_train, n_val, n_test) < 1:
        raise InputError(
            f"synthetic data needs at least one train, val and test image (got {n_train}, {n_val}, {n_test})"
        )
    wanted = _parameters(int(seed), int(n_train), int(n_test), int(n_val))
    for _attempt in range(2):
        if root.is_dir() and any(root.iterdir()):
            found = _read_parameters(root)
            if found == wanted:
                return root
            if found is None:
                raise InputError(f"{root}: folder exists and is not synthetic data (no valid synthetic.json)")
            if "n_val" not in found and found == {k: v for k, v in wanted.items() if k != "n_val"}:
                return _add_val_split(root, wanted)
            differ = ", ".join(
                f"{k}={found.get(k)} (asked {v})"
                for k, v in wanted.items()
                if found.get(k) != v and (k != "n_val" or k in found)  # a missing val split alone is added
            )
            raise InputError(
                f"{root}: synthetic data generated with other parameters: {differ}; use another data path or delete it"
            )
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
        try:
            generate(tmp, seed, n_train, n_test, n_val)
            os.chmod(tmp, 0o755)  # mkdtemp makes it private
            os.replace(tmp, root)  # atomic; fails when another process filled root meanwhile
            return root
        except OSError:
            if not root.is_dir():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    raise InputError(f"{root}: could not create synthetic data")
