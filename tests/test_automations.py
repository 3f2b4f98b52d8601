"""Welcome emails and sequence steps through `mailer run` and `mailer automations run`: real
processes on the test clock, a real SMTP server, SQLite and PostgreSQL.

Every daemon here starts on MAILER_TEST_NOW far from the project's schedule (its slots are
2026-12-07 and 2026-12-21 09:00 Berlin, more than catch_up_hours away), and the issues
folder holds no issue: whatever arrives is an automatic email or a confirmation.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
import urllib.parse
import urllib.request
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mailer.states import DeliveryStatus
from mailer.store import Store
from tests import storehelp
from tests.conftest import Project
from tests.smtpd import RecordingServer, ServerThread
from tests.test_daemon import Daemon, write_config
from tests.tools import run_cli

T0 = datetime(2026, 12, 10, 12, 0, tzinfo=UTC)
WELCOME = "Welcome to Machine Learning Issues"
DAY_ONE = "Day one: how to read a benchmark"
DAY_THREE = "Day three: small models"
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
POSTGRES_ONLY = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)


def at(moment: datetime) -> str:
    return moment.isoformat()


def automatic_project(project: Project, server: RecordingServer | None, **settings: object
                      ) -> Path:
    """The test project with no issue, a welcome email and two sequence steps."""
    for issue in project.issues.glob("*.md"):
        issue.unlink()
    write_email(project, "welcome.md", WELCOME, "Hello {{ subscriber.name | default(\"there\") }}"
                ", thanks for confirming.")
    write_email(project, "sequence/01-day-one.md", DAY_ONE, "Read the numbers first.",
                after="1 days")
    write_email(project, "sequence/02-day-three.md", DAY_THREE, "Small is fine.",
                after="3 days")
    return write_config(project, server, **{"concurrency": 3, **settings})


def write_email(project: Project, name: str, subject: str, body: str, *,
                after: str | None = None, status: str = "ready") -> Path:
    path = project.issues / name
    path.parent.mkdir(exist_ok=True)
    front = [f"subject: {subject!r}", f"status: {status}"] + ([f"after: {after}"] if after else [])
    path.write_text("---\n" + "\n".join(front) + "\n---\n\n" + body + "\n", encoding="utf-8")
    return path


def got(server: RecordingServer) -> Counter[tuple[str, str]]:
    """(reader, subject) → copies received."""
    return Counter((rcpt, str(m.parsed()["Subject"])) for m in server.messages
                   for rcpt in m.rcpt_tos)


def http_of(daemon: Daemon) -> str:
    text = daemon.wait_for('"event": "running"')
    return next(json.loads(line)["http"] for line in text.splitlines()
                if '"event": "running"' in line)


def post(url: str, fields: dict[str, str] | None = None) -> int:
    data = urllib.parse.urlencode(fields or {}).encode()
    with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=10) as reply:
        return int(reply.status)


def wait_until(condition: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"no {what} after {timeout}s"
        time.sleep(0.05)


def link(server: RecordingServer, reader: str, subject_part: str, route: str) -> str:
    """The token of the `route` link (confirm, unsubscribe) in `reader`'s message."""
    for message in server.messages:
        parsed = message.parsed()
        if reader in message.rcpt_tos and subject_part in str(parsed["Subject"]):
            text = message.data.decode("utf-8", "replace").replace("=\r\n", "")
            return re.findall(rf"/{route}/([A-Za-z0-9._~-]+)", text)[0]
    raise AssertionError(f"no message {subject_part!r} for {reader}")


def sign_up_and_confirm(server: RecordingServer, http: str, reader: str) -> None:
    """What a reader does: the form, then the link in the confirmation email."""
    assert post(f"http://{http}/subscribe/ml-issues", {"email": reader}) == 200
    wait_until(lambda: any(reader in m.rcpt_tos for m in server.messages), "confirmation")
    token = link(server, reader, "onfirm", "confirm")
    assert post(f"http://{http}/confirm/{token}") == 200


