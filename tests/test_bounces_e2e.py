"""The way back, end to end, with a real MTA in the loop.

`mailer send-now` hands its messages to a private Postfix (tests/servers/postfix.py), which
relays them to a "remote" aiosmtpd server that refuses one reader for good (550 5.1.1) and
one for now (452 4.2.2, mailbox full). Postfix then writes its own RFC 3464 reports to each
message's VERP envelope sender and, through `transport_maps`, delivers them to the
`bounce_listen` of a running `mailer run`. Nothing here is written by hand: the DSNs are
Postfix's.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Sequence
from email import policy
from email.message import EmailMessage, Message
from email.mime.message import MIMEMessage
from pathlib import Path

import httpx
import pytest

from mailer.states import SubscriptionStatus
from mailer.store import Store
from tests import storehelp
from tests.conftest import Project
from tests.servers.dovecot import dovecot_available, private_dovecot
from tests.servers.postfix import postfix_available, private_postfix
from tests.smtpd import RecordingServer, ServerThread
from tests.test_daemon import Daemon
from tests.test_real_servers import _need
from tests.test_relays import free_port
from tests.tools import run_cli

KEY = "daemon-test-key"  # the daemon's (tests/test_daemon.py): it checks the VERP tokens
FINE = ["ada@example.net", "grace@example.net", "alan@example.net"]
HARD = "gone@example.net"
SOFT = "full@example.net"
REFUSALS = {HARD: f"550 5.1.1 <{HARD}>: Recipient address rejected: User unknown",
            SOFT: f"452 4.2.2 <{SOFT}>: Mailbox full"}
ISSUES = ["a-first", "b-second", "c-third"]

# One database: the rules are tested on both in test_bounces_apply.py; these are about the
# real servers around them.
pytestmark = [pytest.mark.slow, pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)]


def mailer(project: Project, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("--config", str(project.config_path), *args, cwd=project.root,
                   env={"MAILER_SECRET_KEY": KEY, "COLUMNS": "250", "MAILER_CONFIG": None})


def statuses(project: Project, names: Sequence[str] = (*FINE, HARD, SOFT)
             ) -> dict[str, tuple[SubscriptionStatus, int]]:
    """Each reader's subscription state and how many returned messages are on record."""
    async def go() -> dict[str, tuple[SubscriptionStatus, int]]:
        async with Store.open(project.db_url) as store:
            found = {}
            for email in names:
                row = await storehelp.subscription_of(store, email, "ml-issues")
                assert row is not None
                found[email] = (row.status, await storehelp.returned_count(store, email))
            return found
    return asyncio.run(go())


def wait_until(project: Project, wanted: dict[str, tuple[SubscriptionStatus, int]],
               log: Callable[[], str], timeout: float = 30.0,
               names: Sequence[str] = (*FINE, HARD, SOFT)) -> None:
    deadline = time.monotonic() + timeout
    while True:
        now = statuses(project, names)
        if all(now[email] == state for email, state in wanted.items()):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"after {timeout} s: {now}, wanted {wanted}\n{log()}")
        time.sleep(0.2)


def issues_at(remote: RecordingServer) -> Counter[tuple[str, str]]:
    """(subject, reader) for every message the remote server accepted."""
    return Counter((str(m.parsed()["Subject"]), rcpt) for m in remote.messages
                   for rcpt in m.rcpt_tos)


