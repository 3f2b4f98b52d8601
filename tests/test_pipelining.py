"""PIPELINING (RFC 2920) through `mailer send-now`, against aiosmtpd and a real Postfix: the
envelope leaves in one write where it is offered, with the body of the message before it when
that one was waiting for it (one round trip a message), and every outcome stays exactly once:
a 451 on a pipelined RCPT is delivered on retry, once; a 550 fails with the server's words and
is never resent; a cut mid-flight is retried; a cut after the final dot is resent once, on
record as a possible duplicate, and the envelope that went with that body is retried cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import smtplib
import socketserver
import subprocess
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mailer.states import DeliveryStatus
from tests.conftest import Project
from tests.servers.postfix import PostfixInstance, postfix_available, private_postfix
from tests.smtpd import ServerThread
from tests.test_cli import add_confirmed, mailer
from tests.test_real_servers import _need
from tests.test_relays import LOCAL, received, the_send
from tests.tools import summary_of

READERS = [f"reader{i:02}@example.com" for i in range(8)]
GREY, GONE = READERS[2], READERS[5]
GREYLISTED = "451 4.7.1 greylisted, try again later"
BODY_THEN_ENVELOPE = b"\r\n.\r\nMAIL FROM:"  # a body's final dot, then the next MAIL
NO_SUCH_USER = "550 5.1.1 no such user"
KINDS = ["aiosmtpd", pytest.param("postfix", marks=pytest.mark.slow)]

# These are about the wire: one database is enough (the store's rules run on both elsewhere).
pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


class Proxy:
    """A TCP relay in its own thread between mailer and a server: keeps each read of what the
    client sent, and cuts the connection right after the `cut_flight`-th envelope written
    on its own (a read starting with MAIL FROM) went through, or right after the
    `cut_after_dot`-th final dot, swallowing the server's reply."""

    def __init__(self, to_port: int, *, cut_flight: int = 0, cut_after_dot: int = 0) -> None:
        self.to_port, self.cut_flight, self.cut_after_dot = to_port, cut_flight, cut_after_dot
        self.chunks: list[bytes] = []
        self.cut_chunk: bytes | None = None  # the flight cut_flight cut
        self.port = 0
        self._flights = self._dots = 0
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    def __enter__(self) -> Proxy:
        self._thread.start()
        assert self._ready.wait(10), "proxy did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def flights(self) -> list[bytes]:
        """The client's reads that hold a MAIL FROM."""
        return [chunk for chunk in list(self.chunks) if b"MAIL FROM:" in chunk]

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        live: set[asyncio.Task[None]] = set()

        def track(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.ensure_future(self._relay(reader, writer))
            live.add(task)
            task.add_done_callback(live.discard)

        server = await asyncio.start_server(track, LOCAL, 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop.wait()
        server.close()
        for task in list(live):
            task.cancel()
        await asyncio.gather(*live, return_exceptions=True)

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter,
                     ) -> None:
        server_r, server_w = await asyncio.open_connection(LOCAL, self.to_port)
        swallow = False

        async def upstream() -> None:
            nonlocal swallow
            tail = b""
            while chunk := await client_r.read(65536):
                self.chunks.append(chunk)
                server_w.write(chunk)
                # Only a flight that is an envelope alone is cut "mid-flight": one that
                # carries the previous body (pipelining across messages) would make that
                # message's cut one after its final dot, which is another test's case.
                if chunk.startswith(b"MAIL FROM:"):
                    self._flights += 1
                    if self._flights == self.cut_flight:
                        self.cut_chunk = chunk
                        return  # the server has the flight; its replies never come back
                # A final dot ends a read, or is followed by the next envelope in it.
                before = self._dots
                self._dots += (tail + chunk).count(b"\r\n.\r\n")
                tail = (tail + chunk)[-4:]
                swallow = swallow or before < self.cut_after_dot <= self._dots

        async def downstream() -> None:
            while (chunk := await server_r.read(65536)) and not swallow:
                client_w.write(chunk)

        pumps = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            for writer in (client_w, server_w):
                writer.close()  # what was written still leaves first
                with contextlib.suppress(OSError):
                    await writer.wait_closed()


class Policy(socketserver.ThreadingTCPServer):
    """A Postfix policy service (SMTPD_POLICY_README): each recipient's next verdict from
    `once`, then `always`, else DUNNO; `asked` counts the RCPTs Postfix checked."""

    daemon_threads = True

    def __init__(self, *, once: dict[str, list[str]], always: dict[str, str]) -> None:
        super().__init__((LOCAL, 0), _PolicyRequest)
        self.once = {address: deque(verdicts) for address, verdicts in once.items()}
        self.always = always
        self.asked: Counter[str] = Counter()

    def verdict(self, recipient: str) -> str:
        self.asked[recipient] += 1
        if self.once.get(recipient):
            return self.once[recipient].popleft()
        return self.always.get(recipient, "DUNNO")


class _PolicyRequest(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        policy = self.server
        assert isinstance(policy, Policy)
        attributes: dict[str, str] = {}
        for line in self.rfile:  # name=value lines; an empty line ends a request
            if line.strip():
                name, _, value = line.decode().strip().partition("=")
                attributes[name] = value
                continue
            action = policy.verdict(attributes.get("recipient", ""))
            self.wfile.write(f"action={action}\n\n".encode())
            attributes = {}


@dataclass
class Relay:
    """Where mailer sends, and what the refusing server and the final one saw."""

    url: str
    proxy: Proxy
    arrived: Callable[[int], Counter[str]]  # copies per reader, once `n` messages are in
    asked: Callable[[], Counter[str]]  # RCPTs per address, as the refusing server saw them


@contextlib.contextmanager
def relay(kind: str, tmp_path: Path, *, offered: bool = True, cut_flight: int = 0,
          cut_after_dot: int = 0, query: str = "") -> Iterator[Relay]:
    """mailer → Proxy → aiosmtpd, or → Postfix → aiosmtpd; GREY greylisted once, GONE
    refused. aiosmtpd cuts with its own faults, Postfix through the proxy."""
    refusals: dict[str, Any] = {"fail_rcpt": {GREY: [GREYLISTED]},
                                "reject_rcpt": {GONE: NO_SUCH_USER}}
    with contextlib.ExitStack() as stack:
        postfix: PostfixInstance | None = None
        if kind == "aiosmtpd":
            faults = {"drop_before_data_end": {cut_flight} if cut_flight else False,
                      "drop_after_data": {cut_after_dot} if cut_after_dot else False}
            thread = ServerThread(**refusals, **faults, pipelining=offered)
            server = stack.enter_context(thread)
            proxy = stack.enter_context(Proxy(server.port))

            def asked() -> Counter[str]:
                return Counter(address for address, _ in list(server.rcpt_attempts))
        else:
            _need(postfix_available())
            policy = Policy(once={GREY: [GREYLISTED]}, always={GONE: NO_SUCH_USER,
                                                               "probe@example.com": "550 no"})
            threading.Thread(target=policy.serve_forever, daemon=True).start()
            stack.callback(policy.server_close)
            stack.callback(policy.shutdown)
            server = stack.enter_context(ServerThread())
            postfix = stack.enter_context(private_postfix(tmp_path, relayhost_port=server.port))
            with_policy(postfix.config, postfix.port, policy.server_address[1])
            proxy = stack.enter_context(Proxy(postfix.port, cut_flight=cut_flight,
                                              cut_after_dot=cut_after_dot))
            asked = policy.asked.copy

        def arrived(n: int) -> Counter[str]:
            # aiosmtpd records a message before its 250, so once send-now has returned all
            # are there; Postfix forwards them after: a second copy would still be queued.
            server.wait_for_messages(n, timeout=30)
            deadline = time.monotonic() + 30
            while postfix is not None and not postfix.queue_is_empty():
                assert time.monotonic() < deadline, postfix.log_text()
                time.sleep(0.1)
            return received(server)

        yield Relay(f"smtp://{LOCAL}:{proxy.port}{query}", proxy, arrived, asked)


def with_policy(config: Path, port: int, policy_port: int) -> None:
    """Make the private Postfix ask the policy service about each RCPT, and wait until it
    does (a reload lets each old smtpd finish its session first)."""
    postconf = ["/usr/sbin/postconf", "-c", str(config), "-e",
                f"smtpd_recipient_restrictions = check_policy_service inet:{LOCAL}:{policy_port}"]
    subprocess.run(postconf, check=True, capture_output=True)
    past = time.time() - 5  # Postfix waits for a config file younger than a second
    os.utime(config / "main.cf", (past, past))
    subprocess.run(["/usr/sbin/postfix", "-c", str(config), "reload"], check=True,
                   capture_output=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, smtplib.SMTPException), \
                smtplib.SMTP(LOCAL, port, timeout=5) as probe:
            probe.ehlo()
            probe.mail("a@example.com")
            if probe.rcpt("probe@example.com")[0] == 550:
                return
        time.sleep(0.2)
    raise AssertionError("Postfix never asked the policy service")


def send_now(project: Project, url: str, *,
             concurrency: int = 3) -> subprocess.CompletedProcess[str]:
    project.configure(smtp_url=url, retry_base_seconds=1, concurrency=concurrency)
    add_confirmed(project, *READERS)
    return mailer(project, "send-now", "ml-issues", "--yes")


@pytest.mark.parametrize("kind", KINDS)
def test_where_pipelining_is_offered_mail_rcpt_and_data_leave_in_one_write(
        project: Project, tmp_path: Path, kind: str) -> None:
    with relay(kind, tmp_path) as via:
        result = send_now(project, via.url)
        got = via.arrived(len(READERS) - 1)
    assert result.returncode == 1, result.stdout + result.stderr  # GONE failed
    flights = via.proxy.flights()
    assert len(flights) == len(READERS) + 1  # GREY's retry
    assert all(f.count(b"MAIL FROM:") == 1 and f.count(b"\r\nRCPT TO:") == 1
               and f.endswith(b"\r\nDATA\r\n") for f in flights), flights
    # Each write is an envelope alone, or the body of the message before it then one.
    assert all(f.startswith(b"MAIL FROM:") or BODY_THEN_ENVELOPE in f for f in flights)
    assert got == Counter(r for r in READERS if r != GONE)


def chained(flights: list[bytes], reader: str) -> bool:
    """Whether `reader`'s envelope left in one write after the previous message's body."""
    return any(BODY_THEN_ENVELOPE in f and f"<{reader}>".encode() in f for f in flights)


@pytest.mark.parametrize("kind", KINDS)
def test_with_recipients_queued_each_body_leaves_with_the_next_envelope(
        project: Project, tmp_path: Path, kind: str) -> None:
    with relay(kind, tmp_path) as via:
        result = send_now(project, via.url, concurrency=1)
        got = via.arrived(len(READERS) - 1)
    assert result.returncode == 1, result.stdout + result.stderr
    flights = via.proxy.flights()
    assert len(flights) == len(READERS) + 1  # GREY's retry
    # One connection, all queued at once: after the first, each message whose previous
    # one was accepted went in that one's body's write; after a refusal (GREY's 451, GONE's
    # 550) an RSET waits for its reply and the next envelope leaves alone.
    after_refusal = {READERS[READERS.index(GREY) + 1], READERS[READERS.index(GONE) + 1]}
    assert [r for r in READERS if chained(flights, r)] == \
        [r for r in READERS[1:] if r not in after_refusal]
    assert got == Counter(r for r in READERS if r != GONE)


@pytest.mark.parametrize("offered, query", [(False, ""), (True, "?pipelining=off")],
                         ids=["not offered", "turned off"])
def test_without_pipelining_each_command_waits_for_its_reply(
        project: Project, tmp_path: Path, offered: bool, query: str) -> None:
    with relay("aiosmtpd", tmp_path, offered=offered, query=query) as via:
        result = send_now(project, via.url)
        got = via.arrived(len(READERS) - 1)
    assert result.returncode == 1, result.stdout + result.stderr
    flights = via.proxy.flights()
    assert len(flights) == len(READERS) + 1
    assert all(f.startswith(b"MAIL FROM:") and f.endswith(b">\r\n") for f in flights), flights
    assert got == Counter(r for r in READERS if r != GONE)


@pytest.mark.parametrize("concurrency", [3, 1])
@pytest.mark.parametrize("kind", KINDS)
def test_pipelined_refusals_keep_exactly_once(project: Project, tmp_path: Path,
                                              kind: str, concurrency: int) -> None:
    with relay(kind, tmp_path) as via:
        result = send_now(project, via.url, concurrency=concurrency)
        got = via.arrived(len(READERS) - 1)
        asked = via.asked()
    assert result.returncode == 1, result.stdout + result.stderr
    if concurrency == 1:
        # The refused RCPTs came in a write behind the body of the message before them.
        flights = via.proxy.flights()
        assert chained(flights, GREY) and chained(flights, GONE), flights
    # Greylisted once, delivered on the retry, once; the refused one never resent.
    assert got == Counter(r for r in READERS if r != GONE)
    assert (asked[GREY], asked[GONE]) == (2, 1)
    rows = {row.email: row for row in the_send(project)[1]}
    assert rows[GREY].status == DeliveryStatus.SENT
    assert all(rows[r].status == DeliveryStatus.SENT for r in READERS if r != GONE)
    assert not any(row.possible_duplicate for row in rows.values())
    gone = rows[GONE]
    assert (gone.status, gone.smtp_code) == (DeliveryStatus.FAILED, 550)
    assert "550 5.1.1" in (gone.smtp_reply or "") and "no such user" in (gone.smtp_reply or "")
    assert "no such user" in result.stdout
    summary = summary_of(result.stdout)
    assert (summary["sent"], summary["failed"]) == (len(READERS) - 1, 1)


@pytest.mark.parametrize("kind", KINDS)
def test_a_cut_mid_flight_is_retried_and_delivered_once(project: Project, tmp_path: Path,
                                                        kind: str) -> None:
    with relay(kind, tmp_path, cut_flight=2) as via:
        result = send_now(project, via.url)
        got = via.arrived(len(READERS) - 1)
    assert result.returncode == 1, result.stdout + result.stderr
    assert got == Counter(r for r in READERS if r != GONE)
    flights = via.proxy.flights()
    # GREY's retry and the cut one's; one retry for both where the proxy cut GREY's first
    # try (Postfix had asked the policy service, which lets GREY through the next time).
    cut = via.proxy.cut_chunk
    grey_cut = kind == "postfix" and cut is not None and f"<{GREY}>".encode() in cut
    assert len(flights) == len(READERS) + (1 if grey_cut else 2)
    rows = the_send(project)[1]
    assert not any(row.possible_duplicate for row in rows)
    assert summary_of(result.stdout)["possible duplicates"] == 0


@pytest.mark.parametrize("kind", KINDS)
def test_a_cut_after_the_final_dot_is_resent_once_as_a_possible_duplicate(
        project: Project, tmp_path: Path, kind: str) -> None:
    with relay(kind, tmp_path, cut_after_dot=3) as via:
        # One connection with all queued: the cut body went with the next envelope.
        result = send_now(project, via.url, concurrency=1)
        got = via.arrived(len(READERS))
    assert result.returncode == 1, result.stdout + result.stderr
    flights = via.proxy.flights()
    [twice] = [reader for reader, copies in got.items() if copies == 2]
    behind = READERS[READERS.index(twice) + 1]
    assert chained(flights, behind), flights
    # GREY's retry, the resend, and the clean retry of the envelope that went with the body.
    assert len(flights) == len(READERS) + 3
    assert got == Counter(r for r in READERS if r != GONE) + Counter([twice])
    rows = {row.email: row for row in the_send(project)[1]}
    assert [e for e, row in rows.items() if row.possible_duplicate] == [twice]
    assert rows[twice].status == DeliveryStatus.SENT
    assert (rows[behind].status, rows[behind].attempts) == (DeliveryStatus.SENT, 2)
    assert summary_of(result.stdout)["possible duplicates"] == 1
