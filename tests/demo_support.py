"""Helpers of test_demo.py: a small checkpoint, an independent oracle of the click protocol, a demo server.

The oracle replays docs/evaluation.md#validation-protocol with the model's own methods only (no demo code, no
interaction/rounds.py), so a disagreement with the demo's answer is a bug in one of the two.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from cfg import make_config
from engine.checkpoints import save_checkpoint
from models import AESPAModel, build_model, responsibilities
from pipeline.image_files import read_image, resize_image

ROOT = Path(__file__).resolve().parents[1]
SHARPEN = 40.0  # a random decoder's logits are ~0.05: scaled up, the mask is crisp and far from 0.5


def make_checkpoint(
    path: Path, encoder: str = "vit_t", size: int = 64, seed: int = 0, sharpen: float = SHARPEN
) -> Path:
    """Random weights in this project's checkpoint format; the mask hypernetworks' last layers are scaled
    by `sharpen`, which scales every mask logit by it (the logits are linear in the hypernetwork output)."""
    torch.manual_seed(seed)
    model, _ = build_model(encoder, size)
    with torch.no_grad():
        for mlp in model.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(sharpen)
            mlp.layers[-1].bias.mul_(sharpen)
    setup = make_config(["-encoder", encoder, "-image_size", str(size), "-sam_ckpt", "none"])
    cfg = setup.config
    optimizer = torch.optim.Adam(model.parameters())
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 10)
    save_checkpoint(
        path, epoch=1, cfg=cfg, model=model, optimizer=optimizer, scheduler=scheduler, best_metric=None, best_epoch=None
    )
    return path


def load_model(path: Path, encoder: str = "vit_t", size: int = 64) -> AESPAModel:
    return build_model(encoder, size, checkpoint=str(path))[0].eval()


def model_input(image_path: Path, size: int) -> torch.Tensor:
    """1x3xSxS, read and resized as the data loaders do."""
    return resize_image(read_image(image_path), size)[None]


@torch.no_grad()
def oracle(
    model: AESPAModel, image: torch.Tensor, clicks: Sequence[tuple[int, int, int]], box: Sequence[int] | None = None
) -> np.ndarray:
    """Probabilities SxS after every click (x, y, label): round 0 without clicks, round i with clicks[:i],
    the previous low-resolution logits as mask prompt, weights from the weight head of the previous
    round's responsibilities (the stored weights in round 0); ε = 0. A box (x0, y0, x1, y1) joins every round."""
    embedding = model.image_encoder(image)
    boxes = None if box is None else torch.tensor([box], dtype=torch.float32)  # 1x4
    prev_low, em = None, None
    for i in range(len(clicks) + 1):
        points = torch.tensor([c[:2] for c in clicks[:i]], dtype=torch.float32)[None] if i else None  # 1xix2
        labels = torch.tensor([c[2] for c in clicks[:i]])[None] if i else None  # 1xi
        sparse, dense = model.encode_prompts(1, points, labels, prev_low, boxes)
        means, variances = model.mixture_params(sparse)
        weights = model.mixture_weights[None].clone() if em is None else model.weight_head(em)
        z = model.latent(weights, means, variances)
        low = model.decode(embedding, z, sparse, dense)
        probs = torch.sigmoid(model.upscale(low)[:, 0])
        em = responsibilities(probs, weights, means, variances)
        prev_low = low
    return probs[0].numpy()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_demo(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run aespa_demo.py to completion (for inputs it must refuse)."""
    return subprocess.run(
        [sys.executable, "aespa_demo.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


@contextlib.contextmanager
def demo_server(*args: str, log: Path, timeout: float = 120) -> Iterator[str]:
    """Start aespa_demo.py on a free loopback port; yield its URL once it answers; stop it afterwards."""
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "aespa_demo.py", *args, "-port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the demo exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the demo did not answer on {url} within {timeout} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
