"""`mailer run` as a user runs it: a real process, a real SMTP server, SQLite and PostgreSQL.

The schedule of the test project fires first on 2026-12-07 09:00 Europe/Berlin. Each daemon
runs on the documented test clock (MAILER_TEST_NOW), which then runs on in real time: it
starts LEAD seconds before that slot where the scheduled firing is under test, or just
after it where only a send in progress matters (the missed slot is caught up at start, so
nobody waits for it).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from zoneinfo import ZoneInfo

import pytest

from mailer.states import DeliveryStatus
from mailer.store import Store
from tests import storehelp
from tests.conftest import Project
from tests.smtpd import RecordingServer, ServerThread
from tests.tools import run_cli

SLOT = datetime(2026, 12, 7, 9, 0, tzinfo=ZoneInfo("Europe/Berlin"))
SLOT_FIELD = "slot=2026-12-07T09:00:00+01:00"
# Seconds from a daemon's start to the slot. Its clock starts after the interpreter's own
# start-up; from there to its schedule being set (database open, scheduler started) took
# ~0.04 s here, so 1.5 s is well above it even on a loaded machine. A start too slow for
# it would catch the slot up instead: test_the_due_issue_is_sent_once_at_its_slot says so.
LEAD = 1.5
SAMPLE = "2026-12-07-first-issue"
SUBJECT = "Machine Learning Issues #01: small models, honest benchmarks"
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
# Each test runs `mailer run` processes for seconds: first in the suite (conftest.py).
pytestmark = pytest.mark.slow


def clock(moment: datetime) -> str:
    """A MAILER_TEST_NOW value."""
    return moment.astimezone(UTC).isoformat()


def before_slot(seconds: float = LEAD) -> str:
    return clock(SLOT - timedelta(seconds=seconds))


def just_after_slot() -> str:
    """A start one second after the slot: the missed slot is caught up (catch_up_hours)
    and its send starts at once."""
    return clock(SLOT + timedelta(seconds=1))


class Daemon:
    """`mailer run --port 0` as a child process, its log (stderr) in a file."""

    def __init__(self, config: Path, *, test_now: str | None, name: str = "daemon",
                 args: tuple[str, ...] = ()) -> None:
        self.log = config.parent / f"{name}-{time.monotonic_ns()}.log"
        env = {**os.environ, "MAILER_SECRET_KEY": "daemon-test-key"}
        env.pop("MAILER_CONFIG", None)
        if test_now:
            env["MAILER_TEST_NOW"] = test_now
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mailer", "--config", str(config), "run", "--port", "0",
                 *args], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=config.parent, env=env)

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)

    def text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def wait_for(self, *needles: str, timeout: float = 45.0) -> str:
        """The log once one of `needles` is in it. Raises AssertionError on exit or timeout."""
        deadline = time.monotonic() + timeout
        while True:
            exited = self.proc.poll() is not None
            text = self.text()
            if any(needle in text for needle in needles):
                return text
            if exited:
                raise AssertionError(f"mailer run exited ({self.proc.returncode}) before "
                                     f"logging {needles}:\n{text}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {needles} after {timeout}s:\n{text}")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM, *, timeout: float = 45.0) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)


def write_config(project: Project, server: RecordingServer | None, **settings: object) -> Path:
    url = f"smtp://127.0.0.1:{server.port}" if server else "capture"
    project.configure(smtp_url=url, **{"concurrency": 1, **settings})
    return project.config_path


def subscribe(db_url: str, count: int) -> list[str]:
    emails = [f"reader{i:02}@example.com" for i in range(count)]

    async def go() -> None:
        store = await Store.open(db_url)
        try:
            await store.import_subscribers([(e, "") for e in emails], newsletter="ml-issues",
                                           confirmed=True)
        finally:
            await store.close()

    asyncio.run(go())
    return emails


def delivery_states(db_url: str) -> Counter[DeliveryStatus]:
    async def go() -> Counter[DeliveryStatus]:
        store = await Store.open(db_url)
        try:
            sends = await store.sends("ml-issues")
            assert [s.slug for s in sends] == [SAMPLE]
            return Counter(d.status for d in await storehelp.deliveries(store, sends[0].id))
        finally:
            await store.close()

    return asyncio.run(go())


def edit(path: Path, old: str, new: str) -> None:
    """Replace text in a file the way editors save: a new file renamed over the old one."""
    text = path.read_text(encoding="utf-8")
    assert old in text
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text.replace(old, new), encoding="utf-8")
    temporary.replace(path)


def received(server: RecordingServer) -> Counter[str]:
    return Counter(rcpt for message in server.messages for rcpt in message.rcpt_tos)


def order(text: str, *needles: str) -> list[int]:
    return [text.index(needle) for needle in needles]


@SQLITE_ONLY
def test_the_due_issue_is_sent_once_at_its_slot_and_a_restart_sends_nothing_more(
    project: Project,
) -> None:
    with ServerThread() as server:
        config = write_config(project, server, log_progress_every=1)
        emails = subscribe(project.db_url, 3)
        with Daemon(config, test_now=before_slot()) as daemon:
            log = daemon.wait_for("send finished")
            assert daemon.stop() == 0
        # Sent by the scheduler at the slot, not caught up by a start later than the slot.
        assert "catching up" not in log, f"the daemon started after its slot: raise LEAD\n{log}"
        assert f"issue due newsletter=ml-issues {SLOT_FIELD} slug={SAMPLE}" in log
        assert re.findall(r"progress .* done=(\d) of=3", log) == ["1", "2", "3"]
        assert "sent=3 failed=0 unknown=0" in log
        assert received(server) == Counter(emails)

        # Restarted ten minutes after the slot: the slot had its issue, nothing is caught up.
        with Daemon(config, test_now=clock(SLOT + timedelta(minutes=10))) as again:
            log = again.wait_for("running")
            assert again.stop(signal.SIGINT) == 0
        assert "catching up" not in log and "issue due" not in log
        assert "stopping reason=SIGINT" in again.text()
        assert received(server) == Counter(emails)

    status = run_cli("--config", str(config), "status", cwd=project.root,
                     env={"COLUMNS": "250", "MAILER_TEST_NOW": clock(SLOT)})
    assert status.returncode == 0, status.stderr
    row = next(line for line in status.stdout.splitlines()
               if line.strip().startswith("ml-issues "))
    assert "2026-12-21 09:00 CET" in row  # the next run, two weeks on
    assert SAMPLE in row and "finished" in row


@SQLITE_ONLY
def test_a_draft_and_an_issue_whose_send_after_is_ahead_are_skipped_and_logged(
    project: Project,
) -> None:
    sample = project.issues / f"{SAMPLE}.md"
    sample.write_text(sample.read_text().replace("status: ready", "status: draft"))
    project.write_issue("2026-12-21-second.md", "---\nsubject: Second\nstatus: ready\n"
                        "send_after: 2026-12-20\n---\nBody\n")
    with ServerThread() as server:
        config = write_config(project, server)
        subscribe(project.db_url, 2)
        with Daemon(config, test_now=before_slot()) as daemon:
            log = daemon.wait_for("slot skipped")
            assert daemon.stop() == 0
        assert server.messages == []
    line = next(line for line in log.splitlines() if "slot skipped" in line)
    assert "no due issue" in line and SLOT_FIELD in line
    assert f"drafts={SAMPLE}" in line
    assert 'send_after_ahead="2026-12-21-second (2026-12-20T00:00:00+01:00)"' in line


@SQLITE_ONLY
def test_a_slot_missed_while_down_is_caught_up_once_and_only_within_catch_up_hours(
    project: Project,
) -> None:
    three_hours_late = clock(SLOT + timedelta(hours=3))
    with ServerThread() as server:
        emails = subscribe(project.db_url, 2)
        config = write_config(project, server, catch_up_hours=2)
        with Daemon(config, test_now=three_hours_late) as too_late:
            log = too_late.wait_for("running")
            assert too_late.stop() == 0
        assert "catching up" not in log and server.messages == []

        config = write_config(project, server, catch_up_hours=24)
        with Daemon(config, test_now=three_hours_late) as daemon:
            log = daemon.wait_for("send finished")
            assert daemon.stop() == 0
        assert "catching up the latest slot" in log and SLOT_FIELD in log
        assert received(server) == Counter(emails)

        with Daemon(config, test_now=three_hours_late) as again:
            log = again.wait_for("running")
            assert again.stop() == 0
        assert "catching up" not in log
        assert received(server) == Counter(emails)


def test_after_sigkill_mid_send_a_restart_finishes_with_one_message_for_everyone(
    project: Project,
) -> None:
    # The 3rd message is stored by the server, which then does not answer: killed there,
    # its row is left mid-transaction and must not be sent again.
    with ServerThread(stall_seconds=60, stall_for={3}) as server:
        config = write_config(project, server)
        emails = subscribe(project.db_url, 6)
        with Daemon(config, test_now=just_after_slot()) as daemon:
            server.wait_for_messages(3, timeout=45)
            assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL
        with Daemon(config, test_now=before_slot()) as restarted:
            log = restarted.wait_for("send finished")
            assert restarted.stop() == 0
        assert "send resumed" in log
        assert received(server) == Counter(emails)
    states = delivery_states(project.db_url)
    assert states == {DeliveryStatus.SENT: 5, DeliveryStatus.UNKNOWN: 1}


@SQLITE_ONLY
def test_sigterm_mid_send_lets_the_message_in_flight_finish_and_a_restart_sends_the_rest(
    project: Project,
) -> None:
    # The 2nd message's reply comes 1.5 s late: the SIGTERM arrives while it is in flight.
    with ServerThread(stall_seconds=1.5, stall_for={2}) as server:
        config = write_config(project, server, shutdown_grace_seconds=30)
        emails = subscribe(project.db_url, 5)
        with Daemon(config, test_now=just_after_slot()) as daemon:
            server.wait_for_messages(2, timeout=45)
            assert daemon.stop() == 0
            log = daemon.text()
        assert "send interrupted" in log and "grace period over" not in log
        assert delivery_states(project.db_url) == {DeliveryStatus.SENT: 2,
                                                   DeliveryStatus.PENDING: 3}
        with Daemon(config, test_now=before_slot()) as restarted:
            restarted.wait_for("send finished")
            assert restarted.stop() == 0
        assert received(server) == Counter(emails)
    assert delivery_states(project.db_url) == {DeliveryStatus.SENT: 5}


@SQLITE_ONLY
def test_sigterm_exits_within_the_grace_period_and_records_the_cut_message_as_unknown(
    project: Project,
) -> None:
    grace = 1.0
    with ServerThread(stall_seconds=60, stall_for={2}) as server:
        config = write_config(project, server, shutdown_grace_seconds=grace)
        emails = subscribe(project.db_url, 5)
        with Daemon(config, test_now=just_after_slot()) as daemon:
            server.wait_for_messages(2, timeout=45)
            started = time.monotonic()
            assert daemon.stop() == 0
            took = time.monotonic() - started
            log = daemon.text()
        assert grace <= took < grace + 8, took
        assert "grace period over" in log
        assert delivery_states(project.db_url) == {DeliveryStatus.SENT: 1,
                                                   DeliveryStatus.UNKNOWN: 1,
                                                   DeliveryStatus.PENDING: 3}
        with Daemon(config, test_now=before_slot()) as restarted:
            restarted.wait_for("send finished")
            assert restarted.stop() == 0
        assert received(server) == Counter(emails)  # the server had the cut one: not resent


@SQLITE_ONLY
def test_a_second_signal_exits_at_once_and_a_restart_resends_nothing_unconfirmed(
    project: Project,
) -> None:
    with ServerThread(stall_seconds=60, stall_for={2}) as server:
        config = write_config(project, server, shutdown_grace_seconds=60)
        emails = subscribe(project.db_url, 4)
        with Daemon(config, test_now=just_after_slot()) as daemon:
            server.wait_for_messages(2, timeout=45)
            daemon.proc.send_signal(signal.SIGTERM)
            daemon.wait_for("stopping")
            started = time.monotonic()
            assert daemon.stop(signal.SIGTERM, timeout=10) == -signal.SIGTERM
            assert time.monotonic() - started < 5
            assert "second signal" in daemon.text()
        with Daemon(config, test_now=before_slot()) as restarted:
            restarted.wait_for("send finished")
            assert restarted.stop() == 0
        assert received(server) == Counter(emails)
    assert delivery_states(project.db_url) == {DeliveryStatus.SENT: 3, DeliveryStatus.UNKNOWN: 1}


def test_two_daemons_on_one_database_send_each_message_once_between_them(
    project: Project,
) -> None:
    # More subscribers than one claim batch (200), so both daemons can hold claims at once.
    with ServerThread(stall_seconds=0.01) as server:
        config = write_config(project, server, concurrency=2)
        emails = subscribe(project.db_url, 450)
        lead = before_slot(LEAD + 0.5)  # both daemons fire at the slot, from their own start
        with Daemon(config, test_now=lead, name="a") as a, \
                Daemon(config, test_now=lead, name="b") as b:
            server.wait_for_messages(len(emails), timeout=90)
            # Each one either helped with the send or found the slot's issue already out.
            logs = [d.wait_for("send finished", "slot already had its issue",
                               "another process sent its issue") for d in (a, b)]
            assert [a.stop(), b.stop()] == [0, 0]
        assert received(server) == Counter(emails)
    sent_here = [int(n) for log in logs
                 for n in re.findall(r"send finished .*sent_here=(\d+)", log)]
    assert sum(sent_here) == len(emails)
    assert delivery_states(project.db_url) == {DeliveryStatus.SENT: len(emails)}


def run_once(project: Project) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailer", "--config", str(project.config_path), "run"],
        capture_output=True, text=True, timeout=60, cwd=project.root,
        env={**os.environ, "MAILER_SECRET_KEY": "k", "COLUMNS": "250"})


@SQLITE_ONLY
def test_a_broken_schedules_yaml_at_start_exits_2_naming_the_file_and_line(
    project: Project,
) -> None:
    write_config(project, None)
    edit(project.config_path, "concurrency: 1", "concurrency: lots")
    result = run_once(project)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1
    assert f"{project.config_path}:4: settings.concurrency:" in lines[0]


@SQLITE_ONLY
def test_a_broken_issue_at_start_exits_2_naming_the_file_and_line(project: Project) -> None:
    write_config(project, None)
    sample = project.issues / f"{SAMPLE}.md"
    edit(sample, "send_after: 2026-11-01", "send_after: next week")
    result = run_once(project)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"{sample}:4: send_after: expected a date" in lines[0]


@SQLITE_ONLY
def test_a_broken_edit_while_running_is_refused_and_the_old_schedule_still_sends(
    project: Project,
) -> None:
    with ServerThread() as server:
        config = write_config(project, server, watch_seconds=0)  # SIGHUP only
        emails = subscribe(project.db_url, 2)
        with Daemon(config, test_now=before_slot(3)) as daemon:
            daemon.wait_for("running")
            edit(config, "every: 2 weeks", "every: fortnightly")
            daemon.proc.send_signal(signal.SIGHUP)
            daemon.wait_for("reload refused")
            log = daemon.wait_for("send finished")
            assert daemon.stop() == 0
        assert received(server) == Counter(emails)
    refused = next(line for line in log.splitlines() if "reload refused" in line)
    assert f"{config}:" in refused and "newsletters.ml-issues.schedule.every" in refused
    assert "reason=SIGHUP" in refused
    refused_at, due_at = order(log, "reload refused", "issue due")
    assert refused_at < due_at


@SQLITE_ONLY
def test_a_broken_issue_edit_is_refused_and_the_last_good_version_is_sent(
    project: Project,
) -> None:
    with ServerThread() as server:
        config = write_config(project, server, watch_seconds=0.5)
        subscribe(project.db_url, 2)
        with Daemon(config, test_now=before_slot(3)) as daemon:
            daemon.wait_for("running")
            sample = project.issues / f"{SAMPLE}.md"
            edit(sample, f'subject: "{SUBJECT}"\nstatus: ready',
                 'subject: "Edited"\nstatus: someday')
            log = daemon.wait_for("reload refused")
            log = daemon.wait_for("send finished")
            assert daemon.stop() == 0
        subjects = {m.parsed()["Subject"] for m in server.messages}
    assert subjects == {SUBJECT}
    refused = next(line for line in log.splitlines() if "reload refused" in line)
    assert f"{sample}:3: status:" in refused and "reason=\"files changed\"" in refused
    assert order(log, "reload refused", "issue due") == sorted(order(log, "reload refused",
                                                                     "issue due"))


@SQLITE_ONLY
def test_an_edit_of_the_schedule_is_picked_up_without_a_restart(project: Project) -> None:
    with ServerThread() as server:
        config = write_config(project, server, watch_seconds=0.5)
        emails = subscribe(project.db_url, 2)
        with Daemon(config, test_now=clock(SLOT - timedelta(days=1))) as daemon:
            running = daemon.wait_for("running")
            line = next(line for line in running.splitlines() if " running " in line)
            logged_at = datetime.fromisoformat(line.split()[0].replace("Z", "+00:00"))
            started = datetime.fromisoformat(re.findall(r"clock=(\S+)", line)[0])
            # A few seconds on (the edit is seen within watch_seconds); whole seconds.
            soon = started + (datetime.now(UTC) - logged_at) + timedelta(seconds=3.5)
            local = soon.astimezone(SLOT.tzinfo).replace(microsecond=0, tzinfo=None)
            edit(config, "every: 2 weeks\n      starting: 2026-12-07 09:00",
                 f"every: 1 day\n      starting: '{local}'")
            daemon.wait_for("configuration reloaded")
            log = daemon.wait_for("send finished")
            assert daemon.stop() == 0
        assert received(server) == Counter(emails)
    assert f"slot={local.isoformat()}+01:00" in log


def test_the_starter_of_mailer_init_sends_its_sample_issue_under_mailer_run(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    news = tmp_path / "news"
    done = subprocess.run([sys.executable, "-m", "mailer", "init", str(news)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    emails = subscribe(f"sqlite:///{news}/var/mailer.db", 3)
    with Daemon(news / "schedules.yaml", test_now=before_slot(), args=("--log-json",)) as daemon:
        daemon.wait_for('"send finished"')
        events = [json.loads(line) for line in daemon.text().splitlines()]
        http = next(e["http"] for e in events if e["event"] == "running")
        with urllib.request.urlopen(f"http://{http}/healthz", timeout=10) as response:
            assert response.status == 200
        assert daemon.stop() == 0
    finished = next(e for e in events if e["event"] == "send finished")
    assert finished["sent"] == 3 and finished["slug"] == SAMPLE
    outbox = sorted((news / "var" / "outbox" / "new").iterdir())
    assert len(outbox) == len(emails)
