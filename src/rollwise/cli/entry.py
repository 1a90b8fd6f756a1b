"""`rollwise`, the command: `hosts run` goes to its quick path (cli/quick.py) when that can
take it; everything else, and whatever the quick path declines, to the full CLI (cli/app.py)."""

from __future__ import annotations

import os
import sys


def main() -> None:
    if sys.argv[1:3] == ["hosts", "run"]:
        from rollwise.cli import quick

        code = quick.hosts_run(sys.argv[3:])
        if code is not None:
            # Done: the hosts' connections and the store are closed, the output is flushed
            # here. Leaving without tearing the interpreter down saves the ~40 ms that
            # unloading asyncssh and cryptography takes, a tenth of a one-off command.
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    from rollwise.cli.app import main as full

    full()
