"""A throwaway PostgreSQL server for the tests: Debian's binaries, a private data dir, loopback."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Set by scripts/test (and so by CI): a missing PostgreSQL is then an error, not a skip.
REQUIRED = os.environ.get("MAILER_TEST_REQUIRE_POSTGRES") == "1"
# A server someone already runs (postgresql://user@host:port/db); the tests create and drop
# their own databases in it.
GIVEN_URL = os.environ.get("MAILER_TEST_POSTGRES_URL")


def _bin_dir() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                      key=lambda p: int(Path(p).parts[-3]))
    return Path(versions[-1]).parent if versions else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_owner(argv: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root; Debian's package creates the postgres user.
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *argv]
    return argv


def missing_reason() -> str | None:
    """Why no server can be had here, or None when one can."""
    if GIVEN_URL:
        return None
    if _bin_dir() is None:
        return ("PostgreSQL is not installed (apt-get install postgresql, or set "
                "MAILER_TEST_POSTGRES_URL); scripts/test installs it")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser: cannot start PostgreSQL as another user"
    return None


@contextmanager
def server() -> Iterator[str]:
    """Yield the URL of a PostgreSQL superuser connection to a server that lives this long."""
    if GIVEN_URL:
        yield GIVEN_URL
        return
    bin_dir = _bin_dir()
    assert bin_dir is not None, missing_reason()
    data = Path(tempfile.mkdtemp(prefix="mailer-pg-"))
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
    log = data / "server.log"
    subprocess.run(_as_owner([str(bin_dir / "initdb"), "-D", str(data / "db"), "-U", "mailer",
                              "-A", "trust", "-E", "UTF8", "--no-sync"]),
                   check=True, capture_output=True)
    for attempt in range(3):
        # A port free a moment ago may be taken meanwhile (each pytest-xdist worker starts
        # a server of its own at the same time): then another one.
        port = _free_port()
        # fsync off: a test database need not survive a power cut, and it makes tests fast.
        options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off " \
                  "-c max_connections=200"
        started = subprocess.run(
            _as_owner([str(bin_dir / "pg_ctl"), "-D", str(data / "db"), "-l", str(log),
                       "-o", options, "-w", "start"]), capture_output=True, text=True)
        if started.returncode == 0:
            break
        if attempt == 2:
            why = log.read_text(errors="replace") if log.exists() else started.stderr
            raise RuntimeError(f"PostgreSQL did not start: {why}")
    try:
        yield f"postgresql://mailer@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(_as_owner([str(bin_dir / "pg_ctl"), "-D", str(data / "db"), "-m",
                                  "immediate", "stop"]), capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


def database_url(admin_url: str, name: str) -> str:
    """The URL of database `name` on the server of `admin_url`."""
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


def create_database(admin_url: str, name: str, *, template: str | None = None) -> str:
    """Create database `name` on the server of `admin_url`, empty or as a copy of database
    `template` (which nobody may be connected to); the URL of the new database."""
    like = f' TEMPLATE "{template}"' if template else ""
    _psql(admin_url, f'CREATE DATABASE "{name}"{like}')
    return database_url(admin_url, name)


def drop_database(admin_url: str, name: str) -> None:
    _psql(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _psql(admin_url: str, sql: str) -> None:
    # asyncpg is what mailer uses; a short synchronous run keeps fixtures loop-free.
    import asyncio

    import asyncpg

    async def run() -> None:
        for _ in range(50):
            try:
                conn = await asyncpg.connect(admin_url)
                break
            except (OSError, asyncpg.CannotConnectNowError):
                await asyncio.sleep(0.1)
        else:
            conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())
