"""Builds one newsletter message (pure): multipart/alternative, list headers of RFC 2369/8058."""

from __future__ import annotations

import html
import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from email.header import Header
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid, parseaddr
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from mailer.addresses import LINE_BREAKS, mailbox_header, text_header
from mailer.content.fields import body_value, one_line
from mailer.content.rendered import (
    MANAGE_SLOT,
    SLOTS,
    UNSUBSCRIBE_SLOT,
    RenderedIssue,
    personal_subject,
    personalize,
)
from mailer.delivery.qp import dot_stuff, qp, qp_piece, qp_url, qp_value
from mailer.errors import InputError

if TYPE_CHECKING:
    from mailer.config import Newsletter


@dataclass(frozen=True)
class Letter:
    """The parts of an issue's message that are the same for every recipient.

    The rendered parts still hold the slot where each recipient's unsubscribe URL goes.
    """

    sender: str
    reply_to: str | None
    list_id: str
    rendered: RenderedIssue

    @property
    def sender_address(self) -> str:
        return parseaddr(self.sender)[1]

    @property
    def sender_domain(self) -> str:
        return self.sender_address.rpartition("@")[2] or "localhost"


def letter_of(newsletter: Newsletter, rendered: RenderedIssue, /, *, base_url: str) -> Letter:
    """The Letter of a newsletter's rendered issue (fresh, or read back from its send)."""
    return Letter(sender=newsletter.sender, reply_to=newsletter.reply_to,
                  list_id=list_id(newsletter.id, base_url), rendered=rendered)


def list_id(newsletter_id: str, base_url: str) -> str:
    """RFC 2919 List-Id: `<id.host>`, stable for the life of the list."""
    host = urlsplit(base_url).hostname or "localhost"
    return f"<{newsletter_id}.{host}>"


def message_id(domain: str) -> str:
    """A new globally unique Message-ID in the sender's domain."""
    return make_msgid(domain=domain)


# Headers we write ourselves go in with set_raw, and the email package must never parse and
# refold them: its parser decodes RFC 2047 words, and its folder writes what they decode to
# (CR, LF, VT, NUL) into the header. refold_source="none" keeps them as written.
_POLICY = SMTP.clone(refold_source="none")


def _no_newlines(value: str, field: str) -> str:
    # A header value with a line break could smuggle in new headers (header injection).
    if LINE_BREAKS.search(value):
        raise InputError("a header value may not contain a line break", field=field)
    return value


def _set_line(msg: EmailMessage, line: str) -> None:
    header, _, value = line.partition(": ")
    msg.set_raw(header, value.removesuffix("\r\n"))


def _author_mailbox(header: str, value: str, field: str) -> str:
    # The config's "Name <address>", written by mailbox_header like a subscriber's: an
    # encoded word in the name stays text. parseaddr never decodes RFC 2047 words.
    name, address = parseaddr(_no_newlines(value, field))
    if not address:
        raise InputError(f"{value[:80]!r} is not an address", field=field)
    return mailbox_header(header, name, address, name_field=field, address_field=field)


def _shared_headers(msg: EmailMessage, letter: Letter, *, subject: str | None) -> None:
    # The headers every recipient shares; the Subject too unless it is personal (None).
    _set_line(msg, _author_mailbox("From", letter.sender, "from"))
    if subject is None:
        pass
    elif (subject := _no_newlines(subject, "subject")).isascii() and "=?" not in subject:
        msg["Subject"] = subject
    else:
        # Header encodes the whole subject, so a "=?" in it reads back as text, not as an
        # encoded word the email package would decode and write out. email's own folder also
        # drops the space before an encoded word that starts a folded line (CPython gh-144156).
        msg.set_raw("Subject", Header(subject, "utf-8", header_name="Subject")
                    .encode(linesep="\r\n"))
    if letter.reply_to:
        _set_line(msg, _author_mailbox("Reply-To", letter.reply_to, "reply_to"))
    msg["List-Id"] = letter.list_id
    # RFC 8058: with List-Unsubscribe (per recipient) this announces one-click unsubscribe.
    msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"


