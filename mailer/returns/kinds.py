"""What a returned message means for the address and the send: its kind, and the RFC 3463
enhanced status code rules that decide it."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


class ReturnKind(StrEnum):
    """What came back, as the bounce rules act on it."""

    HARD = "hard"  # the address does not exist or never will take mail: suppress it
    SOFT = "soft"  # the mailbox exists but could not take this one (full, host down): count it
    POLICY = "policy"  # refused for the send's reputation or content: counts against the send
    COMPLAINT = "complaint"  # the reader reported the message as spam (RFC 5965)
    AUTO_REPLY = "auto_reply"  # vacation, out-of-office, ticket acknowledgement: ignored
    DELAYED = "delayed"  # still being retried (DSN Action: delayed): informational
    UNKNOWN = "unknown"  # could not tell; stored as evidence, acted on by nobody


# Which kind wins when one report names several recipients: the one that acts most.
_SEVERITY = (ReturnKind.HARD, ReturnKind.POLICY, ReturnKind.SOFT, ReturnKind.UNKNOWN)

# "5.1.1", also inside "5.1.1 (bad mailbox)" or a reply text: RFC 3463 §2, class.subject.detail.
_ENHANCED = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.]*\d)")
# The basic reply code a Diagnostic-Code of type smtp starts with (RFC 3464 §2.3.6).
_REPLY_CODE = re.compile(r"\s*(?:smtp\s*;\s*)?([2-5]\d\d)(?![\d.])", re.IGNORECASE)

# Exceptions to the subject-wide rules below, by full code (RFC 3463 and its IANA registry).
_EXACT: dict[str, tuple[ReturnKind, str]] = {
    # The *sender's* address is bad: ours, not the recipient's, so the send carries it.
    "5.1.7": (ReturnKind.POLICY, "our sender address was refused"),
    "5.1.8": (ReturnKind.POLICY, "our sender domain was refused"),
    "5.2.1": (ReturnKind.HARD, "the mailbox is disabled"),
    "5.2.2": (ReturnKind.SOFT, "the mailbox is full"),
    # The message, not the mailbox, is too big: a property of the send.
    "5.2.3": (ReturnKind.POLICY, "the message is larger than the mailbox allows"),
    "5.3.4": (ReturnKind.POLICY, "the message is larger than the system allows"),
    # Microsoft's edge blocking answers 550 5.4.1 for a recipient its directory does not
    # have; a host that does not answer is 4.4.1 and arrives as a temporary failure.
    "5.4.1": (ReturnKind.HARD, "the recipient's domain refused the address"),
    # No route to the domain (no MX or A), or the domain does not exist (Microsoft's
    # 5.4.310): the address can never receive mail as written.
    "5.4.4": (ReturnKind.HARD, "the recipient's domain cannot be routed to"),
    "5.4.310": (ReturnKind.HARD, "the recipient's domain does not exist"),
    # Account-level refusals registered under "security": the address, not the send.
    "5.7.13": (ReturnKind.HARD, "the user account is disabled"),  # RFC 7372
    "5.7.17": (ReturnKind.HARD, "the mailbox has a new owner"),  # RFC 7293
    "5.7.18": (ReturnKind.HARD, "the domain has a new owner"),  # RFC 7293
}

# By class 5 and subject, when the full code is not above (RFC 3463 §3.2–3.8).
_SUBJECT: dict[str, tuple[ReturnKind, str]] = {
    "1": (ReturnKind.HARD, "the address does not exist"),
    # Other mailbox states (5.2.0, 5.2.4 list expansion): the mailbox exists, so no
    # verdict on the address from one report; counted soft so repeats still add up.
    "2": (ReturnKind.SOFT, "the mailbox could not take the message"),
    # The destination system is full, not accepting, misconfigured: its state, which gets
    # fixed, says nothing about the mailbox.
    "3": (ReturnKind.SOFT, "the destination mail system could not take the message"),
    # Routing trouble (5.4.2 bad connection, 5.4.6 loop, 5.4.7 expired after retrying):
    # the path failed, not the address; the two address-level ones are in _EXACT.
    "4": (ReturnKind.SOFT, "the message could not be routed"),
    # Protocol errors (5.5.1 bad command … 5.5.6): a conversation between two programs went
    # wrong; nothing about the address, and nothing about the content either.
    "5": (ReturnKind.UNKNOWN, "an SMTP protocol error"),
    # The content or its encoding was refused (5.6.x): the send's doing.
    "6": (ReturnKind.POLICY, "the message content was refused"),
    # Security and policy: spam filters, blocklists, DMARC, reputation.
    "7": (ReturnKind.POLICY, "refused by the receiver's policy: spam, reputation or "
                             "authentication"),
}

# Basic SMTP reply codes, for a report without an enhanced code (RFC 5321 §4.2.2–4.2.3).
_REPLY: dict[int, tuple[ReturnKind, str]] = {
    550: (ReturnKind.HARD, "mailbox unavailable"),
    551: (ReturnKind.HARD, "user not local"),
    553: (ReturnKind.HARD, "mailbox name not allowed"),
    # RFC 5321 §4.5.3.1.10: 552 is used for "too much mail" and treated as temporary.
    552: (ReturnKind.SOFT, "exceeded storage allocation"),
    # "Transaction failed" is what blocklists, spam filters and greetings that refuse our
    # host answer; when it is a bad address the server nearly always adds 5.1.x. So a bare
    # 554 is charged to the send, never used to suppress a reader.
    554: (ReturnKind.POLICY, "transaction failed"),
    # RFC 7504: the host or the domain accepts no mail at all.
    521: (ReturnKind.HARD, "the host accepts no mail"),
    556: (ReturnKind.HARD, "the domain accepts no mail"),
}


@dataclass(frozen=True, slots=True)
class StatusVerdict:
    """A status judged: its kind, the enhanced code that decided it (if any), and why."""

    kind: ReturnKind
    status: str | None
    why: str


def judge_status(status: str | None, smtp_code: int | None = None,
                 diagnostic: str = "") -> StatusVerdict:
    """The kind a failed delivery's status means, with the code that decided it and why.

    `status` is a DSN Status field (RFC 3463, "5.1.1", comments allowed); a generic one
    (X.0.0) or none defers to a finer code or a reply code in `diagnostic`, then to
    `smtp_code`.
    """
    found = _ENHANCED.match(status.strip()) if status else None
    code = ".".join(found.groups()) if found else None
    if code is None or code.endswith(".0.0"):
        finer = _ENHANCED.search(diagnostic)
        # Only a code of the same class refines (a "5.0.0" never becomes a "4.x.x").
        if finer and (code is None or finer.group(1) == code[0]):
            code = ".".join(finer.groups())
    if smtp_code is None:
        smtp_code = reply_code(diagnostic)
    if code is not None and smtp_code is not None and str(smtp_code)[0] != code[0]:
        smtp_code = None  # the status's class wins over a contradicting reply code
    if code is not None and not code.endswith(".0.0"):
        return _by_code(code)
    if smtp_code is not None:
        return _by_reply(smtp_code, code)
    if code is not None:
        kinds = {"2": ReturnKind.UNKNOWN, "4": ReturnKind.SOFT, "5": ReturnKind.UNKNOWN}
        why = {"2": "a success status", "4": "a temporary failure",
               # Permanent, but nothing says the address is why: never suppress on it.
               "5": "a permanent failure without a reason"}
        return StatusVerdict(kinds[code[0]], code, why[code[0]])
    return StatusVerdict(ReturnKind.UNKNOWN, None, "no status code")


def kind_of_status(status: str | None, smtp_code: int | None = None,
                   diagnostic: str = "") -> ReturnKind:
    """The kind a failed delivery's RFC 3463 status (or, without one, its SMTP reply code)
    means; see judge_status."""
    return judge_status(status, smtp_code, diagnostic).kind


def reply_code(diagnostic: str) -> int | None:
    """The basic SMTP reply code a Diagnostic-Code ("smtp; 550 5.1.1 …") or reply starts with."""
    found = _REPLY_CODE.match(diagnostic)
    return int(found.group(1)) if found else None


def most_severe(kinds: Iterable[ReturnKind]) -> ReturnKind:
    """The kind of a report from its recipients' failure kinds: HARD > POLICY > SOFT >
    UNKNOWN (others count as UNKNOWN)."""
    present = set(kinds)
    return next((kind for kind in _SEVERITY if kind in present), ReturnKind.UNKNOWN)


def _by_code(code: str) -> StatusVerdict:
    klass, subject, _ = code.split(".")
    if klass == "2":
        return StatusVerdict(ReturnKind.UNKNOWN, code, "a success status")
    if klass == "4":
        if subject == "7":
            # A temporary policy refusal that outlived the retries (greylisting never
            # passed, a rate limit on our host): our reputation, not the reader's mailbox.
            return StatusVerdict(ReturnKind.POLICY, code, "deferred by the receiver's policy "
                                                          "until the retries ran out")
        return StatusVerdict(ReturnKind.SOFT, code, "a temporary failure")
    kind, why = _EXACT.get(code) or _SUBJECT.get(subject) or (
        ReturnKind.UNKNOWN, "a permanent failure of an unregistered kind")
    return StatusVerdict(kind, code, why)


def _by_reply(smtp_code: int, code: str | None) -> StatusVerdict:
    if smtp_code in _REPLY:
        kind, why = _REPLY[smtp_code]
        return StatusVerdict(kind, code, f"SMTP {smtp_code}: {why}")
    if 400 <= smtp_code < 500:
        return StatusVerdict(ReturnKind.SOFT, code, f"SMTP {smtp_code}: a temporary failure")
    # 500–504 (syntax), 530/535 (authentication) and the rest: a conversation gone wrong or
    # a code nobody registered; nothing to hold against the address.
    return StatusVerdict(ReturnKind.UNKNOWN, code, f"SMTP {smtp_code}: no verdict on the address")
