"""Nobody learns who is subscribed: /metrics is guarded, a sign-up's timing and connection are
the same for every address, and a confirmation link dies with the subscription it was for.

Everything runs over real HTTP: uvicorn on a socket (its lifespan on, as `mailer run` has
it), the real SMTP test server, SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn
from sqlalchemy import event
from starlette.applications import Starlette

from mailer import config as config_mod
from mailer import subscriptions, tokens
from mailer.config import Config
from mailer.errors import ConfigError
from mailer.states import SubscriptionStatus
from mailer.store import Store
from mailer.web import create_app, metrics
from mailer.web.confirmations import ConfirmationQueue
from tests import storehelp
from tests.conftest import Project
from tests.smtpd import RecordingServer, ServerThread

KEY = "test-key"  # what Project.configure puts in MAILER_SECRET_KEY
TOKEN = "scrape-me-0123456789"
CONFIRM_LINK = re.compile(r"https?://\S+/confirm/[A-Za-z0-9_.-]+")
SmtpUrl = Callable[[RecordingServer], str]


class _Server(uvicorn.Server):
    """uvicorn in the test's own loop, leaving the signals to pytest."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def served(app: Starlette, host: str = "127.0.0.1") -> AsyncIterator[str]:
    """The app behind uvicorn on `host`, lifespan on; yields its base URL."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP spelled out: asyncio sets TCP_NODELAY only on sockets that say so, and
    # without it every answer waits ~40 ms for a delayed ACK (Nagle), drowning the timing.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind((host, 0))
    server = _Server(uvicorn.Config(app, lifespan="on", log_config=None, log_level="warning",
                                    ws="none"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            assert not task.done(), "the web server did not start"
            await asyncio.sleep(0.01)
        yield f"http://{f'[{host}]' if ':' in host else host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task
        sock.close()


def client(url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, timeout=30, trust_env=False)  # no proxy from env


def queue_of(app: Starlette) -> ConfirmationQueue:
    queue: ConfirmationQueue = app.state.confirmations
    return queue


def with_token(project: Project, config: Config, **env: str) -> Config:
    return config_mod.load(project.config_path, env={"MAILER_SECRET_KEY": KEY, **env})


def outside_address() -> str | None:
    """An address of this machine that is not loopback (the peer a remote client has)."""
    found: list[str] = []
    with contextlib.suppress(OSError):
        found += [info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)]
    for probe in ("192.0.2.1", "10.255.255.255"):  # UDP connect sends nothing
        with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((probe, 9))
            found.append(s.getsockname()[0])
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        text = subprocess.run(["ip", "-o", "addr", "show"], capture_output=True, text=True,
                              timeout=5).stdout
        found += re.findall(r"\binet6? ([0-9a-f.:]+)/", text)
    for candidate in found:
        address = ipaddress.ip_address(candidate.partition("%")[0])
        if not (address.is_loopback or address.is_link_local or address.is_unspecified):
            return str(address)
    return None


# -- /metrics ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("peer", "loopback"), [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("::ffff:127.0.0.1", True),
    ("192.0.2.7", False), ("10.0.0.1", False), ("::ffff:192.0.2.7", False), ("2001:db8::1", False),
    ("localhost", False), ("", False), (None, False),
])
def test_only_127_0_0_0_8_and_ipv6_one_count_as_loopback(peer: str | None, loopback: bool
                                                         ) -> None:
    assert metrics.is_loopback(peer) is loopback


async def test_without_a_token_metrics_answer_a_loopback_client(
    project: Project, store: Store,
) -> None:
    app = create_app(project.configure(), store=store)
    async with served(app) as url, client(url) as http:
        answer = await http.get("/metrics")

    assert answer.status_code == 200
    assert "mailer_subscribers" in answer.text


async def test_without_a_token_metrics_refuse_a_client_off_loopback_whatever_it_claims(
    project: Project, store: Store,
) -> None:
    host = outside_address()
    if host is None:
        pytest.skip("this machine has no address but loopback to connect from")
    app = create_app(project.configure(), store=store)
    async with served(app, host) as url, client(url) as http:
        plain = await http.get("/metrics")
        # X-Forwarded-For is whatever the client writes: only the socket's peer counts.
        spoofed = await http.get("/metrics", headers={"X-Forwarded-For": "127.0.0.1",
                                                      "X-Real-IP": "127.0.0.1"})
        health = await http.get("/healthz")

    assert (plain.status_code, spoofed.status_code, health.status_code) == (403, 403, 200)
    assert "mailer_subscribers" not in plain.text + spoofed.text


async def test_with_a_token_set_metrics_answer_only_its_bearer_even_on_loopback(
    project: Project, store: Store,
) -> None:
    config = with_token(project, project.configure(), MAILER_METRICS_TOKEN=TOKEN)
    app = create_app(config, store=store)
    async with served(app) as url, client(url) as http:
        refused = [await http.get("/metrics", headers=headers) for headers in (
            {}, {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": f"Bearer {TOKEN[:-1]}"},
            {"Authorization": f"Basic {TOKEN}"}, {"Authorization": TOKEN},
            {"Authorization": "Bearer"})]
        allowed = await http.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})

    assert [a.status_code for a in refused] == [401] * len(refused)
    assert all(a.headers["www-authenticate"] == "Bearer" for a in refused)
    assert all("mailer_subscribers" not in a.text for a in refused)
    assert allowed.status_code == 200 and "mailer_subscribers" in allowed.text


async def test_with_a_token_set_its_bearer_may_scrape_from_off_loopback(
    project: Project, store: Store,
) -> None:
    host = outside_address()
    if host is None:
        pytest.skip("this machine has no address but loopback to connect from")
    secret = project.root / "metrics.token"
    secret.write_text(TOKEN + "\n", encoding="utf-8")
    secret.chmod(0o600)
    config = with_token(project, project.configure(), MAILER_METRICS_TOKEN_FILE=str(secret))
    app = create_app(config, store=store)
    async with served(app, host) as url, client(url) as http:
        without = await http.get("/metrics")
        allowed = await http.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})

    assert (without.status_code, allowed.status_code) == (401, 200)


def test_a_metrics_token_file_others_may_read_is_refused(project: Project) -> None:
    project.configure()
    secret = project.root / "metrics.token"
    secret.write_text(TOKEN, encoding="utf-8")
    secret.chmod(0o644)

    with pytest.raises(ConfigError, match="chmod 600"):
        config_mod.load(project.config_path, env={"MAILER_METRICS_TOKEN_FILE": str(secret)})
    config = config_mod.load(project.config_path, env={"MAILER_METRICS_TOKEN": TOKEN})
    assert TOKEN not in repr(config)


# -- the sign-up's timing and connection ---------------------------------------------------------

STATES = ("new", "pending", "confirmed", "unsubscribed")
SAMPLES = 30
WARM_UP = 5
TOLERANCE_MS = 1.0


@contextlib.asynccontextmanager
async def mailer_serve(project: Project, log: Path, command: str = "serve"
                       ) -> AsyncIterator[str]:
    """`mailer serve` (or `run`) in its own process, as the probe met it; yields its URL.

    A client in the server's process would share its event loop (or its GIL), and the
    email sent after an answer would then delay the client reading the answer, which a
    client elsewhere never sees.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "MAILER_SECRET_KEY": KEY}
    env.pop("MAILER_CONFIG", None)
    with open_log(log) as output:  # a file, not a pipe nobody reads: it never blocks
        server = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mailer", "--config", str(project.config_path), command,
            "--port", str(port), cwd=project.root, env=env, stdout=output, stderr=output)
    url = f"http://127.0.0.1:{port}"
    try:
        async with client(url) as http:
            deadline = time.monotonic() + 30
            while True:
                try:
                    await http.get("/healthz")
                    break
                except httpx.TransportError:
                    assert server.returncode is None and time.monotonic() < deadline, \
                        f"mailer {command} did not start: {read_log(log)}"
                    await asyncio.sleep(0.05)
        yield url
    finally:
        server.send_signal(signal.SIGTERM)
        await asyncio.wait_for(server.wait(), 30)