def test_postfix_dsns_suppress_the_hard_bounce_at_once_and_the_soft_one_after_the_limit(
    project: Project, tmp_path: Path,
) -> None:
    _need(postfix_available())
    listen = free_port()
    for slug in ISSUES:
        project.write_issue(f"{slug}.md", f"---\nsubject: Issue {slug}\nstatus: ready\n---\n"
                                          f"Hello from {slug}.\n")
    with ServerThread(reject_rcpt=REFUSALS) as remote, \
            private_postfix(tmp_path, relayhost_port=remote.port,
                            transports={"bounces.example.com": listen}) as postfix:
        project.configure(smtp_url=f"smtp://127.0.0.1:{postfix.port}",
                          bounce_address="bounces@bounces.example.com",
                          bounce_listen=f"127.0.0.1:{listen}", soft_bounce_limit=2)
        csv = project.root / "readers.csv"
        csv.write_text("email,name\n" + "".join(f"{e},\n" for e in [*FINE, HARD, SOFT]))
        assert mailer(project, "subscribers", "import", str(csv), "--list", "ml-issues",
                      "--confirmed").returncode == 0
        # Before the first slot: the daemon only listens for what comes back.
        with Daemon(project.config_path, test_now="2026-12-01T00:00:00+00:00") as daemon:
            daemon.wait_for("running")
            confirmed = SubscriptionStatus.CONFIRMED
            bounced = SubscriptionStatus.BOUNCED

            first = mailer(project, "send-now", "ml-issues", "--yes", "--issue",
                           str(project.issues / "a-first.md"))
            assert first.returncode == 0, first.stdout + first.stderr  # Postfix took all 5
            wait_until(project, {HARD: (bounced, 1), SOFT: (confirmed, 1)}, postfix.log_text)

            second = mailer(project, "send-now", "ml-issues", "--yes", "--issue",
                            str(project.issues / "b-second.md"))
            assert second.returncode == 0, second.stdout + second.stderr
            wait_until(project, {SOFT: (bounced, 2)}, postfix.log_text)

            third = mailer(project, "send-now", "ml-issues", "--yes", "--issue",
                           str(project.issues / "c-third.md"))
            assert third.returncode == 0, third.stdout + third.stderr
            assert daemon.stop() == 0
            log = daemon.text()
        status = mailer(project, "status").stdout
        returned = mailer(project, "bounces", "list").stdout

    # The others were untouched and got every issue; the refused ones got none, and after
    # their suppression mailer no longer even tried them.
    assert {e: s for e, (s, _) in statuses(project).items() if e in FINE} == {
        e: SubscriptionStatus.CONFIRMED for e in FINE}
    got = issues_at(remote)
    for slug in ISSUES:
        assert all(got[(f"Issue {slug}", e)] == 1 for e in FINE)
    assert not any(rcpt in (HARD, SOFT) for _, rcpt in got)
    # What came back is on record, with the remote server's own words, and in the rates.
    rows = [line.split() for line in returned.splitlines() if "@example.net" in line]
    assert sorted((r[2], r[3]) for r in rows) == [(SOFT, "soft"), (SOFT, "soft"),
                                                  (HARD, "hard")]
    assert "550 5.1.1" in returned and "452 4.2.2" in returned
    # The first issue's row in the table of what came after each send.
    _, first_after = [line.split() for line in status.splitlines()
                      if line.split()[:1] == ["ml-issues/a-first"]]
    assert first_after[1:5] == ["0", "20.0%", "20.0%", "-"]  # dups, hard, soft, complaints
    assert f"  bounced later (hard) {HARD}: smtp; 550 5.1.1" in status
    assert f"hard bounce: {HARD} is now bounced" in log
    assert f"soft bounce 2 of 2 within 30 days: {SOFT} is now bounced" in log


def arf_complaint(reader: str, verp: str, message_id: str) -> bytes:
    """An RFC 5965 feedback report as a mailbox provider's feedback loop sends one."""
    report = EmailMessage()
    report["From"] = "feedback@fbl.example.org"
    report["To"] = verp
    report["Subject"] = "Complaint about a message"
    report["Message-ID"] = "<fbl-1@fbl.example.org>"
    report.set_content("This is an email abuse report.\n")
    report.make_mixed()
    report.set_type("multipart/report")
    report.set_param("report-type", "feedback-report")
    feedback = Message()
    feedback.set_type("message/feedback-report")
    feedback.set_payload("Feedback-Type: abuse\r\nUser-Agent: FBL/1.0\r\nVersion: 1\r\n"
                         f"Original-Rcpt-To: {reader}\r\n")
    report.attach(feedback)
    original = EmailMessage()
    original["Return-Path"] = f"<{verp}>"
    original["To"] = reader
    original["Subject"] = "Issue a-first"
    original["Message-ID"] = message_id
    original.set_content("Hello.\n")
    report.attach(MIMEMessage(original))
    return report.as_bytes(policy=policy.SMTP)


