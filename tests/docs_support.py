"""Checks of README.md and docs/ that the tests run on the real tree and on doctored copies (test_docs.py):
relative links and images resolve (anchors included), every `python <script>.py ...` command uses flags its script
accepts, and every docs/<page>.md#<anchor> the code cites exists."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?$(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`([^`\n]+)`")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*$", re.M)
CITATION = re.compile(r"docs/([\w-]+\.md)(#[\w-]+)?")
FLAG = re.compile(r"^--?[A-Za-z][\w-]*$")
SEPARATORS = {"&&", "||", ";", "|", "#", "\\"}


def documents(root: Path) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (hyphens and underscores kept), spaces -> '-'."""
    text = re.sub(r"[`*_]{1,2}(.+?)[`*_]{1,2}", r"\1", heading).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {slug(h) for h in HEADING.findall(text)}


def broken_links(root: Path) -> list[str]:
    """One line per relative link or image of README/docs whose file or anchor does not exist."""
    problems = []
    for doc in documents(root):
        for target in LINK.findall(FENCE.sub("", doc.read_text())):
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (doc.parent / path).resolve() if path else doc
            if not dest.exists():
                problems.append(f"{doc.relative_to(root)}: link to missing {target}")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                problems.append(f"{doc.relative_to(root)}: link to missing anchor {target}")
    return problems


def broken_citations(root: Path) -> list[str]:
    """One line per docs/<page>.md[#anchor] cited by a tracked code file that does not exist."""
    files = subprocess.run(["git", "ls-files", "*.py", "*.sh", "*.toml"], cwd=root, capture_output=True, text=True)
    problems = []
    for name in files.stdout.split():
        for page, anchor in CITATION.findall((root / name).read_text()):
            dest = root / "docs" / page
            if not dest.is_file():
                problems.append(f"{name}: cites missing docs/{page}")
            elif anchor and anchor[1:] not in anchors(dest):
                problems.append(f"{name}: cites missing section docs/{page}{anchor}")
    return problems


def commands(text: str) -> list[list[str]]:
    """The argument lists of every `python <script>.py ...` (or torchrun ... <script>.py) shown in code."""
    snippets = [block.replace("\\\n", " ") for block in FENCE.findall(text)]
    snippets += INLINE.findall(FENCE.sub("", text))
    found = []
    for snippet in snippets:
        for line in snippet.splitlines():
            try:
                words = shlex.split(line, comments=True)
            except ValueError:
                words = line.split()
            for i, word in enumerate(words):
                if (
                    word.endswith(".py")
                    and i > 0
                    and words[i - 1] in ("python", "python3")
                    or (word.endswith(".py") and any(w == "torchrun" for w in words[:i]))
                ):
                    rest = []
                    for w in words[i + 1 :]:
                        if w in SEPARATORS:
                            break
                        rest.append(w)
                    found.append([word, *rest])
    return found


@cache
def accepted_flags(root: Path, script: str) -> frozenset[str]:
    """The option strings `<script> -h` lists (the script's main called in-process with -h)."""
    spec = importlib.util.spec_from_file_location(f"docs_check_{Path(script).stem}", root / script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the script is being executed
    spec.loader.exec_module(module)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        module.main(["-h"])
    return frozenset(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", out.getvalue()))


def unknown_flags(root: Path) -> list[str]:
    """One line per flag of a shown command that its script does not accept (or a script that does not exist)."""
    problems = []
    for doc in documents(root):
        for script, *args in commands(doc.read_text()):
            if not (root / script).is_file():
                problems.append(f"{doc.relative_to(root)}: command of a missing script {script}")
                continue
            flags = accepted_flags(root, script)
            for arg in args:
                if FLAG.match(arg) and arg.split("=")[0] not in flags:
                    problems.append(f"{doc.relative_to(root)}: {script} does not accept {arg}")
    return problems
