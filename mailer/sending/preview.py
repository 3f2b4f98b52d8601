"""An issue exactly as subscribers get it, for a sample recipient: `mailer preview`, the
test copy of `send-now --to`, and the files and screenshots a preview writes."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mailer import content, tokens
from mailer.config import Config, Newsletter
from mailer.content import render
from mailer.content import screenshots as browser
from mailer.content.fields import Field
from mailer.content.rendered import RenderedIssue, personalize
from mailer.delivery.message import Letter, build_message, letter_of, message_id
from mailer.errors import InputError
from mailer.keys import make_private_dir, token_key
from mailer.sending.prepare import refuse_missing_fields
from mailer.states import utcnow
from mailer.store import Store

FORMATS = ("html", "text", "mjml", "eml")
SAMPLE_RECIPIENT = ("reader@example.com", "Sample Reader")


def sample_values(fields: Sequence[Field], email: str, name: str) -> dict[str, str]:
    """A sample reader's personal values by marker: their address and name, no attributes
    (so each default shows), and `[KEY]` for an attribute without a default."""
    return {field.marker: field.value(email=email, name=name, attributes={})
            or f"[{field.key or field.path}]" for field in fields}


def sample_message(cfg: Config, letter: Letter, to: str, name: str) -> bytes:
    """The whole message of `letter` for one address, as a send would build it."""
    # A token for subscription 0 matches nobody: the link in a test copy is harmless.
    key = token_key(cfg.settings)
    url = f"{cfg.settings.base_url}/unsubscribe/{tokens.unsubscribe_token(key, 0)}"
    manage = f"{cfg.settings.base_url}/manage/{tokens.manage_token(key, 0)}"
    return build_message(letter, to_email=to, to_name=name, unsubscribe_url=url,
                         manage_url=manage, msg_id=message_id(letter.sender_domain),
                         date=utcnow(),
                         values=sample_values(letter.rendered.fields, to, name)).as_bytes()


@dataclass(frozen=True)
class IssuePreview:
    """An issue rendered exactly as subscribers get it, for a sample recipient."""

    cfg: Config
    newsletter: Newsletter
    issue: content.Issue
    letter: Letter

    @property
    def rendered(self) -> RenderedIssue:
        return self.letter.rendered

    def parts(self) -> tuple[str, str]:
        """(html, text) with a sample unsubscribe link that matches nobody."""
        base = self.cfg.settings.base_url
        return personalize(self.rendered, unsubscribe_url=f"{base}/unsubscribe/SAMPLE",
                           manage_url=f"{base}/manage/SAMPLE",
                           values=sample_values(self.rendered.fields, *SAMPLE_RECIPIENT))

    def as_format(self, fmt: str) -> bytes:
        """html or text: the parts; mjml: the source after Jinja, before mjml-python;
        eml: the whole message, headers and all."""
        if fmt == "mjml":
            return render.render_issue_mjml(self.issue, self.newsletter, self.cfg.settings,
                                            templates_dir=self.cfg.templates_dir).encode()
        if fmt == "eml":
            return sample_message(self.cfg, self.letter, *SAMPLE_RECIPIENT)
        html, text = self.parts()
        return (html if fmt == "html" else text).encode()


def load_preview(cfg: Config, path: Path, *, newsletter_id: str | None) -> IssuePreview:
    """Render the issue file at `path` with its newsletter's template.

    Raises:
        InputError: several newsletters could own the file and none was named.
        ContentError: the issue file is broken, or a personal field without a default names
            what some confirmed subscribers lack (counted in the database).
    """
    newsletter = _newsletter_of(cfg, path, newsletter_id)
    issue = content.load_issue(path, tz=newsletter.tz)
    rendered = render.render_issue(issue, newsletter, cfg.settings,
                                   templates_dir=cfg.templates_dir)
    if any(field.default is None and field.path != "email" for field in rendered.fields):
        # Only then is the database opened: a preview of any other issue needs none.
        asyncio.run(_refuse_missing_fields(cfg, newsletter, issue))
    return IssuePreview(cfg, newsletter, issue,
                        letter_of(newsletter, rendered, base_url=cfg.settings.base_url))


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


async def _refuse_missing_fields(cfg: Config, newsletter: Newsletter,
                                 issue: content.Issue) -> None:
    async with Store.open(cfg.settings.database_url) as store:
        await refuse_missing_fields(store, newsletter, issue)


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
