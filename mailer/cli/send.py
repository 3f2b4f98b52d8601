"""The work behind `mailer send-now`: the question, the progress bar, the summary and the
exit code. What to send is decided by mailer.sending.prepare; this only presents it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from mailer import logs
from mailer.config import Config, Newsletter
from mailer.delivery.message import letter_of
from mailer.delivery.signing import DkimSigner, signer_from_settings
from mailer.errors import InputError
from mailer.rows import DeliveryCounts, Outcome, SendRow
from mailer.sending import prepare
from mailer.sending.report import Report, deliver_with_report
from mailer.sending.sender import Sender
from mailer.states import DeliveryStatus, SendStatus
from mailer.store import Store


@contextlib.contextmanager
def command_logs(cfg: Config) -> Iterator[None]:
    """Log records of the command go to stderr in the daemon's format while it runs; the
    process's logging is put back afterwards (the command may run inside another program)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    # Warnings only: a command's own output is its report, the log adds what went wrong.
    logs.configure(json_lines=cfg.settings.log_json, level=logging.WARNING)
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


async def send_now(cfg: Config, newsletter: Newsletter, *, issue_path: Path | None,
                   dry_run: bool, to: str | None, yes: bool, resend_unknown: bool,
                   now: datetime, console: Console, force: bool = False,
                   resume: bool = False) -> int:
    """Run `send-now`; returns the exit code (0 only when every recipient got the issue).

    An issue Gmail would clip is refused (ContentError) unless `force`; an interrupted send
    is finished whatever its size.

    Raises:
        ConfigError: the DKIM setup is incomplete or its key unusable (nothing is sent).
        ContentError: an issue file is broken, or Gmail would clip the issue.
        InputError: the given issue was already sent, another send is unfinished, or there
            is no terminal to ask on without `yes`.
    """
    # What sends needs its DKIM setup whole, refused before a send is even opened.
    signer = signer_from_settings(cfg.settings, file=str(cfg.path)) if to or not dry_run else None
    async with Store.open(cfg.settings.database_url) as store:
        if dry_run or to:
            return await _dry_run_or_test_copy(cfg, newsletter, store, issue_path=issue_path,
                                               to=to, now=now, console=console, force=force,
                                               signer=signer)
        chosen = await prepare.choose(cfg, newsletter, store, now=now, issue_path=issue_path,
                                      force=force, resume_only=resume)
        if isinstance(chosen, prepare.Prepared):
            _warn_if_forced(chosen, console)
            # Counted only to ask: on a long list the count costs the first message time.
            if not yes and not _confirm(console, f"Send {chosen.issue.subject!r} to "
                                        f"{await store.count_recipients(newsletter.id)} "
                                        f"subscriber(s) of {newsletter.id}?"):
                console.print("nothing sent")
                return 1
            chosen = await prepare.open_prepared(store, chosen)
        if isinstance(chosen, prepare.Skip):
            return _skipped(chosen, console)
        if resend_unknown:
            await store.requeue_unknown(chosen.send.id)
        return await _deliver_with_progress(cfg, newsletter, store, chosen.send, console)


def _skipped(skip: prepare.Skip, console: Console) -> int:
    error = skip.error()
    if error is not None:
        raise error
    if skip.reason is prepare.SkipReason.NOTHING_TO_RESUME:
        console.print(f"nothing to resume: {skip.newsletter} has no interrupted or paused send")
    else:
        console.print(f"nothing to send: {skip.newsletter} has no due issue "
                      "(ready, send_after passed, not sent yet)")
    return 0


def _warn_if_forced(prepared: prepare.Prepared, console: Console) -> None:
    # Past the guard and still clipped: --force said to send it anyway.
    if prepared.rendered.clipped:
        from mailer.content import render

        console.print(f"[yellow]warning: {prepared.issue.path}: "
                      f"{render.clip_warning(prepared.rendered)}; sending anyway (--force)"
                      "[/yellow]", soft_wrap=True)


def _confirm(console: Console, question: str) -> bool:
    if not sys.stdin.isatty():
        raise InputError("not a terminal to ask on: add --yes to send", field="send-now")
    return console.input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


async def _dry_run_or_test_copy(cfg: Config, newsletter: Newsletter, store: Store, *,
                                issue_path: Path | None, to: str | None, now: datetime,
                                console: Console, force: bool, signer: DkimSigner | None,
                                ) -> int:
    # A given issue is shown and test-copied even when it went out already.
    picked = await prepare.pick_issue(cfg, newsletter, store, now=now, issue_path=issue_path,
                                      sent=set() if issue_path else None)
    if isinstance(picked, prepare.Skip):
        console.print(f"nothing to send: {newsletter.id} has no due issue")
        return 0
    letter = letter_of(newsletter, picked.rendered, base_url=cfg.settings.base_url)
    # Here, not at the top: a resumed send-now renders nothing and loads no renderer.
    from mailer.content import render

    if to:
        from mailer.addresses import normalize_email
        from mailer.delivery.single import send_one
        from mailer.sending.preview import sample_message

        address = normalize_email(to, where="--to")
        refused = prepare.refuse_clipped(picked, force=force)
        error = refused.error() if refused is not None else None
        if error is not None:
            raise error
        _warn_if_forced(picked, console)
        data = sample_message(cfg, letter, address, "")
        if signer is not None:  # signed as the real send signs, so the copy shows DKIM too
            data = signer.sign(data)
        code, reply = await send_one(cfg, letter.sender_address, address, data)
        console.print(f"test copy of {picked.issue.slug!r} sent to {address}: {code} {reply}",
                      markup=False)
        return 0
    count = await store.count_recipients(newsletter.id)
    size = picked.rendered.html_bytes
    console.print(f"dry run: {picked.issue.slug!r} ({picked.issue.subject!r}) would go to "
                  f"{count} confirmed subscriber(s) of {newsletter.id}; "
                  f"HTML {size / 1024:.1f} KB; nothing sent")
    if picked.rendered.clipped:
        console.print(f"[yellow]warning: {picked.issue.path}: "
                      f"{render.clip_warning(picked.rendered)}; "
                      "send-now refuses it without --force[/yellow]", soft_wrap=True)
    return 0


