"""The demo's bundled sample: synthetic test images and each rater's mask, as PNG files in demo/sample/.

    python -m demo.sample            # (re)writes demo/sample/ deterministically

The first image is chosen from the synthetic generator (docs/data.md#synthetic-data) so that the raters visibly
disagree: two lesions, every rater marking a sizeable region, and the lowest mean pairwise inter-rater Dice among
the first test cases of seed 0. It opens a series (`demo/sample/series_<k>/`, the next test cases with a lesion
every rater marks) on which a session memory carries the user's preference from one image to the next: the four
raters keep their styles on every image of the synthetic set.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.image_files import read_image, read_mask
from pipeline.synthetic import RATER_STYLES, case_stream, make_case
from utils import InputError

SAMPLE_DIR = Path(__file__).resolve().parent / "sample"
SEED, SPLIT, CANDIDATES = 0, "test", 20
SERIES = 5  # images after the first one
MIN_RATER_PIXELS = 800  # of 128x128: every rater's region is clearly visible


@dataclass
class Sample:
    """An image HxW or HxWx3 float in [0,1], raters RxHxW bool, their names, and where it came from."""

    image: np.ndarray
    raters: np.ndarray
    rater_names: list[str]
    source: str


def mean_pairwise_dice(raters: np.ndarray) -> float:
    """Mean Dice over the unordered pairs of RxHxW bool masks."""
    pairs = [2 * (a & b).sum() / max(a.sum() + b.sum(), 1) for a, b in itertools.combinations(raters, 2)]
    return float(np.mean(pairs))


def choose_case(seed: int = SEED, candidates: int = CANDIDATES) -> int:
    """Index of the test case whose raters disagree most (see the module docstring)."""
    scores = {}
    for i in range(candidates):
        case = make_case(case_stream(seed, SPLIT, i))
        if len(case.lesions) == 2 and case.raters.sum((1, 2)).min() >= MIN_RATER_PIXELS:
            scores[i] = mean_pairwise_dice(case.raters)
    return min(scores, key=scores.get)


def write_sample(folder: Path = SAMPLE_DIR, seed: int = SEED) -> Path:
    """Write the first image and, in series_<k>/, the series after it (see the module docstring)."""
    index = choose_case(seed)
    write_case(folder, seed, index)
    following = (
        i for i in itertools.count(index + 1) if make_case(case_stream(seed, SPLIT, i)).raters.any((1, 2)).all()
    )
    for k, i in enumerate(itertools.islice(following, SERIES), start=1):
        write_case(folder / f"series_{k}", seed, i)
    return folder


def write_case(folder: Path, seed: int, index: int) -> None:
    """Write image.png, rater_<k>.png (0/255) and sample.json (provenance, rater names) into `folder`."""
    case = make_case(case_stream(seed, SPLIT, index))
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(case.image).save(folder / "image.png", optimize=True)
    for k, mask in enumerate(case.raters):
        Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"rater_{k}.png", optimize=True)
    meta = {
        "source": f"pipeline.synthetic seed {seed}, {SPLIT} case {index}",
        "mean_pairwise_dice": round(mean_pairwise_dice(case.raters), 4),
        "raters": list(RATER_STYLES),
    }
    (folder / "sample.json").write_text(json.dumps(meta, indent=1) + "\n")


def load_sample(folder: Path = SAMPLE_DIR) -> Sample:
    """Read a sample folder written by `write_sample` (one-line InputError when something is missing)."""
    meta_path = folder / "sample.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(
            f"{meta_path}: missing or unreadable demo sample ({err.__class__.__name__}); "
            f"regenerate it with python -m demo.sample"
        ) from None
    names = list(meta["raters"])
    image = read_image(folder / "image.png")
    raters = np.stack([read_mask(folder / f"rater_{k}.png") for k in range(len(names))])  # RxHxW
    return Sample(image, raters, names, meta["source"])


def load_series(folder: Path = SAMPLE_DIR) -> list[Sample]:
    """The bundled sample and the series after it (`series_1`, `series_2`, ... as far as they go)."""
    following = itertools.takewhile(lambda p: p.is_dir(), (folder / f"series_{k}" for k in itertools.count(1)))
    return [load_sample(folder), *(load_sample(p) for p in following)]


if __name__ == "__main__":
    print(f"wrote {write_sample()}")