def build_message(
    letter: Letter,
    /,
    *,
    to_email: str,
    to_name: str = "",
    unsubscribe_url: str,
    manage_url: str = "#",
    msg_id: str,
    date: datetime,
    values: Mapping[str, str] | None = None,
) -> EmailMessage:
    """The complete message for one recipient, built by the email package; `values` are
    their personal fields' values by marker (Field.marker).

    The reference for `PreparedMessage.personalize`, which the sender uses; here for test
    copies and previews, where building one message slowly costs nothing.

    Raises:
        InputError: a recipient value with a line break, or an address no header can carry.
    """
    msg = EmailMessage(policy=_POLICY)
    _set_line(msg, mailbox_header("To", to_name, to_email, name_field="name", address_field="to"))
    msg["Date"] = format_datetime(date)
    msg["Message-ID"] = _no_newlines(msg_id, "message_id")
    # Raw, as the fast path writes it: a URL is not text to decode RFC 2047 words from.
    msg.set_raw("List-Unsubscribe", f"<{_no_newlines(unsubscribe_url, 'unsubscribe_url')}>")
    _shared_headers(msg, letter, subject=personal_subject(letter.rendered, values))
    html, text = personalize(letter.rendered, unsubscribe_url=unsubscribe_url,
                             manage_url=manage_url, values=values)
    msg.set_content(text, subtype="plain", charset="utf-8")
    msg.add_alternative(html, subtype="html", charset="utf-8")
    return msg


def build_notice(sender: str, /, *, to_email: str, subject: str, text: str, html: str,
                 date: datetime) -> EmailMessage:
    """A one-off message of the list to one address (the double opt-in email), its headers
    written by the same rules as an issue's.

    Raises:
        InputError: a sender, address or subject no header can carry as it is.
    """
    msg = EmailMessage(policy=_POLICY)
    _set_line(msg, _author_mailbox("From", sender, "from"))
    _set_line(msg, mailbox_header("To", "", to_email, name_field="name", address_field="to"))
    msg.set_raw("Subject", Header(_no_newlines(subject, "subject"), "utf-8",
                                  header_name="Subject").encode(linesep="\r\n"))
    msg["Date"] = format_datetime(date)
    msg["Message-ID"] = message_id(parseaddr(sender)[1].rpartition("@")[2] or "localhost")
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to this
    msg.set_content(text, subtype="plain", charset="utf-8")
    msg.add_alternative(html, subtype="html", charset="utf-8")
    return msg


# -- the fast path: encode once per issue, splice per recipient ---------------------------------

_BOUNDARY_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
_Slot = tuple[str, bool]  # what goes there (a URL slot or a field marker), and in HTML?


