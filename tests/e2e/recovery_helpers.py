"""The shop fixture app (tests/apps/shop) as a rollwise project, and what the recovery-history
tests read back: the app database's shape and rows, rollwise's state and the shop's answers.

Releases are created once (`release_template`) and copied into each test's project with its
own router port and database, so a test pays only for the deploys of its own history.
"""

from __future__ import annotations

import http.client
import json
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import create_engine, func, inspect, select, table, text

from rollwise import domain as d
from rollwise.ports import free_port
from tests.conftest import Project

SHOP = Path(__file__).resolve().parents[1] / "apps" / "shop"
REVISIONS = (
    "r1_users",
    "r2_orders",
    "r3_users_tier",
    "r4_order_items",
    "r5_payments",
    "r6_shipments",
)
# the revisions each release carries; 1.2.1 is 1.2.0's schema with a code change only;
# 1.3.0's r6 is marked expand (a new table), so 1.2.x may run again on its schema
RELEASES = {"1.0.0": 1, "1.1.0": 3, "1.2.0": 5, "1.2.1": 5, "1.3.0": 6}
SCHEMA = {"1.0.0": "r1", "1.1.0": "r3", "1.2.0": "r5", "1.2.1": "r5", "1.3.0": "r6"}
TABLES = {
    "r1": {"users"},
    "r3": {"users", "orders"},
    "r5": {"users", "orders", "order_items", "payments"},
    "r6": {"users", "orders", "order_items", "payments", "shipments"},
}
SQLITE_URL = "sqlite:///{shared}/shop.db"


def build_releases(root: Path) -> Path:
    """A shop project at `root` with every release of RELEASES created, nothing deployed."""
    shutil.copytree(SHOP, root, ignore=shutil.ignore_patterns("__pycache__", "*.db"))
    cfg = yaml.safe_load((root / "rollwise.yaml").read_text())
    for section in (cfg["run"], cfg["migrations"]):
        section["command"] = section["command"].replace("python3", sys.executable)
    (root / "rollwise.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    p = Project(root)
    versions = root / "migrations" / "versions"
    for version, n in RELEASES.items():
        for i, name in enumerate(REVISIONS):
            (versions / f"{name}.py").unlink(missing_ok=True)
            if i < n:
                shutil.copy(SHOP / "migrations" / "versions" / f"{name}.py", versions)
        p.write_version(version)
        p.cli(
            "release",
            "create",
            "--version",
            version,
            "--changelog",
            f"shop {version}: schema {SCHEMA[version]}",
            check=True,
        )
    return root


def shop_project(template: Path, root: Path, database_url: str, **settings: Any) -> Project:
    """A copy of the template (its releases too) whose `dev` environment has a free router
    port, the database at `database_url` and `settings`."""
    shutil.copytree(template, root)
    path = root / "rollwise.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["environments"]["dev"] = {
        "router": {"listen": f"127.0.0.1:{free_port()}"},
        "database": {"url": database_url},
        **settings,
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return Project(root)


def app_db_url(p: Project) -> str:
    """The SQLAlchemy URL of the project's app database (`{shared}` filled in)."""
    cfg = yaml.safe_load((p.root / "rollwise.yaml").read_text())
    url = str(cfg["environments"]["dev"]["database"]["url"])
    return url.replace("{shared}", str(p.root / ".rollwise" / "envs" / "dev" / "shared"))


def snapshot(url: str) -> dict[str, Any]:
    """The database as the tests compare it: the Alembic revision and, for each app table,
    its columns, foreign keys (columns -> table, on delete), indexes and row count."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            insp = inspect(conn)
            names = sorted(n for n in insp.get_table_names() if n != "alembic_version")
            tables = {
                n: {
                    "columns": [c["name"] for c in insp.get_columns(n)],
                    "fks": sorted(
                        (
                            tuple(f["constrained_columns"]),
                            f["referred_table"],
                            (f.get("options") or {}).get("ondelete"),
                        )
                        for f in insp.get_foreign_keys(n)
                    ),
                    "indexes": sorted(
                        i["name"]
                        for i in insp.get_indexes(n)
                        if i["name"] and i["name"].startswith("ix_")
                    ),
                    "rows": int(
                        conn.execute(select(func.count()).select_from(table(n))).scalar_one()
                    ),
                }
                for n in names
            }
            revision = (
                conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
                if insp.has_table("alembic_version")
                else None
            )
    finally:
        engine.dispose()
    return {"revision": revision, "tables": tables}


def column_values(url: str, sql: str) -> list[Any]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [r[0] for r in conn.execute(text(sql))]
    finally:
        engine.dispose()


def rollwise_state(p: Project) -> dict[str, int]:
    """Rows in rollwise's own journal, deployments and audit events."""
    engine = create_engine(f"sqlite:///{p.root / '.rollwise' / 'state.db'}")
    try:
        with engine.connect() as conn:
            return {
                t: int(conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one())
                for t in ("journal", "deployments", "events")
            }
    finally:
        engine.dispose()


def deployment_steps(p: Project, dep_id: int) -> list[str]:
    """The planned steps of one deployment, from rollwise's state."""
    engine = create_engine(f"sqlite:///{p.root / '.rollwise' / 'state.db'}")
    try:
        with engine.connect() as conn:
            plan = conn.execute(
                text("SELECT plan FROM deployments WHERE id = :i"), {"i": dep_id}
            ).scalar_one()
    finally:
        engine.dispose()
    return list(d.Plan.from_dict(json.loads(plan) if isinstance(plan, str) else plan).names())


def migrations_applied(p: Project, dep_id: int) -> list[str]:
    """What one deployment's migrate step journaled as applied: files and revisions (none
    when the step did not run)."""
    engine = create_engine(f"sqlite:///{p.root / '.rollwise' / 'state.db'}")
    try:
        with engine.connect() as conn:
            rows = (
                conn.execute(
                    text(
                        "SELECT data FROM journal WHERE deployment_id = :i "
                        "AND step = 'migrate' AND phase = 'done'"
                    ),
                    {"i": dep_id},
                )
                .scalars()
                .all()
            )
    finally:
        engine.dispose()
    done = [json.loads(r) if isinstance(r, str) else r for r in rows]
    return [v for data in done for key in ("applied", "versions") for v in data.get(key, [])]


def cli_json(p: Project, *args: str) -> Any:
    return json.loads(p.cli(*args, "--json", check=True).stdout)


def status(p: Project) -> dict[str, Any]:
    return dict(cli_json(p, "status", "--env", "dev")["environments"]["dev"])


def history(p: Project) -> list[dict[str, Any]]:
    """Deployments and rollbacks of `dev`, newest first."""
    return list(cli_json(p, "history", "--env", "dev"))


def audit_events(p: Project) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for line in p.cli("audit", "export", check=True).stdout.splitlines()
        if line.strip()
    ]