def open_log(path: Path) -> BinaryIO:
    return path.open("wb")


def read_log(path: Path) -> str:
    return path.read_text(errors="replace")


Sent = Callable[[], int]  # how many emails reached the relay so far


def received_by(smtpd: RecordingServer) -> Sent:
    return lambda: len(smtpd.messages)


async def mails(sent: Sent, count: int) -> None:
    """Wait until `count` emails reached the relay."""
    deadline = time.monotonic() + 10
    while sent() < count:
        assert time.monotonic() < deadline, f"{sent()} of {count} emails arrived"
        await asyncio.sleep(0.002)


async def addresses_in_each_state(http: httpx.AsyncClient, store: Store, sent: Sent, tag: str,
                                  count: int) -> dict[str, list[str]]:
    """`count` addresses per state, each used once: a sign-up moves most of them on."""
    made = {state: [f"{state}-{tag}-{n}@example.com" for n in range(count)] for state in STATES}
    before = sent()
    for email in made["pending"]:  # signed up a moment ago: the confirmation email went out
        assert (await http.post("/subscribe/ml-issues", data={"email": email})).status_code == 200
    for email in made["confirmed"] + made["unsubscribed"]:
        await store.add_subscriber(email, newsletter="ml-issues", confirmed=True)
    for email in made["unsubscribed"]:
        sub = await storehelp.subscription_of(store, email, "ml-issues")
        assert sub is not None
        await store.unsubscribe_subscription(sub.id, now=sub.created_at)
    await mails(sent, before + count)
    return made


