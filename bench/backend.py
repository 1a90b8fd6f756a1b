"""A minimal keep-alive HTTP backend for router benchmarks: answers every request with its
version in `x-version`. Run: python bench/backend.py --port 9001 --version v1"""

from __future__ import annotations

import argparse
import asyncio
import contextlib


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, reply: bytes) -> None:
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    await reader.readexactly(int(line.split(b":", 1)[1]))
            writer.write(reply)
            await writer.drain()
    writer.close()


async def main(port: int, version: str) -> None:
    body = b'{"ok":true}'
    reply = (f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-version: {version}\r\n"
             f"content-length: {len(body)}\r\n\r\n").encode() + body
    server = await asyncio.start_server(lambda r, w: handle(r, w, reply), "127.0.0.1", port,
                                        backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--version", default="v1")
    args = p.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(args.port, args.version))
