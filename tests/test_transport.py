"""SmtpTransport against real aiosmtpd servers: STARTTLS, implicit TLS, AUTH, reply classes."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from mailer.delivery.replies import MalformedReply, Reply, ReplyParser, first_refusal
from mailer.delivery.targets import parse_smtp_url
from mailer.delivery.transport import SmtpTransport
from mailer.delivery.wire import classify, wire_form
from mailer.errors import PermanentFailure, RelayUnavailable, TemporaryFailure
from tests.smtpd import RecordingServer

MESSAGE = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: hi\r\n\r\nHello\r\n"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    yield cert, key


class _Inbox:
    """Offers PIPELINING, so the TLS tests take the pipelined path (over TLS, the reply
    reader takes the TLS transport's reads over)."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.messages.append(envelope.original_content or b"")
        return "250 OK"


def _authenticator(server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                   data: Any) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"author", b"s3cret")
    return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd sends the 535


@asynccontextmanager
async def smtp_server(certificate: tuple[Path, Path], *, implicit_tls: bool
                      ) -> AsyncIterator[tuple[int, _Inbox]]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*map(str, certificate))
    inbox = _Inbox()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(inbox, hostname="tls.test", authenticator=_authenticator,
                     # aiosmtpd does not count implicit TLS as TLS for AUTH; it is.
                     auth_require_tls=not implicit_tls, require_starttls=not implicit_tls,
                     tls_context=None if implicit_tls else context, loop=loop),
        "127.0.0.1", 0, ssl=context if implicit_tls else None,
    )
    try:
        yield server.sockets[0].getsockname()[1], inbox
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("implicit_tls", [False, True], ids=["starttls", "smtps"])
async def test_the_transport_logs_in_over_tls_and_delivers(
    certificate: tuple[Path, Path], implicit_tls: bool,
) -> None:
    async with smtp_server(certificate, implicit_tls=implicit_tls) as (port, inbox):
        url = (f"smtps://author@127.0.0.1:{port}?verify=false" if implicit_tls
               else f"smtp://author@127.0.0.1:{port}?starttls=true&verify=false")
        transport = SmtpTransport(parse_smtp_url(url, password="s3cret"))
        try:
            code, _ = await transport.send("a@example.com", "b@example.com", MESSAGE)
            # The same connection carries the next message.
            await transport.send("a@example.com", "c@example.com", MESSAGE)
        finally:
            await transport.aclose()
    assert code == 250
    assert len(inbox.messages) == 2 and inbox.messages[0].endswith(b"Hello\r\n")


async def test_a_wrong_password_is_the_relays_failure_and_nothing_is_sent(
    certificate: tuple[Path, Path],
) -> None:
    async with smtp_server(certificate, implicit_tls=False) as (port, inbox):
        url = f"smtp://author@127.0.0.1:{port}?starttls=true&verify=false"
        transport = SmtpTransport(parse_smtp_url(url, password="wrong"))
        with pytest.raises(RelayUnavailable) as failure:
            await transport.send("a@example.com", "b@example.com", MESSAGE)
        await transport.aclose()
    # Named by host and port, with the server's words; never the password.
    assert failure.value.relay == f"127.0.0.1:{port}"
    assert failure.value.reason.startswith("login refused: 535")
    assert "wrong" not in str(failure.value)
    assert inbox.messages == []


async def test_an_untrusted_certificate_is_refused_unless_verification_is_turned_off(
    certificate: tuple[Path, Path],
) -> None:
    async with smtp_server(certificate, implicit_tls=True) as (port, inbox):
        transport = SmtpTransport(parse_smtp_url(f"smtps://author@127.0.0.1:{port}",
                                                 password="s3cret"))
        with pytest.raises(RelayUnavailable, match="TLS failed: CERTIFICATE_VERIFY_FAILED"):
            await transport.send("a@example.com", "b@example.com", MESSAGE)
        await transport.aclose()
    assert inbox.messages == []


@pytest.mark.parametrize(("code", "kind"), [
    (450, TemporaryFailure), (451, TemporaryFailure),
    (452, TemporaryFailure), (552, TemporaryFailure),  # RFC 5321 §4.5.3.1.10
    (550, PermanentFailure), (551, PermanentFailure), (553, PermanentFailure),
    (554, PermanentFailure),
])
def test_reply_codes_are_classified_per_rfc_5321(code: int, kind: type[Exception]) -> None:
    error = classify(code, "reply text", "b@example.com")
    assert type(error) is kind
    assert (error.code, error.recipient) == (code, "b@example.com")