def parked(p: Project) -> dict[str, int]:
    """Rows (values) kept in parked files, by table or table.column, over every file."""
    out: dict[str, int] = {}
    folder = p.root / ".rollwise" / "envs" / "dev" / "parked"
    for f in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        what = f.name.rsplit("-", 1)[-1].removesuffix(".jsonl")
        out[what] = out.get(what, 0) + len(f.read_text().splitlines())
    return out


def output(proc: Any) -> str:
    return f"{proc.stdout}\n{proc.stderr}"


def request(
    p: Project, method: str, path: str, body: object = None, timeout: float = 10
) -> tuple[int, dict[str, Any], str]:
    """(status, JSON body, x-version) of one request through the environment's router."""
    cfg = yaml.safe_load((p.root / "rollwise.yaml").read_text())
    host, port = cfg["environments"]["dev"]["router"]["listen"].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        data = None if body is None else json.dumps(body)
        conn.request(method, path, body=data, headers={"content-type": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, json.loads(raw or b"{}"), resp.getheader("x-version") or ""
    finally:
        conn.close()


def add_users(p: Project, *emails: str) -> None:
    for email in emails:
        code, body, _ = request(p, "POST", "/users", {"email": email})
        assert code in (200, 201), body


def add_orders(p: Project, email: str, *ids: str) -> None:
    for order_id in ids:
        code, body, _ = request(
            p, "POST", "/orders", {"id": order_id, "email": email, "total": "19.90"}
        )
        assert code in (200, 201), (order_id, code, body)


@dataclass
class Load:
    """Requests from a few threads, each with its own id, until stopped, `limit` are sent
    or `max_s` passes. POST /orders by default (each order with its id, for `email`); with
    `email` None, GET `path`. Every answer is kept by request id: (HTTP status, x-version);
    status 0 when none came."""

    p: Project
    email: str | None = None
    path: str = "/orders"
    limit: int = 2000
    max_s: float = 60.0
    threads: int = 4
    interval_s: float = 0.02
    answers: dict[str, tuple[int, str]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Load:
        deadline = time.monotonic() + self.max_s
        for n in range(self.threads):
            t = threading.Thread(target=self._run, args=(n, deadline), daemon=True)
            t.start()
            self._workers.append(t)
        return self

    def _run(self, worker: int, deadline: float) -> None:
        k = 0
        while not self._stop.is_set() and time.monotonic() < deadline:
            with self._lock:
                if len(self.answers) >= self.limit:
                    return
                key = f"load-{worker}-{k}"
                self.answers[key] = (0, "")
            k += 1
            answer = self._send(key)
            with self._lock:
                self.answers[key] = answer
            time.sleep(self.interval_s)

    def _send(self, key: str) -> tuple[int, str]:
        try:
            if self.email is None:
                code, _, version = request(self.p, "GET", self.path, timeout=15)
            else:
                code, _, version = request(
                    self.p,
                    "POST",
                    self.path,
                    {"id": key, "email": self.email, "total": "5.00"},
                    timeout=15,
                )
        except (OSError, ValueError):
            return 0, ""
        return code, version

    def stop(self) -> dict[str, tuple[int, str]]:
        self._stop.set()
        for t in self._workers:
            t.join(timeout=30)
        with self._lock:
            return dict(self.answers)


def acknowledged(answers: dict[str, tuple[int, str]]) -> dict[str, str]:
    """Request id -> the version that answered it with 2xx."""
    return {k: v for k, (code, v) in answers.items() if 200 <= code < 300}


def settled(p: Project) -> dict[str, Any]:
    """Everything a refused command must leave as it was: the app database (shape and rows),
    what serves, marks, router weights, deployments, journal and parked files."""
    s = status(p)
    state = rollwise_state(p)
    return {
        "database": snapshot(app_db_url(p)),
        "live": s["live_version"],
        "healthy": s["healthy"],
        "marks": s["marks"],
        "weights": s["weights"],
        "instances": sorted(i["name"] for i in s["instances"] if i["alive"]),
        "history": [(h["id"], h["kind"], h["status"]) for h in history(p)],
        "journal": state["journal"],
        "deployments": state["deployments"],
        "parked": parked(p),
    }
