"""Image and mask files read as arrays, and resized to the model's input size (SxS).

Images: greyscale or colour files (8/16-bit, float) -> float32 in [0, 1]; masks: PNG (HxW) or NPY (HxW or
HxWxC) -> bool. Images are resized bilinearly (antialiased when shrinking), masks by nearest neighbour with
centres aligned, so a resized mask only ever holds labels of the original. Header-only readers give a file's
shape without decoding it. A file that cannot be read raises InputError naming it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from utils import InputError, one_line


def image_size_of(path: Path, verify: bool = False) -> tuple[int, int]:
    """(H, W) of an image file, from its header only; `verify`: also check the file's integrity without decoding
    it (PIL's verify: chunk checksums of a PNG, the structure of a JPEG)."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            if verify:
                img.verify()
    except Exception as err:  # PIL raises many types for bad files
        raise InputError(f"{path}: unreadable image ({one_line(err)})") from err
    return h, w


def read_image(path: Path) -> np.ndarray:
    """Image file -> HxW (grey) or HxWx3 (colour) float32 in [0,1]."""
    scale = {"L": 255.0, "I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I": 65535.0, "F": 1.0}
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in scale:
                return np.clip(np.asarray(img, dtype=np.float32) / scale[img.mode], 0.0, 1.0)
            return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    except Exception as err:
        raise InputError(f"{path}: unreadable image ({one_line(err)})") from err


def binarize(arr: np.ndarray) -> np.ndarray:
    """Mask values -> bool: bool as is; floats >= 0.5; integers whose largest value is 1: > 0 (a 0/1 mask),
    otherwise >= 128 (an 8-bit style 0/255 mask)."""
    if arr.dtype == bool:
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        return arr >= 0.5
    if arr.size and arr.max() <= 1:
        return arr > 0
    return arr >= 128


def read_mask(path: Path) -> np.ndarray:
    """Mask file (.png: HxW; .npy: HxW or HxWxC) -> bool array of the same shape."""
    try:
        if path.suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            with Image.open(path) as img:
                img.load()
                keep = img.mode in ("1", "L", "I", "F") or img.mode.startswith("I;16")
                arr = np.asarray(img if keep else img.convert("L"))
    except Exception as err:
        raise InputError(f"{path}: unreadable mask ({one_line(err)})") from err
    return binarize(arr)


def mask_shape_of(path: Path) -> tuple[int, ...]:
    """Shape of a mask file from its header only (PNG: (H, W); NPY: the array's shape)."""
    if path.suffix != ".npy":
        return image_size_of(path)
    try:
        return tuple(np.load(path, mmap_mode="r", allow_pickle=False).shape)
    except Exception as err:
        raise InputError(f"{path}: unreadable mask ({one_line(err)})") from err


def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each of n_out pixels, centres aligned: floor((i + 0.5) * n_in / n_out), exact ints."""
    return (2 * np.arange(n_out) + 1) * n_in // (2 * n_out)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """HxW[xC] mask -> SxS[xC] by nearest neighbour (see `nearest_indices`)."""
    rows = nearest_indices(mask.shape[0], size)
    cols = nearest_indices(mask.shape[1], size)
    return mask[rows[:, None], cols[None, :]]


def resize_image(image: np.ndarray, size: int) -> torch.Tensor:
    """HxW or HxWx3 float image -> 3xSxS float32, bilinear (align_corners=False, antialiased when shrinking).

    PIL's float resize: the same numbers as torch's interpolate(antialias=True) without its thread pool,
    which costs more than the work on small images."""
    channels = [image] if image.ndim == 2 else [image[..., c] for c in range(image.shape[2])]
    if image.shape[:2] != (size, size):
        channels = [
            np.asarray(Image.fromarray(np.ascontiguousarray(c), mode="F").resize((size, size), Image.BILINEAR))
            for c in channels
        ]
    out = np.stack(channels * (3 if len(channels) == 1 else 1))  # 3xSxS, grey replicated
    return torch.from_numpy(np.clip(out, 0.0, 1.0, out=out))
