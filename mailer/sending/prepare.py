"""What to send now, decided in one place for every entry point.

An interrupted send is finished before anything else (CONTRACT); otherwise the given or
due issue is picked, every policy applied once (drafts, send_after, already sent, Gmail's
clipping, a slot already served), rendered once and its send opened. The CLI, the daemon's
slots and `send-now --queue` only present the answer: a send ready to deliver, or a Skip
with its reason. In two phases (`choose`, then `open_prepared`) so `send-now` can ask
before anything is stored.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from mailer import content
from mailer.config import Config, Newsletter
from mailer.content.rendered import RenderedIssue
from mailer.errors import ContentError, InputError, MailerError
from mailer.rows import SendRow

# Re-exported while mailer.runners.scheduler still imports it from here.
from mailer.states import SendKind, SendStatus
from mailer.store import Store

log = logging.getLogger("mailer.sends")


class SkipReason(enum.Enum):
    """Why nothing is sent now; the value is the reason as a person reads it."""

    NOTHING_TO_RESUME = "no interrupted or paused send"
    PAUSED = "a paused send waits for its author"
    UNFINISHED_FIRST = "another send is not finished"
    ALREADY_SENT = "this issue was already sent"
    NO_DUE_ISSUE = "no due issue"
    CLIPPED = "Gmail would clip the issue"
    SLOT_SERVED = "the slot already had its issue"
    SLOT_TAKEN = "another process sent its issue"


@dataclass(frozen=True)
class Skip:
    """Nothing to send now, and why. `fields` name what a log line or message shows."""

    reason: SkipReason
    newsletter: str
    slug: str | None = None
    path: Path | None = None  # the issue file concerned
    detail: str = ""  # the clipping warning, the pause reason
    fields: Mapping[str, str] = field(default_factory=dict)

    def error(self) -> MailerError | None:
        """The error a command reports for this skip; None when there is just nothing to do."""
        where = str(self.path) if self.path else None
        if self.reason is SkipReason.UNFINISHED_FIRST:
            return InputError(f"the send of {self.slug!r} is not finished; finish it first "
                              f"with `mailer send-now {self.newsletter}`", file=where)
        if self.reason is SkipReason.ALREADY_SENT:
            return InputError(self.reason.value, file=where)
        if self.reason is SkipReason.CLIPPED:
            return ContentError(f"{self.detail}, or add --force to send it anyway", file=where)
        return None


@dataclass(frozen=True)
class Prepared:
    """An issue chosen and rendered once, its send not opened yet."""

    newsletter: Newsletter
    issue: content.Issue
    rendered: RenderedIssue
    slot_start: datetime | None = None  # opened only if the slot has had no issue yet


@dataclass(frozen=True)
class Ready:
    """A send to deliver now."""

    send: SendRow
    resumed: bool  # an interrupted or paused send, rather than one just opened


def skip_reasons(issues: Sequence[content.Issue], sent: Collection[str], now: datetime
                 ) -> dict[str, str]:
    """Why no issue is due: the unsent drafts, and the ready issues whose send_after is ahead."""
    unsent = [i for i in issues if i.slug not in sent]
    drafts = [i.slug for i in unsent if i.status == "draft"]
    waiting = [f"{i.slug} ({i.send_after.isoformat()})" for i in unsent
               if i.status == "ready" and i.send_after is not None and i.send_after > now]
    return {"drafts": ", ".join(drafts) or "none", "send_after_ahead": ", ".join(waiting) or "none"}


def refuse_clipped(prepared: Prepared, *, force: bool) -> Skip | None:
    """The Gmail clipping guard: a Skip for an issue whose HTML Gmail would clip, unless
    `force`. An interrupted send never meets it: it is finished whatever its size."""
    if not prepared.rendered.clipped or force:
        return None
    from mailer.content import render

    return Skip(SkipReason.CLIPPED, prepared.newsletter.id, slug=prepared.issue.slug,
                path=prepared.issue.path, detail=render.clip_warning(prepared.rendered))


async def pick_issue(config: Config, newsletter: Newsletter, store: Store, *, now: datetime,
                     issue_path: Path | None = None,
                     issues: Sequence[content.Issue] | None = None,
                     sent: Collection[str] | None = None) -> Prepared | Skip:
    """The given issue (sent before: a Skip), else the due one, rendered; sends in progress
    are not looked at (a dry run and a test copy use this alone).

    `issues` are the parsed issues to pick from (the daemon keeps the last good ones when an
    edit breaks a file); by default the folder is read. `sent` are the slugs never to pick
    again; by default every issue ever started.

    Raises:
        ContentError: an issue file is broken, or a personal field without a default names
            what some confirmed subscribers lack (see refuse_missing_fields).
        RenderError: the issue does not render.
    """
    if sent is None:
        sent = await store.sent_slugs(newsletter.id)
    if issue_path is not None:
        issue = content.load_issue(issue_path, tz=newsletter.tz)
        if issue.kind is not SendKind.ISSUE:
            raise InputError("this is an automatic email, sent to each reader when they are "
                             "due for it: `mailer run` or `mailer automations run` sends it",
                             file=str(issue_path))
        if issue.slug in sent:
            return Skip(SkipReason.ALREADY_SENT, newsletter.id, slug=issue.slug, path=issue_path)
    else:
        if issues is None:
            issues = content.load_issues(newsletter.issues, tz=newsletter.tz)
        due = content.pick_due_issue(issues, sent, now)
        if due is None:
            return Skip(SkipReason.NO_DUE_ISSUE, newsletter.id,
                        fields=skip_reasons(issues, sent, now))
        issue = due
    # Here, not at the top: a worker or a resumed send renders nothing, and the renderer
    # (Jinja2, MJML, Markdown) is megabytes of memory it would keep for nothing.
    from mailer.content import render

    rendered = render.render_issue(issue, newsletter, config.settings,
                                   templates_dir=config.templates_dir)
    await refuse_missing_fields(store, newsletter, issue)
    return Prepared(newsletter, issue, rendered)


async def refuse_missing_fields(store: Store, newsletter: Newsletter,
                                issue: content.Issue) -> None:
    """Stop an issue whose personal field has no default while some confirmed subscribers
    lack its value (an empty gap in their email, or a Subject that reads wrong).

    Raises:
        ContentError: naming the file and line of the first such field and how many lack it.
    """
    checked: set[str] = set()
    for use in issue.field_uses():
        field = use.field
        if field.default is not None or field.path == "email" or field.path in checked:
            continue
        checked.add(field.path)
        lacking = await store.lacking(newsletter.id, name=field.path == "name", key=field.key)
        if lacking:
            what = "name" if field.path == "name" else f"attribute {field.key}"
            raise ContentError(
                f"{field.source()} has no default, and {lacking} confirmed subscriber(s) "
                f"of {newsletter.id} have no {what}: add | default(\"…\") or fill it in",
                file=str(issue.path), line=use.line)


async def choose(config: Config, newsletter: Newsletter, store: Store, *, now: datetime,
                 issue_path: Path | None = None, issues: Sequence[content.Issue] | None = None,
                 force: bool = False, slot_start: datetime | None = None,
                 resume_only: bool = False, take_paused: bool = True,
                 ) -> Ready | Prepared | Skip:
    """Phase one: the unfinished send (Ready), else the issue to open a send of (Prepared),
    else why not (Skip). Nothing is stored.

    `force` sends an issue Gmail would clip; `slot_start` (a scheduled slot began then)
    skips when a send was made since; `resume_only` never picks a new issue; without
    `take_paused` a paused send is a Skip (the daemon leaves it to its author).

    Raises:
        ContentError: an issue file is broken.
        RenderError: the issue does not render.
    """
    unfinished = await store.unfinished_send(newsletter.id)
    if unfinished is not None:
        if issue_path is not None and issue_path.stem != unfinished.slug:
            return Skip(SkipReason.UNFINISHED_FIRST, newsletter.id, slug=unfinished.slug,
                        path=issue_path)
        if unfinished.status == SendStatus.PAUSED and not take_paused:
            return Skip(SkipReason.PAUSED, newsletter.id, slug=unfinished.slug,
                        detail=unfinished.pause_reason or "")
        return Ready(unfinished, resumed=True)
    if resume_only:
        return Skip(SkipReason.NOTHING_TO_RESUME, newsletter.id)
    # Sent slugs first, the latest send second: a send another process starts between the
    # two reads then shows as this slot's, not as "no due issue".
    sent = await store.sent_slugs(newsletter.id)
    if slot_start is not None:
        latest = await store.latest_send(newsletter.id)
        if latest is not None and latest.created_at >= slot_start:
            return Skip(SkipReason.SLOT_SERVED, newsletter.id, slug=latest.slug)
    picked = await pick_issue(config, newsletter, store, now=now, issue_path=issue_path,
                              issues=issues, sent=sent)
    if isinstance(picked, Skip):
        return picked
    refused = refuse_clipped(picked, force=force)
    if refused is not None:
        return refused
    return Prepared(newsletter, picked.issue, picked.rendered, slot_start=slot_start)


async def open_prepared(store: Store, prepared: Prepared) -> Ready | Skip:
    """Phase two: open the send of a prepared issue, queued for every confirmed subscriber
    (or share the send another process just opened of the same issue)."""
    rendered, newsletter = prepared.rendered, prepared.newsletter
    fields = dict(newsletter=newsletter.id, slug=prepared.issue.slug, subject=rendered.subject,
                  preheader=rendered.preheader, html=rendered.html, text=rendered.text,
                  web_url=rendered.web_url)
    if prepared.slot_start is None:
        send, created = await store.open_send(**fields)
    else:
        found, created = await store.open_send_for_slot(slot_start=prepared.slot_start,
                                                        **fields)
        if found is None:
            return Skip(SkipReason.SLOT_TAKEN, newsletter.id)
        send = found
    if created:
        log.info("send queued", extra={"newsletter": newsletter.id, "slug": send.slug})
    return Ready(send, resumed=False)


async def prepare(config: Config, newsletter: Newsletter, store: Store, *, now: datetime,
                  issue_path: Path | None = None, issues: Sequence[content.Issue] | None = None,
                  force: bool = False, slot_start: datetime | None = None,
                  resume_only: bool = False, take_paused: bool = True) -> Ready | Skip:
    """Both phases at once: the send to deliver now, or why there is none (see choose).

    Raises:
        ContentError: an issue file is broken.
        RenderError: the issue does not render.
    """
    chosen = await choose(config, newsletter, store, now=now, issue_path=issue_path,
                          issues=issues, force=force, slot_start=slot_start,
                          resume_only=resume_only, take_paused=take_paused)
    if isinstance(chosen, Prepared):
        return await open_prepared(store, chosen)
    return chosen


async def start_or_resume_send(
    config: Config, newsletter: Newsletter, store: Store, *, now: datetime,
    issue_path: Path | None = None, issues: Sequence[content.Issue] | None = None,
    slot_start: datetime | None = None, force: bool = False,
) -> SendRow | None:
    """prepare() for a caller that only wants the send: None when there is nothing to send.

    Raises:
        ContentError: an issue file is broken, or Gmail would clip the issue (not `force`).
        InputError: the given issue was already sent, or another send is not finished.
    """
    result = await prepare(config, newsletter, store, now=now, issue_path=issue_path,
                           issues=issues, force=force, slot_start=slot_start)
    if isinstance(result, Skip):
        error = result.error()
        if error is not None:
            raise error
        return None
    return result.send
