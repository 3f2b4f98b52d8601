"""A TCP proxy that delays every segment by a fixed one-way time, both ways, in order.

Loopback hides what a relay across the internet costs: every SMTP round trip there takes
milliseconds, and a sender that waits for each reply pays them per command. The kernel's
netem would add the delay, but these machines lack it, so this does it in user space:

    .venv/bin/python bench/latency.py --listen 127.0.0.1:2600 --to 127.0.0.1:2525 --one-way-ms 5

A round trip through it then takes 2 × 5 ms more (bench/send.py --rtt-ms starts it so).
Each direction of each connection is a queue of (due time, bytes) drained in order, so the
delay never reorders a stream and the throughput is not capped by it (the proxy reads on
while earlier bytes wait).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import time
from collections import deque
from collections.abc import Callable


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                delay: float) -> None:
    # One direction: read as it comes, write each chunk `delay` after it was read.
    pending: deque[tuple[float, bytes]] = deque()
    arrived = asyncio.Event()
    done = False

    async def read() -> None:
        nonlocal done
        while data := await reader.read(65536):
            pending.append((time.monotonic() + delay, data))
            arrived.set()
        done = True
        arrived.set()

    async def write() -> None:
        while True:
            while not pending:
                if done:
                    return
                arrived.clear()
                await arrived.wait()
            due, data = pending.popleft()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()

    try:
        await asyncio.gather(read(), write())
    finally:
        with contextlib.suppress(OSError):
            if writer.can_write_eof():
                writer.write_eof()


async def _connection(client_reader: asyncio.StreamReader,
                      client_writer: asyncio.StreamWriter, *, target: tuple[str, int],
                      delay: float) -> None:
    try:
        server_reader, server_writer = await asyncio.open_connection(*target)
    except OSError:
        client_writer.close()
        return
    try:
        await asyncio.gather(_pump(client_reader, server_writer, delay),
                             _pump(server_reader, client_writer, delay),
                             return_exceptions=True)
    finally:
        for writer in (client_writer, server_writer):
            writer.close()


async def serve(listen: tuple[str, int], target: tuple[str, int], one_way_ms: float,
                ready: asyncio.Event | None = None) -> None:
    """Proxy `listen` to `target` until cancelled, `one_way_ms` later in each direction."""
    delay = one_way_ms / 1000

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _connection(reader, writer, target=target, delay=delay)

    server = await asyncio.start_server(handle, *listen)
    async with server:
        if ready is not None:
            ready.set()
        await server.serve_forever()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="host:port to accept on")
    parser.add_argument("--to", required=True, help="host:port to forward to")
    parser.add_argument("--one-way-ms", type=float, required=True)
    args = parser.parse_args()
    # SIGTERM (bench/send.py stops it so) ends it as quietly as Ctrl-C.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=_loop()) as runner:
        runner.run(serve(_address(args.listen), _address(args.to), args.one_way_ms))


def _loop() -> Callable[[], asyncio.AbstractEventLoop] | None:
    # uvloop where installed: the proxy then takes less of the CPU the contenders share.
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


if __name__ == "__main__":
    main()
