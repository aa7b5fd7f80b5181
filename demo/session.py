"""One user's interaction, as plain immutable data, and what the UI shows for it (no gradio here).

A `Session` is an image (the bundled sample with its raters, or an upload without) and the clicks so far,
plus the undone clicks that `redo` brings back, and — for a model with a session memory — the style vectors of the
images finished before it in this session (`next_image` adds the current one's; `new_session` forgets them).
Every action returns a new Session; `render` draws it. The prediction depends only on (image, clicks, memory), so
undo gives back exactly the earlier prediction.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline.image_files import read_image, resize_mask
from utils import InputError, one_line

from .predictor import Click, Predictor, rater_scores, to_model_input
from .render import (
    THUMB_MIN,
    VIEW_MIN,
    base_view,
    comparison_view,
    display_size,
    mask_png,
    prediction_view,
    to_model_xy,
)
from .sample import Sample

LABELS = {"positive": 1, "negative": 0}
BOX_CORNER = "box corner"  # the third kind of click: two of them (opposite corners) set the box
# Upload limits: a scan at the model's input size is at most 1024 px, so 4096x4096 leaves room for any real scan
# while a decoded upload stays near 200 MB (float32 RGB); the bytes are checked before the file is opened.
MAX_UPLOAD_SIDE = 4096
MAX_UPLOAD_PIXELS = MAX_UPLOAD_SIDE * MAX_UPLOAD_SIDE
MAX_UPLOAD_BYTES = 50_000_000


@dataclass(frozen=True)
class Session:
    """pixels 3xSxS model input; base DxDx3 uint8 backdrop of the view, thumb the gallery's (smaller);
    raters RxSxS bool or None (an upload)."""

    title: str
    pixels: np.ndarray
    base: np.ndarray
    thumb: np.ndarray
    raters: np.ndarray | None = None
    rater_names: tuple[str, ...] = ()
    clicks: tuple[Click, ...] = ()
    redo_stack: tuple[Click, ...] = ()
    box: tuple[int, int, int, int] | None = None  # (x0, y0, x1, y1) model pixels, in every round's prompt
    corner: tuple[int, int] | None = None  # the box's first corner, waiting for the opposite one
    memory: tuple[np.ndarray, ...] = ()  # style vectors (D) of the session's finished images, the newest last
    series: int = 0  # which image of the bundled series this is (-1: an upload)

    @property
    def size(self) -> int:
        return self.pixels.shape[-1]

    @property
    def display(self) -> int:
        return self.base.shape[0]


@dataclass
class Rendered:
    """What the UI shows: the view DxDx3, the SxS 0/255 mask, a caption, gallery tiles, the click list."""

    view: np.ndarray
    mask: np.ndarray
    caption: str
    gallery: list[tuple[np.ndarray, str]]
    clicks_text: str


def new_session(
    image: np.ndarray,
    size: int,
    title: str,
    sample: Sample | None = None,
    memory: tuple[np.ndarray, ...] = (),
    series: int = -1,
) -> Session:
    """A session without clicks for an HxW[x3] image (float in [0,1] or uint8), with the sample's raters, carrying
    the memory of earlier images."""
    pixels = to_model_input(image, size).numpy()
    raters = names = None
    if sample is not None:
        raters = np.stack([resize_mask(m, size) for m in sample.raters])  # RxSxS, as the data loaders resize
        names = tuple(f"rater {k} ({name})" for k, name in enumerate(sample.rater_names))
    base, thumb = (base_view(image, display_size(size, at_least)) for at_least in (VIEW_MIN, THUMB_MIN))
    return Session(title, pixels, base, thumb, raters, names or (), memory=memory, series=series)


def series_session(series: list[Sample], k: int, size: int, memory: tuple[np.ndarray, ...] = ()) -> Session:
    """A session on image k of the bundled series (counted around), carrying `memory`."""
    k %= len(series)
    title = "Bundled sample" if k == 0 else f"Bundled sample, image {k + 1} of {len(series)}"
    return new_session(series[k].image, size, title, series[k], memory, k)


def memory_of(predictor: Predictor, s: Session) -> np.ndarray | None:
    """The memory the session's predictions read: the mean style of its last images (None: none yet)."""
    if not s.memory:
        return None
    return np.mean(s.memory[-predictor.memory_window :], axis=0)


