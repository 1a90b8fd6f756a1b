"""Reasons and outcomes as named constants, so logs, status, audit and tests agree."""

from typing import Final

# deployment statuses
PENDING: Final = "pending"
RUNNING: Final = "running"
SUCCEEDED: Final = "succeeded"
FAILED: Final = "failed"
ROLLED_BACK: Final = "rolled_back"
ABORTED: Final = "aborted"

ACTIVE_STATUSES: Final = (PENDING, RUNNING)

# release marks
GOOD: Final = "good"
BAD: Final = "bad"
UNTRIED: Final = "untried"

# event outcomes
OK: Final = "ok"
ERROR: Final = "error"
REFUSED: Final = "refused"
NOOP: Final = "noop"

# reasons
HEALTH_CHECK_FAILED: Final = "HealthCheckFailed"
ARTIFACT_TAMPERED: Final = "ArtifactTampered"
INTERRUPTED_BEFORE_SWITCH: Final = "InterruptedBeforeSwitch"
INTERRUPTED_AFTER_SWITCH: Final = "InterruptedAfterSwitch"
ROLLED_BACK_BY_USER: Final = "RolledBackByUser"
ALREADY_SERVING: Final = "AlreadyServing"
NOTHING_IN_PROGRESS: Final = "NothingInProgress"
LOCK_HELD: Final = "LockHeld"
STEP_FAILED: Final = "StepFailed"

_WORDS: Final = {ROLLED_BACK_BY_USER: "rolled back by a user"}  # the only coded mark reason


def words(reason: str) -> str:
    """A mark's reason as a person reads it; free text is returned as it is."""
    return _WORDS.get(reason, reason)