def test_smtp_urls_map_to_ports_and_tls_modes() -> None:
    assert parse_smtp_url("smtps://mx.example.com").port == 465
    starttls = parse_smtp_url("smtp://me%40example.com@mx.example.com?starttls=true")
    assert (starttls.port, starttls.start_tls, starttls.username) == (587, True, "me@example.com")
    assert parse_smtp_url("smtp://127.0.0.1:2525").port == 2525
    # Pipelining where offered, unless turned off (to compare, or for a relay that lies).
    assert parse_smtp_url("smtp://mx.example.com").pipelining is True
    assert parse_smtp_url("smtp://mx.example.com?pipelining=off").pipelining is False


async def test_a_message_with_bare_newlines_and_leading_dots_arrives_intact() -> None:
    raw = b"From: a@example.com\nSubject: dots\n\n.hidden\n..two\n.\nlast line"
    async with RecordingServer() as server:
        transport = SmtpTransport(parse_smtp_url(f"smtp://127.0.0.1:{server.port}"))
        try:
            await transport.send("a@example.com", "b@example.com", raw)
        finally:
            await transport.aclose()
    assert server.messages[0].data == raw.replace(b"\n", b"\r\n") + b"\r\n"
    assert wire_form(raw).count(b"\r\n..") == 3  # stuffed on the wire, un-stuffed on arrival


@pytest.mark.parametrize("sender, recipient", [
    ("news@example.com", "o'brien+list@xn--bcher-kva.example"),  # sent as it is
    ("news@example.com", '"john doe"@example.com'),  # needs quoting: aiosmtplib's rcpt()
    ("news@[127.0.0.1]", "b@example.com"),  # an address literal: aiosmtplib's mail()
])
@pytest.mark.parametrize("starttls", ["", "?starttls=false"])  # EHLO at connect, or not
async def test_envelope_addresses_arrive_as_the_server_must_see_them(
        sender: str, recipient: str, starttls: str) -> None:
    async with RecordingServer() as server:
        transport = SmtpTransport(parse_smtp_url(f"smtp://127.0.0.1:{server.port}{starttls}"))
        try:
            for _ in range(2):  # the second transaction on the same connection
                await transport.send(sender, recipient, b"Subject: x\r\n\r\nbody\r\n")
        finally:
            await transport.aclose()
    assert [(m.mail_from, m.rcpt_tos) for m in server.messages] == [(sender, [recipient])] * 2


# -- PIPELINING (RFC 2920): replies read in order, however the reads split them --------------

REPLIES = (b"250 2.1.0 Ok\r\n250-2.1.5 Ok\r\n250 more\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
           b"250\r\n")


def _parsed(*reads: bytes) -> list[Reply]:
    parser, got = ReplyParser(), []
    for data in reads:
        parser.feed(data)
        while (reply := parser.next_reply()) is not None:
            got.append(reply)
    return got


def test_pipelined_replies_come_out_in_order_wherever_the_reads_split_them() -> None:
    expected = [Reply(250, "2.1.0 Ok"), Reply(250, "2.1.5 Ok\nmore"),
                Reply(354, "End data with <CR><LF>.<CR><LF>"), Reply(250, "")]
    assert _parsed(REPLIES) == expected
    for cut in range(len(REPLIES)):
        for second in range(cut, len(REPLIES)):
            assert _parsed(REPLIES[:cut], REPLIES[cut:second], REPLIES[second:]) == expected


@pytest.mark.parametrize("stream", [b"hello\r\n", b"25x Ok\r\n", b"2" * 9000])
def test_what_is_not_an_smtp_reply_is_refused(stream: bytes) -> None:
    with pytest.raises(MalformedReply):
        ReplyParser().feed(stream)


@pytest.mark.parametrize(("codes", "refused"), [
    ((250, 250, 354), None), ((250, 251, 354), None),
    ((250, 550, 554), 550), ((451, 503, 503), 451), ((250, 250, 452), 452), ((250, 421), 421),
])
def test_the_first_refusal_of_a_flight_is_the_one_that_counts(
        codes: tuple[int, ...], refused: int | None) -> None:
    found = first_refusal([Reply(code, "") for code in codes])
    assert (found.code if found else None) == refused


async def test_a_421_to_a_pipelined_rcpt_is_the_relays_trouble_and_nothing_is_sent() -> None:
    closing = "421 4.3.2 shutting down"
    async with RecordingServer(reject_rcpt={"b@example.com": closing}, pipelining=True) as server:
        transport = SmtpTransport(parse_smtp_url(f"smtp://127.0.0.1:{server.port}"))
        try:
            with pytest.raises(RelayUnavailable, match="closing: 421 4.3.2 shutting down"):
                await transport.send("a@example.com", "b@example.com", MESSAGE)
            # A new connection carries the next one; the refused one never arrived.
            await transport.send("a@example.com", "c@example.com", MESSAGE)
        finally:
            await transport.aclose()
    assert [m.rcpt_tos for m in server.messages] == [["c@example.com"]]
    assert server.connections == 2