async def median_sign_up_ms(http: httpx.AsyncClient, store: Store, sent: Sent, tag: str
                            ) -> dict[str, float]:
    made = await addresses_in_each_state(http, store, sent, tag, WARM_UP + SAMPLES)
    took: dict[str, list[float]] = {state: [] for state in STATES}
    for n in range(WARM_UP + SAMPLES):
        # Interleaved, in a new order each round: a drift in the machine's speed (another
        # test run, a checkpoint of the database) falls on every state alike.
        order = STATES[n % 4:] + STATES[:n % 4]
        for state in order if n % 8 < 4 else reversed(order):
            expected = sent() + (state in ("new", "unsubscribed"))
            started = time.perf_counter()
            answer = await http.post("/subscribe/ml-issues", data={"email": made[state][n]})
            elapsed = (time.perf_counter() - started) * 1000
            assert answer.status_code == 200
            if n >= WARM_UP:
                took[state].append(elapsed)
            # The email goes out after the answer; it must not slow the next sample down.
            await mails(sent, expected)
    return {state: statistics.median(times) for state, times in took.items()}


@pytest.mark.slow
@pytest.mark.timing
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_sign_up_answers_take_as_long_for_new_pending_confirmed_and_unsubscribed_addresses(
    project: Project, store: Store, smtp_url_of: SmtpUrl, tmp_path: Path,
) -> None:
    attempts: list[dict[str, float]] = []
    # The relay on a thread of its own: in the client's event loop, its half of the SMTP
    # conversation that starts as an answer arrives would delay reading that answer.
    with ServerThread() as smtpd:
        project.configure(smtp_url=smtp_url_of(smtpd), subscribe_rate_per_minute=0)
        await measure_sign_ups(project, store, smtpd, tmp_path, attempts)
    spread = [max(m.values()) - min(m.values()) for m in attempts]
    assert min(spread) < TOLERANCE_MS, f"medians per state differ by more than 1 ms: {attempts}"


async def measure_sign_ups(project: Project, store: Store, smtpd: RecordingServer,
                           tmp_path: Path, attempts: list[dict[str, float]]) -> None:
    async with mailer_serve(project, tmp_path / "serve.log") as url, client(url) as http:
        # A noisy machine can spoil one measurement; a real difference shows in all three.
        for attempt in range(3):
            medians = await median_sign_up_ms(http, store, received_by(smtpd), f"a{attempt}")
            attempts.append(medians)
            shown = ", ".join(f"{state} {ms:.2f} ms" for state, ms in medians.items())
            print(f"median sign-up answer, attempt {attempt + 1}: {shown}")
            if max(medians.values()) - min(medians.values()) < TOLERANCE_MS:
                break


