"""Issue and confirmation emails: Markdown + Jinja2 → MJML → HTML and plain text, once per issue."""

from __future__ import annotations

import dataclasses
import functools
import html
import logging
import re
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import jinja2
from markupsafe import Markup
from mjml import mjml2html

from mailer.content import colors, fields, markup, plaintext
from mailer.content.rendered import (
    GMAIL_CLIP_BYTES,
    MANAGE_SLOT,
    UNSUBSCRIBE_SLOT,
    RenderedIssue,
)
from mailer.errors import ContentError, RenderError
from mailer.states import SendKind

if TYPE_CHECKING:
    from mailer.config import Newsletter, Settings
    from mailer.content import Issue

log = logging.getLogger("mailer.render")  # a name of the log taxonomy: see mailer.logs

CONFIRM_TEMPLATE = "confirm.mjml.j2"

# Templates mark what only makes sense in a subscriber's inbox (the unsubscribe link);
# the web view cuts it out.
_EMAIL_ONLY = re.compile(
    r"<!--\s*mailer:email-only\s*-->.*?<!--\s*/mailer:email-only\s*-->", re.DOTALL
)
# A personal field's marker at the very start of a link's or an image's address.
_FIELD_AS_URL = re.compile(r"""\b(?:href|src)\s*=\s*["']?\s*""" + fields.MARKER_PATTERN)
# Templates take `lang` and `dir`; a newsletter has no language setting, so it is English.
_LANGUAGE = {"lang": "en", "dir": "ltr"}


def render_issue(
    issue: Issue, newsletter: Newsletter, settings: Settings, *, templates_dir: Path
) -> RenderedIssue:
    """Render an issue's HTML and text parts, leaving `UNSUBSCRIBE_SLOT` and the markers of
    its personal fields (in the subject too) for `personalize`.

    Raises:
        ContentError: the issue holds template syntax that is not a personal field.
        RenderError: the template is missing or broken, or MJML refuses its output.
    """
    issue = _marked(issue)
    source = render_issue_mjml(issue, newsletter, settings, templates_dir=templates_dir)
    page = _mjml_to_html(source, template=templates_dir / newsletter.template)
    web_url = issue_web_url(issue, newsletter, settings)
    rendered = RenderedIssue(
        subject=issue.subject,
        preheader=issue.preheader,
        html=page,
        text=_issue_text(issue, newsletter, settings, web_url=web_url),
        web_url=web_url,
    )
    if rendered.clipped:
        log.warning(clip_warning(rendered), extra={"issue": issue.slug,
                                                    "html_bytes": rendered.html_bytes})
    return rendered


def clip_warning(rendered: RenderedIssue) -> str:
    """What to tell the author of an issue Gmail would clip."""
    return (f"the HTML is {rendered.html_bytes / 1024:.1f} KB; Gmail clips messages past "
            f"{GMAIL_CLIP_BYTES // 1024} KB and hides the rest, footer and unsubscribe link "
            "included: shorten the issue")


def render_issue_mjml(
    issue: Issue, newsletter: Newsletter, settings: Settings, *, templates_dir: Path
) -> str:
    """The MJML source of an issue email, before mjml2html (`mailer preview --format mjml`).

    Raises:
        ContentError: the issue holds template syntax that is not a personal field.
        RenderError: the template is missing or broken.
    """
    issue = _marked(issue)
    palette = colors.palette(newsletter.accent_color)
    body = markup.to_mjml(issue.body, accent_color=palette.text,
                          allow_html=newsletter.allow_html)
    if _FIELD_AS_URL.search(body):
        # The value would be the whole address: a reader named "javascript:…" would get
        # that link. After a fixed "https://…/" part a value only changes the path.
        raise ContentError("a personal field cannot be a whole link or image address; "
                           "start the address with https://…", file=str(issue.path))
    return _render_template(
        templates_dir,
        newsletter.template,
        newsletter=newsletter,
        issue=issue,
        issue_date=_long_date(issue),
        colors=palette,
        accent=palette.accent,
        **_LANGUAGE,
        # An issue that opens with its own title should not show the subject twice.
        show_subject=not _is_subject(markup.leading_heading(issue.body), issue.subject),
        body=Markup(body),  # markup.to_mjml escaped everything from the issue
        web_url=issue_web_url(issue, newsletter, settings),
        unsubscribe_url=UNSUBSCRIBE_SLOT,
        manage_url=MANAGE_SLOT,
        postal_address=settings.postal_address,
    )


def issue_web_url(issue: Issue, newsletter: Newsletter, settings: Settings) -> str:
    """The public address of the issue's web view; for an automatic email, which the
    archive never shows, the newsletter's archive."""
    if issue.kind is not SendKind.ISSUE:
        return f"{settings.base_url}/issues/{newsletter.id}"
    return f"{settings.base_url}/issues/{newsletter.id}/{quote(issue.slug)}"


def render_web_view(rendered: RenderedIssue) -> str:
    """The issue's HTML for the public archive, without anyone's unsubscribe link or
    personal values (each field shows its default)."""
    page = fields.fill(_EMAIL_ONLY.sub("", rendered.html),
                       lambda field: html.escape(field.default or "", quote=True))
    # A custom template may use the slot outside the markers: leave a link that goes nowhere.
    return page.replace(UNSUBSCRIBE_SLOT, "#").replace(MANAGE_SLOT, "#")


