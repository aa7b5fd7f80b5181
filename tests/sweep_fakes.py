"""Stand-ins for train.py, val.py and tables.py (no torch: a sweep of them takes a second) that lay out run folders
as the real ones do, for the sweep runner's tests (test_sweep.py). Each finished run appends its folder to
$FAKE_LEDGER, so a test counts completions without asking the runner."""

from __future__ import annotations

from pathlib import Path

COMMON = """
import json, os, signal, sys, time
from pathlib import Path

signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # as train.py: a kill unwinds, exit status 143
args = sys.argv[1:]
def flag(name, default=None):
    return args[args.index(name) + 1] if name in args else default
def new_folder(parent, name):
    parent.mkdir(parents=True, exist_ok=True)
    stamp, n = time.strftime("%Y_%m_%d_%H_%M_%S"), 1
    while True:
        folder = parent / (f"{name}_{stamp}" if n == 1 else f"{name}_{stamp}_{n}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            n += 1
def done(run):
    with open(os.environ["FAKE_LEDGER"], "a") as f:
        f.write(f"{run}\\n")
"""

TRAIN = (
    COMMON
    + """
if flag("-resume"):
    if "-log_dir" in args:
        sys.exit("error: -log_dir on a resume")
    run = Path(flag("-resume"))
    flags = json.loads((run / "args.json").read_text())
    first = int((run / "Model" / "checkpoint_last.pth").read_text()) + 1
else:
    if flag("-needs") and not Path(flag("-needs")).exists():
        sys.exit(3)
    flags = {"exp_name": flag("-exp_name", "fake"), "epochs": int(flag("-epochs", "2")), "seed": flag("-seed", "0"),
             "sleep": float(flag("-sleep", "0")), "threads": os.environ.get("OMP_NUM_THREADS"),
             "gpu": os.environ.get("CUDA_VISIBLE_DEVICES")}
    run = new_folder(Path(flag("-log_dir", "logs_new")), flags["exp_name"])
    (run / "args.json").write_text(json.dumps(flags))
    first = 1
(run / "Model").mkdir(exist_ok=True)
for epoch in range(first, flags["epochs"] + 1):
    time.sleep(flags["sleep"])
    (run / "Model" / "checkpoint_last.pth").write_text(str(epoch))
    with open(run / "epochs.txt", "a") as f:
        f.write(f"{epoch}\\n")
(run / "summary.json").write_text("{}")
print(f"run folder {run}")
done(run)
"""
)

VAL = (
    COMMON
    + """
weights = flag("-weights")
if weights and not Path(weights).is_file():
    sys.exit(f"error: -weights {weights}: no such file")
run = new_folder(Path(flag("-log_dir", "logs_new")), flag("-exp_name", "fake") + "_val")
(run / "args.json").write_text(json.dumps({"weights": weights}))
print(f"run folder {run}")
done(run)
"""
)

TABLES = """
import sys
from pathlib import Path
args = sys.argv[1:]
out = Path(args[args.index("-out") + 1])
runs = sorted(str(p.parent) for a in args[:args.index("-out")] for p in Path(a).rglob("args.json"))
out.write_text("\\n".join(runs) + "\\n")
"""


def write_fakes(folder: Path) -> Path:
    for name, text in (("train.py", TRAIN), ("val.py", VAL), ("tables.py", TABLES)):
        (folder / name).write_text(text)
    return folder
