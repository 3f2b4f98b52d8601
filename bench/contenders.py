"""The contenders of bench/send.py, each run as processes of its own and measured with
wait4(): wall seconds, CPU seconds (user + system), peak RSS, and for mailer when its first
message was accepted."""

from __future__ import annotations

import os
import resource
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sink import SOURCE

# Keys for --only, in the order they run.
KEYS = ("source", "aloop", "send-now", "joined", "worker1", "worker2")


@dataclass
class Run:
    name: str
    messages: int
    wall: float
    cpu: float
    rss_mb: float
    rtt_ms: float = 0.0
    started: float = 0.0  # wall clock, just before the (first) process started
    first_s: float | None = None  # see first_accepted()
    note: str = ""

    @property
    def rate(self) -> float:
        return self.messages / self.wall if self.wall else 0.0


def _failed(name: str, status: int, process: subprocess.Popen[bytes]) -> None:
    assert process.stderr is not None
    sys.exit(f"{name} failed ({status}): {process.stderr.read().decode()[-2000:]}")


def measured(name: str, messages: int, argv: list[str], *, env: dict[str, str] | None = None,
             cwd: Path | None = None) -> Run:
    """Run one process to its end and read its resource use from wait4()."""
    return measured_together(name, messages, [argv], env=env, cwd=cwd)


def measured_together(name: str, messages: int, argvs: list[list[str]], *,
                      env: dict[str, str] | None = None, cwd: Path | None = None) -> Run:
    """Processes started at once; wall until the last ends, CPU summed, RSS the largest."""
    started, start = time.time(), time.perf_counter()
    processes = [subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE) for argv in argvs]
    cpu, rss = 0.0, 0.0
    for process in processes:
        _, status, usage = os.wait4(process.pid, 0)
        if status != 0:
            _failed(name, status, process)
        cpu += usage.ru_utime + usage.ru_stime
        rss = max(rss, usage.ru_maxrss / 1024)
    return Run(name, messages, time.perf_counter() - start, cpu, rss, started=started)


def joined(name: str, messages: int, argv: list[str], helper: list[str], *, env: dict[str, str],
           cwd: Path, database: Path) -> Run:
    """`argv` (send-now), and `helper` (a worker) started as soon as the first message is
    out, so it finds the send open and joins it: two processes on one SQLite send."""
    started, start = time.time(), time.perf_counter()
    first = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    ended: tuple[int, int, resource.struct_rusage | None] = (0, 0, None)
    while not _any_sent(database):
        ended = os.wait4(first.pid, os.WNOHANG)
        if ended[0]:
            break
        time.sleep(0.02)
    second = subprocess.Popen(helper, env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    cpu, rss = 0.0, 0.0
    for process in (first, second):
        _, status, usage = ended if process is first and ended[0] else os.wait4(process.pid, 0)
        if status != 0:
            _failed(name, status, process)
        assert usage is not None
        cpu += usage.ru_utime + usage.ru_stime
        rss = max(rss, usage.ru_maxrss / 1024)
    return Run(name, messages, time.perf_counter() - start, cpu, rss, started=started)


def _any_sent(database: Path) -> bool:
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=1) as db:
            return db.execute("SELECT 1 FROM deliveries WHERE sent_at IS NOT NULL LIMIT 1"
                              ).fetchone() is not None
    except sqlite3.OperationalError:  # not created or locked yet
        return False


def smtp_source(port: int, *, messages: int, size: int, sessions: int) -> list[str]:
    # -d: each session keeps its connection for message after message, as mailer does
    # (without it every message pays a new connection, greeting and EHLO). smtp-source
    # never pipelines.
    return [str(SOURCE), "-d", "-s", str(sessions), "-l", str(size), "-m", str(messages),
            "-f", "a@example.com", "-t", "b@example.com", f"127.0.0.1:{port}"]


ALOOP = """\
import asyncio, sys, aiosmtplib
port, count, sessions, path = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
data = open(path, "rb").read()
async def session(n):
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
    await client.connect()
    for _ in range(n):
        await client.sendmail("a@example.com", ["b@example.com"], data)
    await client.quit()
async def main():
    per, extra = divmod(count, sessions)
    await asyncio.gather(*(session(per + (i < extra)) for i in range(sessions)))
asyncio.run(main())
"""


def bare_loop(port: int, *, messages: int, sessions: int, message: Path) -> list[str]:
    return [sys.executable, "-c", ALOOP, str(port), str(messages), str(sessions), str(message)]


# In a process of its own: asyncpg here would weigh on every later figure (see
# send.own_peak_rss_mb).
_FIRST_PG = """\
import asyncio, sys, asyncpg
async def main():
    conn = await asyncpg.connect(sys.argv[1])
    try:
        first = await conn.fetchval("SELECT min(sent_at) FROM deliveries")
    finally:
        await conn.close()
    print(first.timestamp() if first is not None else "")
asyncio.run(main())
"""


def first_accepted(run: Run, database_url: str, cwd: Path) -> Run:
    """Set `run.first_s`: seconds from the start of the run's (first) process to the first
    message the sink accepted, read back from the database as the earliest `sent_at`.

    mailer stamps `sent_at` when it journals the outcome, just after the server's 250 reply
    to the message (journal writes are batched: a few milliseconds late at most). So the
    figure is what a reader waits: interpreter start, imports, config, opening and
    migrating the database, rendering and queueing (send-now) or claiming (worker), the
    SMTP connection and the first transaction (with --rtt-ms, its round trips too)."""
    if database_url.startswith("sqlite:///"):
        path = cwd / database_url.removeprefix("sqlite:///")
        with sqlite3.connect(path) as db:
            (first,) = db.execute("SELECT min(sent_at) FROM deliveries").fetchone()
        if first is None:
            return run
        moment = datetime.fromisoformat(first).replace(tzinfo=UTC).timestamp()
    else:
        out = subprocess.run([sys.executable, "-c", _FIRST_PG, database_url], check=True,
                             capture_output=True, text=True).stdout.strip()
        if not out:
            return run
        moment = float(out)
    run.first_s = moment - run.started
    return run
