"""MailboxPoller: returned mail fetched from a real Dovecot over IMAPS and plain IMAP."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailer.errors import ConfigError
from mailer.runners.mailbox_poller import MailboxPoller, MailboxUrl, move_message, quoted
from tests.servers.dovecot import DovecotInstance, dovecot_available, private_dovecot

USER, PASSWORD = "bounces", "s3cret"


def returned(n: int) -> bytes:
    return (f"From: MAILER-DAEMON@mx.example.net\r\nTo: bounces@news.example.org\r\n"
            f"Subject: Undelivered Mail {n}\r\nMessage-ID: <r{n}@mx.example.net>\r\n\r\n"
            f"returned message {n}\r\n").encode()


def _need_dovecot() -> None:
    reason = dovecot_available()
    if reason is None:
        return
    # As tests/test_real_servers.py: a missing server skips unless the run demands the tools.
    if os.environ.get("MAILER_TEST_REQUIRE_TOOLS", "") not in ("", "0") and os.geteuid() == 0:
        pytest.fail(f"MAILER_TEST_REQUIRE_TOOLS=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(params=["imaps", "imap"])
def dovecot(request: pytest.FixtureRequest, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[DovecotInstance]:
    _need_dovecot()
    tls = request.param == "imaps"
    with private_dovecot(tmp_path, user=USER, password=PASSWORD, tls=tls) as server:
        if server.cafile is not None:
            # The poller trusts the system's store, which this variable replaces.
            monkeypatch.setenv("SSL_CERT_FILE", str(server.cafile))
        yield server


def url_of(server: DovecotInstance, folder: str = "INBOX") -> str:
    scheme = "imap" if server.cafile is None else "imaps"
    return f"{scheme}://{USER}@127.0.0.1:{server.port}/{folder}"


class Recorder:
    """The test's own consumer of returned mail: keeps each message, fails on a marker."""

    def __init__(self, fail_on: bytes | None = None) -> None:
        self.got: list[bytes] = []
        self.fail_on = fail_on

    async def __call__(self, raw: bytes) -> None:
        if self.fail_on is not None and self.fail_on in raw:
            raise RuntimeError("cannot apply this one")
        self.got.append(raw)


def subjects(messages: list[bytes]) -> list[str]:
    return sorted(m.split(b"Subject: ")[1].split(b"\r\n")[0].decode() for m in messages)


async def test_each_message_is_handed_over_and_moved_to_processed(
        dovecot: DovecotInstance) -> None:
    dovecot.append("INBOX", returned(1))
    dovecot.append("INBOX", returned(2))
    recorder = Recorder()
    poller = MailboxPoller(url_of(dovecot), password=PASSWORD, handle=recorder)
    assert await poller.poll_once() == 2
    assert subjects(recorder.got) == ["Undelivered Mail 1", "Undelivered Mail 2"]
    assert b"returned message 1" in recorder.got[0] + recorder.got[1]
    assert dovecot.messages("INBOX") == []
    assert subjects(dovecot.messages("Processed")) == ["Undelivered Mail 1", "Undelivered Mail 2"]
    assert await poller.poll_once() == 0  # nothing left: nothing handed over twice
    assert len(recorder.got) == 2


async def test_a_message_whose_handling_fails_stays_for_the_next_poll(
        dovecot: DovecotInstance, caplog: pytest.LogCaptureFixture) -> None:
    dovecot.append("INBOX", returned(1))
    dovecot.append("INBOX", returned(2))
    recorder = Recorder(fail_on=b"Undelivered Mail 2")
    poller = MailboxPoller(url_of(dovecot), password=PASSWORD, handle=recorder)
    with caplog.at_level(logging.WARNING, logger="mailer.bounces"):
        assert await poller.poll_once() == 1
    assert subjects(dovecot.messages("INBOX")) == ["Undelivered Mail 2"]
    assert subjects(dovecot.messages("Processed")) == ["Undelivered Mail 1"]
    assert any("not applied" in r.getMessage() for r in caplog.records)
    recorder.fail_on = None  # fixed: the next poll takes it
    assert await poller.poll_once() == 1
    assert dovecot.messages("INBOX") == []
    assert subjects(recorder.got) == ["Undelivered Mail 1", "Undelivered Mail 2"]


