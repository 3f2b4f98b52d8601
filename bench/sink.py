"""The receiving side of bench/send.py: Postfix's smtp-sink on a free loopback port, and the
delaying proxy of bench/latency.py in front of it when a round trip is asked for."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SINK, SOURCE = Path("/usr/sbin/smtp-sink"), Path("/usr/sbin/smtp-source")
LATENCY = Path(__file__).with_name("latency.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(port: int, what: str, process: subprocess.Popen[bytes]) -> None:
    for _ in range(200):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    sys.exit(f"{what} did not start on 127.0.0.1:{port}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def sink() -> Iterator[int]:
    """smtp-sink on a free loopback port (yielded), accepting every message, until the end."""
    port = free_port()
    user = ["-u", "nobody"] if os.geteuid() == 0 else []  # smtp-sink drops root itself
    process = subprocess.Popen([str(SINK), *user, f"127.0.0.1:{port}", "1024"])
    try:
        _wait_for(port, "smtp-sink", process)
        yield port
    finally:
        _stop(process)


@contextmanager
def delayed(port: int, rtt_ms: float) -> Iterator[int]:
    """The port to send to so that every round trip to `port` takes `rtt_ms` more: the
    proxy of bench/latency.py (rtt_ms / 2 each way), or `port` itself when rtt_ms is 0.

    The proxy is one process of its own, on the same cores as the contenders and the sink;
    every contender of a run goes through the same one, so all pay the same delay and the
    same share of its CPU."""
    if rtt_ms <= 0:
        yield port
        return
    listen = free_port()
    process = subprocess.Popen([sys.executable, str(LATENCY), "--listen", f"127.0.0.1:{listen}",
                                "--to", f"127.0.0.1:{port}", "--one-way-ms", str(rtt_ms / 2)])
    try:
        _wait_for(listen, "the delaying proxy (bench/latency.py)", process)
        yield listen
    finally:
        _stop(process)
