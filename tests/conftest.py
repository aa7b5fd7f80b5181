"""Shared fixtures: small data trees and the command-line arguments of a tiny, fast run."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.synthetic import ensure_synthetic


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A small synthetic tree (LIDC layout, four raters with systematic styles): 16 train, 8 test images."""
    return ensure_synthetic(tmp_path_factory.mktemp("data") / "synthetic", seed=0, n_train=16, n_test=8)


def tiny_run_args(data_root: Path, log_dir: Path, *extra: str) -> list[str]:
    """train.py / val.py arguments of a run that takes seconds on a CPU: vit_t from scratch at 64 px (no -sam_ckpt),
    3 rounds, no validation
    split (the tests of the validation split pass -val_fraction themselves: a later flag wins); under -mode SPA
    6 latent samples in 2 clusters; no figures (the tests of figures pass -plots all)."""
    spa = ["-num_samples", "6", "-n_clusters", "2"] if "SPA" in extra else []
    return [
        "-val_fraction",
        "0",
        "-dataset",
        "LIDC",
        "-data_path",
        str(data_root),
        "-image_size",
        "64",
        "-b",
        "4",
        "-w",
        "0",
        "-clicks",
        "3",
        "-noc_clicks",
        "3",
        "-epochs",
        "1",
        "-log_dir",
        str(log_dir),
        "-plots",
        "none",
        "-sam_ckpt",
        "none",
        *spa,
        *extra,
    ]
