"""Numbers in README.md and docs/ that cannot drift from the files they come from (assets/results/).

A generated block is a Markdown comment naming what to render, the rendered text, and an end comment:

    <!-- generated: table assets/results/default rows=consensus,default cols=Dice_follow@1-6 head="0,1,2,3,4,5" -->
    | configuration | n | 0 | 1 | ... |
    <!-- end -->

Kinds (arguments are shell-quoted words):
    table DIR [rows=a,b] [cols=M@r,M@a-b] [head="h1,h2"] [labels=FILE]
        from DIR/table.csv (tables.py): one row per configuration, `n` runs, each column mean ± sample std
    compare DIR... [empty=all|nonempty|empty] [metric=Dice_follow] [names="A - B,..."]
        from each DIR/compare.csv (tables.py -compare): one row per comparison, per click count the mean paired
        difference with its 95 % interval
    sessions DIR [rows=a,b] [cols=M@r,...] [head="h1,h2"] [positions=1-8] [labels=FILE]
        from DIR/sessions.csv (tables.py -positions): one row per configuration and position
    include FILE
        the file's text as it is (e.g. a gain.md)
Below a table or comparison, the provenance line of DIR/provenance.json (command, commit, machine, seeds) when the
folder has one (bash_results.sh writes it). Labels: assets/results/labels.json maps a configuration's name to the
words a table shows.

    python -m analysis.results_page           # rewrite every generated block of README.md and docs/*.md
    python -m analysis.results_page --check   # exit 1, naming each block whose text differs from its files
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shlex
import sys
from collections.abc import Iterable
from pathlib import Path

from analysis.tables import cell
from utils import InputError, atomic_write_bytes, run_cli

BLOCK = re.compile(r"<!-- generated: (?P<spec>.*?) -->\n(?P<body>.*?)<!-- end -->", re.S)
DEFAULT_LABELS = "assets/results/labels.json"
DIGITS = 3


def documents(root: Path) -> list[Path]:
    """README.md and every page of docs/."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def _words(spec: str) -> tuple[str, list[str], dict[str, str]]:
    words = shlex.split(spec)
    if not words:
        raise InputError("an empty generated block")
    args = [w for w in words[1:] if "=" not in w]
    opts = dict(w.split("=", 1) for w in words[1:] if "=" in w)
    return words[0], args, opts


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise InputError(f"{path}: missing (a generated block reads it)")
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _columns(spec: str) -> list[str]:
    """'Dice_follow@1-3,Follow_accuracy@6,DSC_AUC,NoC@0.85' -> Dice_follow@1, @2, @3, Follow_accuracy@6, and the
    per-run columns as they are (no round: DSC_AUC; a family member: NoC@0.85)."""
    out = []
    for item in spec.split(","):
        name, _, rounds = item.rpartition("@")
        first, _, last = rounds.partition("-")
        if not (name and first.isdigit() and (not last or last.isdigit())):
            out.append(item)
            continue
        out += [f"{name}@{r}" for r in range(int(first), int(last or first) + 1)]
    return out


def _labels(root: Path, opts: dict[str, str]) -> dict[str, str]:
    path = root / opts.get("labels", DEFAULT_LABELS)
    return json.loads(path.read_text()) if path.is_file() else {}


def provenance(folder: Path) -> str:
    """One line: the command, commit, machine and seeds that made the files of `folder` (empty without a record)."""
    path = folder / "provenance.json"
    if not path.is_file():
        return ""
    p = json.loads(path.read_text())
    parts = [f"`{p['command']}`"] if p.get("command") else []
    parts += [f"{key} {p[key]}" for key in ("commit", "machine", "threads", "seeds") if p.get(key)]
    return "Made by " + "; ".join(parts) + "."


def _table_row(row: dict[str, str], cols: list[str]) -> list[str]:
    n = int(row["n"])
    cells = []
    for col in cols:
        mean = row.get(f"{col}_mean", "")
        if mean == "":
            cells.append("")
            continue
        std = row.get(f"{col}_std", "")
        cells.append(cell(float(mean), float(std) if n > 1 and std != "" else float("nan"), DIGITS))
    return cells


def render_table(root: Path, args: list[str], opts: dict[str, str]) -> str:
    folder = root / args[0]
    rows = _read_csv(folder / "table.csv")
    by_name = {r["configuration"]: r for r in rows}
    names = opts["rows"].split(",") if "rows" in opts else list(by_name)
    missing = [n for n in names if n not in by_name]
    if missing:
        raise InputError(f"{folder / 'table.csv'}: no configuration {', '.join(missing)}")
    cols = _columns(opts["cols"]) if "cols" in opts else [k[: -len("_mean")] for k in rows[0] if k.endswith("_mean")]
    head = opts["head"].split(",") if "head" in opts else cols
    if len(head) != len(cols):
        raise InputError(f"generated table {args[0]}: {len(head)} headings for {len(cols)} columns")
    labels = _labels(root, opts)
    lines = ["| configuration | n | " + " | ".join(head) + " |", "|---|---:|" + "---:|" * len(cols)]
    for name in names:
        row = by_name[name]
        lines.append(f"| {labels.get(name, name)} | {row['n']} | " + " | ".join(_table_row(row, cols)) + " |")
    note = provenance(folder)
    return "\n".join(lines) + ("\n\n" + note if note else "") + "\n"


