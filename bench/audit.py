"""Audit benchmark: `audit.verify` over a log of `--events` events (1,000,000 by default),
on SQLite (the default store) and on the machine's PostgreSQL, and tamper detection.

The log is written in bulk with the rows `audit.append` writes (same columns, `data` as
sorted JSON, the chain computed with `audit.digest`). Then, per store, `audit.verify` runs
`--repeat` times as the CLI runs it (`verify_s`: best, `verify_s_median`, `cpu_s`: CPU
seconds of the process and its reader processes, median), and as many times with one
process (`one_process`); `met`: every store's median within `target_s`. Detection,
`--tampers` times: one byte of one random event's stored text (any text column, the hashes
too) is changed, verify must fail naming that event's seq, and the byte is put back.

The machine's load average is recorded before and after: on a shared machine, compare
`cpu_s`, or runs made while it was quiet. PostgreSQL (ROLLWISE_TEST_PG, default
127.0.0.1:5432, database `test`) gets a schema of its own, dropped afterwards; without it
the store is reported skipped. Writes bench/results/audit.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError

from rollwise import audit, chain
from rollwise.store.db import open_engine

HERE = Path(__file__).resolve().parent
PG = os.environ.get("ROLLWISE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")
SCHEMA = "rollwise_bench_audit"
TARGET_S = 5.0
COLUMNS = (*chain.FIELDS, "prev_hash", "hash")
TEXT_COLUMNS = tuple(c for c in COLUMNS if c not in ("seq", "ts"))
ACTIONS = ("deploy", "rollback", "release", "abort", "prune", "secret", "backup_verify")
OUTCOMES = ("started", "progress", "succeeded", "failed", "rolled_back")
ACTORS = ("ana", "bo", "chidi@example.com", "ci-bot", "zoë")
REASONS = (
    None,
    None,
    None,
    "canary error rate 5.1% > 1% (p=0.003)",
    "health check failed: GET /healthz → 503 after 30 s",
    "operator: ctrl-c",
)


def rows(n: int, seed: int = 1) -> Iterator[tuple[Any, ...]]:
    """`n` chained events shaped like `audit.append`'s rows, in seq order."""
    rnd, prev, ts = random.Random(seed), audit.GENESIS, 1_790_000_000.0
    for seq in range(1, n + 1):
        ts += rnd.random() * 30
        action, outcome = rnd.choice(ACTIONS), rnd.choice(OUTCOMES)
        data = {
            "step": f"canary:{rnd.choice((1, 10, 50, 100))}",
            "hosts": rnd.randint(1, 12),
            "error_rate": round(rnd.random() / 50, 5),
            "requests": rnd.randint(0, 90000),
        }
        row = {
            "seq": seq,
            "ts": ts,
            "actor": rnd.choice(ACTORS),
            "action": action,
            "env": rnd.choice(("prod", "staging", None)),
            "version": f"1.{seq // 1000}.{seq % 1000}",
            "git_commit": f"{rnd.getrandbits(160):040x}",
            "outcome": outcome,
            "reason": rnd.choice(REASONS),
            "data": json.dumps(data, sort_keys=True, default=str),
            "prev_hash": prev,
        }
        row["hash"] = prev = audit.digest(prev, row)
        yield tuple(row[c] for c in COLUMNS)


