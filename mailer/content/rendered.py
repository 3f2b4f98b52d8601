"""An issue as rendered once for everyone, and the per-recipient fill-in (pure: the send
path reads it without loading Jinja or MJML)."""

from __future__ import annotations

import functools
import html
import re
from collections.abc import Mapping
from dataclasses import dataclass

from mailer.content import fields
from mailer.content.fields import Field

# Where each recipient's unsubscribe URL goes; a URL no one can own (RFC 6761 .invalid).
UNSUBSCRIBE_SLOT = "https://unsubscribe.invalid/__mailer_unsubscribe__"
# Where each recipient's manage-my-subscription URL goes (GET /manage/{token}).
MANAGE_SLOT = "https://manage.invalid/__mailer_manage__"
# Every per-recipient slot: the two URLs and each personal field's marker. re.split keeps
# each slot, at the odd indexes, to say what goes there.
SLOTS = re.compile(
    f"({re.escape(UNSUBSCRIBE_SLOT)}|{re.escape(MANAGE_SLOT)}|{fields.MARKER_PATTERN})")
# Gmail cuts a message whose HTML passes 102 KB, hiding the rest and the unsubscribe link.
GMAIL_CLIP_BYTES = 102 * 1024


@dataclass(frozen=True)
class RenderedIssue:
    """An issue rendered once for everyone; `UNSUBSCRIBE_SLOT` and `MANAGE_SLOT` mark the
    per-recipient links, and each personal field's marker (mailer.content.fields) its value,
    in the subject too."""

    subject: str
    preheader: str
    html: str
    text: str
    web_url: str

    @property
    def html_bytes(self) -> int:
        """The size of the HTML part as sent (what Gmail measures against its 102 KB)."""
        return len(self.html.encode())

    @property
    def clipped(self) -> bool:
        """Gmail would cut this issue short, hiding the rest and the unsubscribe link."""
        return self.html_bytes > GMAIL_CLIP_BYTES

    @functools.cached_property
    def fields(self) -> tuple[Field, ...]:
        """The personal fields (with their defaults) this issue holds, read from its markers:
        a send read back from the database knows them too."""
        return fields.fields_in(self.subject, self.html, self.text)

    @functools.cached_property
    def _pieces(self) -> tuple[list[str], list[str]]:
        # Cut once at the slots: joining the pieces per recipient is several times faster
        # than searching the whole page for the slots again.
        return SLOTS.split(self.html), SLOTS.split(self.text)


def personalize(rendered: RenderedIssue, *, unsubscribe_url: str, manage_url: str = "#",
                values: Mapping[str, str] | None = None) -> tuple[str, str]:
    """Fill one recipient's unsubscribe and manage links and personal values (by marker: a
    marker with no value is left empty) into the (html, text) parts, escaped in the HTML."""
    html_pieces, text_pieces = rendered._pieces
    own = {**{marker: fields.body_value(value) for marker, value in (values or {}).items()},
           UNSUBSCRIBE_SLOT: unsubscribe_url, MANAGE_SLOT: manage_url}
    escaped = {slot: html.escape(value, quote=True) for slot, value in own.items()}
    return _fill(html_pieces, escaped), _fill(text_pieces, own)


def _fill(pieces: list[str], values: Mapping[str, str]) -> str:
    return "".join(values.get(piece, "") if i % 2 else piece for i, piece in enumerate(pieces))


def personal_subject(rendered: RenderedIssue, values: Mapping[str, str] | None = None) -> str:
    """The subject for one recipient: their values filled in, on one line."""
    if not fields.MARKER.search(rendered.subject):
        return rendered.subject
    own = values or {}
    return fields.one_line(fields.MARKER.sub(lambda m: own.get(m.group(0), ""),
                                             rendered.subject))
