"""Run the train.py / val.py lines of a sweep file (bash.sh, bash_ablation.sh, bash_results.sh) as parallel,
resumable jobs: one per GPU or CPU slot, or one per SLURM job through submitit; then its tables.py lines.

    python sweep.py bash_ablation.sh -gpus 0,1,2,3
    python sweep.py bash.sh -gpus cpu:2
    python sweep.py bash_ablation.sh -slurm slurm_partition=gpu,timeout_min=600,gpus_per_node=1

The runner lives in sweeps/ (run.py: the command); docs/sweeps.md describes it.
"""

from __future__ import annotations

import sys

from sweeps.run import main
from utils import run_cli

if __name__ == "__main__":
    run_cli(lambda argv: sys.exit(main(argv)))