def render_confirm(
    newsletter: Newsletter, settings: Settings, *, confirm_url: str, templates_dir: Path
) -> tuple[str, str, str]:
    """The double opt-in email asking to confirm a subscription: (subject, html, text).

    Raises:
        RenderError: the template is missing or broken, or MJML refuses its output.
    """
    name = " ".join(newsletter.name.split())
    subject = _confirm_subject(newsletter)
    source = render_confirm_mjml(newsletter, settings, confirm_url=confirm_url,
                                 templates_dir=templates_dir)
    page = _mjml_to_html(source, template=templates_dir / CONFIRM_TEMPLATE)
    days = settings.confirm_token_days
    text = "\n\n".join(
        [
            _underline(subject, "="),
            _fill(f"Please confirm that you want to receive {name} at this address:"),
            confirm_url,
            _fill(
                f"The link is valid for {days} day{'s' if days != 1 else ''}. If you did not "
                "ask for this, ignore this email: you will not be subscribed."
            ),
            _footer([_fill(settings.postal_address)]),
        ]
    )
    return subject, page, text + "\n"


def render_confirm_mjml(
    newsletter: Newsletter, settings: Settings, *, confirm_url: str, templates_dir: Path
) -> str:
    """The MJML source of the confirmation email, before mjml2html.

    Raises:
        RenderError: the template is missing or broken.
    """
    palette = colors.palette(newsletter.accent_color)
    return _render_template(
        templates_dir,
        CONFIRM_TEMPLATE,
        newsletter=newsletter,
        colors=palette,
        accent=palette.accent,
        **_LANGUAGE,
        subject=_confirm_subject(newsletter),
        confirm_url=confirm_url,
        days=settings.confirm_token_days,
        postal_address=settings.postal_address,
    )


# --- helpers --------------------------------------------------------------------------------


def _marked(issue: Issue) -> Issue:
    # The author's text reaches Jinja only as values (body as Markup of what markup.py
    # escaped, subject and preheader autoescaped), never as template source: Jinja never
    # evaluates it. Personal fields become markers here, before Markdown and MJML.
    file = str(issue.path)
    if fields.MARKER.search(issue.subject + issue.preheader + issue.body):
        return issue  # marked already (render_issue calls render_issue_mjml)
    return dataclasses.replace(
        issue,
        subject=fields.mark(issue.subject, file=file, first_line=issue.subject_line),
        preheader=fields.mark(issue.preheader, file=file, first_line=issue.preheader_line),
        body=fields.mark(issue.body, file=file, first_line=issue.body_line),
    )


def _confirm_subject(newsletter: Newsletter) -> str:
    return f"Confirm your subscription to {' '.join(newsletter.name.split())}"


def _issue_text(
    issue: Issue, newsletter: Newsletter, settings: Settings, *, web_url: str
) -> str:
    parts = [newsletter.name]
    if not _is_subject(markup.leading_heading(issue.body), issue.subject):
        parts.append(_underline(issue.subject, "="))
    parts.append(plaintext.to_text(issue.body))
    parts.append(
        _footer(
            [
                _fill(newsletter.footer_text),
                f"Unsubscribe: {UNSUBSCRIBE_SLOT}",
                f"Your subscriptions and data: {MANAGE_SLOT}",
                f"View in your browser: {web_url}",
                _fill(settings.postal_address),
            ]
        )
    )
    return "\n\n".join(part for part in parts if part) + "\n"


def _footer(lines: list[str]) -> str:
    # "-- " is the signature separator of RFC 3676 §4.3; readers may fold what follows.
    return "\n".join(["-- ", *(line for line in lines if line)])


def _fill(text: str) -> str:
    return "\n".join(plaintext.wrap(" ".join(text.split()))) if text.strip() else ""


def _underline(title: str, mark: str) -> str:
    lines = _fill(title).splitlines() or [""]
    # A personal field counts as long as a typical value, as in wrapping (fields.stand_ins).
    width = max(len(fields.stand_ins(line)[0]) for line in lines)
    return "\n".join([*lines, mark * min(width, plaintext.TEXT_WIDTH)])


def _is_subject(heading: str | None, subject: str) -> bool:
    return heading is not None and heading.split() == subject.split()


def _long_date(issue: Issue) -> str:
    day = issue.send_after
    return f"{day.day} {day:%B %Y}" if day else ""


@functools.lru_cache(maxsize=16)
def _environment(templates_dir: Path) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir),
        autoescape=jinja2.select_autoescape(["j2", "mjml", "html"], default_for_string=True),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )


def _render_template(templates_dir: Path, name: str, **context: Any) -> str:
    file = str(templates_dir / name)
    try:
        return _environment(templates_dir).get_template(name).render(**context)
    except jinja2.TemplateNotFound:
        raise RenderError("template not found", file=file) from None
    except jinja2.TemplateSyntaxError as exc:
        raise RenderError(exc.message or "syntax error", file=file, line=exc.lineno) from None
    except jinja2.UndefinedError as exc:
        line = _template_line(exc.__traceback__, file)
        raise RenderError(exc.message or "undefined value", file=file, line=line) from None


def _template_line(tb: TracebackType | None, file: str) -> int | None:
    # Jinja rewrites tracebacks so template frames carry the template's file and line.
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == file:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _mjml_to_html(source: str, *, template: Path) -> str:
    try:
        # fonts={}: no Google Fonts <link> (a request to a third party on every open);
        # no include_loader: a template cannot pull in files with <mj-include>.
        return mjml2html(source, fonts={})
    except ValueError as exc:
        raise RenderError(f"MJML: {exc}", file=str(template)) from None