def progress_columns(*, remaining: bool = True) -> list[ProgressColumn]:
    """A ProgressBar's columns: the send's name, the bar, done/total, [time left,] retries."""
    # markup=False: a slug is the author's text, not rich markup (and parsing it on every
    # refresh would load rich's emoji table).
    return [TextColumn("{task.description}", style="bold", markup=False), BarColumn(),
            MofNCompleteColumn(), *([TimeRemainingColumn()] if remaining else []),
            TextColumn("{task.fields[waiting]}", markup=False)]


class ProgressBar:
    """The delivery report as a rich progress bar (a DeliveryObserver).

    Temporary refusals (greylisting: 451 on RCPT) are retried after everyone else: while
    only they are left, a line says how many wait and when the next retry is due, so a
    send that seems to stand still says why.
    """

    def __init__(self, progress: Progress, label: str) -> None:
        self.progress = progress
        self.task = progress.add_task(label, total=None, waiting="")
        self.total = 0
        self.done = 0
        self.retries: dict[int, datetime] = {}  # delivery id -> when it is tried again
        self._said: tuple[int, datetime] | None = None

    def started(self, send: SendRow, counts: DeliveryCounts) -> None:
        self.total = counts.open
        self.progress.update(self.task, total=counts.open)

    def delivered(self, outcome: Outcome) -> None:
        if outcome.status == DeliveryStatus.PENDING:  # a retry comes later
            if outcome.retry_at is not None:
                self.retries[outcome.delivery_id] = outcome.retry_at
        else:
            self.retries.pop(outcome.delivery_id, None)
            self.done += 1
            self.progress.advance(self.task)
        self._show_retries()

    def _show_retries(self) -> None:
        if not self.retries:
            self.progress.update(self.task, waiting="")
            return
        due = min(self.retries.values())
        words = (f"{len(self.retries)} waiting for a retry (temporary refusal), next at "
                 f"{due:%H:%M:%S} UTC")
        self.progress.update(self.task, waiting=words)
        if self.done + len(self.retries) >= self.total and self._said != (len(self.retries),
                                                                          due):
            # Everyone else is done: say once per change what the send is waiting for.
            self._said = (len(self.retries), due)
            self.progress.console.print(words, highlight=False)

    def finished(self, report: Report) -> None:
        pass  # the summary follows the bar


async def _deliver_with_progress(cfg: Config, newsletter: Newsletter, store: Store,
                                 send: SendRow, console: Console) -> int:
    async with Sender(cfg, store, give_up_on_relays=True) as sender:
        if sender.unknown_released:
            console.print(f"[yellow]{sender.unknown_released} delivery(ies) were in flight "
                          "when a sender died: recorded as unknown[/yellow]")
        with Progress(*progress_columns(), console=console, transient=False) as progress, \
                stop_on_interrupt(sender):
            bar = ProgressBar(progress, f"{newsletter.id}/{send.slug}")
            report = await deliver_with_report(sender, send, newsletter, bar)
    console.print(_summary(report.counts))
    for email, _, reply in await store.failures(send.id):
        console.print(f"  failed {email}: {reply}", highlight=False,  # reply has the code
                      markup=False)
    again = f"`mailer send-now {newsletter.id}`"
    if report.relay_failure is not None:
        # One line, on stderr like every error: which relay, and why (never a password).
        Console(stderr=True, soft_wrap=True, emoji=False).print(
            f"error: no relay answered ({report.relay_failure}); nothing more was sent and "
            f"the send is kept: run {again} again once the relay is back", highlight=False,
            markup=False)
    elif report.send.status == SendStatus.PAUSED:
        console.print(f"[yellow]paused: {report.send.pause_reason}. Fix the relay, then run "
                      f"{again} to go on.[/yellow]", soft_wrap=True)
    elif report.counts.open:
        console.print(f"[yellow]{report.counts.open} message(s) left to send (waiting for a "
                      f"retry or interrupted): `mailer run` or the next {again} sends them"
                      "[/yellow]", soft_wrap=True)
    if cfg.settings.smtp_url == "capture":
        console.print(f"captured messages are in {cfg.settings.var_dir / 'outbox'} (a Maildir; "
                      "open the files in new/ with any mail program)", soft_wrap=True)
    return 0 if report.counts.undelivered == 0 else 1


@contextlib.contextmanager
def stop_on_interrupt(sender: Sender) -> Iterator[None]:
    """Ctrl-C stops taking new messages and lets those in flight finish and be recorded, so
    the summary says what is left; a second Ctrl-C interrupts at once."""
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGINT, _on_interrupt, loop, sender)
    except (ValueError, RuntimeError, NotImplementedError):  # not the main thread
        yield
        return
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGINT)


def _on_interrupt(loop: asyncio.AbstractEventLoop, sender: Sender) -> None:
    sender.stop()
    loop.remove_signal_handler(signal.SIGINT)  # the next one is Python's KeyboardInterrupt
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _summary(counts: DeliveryCounts) -> Table:
    # "possible duplicates": resent once after a cut with no reply; the reader may have two.
    table = Table("sent", "failed", "retrying", "unknown", "skipped", "possible duplicates",
                  title="summary")
    table.add_row(str(counts.sent), str(counts.failed), str(counts.open), str(counts.unknown),
                  str(counts.skipped), str(counts.possible_duplicates))
    return table
