"""Reading returned mail safely: header text decoded and bounded, addresses pulled out, the
MIME tree walked without entering embedded messages; nothing here raises on bad input."""

from __future__ import annotations

import base64
import email
import quopri
import re
from collections.abc import Iterator
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from email.message import Message
from email.policy import compat32
from email.utils import getaddresses, parseaddr

MAX_TEXT = 300  # a field's text as kept: Diagnostic-Code, Subject, a reason
MAX_ADDRESS = 320  # RFC 5321 §4.5.3.1: 64 + 1 + 255, with room for a display of garbage
MAX_DEPTH = 20  # MIME nesting walked; a report sits at depth 1, rarely 2 or 3
MAX_PARTS = 500
MAX_VALUES = 30  # occurrences of one header field read

_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
# The parts that hold a message of their own: walked as a unit, never entered.
EMBEDDED = ("message/rfc822", "message/global")
_ENCODED = ("base64", "quoted-printable")


def parse_bytes(raw: bytes) -> Message:
    """The message, parsed leniently (compat32: what flufl.bounce's detectors expect, and the
    policy whose parser registers defects instead of raising)."""
    return email.message_from_bytes(raw, policy=compat32)


def clean(text: str, limit: int = MAX_TEXT) -> str:
    """One printable line of at most `limit` characters: undecodable bytes as U+FFFD, runs of
    whitespace and control characters as one space."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    text = " ".join(_CONTROLS.sub(" ", text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def header_text(msg: Message, name: str, limit: int = MAX_TEXT) -> str:
    """A header field's value, RFC 2047 words decoded, on one line ("" when absent)."""
    value = msg.get(name)
    if value is None:
        return ""
    try:
        chunks = decode_header(value)
        if any(charset == "unknown-8bit" for _, charset in chunks):
            # Raw 8-bit bytes in a header (compat32 hands those over as unknown-8bit):
            # nearly always UTF-8 today (RFC 6532).
            text = "".join(chunk.decode("utf-8", "replace") if isinstance(chunk, bytes)
                           else chunk for chunk, _ in chunks)
        else:
            text = str(make_header(chunks))
    except (HeaderParseError, LookupError, UnicodeError, ValueError, TypeError):
        # An unknown charset or a broken encoded word: the raw text is still evidence.
        text = str(value)
    return clean(text, limit)


def header_values(msg: Message, name: str) -> list[str]:
    """The first occurrences of a header field (a few dozen), as raw one-line text."""
    # A real message has one To and a Delivered-To per hop; 600,000 of them cost seconds.
    return [clean(str(value), 4 * MAX_ADDRESS) for value in (msg.get_all(name) or [])[:MAX_VALUES]]


def address(text: str, *, lower: bool = True) -> str | None:
    """The address in an "addr", "<addr>" or "Name <addr>" value, if it is one: lower-cased
    unless it may be ours (a VERP token may be case-sensitive)."""
    found = parseaddr(text.strip())[1] if "<" in text else text.strip().strip("<>").strip()
    return _plausible(found.lower() if lower else found)


def addresses(values: list[str]) -> list[str]:
    """The addresses in address-list header values, as written (a VERP token may be
    case-sensitive), in order."""
    found = []
    for _, addr in getaddresses(values):
        checked = _plausible(addr.strip().strip("<>"))
        if checked:
            found.append(checked)
    return found


def typed_value(text: str) -> str:
    """A DSN field's value without its type: "rfc822; a@b" → "a@b", "dns; mx.b" → "mx.b"."""
    kind, sep, value = text.partition(";")
    return value.strip() if sep else kind.strip()


def walk(msg: Message) -> Iterator[Message]:
    """The message and its parts, depth first, bounded, not entering embedded messages
    (a returned original's own parts are not part of the report)."""
    stack: list[tuple[Message, int]] = [(msg, 0)]
    seen = 0
    while stack and seen < MAX_PARTS:
        part, depth = stack.pop()
        seen += 1
        yield part
        if depth < MAX_DEPTH and part.get_content_maintype() == "multipart":
            payload = part.get_payload()
            if isinstance(payload, list):
                stack.extend((sub, depth + 1) for sub in reversed(payload)
                             if isinstance(sub, Message))


def decoded(part: Message) -> bytes:
    """A leaf part's body after its transfer encoding, or b"" if it has none."""
    body = part.get_payload(decode=True)
    return body if isinstance(body, bytes) else b""


def field_groups(part: Message) -> list[Message]:
    """The blank-line separated groups of fields in a message/delivery-status or
    message/feedback-report part (RFC 3464 §2.1, RFC 5965 §3.1)."""
    payload = part.get_payload()
    kind = part.get_content_type()
    encoded = str(part.get("Content-Transfer-Encoding", "")).strip().lower() in _ENCODED
    if isinstance(payload, list) and not encoded:
        # The parser split delivery-status groups itself; any other message/* type it
        # parsed as one message, whose body holds the groups after the first.
        groups = [group for group in payload if isinstance(group, Message)]
        if kind == "message/delivery-status" or kind == "message/feedback-report":
            return groups if kind == "message/delivery-status" else groups[:1]
    # Transfer-encoded, or a type the parser does not know (RFC 6533's
    # message/global-delivery-status, UTF-8 fields): split the decoded text ourselves.
    text = _body(part, payload, encoded).replace(b"\r\n", b"\n")
    return [parse_bytes(block.lstrip(b"\n") + b"\n")
            for block in re.split(rb"\n(?:[ \t]*\n)+", text) if block.strip()]


def _body(part: Message, payload: object, encoded: bool) -> bytes:
    if not isinstance(payload, list):
        return decoded(part)
    # Parsed into messages before anyone looked at the transfer encoding: put the text back
    # together, then decode it.
    text = b"\n".join(sub.as_bytes() for sub in payload if isinstance(sub, Message))
    if not encoded:
        return text
    try:
        if str(part.get("Content-Transfer-Encoding")).strip().lower() == "base64":
            return base64.b64decode(text)
        return quopri.decodestring(text)
    except ValueError:  # binascii.Error: not base64 after all
        return b""


def embedded(part: Message) -> Message | None:
    """The header section (and body, if present) of a message/rfc822 or text/rfc822-headers
    part, as a message."""
    if part.get_content_type() in EMBEDDED:
        payload = part.get_payload()
        if isinstance(payload, list):
            return payload[0] if payload and isinstance(payload[0], Message) else None
        # Transfer-encoded (base64 happens), so the parser left it as text.
        return parse_bytes(decoded(part))
    if part.get_content_type() == "text/rfc822-headers":
        return parse_bytes(decoded(part))
    return None


def message_id(msg: Message) -> str | None:
    """A Message-ID as written, angle brackets included, or None."""
    text = header_text(msg, "Message-ID", MAX_ADDRESS)
    return text or None


def _plausible(addr: str) -> str | None:
    # Enough to be something's address, not a sentence or a megabyte of junk.
    if not addr or len(addr) > MAX_ADDRESS or "@" not in addr or any(
            char.isspace() for char in addr):
        return None
    return clean(addr, MAX_ADDRESS)
