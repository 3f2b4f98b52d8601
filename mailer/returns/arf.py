"""RFC 5965 abuse reports (feedback loops): who complained about which message."""

from __future__ import annotations

from email.message import Message

from mailer.returns.headers import (
    address,
    addresses,
    clean,
    field_groups,
    header_text,
    header_values,
    typed_value,
)
from mailer.returns.kinds import ReturnKind
from mailer.returns.returned import Action, RecipientReport, Returned

ARF_TYPES = ("message/feedback-report",)

# Feedback types that are not a reader's complaint: RFC 6591 authentication failure
# reports are about our signing, so about the send; RFC 6430's "not-spam" is the opposite
# of a complaint. Every other type (abuse, fraud, virus, other, none) is a complaint.
_NOT_COMPLAINTS = {"auth-failure": ReturnKind.POLICY, "not-spam": ReturnKind.UNKNOWN}


def read_arf(report_part: Message, original: Message | None) -> Returned:
    """A feedback report read: the feedback type, and the recipient who complained, from
    Original-Rcpt-To or else the reported message's To."""
    groups = field_groups(report_part)
    fields = groups[0] if groups else Message()
    feedback_type = header_text(fields, "Feedback-Type", 64).lower() or None
    kind = _NOT_COMPLAINTS.get(feedback_type or "", ReturnKind.COMPLAINT)
    found = [addr for value in header_values(fields, "Original-Rcpt-To")
             if (addr := address(value))]
    if not found and original is not None:
        # Providers often leave Original-Rcpt-To out; the reported message's To is the
        # reader unless they redacted it too (then only the VERP Return-Path is left).
        found = [addr.lower() for addr in addresses(header_values(original, "To"))]
    recipients = tuple(RecipientReport(address=addr, action=Action.NONE, status=None,
                                       diagnostic="", kind=kind)
                       for addr in dict.fromkeys(found))
    who = ", ".join(r.address for r in recipients[:3]) or "an unnamed recipient"
    what = {ReturnKind.COMPLAINT: "reported the message as unwanted",
            ReturnKind.POLICY: "our message failed authentication",
            ReturnKind.UNKNOWN: "reported the message as not spam"}[kind]
    return Returned(
        kind=kind,
        reason=clean(f"feedback report ({feedback_type or 'no type'}): {who}: {what}"),
        recipients=recipients,
        feedback_type=feedback_type,
        reporting_mta=typed_value(header_text(fields, "Reporting-MTA")) or None,
        original_return_path=address(header_text(fields, "Original-Mail-From"), lower=False),
    )