def test_the_daemon_takes_a_complaint_from_its_mailbox_and_a_bounce_by_webhook(
    project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    _need(dovecot_available())
    project.write_issue("a-first.md", "---\nsubject: Issue a-first\nstatus: ready\n---\nHi.\n")
    with ServerThread() as remote, private_dovecot(tmp_path, user="bounces", password="pw",
                                                   tls=True) as mailbox:
        monkeypatch.setenv("SSL_CERT_FILE", str(mailbox.cafile))  # the test's own CA
        monkeypatch.setenv("MAILER_BOUNCE_PASSWORD", "pw")
        monkeypatch.setenv("MAILER_WEBHOOK_USER", "hook")
        monkeypatch.setenv("MAILER_WEBHOOK_PASSWORD", "hook-secret")
        project.configure(smtp_url=f"smtp://127.0.0.1:{remote.port}",
                          bounce_address="bounces@bounces.example.com",
                          bounce_mailbox=f"imaps://bounces@127.0.0.1:{mailbox.port}/INBOX",
                          bounce_poll_seconds=0.3)
        csv = project.root / "readers.csv"
        csv.write_text("email,name\n" + "".join(f"{e},\n" for e in FINE))
        assert mailer(project, "subscribers", "import", str(csv), "--list", "ml-issues",
                      "--confirmed").returncode == 0
        sent = mailer(project, "send-now", "ml-issues", "--yes", "--issue",
                      str(project.issues / "a-first.md"))
        assert sent.returncode == 0, sent.stdout + sent.stderr
        ada = next(m for m in remote.messages if m.rcpt_tos == [FINE[0]])
        mailbox.append("INBOX", arf_complaint(FINE[0], ada.mail_from,
                                              str(ada.parsed()["Message-ID"])))
        with Daemon(project.config_path, test_now="2026-12-01T00:00:00+00:00") as daemon:
            log = daemon.wait_for("running")
            address = re.search(r"http=(\S+)", log)
            assert address is not None
            hook = httpx.post(f"http://{address[1]}/webhooks/postmark", auth=("hook", "x"),
                              json=postmark_bounce(FINE[1]))
            assert hook.status_code == 401  # a wrong password changes nothing
            hook = httpx.post(f"http://{address[1]}/webhooks/postmark",
                              auth=("hook", "hook-secret"), json=postmark_bounce(FINE[1]))
            assert hook.status_code == 200, hook.text
            wait_until(project, {FINE[0]: (SubscriptionStatus.COMPLAINED, 1),
                                 FINE[1]: (SubscriptionStatus.BOUNCED, 1),
                                 FINE[2]: (SubscriptionStatus.CONFIRMED, 0)},
                       daemon.text, names=FINE)
            assert daemon.stop() == 0
        # The evidence is kept: moved out of the inbox, never deleted.
        assert mailbox.messages("INBOX") == []
        assert len(mailbox.messages("Processed")) == 1


def postmark_bounce(reader: str) -> dict[str, object]:
    """Postmark's bounce webhook, in the shape its documentation gives."""
    return {"RecordType": "Bounce", "ID": 42, "Type": "HardBounce", "TypeCode": 1,
            "MessageID": "0a1b2c3d-0000-4c4f-9d6e-7a8b9c0d1e2f", "ServerID": 1,
            "MessageStream": "broadcast", "Description": "Unknown user",
            "Details": "smtp;550 5.1.1 The email account does not exist.", "Email": reader,
            "From": "newsletter@example.com", "BouncedAt": "2026-11-30T06:58:10Z",
            "DumpAvailable": False, "Inactive": True, "CanActivate": True,
            "Subject": "Issue a-first"}
