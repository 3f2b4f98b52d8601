"""A returned message cut down to a size worth storing, keeping what proves its verdict: the
delivery-status or feedback-report part whole, the original's headers, the human text."""

from __future__ import annotations

from email.errors import MessageError
from email.message import Message

from mailer.returns.headers import EMBEDDED, parse_bytes, walk

EVIDENCE_LIMIT = 64 * 1024
_MAX_PARSED = 2 * 1024 * 1024  # what is parsed of a larger message: its head
_REPORTS = ("message/delivery-status", "message/global-delivery-status",
            "message/feedback-report", "text/rfc822-headers")
_MAX_TEXT_PART = 8 * 1024  # the human-readable part of a report: the first screens are enough


def evidence(raw: bytes, limit: int = EVIDENCE_LIMIT) -> bytes:
    """At most `limit` bytes of a returned message: unchanged if it fits, else with the
    original message's body cut first, then long text and attachments, the report part kept
    whole (unless it alone is past the limit: then, as for unreadable input, the first bytes)."""
    if len(raw) <= limit:
        return raw
    try:
        # A report puts its notice and status before the original, so the head holds them;
        # parsing and rewriting all of 10 MiB of parts costs seconds.
        msg = parse_bytes(raw[:_MAX_PARSED])
        for shrink in (_cut_original_bodies, _cut_other_parts):
            shrink(msg)
            smaller = msg.as_bytes()
            if len(smaller) <= limit:
                return smaller
    except (RecursionError, LookupError, UnicodeError, ValueError, TypeError, MessageError):
        pass  # too broken to rebuild: the plain cut below still keeps the first bytes
    return _truncated(raw, limit)


def _cut_original_bodies(msg: Message) -> None:
    for part in walk(msg):
        if part.get_content_type() not in EMBEDDED:
            continue
        payload = part.get_payload()
        inner = payload[0] if isinstance(payload, list) and payload else None
        if isinstance(inner, Message):
            # Its header section stays as it came: that is what identifies our message.
            size = len(inner.as_bytes()) if inner.is_multipart() else len(str(inner.get_payload()))
            inner.set_payload(f"[body removed from the stored copy: {size} bytes]\n")


def _cut_other_parts(msg: Message) -> None:
    for part in walk(msg):
        kind = part.get_content_type()
        payload = part.get_payload()
        if part.is_multipart() or kind in _REPORTS or kind in EMBEDDED or \
                not isinstance(payload, str):
            continue
        if part.get_content_maintype() == "text" and part is not msg:
            if len(payload) > _MAX_TEXT_PART:
                part.set_payload(payload[:_MAX_TEXT_PART].rpartition("\n")[0] +
                                 "\n[cut in the stored copy]\n")
        elif part is not msg:
            # An attachment (an image, a PDF): its headers, type and size say enough.
            part.set_payload(f"[{kind} part removed from the stored copy: {len(payload)} "
                             "characters]\n")


def _truncated(raw: bytes, limit: int) -> bytes:
    mark = f"\n[cut in the stored copy: {len(raw)} bytes in all]\n".encode()
    if limit <= len(mark):
        return raw[:limit]
    return raw[: limit - len(mark)] + mark
