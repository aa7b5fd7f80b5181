"""A predict.py run's output folder, which can never hold two runs' predictions, and the scorer's check of it.

    OUT/follow_<id>/<case>.nii.gz      following rater <id> (a case that rater did not annotate has no file)
    OUT/follow_rank<k>/<case>.nii.gz   following each case's k-th rater, raters ordered by id
    OUT/sets/, interaction.csv, noc.csv
    OUT/manifest.json                  the run (weights, data, protocol, track, ...), each case's raters, every
                                       NIfTI file with its SHA-256, and the folders that lack a case

A run writes into a fresh folder beside OUT (`.OUT.<hex>.partial`), removed if the run stops, and renamed into
place when every case is done; an earlier run's OUT is replaced whole at that moment, never mixed into. OUT may
be missing, an empty folder, or an earlier run's (it holds manifest.json); anything else is refused.

The scorer (`check_prediction_folder`) scores a plain folder of NIfTI files as it is (predictions made by other
tools). A folder whose parent holds a predict.py manifest must be exactly what that manifest lists: a NIfTI file
it does not list, one it lists that is missing, or one whose bytes changed is refused in one line, and so is a
folder that lacks a case the scorer is asked to score (naming the run's complete folders).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from utils import InputError, atomic_write_bytes, file_sha256, natural_key, one_line, unusable_folder

MANIFEST = "manifest.json"
WRITER = "predict.py"
PREDICTION_RE = re.compile(r"(?P<case>.+?)\.nii(?P<gz>\.gz)?")


def read_manifest(path: Path) -> dict | None:
    """A predict.py manifest, or None when `path` is missing or another tool's JSON; InputError when unreadable."""
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: unreadable manifest ({one_line(err)})") from err
    return manifest if isinstance(manifest, dict) and manifest.get("written_by") == WRITER else None


class RunFolder:
    """The output folder of one predict.py run (see the module docstring). Use as a context manager: write under
    `.tmp`, then `publish`; an error or an interruption removes `.tmp` and leaves OUT as it was."""

    def __init__(self, out: str | Path):
        self.out = Path(os.path.abspath(out))  # a name of its own even for "." or ".."
        problem = unusable_folder(self.out.parent)  # the fresh folder is made beside OUT
        if self.out.exists() and not self.out.is_dir():
            problem = f"{self.out} is a file, not a folder"
        elif self.out.is_dir():
            inside = [p for p in self.out.iterdir() if p.is_dir()]
            locked = [p for p in [self.out, *inside] if not os.access(p, os.W_OK | os.X_OK)]
            if locked:
                problem = f"{locked[0]} is not writable (an earlier run there is replaced at the end)"
            elif any(self.out.iterdir()) and read_manifest(self.out / MANIFEST) is None:
                problem = (
                    f"{self.out} holds files that are not a predict.py run's (no {MANIFEST}): name a new or empty "
                    "folder"
                )
        if problem:
            raise InputError(f"-out {self.out}: {problem}")
        self.token = secrets.token_hex(4)
        self.tmp = self.out.parent / f".{self.out.name}.{self.token}.partial"

    def leftovers(self) -> list[Path]:
        """Folders of earlier runs into this OUT that were killed before they could clean up."""
        pattern = re.compile(rf"\.{re.escape(self.out.name)}\.[0-9a-f]{{8}}\.(partial|old)")
        parent = self.out.parent
        return (
            sorted(p for p in parent.iterdir() if pattern.fullmatch(p.name) and p.is_dir()) if parent.is_dir() else []
        )

    def __enter__(self) -> RunFolder:
        for old in self.leftovers():
            print(f"removing {old}: a folder left by an earlier run into {self.out} that was killed")
            shutil.rmtree(old)
        self.tmp.mkdir(parents=True)
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if self.tmp.exists():  # not published: the run stopped
            shutil.rmtree(self.tmp, ignore_errors=True)

    def publish(self, run: Mapping, raters: Mapping[str, Sequence[str]], incomplete: Mapping[str, Sequence[str]]):
        """Write the manifest (the run's settings `run`, each case's rater ids `raters`, each folder's missing
        cases `incomplete`, every NIfTI file's digest) last, then put the fresh folder in OUT's place."""
        folders = {}
        for folder in sorted((p for p in self.tmp.iterdir() if p.is_dir()), key=lambda p: natural_key(p.name)):
            files = sorted((p for p in folder.iterdir() if PREDICTION_RE.fullmatch(p.name)), key=lambda p: p.name)
            folders[folder.name] = {p.name: file_sha256(p) for p in files}
        manifest = {
            "written_by": WRITER,
            "run": dict(run),
            "cases": {case: list(ids) for case, ids in raters.items()},
            "folders": folders,
            "incomplete": {folder: list(cases) for folder, cases in incomplete.items() if cases},
        }
        atomic_write_bytes(self.tmp / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
        old = self.out.parent / f".{self.out.name}.{self.token}.old"
        if self.out.exists():
            os.replace(self.out, old)
        os.replace(self.tmp, self.out)
        if old.exists():
            shutil.rmtree(old)


def complete_folders(manifest: Mapping) -> list[str]:
    """The follow_* folders of a run that hold a prediction for every case."""
    lacking = manifest.get("incomplete", {})
    return [f for f in manifest.get("folders", {}) if f.startswith("follow_") and not lacking.get(f)]


def check_prediction_folder(pred: Path, cases: Sequence[str]) -> None:
    """The scorer's check of a prediction folder against the predict.py manifest beside it (see the module
    docstring); `cases` are the names of the cases to score. Nothing to check without a manifest."""
    manifest_path = pred.resolve().parent / MANIFEST
    manifest = read_manifest(manifest_path)
    if manifest is None:
        return
    folders = manifest.get("folders", {})
    if pred.resolve().name not in folders:
        raise InputError(
            f"{pred}: not written by the run {manifest_path} describes (its folders: {', '.join(folders)}): "
            "left by another run?"
        )
    listed = folders[pred.resolve().name]
    present = {p.name for p in pred.iterdir() if p.is_file() and PREDICTION_RE.fullmatch(p.name)}
    extra, missing = sorted(present - set(listed)), sorted(set(listed) - present)
    if extra:
        raise InputError(
            f"{pred / extra[0]}: not written by the run {manifest_path} describes ({len(extra)} such file(s)): "
            "predictions of two runs are never scored together"
        )
    if missing:
        raise InputError(f"{pred / missing[0]}: written by the run {manifest_path} describes, now missing")
    for name in sorted(listed, key=natural_key):
        if file_sha256(pred / name) != listed[name]:
            raise InputError(
                f"{pred / name}: changed since the run {manifest_path} describes wrote it (its SHA-256 differs)"
            )
    lacking = [case for case in manifest.get("incomplete", {}).get(pred.resolve().name, []) if case in set(cases)]
    if lacking:
        raise InputError(
            f"{pred}: no prediction for case {lacking[0]} ({len(lacking)} case(s): the followed rater did not "
            f"annotate them); complete folders of this run: {', '.join(complete_folders(manifest)) or 'none'}"
        )
