"""The private Postfix and Dovecot fixtures work end to end: real DSNs, real IMAPS.

These are the ground the bounce tests stand on: a message refused by the "remote" server
comes back from a real Postfix as an RFC 3464 report to the VERP address, and a real
Dovecot serves a mailbox over verified TLS.
"""

from __future__ import annotations

import imaplib
import os
import smtplib
import ssl
import time
from email.message import Message
from pathlib import Path

import pytest

from tests.servers.dovecot import DovecotInstance, dovecot_available, private_dovecot
from tests.servers.postfix import postfix_available, private_postfix
from tests.smtpd import Received, ServerThread

VERP = "bounces+abc123@bounce.test"
REFUSED = "gone@remote.test"
ACCEPTED = "reader@remote.test"
ISSUE = (b"From: Newsletter <newsletter@example.com>\r\nTo: readers@remote.test\r\n"
         b"Subject: Issue 1\r\nMessage-ID: <issue-1@example.com>\r\n\r\nHello.\r\n")


def _need(reason: str | None) -> None:
    # As tests/tools.py: a missing server skips, unless the run demands the tools. Not being
    # root is no missing tool (scripts/test run by a sudo user): that always skips.
    if reason is None:
        return
    required = os.environ.get("MAILER_TEST_REQUIRE_TOOLS", "") not in ("", "0")
    if required and os.geteuid() == 0:
        pytest.fail(f"MAILER_TEST_REQUIRE_TOOLS=1 but {reason}")
    pytest.skip(reason)


def _relay_and_wait_for_dsn(tmp_path: Path, refusal: str) -> tuple[Received, Received, float]:
    """Submit ISSUE from VERP to REFUSED and ACCEPTED through a private Postfix whose remote
    server gives REFUSED `refusal`; the DSN, the delivered copy, and the DSN's delay."""
    _need(postfix_available())
    with (ServerThread(reject_rcpt={REFUSED: refusal}) as remote,
          ServerThread() as bounce_listener,
          private_postfix(tmp_path, relayhost_port=remote.port,
                          transports={"bounce.test": bounce_listener.port}) as postfix):
        with smtplib.SMTP("127.0.0.1", postfix.port, timeout=10) as client:
            client.sendmail(VERP, [REFUSED, ACCEPTED], ISSUE)
        submitted = time.monotonic()
        try:
            dsn = bounce_listener.wait_for_messages(1, timeout=20)[0]
        except TimeoutError:
            pytest.fail(f"no DSN within 20 s; Postfix's log:\n{postfix.log_text()}")
        delay = time.monotonic() - submitted
        delivered = remote.wait_for_messages(1, timeout=5)[0]
        deadline = time.monotonic() + 5
        while not postfix.queue_is_empty() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert postfix.queue_is_empty(), postfix.log_text()
        postfix.flush()  # nothing deferred: a no-op, but the command must work
    return dsn, delivered, delay


def _recipient_reports(dsn: Received) -> dict[str, Message]:
    """The per-recipient field groups of the DSN's message/delivery-status part, by the
    address in their Final-Recipient field."""
    report = dsn.parsed()
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    status = next(part for part in report.walk()
                  if part.get_content_type() == "message/delivery-status")
    # The first group is about the message, each further one about one recipient (RFC 3464).
    payload = status.get_payload()
    groups = [group for group in payload if isinstance(group, Message)]
    assert len(groups) >= 2, str(report)
    return {str(group["Final-Recipient"]).split(";")[1].strip(): group for group in groups[1:]}


def test_a_refused_recipient_comes_back_as_a_dsn_to_the_verp_address(tmp_path: Path) -> None:
    dsn, delivered, delay = _relay_and_wait_for_dsn(
        tmp_path, f"550 5.1.1 <{REFUSED}>: user unknown")

    # RFC 3464 via the null sender (RFC 5321 §4.5.5), to the envelope sender it was sent with.
    assert dsn.mail_from in ("", "<>")
    assert dsn.rcpt_tos == [VERP]
    reports = _recipient_reports(dsn)
    assert list(reports) == [REFUSED]
    assert reports[REFUSED]["Action"] == "failed"
    assert reports[REFUSED]["Status"] == "5.1.1"
    assert "550 5.1.1" in str(reports[REFUSED]["Diagnostic-Code"])
    assert delivered.rcpt_tos == [ACCEPTED]
    assert delivered.mail_from == VERP
    assert delay < 20


