"""The verdict on one returned message: its kind, who it is about, and what identifies the
message we sent."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from mailer.returns.kinds import ReturnKind


class Action(StrEnum):
    """What a reporting MTA did for one recipient (RFC 3464 §2.3.3), or NONE outside a DSN."""

    FAILED = "failed"
    DELAYED = "delayed"
    DELIVERED = "delivered"
    RELAYED = "relayed"
    EXPANDED = "expanded"
    NONE = ""  # a complaint, an auto-reply, a non-standard bounce: no Action field


@dataclass(frozen=True, slots=True)
class RecipientReport:
    """What a returned message says about one recipient of the message we sent."""

    address: str  # Original-Recipient if given (the address we sent to), else Final-Recipient
    action: Action
    status: str | None  # the RFC 3463 code that decided `kind` ("5.1.1"), if there was one
    diagnostic: str  # Diagnostic-Code, one line, trimmed
    kind: ReturnKind
    smtp_code: int | None = None  # the remote server's basic reply code, when reported


@dataclass(frozen=True, slots=True)
class Returned:
    """A returned message read: what kind it is, why, and how to find the delivery it is
    about (VERP address, Message-ID, envelope id)."""

    kind: ReturnKind
    reason: str  # one line: why this kind, for logs and `mailer bounces list`
    recipients: tuple[RecipientReport, ...] = ()
    # Every address the returned message was sent to that could be our VERP address: the
    # SMTP envelope recipients first, then To, Delivered-To, X-Original-To, Envelope-To.
    envelope_to: tuple[str, ...] = ()
    original_message_id: str | None = None
    original_return_path: str | None = None  # the original's envelope sender: our VERP
    original_envelope_id: str | None = None  # RFC 3461 ENVID, when we set one
    feedback_type: str | None = None  # ARF only: abuse, fraud, virus, other, …
    reporting_mta: str | None = None
    subject: str = ""

    @property
    def addresses(self) -> tuple[str, ...]:
        """The recipients this message is a verdict on: those of the message's own kind."""
        return tuple(dict.fromkeys(r.address for r in self.recipients if r.kind == self.kind))
