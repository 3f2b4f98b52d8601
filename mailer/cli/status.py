"""`mailer status`: each newsletter's schedule and last send, every send's progress and
bounce and complaint rates, and what needs a look (paused sends, failures, rates past the
thresholds mailbox providers publish)."""

from __future__ import annotations

from datetime import timedelta

from rich import box
from rich.markup import escape
from rich.table import Column, Table

from mailer.bounces import Level, ReturnRates
from mailer.bounces.rates import (
    BOUNCE_ALARM,
    BOUNCE_WARNING,
    COMPLAINT_ALARM,
    COMPLAINT_WARNING,
)
from mailer.cli.common import now, open_store, out, run_async
from mailer.cli.ports import StatusStore
from mailer.config import Config
from mailer.content.automations import describe_after, load_automatic_emails
from mailer.content.issues import WELCOME_FILE
from mailer.errors import ContentError
from mailer.rows import DeliveryCounts, DueWindow, SendRow
from mailer.schedule import describe, next_fire_time
from mailer.sending.automations import window_of
from mailer.states import SendStatus, utcnow

_STYLE = {Level.OK: "", Level.WARNING: "yellow", Level.ALARM: "bold red"}


def show(cfg: Config, newsletter: str | None) -> None:
    """Print the status of `newsletter` (None: every newsletter)."""
    if newsletter:
        cfg.newsletter(newsletter)

    async def go() -> tuple[Table, tuple[Table, Table | None], Table | None, list[str]]:
        async with open_store(cfg) as store:
            return (await _schedules(cfg, store, newsletter), await _sends(store, newsletter),
                    await _automatic(cfg, store, newsletter),
                    await _problems(cfg, store, newsletter))

    schedule_table, (sends_table, after_table), automatic, notes = run_async(go())
    out.print(schedule_table)
    out.print(sends_table)
    if after_table is not None:
        out.print(after_table)
    if automatic is not None:
        out.print(automatic)
    for line in notes:
        out.print(line, highlight=False, markup=False, soft_wrap=True)


async def _schedules(cfg: Config, store: StatusStore, newsletter: str | None) -> Table:
    shown = [cfg.newsletter(newsletter)] if newsletter else list(cfg.newsletters.values())
    table = Table(Column("newsletter", no_wrap=True), "schedule",
                  Column("next run", no_wrap=True), Column("last send", no_wrap=True),
                  "state", "sent", "failed", "open", box=box.SIMPLE_HEAD, pad_edge=False,
                  collapse_padding=True)
    for n in shown:
        spec = n.schedule
        upcoming = next_fire_time(spec, after=now(cfg)) if spec else None
        row = [n.id, describe(spec) if spec else "none (send-now only)",
               f"{upcoming:%Y-%m-%d %H:%M %Z}" if upcoming else "-"]
        last = await store.latest_send(n.id)
        if last is None:
            table.add_row(*row, "never", "", "", "", "")
            continue
        c = DeliveryCounts.of(await store.delivery_counts(last.id))
        table.add_row(*row, f"{last.slug} ({last.created_at:%Y-%m-%d %H:%M} UTC)",
                      last.status.value, str(c.sent), str(c.failed), str(c.open))
    return table