def next_image(predictor: Predictor, s: Session, series: list[Sample]) -> Session:
    """The next image of the bundled series; a model with a session memory keeps the style of the prediction the
    user ended with here (an upload goes on with the series' first image)."""
    memory = s.memory
    if predictor.has_memory:
        probs = predictor.predict(to_tensor(s), s.clicks, s.box, memory_of(predictor, s))
        memory = memory + (predictor.styles(to_tensor(s), probs[None])[0],)
    return series_session(series, s.series + 1, s.size, memory)


def forget(s: Session) -> Session:
    """A new session on the same image: no memory, no clicks (every image of a session starts blind again)."""
    return replace(clear(s), memory=())


def read_upload(path: str | os.PathLike) -> np.ndarray:
    """An uploaded file -> HxW or HxWx3 float image in [0,1], read as the data loaders read images.

    Refused with a one-line InputError (the page shows it): a file over MAX_UPLOAD_BYTES (checked before opening),
    a file PIL cannot identify, an image over MAX_UPLOAD_PIXELS (checked from its header, before decoding).
    """
    path = Path(path)
    name = path.name
    size = path.stat().st_size
    if size > MAX_UPLOAD_BYTES:
        raise InputError(
            f"Upload refused: {name} is {size / 1e6:.1f} MB, over the limit of {MAX_UPLOAD_BYTES / 1e6:g} MB per file"
        )
    try:
        with Image.open(path) as img:  # reads the header only
            width, height = img.size
    except (OSError, ValueError, SyntaxError):  # UnidentifiedImageError is an OSError; broken headers raise others
        raise InputError(f"Upload refused: {name} is not an image file (PNG, JPEG, TIFF, BMP, ...)") from None
    if width * height > MAX_UPLOAD_PIXELS:
        raise InputError(
            f"Upload refused: {name} is {width}x{height} = {width * height:,} pixels, over the limit of "
            f"{MAX_UPLOAD_SIDE}x{MAX_UPLOAD_SIDE} = {MAX_UPLOAD_PIXELS:,} pixels"
        )
    try:
        return read_image(path)
    except InputError as err:  # a header that promises more than the file holds (truncated, corrupt)
        reason = one_line(err.__cause__) if err.__cause__ is not None else "unreadable"
        raise InputError(f"Upload refused: {name} could not be decoded ({reason})") from None


def model_pixel(value: object, name: str, size: int) -> int:
    """A coordinate from the page or the API as a model pixel: rounded to the nearest pixel, clamped to 0..size-1;
    InputError (one line naming the coordinate) for anything that is not a finite number (None, NaN, text)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{name}: expected a pixel coordinate (a number in 0..{size - 1}), got {value!r}")
    return min(max(round(value), 0), size - 1)


def rater_number(value: object, s: Session) -> int:
    """The rater /suggest follows: its number as text ("0", "1", ...: the API's documented type, what the page's
    list sends) or as an int; InputError (one line) for anything else, a number the image has no rater for, or an
    image without raters (an upload)."""
    if s.raters is None:
        raise InputError(f"rater: {s.title} has no raters to follow (suggestions need the bundled sample)")
    last = len(s.raters) - 1
    text = str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    if not re.fullmatch(r"[0-9]+", text) or int(text) > last:
        raise InputError(f'rater: expected a rater number, "0" to "{last}", got {value!r}')
    return int(text)


def add_click(s: Session, x: int, y: int, label: str | int) -> Session:
    """Append a click at model pixel (x, y); a new click forgets the undone ones."""
    value = LABELS.get(label, label) if isinstance(label, str) else label
    if value not in (0, 1) or isinstance(value, bool):
        raise InputError(f"label: a click is positive or negative (1 or 0), got {label!r}")
    x, y = model_pixel(x, "x", s.size), model_pixel(y, "y", s.size)
    return replace(s, clicks=s.clicks + (Click(x, y, int(value)),), redo_stack=())


def add_display_click(s: Session, x: float, y: float, label: str | int) -> Session:
    """A click at pixel (x, y) of the displayed DxD view (a box corner in box mode)."""
    if label == BOX_CORNER:
        return add_corner(s, *to_model_xy(x, y, s.display, s.size))
    return add_click(s, *to_model_xy(x, y, s.display, s.size), label)


def add_corner(s: Session, x: int, y: int) -> Session:
    """The first corner of a box, or the opposite one, which sets the box (replacing an earlier one)."""
    x, y = model_pixel(x, "x", s.size), model_pixel(y, "y", s.size)
    if s.corner is None:
        return replace(s, corner=(x, y))
    return set_box(replace(s, corner=None), s.corner[0], s.corner[1], x, y)


def set_box(s: Session, x0: int, y0: int, x1: int, y1: int) -> Session:
    """A box from two opposite corners (model pixels, any order), clamped to the image."""
    xs = sorted(model_pixel(v, name, s.size) for v, name in ((x0, "x0"), (x1, "x1")))
    ys = sorted(model_pixel(v, name, s.size) for v, name in ((y0, "y0"), (y1, "y1")))
    return replace(s, box=(xs[0], ys[0], xs[1], ys[1]), corner=None)


def undo(s: Session) -> Session:
    if not s.clicks:
        return s
    return replace(s, clicks=s.clicks[:-1], redo_stack=s.redo_stack + s.clicks[-1:])


def redo(s: Session) -> Session:
    if not s.redo_stack:
        return s
    return replace(s, clicks=s.clicks + s.redo_stack[-1:], redo_stack=s.redo_stack[:-1])


def clear(s: Session) -> Session:
    """No clicks, no box."""
    return replace(s, clicks=(), redo_stack=(), box=None, corner=None)


def suggest(predictor: Predictor, s: Session, rater: str | int) -> Session:
    """Add the simulated user's next click toward `rater` (see `rater_number`)."""
    k = rater_number(rater, s)
    probs = predictor.predict(to_tensor(s), s.clicks, s.box, memory_of(predictor, s))
    return add_click(s, *predictor.suggest(probs, s.raters[k], s.clicks))


