"""rollwise: progressive deploys and rollback in seconds."""

from rollwise.errors import ConfigError, ExitCode, IntegrityError, LockHeld, RollwiseError

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "ExitCode",
    "IntegrityError",
    "LockHeld",
    "RollwiseError",
    "__version__",
]
