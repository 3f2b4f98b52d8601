"""`mailer worker`: a sender-only process that delivers every open send, for scale-out.

Any number of workers, on one machine or several, can share one send on PostgreSQL: the
deliveries are claimed with FOR UPDATE SKIP LOCKED, so no two workers take the same row.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from datetime import datetime
from pathlib import Path

from mailer import logs
from mailer.config import Config
from mailer.sending.prepare import start_or_resume_send
from mailer.sending.sender import Sender
from mailer.states import SendStatus
from mailer.store import Store

log = logging.getLogger("mailer.worker")


async def run_worker(config: Config, *, once: bool = False, poll_seconds: float = 2.0) -> int:
    """Deliver open sends until stopped (SIGTERM/SIGINT), or with `once` until none is open.

    A first signal lets in-flight messages finish and be recorded; a second exits at once
    (what was in flight is settled by the next start, see sends.recover_dead_workers).
    Returns the exit code.
    """
    logs.configure(json_lines=config.settings.log_json)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    store = await Store.open(config.settings.database_url)
    sender_ref: list[Sender] = []

    def on_signal() -> None:
        if stopping.is_set():
            os._exit(130)  # second signal: the author means it
        log.info("stopping: letting in-flight messages finish")
        stopping.set()
        for sender in sender_ref:
            sender.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    try:
        async with Sender(config, store) as sender:
            sender_ref.append(sender)
            while not stopping.is_set():
                delivered = await _deliver_open_sends(config, store, sender, stopping)
                if once and not delivered:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), poll_seconds)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await store.close()
    return 0


async def _deliver_open_sends(config: Config, store: Store, sender: Sender,
                              stopping: asyncio.Event) -> bool:
    """One pass over the newsletters; True if any send had work."""
    worked = False
    for newsletter in config.newsletters.values():
        if stopping.is_set():
            break
        send = await store.unfinished_send(newsletter.id)
        # A paused send waits for the author (`mailer send-now` goes on with it), not for us.
        if send is None or send.status != SendStatus.SENDING:
            continue
        if await store.open_deliveries(send.id) == 0:
            continue
        worked = True
        log.info("delivering %s/%s", newsletter.id, send.slug)
        tally = await sender.deliver(send, newsletter)
        log.info("%s/%s: %d sent, %d failed, %d retried, %d unknown by this worker",
                 newsletter.id, send.slug, tally.sent, tally.failed, tally.retried,
                 tally.unknown)
    return worked


async def queue_issue(config: Config, newsletter_id: str, *, now: datetime,
                      issue_path: Path | None) -> str:
    """Queue the due (or given) issue for the workers without sending from here.

    Raises:
        ContentError: the issue file is broken.
        InputError: the given issue was already sent.
    """
    newsletter = config.newsletter(newsletter_id)
    store = await Store.open(config.settings.database_url)
    try:
        send = await start_or_resume_send(config, newsletter, store, now=now,
                                          issue_path=issue_path)
        if send is None:
            return f"nothing to queue: {newsletter.id} has no due issue"
        open_count = await store.open_deliveries(send.id)
        return (f"queued {newsletter.id}/{send.slug}: {open_count} message(s) open; "
                "`mailer worker` or `mailer run` delivers them")
    finally:
        await store.close()