def start_sequences(db_url: str, readers: list[str], started: datetime) -> None:
    """Readers whose automatic emails count from `started` (`import --confirmed --welcome`)."""
    async def go() -> None:
        store = await Store.open(db_url)
        try:
            await store.import_subscribers([(r, "") for r in readers], newsletter="ml-issues",
                                           confirmed=True, welcome=True, now=started)
        finally:
            await store.close()

    asyncio.run(go())


def look_once(config: Path, moment: datetime) -> None:
    """A daemon on `moment` that looks once at what is due and sends it, then stops."""
    with Daemon(config, test_now=at(moment), args=("--log-json",)) as daemon:
        daemon.wait_for('"automatic emails looked at"')
        assert daemon.stop() == 0


def test_a_reader_gets_the_welcome_at_once_and_each_step_at_its_time_exactly_once(
    project: Project,
) -> None:
    with ServerThread() as server:
        config = automatic_project(project, server)
        with Daemon(config, test_now=at(T0), args=("--log-json",)) as daemon:
            http = http_of(daemon)
            for reader in ("ada@example.com", "bob@example.com"):
                sign_up_and_confirm(server, http, reader)
            # Both, before the stop: a SIGTERM rightly leaves a message not yet started for
            # the next look, and this test is about when each one goes.
            wait_until(lambda: all(got(server)[(r, WELCOME)] == 1
                                   for r in ("ada@example.com", "bob@example.com")), "welcome")
            assert daemon.stop() == 0
        welcomed = got(server)
        assert welcomed[("ada@example.com", WELCOME)] == 1
        # A restart 23 hours later: the day-one step is not due yet.
        look_once(config, T0 + timedelta(hours=23))
        assert got(server) == welcomed
        # Past a day: the day-one step, once each; the day-three step not yet.
        with Daemon(config, test_now=at(T0 + timedelta(days=1, minutes=1)),
                    args=("--log-json",)) as daemon:
            http = http_of(daemon)
            wait_until(lambda: all(got(server)[(r, DAY_ONE)] == 1
                                   for r in ("ada@example.com", "bob@example.com")), "day one")
            # Bob leaves with the link in it.
            token = link(server, "bob@example.com", DAY_ONE, "unsubscribe")
            assert post(f"http://{http}/unsubscribe/{token}") == 200
            assert daemon.stop() == 0
        # Past three days, twice over: the day-three step reaches Ada only, once.
        for _ in range(2):
            look_once(config, T0 + timedelta(days=3, minutes=1))
    copies = got(server)
    assert {k: n for k, n in copies.items() if "onfirm" not in k[1]} == {
        ("ada@example.com", WELCOME): 1, ("bob@example.com", WELCOME): 1,
        ("ada@example.com", DAY_ONE): 1, ("bob@example.com", DAY_ONE): 1,
        ("ada@example.com", DAY_THREE): 1}
    # The welcome greets by the default (no name given) and is personal like an issue.
    welcome = next(m.parsed() for m in server.messages if str(m.parsed()["Subject"]) == WELCOME)
    assert "Hello there" in welcome.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert welcome["List-Unsubscribe"]


def test_a_step_added_later_reaches_only_the_readers_it_is_not_long_overdue_for(
    project: Project,
) -> None:
    with ServerThread() as server:
        config = automatic_project(project, server, catch_up_hours=24)
        (project.issues / "welcome.md").unlink()
        (project.issues / "sequence" / "02-day-three.md").unlink()
        # Long ago (due 9 days before the step existed), a little overdue, not due yet.
        start_sequences(project.db_url, ["old@example.com"], T0 - timedelta(days=10))
        start_sequences(project.db_url, ["recent@example.com"], T0 - timedelta(hours=26))
        start_sequences(project.db_url, ["new@example.com"], T0 - timedelta(hours=2))
        look_once(config, T0)  # the step is first seen now
        assert got(server) == Counter({("recent@example.com", DAY_ONE): 1})
        # The new reader's day comes while the daemon is stopped: it is sent when it starts.
        look_once(config, T0 + timedelta(days=2))
        assert got(server) == Counter({("recent@example.com", DAY_ONE): 1,
                                       ("new@example.com", DAY_ONE): 1})


