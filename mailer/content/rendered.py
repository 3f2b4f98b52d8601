"""An issue as rendered once for everyone, and the one per-recipient fill-in (pure: the
send path reads it without loading Jinja or MJML)."""

from __future__ import annotations

import functools
import html
from dataclasses import dataclass

# Where each recipient's unsubscribe URL goes; a URL no one can own (RFC 6761 .invalid).
UNSUBSCRIBE_SLOT = "https://unsubscribe.invalid/__mailer_unsubscribe__"
# Gmail cuts a message whose HTML passes 102 KB, hiding the rest and the unsubscribe link.
GMAIL_CLIP_BYTES = 102 * 1024


@dataclass(frozen=True)
class RenderedIssue:
    """An issue rendered once for everyone; `UNSUBSCRIBE_SLOT` marks the per-recipient link."""

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
    def _pieces(self) -> tuple[list[str], list[str]]:
        # Cut once at the slot: joining the pieces per recipient is several times faster
        # than searching the whole page for the slot again.
        return self.html.split(UNSUBSCRIBE_SLOT), self.text.split(UNSUBSCRIBE_SLOT)


def personalize(rendered: RenderedIssue, *, unsubscribe_url: str) -> tuple[str, str]:
    """Fill one recipient's unsubscribe link into the (html, text) parts."""
    html_pieces, text_pieces = rendered._pieces
    escaped = html.escape(unsubscribe_url, quote=True)
    return escaped.join(html_pieces), unsubscribe_url.join(text_pieces)
