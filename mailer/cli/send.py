"""The work behind `mailer send-now` and `mailer preview`: progress, summary and exit code."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from mailer import content, tokens
from mailer.config import Config, Newsletter
from mailer.content import render
from mailer.content import screenshots as browser
from mailer.delivery.message import Letter, build_message, letter_of, message_id
from mailer.errors import ContentError, InputError
from mailer.keys import make_private_dir, token_key
from mailer.sending.prepare import start_or_resume_send
from mailer.sending.sender import Sender, send_one
from mailer.states import DeliveryStatus, SendStatus, utcnow
from mailer.store import Outcome, Store

SAMPLE_RECIPIENT = ("reader@example.com", "Sample Reader")


def _issue_for(cfg: Config, newsletter: Newsletter, path: Path | None, sent: set[str],
               now: datetime) -> content.Issue | None:
    if path is not None:
        return content.load_issue(path, tz=newsletter.tz)
    return content.pick_due_issue(content.load_issues(newsletter.issues, tz=newsletter.tz),
                                  sent, now)


def _letter(cfg: Config, newsletter: Newsletter, issue: content.Issue) -> Letter:
    rendered = render.render_issue(issue, newsletter, cfg.settings, templates_dir=cfg.templates_dir)
    return letter_of(newsletter, rendered, base_url=cfg.settings.base_url)


def _sample_message(cfg: Config, newsletter: Newsletter, letter: Letter, to: str, name: str
                    ) -> bytes:
    # A token for subscription 0 matches nobody: the link in a test copy is harmless.
    key = token_key(cfg.settings)
    url = f"{cfg.settings.base_url}/unsubscribe/{tokens.unsubscribe_token(key, 0)}"
    return build_message(letter, to_email=to, to_name=name, unsubscribe_url=url,
                         msg_id=message_id(letter.sender_domain), date=utcnow()).as_bytes()


async def send_now(cfg: Config, newsletter: Newsletter, *, issue_path: Path | None,
                   dry_run: bool, to: str | None, yes: bool, resend_unknown: bool,
                   now: datetime, console: Console, force: bool = False,
                   resume: bool = False) -> int:
    """Run `send-now`; returns the exit code (0 only when every recipient got the issue).

    An issue Gmail would clip is refused (ContentError) unless `force`; an interrupted send
    is finished whatever its size.
    """
    store = await Store.open(cfg.settings.database_url)
    try:
        if dry_run or to:
            return await _dry_run_or_test_copy(cfg, newsletter, store, issue_path=issue_path,
                                               to=to, now=now, console=console, force=force)
        unfinished = await store.unfinished_send(newsletter.id)
        picked: list[content.Issue] | None = None  # read and checked once, sent as checked
        if unfinished is None and resume:
            console.print(f"nothing to resume: {newsletter.id} has no interrupted or paused "
                          "send")
            return 0
        if unfinished is None:
            issue = _issue_for(cfg, newsletter, issue_path, await store.sent_slugs(newsletter.id),
                               now)
            if issue is None:
                console.print(f"nothing to send: {newsletter.id} has no due issue "
                              "(ready, send_after passed, not sent yet)")
                return 0
            check_clipping(_letter(cfg, newsletter, issue).rendered, issue, force=force,
                           console=console)
            # Counted only to ask: on a long list the count costs the first message time.
            if not yes and not _confirm(console, f"Send {issue.subject!r} to "
                                        f"{await store.count_recipients(newsletter.id)} "
                                        f"subscriber(s) of {newsletter.id}?"):
                console.print("nothing sent")
                return 1
            picked = [issue]
        send = await start_or_resume_send(cfg, newsletter, store, now=now, issue_path=issue_path,
                                          issues=picked)
        assert send is not None
        if resend_unknown:
            await store.requeue_unknown(send.id)
        return await _deliver_with_progress(cfg, newsletter, store, send.id, console)
    finally:
        await store.close()


def _confirm(console: Console, question: str) -> bool:
    if not sys.stdin.isatty():
        raise InputError("not a terminal to ask on: add --yes to send", field="send-now")
    return console.input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


async def _dry_run_or_test_copy(cfg: Config, newsletter: Newsletter, store: Store, *,
                                issue_path: Path | None, to: str | None, now: datetime,
                                console: Console, force: bool) -> int:
    issue = _issue_for(cfg, newsletter, issue_path, await store.sent_slugs(newsletter.id), now)
    if issue is None:
        console.print(f"nothing to send: {newsletter.id} has no due issue")
        return 0
    letter = _letter(cfg, newsletter, issue)
    if to:
        from mailer.addresses import normalize_email

        address = normalize_email(to, where="--to")
        check_clipping(letter.rendered, issue, force=force, console=console)
        data = _sample_message(cfg, newsletter, letter, address, "")
        code, reply = await send_one(cfg, letter.sender_address, address, data)
        console.print(f"test copy of {issue.slug!r} sent to {address}: {code} {reply}")
        return 0
    count = await store.count_recipients(newsletter.id)
    size = letter.rendered.html_bytes
    console.print(f"dry run: {issue.slug!r} ({issue.subject!r}) would go to {count} confirmed "
                  f"subscriber(s) of {newsletter.id}; HTML {size / 1024:.1f} KB; nothing sent")
    if letter.rendered.clipped:
        console.print(f"[yellow]warning: {issue.path}: {render.clip_warning(letter.rendered)}; "
                      "send-now refuses it without --force[/yellow]", soft_wrap=True)
    return 0


async def _deliver_with_progress(cfg: Config, newsletter: Newsletter, store: Store,
                                 send_id: int, console: Console) -> int:
    send = await store.get_send(send_id)
    before = await store.delivery_counts(send_id)
    open_count = before[DeliveryStatus.PENDING] + before[DeliveryStatus.SENDING]
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]}"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(f"{newsletter.id}/{send.slug}", total=open_count, rate="")

        def advance(outcome: Outcome) -> None:
            if outcome.status != DeliveryStatus.PENDING:
                progress.advance(task)

        async with Sender(cfg, store) as sender:
            if sender.unknown_released:
                console.print(f"[yellow]{sender.unknown_released} delivery(ies) were in flight "
                              "when a sender died: recorded as unknown[/yellow]")
            await sender.deliver(send, newsletter, on_outcome=advance)
    counts = await store.delivery_counts(send_id)
    console.print(_summary(counts))
    for email, _, reply in await store.failures(send_id):
        console.print(f"  failed {email}: {reply}", highlight=False)  # reply has the code
    after = await store.get_send(send_id)
    if after.status == SendStatus.PAUSED:
        console.print(f"[yellow]paused: {after.pause_reason}. Fix the relay, then run "
                      f"`mailer send-now {newsletter.id}` to go on.[/yellow]", soft_wrap=True)
    if cfg.settings.smtp_url == "capture":
        console.print(f"captured messages are in {cfg.settings.var_dir / 'outbox'} (a Maildir; "
                      "open the files in new/ with any mail program)", soft_wrap=True)
    undelivered = sum(counts[s] for s in (DeliveryStatus.FAILED, DeliveryStatus.UNKNOWN,
                                          DeliveryStatus.PENDING, DeliveryStatus.SENDING))
    return 0 if undelivered == 0 else 1


def _summary(counts: dict[DeliveryStatus, int]) -> Table:
    table = Table("sent", "failed", "retrying", "unknown", "skipped", title="summary")
    table.add_row(str(counts[DeliveryStatus.SENT]), str(counts[DeliveryStatus.FAILED]),
                  str(counts[DeliveryStatus.PENDING] + counts[DeliveryStatus.SENDING]),
                  str(counts[DeliveryStatus.UNKNOWN]), str(counts[DeliveryStatus.SKIPPED]))
    return table


FORMATS = ("html", "text", "mjml", "eml")


@dataclass(frozen=True)
class IssuePreview:
    """An issue rendered exactly as subscribers get it, for a sample recipient."""

    cfg: Config
    newsletter: Newsletter
    issue: content.Issue
    letter: Letter

    @property
    def rendered(self) -> render.RenderedIssue:
        return self.letter.rendered

    def parts(self) -> tuple[str, str]:
        """(html, text) with a sample unsubscribe link that matches nobody."""
        sample = f"{self.cfg.settings.base_url}/unsubscribe/SAMPLE"
        return render.personalize(self.rendered, unsubscribe_url=sample)

    def as_format(self, fmt: str) -> bytes:
        """html or text: the parts; mjml: the source after Jinja, before mjml-python;
        eml: the whole message, headers and all."""
        if fmt == "mjml":
            return render.render_issue_mjml(self.issue, self.newsletter, self.cfg.settings,
                                            templates_dir=self.cfg.templates_dir).encode()
        if fmt == "eml":
            return _sample_message(self.cfg, self.newsletter, self.letter, *SAMPLE_RECIPIENT)
        html, text = self.parts()
        return (html if fmt == "html" else text).encode()


def load_preview(cfg: Config, path: Path, *, newsletter_id: str | None) -> IssuePreview:
    """Render the issue file at `path` with its newsletter's template."""
    newsletter = _newsletter_of(cfg, path, newsletter_id)
    issue = content.load_issue(path, tz=newsletter.tz)
    return IssuePreview(cfg, newsletter, issue, _letter(cfg, newsletter, issue))


