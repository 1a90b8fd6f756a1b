"""shop: a small order service, the fixture of the recovery-history tests (not an example).

Each release's code uses only the tables its schema has (VERSION, beside this file, says
which release this is; migrations/versions/ holds the Alembic revisions):

    1.0.x  r1            users (id, email unique)
    1.1.x  r1..r3        + orders (id = the client's id, user_id -> users, total)
                         + users.tier, filled on every write of a user
    1.2.x  r1..r5        + order_items (order_id -> orders ON DELETE CASCADE, sku, qty)
                         + payments (order_id -> orders, amount)
    1.3.x  r1..r6        + shipments (order_id -> orders, carrier), one per new order;
                         r6 is marked `# rollwise: expand`: 1.2.x runs on it unchanged

GET  /health   200 when every table and column this release reads can be queried, else 500
POST /users    {"email": ...}                        201 created, 200 when it exists
POST /orders   {"id", "user_id" | "email", "total", "items": [{"sku", "qty"}], "carrier"}
               idempotent by id: 201 created, 200 when it exists; 404 before 1.1
GET  /counts   {"rows": {table: count}} for the tables of this release

DATABASE_URL is read in any common form (see shopdb.py). Every response carries the
release in `x-version`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from shopdb import database_url, open_engine
from sqlalchemy import (
    Column,
    Connection,
    ForeignKey,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

VERSION = Path(__file__).with_name("VERSION").read_text().strip()
RELEASE = tuple(int(x) for x in VERSION.split(".")[:2])
ORDERS = RELEASE >= (1, 1)  # orders, users.tier
ITEMS = RELEASE >= (1, 2)  # order_items, payments
SHIPMENTS = RELEASE >= (1, 3)  # shipments


def schema() -> dict[str, Table]:
    """The tables (with only the columns) this release reads and writes."""
    md = MetaData()
    tier = [Column("tier", String(16))] if ORDERS else []
    tables = [
        Table(
            "users",
            md,
            Column("id", Integer, primary_key=True),
            Column("email", String(255), nullable=False),
            *tier,
        )
    ]
    if ORDERS:
        tables.append(
            Table(
                "orders",
                md,
                Column("id", String(64), primary_key=True),
                Column("user_id", Integer, ForeignKey("users.id")),
                Column("total", Numeric(10, 2)),
            )
        )
    if ITEMS:
        tables.append(
            Table(
                "order_items",
                md,
                Column("id", Integer, primary_key=True),
                Column("order_id", String(64), ForeignKey("orders.id")),
                Column("sku", String(64)),
                Column("qty", Integer),
            )
        )
        tables.append(
            Table(
                "payments",
                md,
                Column("id", Integer, primary_key=True),
                Column("order_id", String(64), ForeignKey("orders.id")),
                Column("amount", Numeric(10, 2)),
            )
        )
    if SHIPMENTS:
        tables.append(
            Table(
                "shipments",
                md,
                Column("id", Integer, primary_key=True),
                Column("order_id", String(64), ForeignKey("orders.id")),
                Column("carrier", String(32)),
            )
        )
    return {t.name: t for t in tables}


T = schema()
ENGINE = open_engine(database_url(), pool_size=8, max_overflow=24)


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def health() -> dict[str, Any]:
    with ENGINE.connect() as conn:
        for t in T.values():
            conn.execute(select(*t.c).limit(1)).all()
    return {"status": "ok", "version": VERSION, "tables": sorted(T)}


def counts() -> dict[str, Any]:
    with ENGINE.connect() as conn:
        return {
            "rows": {
                name: int(conn.execute(select(func.count()).select_from(t)).scalar_one())
                for name, t in T.items()
            }
        }


def add_user(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    email = str(body.get("email") or "")
    if "@" not in email:
        raise BadRequest(400, "email is required")
    users = T["users"]
    tier = {"tier": str(body.get("tier", "standard"))} if ORDERS else {}
    try:
        with ENGINE.begin() as conn:
            new = conn.execute(insert(users).values(email=email, **tier)).inserted_primary_key
        return 201, {"id": new[0], "email": email, "created": True}
    except IntegrityError:
        with ENGINE.begin() as conn:
            user_id = conn.execute(select(users.c.id).where(users.c.email == email)).scalar_one()
            if tier:  # the tier is filled on every write of a user
                conn.execute(update(users).where(users.c.id == user_id).values(**tier))
        return 200, {"id": user_id, "email": email, "created": False}


def _user_id(conn: Connection, body: dict[str, Any]) -> int:
    users = T["users"]
    where = (
        users.c.email == str(body["email"])
        if "email" in body
        else users.c.id == int(body.get("user_id", 0))
    )
    found = conn.execute(select(users.c.id).where(where)).scalar()
    if found is None:
        raise BadRequest(422, "no such user")
    return int(found)


def _exists(order_id: str) -> bool:
    orders = T["orders"]
    with ENGINE.connect() as conn:
        return conn.execute(select(orders.c.id).where(orders.c.id == order_id)).first() is not None


def add_order(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    if not ORDERS:
        raise BadRequest(404, f"release {VERSION} takes no orders")
    order_id = str(body.get("id") or "")
    if not order_id or len(order_id) > 64:
        raise BadRequest(400, "id (the client's order id, at most 64 characters) is required")
    total = Decimal(str(body.get("total", "0")))
    items = body.get("items") or [{"sku": "SKU-1", "qty": 1}]
    if _exists(order_id):
        return 200, {"id": order_id, "created": False}
    try:
        with ENGINE.begin() as conn:
            user_id = _user_id(conn, body)
            conn.execute(insert(T["orders"]).values(id=order_id, user_id=user_id, total=total))
            if ITEMS:
                conn.execute(
                    insert(T["order_items"]),
                    [
                        {"order_id": order_id, "sku": str(i["sku"]), "qty": int(i["qty"])}
                        for i in items
                    ],
                )
                conn.execute(insert(T["payments"]).values(order_id=order_id, amount=total))
            if SHIPMENTS:
                conn.execute(
                    insert(T["shipments"]).values(
                        order_id=order_id, carrier=str(body.get("carrier", "post"))
                    )
                )
    except IntegrityError:
        if not _exists(order_id):  # not a duplicate: a foreign key or a constraint
            raise
        return 200, {"id": order_id, "created": False}
    return 201, {"id": order_id, "created": True}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, fmt: str, *args: object) -> None:
        pass

    def reply(self, status: int, body: object) -> None:
        data = json.dumps(body, default=str).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("x-version", VERSION)
        self.end_headers()
        self.wfile.write(data)

    def answer(self, fn: Any, *args: Any) -> None:
        try:
            result = fn(*args)
            status, body = result if isinstance(result, tuple) else (200, result)
        except BadRequest as e:
            status, body = e.status, {"error": str(e)}
        except (SQLAlchemyError, ValueError, KeyError, TypeError, ArithmeticError) as e:
            print(f"{self.command} {self.path}: {e}", file=sys.stderr, flush=True)
            status, body = 500, {"error": str(e).splitlines()[0]}
        self.reply(status, {**body, "version": VERSION})

    def do_GET(self) -> None:
        routes = {"/health": health, "/counts": counts}
        if self.path in routes:
            self.answer(routes[self.path])
        else:
            self.reply(404, {"error": "not found"})

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("content-length", 0)))
        routes = {"/users": add_user, "/orders": add_order}
        if self.path not in routes:
            self.reply(404, {"error": "not found"})
            return
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            self.reply(400, {"error": "the body is not JSON"})
            return
        self.answer(routes[self.path], body if isinstance(body, dict) else {})


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    args = parser.parse_args()
    server = Server(("127.0.0.1", args.port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever()
    server.server_close()
    ENGINE.dispose()


if __name__ == "__main__":
    main()
