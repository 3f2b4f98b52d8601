"""Apply one returned message: match it to the delivery it is about, decide by the bounce
rules, store it with its evidence, suppress the address. The one use case that the SMTP
receiver, the IMAP poller, `mailer bounces process` and the provider webhooks all call."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from mailer.bounces.ports import ReturnStore
from mailer.bounces.rules import IGNORED_KINDS, decide, soft_bounces
from mailer.config import Settings
from mailer.errors import TokenError
from mailer.keys import token_key
from mailer.returns.events import ProviderEvent
from mailer.returns.evidence import evidence
from mailer.returns.kinds import ReturnKind
from mailer.returns.parse import read_returned
from mailer.returns.verp import delivery_of, is_verp_for
from mailer.rows import ReturnRecord, ReturnTarget

log = logging.getLogger("mailer.bounces")

SOURCES = ("smtp", "imap", "pipe", "ses", "postmark", "mailgun")
_MAX_DIAGNOSTIC = 1000  # the remote server's text, for a status line, not a transcript


class Disposition(StrEnum):
    """What became of one returned message."""

    APPLIED = "applied"  # stored, and the rules acted (or counted it)
    DUPLICATE = "duplicate"  # seen before: nothing changed
    NOT_OURS = "not_ours"  # no delivery of ours matched, or a forged VERP token
    IGNORED = "ignored"  # an auto-reply, a delay notice, unknown: stored as evidence only


@dataclass(frozen=True)
class Applied:
    """What one returned message did."""

    kind: ReturnKind
    outcome: Disposition
    delivery_id: int | None
    address: str | None
    action: str  # one human line: "hard bounce: ada@example.com is now bounced"


@dataclass(frozen=True, slots=True)
class _Incoming:
    """A returned message or a provider event, reduced to what applying needs."""

    kind: ReturnKind
    fingerprint: str
    source: str
    reason: str
    status: str | None
    smtp_code: int | None
    diagnostic: str
    message_id: str | None
    evidence: bytes


class _NotOurs(Exception):
    """No delivery of ours matches; the message is a stranger's or forged (why: str(exc))."""


async def apply_returned(store: ReturnStore, raw: bytes, *, source: str, settings: Settings,
                         envelope_recipients: Sequence[str] = (), now: datetime) -> Applied:
    """Apply one returned message (a DSN, an ARF complaint, an auto-reply, anything).

    `envelope_recipients` are the SMTP RCPT TO addresses it came with, when known: the VERP
    address is looked for there first, then in its To/Delivered-To headers, then in the
    Return-Path of the original it quotes; without one, the original's Message-ID is used.

    Raises:
        InputError: the message is larger than mailer.returns.parse.MAX_BYTES.
    """
    _check_source(source)
    returned = read_returned(raw, envelope_recipients=envelope_recipients)
    report = next((r for r in returned.recipients if r.kind == returned.kind), None)
    incoming = _Incoming(
        kind=returned.kind, fingerprint="sha256:" + hashlib.sha256(raw).hexdigest(),
        source=source, reason=returned.reason, status=report.status if report else None,
        smtp_code=report.smtp_code if report else None,
        diagnostic=report.diagnostic[:_MAX_DIAGNOSTIC] if report else "",
        message_id=returned.original_message_id, evidence=evidence(raw))
    verps = [a for a in (*envelope_recipients, *returned.envelope_to,
                         returned.original_return_path) if a]
    if await store.returned_seen(incoming.fingerprint):
        return _done(incoming, Disposition.DUPLICATE, None, "duplicate: applied before")
    try:
        target = await _match(store, settings, verps=verps, message_id=incoming.message_id)
        # Found by Message-ID alone (no signed token): a bounce that names other
        # addresses than the one the message went to is not about our delivery.
        if target is not None and not _verp_of(verps, settings) and returned.addresses \
                and returned.kind not in (ReturnKind.COMPLAINT, *IGNORED_KINDS) \
                and target.email.lower() not in returned.addresses:
            raise _NotOurs("not ours: the report is about an address this message never "
                           "went to")
    except _NotOurs as exc:
        return _done(incoming, Disposition.NOT_OURS, None, str(exc))
    return await _apply(store, incoming, target, settings=settings, now=now)


