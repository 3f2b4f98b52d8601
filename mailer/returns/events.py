"""ProviderEvent: one bounce, complaint or delay that a sending provider reports by webhook."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from email.utils import parseaddr

from mailer.errors import InputError
from mailer.returns.kinds import ReturnKind, judge_status

# A provider's diagnostic can carry a whole SMTP transcript; what we keep is for a log line
# and a status page, not a forensic copy.
_MAX_DETAIL = 500


class SignatureError(InputError):
    """A webhook request is not from the provider: bad signature, too old, or an untrusted
    signing certificate. The HTTP route answers 403 and changes nothing."""


@dataclass(frozen=True, slots=True)
class ProviderEvent:
    """What a provider says happened to one message for one recipient.

    `message_id` is our Message-ID in angle brackets, as we wrote it in the header, so it
    matches the delivery row; `provider_id` is the provider's own id of the message.
    """

    kind: ReturnKind
    address: str
    message_id: str | None
    verp: str | None
    status: str | None
    detail: str
    provider: str
    occurred_at: datetime | None
    provider_id: str | None = None


def judged(kind: ReturnKind, status: str | None, diagnostic: str | None = None,
           smtp_code: int | None = None) -> tuple[ReturnKind, str | None]:
    """The kind and RFC 3463 status of what a provider reported as `kind`.

    A provider's bare verdict (HARD, SOFT, UNKNOWN: its bounce type) yields to a specific
    status code, so the same code means the same thing whatever brought it back (a 5.7.1
    "blocked as spam" that a provider files as a hard bounce would otherwise drop a good
    reader). A finer verdict of the provider's own (POLICY, COMPLAINT, AUTO_REPLY, DELAYED)
    stands.
    """
    verdict = judge_status(status, smtp_code, diagnostic or "")
    specific = verdict.status is not None and not verdict.status.endswith(".0.0")
    if kind in (ReturnKind.HARD, ReturnKind.SOFT, ReturnKind.UNKNOWN) and specific:
        return verdict.kind, verdict.status
    return kind, verdict.status


def our_message_id(value: str | None) -> str | None:
    """A Message-ID as we wrote it, `<id@domain>`; providers that drop the brackets get them
    back, so it compares equal to the one in the delivery row."""
    text = (value or "").strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    if not text or any(c.isspace() or c in "<>" for c in text):
        return None
    return f"<{text}>"


def recipient(text: str, field: str) -> str:
    """The bare address in a provider's recipient field (which may carry a display name),
    lower-cased as subscriber addresses are compared.

    Raises:
        InputError: no address in it.
    """
    address = parseaddr(text)[1].strip().lower()
    if "@" not in address:
        raise InputError(f"not an email address: {text[:80]!r}", field=field)
    return address


def trimmed(text: str | None) -> str:
    """A provider's diagnostic on one line, at most 500 characters."""
    line = " ".join((text or "").split())
    return line if len(line) <= _MAX_DETAIL else line[: _MAX_DETAIL - 1] + "…"
