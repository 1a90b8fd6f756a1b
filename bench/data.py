"""Data benchmark on the machine's PostgreSQL: a whole rollback under write load, end to end,
and rollwise's backups beside plain pg_dump / pg_restore.

Two rollbacks of the orders service (bench/apps/orders), each in a scratch database, each
`rollwise rollback --to 1.0.0 --yes` run as a subprocess (the command a user types) while
`--rate` req/s of POST /orders go through the router:

- `rollback_end_to_end`: 1.1.0 added `orders.channel` (filled on write) to a table of
  `--rows` rows; its down migration drops the column, so the values are parked first;
- `rollback_drop_table`: 1.1.0 added `order_events` (`--rows` rows; a row per new order);
  its down migration drops the table, so every row is parked first.

Phase times come from the deployment's journal (step started/done, wall clock) and the
parked files, counted from the moment the command starts:
`plan_s` (until the deployment is recorded: start-up, rollback plan, counting what is
dropped, unpacking), `old_release_ready_s` (1.0.0 started and healthy), `traffic_back_s`
(switch done), `parking_s` (the migrate_down step until the last parked line is written),
`down_migration_s` (from there until the step is done), `verified_s` (the checklist done),
`total_s` (the command exits: old instances drained and stopped, release marked).
`rows_lost`: acknowledged (2xx) orders not in the database afterwards, checked by id.

`baseline`/`backup`: on the first case's database before its rollback (no load): plain
`pg_dump -Fc` and `pg_restore` into a scratch database, against `backups.create` (the same
pg_dump of an exported snapshot, while per-table counts and checksums and the keys and
indexes are read in that snapshot) and `backups.verify` (sha256, pg_restore into a scratch
database, per-table comparison); the best of `--repeat` interleaved runs each, every run
kept in `backup.runs`, and the median of the ratios within a run. `backup.profile` times
the parts alone, and the md5 checksum that manifests used before (`pg-md5-sorted`).

Writes bench/results/data.json. Needs PostgreSQL on 127.0.0.1:5432 (ROLLWISE_TEST_PG).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import yaml
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from rollwise import loadgen
from rollwise.agent.client import AgentClient
from rollwise.controller import ops
from rollwise.controller.context import Context
from rollwise.data import backups
from rollwise.ports import free_port
from rollwise.store import repo

HERE = Path(__file__).resolve().parent
APP = HERE / "apps" / "orders"
PG = os.environ.get("ROLLWISE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")
ENV = "bench"
CASES = {"rollback_end_to_end": "channel", "rollback_drop_table": "events"}
VERIFY = {
    "type": "http",
    "name": "this release's tables and columns answer",
    "url": "{router}/status",
    "json": {"db.schema_ok": "== true"},
}
ROLLBACK_TIMEOUT_S = 300.0
TARGETS = {"total_s": 30.0, "rows_lost": 0, "backup_vs_pg_dump": 1.2}
SEED_ORDERS = (
    "INSERT INTO orders (id, sku, qty, version, created_at{col}) "
    "SELECT 's-' || g, 'sku-' || (g % 5000), (g % 7) + 1, '1.1.0', "
    "now() - g * interval '1 second'{val} FROM generate_series(1, :n) g"
)
CHANNEL = ", (ARRAY['web', 'app', 'pos', 'marketplace'])[1 + g % 4]"
SEED_EVENTS = (
    "INSERT INTO order_events (order_id, kind, at) "
    "SELECT 's-' || g, (ARRAY['created', 'paid', 'shipped'])[1 + g % 3], "
    "now() - g * interval '1 second' FROM generate_series(1, :n) g"
)


@dataclass(frozen=True)
class Order(loadgen.Result):
    order_id: str = ""


class OrderLoad(loadgen.Load):
    """The project's load generator, keeping each order's id with its answer so every
    acknowledged order can be looked up afterwards."""

    async def _request(self, conn: Any, n: int) -> tuple[Any, loadgen.Result]:
        oid = f"o-{time.time_ns()}-{n}"
        body = json.dumps({"id": oid, "sku": "SKU-1", "qty": 1}).encode()
        head = (
            f"POST /orders HTTP/1.1\r\nhost: {self.host}\r\ncontent-type: "
            f"application/json\r\ncontent-length: {len(body)}\r\n\r\n"
        ).encode()
        sent, t0 = time.time(), time.perf_counter()
        try:
            if conn is None:
                conn = await asyncio.open_connection(self.host, self.port)
            conn[1].write(head + body)
            status, version, keep = await asyncio.wait_for(loadgen._response(conn[0]), 10)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
            if conn:
                await loadgen._close(conn[1])
            return None, Order(sent, (time.perf_counter() - t0) * 1000, 0, "", oid)
        if not keep:
            await loadgen._close(conn[1])
            conn = None
        return conn, Order(sent, (time.perf_counter() - t0) * 1000, status, version, oid)


def plain(url: str) -> str:
    """libpq's form of a SQLAlchemy URL."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextmanager
