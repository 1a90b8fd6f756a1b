"""Secrets: read from the environment or an encrypted file, redacted whenever printed."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from rollwise.errors import ConfigError, IntegrityError
from rollwise.private import replace_private

KEY_ENV = "ROLLWISE_SECRETS_KEY"
PREFIX = "ROLLWISE_SECRET_"


class Secret:
    """A value that never shows itself in str(), repr(), logs or the audit log."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def reveal_all(values: Mapping[str, str | Secret]) -> dict[str, str]:
    """Plain strings, for handing an environment to a process."""
    return {k: v.reveal() if isinstance(v, Secret) else v for k, v in values.items()}


def split(values: Mapping[str, str | Secret]) -> tuple[dict[str, str], dict[str, str]]:
    """The plain values and the secrets' values, apart: the first may be written down, the
    second may not."""
    plain = {k: v for k, v in values.items() if not isinstance(v, Secret)}
    return plain, {k: v.reveal() for k, v in values.items() if isinstance(v, Secret)}


# what only rollwise itself reads: the key to the secrets file, and the state store's URL
# (rollwise.store.db.URL_ENV), which may hold its password
CONTROLLER_ONLY = frozenset({KEY_ENV, "ROLLWISE_DATABASE_URL"})


def without_secrets(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` without the secrets' values, their key and the state store's URL, for a
    process that resolves none (the agent and through it the instances, which get only
    their own; hooks)."""
    return {
        k: v for k, v in environ.items() if k not in CONTROLLER_ONLY and not k.startswith(PREFIX)
    }


NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_name(name: str) -> None:
    """A secret's name must be usable as an environment variable (and as ROLLWISE_SECRET_<NAME>)."""
    if not NAME.match(name):
        raise ConfigError(
            f"secret name {name!r} is not an environment variable name",
            hint="use letters, digits and underscores, not starting with a digit, e.g. DB_PASSWORD",
        )


def secrets_file(state_dir: Path, env: str) -> Path:
    return state_dir / "secrets" / f"{env}.enc"


def _fernet() -> Fernet:
    key = os.environ.get(KEY_ENV)
    if not key:
        raise ConfigError(
            f"{KEY_ENV} is not set",
            hint="create a key with `rollwise secrets keygen` and export it",
        )
    try:
        return Fernet(key.encode())
    except ValueError as e:
        raise ConfigError(
            f"{KEY_ENV} is not a valid key: {e}", hint="create one with `rollwise secrets keygen`"
        ) from e


def new_key() -> str:
    return Fernet.generate_key().decode()


def read_file(path: Path) -> dict[str, Secret]:
    if not path.exists():
        return {}
    try:
        plain = _fernet().decrypt(path.read_bytes())
    except InvalidToken as e:
        raise IntegrityError(
            "cannot decrypt: wrong key or damaged file",
            where=str(path),
            hint=f"export the {KEY_ENV} this file was written with",
        ) from e
    return {k: Secret(v) for k, v in json.loads(plain).items()}


def write_file(path: Path, values: dict[str, Secret]) -> None:
    token = _fernet().encrypt(json.dumps({k: v.reveal() for k, v in values.items()}).encode())
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    replace_private(path, token)


def resolve(names: list[str], state_dir: Path, env: str) -> dict[str, Secret]:
    """Each named secret: `ROLLWISE_SECRET_<NAME>` first, then the encrypted file."""
    found = {n: Secret(os.environ[PREFIX + n]) for n in names if PREFIX + n in os.environ}
    missing = [n for n in names if n not in found]
    if missing:
        stored = (
            read_file(secrets_file(state_dir, env)) if secrets_file(state_dir, env).exists() else {}
        )
        found |= {n: stored[n] for n in missing if n in stored}
    if still := [n for n in names if n not in found]:
        raise ConfigError(
            f"secret(s) {', '.join(still)} for environment {env!r} have no value",
            hint=f"export {PREFIX}{still[0]}=... or run `rollwise secrets set {still[0]} "
            f"--env {env}`",
        )
    return found
