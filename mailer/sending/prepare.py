"""Starting and resuming the send of an issue: the unfinished one first, else the due one."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

from mailer import content
from mailer.config import Config, Newsletter
from mailer.content import render
from mailer.delivery.message import Letter, letter_of
from mailer.errors import InputError
from mailer.states import SendStatus, utcnow
from mailer.store import Store
from mailer.store.models import Send

log = logging.getLogger("mailer.sends")

HEARTBEAT_TIMEOUT = timedelta(seconds=60)


def new_worker_id() -> str:
    """host:pid:random — the pid lets a restart on the same host see at once that we died."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def recover_dead_workers(store: Store, *, now: datetime | None = None) -> int:
    """Release what crashed senders held; returns how many deliveries became UNKNOWN.

    A worker is dead when it ran on this host and its pid is gone, or when its heartbeat
    is older than HEARTBEAT_TIMEOUT (another host, or a hung process).
    """
    now = now or utcnow()
    host = socket.gethostname()
    dead = [
        w.id for w in await store.workers()
        if (w.host == host and not _pid_alive(w.pid)) or now - w.heartbeat_at > HEARTBEAT_TIMEOUT
    ]
    unknown = await store.release_dead_workers(dead)
    if dead:
        log.warning("released %d dead sender(s); %d deliveries now unknown", len(dead), unknown)
    return unknown


def letter_for(send: Send, newsletter: Newsletter, base_url: str) -> Letter:
    """The per-issue message parts, taken from the send row so a resume sends the same bytes."""
    rendered = render.RenderedIssue(subject=send.subject, preheader=send.preheader,
                                    html=send.html, text=send.text, web_url=send.web_url)
    return letter_of(newsletter, rendered, base_url=base_url)


async def start_or_resume_send(
    config: Config, newsletter: Newsletter, store: Store, *, now: datetime,
    issue_path: Path | None = None, issues: Sequence[content.Issue] | None = None,
    slot_start: datetime | None = None,
) -> Send | None:
    """The send to work on now: an unfinished one first (CONTRACT), else a new send of the
    given or due issue, queued for every confirmed subscriber. None when nothing is due.

    `issues` are the parsed issues to pick from (the daemon keeps the last good ones when
    an edit breaks a file); by default the folder is read. With `slot_start` (a scheduled
    slot began then) a new send is made only if none was made since: None otherwise.

    Raises:
        ContentError: the issue file is broken.
        InputError: the given issue was already sent.
    """
    unfinished = await store.unfinished_send(newsletter.id)
    if unfinished is not None:
        if issue_path is None or issue_path.stem == unfinished.slug:
            log.info("resuming the interrupted send of %s/%s", newsletter.id, unfinished.slug)
            return unfinished
        raise InputError(f"the send of {unfinished.slug!r} is not finished; finish it first "
                         f"with `mailer send-now {newsletter.id}`", file=str(issue_path))
    tz = newsletter.tz
    if issue_path is not None:
        issue = content.load_issue(issue_path, tz=tz)
        if issue.slug in await store.sent_slugs(newsletter.id):
            raise InputError("this issue was already sent", file=str(issue_path))
    else:
        if issues is None:
            issues = content.load_issues(newsletter.issues, tz=tz)
        due = content.pick_due_issue(issues, await store.sent_slugs(newsletter.id), now)
        if due is None:
            log.debug("no due issue for %s", newsletter.id)
            return None
        issue = due
    rendered = render.render_issue(issue, newsletter, config.settings,
                                   templates_dir=config.templates_dir)
    fields = dict(newsletter=newsletter.id, slug=issue.slug, subject=rendered.subject,
                  preheader=rendered.preheader, html=rendered.html, text=rendered.text,
                  web_url=rendered.web_url)
    if slot_start is None:
        send, created = await store.open_send(**fields)
    else:
        found, created = await store.open_send_for_slot(slot_start=slot_start, **fields)
        if found is None:
            log.info("the slot of %s already had its issue", newsletter.id)
            return None
        send = found
    if created:
        log.info("queued %s/%s", newsletter.id, issue.slug)
    return send


async def finish_if_done(store: Store, send_id: int) -> bool:
    """Mark the send finished when no delivery is open any more; True if it is."""
    if await store.open_deliveries(send_id) == 0:
        await store.set_send_status(send_id, SendStatus.FINISHED)
        return True
    return False