def to_tensor(s: Session) -> torch.Tensor:
    return torch.from_numpy(s.pixels)  # 3xSxS


def describe_clicks(s: Session) -> str:
    lines = [f"{i}. ({c.x}, {c.y}) {'positive' if c.label else 'negative'}" for i, c in enumerate(s.clicks, 1)]
    if s.box is not None:
        lines.insert(0, f"box ({s.box[0]}, {s.box[1]}) - ({s.box[2]}, {s.box[3]})")
    if s.corner is not None:
        lines.insert(0, f"box corner ({s.corner[0]}, {s.corner[1]}): click the opposite corner")
    return "\n".join(lines) if lines else "no clicks yet"


def belief(predictor: Predictor, s: Session) -> str:
    """What the model currently believes about the user's preference, in words: no memory in the model, none yet,
    or the rater of this image whose style (its mask's style vector) is closest (cosine) to the memory."""
    if not predictor.has_memory:
        return "This model has no session memory: every image starts blind."
    memory = memory_of(predictor, s)
    if memory is None:
        return "Preference: **no preference yet** (the first image of a session starts blind)."
    n = min(len(s.memory), predictor.memory_window)
    carried = f"carried from the last {n} image{'s' if n != 1 else ''} of this session"
    if s.raters is None:
        return f"Preference: {carried}."
    styles = predictor.styles(to_tensor(s), s.raters)
    cosine = styles @ memory / (np.linalg.norm(styles, axis=1) * np.linalg.norm(memory) + 1e-12)
    return f"Preference {carried}: closest to **{s.rater_names[int(np.argmax(cosine))]}**."


def render(predictor: Predictor, s: Session) -> Rendered:
    """Predict from the session's clicks (and memory) and draw everything the UI shows."""
    probs = predictor.predict(to_tensor(s), s.clicks, s.box, memory_of(predictor, s))
    view = prediction_view(s.base, probs, s.clicks, s.box)
    n = len(s.clicks)
    summary = f"{n} click{'s' if n != 1 else ''}; {int((probs > 0.5).sum())} of {s.size}x{s.size} pixels predicted"
    believes = belief(predictor, s)
    if s.raters is None:
        return Rendered(
            view,
            mask_png(probs),
            f"**{s.title}**: no raters to compare with. {summary}.\n\n{believes}",
            [],
            describe_clicks(s),
        )
    dices, ious = rater_scores(probs, s.raters)
    best = int(np.argmax(dices))  # the closest rater by Dice; the first of equals
    table = "\n".join(
        f"| {name}{' ⟵' if k == best else ''} | {d:.3f} | {j:.3f} |"
        for k, (name, d, j) in enumerate(zip(s.rater_names, dices, ious))
    )
    caption = (
        f"**Following: {s.rater_names[best]}**. {summary}.\n\n{believes}\n\n| rater | Dice | IoU |\n|---|---|---|\n"
        f"{table}"
    )
    tiles = [(comparison_view(s.thumb, probs, r), name) for r, name in zip(s.raters, s.rater_names)]
    return Rendered(view, mask_png(probs), caption, tiles, describe_clicks(s))