async def apply_event(store: ReturnStore, event: ProviderEvent, *, source: str,
                      settings: Settings, raw: bytes = b"", now: datetime) -> Applied:
    """Apply one bounce, complaint or delay a provider reported by webhook (already checked
    for its signature); `raw` is the request body, kept as evidence.

    A retried webhook changes nothing: the event is known by the provider's message id,
    the recipient, the kind and when it happened (by the body, when the provider gave no id).
    """
    _check_source(source)
    identity = [event.provider, event.provider_id or "", event.kind.value, event.address,
                event.status or "", event.occurred_at.isoformat() if event.occurred_at else ""]
    if not event.provider_id or event.occurred_at is None:
        identity.append(hashlib.sha256(raw).hexdigest())
    incoming = _Incoming(
        kind=event.kind,
        fingerprint="event:" + hashlib.sha256("\x00".join(identity).encode()).hexdigest(),
        source=source, reason=f"{event.provider} reported {event.kind.value}",
        status=event.status, smtp_code=None, diagnostic=event.detail[:_MAX_DIAGNOSTIC],
        message_id=event.message_id, evidence=evidence(raw))
    if await store.returned_seen(incoming.fingerprint):
        return _done(incoming, Disposition.DUPLICATE, None, "duplicate: applied before")
    try:
        target = await _match(store, settings, verps=[event.verp] if event.verp else [],
                              message_id=event.message_id, verp_last=True)
        if target is None and event.address:
            # Postmark reports its own message id, not ours: the event is signed by the
            # provider we sent through, so it is about the latest message it took for
            # that address.
            target = await store.return_target(email=event.address)
        if target is not None and event.address \
                and target.email.lower() != event.address.lower():
            raise _NotOurs("not ours: the event is about an address this message never "
                           "went to")
    except _NotOurs as exc:
        return _done(incoming, Disposition.NOT_OURS, None, str(exc))
    return await _apply(store, incoming, target, settings=settings, now=now)


async def _apply(store: ReturnStore, incoming: _Incoming, target: ReturnTarget | None, *,
                 settings: Settings, now: datetime) -> Applied:
    kind = incoming.kind
    if target is None:
        return _done(incoming, Disposition.NOT_OURS, None,
                     "not ours: no message of ours matches it")
    send = f"{target.newsletter}/{target.slug}"
    soft_count = 0
    if kind == ReturnKind.SOFT:
        history = await store.delivery_history(target.email)
        soft_count = soft_bounces(history, this=target.delivery_id,
                                  this_sent_at=target.sent_at,
                                  days=settings.soft_bounce_days, now=now)
    decision = decide(kind, address=target.email, send=send, soft_count=soft_count,
                      soft_limit=settings.soft_bounce_limit, soft_days=settings.soft_bounce_days)
    record = ReturnRecord(
        received_at=now, source=incoming.source, kind=kind.value,
        fingerprint=incoming.fingerprint, delivery_id=target.delivery_id,
        send_id=target.send_id, subscription_id=target.subscription_id, address=target.email,
        status_code=incoming.status, smtp_code=incoming.smtp_code,
        diagnostic=incoming.diagnostic, reason=incoming.reason,
        message_id=incoming.message_id, evidence=incoming.evidence)
    if not await store.record_returned(record, suppress=decision.suppress):
        return _done(incoming, Disposition.DUPLICATE, target, "duplicate: applied before")
    outcome = Disposition.IGNORED if kind in IGNORED_KINDS else Disposition.APPLIED
    return _done(incoming, outcome, target, decision.action)


async def _match(store: ReturnStore, settings: Settings, *, verps: Sequence[str],
                 message_id: str | None, verp_last: bool = False) -> ReturnTarget | None:
    """The delivery by its signed VERP token, else by Message-ID (a provider event: the
    other way round, its message id being the provider's own record of what we sent).

    Raises:
        _NotOurs: a VERP token that fails the signature check, or names no delivery.
    """
    if verp_last and message_id:
        found = await store.return_target(message_id=message_id)
        if found is not None:
            return found
    verp = _verp_of(verps, settings)
    if verp is not None and settings.bounce_address:
        try:
            delivery_id = delivery_of(verp, settings.bounce_address, token_key(settings))
        except TokenError:
            log.warning("returned message with a forged VERP token: ignored",
                        extra={"verp": verp})
            raise _NotOurs("not ours: forged VERP token") from None
        found = await store.return_target(delivery_id=delivery_id)
        if found is None:
            raise _NotOurs(f"not ours: no delivery {delivery_id} (removed, or another "
                           "installation's)")
        return found
    if message_id and not verp_last:
        return await store.return_target(message_id=message_id)
    return None


def _verp_of(candidates: Sequence[str], settings: Settings) -> str | None:
    if not settings.bounce_address:
        return None
    return next((a for a in candidates if is_verp_for(a, settings.bounce_address)), None)


def _done(incoming: _Incoming, outcome: Disposition, target: ReturnTarget | None,
          action: str) -> Applied:
    applied = Applied(incoming.kind, outcome, target.delivery_id if target else None,
                      target.email if target else None, action)
    if outcome != Disposition.NOT_OURS or "forged" not in action:  # forged: warned already
        log.info(action, extra={"outcome": outcome.value, "kind": incoming.kind.value,
                                "source": incoming.source,
                                "delivery_id": applied.delivery_id})
    return applied


def _check_source(source: str) -> None:
    if source not in SOURCES:
        raise ValueError(f"unknown source of a returned message: {source!r}")
