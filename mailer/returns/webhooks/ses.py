"""Amazon SES bounce, complaint and delay notifications (inside a verified SNS message), read."""

from __future__ import annotations

import json
from collections.abc import Mapping

from mailer.errors import InputError
from mailer.returns.events import ProviderEvent, judged, our_message_id, recipient, trimmed
from mailer.returns.kinds import ReturnKind
from mailer.returns.webhooks.payload import mapping, objects, optional, required, timestamp

PROVIDER = "ses"
# bounceType → kind ("Amazon SNS notification contents for Amazon SES", Bounce types).
# Undetermined means SES could not tell from the bounce message: UNKNOWN, which the
# suppression rules count as nothing by itself, never as HARD (it would drop a good reader).
_BOUNCE_KIND = {"Permanent": ReturnKind.HARD, "Transient": ReturnKind.SOFT,
                "Undetermined": ReturnKind.UNKNOWN}
# Transient subtypes that refuse this message, not the mailbox: a content or attachment
# filter says nothing about the address.
_POLICY_SUBTYPES = frozenset({"ContentRejected", "AttachmentRejected"})


def parse_ses(message: Mapping[str, object]) -> list[ProviderEvent]:
    """The events an SNS Notification from SES reports: one per recipient named in it.

    Reads both SES notifications (`notificationType`) and configuration-set event
    publishing (`eventType`). Deliveries, sends, opens and the rest report no return and give
    an empty list, as does any SNS message that is not a Notification.

    Raises:
        InputError: the Message is not JSON, or a field is missing or mistyped.
    """
    if required(message, "Type", str) != "Notification":
        return []
    try:
        body = json.loads(required(message, "Message", str))
    except (ValueError, RecursionError):
        raise InputError("not JSON", field="Message") from None
    if not isinstance(body, Mapping):
        raise InputError("expected a JSON object", field="Message")
    kind = optional(body, "eventType", str) or required(body, "notificationType", str)
    mail = mapping(body, "mail")
    header = _header(mail, "Message-ID")
    common = mapping(mail, "commonHeaders", "mail", missing_ok=True)
    message_id = our_message_id(header or optional(common, "messageId", str,
                                                  "mail.commonHeaders"))
    base = {"message_id": message_id, "verp": optional(mail, "source", str, "mail"),
            "provider": PROVIDER, "provider_id": optional(mail, "messageId", str, "mail")}
    if kind == "Bounce":
        bounce = mapping(body, "bounce")
        bounce_type = required(bounce, "bounceType", str, "bounce")
        general = _BOUNCE_KIND.get(bounce_type, ReturnKind.UNKNOWN)
        if general == ReturnKind.SOFT and optional(bounce, "bounceSubType", str, "bounce") \
                in _POLICY_SUBTYPES:
            general = ReturnKind.POLICY
        return _recipients(bounce, "bounce", "bouncedRecipients", general, base)
    if kind == "Complaint":
        complaint = mapping(body, "complaint")
        return _recipients(complaint, "complaint", "complainedRecipients", ReturnKind.COMPLAINT,
                           base)
    if kind == "DeliveryDelay":
        delay = mapping(body, "deliveryDelay")
        return _recipients(delay, "deliveryDelay", "delayedRecipients", ReturnKind.DELAYED,
                           base)
    return []


def _recipients(event: Mapping[str, object], path: str, key: str, kind: ReturnKind,
                base: Mapping[str, str | None]) -> list[ProviderEvent]:
    occurred = optional(event, "timestamp", str, path)
    when = timestamp(occurred, f"{path}.timestamp") if occurred is not None else None
    events = []
    for index, item in enumerate(objects(event, key, path)):
        where = f"{path}.{key}[{index}]"
        diagnostic = optional(item, "diagnosticCode", str, where)
        final, status = judged(kind, optional(item, "status", str, where), diagnostic)
        events.append(ProviderEvent(
            kind=final,
            address=recipient(required(item, "emailAddress", str, where),
                              f"{where}.emailAddress"),
            status=status, detail=trimmed(diagnostic), occurred_at=when,
            message_id=base["message_id"], verp=base["verp"], provider=PROVIDER,
            provider_id=base["provider_id"],
        ))
    return events


def _header(mail: Mapping[str, object], name: str) -> str | None:
    # mail.headers is there only when "include original headers" is on; it is the exact
    # header we wrote, where commonHeaders is SES's reading of it.
    for index, item in enumerate(objects(mail, "headers", "mail")):
        where = f"mail.headers[{index}]"
        if required(item, "name", str, where).lower() == name.lower():
            return required(item, "value", str, where)
    return None
