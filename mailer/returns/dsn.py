"""RFC 3464 delivery status notifications: the per-recipient field groups of a
message/delivery-status part, judged by their RFC 3463 status codes."""

from __future__ import annotations

from email.message import Message

from mailer.returns.headers import MAX_TEXT, address, clean, field_groups, header_text, typed_value
from mailer.returns.kinds import ReturnKind, judge_status, most_severe, reply_code
from mailer.returns.returned import Action, RecipientReport, Returned

DSN_TYPES = ("message/delivery-status", "message/global-delivery-status")
MAX_RECIPIENTS = 100


def read_dsn(status_part: Message) -> Returned:
    """A delivery status part read: its recipients, and the kind of the whole report (the
    most severe failure; DELAYED when nobody failed and somebody is still being retried)."""
    groups = field_groups(status_part)
    per_message = groups[0] if groups else Message()
    # A message we send has one recipient, so its report names one; a few hundred groups
    # are a report about something else, or a message built to be slow.
    judged = [found for group in groups[1:MAX_RECIPIENTS + 1] if (found := _recipient(group))]
    recipients = tuple(report for report, _ in judged)
    failed = [(r, why) for r, why in judged if r.action is Action.FAILED]
    delayed = [r for r in recipients if r.action is Action.DELAYED]
    if failed:
        kind = most_severe(r.kind for r, _ in failed)
        deciding, why = next((r, why) for r, why in failed if r.kind == kind)
        reason = f"{deciding.address} failed: {why}"
    elif delayed:
        kind, deciding = ReturnKind.DELAYED, delayed[0]
        reason = f"{deciding.address} is delayed and still being retried"
    elif recipients:
        kind, deciding = ReturnKind.UNKNOWN, recipients[0]
        reason = f"a delivery report that names no failure ({deciding.address}: " \
                 f"{deciding.action or 'no action'})"
    else:
        return Returned(ReturnKind.UNKNOWN, "a delivery report without any recipient fields")
    if len(recipients) > 1:
        reason += f" (of {len(recipients)} recipients)"
    if deciding.diagnostic:
        reason += f": {deciding.diagnostic}"
    return Returned(
        kind=kind,
        reason=clean(reason),
        recipients=recipients,
        reporting_mta=typed_value(header_text(per_message, "Reporting-MTA")) or None,
        original_envelope_id=header_text(per_message, "Original-Envelope-Id") or None,
        # Postfix names the original's envelope sender in the report: our VERP address,
        # even when the original itself was not returned.
        original_return_path=address(typed_value(header_text(per_message, "X-Postfix-Sender")),
                                     lower=False),
    )


def _recipient(group: Message) -> tuple[RecipientReport, str] | None:
    # Original-Recipient is the address as we gave it (RFC 3464 §2.3.1, from ORCPT or
    # before aliasing); Final-Recipient is where it ended up.
    addr = address(typed_value(header_text(group, "Original-Recipient"))) or \
        address(typed_value(header_text(group, "Final-Recipient")))
    if addr is None:
        return None
    status = header_text(group, "Status", 64) or None
    diagnostic = header_text(group, "Diagnostic-Code", MAX_TEXT)
    action = _action(header_text(group, "Action", 64), status)
    verdict = judge_status(status, None, diagnostic)
    if action is Action.FAILED:
        kind, why = verdict.kind, verdict.why
    elif action is Action.DELAYED:
        kind, why = ReturnKind.DELAYED, "delayed"
    else:
        kind, why = ReturnKind.UNKNOWN, f"{action or 'no action'}, not a failure"
    report = RecipientReport(address=addr, action=action, status=verdict.status,
                             diagnostic=diagnostic, kind=kind, smtp_code=reply_code(diagnostic))
    return report, f"{verdict.status} ({why})" if verdict.status else why


def _action(text: str, status: str | None) -> Action:
    word = text.split("(")[0].strip().lower()
    if word.startswith(("fail", "error")):  # OpenSMTPD writes "error"
        return Action.FAILED
    for action in (Action.DELAYED, Action.DELIVERED, Action.RELAYED, Action.EXPANDED):
        if word == action.value:
            return action
    if not word and status:
        # Action is required, but a report that leaves it out still says by its class.
        return {"5": Action.FAILED, "4": Action.DELAYED}.get(status.strip()[:1], Action.NONE)
    return Action.NONE