def scratch_database(prefix: str) -> Iterator[str]:
    admin = create_engine(f"{PG}/postgres", isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
        yield f"{PG}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


def sql(url: str, *statements: str, n: int = 0) -> None:
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            for s in statements:
                conn.execute(text(s), {"n": n})
    finally:
        engine.dispose()


def scalar(url: str, query: str) -> Any:
    with psycopg.connect(plain(url)) as conn:
        row = conn.execute(query).fetchone()
    return row[0] if row else None


# --- the project: releases 1.0.0 and 1.1.0 of the orders service, 1.1.0 live -------------


def make_project(work: Path, case: str, url: str) -> Path:
    project = work / case
    shutil.copytree(
        APP, project, ignore=shutil.ignore_patterns("next", "__pycache__", "release.json")
    )
    path = project / "rollwise.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg["run"]["command"] = cfg["run"]["command"].replace("python3", sys.executable)
    cfg["environments"] = {
        ENV: {
            "router": {"listen": f"127.0.0.1:{free_port()}"},
            "database": {"url": url},
            "verify": [VERIFY],
        }
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return project


def release_and_deploy(ctx: Context, project: Path, case: str) -> None:
    """1.0.0 (orders), then 1.1.0 (next/<case>/ added to migrations), each deployed."""
    (project / "release.json").write_text("{}\n")
    ops.create_release(ctx, "1.0.0", "orders table")
    ops.deploy(ctx, ENV, "1.0.0")
    for f in sorted((APP / "next" / case).iterdir()):
        shutil.copy(f, project / "migrations")
    (project / "release.json").write_text(json.dumps({case: True}) + "\n")
    ops.create_release(ctx, "1.1.0", f"adds {case}")
    ops.deploy(ctx, ENV, "1.1.0")


def seed(url: str, case: str, rows: int) -> dict[str, Any]:
    """`rows` orders written by 1.1.0 (channel filled), and as many order_events for the
    table case; vacuumed and analysed as a live table would be."""
    t0 = time.monotonic()
    col, val = (", channel", CHANNEL) if case == "channel" else ("", "")
    statements = [SEED_ORDERS.format(col=col, val=val)]
    if case == "events":
        statements.append(SEED_EVENTS)
    sql(url, *statements, "VACUUM ANALYZE", n=rows)
    return {
        "seed_s": round(time.monotonic() - t0, 2),
        "database_bytes": int(scalar(url, "SELECT pg_database_size(current_database())")),
    }


# --- baseline: plain pg_dump / pg_restore against rollwise's backups ----------------------


def timed(fn: Any, *args: Any) -> tuple[float, Any]:
    t0 = time.monotonic()
    out = fn(*args)
    return time.monotonic() - t0, out


def run(cmd: list[str]) -> None:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if p.returncode != 0:
        raise RuntimeError(f"{cmd[0]} exited {p.returncode}: {p.stderr.strip()[-500:]}")


def pg_restore(dump: Path) -> None:
    with scratch_database("rollwise_bench_restore") as scratch:
        run(
            ["pg_restore", "--no-owner", "--exit-on-error", f"--dbname={plain(scratch)}", str(dump)]
        )


def median_ratio(a: list[float], b: list[float]) -> float:
    """The median of a/b within each run: steadier than best against best on a busy
    machine."""
    return round(statistics.median(x / y for x, y in zip(a, b, strict=True)), 2)


def baseline(url: str, work: Path, repeat: int) -> dict[str, Any]:
    """Best of `repeat` runs each, interleaved so neither side gets a warmer cache."""
    folder, dump = work / "backups", work / "plain.pgdump"
    work.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[float]] = {}
    m = None
    for _ in range(repeat):
        times = {
            "pg_dump_s": timed(
                run, ["pg_dump", "--format=custom", "--no-owner", f"--file={dump}", plain(url)]
            )[0],
            "pg_restore_s": timed(pg_restore, dump)[0],
            "snapshot_s": timed(backups.snapshot, url)[0],
            "snapshot_md5_s": timed(backups.snapshot, url, backups.PG_MD5)[0],
            "structure_s": timed(backups.structure, url)[0],
            "dump_s": timed(backups.dump, url, work / "alone.pgdump")[0],
        }
        times["backup_s"], m = timed(backups.create, url, folder, ENV, "bench")
        times["verify_s"] = timed(backups.verify, m, folder, url)[0]
        for k, v in times.items():
            runs.setdefault(k, []).append(round(v, 3))
    assert m is not None
    best = {k: min(v) for k, v in runs.items()}
    r = {k: round(v, 3) for k, v in best.items()}
    return {
        "baseline": {
            "pg_dump_s": r["pg_dump_s"],
            "pg_restore_s": r["pg_restore_s"],
            "pg_dump_bytes": dump.stat().st_size,
        },
        "backup": {
            "backup_s": r["backup_s"],
            "verify_s": r["verify_s"],
            "backup_vs_pg_dump": round(best["backup_s"] / best["pg_dump_s"], 2),
            "verify_vs_pg_restore": round(best["verify_s"] / best["pg_restore_s"], 2),
            "median_of_run_ratios": {
                "backup_vs_pg_dump": median_ratio(runs["backup_s"], runs["pg_dump_s"]),
                "verify_vs_pg_restore": median_ratio(runs["verify_s"], runs["pg_restore_s"]),
            },
            "backup_bytes": m.size,
            "checksum_kind": m.checksum_kind,
            "profile": {
                "manifest_snapshot_s": r["snapshot_s"],
                "manifest_snapshot_md5_s": r["snapshot_md5_s"],
                "manifest_structure_s": r["structure_s"],
                "dump_s": r["dump_s"],
                "note": "backups.create = backups.dump (pg_dump -Fc of an "
                "exported snapshot) while backups.snapshot (per table: count "
                "and sum of row hashes) and backups.structure (keys and "
                "indexes) read that snapshot; each timed alone here, and the "
                "md5 of the sorted row md5s that older manifests hold",
            },
            "runs": {k: runs[k] for k in ("pg_dump_s", "backup_s", "pg_restore_s", "verify_s")},
        },
        "repeat": repeat,
    }


# --- the rollback under load ---------------------------------------------------------------


def rollback_cli(project: Path) -> tuple[float, float, subprocess.CompletedProcess[str]]:
    """`rollwise rollback --to 1.0.0` as a user runs it, timed from start to exit."""
    cmd = [
        sys.executable,
        "-m",
        "rollwise",
        "rollback",
        "--to",
        "1.0.0",
        "--env",
        ENV,
        "--yes",
        "--json",
        "-C",
        str(project),
    ]
    t0 = time.time()
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=ROLLBACK_TIMEOUT_S,
        env={**os.environ, "ROLLWISE_ACTOR": "bench"},
    )
    return t0, time.time(), proc


