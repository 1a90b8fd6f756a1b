"""order-sync: accepts order webhooks and stores them. Standard library only.

POST /orders        {"id": "...", "sku": "...", "qty": 1}  idempotent by id
GET  /orders/<id>   the stored order
GET  /health        200 when the database is reachable
GET  /metrics       counts, in Prometheus text format (GET /metrics.json: as JSON)
GET  /status        sync status for checks: {"sync": {"lag_s": ...}, "version": ...}

A release may carry `faults.json` beside this file, to play a bad release:
{"order_error_rate": 0.08, "delay_ms": [5, 15], "delay_factor": 1.5}
fails that share of POST /orders with 500 (before storing anything), and delays each
request by a uniform random time in delay_ms, times delay_factor.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

VERSION = os.environ.get("ROLLWISE_VERSION", "dev")
DATA = Path(os.environ.get("ROLLWISE_SHARED_DIR", "."))
DB = DATA / "orders.db"
FAULTS_FILE = Path(__file__).with_name("faults.json")
FAULTS = json.loads(FAULTS_FILE.read_text()) if FAULTS_FILE.is_file() else {}
local = threading.local()
counts = {"orders_created": 0, "orders_duplicate": 0, "errors": 0, "orders_failed": 0}


def db() -> sqlite3.Connection:
    conn = getattr(local, "conn", None)
    if conn is None:
        conn = sqlite3.connect(DB, timeout=30, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA busy_timeout=30000")
        local.conn = conn
    return conn


def migrate() -> None:
    db().execute("CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, sku TEXT NOT NULL,"
                 " qty INTEGER NOT NULL, version TEXT NOT NULL)")


def insert(row: tuple[str, str, int, str], channel: str) -> sqlite3.Cursor:
    """Fills `channel` where the schema has it (migration 0002), works without it too."""
    try:
        return db().execute("INSERT OR IGNORE INTO orders (id, sku, qty, version, channel) "
                            "VALUES (?, ?, ?, ?, ?)", (*row, channel))
    except sqlite3.OperationalError as e:
        if "channel" not in str(e):
            raise
        return db().execute("INSERT OR IGNORE INTO orders (id, sku, qty, version) "
                            "VALUES (?, ?, ?, ?)", row)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, fmt: str, *args: object) -> None:
        pass

    def reply(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("x-version", VERSION)
        self.end_headers()
        self.wfile.write(data)

    def text(self, body: str) -> None:
        data = body.encode()
        self.send_response(200)
        self.send_header("content-type", "text/plain; version=0.0.4")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def delay(self) -> None:
        if "delay_ms" in FAULTS:
            lo, hi = FAULTS["delay_ms"]
            time.sleep(random.uniform(lo, hi) * FAULTS.get("delay_factor", 1.0) / 1000)

    def do_GET(self) -> None:
        if self.path == "/health":
            db().execute("SELECT 1")
            self.reply(200, {"status": "ok", "version": VERSION})
        elif self.path == "/metrics.json":
            total = db().execute("SELECT count(*) FROM orders").fetchone()[0]
            self.reply(200, {**counts, "orders_stored": total, "version": VERSION})
        elif self.path == "/metrics":
            self.text("".join(f'order_sync_{k}_total{{version="{VERSION}"}} {v}\n'
                              for k, v in counts.items()))
        elif self.path == "/status":
            self.reply(200, {"sync": {"lag_s": 0.0, "ok": True}, "version": VERSION})
        elif self.path.startswith("/orders/"):
            row = db().execute("SELECT id, sku, qty, version FROM orders WHERE id = ?",
                               (self.path.removeprefix("/orders/"),)).fetchone()
            if row is None:
                self.reply(404, {"error": "no such order"})
            else:
                self.reply(200, dict(zip(("id", "sku", "qty", "version"), row, strict=True)))
        else:
            self.reply(404, {"error": "not found"})

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", 0))
        raw = self.rfile.read(length)
        if self.path != "/orders":
            self.reply(404, {"error": "not found"})
            return
        self.delay()
        if random.random() < FAULTS.get("order_error_rate", 0.0):
            counts["orders_failed"] += 1
            self.reply(500, {"error": "order sync failed"})
            return
        try:
            order = json.loads(raw)
            row = (str(order["id"]), str(order["sku"]), int(order["qty"]), VERSION)
            cur = insert(row, str(order.get("channel", "web")))
        except (ValueError, KeyError, TypeError) as e:
            counts["errors"] += 1
            self.reply(400, {"error": f"bad order: {e}"})
            return
        created = cur.rowcount == 1
        counts["orders_created" if created else "orders_duplicate"] += 1
        self.reply(201 if created else 200, {"id": order["id"], "created": created})


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    args = parser.parse_args()
    migrate()
    server = Server((args.host, args.port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"order-sync {VERSION} listening on {args.host}:{args.port}", flush=True)
    server.serve_forever()
    server.server_close()
    print(f"order-sync {VERSION} stopped", flush=True)


if __name__ == "__main__":
    main()
