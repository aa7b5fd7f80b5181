"""The fixed patient split of the LIDC-readers data: assets/splits/lidc_readers.json, patient -> train/val/test.

Written once, from the patient list of the annotation database, by

    python -m pipeline.lidc_split            (refuses to overwrite the file; --force does)

and committed; the build reads it and never recomputes it, so a patient stays in its split whatever is built.
Rule: the 1010 patients ranked by the SHA-256 of "lidc-readers/<patient id>"; the first 70% (rounded) are train,
the next 10% val, the rest test: 707 / 101 / 202 patients. A patient is in exactly one split, with all its scans
and nodules.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from utils import InputError, OneLineParser, atomic_write_bytes, run_cli

SPLIT_FILE = Path(__file__).resolve().parents[1] / "assets" / "splits" / "lidc_readers.json"
FORMAT = "aespa-lidc-readers-split/1"
SPLITS = ("train", "val", "test")
SHARES = {"train": 0.7, "val": 0.1}  # test: the rest
RULE = "patients ranked by the SHA-256 of 'lidc-readers/<patient id>': the first 70% train, the next 10% val, the rest"


def make_split(patients: list[str]) -> dict[str, str]:
    """{patient: split} by the module docstring's rule, in the order of the ranking."""
    ranked = sorted(set(patients), key=lambda p: hashlib.sha256(f"lidc-readers/{p}".encode()).hexdigest())
    n_train = round(SHARES["train"] * len(ranked))
    n_val = round(SHARES["val"] * len(ranked))
    return {p: "train" if i < n_train else "val" if i < n_train + n_val else "test" for i, p in enumerate(ranked)}


def read_split(path: str | Path = SPLIT_FILE) -> dict[str, str]:
    """{patient: split} from a split file; InputError naming the file when it is missing or malformed."""
    path = Path(path)
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: cannot read the LIDC-readers split ({err})") from err
    patients = found.get("patients") if isinstance(found, dict) else None
    if found.get("format") != FORMAT or not isinstance(patients, dict):
        raise InputError(f"{path}: not an LIDC-readers split file (format {FORMAT})")
    wrong = sorted(p for p, s in patients.items() if s not in SPLITS)
    if wrong:
        raise InputError(f"{path}: patient {wrong[0]} has split {patients[wrong[0]]!r} (valid: {', '.join(SPLITS)})")
    return patients


def write_split(path: str | Path, patients: list[str], force: bool = False) -> dict[str, str]:
    path = Path(path)
    if path.exists() and not force:
        raise InputError(f"{path}: exists (the split is fixed; --force rewrites it)")
    split = make_split(patients)
    document = {"format": FORMAT, "rule": RULE, "patients": dict(sorted(split.items()))}
    atomic_write_bytes(path, (json.dumps(document, indent=1) + "\n").encode())
    return split


def main(argv: list[str] | None = None) -> dict[str, str]:
    parser = OneLineParser(description="Write the fixed patient split of the LIDC-readers data.")
    parser.add_argument("--out", default=str(SPLIT_FILE), help="split file to write")
    parser.add_argument("--force", action="store_true", help="overwrite an existing split file")
    args: argparse.Namespace = parser.parse_args(argv)
    from .lidc_database import database_path, read_scans

    split = write_split(args.out, [s.patient for s in read_scans(database_path())], args.force)
    counts = {s: sum(v == s for v in split.values()) for s in SPLITS}
    print(f"{args.out}: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + " patients")
    return split


if __name__ == "__main__":
    run_cli(main)