def phases(ctx: Context, dep_id: int, t0: float, t1: float) -> dict[str, Any]:
    """Seconds from the command's start, read from the deployment's journal."""
    rows = repo.journal_rows(ctx.engine, dep_id)
    at = {(j["step"], j["phase"]): j["at"] for j in rows}
    data = {j["step"]: j["data"] for j in rows if j["phase"] == "done"}
    down = data.get("migrate_down", {})
    parked = down.get("parked", {})
    files = [Path(p["file"]) for p in parked.values()]
    down_start, down_done = at.get(("migrate_down", "started")), at.get(("migrate_down", "done"))
    parked_at = max((f.stat().st_mtime for f in files), default=down_start)

    def since(t: float | None) -> float | None:
        return None if t is None else round(t - t0, 3)

    def span(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else round(b - a, 3)

    checks = data.get("checks", {})
    return {
        "total_s": round(t1 - t0, 3),
        "plan_s": since(repo.get_deployment(ctx.engine, dep_id)["created_at"]),
        "old_release_ready_s": since(at.get(("health", "done"))),
        "traffic_back_s": since(at.get(("switch", "done"))),
        "switch_ms": data.get("switch", {}).get("switch_ms"),
        "parking_s": span(down_start, parked_at),
        "down_migration_s": span(parked_at, down_done),
        "verified_s": since(at.get(("checks", "done"))),
        "verification": {"passed": checks.get("passed"), "decision": checks.get("decision")},
        "parked": {k: v["rows"] for k, v in parked.items()},
        "parked_rows_per_s": round(sum(v["rows"] for v in parked.values()) / parking, 0)
        if (parking := span(down_start, parked_at))
        else None,
        "steps": {
            j["step"]: [since(at.get((j["step"], "started"))), since(at.get((j["step"], "done")))]
            for j in rows
            if j["phase"] == "started"
        },
    }


def orders_report(
    url: str, results: list[loadgen.Result], t0: float, t1: float, rows: int
) -> dict[str, Any]:
    """Acknowledged orders before, during and after the rollback, each looked up by id."""
    acked = [r for r in results if 200 <= r.status < 300 and isinstance(r, Order)]
    ids = [r.order_id for r in acked]
    with psycopg.connect(plain(url)) as conn:
        stored = {x[0] for x in conn.execute("SELECT id FROM orders WHERE id = ANY(%s)", (ids,))}
        seeded = conn.execute("SELECT count(*) FROM orders WHERE id LIKE 's-%'").fetchone()
    lost = [i for i in ids if i not in stored]
    during = [r for r in results if t0 <= r.sent_at < t1]
    to_old = sorted(r.sent_at for r in during if r.version == "1.0.0")
    to_new = [r.sent_at for r in during if r.version == "1.1.0"]
    return {
        "rows": rows,
        "rows_lost": len(lost),
        "lost_ids": lost[:5],
        "seeded_rows_kept": int(seeded[0]) if seeded else 0,
        "acked_before": sum(1 for r in acked if r.sent_at < t0),
        "acked_during": sum(1 for r in acked if t0 <= r.sent_at < t1),
        "acked_after": sum(1 for r in acked if r.sent_at >= t1),
        "failed_during": sum(1 for r in during if not 200 <= r.status < 300),
        "first_answer_by_1.0.0_s": round(to_old[0] - t0, 3) if to_old else None,
        "last_sent_to_1.1.0_s": round(max(to_new) - t0, 3) if to_new else None,
        "load": loadgen.summarize(results),
    }


def rollback_case(
    work: Path, case: str, url: str, args: argparse.Namespace, with_baseline: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    project = make_project(work, case, url)
    ctx = Context.open(project)
    try:
        release_and_deploy(ctx, project, case)
        prep = seed(url, case, args.rows)
        base = baseline(url, work / f"{case}-baseline", args.repeat) if with_baseline else {}
        router = ctx.env(ENV).router
        load = OrderLoad(
            router.host,
            router.port,
            args.rate,
            connections=16,
            max_duration_s=args.warm + ROLLBACK_TIMEOUT_S + args.after + 10,
        )
        load.start()
        time.sleep(args.warm)
        t0, t1, proc = rollback_cli(project)
        time.sleep(args.after)
        results = load.stop()
        out = {
            "case": case,
            **prep,
            "rate": args.rate,
            "command": " ".join(proc.args[2:]),
            "exit_code": proc.returncode,
        }
        if proc.returncode != 0:
            out |= {"total_s": round(t1 - t0, 3), "error": (proc.stdout + proc.stderr)[-2000:]}
        else:
            out |= phases(ctx, json.loads(proc.stdout)["deployment"], t0, t1)
        out |= orders_report(url, results, t0, t1, args.rows)
        out["live_version"] = repo.env_state(ctx.engine, ENV)["live_version"]
        return out, base
    finally:
        client = AgentClient(ctx.env_dir(ENV), ENV)
        if client.alive():
            client.call("shutdown")
        ctx.engine.dispose()


def targets(result: dict[str, Any]) -> dict[str, Any]:
    met = {}
    for key in CASES:
        r = result.get(key, {})
        met[f"{key}.total_s"] = r.get("exit_code") == 0 and r["total_s"] <= TARGETS["total_s"]
        met[f"{key}.rows_lost"] = r.get("rows_lost") == TARGETS["rows_lost"]
    ratio = result.get("backup", {}).get("backup_vs_pg_dump")
    met["backup.backup_vs_pg_dump"] = ratio is not None and ratio <= TARGETS["backup_vs_pg_dump"]
    return {
        "total_s_max": TARGETS["total_s"],
        "rows_lost_max": TARGETS["rows_lost"],
        "backup_vs_pg_dump_max": TARGETS["backup_vs_pg_dump"],
        "met": met,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 20,000 rows, shorter load, one baseline run",
    )
    ap.add_argument("--rate", type=float, default=200.0, help="POST /orders per second")
    ap.add_argument("--warm", type=float, default=3.0, help="seconds of load before")
    ap.add_argument("--after", type=float, default=2.0, help="seconds of load after")
    ap.add_argument("--repeat", type=int, default=2, help="baseline runs (best kept)")
    ap.add_argument("--keep", action="store_true", help="keep the projects (not the dbs)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "data.json")
    args = ap.parse_args()
    if args.quick:
        args.rows, args.warm, args.after, args.repeat = 20_000, 1.5, 1.0, 1
    work = Path(tempfile.mkdtemp(prefix="rollwise-bench-data-"))
    cases: dict[str, Any] = {}
    bases: dict[str, Any] = {}
    try:
        for i, (key, case) in enumerate(CASES.items()):
            with scratch_database("rollwise_bench") as url:
                cases[key], base = rollback_case(work, case, url, args, with_baseline=i == 0)
            bases |= base
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    result = cases | bases
    result["targets"] = targets(result)
    result["command"] = " ".join(["python bench/data.py", *sys.argv[1:]])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
