"""Postmark bounce and spam-complaint webhooks: the basic-auth check and the payload, read."""

from __future__ import annotations

import base64
import hmac
from collections.abc import Mapping

from mailer.returns.events import ProviderEvent, judged, recipient, trimmed
from mailer.returns.kinds import ReturnKind
from mailer.returns.webhooks.payload import optional, required, timestamp

PROVIDER = "postmark"
# Postmark's bounce types ("Bounce webhook", bounce type list) → kind. Types absent here
# (Subscribe, Unsubscribe, OpenRelayTest, InboundError, SMTPApiError, Unconfirmed,
# TemplateRenderingFailed) are about our account or a mail to us, not about the reader's
# address, and give no event.
_BOUNCE_KIND = {
    "HardBounce": ReturnKind.HARD,
    "BadEmailAddress": ReturnKind.HARD,
    # Postmark will not send to this address again until someone reactivates it, which is a
    # hard bounce from where we stand.
    "ManuallyDeactivated": ReturnKind.HARD,
    "SoftBounce": ReturnKind.SOFT,
    "Transient": ReturnKind.SOFT,
    "DnsError": ReturnKind.SOFT,
    # Refused for what the message is or who sent it (spam or virus filter, a block list,
    # DMARC): nothing is known about the mailbox.
    "SpamNotification": ReturnKind.POLICY,
    "VirusNotification": ReturnKind.POLICY,
    "Blocked": ReturnKind.POLICY,
    "DMARCPolicy": ReturnKind.POLICY,
    "AutoResponder": ReturnKind.AUTO_REPLY,
    "AddressChange": ReturnKind.AUTO_REPLY,
    "ChallengeVerification": ReturnKind.AUTO_REPLY,
    "SpamComplaint": ReturnKind.COMPLAINT,
    "Unknown": ReturnKind.UNKNOWN,
}


def check_basic_auth(header: str | None, expected_user: str, expected_password: str) -> bool:
    """Whether an Authorization header carries the webhook's user and password (RFC 7617).

    Both parts are compared in constant time, and both always, so the time taken does not
    tell which one was wrong.
    """
    if header is None or not expected_user or not expected_password:
        return False
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except ValueError:  # binascii.Error, or a str that is not ASCII
        return False
    user, colon, password = decoded.partition(b":")
    user_ok = hmac.compare_digest(user, expected_user.encode("utf-8"))
    password_ok = hmac.compare_digest(password, expected_password.encode("utf-8"))
    return bool(colon) and user_ok and password_ok


def parse_postmark(payload: Mapping[str, object]) -> list[ProviderEvent]:
    """The event a Postmark Bounce or SpamComplaint webhook reports; other records give none.

    Postmark's MessageID is its own id, not our Message-ID: it is `provider_id`, and
    `message_id` is None.

    Raises:
        InputError: a field is missing or has the wrong type.
    """
    record = required(payload, "RecordType", str)
    if record not in ("Bounce", "SpamComplaint"):
        return []
    kind = ReturnKind.COMPLAINT if record == "SpamComplaint" \
        else _BOUNCE_KIND.get(required(payload, "Type", str))
    if kind is None:
        return []
    details = optional(payload, "Details", str)
    description = optional(payload, "Description", str)
    final, status = judged(kind, None, details)
    bounced_at = optional(payload, "BouncedAt", str)
    return [ProviderEvent(
        kind=final,
        address=recipient(required(payload, "Email", str), "Email"),
        message_id=None,
        verp=None,
        status=status,
        detail=trimmed(details or description),
        provider=PROVIDER,
        occurred_at=timestamp(bounced_at, "BouncedAt") if bounced_at is not None else None,
        provider_id=optional(payload, "MessageID", str),
    )]