async def test_a_wrong_password_is_logged_once_and_the_loop_goes_on(
        dovecot: DovecotInstance, caplog: pytest.LogCaptureFixture) -> None:
    dovecot.append("INBOX", returned(1))
    recorder = Recorder()
    poller = MailboxPoller(url_of(dovecot), password="wrong", handle=recorder,
                           every_seconds=0.05)
    with caplog.at_level(logging.INFO, logger="mailer.bounces"):
        assert await poller.poll_once() == 0
        async with poller:
            await asyncio.sleep(0.5)  # several polls, all refused
            assert poller._task is not None and not poller._task.done()
    failures = [r for r in caplog.records if "poll failed" in r.getMessage()]
    assert len(failures) == 1  # once per change of state, not once per poll
    assert recorder.got == []
    assert len(dovecot.messages("INBOX")) == 1


async def test_a_server_that_is_down_is_logged_and_polled_again(
        caplog: pytest.LogCaptureFixture, unused_tcp_port: int) -> None:
    poller = MailboxPoller(f"imap://{USER}@127.0.0.1:{unused_tcp_port}/INBOX",
                           password=PASSWORD, handle=Recorder())
    with caplog.at_level(logging.WARNING, logger="mailer.bounces"):
        assert await poller.poll_once() == 0
        assert await poller.poll_once() == 0
    assert len([r for r in caplog.records if "poll failed" in r.getMessage()]) == 1


async def test_a_certificate_the_system_does_not_trust_is_refused(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _need_dovecot()
    with private_dovecot(tmp_path, user=USER, password=PASSWORD, tls=True) as server:
        server.append("INBOX", returned(1))
        recorder = Recorder()
        poller = MailboxPoller(url_of(server), password=PASSWORD, handle=recorder)
        with caplog.at_level(logging.WARNING, logger="mailer.bounces"):
            assert await poller.poll_once() == 0  # no SSL_CERT_FILE: not verified
        assert recorder.got == []
        assert any("CERTIFICATE_VERIFY_FAILED" in str(getattr(r, "reason", ""))
                   for r in caplog.records)


async def test_without_move_the_message_is_copied_flagged_and_expunged(
        dovecot: DovecotInstance) -> None:
    # The fallback for servers without MOVE, run against Dovecot by not using its MOVE.
    dovecot.append("INBOX", returned(1))
    dovecot.append("INBOX", returned(2))
    for uidplus in (True, False):
        with dovecot.connect() as client:
            client.login(USER, PASSWORD)
            client.create(quoted("Processed"))
            client.select("INBOX")
            _, found = client.uid("SEARCH", "ALL")
            move_message(client, found[0].split()[0], "Processed", can_move=False,
                         uidplus=uidplus)
    assert dovecot.messages("INBOX") == []
    assert subjects(dovecot.messages("Processed")) == ["Undelivered Mail 1", "Undelivered Mail 2"]


@pytest.mark.parametrize(("url", "message"), [
    ("imap://bounces@imap.example.com/INBOX", "plain imap:// is for a server on this machine"),
    ("pop3://bounces@127.0.0.1/INBOX", "expected imaps://"),
    ("imaps://imap.example.com/INBOX", "expected imaps://"),
    ("imaps://bounces:pw@imap.example.com/INBOX", "secrets only from the environment"),
    ("imaps://bounces@imap.example.com/Entw%C3%BCrfe", "plain ASCII"),
])
def test_an_unusable_mailbox_url_is_a_config_error(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        MailboxPoller(url, password="x", handle=Recorder())


def test_a_mailbox_url_is_read_with_defaults() -> None:
    assert MailboxUrl.parse("imaps://bounces%40example.com@imap.example.com") == MailboxUrl(
        tls=True, user="bounces@example.com", host="imap.example.com", port=993,
        folder="INBOX")
    assert MailboxUrl.parse("imap://b@localhost:1143/Returns/In") == MailboxUrl(
        tls=False, user="b", host="localhost", port=1143, folder="Returns/In")
