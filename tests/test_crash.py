"""`mailer send-now` killed with SIGKILL mid-send, again and again: nobody gets a second copy."""

from __future__ import annotations

import asyncio
import collections
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from mailer.states import DeliveryStatus
from mailer.store import Store
from tests import storehelp
from tests.conftest import Project
from tests.smtpd import ServerThread
from tests.tools import summary_of

# Three kills at random messages, each within the next fifth of the list, leave at least
# two fifths for the resume. The kill points come from a fixed seed (named in every failure
# message), so a failure can be replayed: set SEED to it.
SUBSCRIBERS = 2000
CONCURRENCY = 10
SEED = 20261207


def send_now(project: Project, *, capture: bool = False) -> subprocess.Popen[str]:
    env = {**os.environ, "MAILER_SECRET_KEY": "crash-test-key"}
    output = subprocess.PIPE if capture else subprocess.DEVNULL
    return subprocess.Popen(
        [sys.executable, "-m", "mailer", "--config", str(project.config_path), "send-now",
         "ml-issues", "--yes"], cwd=project.root, env=env, text=True,
        stdout=output, stderr=output, stdin=subprocess.DEVNULL)


async def test_three_sigkills_mid_send_then_a_resume_deliver_everyone_exactly_once(
    project: Project, store: Store,
) -> None:
    rng = random.Random(SEED)
    emails = [f"reader{i:05}@example.com" for i in range(SUBSCRIBERS)]
    await store.import_subscribers([(e, "") for e in emails], newsletter="ml-issues",
                                   confirmed=True)
    kills = 0
    with ServerThread() as server:
        project.configure(smtp_url=f"smtp://127.0.0.1:{server.port}",
                          concurrency=CONCURRENCY)
        for round_ in range(3):
            process = send_now(project)
            # Somewhere in this round's share of the list, at a random message.
            target = len(server.messages) + rng.randrange(50, SUBSCRIBERS // 5)
            deadline = time.monotonic() + 120
            while len(server.messages) < target and process.poll() is None:
                assert time.monotonic() < deadline, "send-now made no progress"
                await asyncio.sleep(0.005)
            assert process.poll() is None, \
                f"seed {SEED}: send-now ended before kill {round_ + 1}"
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            kills += 1
        final = send_now(project, capture=True)
        output, errors = final.communicate(timeout=300)
        assert final.returncode in (0, 1), errors
        copies = collections.Counter(r for m in server.messages for r in m.rcpt_tos)

    [send] = await store.sends("ml-issues")
    rows = {d.email: d.status for d in await storehelp.deliveries(store, send.id)}
    unknown = {e for e, status in rows.items() if status == DeliveryStatus.UNKNOWN}
    seen = (f"seed {SEED}: {kills} kills, {len(unknown)} deliveries recorded unknown, "
            f"{len(server.messages)} messages at the server")
    assert len(unknown) <= CONCURRENCY * kills, seen
    assert max(copies.values()) == 1, f"{seen}: someone got a second copy"
    # Everyone not unknown got exactly one message and is recorded sent.
    for email in emails:
        if email not in unknown:
            assert copies[email] == 1 and rows[email] == DeliveryStatus.SENT, f"{seen}: {email}"
    assert final.returncode == (1 if unknown else 0), f"{seen}\n{output}{errors}"
    # The final summary counts the whole send: everyone sent but the unknown ones.
    assert summary_of(output) == {"sent": SUBSCRIBERS - len(unknown), "failed": 0,
                                  "retrying": 0, "unknown": len(unknown), "skipped": 0,
                                  "possible duplicates": 0}, seen


pytestmark = pytest.mark.slow


async def test_a_kill_before_the_body_left_resends_and_a_kill_after_it_does_not(
    project: Project, store: Store,
) -> None:
    before, after = "before@example.com", "after@example.com"
    await store.import_subscribers([(before, ""), (after, "")], newsletter="ml-issues",
                                   confirmed=True)
    # One transaction hangs at RCPT (nothing of the message has left), the other after
    # the server stored the whole message (its reply never comes).
    with ServerThread(stall_rcpt={before: 60}, stall_seconds=60, stall_for={after}) as server:
        project.configure(smtp_url=f"smtp://127.0.0.1:{server.port}", concurrency=2)
        process = send_now(project)
        # The server holds `after`'s message, so its data mark is already durable; give
        # `before` a moment to be stuck at its RCPT.
        await asyncio.to_thread(server.wait_for_messages, 1, timeout=60)
        await asyncio.sleep(1.0)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        server.stall_rcpt.clear()
        final = send_now(project, capture=True)
        output, errors = final.communicate(timeout=120)

    [send] = await store.sends("ml-issues")
    rows = {d.email: d.status for d in await storehelp.deliveries(store, send.id)}
    assert rows == {before: DeliveryStatus.SENT, after: DeliveryStatus.UNKNOWN}
    copies = collections.Counter(r for m in server.messages for r in m.rcpt_tos)
    assert copies == {before: 1, after: 1}
    assert final.returncode == 1
    assert summary_of(output) == {"sent": 1, "failed": 0, "retrying": 0, "unknown": 1,
                                  "skipped": 0, "possible duplicates": 0}, output
