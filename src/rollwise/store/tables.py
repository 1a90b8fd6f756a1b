"""rollwise's own schema (managed by the Alembic migrations beside this file)."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

releases = Table(
    "releases",
    metadata,
    Column("version", String(64), primary_key=True),
    Column("app", String(64), nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("git_commit", String(64)),
    Column("built_at", Float, nullable=False),
    Column("builder", String(128), nullable=False),
    Column("changelog", Text),
    Column("config_sha256", String(64), nullable=False),
    Column("pruned", Integer, nullable=False, default=0),
    Column("schema", JSON),  # {"version": ..., "migrations": [...]} when it has migrations
)

marks = Table(
    "release_marks",
    metadata,
    Column("env", String(64), primary_key=True),
    Column("version", String(64), ForeignKey("releases.version"), primary_key=True),
    Column("mark", String(16), nullable=False),
    Column("at", Float, nullable=False),
    Column("reason", Text),
)

environments = Table(
    "environments",
    metadata,
    Column("env", String(64), primary_key=True),
    Column("live_version", String(64)),
    Column("instances", JSON, nullable=False),
    Column("updated_at", Float, nullable=False),
)

deployments = Table(
    "deployments",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("env", String(64), nullable=False, index=True),
    Column("kind", String(16), nullable=False),
    Column("from_version", String(64)),
    Column("to_version", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("reason", Text),
    Column("plan", JSON, nullable=False),
    Column("request", String(16)),  # promote | promote-full | abort | rollback, until taken
    Column("request_by", String(128)),
    Column("actor", String(128), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

journal = Table(
    "journal",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("deployment_id", Integer, ForeignKey("deployments.id"), nullable=False, index=True),
    Column("step", String(32), nullable=False),
    Column("phase", String(16), nullable=False),
    Column("at", Float, nullable=False),
    Column("data", JSON, nullable=False),
)

locks = Table(
    "locks",
    metadata,
    Column("env", String(64), primary_key=True),
    Column("holder", String(256), nullable=False),
    Column("token", BigInteger, nullable=False),
    Column("acquired_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
)

events = Table(
    "events",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("ts", Float, nullable=False),
    Column("actor", String(128), nullable=False),
    Column("action", String(32), nullable=False),
    Column("env", String(64)),
    Column("version", String(64)),
    Column("git_commit", String(64)),
    Column("outcome", String(16), nullable=False),
    Column("reason", Text),
    Column("data", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

tokens = Table(
    "api_tokens",
    metadata,
    Column("id", String(16), primary_key=True),
    Column("name", String(128), nullable=False),
    Column("role", String(16), nullable=False),
    Column("envs", JSON),  # environments it may act on; null: every one
    Column("digest", String(64), nullable=False),  # sha256 of the token: shown once, never kept
    Column("created_at", Float, nullable=False),
    Column("created_by", String(128), nullable=False),
    Column("expires_at", Float),
    Column("revoked_at", Float),
)

approvals = Table(
    "approvals",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("env", String(64), nullable=False, index=True),
    Column("version", String(64), nullable=False),
    Column("requested_by", String(128), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("required", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("approvers", JSON, nullable=False),
    Column("decided_by", String(128)),
    Column("reason", Text),
)

freeze_windows = Table(  # `rollwise freeze add`; those of rollwise.yaml are read from it
    "freeze_windows",
    metadata,
    Column("env", String(64), primary_key=True),
    Column("name", String(64), primary_key=True),
    Column("zone", String(64), nullable=False),
    Column("start", String(64), nullable=False),
    Column("end", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("created_by", String(128), nullable=False),
)

users = Table(  # people who log in to the dashboard (`rollwise user`)
    "users",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("role", String(16), nullable=False),
    Column("envs", JSON),  # environments they may act on; null: every one
    Column("hash", String(256), nullable=False),  # argon2id of the password
    Column("created_at", Float, nullable=False),
    Column("created_by", String(128), nullable=False),
    Column("password_at", Float, nullable=False),
    Column("disabled_at", Float),
)

sessions = Table(  # dashboard logins; the cookie is never kept, only its sha256
    "sessions",
    metadata,
    Column("digest", String(64), primary_key=True),
    Column("user", String(64), ForeignKey("users.name"), nullable=False, index=True),
    Column("csrf", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("seen_at", Float, nullable=False),  # last request, to within a minute
    Column("ended_at", Float),  # logout, password change or the user disabled
)
