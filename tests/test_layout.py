"""The code's layers (README "Code map"): each package imports only the layers below it, models/ stands alone, and
the analysis of finished runs (tables.py) runs without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = {p.stem for p in ROOT.glob("*.py")} | {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}

# What each layer may import of the project (besides itself); the root entry points may import anything.
ALLOWED = {
    "conf": set(),
    "utils": set(),
    "models": set(),
    "volumes": {"utils"},
    "multirater_metrics": {"utils", "volumes"},  # volumes: its command's scorer, imported inside main (nibabel)
    "analysis": {"conf", "utils"},
    "pipeline": {"conf", "utils", "models", "volumes"},  # models, volumes: the LIDC-readers build only
    "dataset": {"conf", "utils", "pipeline"},
    "process_mbhseg": {"utils", "volumes"},
    "interaction": {"conf", "utils", "models", "multirater_metrics", "pipeline"},
    "engine": {"conf", "utils", "models", "multirater_metrics", "pipeline", "dataset", "interaction", "analysis"},
    "demo": {"conf", "utils", "models", "multirater_metrics", "pipeline", "dataset", "interaction", "engine"},
    "sweeps": {"utils", "conf", "analysis"},  # torch-free: it runs train.py / val.py as processes
}


def project_imports(path: Path) -> set[str]:
    """Top-level project modules or packages a file imports (relative imports stay inside its package)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & PROJECT


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_each_layer_imports_only_the_layers_below_it(layer):
    files = [ROOT / f"{layer}.py"] if (ROOT / f"{layer}.py").is_file() else sorted((ROOT / layer).rglob("*.py"))
    assert files
    for path in files:
        wrong = project_imports(path) - ALLOWED[layer] - {layer}
        assert not wrong, f"{path.relative_to(ROOT)} imports {sorted(wrong)}"


def test_training_does_not_import_nibabel():
    """nibabel is the whole-case tools' dependency (predict.py, the scorer's command), not the training's."""
    code = "import sys, train, val; print([m for m in sys.modules if m.startswith('nibabel')])"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_tables_runs_without_torch():
    code = "import sys, tables; tables.build_parser().format_help(); print([m for m in sys.modules if 'torch' in m])"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr
    help_run = subprocess.run(
        [sys.executable, "tables.py", "-h"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert help_run.returncode == 0 and "-compare" in help_run.stdout
