"""Data benchmark on the machine's PostgreSQL: backup, verify-by-restore and a rollback's
down migration at size.

- `backup_s`, `backup_bytes`: `rollwise.data.backups.create` (manifest with per-table counts and
  checksums, then `pg_dump --format=custom`) of a database of `--gb` GB;
- `verify_restore_s`: `backups.verify` (sha256 of the file, `pg_restore` into a scratch
  database, per-table comparison);
- `rollback_down_migration_s`: the down step of a migration touching a table of `--rows`
  rows (`ALTER TABLE ... DROP COLUMN` of a column the up step added and filled), run by
  `SqlRunner.downgrade` under its lock and transaction.

Writes bench/results/data.json. Needs PostgreSQL on 127.0.0.1:5432 (ROLLWISE_TEST_PG).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text

from rollwise.data import backups
from rollwise.data.migrations import Migration, down_path, up_path
from rollwise.data.sqlrunner import SqlRunner

HERE = Path(__file__).resolve().parent
PG = os.environ.get("ROLLWISE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")


def fill(url: str, gb: float) -> dict[str, float]:
    """Rows of about 120 bytes (id, sku, qty, payload) until the database is `gb` GB."""
    engine = create_engine(url)
    t0 = time.monotonic()
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE orders (id BIGINT PRIMARY KEY, sku TEXT NOT NULL, "
                          "qty INTEGER NOT NULL, payload TEXT NOT NULL)"))
    step, n = 1_000_000, 0
    while True:
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO orders SELECT g, 'sku-' || (g % 5000), (g % 7) + 1, "
                "md5(g::text) || md5((g * 31)::text) FROM generate_series(:a, :b) g"),
                {"a": n + 1, "b": n + step})
            n += step
            size = conn.execute(text("SELECT pg_database_size(current_database())")).scalar()
        if size >= gb * 1e9:
            break
    engine.dispose()
    return {"rows": n, "bytes": int(size), "fill_s": round(time.monotonic() - t0, 1)}


def down_migration(url: str, rows: int) -> float:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE events (id BIGINT PRIMARY KEY, kind TEXT NOT NULL)"))
        conn.execute(text("INSERT INTO events SELECT g, 'k' || (g % 9) "
                          "FROM generate_series(1, :n) g"), {"n": rows})
    engine.dispose()
    m = Migration("1", "event_channel",
                  "ALTER TABLE events ADD COLUMN channel TEXT;\n"
                  "UPDATE events SET channel = 'web';\n",
                  "ALTER TABLE events DROP COLUMN channel;\n")
    runner = SqlRunner(url)
    runner.upgrade(up_path([m], set(), None))
    t0 = time.monotonic()
    runner.downgrade(down_path([m], {"1"}, None))
    took = time.monotonic() - t0
    runner.engine.dispose()
    return round(took, 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "data.json")
    args = ap.parse_args()
    admin = create_engine(f"{PG}/postgres", isolation_level="AUTOCOMMIT")
    name = f"rollwise_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    url = f"{PG}/{name}"
    try:
        with tempfile.TemporaryDirectory(prefix="rollwise-bench-") as tmp:
            db = fill(url, args.gb)
            t0 = time.monotonic()
            m = backups.create(url, Path(tmp), "bench", "bench")
            backup_s = time.monotonic() - t0
            t0 = time.monotonic()
            backups.verify(m, Path(tmp), url)
            verify_s = time.monotonic() - t0
        result = {
            "database_bytes": db["bytes"], "database_rows": db["rows"],
            "backup_s": round(backup_s, 2), "backup_bytes": m.size,
            "verify_restore_s": round(verify_s, 2),
            "rollback_down_migration_s": down_migration(url, args.rows),
            "down_migration_rows": args.rows,
        }
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