def render_sessions(root: Path, args: list[str], opts: dict[str, str]) -> str:
    folder = root / args[0]
    rows = _read_csv(folder / "sessions.csv")
    names = opts["rows"].split(",") if "rows" in opts else list(dict.fromkeys(r["configuration"] for r in rows))
    wanted = None
    if "positions" in opts:
        first, _, last = opts["positions"].partition("-")
        wanted = set(range(int(first), int(last or first) + 1))
    cols = _columns(opts["cols"]) if "cols" in opts else [k[: -len("_mean")] for k in rows[0] if k.endswith("_mean")]
    head = opts["head"].split(",") if "head" in opts else cols
    if len(head) != len(cols):
        raise InputError(f"generated sessions {args[0]}: {len(head)} headings for {len(cols)} columns")
    labels = _labels(root, opts)
    lines = ["| configuration | image | n | " + " | ".join(head) + " |", "|---|---:|---:|" + "---:|" * len(cols)]
    for name in names:
        mine = [r for r in rows if r["configuration"] == name and (wanted is None or int(r["position"]) in wanted)]
        if not mine:
            raise InputError(f"{folder / 'sessions.csv'}: no configuration {name}")
        for row in mine:
            cells = _table_row(row, cols)
            lines.append(f"| {labels.get(name, name)} | {row['position']} | {row['n']} | " + " | ".join(cells) + " |")
    note = provenance(folder)
    return "\n".join(lines) + ("\n\n" + note if note else "") + "\n"


def _signed(x: float) -> str:
    return f"{x:+.{DIGITS}f}".replace("-", "−")


def render_compare(root: Path, args: list[str], opts: dict[str, str]) -> str:
    metric, empty = opts.get("metric", "Dice_follow"), opts.get("empty", "all")
    names = opts["names"].split(",") if "names" in opts else args
    if len(names) != len(args):
        raise InputError(f"generated comparison: {len(names)} names for {len(args)} folders")
    clicks, body, notes = None, [], []
    for name, arg in zip(names, args):
        rows = [r for r in _read_csv(root / arg / "compare.csv") if r["metric"] == metric and r["empty"] == empty]
        if not rows:
            raise InputError(f"{root / arg / 'compare.csv'}: no rows of {metric} ({empty} pairs)")
        these = [r["clicks"] for r in rows]
        if clicks is not None and these != clicks:
            raise InputError(f"{root / arg / 'compare.csv'}: other click counts than {args[0]}")
        clicks = these
        cells = [f"{_signed(float(r['diff']))} [{_signed(float(r['low']))}, {_signed(float(r['high']))}]" for r in rows]
        body.append(f"| {name} | " + " | ".join(cells) + " |")
        note = provenance(root / arg)
        if note and note not in notes:
            notes.append(note)
    lines = ["| clicks | " + " | ".join(clicks) + " |", "|---|" + "---:|" * len(clicks), *body]
    return "\n".join(lines) + "".join("\n\n" + n for n in notes) + "\n"


def render_include(root: Path, args: list[str], opts: dict[str, str]) -> str:
    path = root / args[0]
    if not path.is_file():
        raise InputError(f"{path}: missing (a generated block includes it)")
    text = path.read_text()
    return text if text.endswith("\n") else text + "\n"


KINDS = {"table": render_table, "sessions": render_sessions, "compare": render_compare, "include": render_include}


def render_block(root: Path, spec: str) -> str:
    kind, args, opts = _words(spec)
    if kind not in KINDS:
        raise InputError(f"generated block of unknown kind {kind!r} (known: {', '.join(KINDS)})")
    if not args:
        raise InputError(f"generated {kind} block names no file or folder")
    return KINDS[kind](root, args, opts)


def render_document(root: Path, text: str) -> str:
    """`text` with every generated block rendered again from its files."""
    return BLOCK.sub(lambda m: f"<!-- generated: {m['spec']} -->\n{render_block(root, m['spec'])}<!-- end -->", text)


def drift(root: Path, paths: Iterable[Path] | None = None) -> list[str]:
    """One line per generated block whose text differs from what its files give (empty: no drift)."""
    problems = []
    for path in paths if paths is not None else documents(root):
        for m in BLOCK.finditer(path.read_text()):
            try:
                want = render_block(root, m["spec"])
            except InputError as e:
                problems.append(f"{path}: block '{m['spec']}': {e}")
                continue
            if want != m["body"]:
                line = path.read_text()[: m.start()].count("\n") + 1
                problems.append(f"{path}:{line}: block '{m['spec']}' differs from its files (rerun this module)")
    return problems


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m analysis.results_page", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report blocks that differ from their files")
    parser.add_argument("--root", default=".", help="the project's folder (default: the current one)")
    args = parser.parse_args(argv)
    root = Path(args.root)
    if args.check:
        problems = drift(root)
        for p in problems:
            print(p, file=sys.stderr)
        if problems:
            sys.exit(1)
        return
    for path in documents(root):
        text = path.read_text()
        new = render_document(root, text)
        if new != text:
            atomic_write_bytes(path, new.encode())
            print(f"rewrote {path}")


if __name__ == "__main__":
    run_cli(main)
