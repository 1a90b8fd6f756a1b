"""What a down migration drops is counted and kept first, on real SQLite, PostgreSQL and
MariaDB."""

from __future__ import annotations

import json

from sqlalchemy import create_engine, text

from rollwise.data import parking


def test_given_dropped_columns_and_tables_then_counted_and_kept_with_their_keys(db_url, tmp_path):
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE orders (id VARCHAR(40) PRIMARY KEY, "
                "price DECIMAL(10, 2), channel VARCHAR(20), due DATE)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO orders VALUES ('a', 1.50, 'web', '2026-11-24'), "
                "('b', 2.00, NULL, NULL), ('c', 3.25, 'pos', '2026-11-25')"
            )
        )
        conn.execute(text("CREATE TABLE audit (n INTEGER)"))
        conn.execute(text("INSERT INTO audit VALUES (1), (2)"))
    engine.dispose()
    dropped = [
        ("orders", "channel"),
        ("orders", "due"),
        ("audit", None),
        ("orders", "no_such_column"),
        ("no_such_table", None),
        ("orders", "price"),
    ]
    assert parking.count(db_url, dropped) == {
        "orders.channel": 2,
        "orders.due": 2,
        "audit": 2,
        "orders.price": 3,
    }
    kept = parking.park(db_url, dropped, tmp_path / "parked", "s")
    assert {k: v["rows"] for k, v in kept.items()} == {
        "orders.channel": 2,
        "orders.due": 2,
        "audit": 2,
        "orders.price": 3,
    }
    lines = (tmp_path / "parked" / "s-orders.due.jsonl").read_text().splitlines()
    assert sorted(json.loads(x)["id"] for x in lines) == ["a", "c"]
    assert json.loads(lines[0])["due"].startswith("2026-11-2")
    prices = [
        json.loads(x)
        for x in (tmp_path / "parked" / "s-orders.price.jsonl").read_text().splitlines()
    ]
    assert sorted(float(p["price"]) for p in prices) == [1.5, 2.0, 3.25]
    assert sorted(
        json.loads(x)["n"] for x in (tmp_path / "parked" / "s-audit.jsonl").read_text().splitlines()
    ) == [1, 2]
