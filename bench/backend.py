"""A minimal keep-alive HTTP backend for router benchmarks: answers every request with its
version in `x-version`; with --error-rate, that share of requests gets a 500.
Run: python bench/backend.py --port 9001 --version v1 [--error-rate 0.3]"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random


async def handle(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    reply: bytes,
    error: bytes,
    error_rate: float,
) -> None:
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    await reader.readexactly(int(line.split(b":", 1)[1]))
            writer.write(error if random.random() < error_rate else reply)
            await writer.drain()
    writer.close()


def response(status: str, version: str) -> bytes:
    body = b'{"ok":true}'
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\nx-version: {version}"
        f"\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode() + body


async def main(port: int, version: str, error_rate: float) -> None:
    reply, error = response("200 OK", version), response("500 Internal Server Error", version)
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, reply, error, error_rate), "127.0.0.1", port, backlog=1024
    )
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--version", default="v1")
    p.add_argument("--error-rate", type=float, default=0.0)
    args = p.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(args.port, args.version, args.error_rate))