def preview(cfg: Config, path: Path, *, fmt: str, newsletter_id: str | None) -> bytes:
    """The bytes `mailer preview` shows for an issue in the given format."""
    return load_preview(cfg, path, newsletter_id=newsletter_id).as_format(fmt)


@dataclass(frozen=True)
class PreviewFiles:
    written: list[Path]
    html: Path | None  # the HTML file to open in a browser (--open)


def write_preview(shown: IssuePreview, data: bytes, *, out: Path | None, open_files: bool,
                  widths: Sequence[int]) -> PreviewFiles:
    """Write `mailer preview`'s files: `data` to `out`; with `open_files` the HTML and text
    parts beside it (or in var/preview/); one PNG per width, screenshot by Chromium.

    Raises:
        MailerError: a width was asked for and Chromium cannot be driven here.
    """
    folder = out.parent if out else shown.cfg.settings.var_dir / "preview"
    stem = out.stem if out else shown.issue.slug
    files: dict[Path, bytes] = {out: data} if out else {}
    html_path = None
    if open_files:
        html, text = shown.parts()
        html_path = folder / f"{stem}.html"
        files.setdefault(html_path, html.encode())
        files.setdefault(folder / f"{stem}.txt", text.encode())
    for path, payload in files.items():
        make_private_dir(path.parent)  # var/ holds the database too: only its owner reads it
        path.write_bytes(payload)
    written = list(files)
    if widths:
        shots = [(width, folder / f"{stem}-{width}px.png") for width in widths]
        written += browser.screenshots(shown.parts()[0], shots)
    return PreviewFiles(written=written, html=html_path)


def check_clipping(rendered: render.RenderedIssue, issue: content.Issue, *, force: bool,
                   console: Console) -> None:
    """Refuse to send an issue Gmail would clip, unless forced.

    Raises:
        ContentError: the issue's HTML is past Gmail's limit and `force` is False.
    """
    if not rendered.clipped:
        return
    if not force:
        raise ContentError(f"{render.clip_warning(rendered)}, or add --force to send it anyway",
                           file=str(issue.path))
    console.print(f"[yellow]warning: {issue.path}: {render.clip_warning(rendered)}; "
                  "sending anyway (--force)[/yellow]", soft_wrap=True)


def _newsletter_of(cfg: Config, path: Path, newsletter_id: str | None) -> Newsletter:
    if newsletter_id:
        return cfg.newsletter(newsletter_id)
    folder = path.resolve().parent
    for newsletter in cfg.newsletters.values():
        if newsletter.issues == folder:
            return newsletter
    if len(cfg.newsletters) == 1:
        return next(iter(cfg.newsletters.values()))
    raise InputError("which newsletter's template? add --newsletter ID", file=str(path))
