"""The outside tools the email-quality tests drive, found on this machine or reported missing.

A missing tool skips its tests with the reason, unless the run demands it:
MAILER_TEST_REQUIRE_BROWSER=1 (Chromium) or MAILER_TEST_REQUIRE_TOOLS=1 (mjml, SpamAssassin)
turn the skip into a failure, so CI cannot pass by quietly testing less.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import AsyncIterator, Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
import uvicorn

if TYPE_CHECKING:
    import typer
    from starlette.types import ASGIApp

    from mailer.config import Settings

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
# Debian's Chromium, driven by Playwright; Playwright never downloads a browser of its own.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
# Where scripts/test installs the official mjml package from npm.
MJML_CANDIDATES = [REPO / ".cache/node/node_modules/.bin/mjml", REPO / "node_modules/.bin/mjml"]


def _required(variable: str) -> bool:
    return os.environ.get(variable, "") not in ("", "0")


def _missing(reason: str, variable: str) -> None:
    if _required(variable):
        pytest.fail(f"{variable}=1 but {reason}")
    pytest.skip(reason)


def chromium() -> str:
    """Chromium's executable, with Playwright's Python package to drive it."""
    path = os.environ.get("MAILER_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        _missing("Debian's chromium is not installed (apt-get install chromium)",
                 "MAILER_TEST_REQUIRE_BROWSER")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _missing("Playwright's Python package is missing (pip install -e '.[test]')",
                 "MAILER_TEST_REQUIRE_BROWSER")
    return path


def mjml() -> str:
    """The official mjml command line (npm), as installed by scripts/test."""
    found = next((str(p) for p in MJML_CANDIDATES if p.exists()), None) or shutil.which("mjml")
    if found is None:
        _missing("the official mjml CLI is not installed (scripts/test installs it with npm "
                 "into .cache/node)", "MAILER_TEST_REQUIRE_TOOLS")
    assert found is not None
    return found


def spamassassin() -> str:
    """Debian's spamassassin command."""
    found = shutil.which("spamassassin")
    if found is None:
        _missing("SpamAssassin is not installed (apt-get install spamassassin)",
                 "MAILER_TEST_REQUIRE_TOOLS")
    assert found is not None
    return found


def artifact(name: str) -> Path:
    """A path under test-artifacts/ (git-ignored) for a file worth looking at after a run."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS / name


@cache
def png(width: int, height: int) -> bytes:
    """A plain grey PNG of the given size: stands in for an issue's remote images offline."""
    row = b"\x00" + b"\x9c\xa3\xaf" * width
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(row * height, 9)) + chunk(b"IEND", b""))


def run_cli(*args: str, cwd: Path, env: Mapping[str, str | None] | None = None,
            ) -> subprocess.CompletedProcess[str]:
    """`mailer ARGS` in this process: the same command line (mailer.cli's typer app, its
    parsing, exit codes, stdout and stderr), without a new interpreter importing all of
    mailer first (~0.8 s a run). Stdin is empty and no terminal, like stdin=DEVNULL.

    `env` is applied for the run only (None removes a variable). For a test about the
    process itself (signals, a crash, a daemon, two processes at once) use a subprocess.
    An exception other than the CLI's clean exits propagates into the test, traceback and all.
    """
    from typer.testing import CliRunner

    app = _cli_app()
    with contextlib.chdir(cwd):
        result = CliRunner().invoke(app, list(args), env=dict(env or {}),
                                    catch_exceptions=False)
    return subprocess.CompletedProcess(["mailer", *args], result.exit_code,
                                       result.stdout, result.stderr)


@cache
def _cli_app() -> typer.Typer:
    # mailer's rich consoles are made at import: made here with no terminal and no COLUMNS
    # of the test run's own, they read COLUMNS and the output stream at each print, as a
    # new `python -m mailer` would.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        saved = os.environ.pop("COLUMNS", None)
        try:
            from mailer.cli.app import app
        finally:
            if saved is not None:
                os.environ["COLUMNS"] = saved
    return app


SUMMARY_COLUMNS = ["sent", "failed", "retrying", "unknown", "skipped", "possible duplicates"]


