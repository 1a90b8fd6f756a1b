"""orders: the service `bench/data.py` deploys and rolls back on PostgreSQL. Standard library
and psycopg only.

POST /orders        {"id": "...", "sku": "...", "qty": 1}  idempotent by id: 201 created,
                    200 already stored
GET  /orders/<id>   the stored order
GET  /health        200 when the database answers
GET  /status        {"db": {"ok": ..., "schema_ok": ...}, "version": ...}: the tables and
                    columns this release writes can be read (the rollback's verification)

What a release writes comes from `release.json` beside this file (the bench writes it
before `rollwise release create`):
  {"channel": true}  fill orders.channel on every write (migration 0002_channel)
  {"events": true}   add a row to order_events for each new order (0002_order_events)
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg

VERSION = os.environ.get("ROLLWISE_VERSION", "dev")
RELEASE_FILE = Path(__file__).with_name("release.json")
FEATURES = json.loads(RELEASE_FILE.read_text()) if RELEASE_FILE.is_file() else {}
CHANNEL, EVENTS = bool(FEATURES.get("channel")), bool(FEATURES.get("events"))
POOL_SIZE = 8


def database_url() -> str:
    """libpq wants `postgresql://`; a SQLAlchemy-style `postgresql+psycopg://` loses its
    driver part."""
    head, sep, rest = os.environ["DATABASE_URL"].partition("://")
    return f"{head.split('+')[0]}{sep}{rest}"


class Pool:
    """At most POOL_SIZE autocommit connections, shared by the request threads."""

    def __init__(self, url: str) -> None:
        self.url, self.idle = url, queue.LifoQueue[psycopg.Connection[Any]]()
        self.opened, self.lock = 0, threading.Lock()

    @contextmanager
    def conn(self) -> Iterator[psycopg.Connection[Any]]:
        c = self._take()
        try:
            yield c
        finally:
            if c.closed or c.broken:  # the server went away: open a new one next time
                with self.lock:
                    self.opened -= 1
            else:
                self.idle.put(c)

    def _take(self) -> psycopg.Connection[Any]:
        try:
            return self.idle.get_nowait()
        except queue.Empty:
            pass
        with self.lock:
            grow = self.opened < POOL_SIZE
            self.opened += grow
        if grow:
            return psycopg.connect(self.url, autocommit=True)
        return self.idle.get(timeout=30)


POOL = Pool(database_url())


def store(order: dict[str, Any]) -> bool:
    """Insert the order (and its event) in one transaction; False when it was there."""
    cols, vals = (
        ["id", "sku", "qty", "version"],
        [str(order["id"]), str(order["sku"]), int(order["qty"]), VERSION],
    )
    if CHANNEL:
        cols.append("channel")
        vals.append(str(order.get("channel", "web")))
    sql = (
        f"INSERT INTO orders ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))}) "
        "ON CONFLICT (id) DO NOTHING"
    )
    with POOL.conn() as c, c.transaction():
        created = c.execute(sql, vals).rowcount == 1
        if created and EVENTS:
            c.execute(
                "INSERT INTO order_events (order_id, kind) VALUES (%s, 'created')", (vals[0],)
            )
    return created


def status() -> dict[str, Any]:
    """What this release reads and writes can be queried."""
    cols = "id, sku, qty, version" + (", channel" if CHANNEL else "")
    with POOL.conn() as c:
        try:
            c.execute(f"SELECT {cols} FROM orders LIMIT 1").fetchall()
            if EVENTS:
                c.execute("SELECT order_id, kind FROM order_events LIMIT 1").fetchall()
            ok = True
        except psycopg.errors.Error:
            ok = False
    return {"db": {"ok": True, "schema_ok": ok}, "version": VERSION}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, fmt: str, *args: object) -> None:
        pass

    def reply(self, code: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("x-version", VERSION)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        try:
            if self.path == "/health":
                with POOL.conn() as c:
                    c.execute("SELECT 1")
                self.reply(200, {"status": "ok", "version": VERSION})
            elif self.path == "/status":
                self.reply(200, status())
            elif self.path.startswith("/orders/"):
                self.get_order(self.path.removeprefix("/orders/"))
            else:
                self.reply(404, {"error": "not found"})
        except psycopg.Error as e:
            self.reply(503, {"error": f"database: {e}"})

    def get_order(self, order_id: str) -> None:
        with POOL.conn() as c:
            row = c.execute(
                "SELECT id, sku, qty, version FROM orders WHERE id = %s", (order_id,)
            ).fetchone()
        if row is None:
            self.reply(404, {"error": "no such order"})
        else:
            self.reply(200, dict(zip(("id", "sku", "qty", "version"), row, strict=True)))

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.path != "/orders":
            self.reply(404, {"error": "not found"})
            return
        try:
            order = json.loads(raw)
            created = store(order)
        except (ValueError, KeyError, TypeError) as e:
            self.reply(400, {"error": f"bad order: {e}"})
            return
        except psycopg.Error as e:
            self.reply(503, {"error": f"database: {e}"})
            return
        self.reply(201 if created else 200, {"id": order["id"], "created": created})


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    args = parser.parse_args()
    server = Server(("127.0.0.1", args.port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever()
    server.server_close()


if __name__ == "__main__":
    main()