def batches(n: int, size: int = 20_000) -> Iterator[list[tuple[Any, ...]]]:
    batch: list[tuple[Any, ...]] = []
    for row in rows(n):
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def fill_sqlite(path: Path, n: int) -> None:
    marks = ", ".join("?" * len(COLUMNS))
    with sqlite3.connect(path) as db:
        for batch in batches(n):
            db.executemany(f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES ({marks})", batch)


def fill_postgres(engine: Engine, n: int) -> None:
    with engine.begin() as conn:
        raw: Any = conn.connection.driver_connection
        with raw.cursor().copy(f"COPY events ({', '.join(COLUMNS)}) FROM STDIN") as copy:
            for batch in batches(n):
                for row in batch:
                    copy.write_row(row)
        conn.exec_driver_sql("ANALYZE events")


@contextmanager
def postgres_store() -> Iterator[Engine]:
    admin = create_engine(f"{PG}/test", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
        conn.execute(text(f"CREATE SCHEMA {SCHEMA}"))
    engine = open_engine(f"{PG}/test?options=-csearch_path%3D{SCHEMA}")
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
        admin.dispose()


def cpu_s() -> float:
    """CPU seconds used so far by this process and its ended children (verify's readers)."""
    me, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed_verify(engine: Engine, n: int, repeat: int, processes: int | None) -> dict[str, Any]:
    times, cpu = [], []
    for _ in range(repeat):
        c0, t0 = cpu_s(), time.perf_counter()
        res = audit.verify(engine, processes=processes)
        times.append(time.perf_counter() - t0)
        cpu.append(cpu_s() - c0)
        if not (res.ok and res.count == n):
            raise SystemExit(f"verify of an untouched log failed: {res}")
    return {
        "verify_s": round(min(times), 3),
        "verify_s_median": round(statistics.median(times), 3),
        "runs_s": [round(t, 3) for t in times],
        "cpu_s": round(statistics.median(cpu), 2),
    }


def tamper(engine: Engine, n: int, rnd: random.Random) -> dict[str, Any]:
    """Change one byte of one random event's stored text (any text column, the hashes
    too), verify, and put it back: verify must fail and name that event."""
    seq = rnd.randint(1, n)
    with engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM events WHERE seq = :s"), {"s": seq}).one()
    column = rnd.choice([c for c in TEXT_COLUMNS if getattr(row, c)])
    value = getattr(row, column)
    i = rnd.randrange(len(value))
    changed = value[:i] + chr(ord(value[i]) ^ 1) + value[i + 1 :]
    put = text(f"UPDATE events SET {column} = :v WHERE seq = :s")
    with engine.begin() as conn:
        conn.execute(put, {"v": changed, "s": seq})
    t0 = time.perf_counter()
    res = audit.verify(engine)
    elapsed = time.perf_counter() - t0
    with engine.begin() as conn:
        conn.execute(put, {"v": value, "s": seq})
    return {
        "seq": seq,
        "column": column,
        "offset": i,
        "named": res.first_bad_seq,
        "problem": res.problem,
        "verify_s": round(elapsed, 3),
        "detected": not res.ok and res.first_bad_seq == seq,
    }


def bench_store(
    name: str, engine: Engine, fill: Callable[[], None], args: argparse.Namespace
) -> dict[str, Any]:
    print(f"{name}: writing {args.events} events...", file=sys.stderr)
    t0 = time.perf_counter()
    fill()
    setup_s = round(time.perf_counter() - t0, 1)
    print(f"{name}: verifying...", file=sys.stderr)
    result = timed_verify(engine, args.events, args.repeat, None)
    one = timed_verify(engine, args.events, args.repeat, 1)
    rnd = random.Random(args.seed)
    tampers = [tamper(engine, args.events, rnd) for _ in range(args.tampers)]
    return {
        **result,
        "one_process": one,
        "setup_s": setup_s,
        "tampers": tampers,
        "tamper_detected": all(t["detected"] for t in tampers),
    }


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "audit.json")
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tampers", type=int, default=3, help="tampered events, one at a time")
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--no-postgres", action="store_true")
    args = ap.parse_args()
    load_before = load()
    with tempfile.TemporaryDirectory(prefix="rollwise-bench-") as tmp:
        path = Path(tmp) / "state.db"
        engine = open_engine(f"sqlite:///{path}")
        sqlite_res = bench_store("sqlite", engine, lambda: fill_sqlite(path, args.events), args)
        engine.dispose()
    stores = {"sqlite": sqlite_res}
    if not args.no_postgres:
        try:
            with postgres_store() as pg:
                stores["postgresql"] = bench_store(
                    "postgresql", pg, lambda: fill_postgres(pg, args.events), args
                )
        except OperationalError as e:
            stores["postgresql"] = {"skipped": f"PostgreSQL unreachable: {e.orig}"}
    ran = [s for s in stores.values() if "skipped" not in s]
    result = {
        "benchmark": "audit",
        "machine_cores": os.cpu_count(),
        "events": args.events,
        "seed": args.seed,
        "load_average_before": load_before,
        "load_average_after": load(),
        **stores,
        "target_s": TARGET_S,
        "met": all(s["verify_s_median"] <= TARGET_S for s in ran),
        "tamper_detected": all(s["tamper_detected"] for s in ran),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
