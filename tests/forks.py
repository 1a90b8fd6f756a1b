"""rollwise commands run in processes forked from one that has imported rollwise already:
a command costs a few milliseconds to start instead of the half second `python -m rollwise`
spends importing. A child is a process of its own (environment, working directory,
standard streams, exit code) that runs the same `main()` as `python -m rollwise`; what it
starts (agents, instances) are real processes as always."""

from __future__ import annotations

import atexit
import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
from pathlib import Path
from typing import Any, NoReturn

ROOT = Path(__file__).resolve().parents[1]
PRELOAD = (
    "rollwise.cli.app",
    "rollwise.config.lint",
    "rollwise.controller.ops",
    "sqlalchemy.dialects.sqlite",
)


class Forks:
    """rollwise processes forked from one that has imported rollwise already: a case costs
    a few milliseconds instead of the seconds `python -m rollwise` spends importing. A child
    is a process of its own (environment, standard streams, exit code) that runs the same
    `main()`; a case that changes how Python starts (a PYTHON* variable) gets a new
    interpreter instead."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
                "from tests.forks import serve_forks; serve_forks()",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def run(
        self,
        argv: list[str],
        env: dict[str, str],
        stdin: str,
        timeout_s: int,
        cwd: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(
            json.dumps(
                {
                    "argv": argv,
                    "env": env,
                    "stdin": stdin,
                    "timeout_s": timeout_s,
                    "cwd": cwd or os.getcwd(),
                }
            )
            + "\n"
        )
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "the forking process has ended (its error is above)"
        reply = json.loads(line)
        return subprocess.CompletedProcess(argv, reply["code"], reply["stdout"], reply["stderr"])

    def close(self) -> None:
        self.proc.communicate(timeout=60)  # closes stdin, reads stdout out, closes it


def serve_forks() -> None:
    """The forking process: one JSON request a line in, one reply a line out."""
    for name in PRELOAD:
        importlib.import_module(name)

    for line in sys.stdin:
        sys.stdout.write(json.dumps(forked(json.loads(line))) + "\n")
        sys.stdout.flush()


def forked(request: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        streams = [Path(tmp, name) for name in ("stdin", "stdout", "stderr")]
        for stream, text in zip(streams, (request["stdin"], "", ""), strict=True):
            stream.write_text(text)
        pid = os.fork()
        if pid == 0:
            child(request, streams)
        _, status = os.waitpid(pid, 0)
        return {
            "code": os.waitstatus_to_exitcode(status),
            "stdout": streams[1].read_text(),
            "stderr": streams[2].read_text(),
        }


def child(request: dict[str, Any], streams: list[Path]) -> NoReturn:
    """`python -m rollwise ARGV` from here on; never returns."""
    code = 1
    try:
        signal.alarm(request["timeout_s"])  # a command that hangs is killed, as a timeout would
        for fd, path in enumerate(streams):
            os.dup2(os.open(path, os.O_WRONLY if fd else os.O_RDONLY), fd)
        os.chdir(request.get("cwd") or ".")
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = ["rollwise", *request["argv"]]
        from rollwise.cli.entry import main

        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


_shared: list[Forks] = []
_busy = threading.Lock()


def run_shared(
    argv: list[str], env: dict[str, str], stdin: str, timeout_s: int
) -> subprocess.CompletedProcess[str] | None:
    """`rollwise ARGV` in a child of this test process's forking process (started at first
    use); None while it runs another thread's command (the caller starts a new interpreter
    then), when `env` changes how Python starts, or with ROLLWISE_TESTS_NO_FORK set."""
    if os.environ.get("ROLLWISE_TESTS_NO_FORK") or any(
        k.startswith("PYTHON") and os.environ.get(k) != v for k, v in env.items()
    ):
        return None
    if not _busy.acquire(blocking=False):
        return None
    try:
        if not _shared:
            _shared.append(Forks())
            atexit.register(_shared[0].close)
        return _shared[0].run(argv, env, stdin, timeout_s)
    finally:
        _busy.release()