@dataclass(frozen=True)
class PreparedMessage:
    """An issue's message rendered and MIME-encoded once; `personalize` splices one recipient in.

    The recipient's parts (To, Date, Message-ID, List-Unsubscribe, the unsubscribe and manage
    URLs and the personal field values in both bodies, and a Subject holding fields) are the
    only bytes made per message: the rest is shared, already in CRLF form, so a send of
    100,000 messages encodes the issue once, not 100,000 times.
    """

    head: bytes  # the headers every recipient shares, CRLF-terminated
    body_pieces: tuple[bytes, ...]  # the encoded body, cut at each slot
    slots: tuple[_Slot, ...]  # per cut: what goes there, HTML-escaped or as text
    wire_pieces: tuple[bytes, ...]  # body_pieces dot-stuffed once for SMTP DATA
    # A Subject with fields, cut at their markers (the odd items); () when it is shared.
    subject_pieces: tuple[str, ...] = ()

    def personalize(self, *, to_email: str, to_name: str = "", unsubscribe_url: str,
                    manage_url: str = "#", msg_id: str, date: datetime,
                    values: Mapping[str, str] | None = None, wire: bool = False) -> bytes:
        """The complete message bytes for one recipient; `values` are their personal
        fields' values by marker (a marker without one is left empty).

        With `wire`, the bytes are already dot-stuffed as SMTP DATA wants them
        (`SmtpTransport.send(..., wire_ready=True)`), so no pass over them is needed.

        Raises:
            InputError: a recipient value with a line break, or an address no header can
                carry.
        """
        pieces = self.wire_pieces if wire else self.body_pieces
        url = _no_newlines(unsubscribe_url, "unsubscribe_url")
        manage = _no_newlines(manage_url, "manage_url")
        # Encoded once per distinct slot: a field used three times is escaped once.
        encoded: dict[_Slot, bytes] = {
            (UNSUBSCRIBE_SLOT, True): qp_url(html.escape(url, quote=True)),
            (UNSUBSCRIBE_SLOT, False): qp_url(url),
            (MANAGE_SLOT, True): qp_url(html.escape(manage, quote=True)),
            (MANAGE_SLOT, False): qp_url(manage),
        }
        own = values or {}
        out = [
            mailbox_header("To", to_name, to_email, name_field="name",
                           address_field="to").encode("ascii"),
            b"Date: ", format_datetime(date).encode("ascii"),
            b"\r\nMessage-ID: ", _no_newlines(msg_id, "message_id").encode("ascii"),
            b"\r\nList-Unsubscribe: <", url.encode("ascii"), b">\r\n",
        ]
        if self.subject_pieces:
            # Written by addresses.text_header: a value is text, never a header of its own.
            subject = "".join(own.get(piece, "") if i % 2 else piece
                              for i, piece in enumerate(self.subject_pieces))
            out.append(text_header("Subject", one_line(subject),
                                   field="subject").encode("ascii"))
        out += [self.head, b"\r\n", pieces[0]]
        for slot, piece in zip(self.slots, pieces[1:], strict=True):
            data = encoded.get(slot)
            if data is None:
                value = body_value(own.get(slot[0], ""))
                data = encoded[slot] = qp_value(html.escape(value, quote=True) if slot[1]
                                                 else value)
            out.append(data)
            out.append(piece)
        return b"".join(out)


def prepare_message(letter: Letter, /) -> PreparedMessage:
    """Render and encode the shared part of an issue's message once.

    Raises:
        InputError: a sender, reply-to or subject with a line break.
    """
    rendered = letter.rendered
    subject_pieces = SLOTS.split(rendered.subject)
    personal = len(subject_pieces) > 1  # the Subject holds fields
    shared = EmailMessage(policy=_POLICY)
    _shared_headers(shared, letter, subject=None if personal else rendered.subject)
    boundary = "===============" + "".join(random.choices(_BOUNDARY_ALPHABET, k=24)) + "=="
    shared["MIME-Version"] = "1.0"
    shared["Content-Type"] = f'multipart/alternative; boundary="{boundary}"'
    head = shared.as_bytes().split(b"\r\n\r\n", 1)[0] + b"\r\n"
    pieces: list[bytes] = []
    slots: list[_Slot] = []
    current = b""
    parts = (("plain", rendered.text, False), ("html", rendered.html, True))
    for subtype, content, is_html in parts:
        current += (f"--{boundary}\r\nContent-Type: text/{subtype}; charset=\"utf-8\"\r\n"
                    "Content-Transfer-Encoding: quoted-printable\r\n\r\n").encode("ascii")
        # re.split keeps each slot between the segments, to say what goes there.
        cut = SLOTS.split(content.replace("\r\n", "\n"))
        segments, kinds = cut[::2], cut[1::2]
        # As the email package does: text parts end in a line break of their own.
        if not segments[-1].endswith("\n"):
            segments[-1] += "\n"
        for segment, kind in zip(segments[:-1], kinds, strict=True):
            pieces.append(current + qp_piece(segment))
            slots.append((kind, is_html))
            current = b""
        # RFC 2046 §5.1.1: the CRLF before a boundary belongs to the boundary.
        current += qp(segments[-1]) + b"\r\n"
    pieces.append(current + f"--{boundary}--\r\n".encode("ascii"))
    return PreparedMessage(head=head, body_pieces=tuple(pieces), slots=tuple(slots),
                           wire_pieces=tuple(dot_stuff(piece) for piece in pieces),
                           subject_pieces=tuple(subject_pieces) if personal else ())
