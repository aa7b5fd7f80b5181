"""Paper tables and paired comparisons from run folders (the command line; the work is in analysis/)."""

from analysis.tables import main
from utils import run_cli

if __name__ == "__main__":
    run_cli(main)
