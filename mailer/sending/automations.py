"""A newsletter's automatic emails: render each once, queue the readers due for it now.

The same engine as issues: each file is rendered once (and again only when it changes),
its send row holds what goes out, and the readers due now are queued as deliveries of that
send, which the sender delivers like any issue's, exactly once per reader. Who is due is
mailer.content.automations.due_window; this runs it for every ready file, in file order,
so a reader due for two steps at once gets them in that order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from mailer.config import Config, Newsletter
from mailer.content import Issue, render
from mailer.content.automations import due_window
from mailer.content.fields import public_text
from mailer.content.rendered import RenderedIssue
from mailer.errors import MailerError
from mailer.rows import DueWindow, SendRow
from mailer.sending.prepare import refuse_missing_fields
from mailer.sending.report import DeliveryObserver, Report, deliver_with_report
from mailer.sending.sender import Sender
from mailer.states import SendStatus
from mailer.store import Store

log = logging.getLogger("mailer.automations")


@dataclass(frozen=True)
class DueEmail:
    """An automatic email with readers to deliver to now."""

    email: Issue
    send: SendRow
    queued: int  # readers this run queued (the rest were queued before and not sent yet)


@dataclass
class QueueRun:
    """What one look at a newsletter's automatic emails found."""

    due: list[DueEmail] = field(default_factory=list)
    errors: list[MailerError] = field(default_factory=list)  # a file that cannot go out


class Renders:
    """Each automatic email rendered once per content: a run every minute re-renders
    nothing that did not change. A new configuration (the daemon's reload: a template or
    base_url may have changed) renders everything again."""

    def __init__(self) -> None:
        self._cache: dict[Issue, RenderedIssue] = {}
        self._config: Config | None = None

    def of(self, config: Config, newsletter: Newsletter, email: Issue) -> RenderedIssue:
        if config is not self._config:
            self._cache, self._config = {}, config
        rendered = self._cache.get(email)
        if rendered is None:
            rendered = render.render_issue(email, newsletter, config.settings,
                                           templates_dir=config.templates_dir)
            self._cache = {k: v for k, v in self._cache.items() if k.path != email.path}
            self._cache[email] = rendered
        return rendered


def window_of(config: Config, email: Issue, send: SendRow, now: datetime) -> DueWindow:
    """Who is due for `email` at `now` (its send's created_at is when it was first seen)."""
    return due_window(email, first_seen=send.created_at, now=now,
                      catch_up=timedelta(hours=config.settings.catch_up_hours))


async def queue_due(config: Config, newsletter: Newsletter, store: Store,
                    emails: Sequence[Issue], *, now: datetime, renders: Renders,
                    take_paused: bool = True) -> QueueRun:
    """Queue the readers due now for each ready automatic email of `newsletter`.

    A broken file (it does not render, or a personal field lacks a default that some
    readers need) is reported in the result and skipped; the others go on. Without
    `take_paused` (the daemon), an email whose delivery paused itself (too many failures:
    a relay refusing everything would otherwise fail a batch of readers every minute)
    waits for its author, as a paused issue does, and is reported too.
    """
    run = QueueRun()
    for email in emails:
        if email.status != "ready":
            continue
        try:
            rendered = renders.of(config, newsletter, email)
            await refuse_missing_fields(store, newsletter, email)
        except MailerError as exc:
            run.errors.append(exc)
            continue
        send = await store.automatic_send(
            newsletter=newsletter.id, slug=email.slug, kind=email.kind, now=now,
            subject=rendered.subject, preheader=rendered.preheader, html=rendered.html,
            text=rendered.text, web_url=rendered.web_url)
        queued = await store.queue_due(send, window_of(config, email, send, now))
        if queued:
            log.info("automatic email due", extra={
                "newsletter": newsletter.id, "email": email.slug, "readers": queued,
                "subject": public_text(send.subject)})
        current = await store.get_send(send.id)
        if current.status == SendStatus.PAUSED and not take_paused:
            run.errors.append(MailerError(
                f"{newsletter.id}/{email.slug} is paused: {current.pause_reason}; "
                "`mailer automations run` goes on with it", file=str(email.path)))
        elif queued or await store.open_deliveries(send.id):
            run.due.append(DueEmail(email, current, queued))
    return run


@dataclass
class AutomationRun:
    """One pass over every newsletter's automatic emails: what went out, what could not."""

    reports: list[Report] = field(default_factory=list)
    errors: list[MailerError] = field(default_factory=list)


async def run_due(config: Config, store: Store, sender: Sender,
                  emails: Mapping[str, Sequence[Issue]], *, now: datetime, renders: Renders,
                  observe: Callable[[Newsletter, DueEmail], DeliveryObserver],
                  take_paused: bool = True) -> AutomationRun:
    """Queue and deliver every automatic email due at `now`, newsletter by newsletter, each
    giving way to an issue (see Sender.deliver); `observe` makes each delivery's observer;
    `take_paused`: see queue_due."""
    run = AutomationRun()
    for newsletter in config.newsletters.values():
        if sender.stopping or sender.relay_failure:
            break
        found = await queue_due(config, newsletter, store, emails.get(newsletter.id, ()),
                                now=now, renders=renders, take_paused=take_paused)
        run.errors += found.errors
        for due in found.due:
            if sender.stopping or sender.relay_failure:
                break  # no relay answered: the next email would wait for them again
            run.reports.append(await deliver_with_report(
                sender, due.send, newsletter, observe(newsletter, due), background=True))
    return run
