"""What the demo draws: the scan with the prediction overlaid and the clicks marked, and per-rater comparisons.

Colours are fixed so that a person (and a test) can read them off a screenshot:
* prediction overlay: pure red at alpha 1/2 — a pixel of value (r, g, b) under the prediction becomes
  ((r + 255) / 2, g / 2, b / 2); on a grey scan its red exceeds its green by about 127;
* clicks: filled discs with a black rim, green for positive, blue for negative;
* rater comparisons: yellow where rater and prediction agree on foreground, cyan where only the rater
  marks, red where only the prediction does.

The view is the SxS model input shown at D = k·S pixels (an integer k, so that a display pixel maps to
exactly one model pixel: x_model = floor(x_display · S / D)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from .predictor import Click

OVERLAY_RGB = (255, 0, 0)
OVERLAY_ALPHA = 0.5
POSITIVE_RGB, NEGATIVE_RGB, RIM_RGB = (0, 255, 0), (0, 0, 255), (0, 0, 0)
BOX_RGB = (255, 165, 0)
AGREE_RGB, RATER_ONLY_RGB, PRED_ONLY_RGB = (255, 255, 0), (0, 255, 255), (255, 0, 0)
VIEW_MIN, THUMB_MIN = 384, 192  # smallest sizes of the main view and of a gallery tile, in display px


def display_size(size: int, at_least: int = VIEW_MIN) -> int:
    """D = k·S with the smallest integer k >= 1 that makes D >= `at_least`."""
    return size * max(1, math.ceil(at_least / size))


def to_model_xy(x: float, y: float, display: int, size: int) -> tuple[int, int]:
    """Display pixel (x, y) of a DxD view -> model-input pixel (x, y) of SxS, clamped to the image."""
    clamp = lambda v: min(size - 1, max(0, int(math.floor(v * size / display))))  # noqa: E731
    return clamp(x), clamp(y)


def base_view(image: np.ndarray, display: int) -> np.ndarray:
    """HxW or HxWx3[x4] float in [0,1] or uint8 image -> DxDx3 uint8 (bilinear), the backdrop of every view."""
    if image.dtype != np.uint8:
        image = np.rint(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
    rgb = Image.fromarray(image).convert("RGB")
    return np.asarray(rgb.resize((display, display), Image.BILINEAR))


def upscale_mask(mask: np.ndarray, display: int) -> np.ndarray:
    """SxS bool -> DxD bool by repeating each model pixel k = D / S times along both axes."""
    k = display // mask.shape[0]
    return np.repeat(np.repeat(mask, k, axis=0), k, axis=1)


def paint(view: np.ndarray, mask: np.ndarray, rgb: tuple[int, int, int], alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """Blend colour `rgb` at `alpha` into the DxDx3 uint8 `view` where the DxD bool `mask` is set (a copy)."""
    out = view.astype(np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * np.asarray(rgb, np.float32)
    return np.floor(out + 0.5).astype(np.uint8)


def draw_clicks(view: np.ndarray, clicks: Sequence[Click], size: int) -> np.ndarray:
    """Mark each click (model pixels) at the centre of its model pixel on the DxDx3 view."""
    display = view.shape[0]
    k = display / size
    radius = max(3, display // 64)
    img = Image.fromarray(view)
    draw = ImageDraw.Draw(img)
    for c in clicks:
        cx, cy = (c.x + 0.5) * k, (c.y + 0.5) * k
        fill = POSITIVE_RGB if c.label == 1 else NEGATIVE_RGB
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill, outline=RIM_RGB, width=1)
    return np.asarray(img)


def draw_box(view: np.ndarray, box: Sequence[int], size: int) -> np.ndarray:
    """Outline the box (x0, y0, x1, y1 in model pixels, inclusive) on the DxDx3 view."""
    k = view.shape[0] / size
    img = Image.fromarray(view)
    x0, y0, x1, y1 = box
    ImageDraw.Draw(img).rectangle((x0 * k, y0 * k, (x1 + 1) * k - 1, (y1 + 1) * k - 1), outline=BOX_RGB, width=2)
    return np.asarray(img)


def prediction_view(
    base: np.ndarray, probs: np.ndarray, clicks: Sequence[Click], box: Sequence[int] | None = None
) -> np.ndarray:
    """The main view: prediction (probability > 0.5) in red over the DxDx3 backdrop, the box and clicks on top."""
    mask = upscale_mask(probs > 0.5, base.shape[0])
    view = paint(base, mask, OVERLAY_RGB)
    if box is not None:
        view = draw_box(view, box, probs.shape[0])
    return draw_clicks(view, clicks, probs.shape[0])


def comparison_view(base: np.ndarray, probs: np.ndarray, rater: np.ndarray) -> np.ndarray:
    """One gallery tile: agreement yellow, rater only cyan, prediction only red, over the backdrop."""
    display = base.shape[0]
    pred, ref = upscale_mask(probs > 0.5, display), upscale_mask(rater, display)
    out = paint(base, pred & ref, AGREE_RGB)
    out = paint(out, ref & ~pred, RATER_ONLY_RGB)
    return paint(out, pred & ~ref, PRED_ONLY_RGB)


def mask_png(probs: np.ndarray) -> np.ndarray:
    """The prediction as an SxS uint8 0/255 mask (what "download" saves)."""
    return np.where(probs > 0.5, 255, 0).astype(np.uint8)
