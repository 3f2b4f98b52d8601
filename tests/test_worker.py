"""`mailer worker` processes sharing one queued send: each message goes out once."""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys

import pytest

from mailer.states import DeliveryStatus, SendStatus
from mailer.store import Store
from tests import storehelp
from tests.conftest import Project
from tests.smtpd import ServerThread

SUBSCRIBERS = 1500


def mailer(project: Project, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "MAILER_SECRET_KEY": "worker-test-key"}
    return subprocess.Popen([sys.executable, "-m", "mailer", "--config",
                             str(project.config_path), *args],
                            cwd=project.root, env=env, text=True, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.slow
async def test_two_workers_deliver_one_send_between_them_with_no_duplicate(
    project: Project, store: Store,
) -> None:
    emails = [f"reader{i:04}@example.com" for i in range(SUBSCRIBERS)]
    await store.import_subscribers([(e, "") for e in emails], newsletter="ml-issues",
                                   confirmed=True)
    with ServerThread() as server:
        project.configure(smtp_url=f"smtp://127.0.0.1:{server.port}", concurrency=4)
        queued = mailer(project, "send-now", "ml-issues", "--queue")
        out, err = queued.communicate(timeout=60)
        assert queued.returncode == 0, err
        assert f"{SUBSCRIBERS} message(s) open" in out
        assert server.messages == []  # queued, not sent

        workers = [mailer(project, "worker", "--once") for _ in range(2)]
        logs = [w.communicate(timeout=300) for w in workers]
        assert [w.returncode for w in workers] == [0, 0], logs
        copies = collections.Counter(r for m in server.messages for r in m.rcpt_tos)

    assert copies == collections.Counter(emails)
    [send] = await store.sends("ml-issues")
    assert send.status == SendStatus.FINISHED
    assert {d.status for d in await storehelp.deliveries(store, send.id)} == {DeliveryStatus.SENT}
    # Both took a real share of the work.
    shares = [int(m[1]) for _, err in logs
              for m in re.finditer(r"delivered by this worker .*sent_here=(\d+) failed_here=\d+",
                                      err)]
    assert len(shares) == 2 and sum(shares) == SUBSCRIBERS and min(shares) > 0, logs
