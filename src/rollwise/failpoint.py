"""Fault injection for crash tests, usable from any layer: `ROLLWISE_FAILPOINT=<step>:<where>`
kills the process with SIGKILL when it reaches `failpoint(step, where)`. Unset, it does
nothing. Tests use it to prove that a kill -9 at each boundary leaves a state that can be
recovered (deployment steps: `<step>:before|after`; a restore: `restore:<boundary>`)."""

from __future__ import annotations

import os
import signal

FAILPOINT_ENV = "ROLLWISE_FAILPOINT"


def failpoint(step: str, where: str) -> None:
    """Kill this process with SIGKILL if ROLLWISE_FAILPOINT is `<step>:<where>`."""
    if os.environ.get(FAILPOINT_ENV) == f"{step}:{where}":
        os.kill(os.getpid(), signal.SIGKILL)
