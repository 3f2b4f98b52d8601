"""BounceReceiver: returned mail by SMTP on a real socket, from a real aiosmtplib client."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiosmtplib
import pytest

from mailer.errors import TryLater
from mailer.returns.verp import verp_sender
from mailer.runners.bounce_receiver import BounceReceiver

BOUNCES = "bounces@news.example.org"
VERP = verp_sender(BOUNCES, "test-key", 42)
DSN = (Path(__file__).parent / "data" / "bounces" / "gmail-dsn-no-such-user.eml").read_bytes()

Got = list[tuple[bytes, list[str]]]

class Recorder:
    """The test's own consumer of returned mail: it keeps what it got, or fails as told."""

    def __init__(self) -> None:
        self.got: Got = []
        self.fail: BaseException | None = None

    async def __call__(self, raw: bytes, recipients: list[str]) -> None:
        if self.fail is not None:
            raise self.fail
        self.got.append((raw, recipients))

@pytest.fixture
def recorder() -> Recorder:
    return Recorder()

@pytest.fixture
async def receiver(recorder: Recorder) -> AsyncIterator[BounceReceiver]:
    async with BounceReceiver("127.0.0.1:0", bounce_address=BOUNCES, handle=recorder,
                              max_bytes=1024 * 1024) as server:
        yield server

Send = Callable[..., Awaitable[tuple[dict[str, aiosmtplib.SMTPResponse], str]]]

async def send(server: BounceReceiver, raw: bytes, recipients: list[str],
               sender: str = "") -> tuple[dict[str, aiosmtplib.SMTPResponse], str]:
    # The client object, not aiosmtplib.send, which refuses the null sender of a DSN.
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=server.port, timeout=30) as client:
        return await client.sendmail(sender, recipients, raw)

async def test_a_dsn_from_the_null_sender_to_a_verp_address_is_handed_over(
        receiver: BounceReceiver, recorder: Recorder) -> None:
    assert receiver.port != 0
    _, reply = await send(receiver, DSN, [VERP])
    assert reply.startswith("2.0.0")
    assert len(recorder.got) == 1
    raw, recipients = recorder.got[0]
    assert recipients == [VERP]
    # The bytes as sent (aiosmtplib sends CRLF lines), un-dot-stuffed.
    assert raw.replace(b"\r\n", b"\n") == DSN.replace(b"\r\n", b"\n")

async def test_the_bare_bounce_address_is_taken_with_its_domain_in_any_case(
        receiver: BounceReceiver, recorder: Recorder) -> None:
    await send(receiver, DSN, ["bounces@NEWS.Example.ORG"])
    assert [r for _, r in recorder.got] == [["bounces@NEWS.Example.ORG"]]

async def test_mail_for_anyone_else_is_refused_as_relaying(
        receiver: BounceReceiver, recorder: Recorder) -> None:
    for other in ("someone@other.example", "bounces@other.example",
                  "bounces+zz@news.example.org", "news@news.example.org"):
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
            await send(receiver, DSN, [other], sender="spammer@other.example")
        [error] = refused.value.recipients
        assert (error.code, error.message) == (550, "5.7.1 relaying denied")
    assert recorder.got == []

async def test_one_refused_recipient_leaves_the_others_handed_over(
        receiver: BounceReceiver, recorder: Recorder) -> None:
    refused, _ = await send(receiver, DSN, ["someone@other.example", VERP])
    assert refused["someone@other.example"].code == 550
    assert [r for _, r in recorder.got] == [[VERP]]

async def test_a_message_over_the_size_limit_gets_552_and_is_not_handed_over(
        recorder: Recorder) -> None:
    big = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * (20 * 1024 * 1024 // 1000)
    async with BounceReceiver("127.0.0.1:0", bounce_address=BOUNCES, handle=recorder) as server:
        assert len(big) > 10 * 1024 * 1024  # the default limit
        # Declared with SIZE (RFC 1870), as aiosmtplib and most MTAs do: refused at MAIL.
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as declared:
            await send(server, big, [VERP])
        assert declared.value.code == 552
        # Not declared: the whole DATA is read, then refused.
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=server.port,
                                   timeout=60) as client:
            await client.mail("")
            await client.rcpt(VERP)
            with pytest.raises(aiosmtplib.SMTPDataError) as too_big:
                await client.data(big)
    assert too_big.value.code == 552
    assert recorder.got == []


@pytest.mark.parametrize("error", [TryLater("database away"), ConnectionRefusedError(111, "x")])
async def test_a_temporary_failure_of_the_handle_gets_451_so_the_mta_keeps_it(
        receiver: BounceReceiver, recorder: Recorder, error: Exception) -> None:
    recorder.fail = error
    with pytest.raises(aiosmtplib.SMTPDataError) as later:
        await send(receiver, DSN, [VERP])
    assert (later.value.code, later.value.message) == (451, "4.3.0 try again later")

async def test_a_message_the_handle_cannot_read_is_accepted_and_logged_no_backscatter(
        receiver: BounceReceiver, recorder: Recorder, caplog: pytest.LogCaptureFixture) -> None:
    recorder.fail = ValueError("not a bounce at all")
    with caplog.at_level(logging.INFO, logger="mailer.bounces"):
        _, reply = await send(receiver, b"Subject: hi\r\n\r\nhello\r\n", [VERP])
    assert reply.startswith("2.0.0")
    [line] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert line.name == "mailer.bounces" and line.exc_info is not None
    assert getattr(line, "recipients") == [VERP]  # noqa: B009 -- a field given by extra=

async def test_stopping_ends_open_connections_and_frees_the_port(recorder: Recorder) -> None:
    async with BounceReceiver("127.0.0.1:0", bounce_address=BOUNCES, handle=recorder) as server:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=server.port, timeout=10)
        await client.connect()
        await client.ehlo()
    with pytest.raises(aiosmtplib.SMTPServerDisconnected):
        await client.noop()
    with pytest.raises(OSError):
        await aiosmtplib.SMTP(hostname="127.0.0.1", port=server.port, timeout=5).connect()

def test_a_listen_address_that_is_not_host_port_is_refused() -> None:
    async def nothing(raw: bytes, recipients: list[str]) -> None: ...

    with pytest.raises(ValueError, match="host:port"):
        BounceReceiver("2526", bounce_address=BOUNCES, handle=nothing)
