"""The `python` (and `torchrun`) a sweep file calls while the sweep runner reads it: records the call instead of
running it, as one JSON line appended to $AESPA_SWEEP_RECORD, and exits 0 (so `set -e` and `|| exit` lines go on).

    AESPA_SWEEP_RECORD=calls.jsonl python record_call.py [--launcher torchrun] train.py -exp_name A ...

Run as a script by the interpreter the runner names (no project import: it runs once per line of the file, and
fast). The record: the arguments after the interpreter, the working folder, the whole environment (the runner
keeps what the file itself set) and the sweep file's line (kept current by a DEBUG trap, see discover.py).
"""

import json
import os
import sys


def main() -> None:
    argv = sys.argv[1:]
    launcher = "python"
    if argv[:1] == ["--launcher"]:
        launcher, argv = argv[1], argv[2:]
    line = os.environ.get("AESPA_SWEEP_LINE", "")
    record = {
        "launcher": launcher,
        "argv": argv,
        "cwd": os.getcwd(),
        "env": dict(os.environ),
        "line": int(line) if line.isdigit() else None,
    }
    # one write of one line with O_APPEND: lines of calls made in parallel (xargs -P) never interleave
    fd = os.open(os.environ["AESPA_SWEEP_RECORD"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
    finally:
        os.close(fd)


if __name__ == "__main__":
    main()
