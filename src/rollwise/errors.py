"""Errors that reach the user: what was wrong, where, and what to do."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes, documented in docs/cli.md."""

    OK = 0
    ERROR = 1
    USAGE = 2
    CONFIG = 3
    LOCKED = 4
    HEALTH = 5
    INTEGRITY = 6
    NOT_FOUND = 7
    INTERRUPTED = 8


class RollwiseError(Exception):
    """An error with a location and a hint, rendered as one block by the CLI."""

    code: ExitCode = ExitCode.ERROR

    def __init__(self, message: str, *, where: str = "", hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.where = where
        self.hint = hint

    def __str__(self) -> str:
        parts = [f"{self.where}: {self.message}" if self.where else self.message]
        if self.hint:
            parts.append(f"hint: {self.hint}")
        return "\n".join(parts)


class UsageError(RollwiseError):
    code = ExitCode.USAGE


class ConfigError(RollwiseError):
    code = ExitCode.CONFIG


class LockHeld(RollwiseError):
    code = ExitCode.LOCKED


class Unreachable(RollwiseError):
    """A host (of a fleet) did not answer: not connected, or a call timed out. What it runs
    is unknown, not changed by us."""


class HealthCheckFailed(RollwiseError):
    code = ExitCode.HEALTH


class IntegrityError(RollwiseError):
    code = ExitCode.INTEGRITY


class NotFound(RollwiseError):
    code = ExitCode.NOT_FOUND
