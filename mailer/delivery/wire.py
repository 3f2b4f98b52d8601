"""SMTP on the wire, pure: the form DATA carries a message in, and what a reply code means."""

from __future__ import annotations

import re

from mailer.errors import DeliveryError, PermanentFailure, TemporaryFailure

# The server closes the channel (RFC 5321 §3.8): the relay's trouble, not the recipient's.
CLOSING = 421

def classify(code: int, reply: str, recipient: str | None = None) -> DeliveryError:
    """The error for an SMTP reply code.

    RFC 5321 §4.2.1: 4yz is transient, 5yz permanent. 552 (mailbox full / storage) is
    treated as transient on purpose: §4.5.3.1.10 notes clients should treat it as 452,
    and a full mailbox empties.
    """
    message = f"{code} {reply}".strip()
    if code >= 500 and code != 552:
        return PermanentFailure(message, code=code, reply=reply, recipient=recipient)
    return TemporaryFailure(message, code=code, reply=reply, recipient=recipient)


_LINE_ENDS = re.compile(rb"\r\n|\n|\r(?!\n)")
_LEADING_DOT = re.compile(rb"^\.", re.MULTILINE)


def wire_form(message: bytes) -> bytes:
    """A message as SMTP DATA carries it: CRLF line ends, dot-stuffed (RFC 5321 §4.5.2),
    ending in CRLF — what aiosmtplib's data() does to every message it sends."""
    message = _LINE_ENDS.sub(b"\r\n", message)
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    return _LEADING_DOT.sub(b"..", message)


# An address MAIL and RCPT can carry between brackets as it is (RFC 5321 §4.1.2: a
# dot-string local part at a domain name). Every subscriber address is one: normalize_email
# keeps the IDNA form and refuses quoted local parts and SMTPUTF8.
PLAIN_ADDRESS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9.-]+")


