"""The capture SMTP server (mailer.delivery.capture) and the fault-injecting test server."""

from __future__ import annotations

import asyncio
import mailbox
import os
import stat
import threading
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from mailer.delivery.capture import CaptureServer
from tests.smtpd import RecordingServer, ServerThread

RAW = (
    b"From: Ada <ada@example.org>\r\n"
    b"To: Bob <bob@example.org>\r\n"
    b"Subject: Issue 7\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"Gr\xc3\xbc\xc3\x9fe aus K\xc3\xb6ln.\r\n"
    b".a line that needs dot-stuffing on the wire\r\n"
    b"..and one with two dots\r\n"
    b"\r\n"
    b"-- \r\n"
    b"unsubscribe: https://example.org/u/abc\r\n"
)


async def send(
    server: CaptureServer | RecordingServer,
    message: bytes | EmailMessage = RAW,
    *,
    recipients: list[str] | None = None,
    **options: Any,
) -> Any:
    return await aiosmtplib.send(
        message,
        sender="ada@example.org",
        recipients=recipients or ["bob@example.org"],
        hostname=server.host,
        port=server.port,
        local_hostname="client.test",  # skip socket.getfqdn(), which can stall on broken DNS
        **options,
    )


def stored_files(outbox: Path) -> list[bytes]:
    return [path.read_bytes() for path in sorted((outbox / "new").iterdir())]


# -- CaptureServer ---------------------------------------------------------------------------


async def test_capture_stores_the_message_bytes_as_received_after_the_envelope(
    tmp_path: Path,
) -> None:
    outbox = tmp_path / "var" / "outbox"
    async with CaptureServer(outbox) as server:
        await send(server)

    assert (outbox.stat().st_mode & 0o777) == 0o700
    assert stored_files(outbox) == [
        b"Return-Path: <ada@example.org>\r\nDelivered-To: bob@example.org\r\n" + RAW
    ]


async def test_capture_writes_each_message_0600_in_0700_maildir_folders(tmp_path: Path) -> None:
    outbox = tmp_path / "var" / "outbox"
    old_umask = os.umask(0o022)  # the usual one: anything more private is capture's doing
    try:
        async with CaptureServer(outbox) as server:
            await send(server)
            await send(server)
    finally:
        os.umask(old_umask)

    modes = {p.relative_to(tmp_path).as_posix(): stat.S_IMODE(p.stat().st_mode)
             for p in (tmp_path / "var", outbox, *outbox.iterdir())}
    assert modes == {"var": 0o700, "var/outbox": 0o700, "var/outbox/tmp": 0o700,
                     "var/outbox/new": 0o700, "var/outbox/cur": 0o700}
    stored = sorted((outbox / "new").iterdir())
    assert [stat.S_IMODE(p.stat().st_mode) for p in stored] == [0o600, 0o600]
    assert list((outbox / "tmp").iterdir()) == []


