"""The HTTP server's edge over a real socket: slow and vanishing clients, malformed requests,
proxies, and what every answer carries (mailer/httpserver.py under the web app)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from mailer import config as config_mod
from mailer import web
from mailer.errors import ConfigError
from mailer.states import SubscriptionStatus
from mailer.store import Store
from mailer.web.guards import SecurityHeaders
from mailer.web.server import server_config
from tests import storehelp
from tests.conftest import Project
from tests.smtpd import RecordingServer
from tests.tools import start_mailer_http

KEY = "test-key"  # what Project.configure puts in MAILER_SECRET_KEY
HEAD, BODY = 0.4, 0.6  # the test server's deadlines; the shipped ones are 10 and 15 seconds
SLACK = 1.5  # for a loaded machine: closed late is still closed, never "open for ever"
SECURITY = {name.decode(): value.decode() for name, value in SecurityHeaders.HEADERS}


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/project/var/mailer.db"  # the edge does not depend on it


@dataclass
class Served:
    port: int
    url: str


async def until(condition: Callable[[], bool], *, seconds: float = 10.0) -> None:
    """Wait for what another task does (a log line, a message) for at most `seconds`."""
    for _ in range(int(seconds / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def serving(project: Project, store: Store, **settings: Any) -> AsyncIterator[Served]:
    """The app under uvicorn as `mailer run` and `mailer serve` configure it, deadlines
    shortened, in the test's event loop."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = project.configure(base_url=f"http://127.0.0.1:{port}", **settings)
    server = uvicorn.Server(server_config(
        web.create_app(config, store=store), config.settings, head_timeout=HEAD,
        body_timeout=BODY, lifespan="on", log_config=None))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            assert not task.done(), "the web server did not start"
            await asyncio.sleep(0.01)
        yield Served(port, f"http://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


async def exchange(port: int, first: bytes, *, trickle: bytes = b"", every: float = 0.05
                   ) -> tuple[bytes, float]:
    """Send `first`, then `trickle` a byte at a time; read until the server closes.
    Returns what came back and the seconds from connecting to the close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    start = time.monotonic()

    async def dribble() -> None:
        with contextlib.suppress(OSError):
            for byte in trickle:
                await asyncio.sleep(every)
                writer.write(bytes([byte]))
                await writer.drain()

    writer.write(first)
    dribbling = asyncio.create_task(dribble())
    try:
        async with asyncio.timeout(10):
            try:
                answer = await reader.read()
            except ConnectionResetError:
                answer = b""
        return answer, time.monotonic() - start
    finally:
        dribbling.cancel()
        writer.close()


def head_of(answer: bytes) -> tuple[int, dict[str, str]]:
    """The status and headers (lower-case names) of the first answer in `answer`."""
    lines = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {name.lower(): value for name, value in fields.items()}


# -- slow clients --------------------------------------------------------------------------------


async def test_a_connection_that_sends_nothing_is_closed_at_the_head_deadline(
    project: Project, store: Store,
) -> None:
    async with serving(project, store) as site:
        answer, took = await exchange(site.port, b"")

    assert answer == b""  # nothing asked, nothing answered: just closed
    assert HEAD * 0.9 <= took < HEAD + SLACK


@pytest.mark.parametrize("first", [b"GET /healthz HTTP/1.1\r\nHost: x\r\n", b"GET /heal"],
                         ids=["headers", "request-line"])
async def test_a_request_head_trickling_in_gets_408_at_the_head_deadline(
    project: Project, store: Store, first: bytes,
) -> None:
    async with serving(project, store) as site:
        # A byte every 50 ms: arriving data must not push the deadline back (slowloris).
        answer, took = await exchange(site.port, first, trickle=b"X" * 200)

    status, headers = head_of(answer)
    assert (status, headers["connection"]) == (408, "close")
    assert HEAD * 0.9 <= took < HEAD + SLACK
    assert SECURITY.items() <= headers.items() and "server" not in headers


@pytest.mark.parametrize(("head", "trickle"), [
    (b"Content-Length: 100\r\n\r\nemail=ada", b"%40example.com&name=Ada"),
    (b"Transfer-Encoding: chunked\r\n\r\n9\r\nemail=ada\r\n", b"1\r\nx\r\n" * 40),
], ids=["short-of-content-length", "chunked-without-end"])
async def test_a_body_that_does_not_end_gets_408_at_the_body_deadline_and_nothing_is_stored(
    project: Project, store: Store, head: bytes, trickle: bytes,
) -> None:
    request = (b"POST /subscribe/ml-issues HTTP/1.1\r\nHost: x\r\n"
               b"Content-Type: application/x-www-form-urlencoded\r\n" + head)
    async with serving(project, store) as site:
        answer, took = await exchange(site.port, request, trickle=trickle)

    status, headers = head_of(answer)
    assert (status, headers["connection"]) == (408, "close")
    assert BODY * 0.9 <= took < BODY + SLACK
    assert await storehelp.subscription_of(store, "ada@example.com", "ml-issues") is None


async def test_each_request_on_a_kept_alive_connection_gets_its_own_head_deadline(
    project: Project, store: Store,
) -> None:
    async with serving(project, store) as site:
        # The first request completes after nearly half a head deadline (room for a loaded
        # machine's late timers); the second never does.
        answer, took = await exchange(site.port, b"GET /healthz HTTP/1.1\r\n",
                                      trickle=b"Host: x\r\n\r\nGET /healthz HTTP/1.1\r\n",
                                      every=HEAD * 0.4 / 10)

    first, second = answer.split(b"ok\n", 1)
    assert head_of(first)[0] == 200 and head_of(second)[0] == 408
    # One deadline from the connection's start would have closed it at HEAD.
    assert HEAD * 1.3 <= took < HEAD * 1.5 + SLACK


async def test_a_client_that_leaves_mid_body_costs_one_log_line_and_no_traceback(
    project: Project, store: Store, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with serving(project, store) as site:
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
            writer.write(b"POST /unsubscribe/abc HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Length: 100\r\n\r\nx")
            await writer.drain()
            writer.close()
        await until(lambda: caplog.text.count("went away") >= 3, seconds=5)

    gone = [r for r in caplog.records if "went away" in r.getMessage()]
    assert len(gone) == 3 and all(r.levelno <= logging.INFO for r in gone)
    assert [r for r in caplog.records if r.exc_info] == []
    assert "Traceback" not in caplog.text and "ClientDisconnect" not in caplog.text
    assert "/unsubscribe/abc" not in caplog.text  # the route's pattern, never a token


# -- proxies -------------------------------------------------------------------------------------


async def sign_ups(site: Served, *forwarded_for: str) -> list[int]:
    async with httpx.AsyncClient(base_url=site.url) as client:
        return [(await client.post("/subscribe/ml-issues", data={"email": f"a{i}@example.com"},
                                   headers={"x-forwarded-for": ip})).status_code
                for i, ip in enumerate(forwarded_for)]


async def test_x_forwarded_for_from_an_untrusted_peer_does_not_change_the_rate_limited_client(
    project: Project, store: Store,
) -> None:
    async with serving(project, store, subscribe_rate_per_minute=2) as site:
        answers = await sign_ups(site, "203.0.113.1", "203.0.113.2", "203.0.113.3")

    assert answers == [200, 200, 429]  # all three came from 127.0.0.1, whatever they claim


async def test_x_forwarded_for_from_a_trusted_proxy_names_the_rate_limited_client(
    project: Project, store: Store,
) -> None:
    async with serving(project, store, subscribe_rate_per_minute=1,
                       trusted_proxies="[127.0.0.0/8]") as site:
        answers = await sign_ups(site, "203.0.113.1", "203.0.113.2", "203.0.113.1",
                                 "203.0.113.1, 127.0.0.9")  # through a second trusted proxy

    assert answers == [200, 200, 429, 429]


def test_trusted_proxies_take_addresses_and_networks_and_refuse_anything_else(
    project: Project,
) -> None:
    project.configure(trusted_proxies="[10.0.0.1, 'fd00::/8']")
    path, env = project.config_path, {"MAILER_SECRET_KEY": KEY}
    assert config_mod.load(path, env=env).settings.trusted_proxies == ("10.0.0.1", "fd00::/8")
    from_env = config_mod.load(path, env={**env, "MAILER_TRUSTED_PROXIES": "10.0.0.2, ::1"})
    assert from_env.settings.trusted_proxies == ("10.0.0.2", "::1")

    line = 1 + project.config_path.read_text().splitlines().index(
        "  trusted_proxies: [10.0.0.1, 'fd00::/8']")
    for bad in ("'*'", "proxy.internal", "10.0.0.1/8"):
        project.config_path.write_text(project.config_path.read_text().replace(
            "trusted_proxies: [10.0.0.1, 'fd00::/8']", f"trusted_proxies: [{bad}]"))
        with pytest.raises(ConfigError) as error:
            config_mod.load(path, env=env)
        assert error.value.field == "settings.trusted_proxies" and error.value.line == line
        assert "expected IP addresses or networks like 10.0.0.1" in str(error.value)
        project.configure(trusted_proxies="[10.0.0.1, 'fd00::/8']")


# -- what answers carry --------------------------------------------------------------------------


async def test_a_path_with_a_trailing_slash_gets_404_and_no_redirect(
    project: Project, store: Store,
) -> None:
    async with serving(project, store) as site, httpx.AsyncClient(base_url=site.url) as client:
        answers = [await client.get(path, headers={"host": "evil.example"})
                   for path in ("/confirm/abc.def/", "/subscribe/ml-issues/", "/healthz/")]

    assert [a.status_code for a in answers] == [404] * 3
    assert all("location" not in a.headers and "evil" not in a.text for a in answers)


# Every path of the routes table, with the methods it takes.
ALLOWED = {"/subscribe/ml-issues": "GET, HEAD, POST", "/confirm/abc": "GET, HEAD, POST",
           "/unsubscribe/abc": "GET, HEAD, POST", "/resubscribe/abc": "POST",
           "/manage/abc": "GET, HEAD, POST",
           "/issues/ml-issues": "GET, HEAD", "/issues/ml-issues/x": "GET, HEAD",
           "/healthz": "GET, HEAD", "/metrics": "GET, HEAD", "/webhooks/ses": "POST",
           "/webhooks/postmark": "POST", "/webhooks/mailgun": "POST"}


async def test_a_405_names_every_method_its_path_takes(project: Project, store: Store) -> None:
    assert len(ALLOWED) == len(web.routes)
    async with serving(project, store) as site, httpx.AsyncClient(base_url=site.url) as client:
        refused = {path: await client.request("PUT", path) for path in ALLOWED}
        taken = {(path, method): await client.request(method, path)
                 for path, allow in ALLOWED.items() for method in allow.split(", ")}

    assert {p: (a.status_code, a.headers["allow"]) for p, a in refused.items()} == \
        {p: (405, allow) for p, allow in ALLOWED.items()}
    assert [k for k, answer in taken.items() if answer.status_code == 405] == []


async def test_no_answer_names_the_server_and_uvicorns_own_400s_carry_the_security_headers(
    project: Project, store: Store,
) -> None:
    malformed = [b"GARBAGE\r\n\r\n", b"GET /healthz HTTP/1.1\r\nHost: x\r\nno colon\r\n\r\n",
                 b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: nine\r\n\r\n"]
    async with serving(project, store) as site:
        async with httpx.AsyncClient(base_url=site.url) as client:
            app = [await client.get("/healthz"), await client.get("/nothing"),
                   await client.put("/healthz")]
        raw = [await exchange(site.port, request) for request in malformed]

    for response in app:
        assert "server" not in response.headers and SECURITY.items() <= response.headers.items()
    for answer, took in raw:
        status, headers = head_of(answer)
        assert (status, headers["connection"]) == (400, "close") and took < SLACK
        assert SECURITY.items() <= headers.items() and "server" not in headers


async def test_a_500_page_carries_the_security_headers_too(
    project: Project, store: Store,
) -> None:
    (project.root / "templates/pages/archive.html.j2").write_text("{{ no_such_thing }}")
    async with serving(project, store) as site, httpx.AsyncClient(base_url=site.url) as client:
        answer = await client.get("/issues/ml-issues")

    assert answer.status_code == 500 and "Something went wrong" in answer.text
    assert SECURITY.items() <= answer.headers.items() and "server" not in answer.headers


# -- confirm links -------------------------------------------------------------------------------


async def test_get_and_head_of_a_confirm_link_change_nothing_and_a_post_confirms(
    project: Project, store: Store, smtpd: RecordingServer,
) -> None:
    smtp = f"smtp://{smtpd.host}:{smtpd.port}"
    async with serving(project, store, smtp_url=smtp) as site, \
            httpx.AsyncClient(base_url=site.url) as client:
        await client.post("/subscribe/ml-issues", data={"email": "ada@example.com"})
        await until(lambda: bool(smtpd.messages))
        text = smtpd.messages[0].parsed().get_body(preferencelist=("plain",))
        assert text is not None
        [link] = [w for w in text.get_content().split() if "/confirm/" in w]
        looked = [await client.get(link), await client.head(link), await client.get(link)]
        before = await storehelp.subscription_of(store, "ada@example.com", "ml-issues")
        confirmed = await client.post(link)

    assert [a.status_code for a in looked] == [200, 200, 200]
    assert before is not None and before.status == SubscriptionStatus.PENDING
    assert confirmed.status_code == 200 and "You are subscribed" in confirmed.text
    after = await storehelp.subscription_of(store, "ada@example.com", "ml-issues")
    assert after is not None and after.status == SubscriptionStatus.CONFIRMED


# -- the shipped commands ------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["run", "serve"])
def test_the_commands_trust_only_the_configured_proxies_and_log_a_vanished_client_briefly(
    project: Project, command: str,
) -> None:
    project.configure(trusted_proxies="[127.0.0.1]", subscribe_rate_per_minute=1)
    env = {**os.environ, "MAILER_SECRET_KEY": KEY}
    env.pop("MAILER_CONFIG", None)
    proc, url, health = start_mailer_http(project.root, project.config_path, command, env=env)
    port = int(url.rpartition(":")[2])
    try:
        answers = [httpx.post(f"{url}/subscribe/ml-issues", data={"email": "a@example.com"},
                              headers={"x-forwarded-for": ip}).status_code
                   for ip in ("203.0.113.1", "203.0.113.2", "203.0.113.1")]
        with socket.create_connection(("127.0.0.1", port)) as gone:
            gone.sendall(b"POST /unsubscribe/abc HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Length: 100\r\n\r\nx")
        time.sleep(0.3)
        assert httpx.get(f"{url}/healthz").status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)

    assert "server" not in health.headers
    assert answers == [200, 200, 429], output
    assert "Traceback" not in output and "ClientDisconnect" not in output, output
    assert output.count("went away") <= 1 and proc.returncode == 0, output