async def _sends(store: StatusStore, newsletter: str | None) -> tuple[Table, Table | None]:
    """Every send's progress, and what came after it when anything did: two tables, so
    each fits a terminal 80 columns wide."""
    progress = Table(Column("issue", no_wrap=True), "state", "sent", "failed", "open",
                     "unknown", "skipped", Column("started (UTC)", no_wrap=True),
                     box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    # possible duplicates: resent once after a cut with no reply (the reader may have two).
    # hard/soft bounces, complaints: returned messages per message sent, coloured past the
    # providers' thresholds (mailer.bounces.rates).
    after = Table(Column("issue", no_wrap=True), "possible duplicates", "hard bounces",
                  "soft bounces", "complaints", box=box.SIMPLE_HEAD, pad_edge=False,
                  collapse_padding=True, title="after sending", title_justify="left")
    anything_after = False
    for send in await store.sends(newsletter):
        name = f"{send.newsletter}/{send.slug}"
        c = DeliveryCounts.of(await store.delivery_counts(send.id))
        progress.add_row(name, send.status.value, str(c.sent), str(c.failed), str(c.open),
                         str(c.unknown), str(c.skipped), f"{send.created_at:%Y-%m-%d %H:%M}")
        dups = await store.possible_duplicates(send.id)
        r = await _rates(store, send, c)
        anything_after = anything_after or bool(dups or r.hard or r.soft or r.complaints)
        after.add_row(name, str(dups), _percent(r.rate(r.hard), r.hard_level),
                      _percent(r.rate(r.soft)),
                      _percent(r.rate(r.complaints), r.complaint_level, digits=2))
    return progress, after if anything_after else None


async def _automatic(cfg: Config, store: StatusStore, newsletter: str | None) -> Table | None:
    """Each automatic email: when it goes, and how many readers had it, have it queued,
    are still to get it, or were refused; None when no newsletter has any."""
    table = Table(Column("automatic email", no_wrap=True), "goes", "sent", "queued",
                  "waiting", "failed", box=box.SIMPLE_HEAD, pad_edge=False,
                  collapse_padding=True, title="automatic emails", title_justify="left")
    shown = [cfg.newsletter(newsletter)] if newsletter else list(cfg.newsletters.values())
    for n in shown:
        try:
            files = {e.slug: e for e in load_automatic_emails(n.issues, tz=n.tz)}
        except ContentError as exc:  # the status of what went out still shows
            files = {}
            table.add_row(f"{n.id}/…", f"[red]{escape(str(exc))}[/red]", "", "", "", "")
        sends = {send.slug: send for send in await store.automatic_sends(n.id)}
        for slug in sorted(set(files) | set(sends), key=lambda s: (s != WELCOME_FILE, s)):
            email, send = files.get(slug), sends.get(slug)
            goes = (describe_after(email) + (" (draft)" if email.status == "draft" else "")
                    if email is not None else "file removed")
            if send is None:  # never run since it was written
                table.add_row(f"{n.id}/{slug}", goes, "0", "0", "-", "0")
                continue
            window = window_of(cfg, email, send, now(cfg)) if email is not None else None
            c = await store.automatic_counts(send, window or DueWindow(
                not_before=send.created_at, due_by=send.created_at))
            table.add_row(f"{n.id}/{slug}", goes, str(c.sent), str(c.queued),
                          str(c.waiting) if window is not None else "-", str(c.failed))
    return table if table.row_count else None


async def _problems(cfg: Config, store: StatusStore, newsletter: str | None) -> list[str]:
    """Why unfinished sends wait, their current rate, the failures with replies, and rates
    of bounces and complaints past what mailbox providers accept."""
    lines = []
    for send in await store.sends(newsletter):
        name = f"{send.newsletter}/{send.slug}"
        if send.status == SendStatus.PAUSED:
            lines.append(f"{name} is paused: {send.pause_reason}; "
                         f"`mailer send-now {send.newsletter}` goes on with it")
        elif send.status == SendStatus.SENDING:
            minute = await store.sent_since(send.id, utcnow() - timedelta(minutes=1))
            lines.append(f"{name} is sending: {minute / 60:.1f} messages/s "
                         "over the last minute")
        carried = await store.relay_counts(send.id)
        if len(carried) > 1 or len(cfg.settings.smtp_urls) > 1:
            lines.append(f"{name} went through " + ", ".join(
                f"{relay}: {n} message(s)" for relay, n in carried.items()))
        for email, _, reply in await store.failures(send.id, limit=10):
            lines.append(f"  failed {email}: {reply}")  # the reply starts with its code
        for email, kind, reply in await store.bounced_later(send.id, limit=10):
            lines.append(f"  bounced later ({kind}) {email}: {reply}")
        lines += _rate_notes(name, await _rates(
            store, send, DeliveryCounts.of(await store.delivery_counts(send.id))))
    shown = [cfg.newsletter(newsletter)] if newsletter else list(cfg.newsletters.values())
    for n in shown:  # an automatic email paused by the same rule waits for its author too
        for send in await store.automatic_sends(n.id):
            if send.status == SendStatus.PAUSED:
                lines.append(f"{n.id}/{send.slug} is paused: {send.pause_reason}; "
                             "`mailer automations run` goes on with it")
    return lines


def _rate_notes(name: str, r: ReturnRates) -> list[str]:
    lines = []
    if r.complaint_level != Level.OK:
        limit = COMPLAINT_ALARM if r.complaint_level == Level.ALARM else COMPLAINT_WARNING
        lines.append(f"{name}: {r.complaints} complaint(s), {r.rate(r.complaints):.2%} of "
                     f"{r.sent} sent, at or past {limit:.1%} (Gmail and Yahoo: stay below "
                     f"{COMPLAINT_WARNING:.1%}, never reach {COMPLAINT_ALARM:.1%})")
    if r.hard_level != Level.OK:
        limit = BOUNCE_ALARM if r.hard_level == Level.ALARM else BOUNCE_WARNING
        lines.append(f"{name}: {r.hard} hard bounce(s), {r.rate(r.hard):.1%} of {r.sent} "
                     f"sent, at or past {limit:.0%} (senders are asked to stay below "
                     f"{BOUNCE_WARNING:.0%}; Amazon SES reviews accounts at "
                     f"{BOUNCE_ALARM:.0%}): is the list old or bought?")
    if r.policy:
        lines.append(f"{name}: {r.policy} refused by the receiver's policy (5.7.x: "
                     "reputation, authentication or content), counted against the send")
    return lines


async def _rates(store: StatusStore, send: SendRow, counts: DeliveryCounts) -> ReturnRates:
    # A delivery that bounced later stays `sent` (the relay took it): the rate's base.
    return ReturnRates.of(await store.return_counts(send.id), sent=counts.sent)


def _percent(rate: float, level: Level = Level.OK, *, digits: int = 1) -> str:
    text = f"{rate:.{digits}%}" if rate else "-"
    style = _STYLE[level]
    return f"[{style}]{text}[/{style}]" if style else text