async def test_captured_message_opens_with_mailbox_and_parses(tmp_path: Path) -> None:
    async with CaptureServer(tmp_path / "outbox") as server:
        await send(server)

    (stored,) = list(mailbox.Maildir(tmp_path / "outbox", create=False))
    parsed = message_from_bytes(stored.as_bytes(), policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    assert parsed["Subject"] == "Issue 7"
    assert parsed["Return-Path"] == "<ada@example.org>"
    assert parsed.get_content().startswith("Grüße aus Köln.\n.a line")
    # mailbox re-flattens with the platform's line ending; the byte-exact check is the test above.
    body = RAW.split(b"\r\n\r\n", 1)[1]
    assert parsed.get_payload(decode=True) == body.replace(b"\r\n", b"\n")


async def test_capture_records_every_envelope_recipient_including_bcc(tmp_path: Path) -> None:
    async with CaptureServer(tmp_path / "outbox") as server:
        await send(server, recipients=["bob@example.org", "hidden@example.org"])

    (stored,) = stored_files(tmp_path / "outbox")
    assert stored.startswith(
        b"Return-Path: <ada@example.org>\r\n"
        b"Delivered-To: bob@example.org\r\n"
        b"Delivered-To: hidden@example.org\r\n"
        b"From: Ada"
    )


async def test_capture_accepts_an_internationalised_recipient(tmp_path: Path) -> None:
    message = EmailMessage()
    message["From"] = "ada@example.org"
    message["To"] = "jörg@bücher.example"
    message["Subject"] = "Hallo"
    message.set_content("Hallo Jörg")

    async with CaptureServer(tmp_path / "outbox") as server:
        await send(server, message, recipients=["jörg@bücher.example"])

    (stored,) = stored_files(tmp_path / "outbox")
    assert "Delivered-To: jörg@bücher.example\r\n".encode() in stored


async def test_capture_listens_on_an_ephemeral_port_and_counts_stored_messages(
    tmp_path: Path,
) -> None:
    async with CaptureServer(tmp_path / "outbox") as server:
        assert server.host == "127.0.0.1"
        assert server.port > 0
        assert server.count == 0
        for _ in range(3):
            await send(server)
        assert server.count == 3

    assert len(stored_files(tmp_path / "outbox")) == 3


async def test_closing_capture_server_ends_idle_client_connections(tmp_path: Path) -> None:
    client = aiosmtplib.SMTP(local_hostname="client.test")
    async with asyncio.timeout(5), CaptureServer(tmp_path / "outbox") as server:
        await client.connect(hostname=server.host, port=server.port)
        await client.ehlo()

    with pytest.raises(aiosmtplib.SMTPServerDisconnected):
        await client.noop()
    client.close()


async def test_capture_port_is_free_again_after_closing(tmp_path: Path) -> None:
    async with CaptureServer(tmp_path / "outbox") as server:
        port = server.port
    async with CaptureServer(tmp_path / "outbox", port=port) as again:
        await send(again)
        assert again.count == 1


# -- tests/smtpd.py --------------------------------------------------------------------------


async def test_recording_server_records_envelope_and_data() -> None:
    async with RecordingServer() as server:
        await send(server, recipients=["bob@example.org", "eve@example.org"])

    (received,) = server.messages
    assert received.mail_from == "ada@example.org"
    assert received.rcpt_tos == ["bob@example.org", "eve@example.org"]
    assert received.data == RAW
    assert received.parsed()["Subject"] == "Issue 7"


async def test_fail_rcpt_gives_451_twice_then_accepts() -> None:
    twice = {"bob@example.org": ["451 4.3.0 try later"] * 2}
    async with RecordingServer(fail_rcpt=twice) as server:
        for _ in range(2):
            with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
                await send(server)
            assert refused.value.recipients[0].code == 451
        await send(server)

    assert [reply[:3] for _, reply in server.rcpt_attempts] == ["451", "451", "250"]
    assert len(server.messages) == 1


async def test_reject_rcpt_gives_550_every_time_and_spares_other_recipients() -> None:
    always = {"gone@example.org": "550 5.1.1 no such user"}
    async with RecordingServer(reject_rcpt=always) as server:
        for _ in range(2):
            with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
                await send(server, recipients=["gone@example.org"])
            assert refused.value.recipients[0].code == 550
        errors, _ = await send(server, recipients=["gone@example.org", "bob@example.org"])

    assert errors["gone@example.org"].code == 550
    assert [m.rcpt_tos for m in server.messages] == [["bob@example.org"]]


async def test_reply_on_connect_refuses_the_first_connections_with_421() -> None:
    async with RecordingServer(reply_on_connect=["421 4.3.2 busy"] * 2) as server:
        for _ in range(2):
            with pytest.raises(aiosmtplib.SMTPConnectResponseError) as refused:
                await send(server)
            assert refused.value.code == 421
        await send(server)

    assert server.connections == 3
    assert len(server.messages) == 1


async def test_drop_before_data_end_disconnects_and_stores_nothing() -> None:
    async with RecordingServer(drop_before_data_end={"bob@example.org"}) as server:
        with pytest.raises(aiosmtplib.SMTPServerDisconnected):
            await send(server)

    assert server.messages == []


async def test_drop_after_data_stores_the_nth_message_and_never_replies() -> None:
    async with RecordingServer(drop_after_data={2}) as server:
        await send(server)
        with pytest.raises(aiosmtplib.SMTPServerDisconnected):
            await send(server)
        await send(server)

    assert len(server.messages) == 3


async def test_stall_delays_the_data_reply_past_the_client_timeout() -> None:
    async with RecordingServer(stall_seconds=5, stall_for={"slow@example.org"}) as server:
        with pytest.raises(aiosmtplib.SMTPTimeoutError):
            await send(server, recipients=["slow@example.org"], timeout=0.2)
        await send(server)

    assert [m.rcpt_tos for m in server.messages] == [["slow@example.org"], ["bob@example.org"]]


async def test_data_reply_overrides_the_reply_and_refused_data_is_not_stored() -> None:
    async with RecordingServer(data_reply="552 5.3.4 message too big") as server:
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await send(server)

    assert refused.value.code == 552
    assert server.messages == []


def test_server_thread_serves_from_its_own_loop_while_the_test_thread_reads() -> None:
    with ServerThread(fail_rcpt={"bob@example.org": ["451 4.3.0 try later"]}) as server:

        def client() -> None:
            async def deliver() -> None:
                with pytest.raises(aiosmtplib.SMTPRecipientsRefused):
                    await send(server)
                await send(server)
                await send(server)

            asyncio.run(deliver())

        sender = threading.Thread(target=client)
        sender.start()
        received = server.wait_for_messages(2, timeout=10)
        sender.join(timeout=10)

    assert [m.data for m in received] == [RAW, RAW]
    with pytest.raises(TimeoutError):
        server.wait_for_messages(3, timeout=0.01)
