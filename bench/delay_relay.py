"""A TCP delay line: every chunk is forwarded ``delay`` seconds after it arrived.

Unlike a relay that sleeps per chunk, chunks are timestamped on arrival and
released independently, so the link has latency but no throughput cap of its
own (what the relay itself costs is measured at 0 ms and reported). Used by
the benchmark where the kernel has no netem.

    python bench/delay_relay.py LISTEN_PORT TARGET_PORT ONE_WAY_DELAY_MS
"""

from __future__ import annotations

import asyncio
import sys

_READ = 256 * 1024


async def _forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def receive() -> None:
        while data := await reader.read(_READ):
            queue.put_nowait((loop.time() + delay, data))
        queue.put_nowait((0.0, b""))

    async def send() -> None:
        while True:
            due, data = await queue.get()
            if not data:
                break
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        writer.close()

    try:
        await asyncio.gather(receive(), send())
    except (ConnectionError, OSError):
        writer.close()


async def _serve(listen_port: int, target_port: int, delay: float) -> None:
    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(
            _forward(client_reader, server_writer, delay),
            _forward(server_reader, client_writer, delay),
            return_exceptions=True,
        )

    server = await asyncio.start_server(handle, "127.0.0.1", listen_port)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    listen_port, target_port, delay_ms = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    asyncio.run(_serve(listen_port, target_port, delay_ms / 1000.0))


if __name__ == "__main__":
    main()