def test_a_daemon_killed_while_sending_a_step_to_500_readers_leaves_no_one_a_second_copy(
    project: Project,
) -> None:
    readers = [f"reader{i:03}@example.com" for i in range(500)]
    with ServerThread() as server:
        config = automatic_project(project, server, concurrency=5)
        (project.issues / "welcome.md").unlink()
        start_sequences(project.db_url, readers, T0 - timedelta(days=1, hours=1))
        with Daemon(config, test_now=at(T0), args=("--log-json",)) as daemon:
            wait_until(lambda: len(server.messages) >= 120, "120 messages", timeout=60)
            daemon.proc.send_signal(signal.SIGKILL)
            daemon.proc.wait(timeout=30)
        killed_at = len(server.messages)
        assert killed_at < len(readers), "the kill came after the last message"
        with Daemon(config, test_now=at(T0 + timedelta(minutes=5)),
                    args=("--log-json",)) as daemon:
            daemon.wait_for('"automatic email delivered"', timeout=120)
            assert daemon.stop() == 0
    rows = asyncio.run(_deliveries(project.db_url, "sequence/01-day-one.md"))
    unknown = {e for e, status in rows.items() if status == DeliveryStatus.UNKNOWN}
    copies = Counter(rcpt for m in server.messages for rcpt in m.rcpt_tos)
    assert len(unknown) <= 5 and max(copies.values()) == 1, (killed_at, unknown)
    for reader in readers:
        if reader not in unknown:
            assert copies[reader] == 1 and rows[reader] == DeliveryStatus.SENT, reader


async def _deliveries(db_url: str, slug: str) -> dict[str, DeliveryStatus]:
    store = await Store.open(db_url)
    try:
        [send] = [s for s in await store.automatic_sends("ml-issues") if s.slug == slug]
        return {d.email: d.status for d in await storehelp.deliveries(store, send.id)}
    finally:
        await store.close()


@POSTGRES_ONLY
def test_two_daemons_on_one_database_send_each_step_once_per_reader(project: Project) -> None:
    readers = [f"reader{i:03}@example.com" for i in range(200)]
    with ServerThread() as server:
        # Every email is due, none past catch-up: 600 messages in all.
        config = automatic_project(project, server, catch_up_hours=96)
        start_sequences(project.db_url, readers, T0 - timedelta(days=3, minutes=5))
        with Daemon(config, test_now=at(T0), name="one", args=("--log-json",)) as one, \
                Daemon(config, test_now=at(T0), name="two", args=("--log-json",)) as two:
            wait_until(lambda: len(server.messages) >= 600, "600 messages", timeout=90)
            time.sleep(1.0)
            assert one.stop() == 0 and two.stop() == 0
    copies = got(server)
    assert set(copies.values()) == {1}
    assert Counter(subject for _, subject in copies) == {WELCOME: 200, DAY_ONE: 200,
                                                         DAY_THREE: 200}


