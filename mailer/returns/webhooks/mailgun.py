"""Mailgun webhooks: the HMAC signature in the body, checked, and failed/complained events read."""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from mailer.errors import InputError
from mailer.returns.events import (
    ProviderEvent,
    SignatureError,
    judged,
    our_message_id,
    recipient,
    trimmed,
)
from mailer.returns.kinds import ReturnKind
from mailer.returns.webhooks.payload import mapping, optional, required

PROVIDER = "mailgun"
# A bound on timestamps that datetime can hold (year 6325), so no input overflows it.
_LATEST = 2**37
# A little of the future is tolerated for clocks that disagree by some seconds.
MAX_SKEW = timedelta(minutes=5)
# A permanent failure's reason → kind; any other reason is HARD. "old" is Mailgun giving up
# after retrying temporary failures, which says the mailbox was unreachable for a while,
# not that it does not exist. "suppress-unsubscribe" is Mailgun's own unsubscribe list,
# which this program does not use: no event.
_PERMANENT_REASON: dict[str, ReturnKind | None] = {
    "old": ReturnKind.SOFT, "suppress-bounce": ReturnKind.HARD,
    "suppress-complaint": ReturnKind.COMPLAINT, "espblock": ReturnKind.POLICY,
    "suppress-unsubscribe": None,
}


def verify_mailgun(signature: Mapping[str, object], signing_key: str, *, now: datetime,
                   max_age: timedelta) -> None:
    """Check a webhook's `signature` object: HMAC-SHA256 of timestamp + token under the
    webhook signing key, in hex, made at most max_age ago.

    The caller should also refuse a token it has seen before within max_age (a replay).

    Raises:
        InputError: a field is missing or has the wrong type.
        SignatureError: the signature does not match, or the timestamp is too old or in the
            future.
    """
    stamp = required(signature, "timestamp", object, "signature")
    text = str(stamp) if isinstance(stamp, int) and not isinstance(stamp, bool) else stamp
    if not isinstance(text, str) or not text.isascii() or not text.isdigit() or len(text) > 12:
        raise InputError("expected seconds since 1970", field="signature.timestamp")
    token = required(signature, "token", str, "signature")
    given = required(signature, "signature", str, "signature").lower()
    # surrogatepass: a lone surrogate (valid JSON) must fail to match, not crash.
    expected = hmac.new(signing_key.encode("utf-8"),
                        (text + token).encode("utf-8", "surrogatepass"),
                        hashlib.sha256).hexdigest()
    if not signing_key or not hmac.compare_digest(given.encode("ascii", "replace"),
                                                  expected.encode("ascii")):
        raise SignatureError("the signature does not match", field="signature.signature")
    sent = datetime.fromtimestamp(min(int(text), _LATEST), UTC)
    if sent < now - max_age:
        raise SignatureError("the request is too old", field="signature.timestamp")
    if sent > now + MAX_SKEW:
        raise SignatureError("the request is dated in the future", field="signature.timestamp")


def parse_mailgun(payload: Mapping[str, object]) -> list[ProviderEvent]:
    """The event a Mailgun webhook's `event-data` reports: a failure or a complaint; other
    events (delivered, opened, …) give none.

    A temporary failure is DELAYED: Mailgun retries it on its own.

    Raises:
        InputError: a field is missing or has the wrong type.
    """
    data = mapping(payload, "event-data")
    path = "event-data"
    event = required(data, "event", str, path)
    enhanced: str | None = None
    smtp_code: int | None = None
    detail = ""
    kind: ReturnKind | None
    if event == "complained":
        kind = ReturnKind.COMPLAINT
    elif event == "failed":
        severity = required(data, "severity", str, path)
        if severity == "temporary":
            kind = ReturnKind.DELAYED
        elif severity == "permanent":
            reason = optional(data, "reason", str, path) or ""
            kind = _PERMANENT_REASON.get(reason, ReturnKind.HARD)
        else:
            raise InputError(f"unknown severity {severity[:40]!r}", field=f"{path}.severity")
        status = mapping(data, "delivery-status", path, missing_ok=True)
        where = f"{path}.delivery-status"
        enhanced = optional(status, "enhanced-code", str, where)
        smtp_code = optional(status, "code", int, where)
        detail = " ".join(part for part in (optional(status, "message", str, where),
                                            optional(status, "description", str, where)) if part)
    else:
        return []
    if kind is None:
        return []
    final, code = judged(kind, enhanced, detail, smtp_code)
    headers = mapping(mapping(data, "message", path, missing_ok=True), "headers",
                      f"{path}.message", missing_ok=True)
    envelope = mapping(data, "envelope", path, missing_ok=True)
    return [ProviderEvent(
        kind=final,
        address=recipient(required(data, "recipient", str, path), f"{path}.recipient"),
        # Mailgun reports the Message-ID without its angle brackets.
        message_id=our_message_id(optional(headers, "message-id", str,
                                           f"{path}.message.headers")),
        verp=optional(envelope, "sender", str, f"{path}.envelope"),
        status=code,
        detail=trimmed(detail),
        provider=PROVIDER,
        occurred_at=_moment(data, path),
        provider_id=optional(data, "id", str, path),
    )]


def _moment(data: Mapping[str, object], path: str) -> datetime | None:
    value = optional(data, "timestamp", object, path)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or not 0 <= value < _LATEST:
        raise InputError("expected seconds since 1970", field=f"{path}.timestamp")
    return datetime.fromtimestamp(value, UTC)
