"""Builds one newsletter message (pure): multipart/alternative, list headers of RFC 2369/8058."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from email.header import Header
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, make_msgid, parseaddr
from urllib.parse import urlsplit

from mailer.addresses import LINE_BREAKS
from mailer.errors import InputError
from mailer.render import RenderedIssue, personalize


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


def list_id(newsletter_id: str, base_url: str) -> str:
    """RFC 2919 List-Id: `<id.host>`, stable for the life of the list."""
    host = urlsplit(base_url).hostname or "localhost"
    return f"<{newsletter_id}.{host}>"


def message_id(domain: str) -> str:
    """A new globally unique Message-ID in the sender's domain."""
    return make_msgid(domain=domain)



def _no_newlines(value: str, field: str) -> str:
    # A header value with a line break could smuggle in new headers (header injection).
    if LINE_BREAKS.search(value):
        raise InputError("a header value may not contain a line break", field=field)
    return value


def build_message(
    letter: Letter,
    /,
    *,
    to_email: str,
    to_name: str = "",
    unsubscribe_url: str,
    msg_id: str,
    date: datetime,
) -> EmailMessage:
    """The complete message for one recipient.

    Raises:
        InputError: a recipient value with a line break.
    """
    msg = EmailMessage(policy=SMTP)
    msg["From"] = _no_newlines(letter.sender, "from")
    local, _, domain = _no_newlines(to_email, "to").rpartition("@")
    msg["To"] = Address(display_name=_no_newlines(to_name, "name"), username=local, domain=domain)
    subject = _no_newlines(letter.rendered.subject, "subject")
    if subject.isascii():
        msg["Subject"] = subject
    else:
        # email's own folder drops the space before an encoded word that starts a folded
        # line (CPython gh-144156); Header folds RFC 2047 words correctly.
        msg.set_raw("Subject", Header(subject, "utf-8", header_name="Subject")
                    .encode(linesep="\r\n"))
    msg["Date"] = format_datetime(date)
    msg["Message-ID"] = msg_id
    if letter.reply_to:
        msg["Reply-To"] = _no_newlines(letter.reply_to, "reply_to")
    msg["List-Id"] = letter.list_id
    # RFC 8058: both headers together announce one-click unsubscribe by HTTPS POST.
    msg["List-Unsubscribe"] = f"<{_no_newlines(unsubscribe_url, 'unsubscribe_url')}>"
    msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    html, text = personalize(letter.rendered, unsubscribe_url=unsubscribe_url)
    msg.set_content(text, subtype="plain", charset="utf-8")
    msg.add_alternative(html, subtype="html", charset="utf-8")
    return msg