def test_a_temporary_refusal_turns_into_a_dsn_after_one_attempt(tmp_path: Path) -> None:
    # With a queue lifetime of 0 Postfix tries once: the 4xx is final at once, and its DSN
    # says "failed" while keeping the temporary status the server gave.
    dsn, delivered, delay = _relay_and_wait_for_dsn(
        tmp_path, f"452 4.2.2 <{REFUSED}>: mailbox full")

    reports = _recipient_reports(dsn)
    assert list(reports) == [REFUSED]
    assert reports[REFUSED]["Action"] == "failed"
    assert reports[REFUSED]["Status"] == "4.2.2"
    assert "452 4.2.2" in str(reports[REFUSED]["Diagnostic-Code"])
    assert delivered.rcpt_tos == [ACCEPTED]
    assert delay < 20


def _imaps(dovecot: DovecotInstance) -> imaplib.IMAP4_SSL:
    assert dovecot.cafile is not None
    context = ssl.create_default_context(cafile=str(dovecot.cafile))
    return imaplib.IMAP4_SSL("127.0.0.1", dovecot.port, ssl_context=context, timeout=10)


def test_dovecot_serves_a_mailbox_over_verified_imaps(tmp_path: Path) -> None:
    _need(dovecot_available())
    with private_dovecot(tmp_path, user="bounces", password="s3cret", tls=True) as dovecot:
        dovecot.append("INBOX", ISSUE)
        dovecot.append("INBOX", ISSUE.replace(b"Issue 1", b"Issue 2"))
        with _imaps(dovecot) as client:
            client.login("bounces", "s3cret")
            assert client.create("Processed")[0] == "OK"
            client.select("INBOX")
            _, found = client.search(None, "SUBJECT", '"Issue 1"')
            assert len(found[0].split()) == 1
            number = found[0].split()[0]
            # COPY + \Deleted + EXPUNGE, the way without MOVE (RFC 3501) ...
            assert client.copy(number, "Processed")[0] == "OK"
            client.store(number, "+FLAGS", r"(\Deleted)")
            client.expunge()
            # ... and MOVE (RFC 6851) for the other one.
            _, uids = client.uid("SEARCH", "ALL")
            assert client.uid("MOVE", uids[0].split()[0], "Processed")[0] == "OK"
        assert dovecot.messages("INBOX") == []
        moved = dovecot.messages("Processed")
        assert [m.split(b"Subject: ")[1].split(b"\r\n")[0] for m in moved] == [
            b"Issue 1", b"Issue 2"]
        assert moved[0] == ISSUE


def test_dovecot_refuses_a_wrong_password_and_an_unverified_certificate(
        tmp_path: Path) -> None:
    _need(dovecot_available())
    with private_dovecot(tmp_path, user="bounces", password="s3cret", tls=True) as dovecot:
        with _imaps(dovecot) as client, pytest.raises(imaplib.IMAP4.error):
            client.login("bounces", "wrong")
        # Without its certificate the system's trust store has no reason to trust it.
        with pytest.raises(ssl.SSLCertVerificationError):
            imaplib.IMAP4_SSL("127.0.0.1", dovecot.port,
                              ssl_context=ssl.create_default_context(), timeout=10)


def test_dovecot_serves_plain_imap_on_loopback(tmp_path: Path) -> None:
    _need(dovecot_available())
    with private_dovecot(tmp_path, user="bounces", password="s3cret", tls=False) as dovecot:
        assert dovecot.cafile is None
        dovecot.append("Bounces", ISSUE)
        assert dovecot.messages("Bounces") == [ISSUE]