async def test_a_sign_up_answer_is_complete_and_closed_before_a_slow_relay_has_the_email(
    project: Project, store: Store, smtp_url_of: SmtpUrl,
) -> None:
    stall = 2.0
    async with RecordingServer(stall_rcpt={"ada@example.com": stall}) as smtpd:
        config = project.configure(smtp_url=smtp_url_of(smtpd), subscribe_rate_per_minute=0)
        app = create_app(config, store=store)
        async with served(app) as url:
            parts = urlsplit(url)
            assert parts.hostname is not None and parts.port is not None
            reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
            body = b"email=ada%40example.com"
            writer.write(b"POST /subscribe/ml-issues HTTP/1.1\r\nHost: news.example\r\n"
                         b"Connection: close\r\n"
                         b"Content-Type: application/x-www-form-urlencoded\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            started = time.monotonic()
            answer = await asyncio.wait_for(reader.read(), timeout=10)  # read() ends at EOF
            closed_after = time.monotonic() - started
            mails_when_closed = len(smtpd.messages)
            writer.close()
            await writer.wait_closed()
            await queue_of(app).join()

    assert answer.startswith(b"HTTP/1.1 200 ") and b"Check your inbox" in answer
    assert mails_when_closed == 0
    assert closed_after < stall / 2, f"the connection closed after {closed_after:.2f}s"
    assert [m.rcpt_tos for m in smtpd.messages] == [["ada@example.com"]]  # sent afterwards


async def test_the_daemon_sends_the_confirmation_email_after_its_answer(
    project: Project, store: Store, smtpd: RecordingServer, smtp_url_of: SmtpUrl,
    tmp_path: Path,
) -> None:
    project.configure(smtp_url=smtp_url_of(smtpd), subscribe_rate_per_minute=0)
    async with mailer_serve(project, tmp_path / "run.log", "run") as url, client(url) as http:
        answer = await http.post("/subscribe/ml-issues", data={"email": "ada@example.com"})
        await mails(received_by(smtpd), 1)

    assert answer.status_code == 200
    assert [m.rcpt_tos for m in smtpd.messages] == [["ada@example.com"]]
    sub = await storehelp.subscription_of(store, "ada@example.com", "ml-issues")
    assert sub is not None and sub.confirm_sent_at is not None and not sub.confirm_unsent


async def test_a_confirmation_email_still_waiting_at_shutdown_is_sent_on_the_next_sign_up(
    project: Project, store: Store, smtp_url_of: SmtpUrl,
) -> None:
    async with RecordingServer(stall_rcpt={"ada@example.com": 30.0}) as slow:
        app = create_app(project.configure(smtp_url=smtp_url_of(slow),
                                           subscribe_rate_per_minute=0), store=store)
        async with served(app) as url, client(url) as http:
            assert (await http.post("/subscribe/ml-issues",
                                    data={"email": "ada@example.com"})).status_code == 200
        # The server stopped while the relay still had not taken the email.
        assert slow.messages == []
    stopped = await storehelp.subscription_of(store, "ada@example.com", "ml-issues")
    assert stopped is not None and stopped.confirm_sent_at is None and not stopped.confirm_unsent

    async with RecordingServer() as smtpd:
        app = create_app(project.configure(smtp_url=smtp_url_of(smtpd),
                                           subscribe_rate_per_minute=0), store=store)
        async with served(app) as url, client(url) as http:
            await http.post("/subscribe/ml-issues", data={"email": "ada@example.com"})
            await queue_of(app).join()

    assert [m.rcpt_tos for m in smtpd.messages] == [["ada@example.com"]]
    sent = await storehelp.subscription_of(store, "ada@example.com", "ml-issues")
    assert sent is not None and sent.confirm_sent_at is not None and not sent.confirm_unsent


# -- old confirmation links ----------------------------------------------------------------------


async def confirm(http: httpx.AsyncClient, link: str) -> httpx.Response:
    """Open a confirmation link as a person does: the POST of its page, else (older
    versions, where GET confirmed) the GET."""
    path = urlsplit(link).path
    answer = await http.post(path)
    return await http.get(path) if answer.status_code == 405 else answer


def links_to(smtpd: RecordingServer, email: str) -> list[str]:
    texts = [m.parsed().get_body(preferencelist=("plain",)) for m in smtpd.messages
             if m.rcpt_tos == [email]]
    return [link for t in texts if t for link in CONFIRM_LINK.findall(t.get_content())]


@pytest.mark.parametrize("confirmed_first", [False, True], ids=["left-pending", "left-confirmed"])
async def test_a_confirmation_link_from_before_unsubscribing_does_not_confirm_the_next_sign_up(
    project: Project, store: Store, smtpd: RecordingServer, smtp_url_of: SmtpUrl,
    confirmed_first: bool,
) -> None:
    app = create_app(project.configure(smtp_url=smtp_url_of(smtpd), subscribe_rate_per_minute=0),
                     store=store)
    email = "ada@example.com"

    async def status() -> SubscriptionStatus | None:
        sub = await storehelp.subscription_of(store, email, "ml-issues")
        return sub.status if sub else None

    async with served(app) as url, client(url) as http:
        await http.post("/subscribe/ml-issues", data={"email": email})
        await queue_of(app).join()
        [old] = links_to(smtpd, email)
        if confirmed_first:
            assert (await confirm(http, old)).status_code == 200
        sub = await storehelp.subscription_of(store, email, "ml-issues")
        assert sub is not None
        left = await http.post(f"/unsubscribe/{tokens.unsubscribe_token(KEY, sub.id)}",
                               data={"List-Unsubscribe": "One-Click"})
        assert left.status_code == 200 and await status() == SubscriptionStatus.UNSUBSCRIBED

        await http.post("/subscribe/ml-issues", data={"email": email})
        await queue_of(app).join()
        [_, new] = links_to(smtpd, email)
        stale = await confirm(http, old)
        assert stale.status_code == 400 and "not valid any more" in stale.text
        assert await status() == SubscriptionStatus.PENDING

        assert (await confirm(http, new)).status_code == 200
        assert await status() == SubscriptionStatus.CONFIRMED
        assert (await confirm(http, old)).status_code == 400
        assert (await confirm(http, new)).status_code == 200  # twice is fine


async def test_a_sign_up_runs_the_same_statements_for_new_pending_confirmed_and_unsubscribed(
    project: Project, store: Store,
) -> None:
    # What the timing depends on, counted exactly: the same SQL, in the same order, whatever
    # the address's state (the wall times themselves: `MAILER_TEST_TIMING=1 scripts/test`).
    config = project.configure()
    newsletter = config.newsletter("ml-issues")
    now = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    await store.add_subscriber("pending@example.com", newsletter="ml-issues")
    await store.add_subscriber("confirmed@example.com", newsletter="ml-issues", confirmed=True)
    left = await store.add_subscriber("left@example.com", newsletter="ml-issues", confirmed=True)
    await store.unsubscribe_subscription(left.id, now=now)
    seen: list[str] = []

    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        seen.append(" ".join(statement.split()))

    event.listen(store.engine.sync_engine, "before_cursor_execute", record)
    try:
        statements = {}
        for state, email in [("new", "new@example.com"), ("pending", "pending@example.com"),
                             ("confirmed", "confirmed@example.com"),
                             ("unsubscribed", "left@example.com")]:
            seen.clear()
            await subscriptions.subscribe(config, store, newsletter, email, now=now)
            statements[state] = list(seen)
    finally:
        event.remove(store.engine.sync_engine, "before_cursor_execute", record)

    assert statements["new"], "no statement was seen"
    assert all(found == statements["new"] for found in statements.values()), statements