def summary_of(stdout: str) -> dict[str, int]:
    """The figures of send-now's summary table, by column: {"sent": 3, "failed": 0, …}.

    Fails the test unless there is exactly one summary table with one row of figures.
    """
    rows = [[cell.strip() for cell in re.split(r"[┃│|]", line)[1:-1]]
            for line in stdout.splitlines()]
    headers = [i for i, cells in enumerate(rows) if cells == SUMMARY_COLUMNS]
    assert len(headers) == 1, f"no single summary table in:\n{stdout}"
    figures = [cells for cells in rows[headers[0] + 1:] if cells]
    assert figures and all(cell.isdigit() for cell in figures[0]), \
        f"no figures under the summary's header in:\n{stdout}"
    return dict(zip(SUMMARY_COLUMNS, map(int, figures[0]), strict=True))


class Listening:
    """A TCP socket bound to a free loopback port, before the app is configured, so that
    its base_url (the links in the emails) can name the port the app is served on."""

    def __init__(self) -> None:
        # IPPROTO_TCP named, as getaddrinfo names it for the daemon's socket (daemon.listen):
        # asyncio turns Nagle off only on sockets that say so, and with it on every request
        # on a kept-alive connection waited 40 ms for a delayed ACK.
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"


class _InLoopServer(uvicorn.Server):
    """uvicorn without signal handlers of its own (as in the daemon): SIGINT stays pytest's.
    And stop() ends it at once, where setting should_exit is seen within 0.1 s."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._stop = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def main_loop(self) -> None:
        await self.on_tick(0)  # the Date header, once: a test is over within seconds
        await self._stop.wait()

    def stop(self) -> None:
        self.should_exit = True
        self._stop.set()


class Served:
    """An app being served by `serving`."""

    def __init__(self, server: uvicorn.Server) -> None:
        self._server = server

    async def idle(self) -> None:
        """Wait until every request taken so far has run to its end, the work the app does
        after its answer (Starlette's background tasks) included."""
        while self._server.server_state.tasks:  # noqa: ASYNC110 (uvicorn has no event for it)
            await asyncio.sleep(0.002)


@contextlib.asynccontextmanager
async def serving(app: ASGIApp, listening: Listening, settings: Settings,
                  ) -> AsyncIterator[Served]:
    """Serve `app` over real HTTP on `listening`, in the test's event loop: uvicorn with the
    config `mailer run` and `mailer serve` use (mailer.web.server), its lifespan run."""
    from mailer.web.server import server_config

    server = _InLoopServer(server_config(app, settings, lifespan="on", log_config=None,
                                         access_log=False))
    task = asyncio.create_task(server.serve(sockets=[listening.socket]), name="test-uvicorn")
    try:
        while not server.started:
            if task.done():
                task.result()  # its exception, if it failed to start
                raise RuntimeError("the web server stopped before it started")
            await asyncio.sleep(0.005)
        yield Served(server)
    finally:
        server.stop()
        await task
        listening.socket.close()


@contextlib.asynccontextmanager
async def settled_client(app: ASGIApp, listening: Listening, settings: Settings,
                         ) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of `app` served on `listening` (see serving) whose every answer comes
    back with what the request set off done: the confirmation email the app sends after
    its answer has reached the SMTP server."""
    async with serving(app, listening, settings) as served:

        async def settle(response: httpx.Response) -> None:
            await response.aread()
            await served.idle()
            await app.state.confirmations.join()  # type: ignore[attr-defined]

        async with httpx.AsyncClient(base_url=listening.url,
                                     event_hooks={"response": [settle]}) as client:
            yield client


def start_mailer_http(project_root: Path, config_path: Path, command: str, *,
                      env: dict[str, str]) -> tuple[subprocess.Popen[str], str, httpx.Response]:
    """`mailer serve` (or `run`) as its own process on a free port, once its /healthz answers.

    Returns the process (its stdout and stderr in one text pipe, read by
    `proc.communicate()` after stopping it), its URL and that first /healthz answer.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailer", "--config", str(config_path), command,
         "--port", str(port)], cwd=project_root, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            return proc, url, httpx.get(f"{url}/healthz")
        except httpx.TransportError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                output, _ = proc.communicate()
                raise AssertionError(f"mailer {command} did not start: {output}") from None
            time.sleep(0.1)