@SQLITE_ONLY
def test_automations_run_once_sends_what_is_due_and_nothing_twice(project: Project) -> None:
    with ServerThread() as server:
        config = automatic_project(project, server)
        csv = project.root / "readers.csv"
        csv.write_text("email,name\nada@example.com,Ada\nbob@example.com,Bob\n",
                       encoding="utf-8")
        env = {"MAILER_TEST_NOW": at(T0), "MAILER_SECRET_KEY": "daemon-test-key"}
        done = run_cli("--config", str(config), "subscribers", "import", str(csv),
                       "--list", "ml-issues", "--confirmed", "--welcome", cwd=project.root,
                       env=env)
        assert done.returncode == 0, done.stderr
        first = run_cli("--config", str(config), "automations", "run", "--once",
                        cwd=project.root, env=env)
        assert first.returncode == 0, first.stdout + first.stderr
        assert "ml-issues/welcome.md" in first.stdout
        assert got(server) == Counter({("ada@example.com", WELCOME): 1,
                                       ("bob@example.com", WELCOME): 1})
        again = run_cli("--config", str(config), "automations", "run", "--once",
                        cwd=project.root, env=env)
        assert again.returncode == 0 and "nothing due" in again.stdout
        later = {**env, "MAILER_TEST_NOW": at(T0 + timedelta(days=1, hours=1))}
        assert run_cli("--config", str(config), "automations", "run", "--once",
                       cwd=project.root, env=later).returncode == 0
        status = run_cli("--config", str(config), "status", cwd=project.root, env=later)
    assert sum(got(server).values()) == 4, status.stdout
    # Each automatic email with sent / queued / waiting / failed.
    lines = {line.split()[0]: line.split()[-4:] for line in status.stdout.splitlines()
             if line.strip().startswith("ml-issues/") and ".md" in line}
    assert lines == {"ml-issues/welcome.md": ["2", "0", "0", "0"],
                     "ml-issues/sequence/01-day-one.md": ["2", "0", "0", "0"],
                     "ml-issues/sequence/02-day-three.md": ["0", "0", "2", "0"]}, status.stdout


@SQLITE_ONLY
def test_a_welcome_paused_by_a_refusing_relay_says_so_in_status(project: Project) -> None:
    readers = [f"r{i}@example.com" for i in range(4)]
    refused = {reader: "550 5.7.1 relaying denied" for reader in readers}
    with ServerThread(reject_rcpt=refused) as server:
        config = automatic_project(project, server, error_window=4, max_error_rate=0.5)
        csv = project.root / "readers.csv"
        csv.write_text("email\n" + "\n".join(readers) + "\n", encoding="utf-8")
        env = {"MAILER_TEST_NOW": at(T0), "MAILER_SECRET_KEY": "daemon-test-key"}
        assert run_cli("--config", str(config), "subscribers", "import", str(csv), "--list",
                       "ml-issues", "--confirmed", "--welcome", cwd=project.root,
                       env=env).returncode == 0
        run = run_cli("--config", str(config), "automations", "run", "--once",
                      cwd=project.root, env=env)
        assert run.returncode == 1, run.stdout + run.stderr
        status = run_cli("--config", str(config), "status", cwd=project.root, env=env)
    assert status.returncode == 0, status.stderr
    assert "ml-issues/welcome.md is paused:" in status.stdout
    assert "`mailer automations run` goes on with it" in status.stdout

@SQLITE_ONLY
def test_readers_imported_as_confirmed_get_no_automatic_email(project: Project) -> None:
    with ServerThread() as server:
        config = automatic_project(project, server)
        csv = project.root / "readers.csv"
        csv.write_text("email\nada@example.com\n", encoding="utf-8")
        env = {"MAILER_TEST_NOW": at(T0)}
        assert run_cli("--config", str(config), "subscribers", "import", str(csv), "--list",
                       "ml-issues", "--confirmed", cwd=project.root, env=env).returncode == 0
        done = run_cli("--config", str(config), "automations", "run", "--once",
                       cwd=project.root, env={**env, "MAILER_TEST_NOW": at(T0 + timedelta(
                           days=4))})
        assert done.returncode == 0 and "nothing due" in done.stdout
        assert not server.messages


@SQLITE_ONLY
def test_send_now_never_sends_an_automatic_email(project: Project) -> None:
    config = automatic_project(project, None)
    nothing = run_cli("--config", str(config), "send-now", "ml-issues", "--yes",
                      cwd=project.root)
    assert nothing.returncode == 0 and "no due issue" in nothing.stdout
    refused = run_cli("--config", str(config), "send-now", "ml-issues", "--yes", "--issue",
                      str(project.issues / "welcome.md"), cwd=project.root)
    assert refused.returncode == 2 and "automatic email" in refused.stderr
    preview = run_cli("--config", str(config), "preview", "--text",
                      str(project.issues / "sequence" / "01-day-one.md"), cwd=project.root)
    assert preview.returncode == 0 and "Read the numbers first." in preview.stdout


pytestmark = pytest.mark.slow
