"""Reading one returned message (bytes in, a Returned out): a delivery report, an abuse
report, an auto-reply, or a bounce in an older format that flufl.bounce recognises."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32

from flufl.bounce import all_failures

from mailer.errors import InputError
from mailer.returns.arf import ARF_TYPES, read_arf
from mailer.returns.dsn import DSN_TYPES, read_dsn
from mailer.returns.headers import (
    address,
    addresses,
    clean,
    embedded,
    header_text,
    header_values,
    message_id,
    parse_bytes,
    walk,
)
from mailer.returns.kinds import ReturnKind
from mailer.returns.returned import Action, RecipientReport, Returned

__all__ = ["MAX_BYTES", "RecipientReport", "ReturnKind", "Returned", "read_returned"]

MAX_BYTES = 10 * 1024 * 1024  # a bounce that returns a whole newsletter with images fits
_SCAN_BYTES = 256 * 1024  # what flufl.bounce's detectors are given of a message

# Headers of the returned message naming where it was delivered: one of them is the VERP
# address when the envelope recipient is not handed over (a pipe, an IMAP mailbox).
_DELIVERED_TO = ("To", "Delivered-To", "X-Original-To", "Envelope-To")
# Only autoresponders write these (a bounce never does), so they win over anything a
# bounce detector might read into a vacation text. Kept tiny on purpose.
_AUTO_REPLY_HEADERS = ("X-Autoreply", "X-Autorespond")
_AUTO_REPLY_SUBJECTS = ("automatic reply", "auto-reply", "autoreply", "out of office",
                        "out-of-office")


def read_returned(raw: bytes, /, *, envelope_recipients: Sequence[str] = (),
                  max_bytes: int = MAX_BYTES) -> Returned:
    """What a returned message is and whom it is about; anything unreadable is UNKNOWN with
    the reason, never an exception.

    `envelope_recipients` are the SMTP RCPT TO addresses it arrived with, when known.

    Raises:
        InputError: the message is larger than max_bytes.
    """
    if len(raw) > max_bytes:
        raise InputError(f"{len(raw)} bytes is more than the {max_bytes} read from a returned "
                         "message", field="returned message")
    envelope = [addr for value in envelope_recipients
                if (addr := clean(value.strip().strip("<>")))]
    if not raw.strip():
        return Returned(ReturnKind.UNKNOWN, "an empty message", envelope_to=tuple(envelope))
    try:
        msg = parse_bytes(raw)
        envelope += [addr for name in _DELIVERED_TO
                     for addr in addresses(header_values(msg, name))]
        parts = list(walk(msg))
        original = next((found for part in parts[1:] if (found := embedded(part))), None)
        result = _classify(msg, parts, original, raw)
    except RecursionError:
        # The parser recurses once per nested multipart; a message built to exhaust that
        # is not a bounce anyone sent. Its header section still says where it went.
        head = BytesHeaderParser(policy=compat32).parsebytes(raw)
        envelope += [addr for name in _DELIVERED_TO
                     for addr in addresses(header_values(head, name))]
        return Returned(ReturnKind.UNKNOWN, "MIME parts nested too deeply to read",
                        envelope_to=tuple(dict.fromkeys(envelope)),
                        subject=header_text(head, "Subject"))
    return_path = address(header_text(original, "Return-Path"), lower=False) if original else None
    return replace(
        result,
        envelope_to=tuple(dict.fromkeys(envelope)),
        subject=header_text(msg, "Subject"),
        original_message_id=message_id(original) if original else None,
        original_return_path=return_path or result.original_return_path,
    )


def _classify(msg: Message, parts: list[Message], original: Message | None,
              raw: bytes) -> Returned:
    # Reports first: a DSN carries "Auto-Submitted: auto-replied" too (RFC 3834 §5).
    for part in parts:
        if part.get_content_type() in ARF_TYPES:
            return read_arf(part, original)
    for part in parts:
        if part.get_content_type() in DSN_TYPES:
            report = read_dsn(part)
            if report.recipients:
                return report
    strong = _auto_reply_sign(msg, strong=True)
    if strong:
        return _auto_reply(msg, strong)
    # The detectors read every line once per pattern (seconds for 10 MiB); a notice puts
    # what failed at the top, before the copy of the original, so the head is enough.
    bounce = _older_bounce(msg if len(raw) <= _SCAN_BYTES else parse_bytes(raw[:_SCAN_BYTES]))
    if bounce.kind is ReturnKind.UNKNOWN:
        weak = _auto_reply_sign(msg, strong=False)
        if weak:
            return _auto_reply(msg, weak)
    return bounce


def _auto_reply_sign(msg: Message, *, strong: bool) -> str:
    if strong:
        for name in _AUTO_REPLY_HEADERS:
            value = header_text(msg, name, 64)
            if value and value.lower() not in ("no", "false", "0"):
                return f"{name}: {value}"
        if header_text(msg, "Precedence", 64).lower() == "auto_reply":
            return "Precedence: auto_reply"
        subject = header_text(msg, "Subject")
        if subject.lower().startswith(_AUTO_REPLY_SUBJECTS):
            return f"Subject: {subject}"
        return ""
    # RFC 3834 §5: any value but "no" marks an automatic message. Older bounces carry it
    # too, so it only decides once no bounce format was recognised.
    value = header_text(msg, "Auto-Submitted", 64)
    return f"Auto-Submitted: {value}" if value and value.lower().split()[0] != "no" else ""


def _auto_reply(msg: Message, sign: str) -> Returned:
    sender = address(header_text(msg, "From"))
    who = (RecipientReport(address=sender, action=Action.NONE, status=None, diagnostic="",
                           kind=ReturnKind.AUTO_REPLY),) if sender else ()
    return Returned(ReturnKind.AUTO_REPLY, clean(f"an automatic reply, ignored ({sign})"),
                    recipients=who)


def _older_bounce(msg: Message) -> Returned:
    try:
        temporary, permanent = _failures(msg)
    except Exception as exc:
        # flufl.bounce runs ~20 detectors written for what was seen in the wild; one of
        # them tripping over a malformed message means "not recognised", not a crash.
        return Returned(ReturnKind.UNKNOWN, clean(f"no bounce format recognised (the bounce "
                                                  f"detector failed: {type(exc).__name__})"))
    if not permanent and not temporary:
        return Returned(ReturnKind.UNKNOWN, "not a delivery report, complaint, auto-reply or "
                                            "recognised bounce")
    recipients = tuple(
        RecipientReport(address=addr, action=Action.NONE, status=None, diagnostic="", kind=kind)
        for kind, found in ((ReturnKind.HARD, permanent), (ReturnKind.SOFT, temporary))
        for addr in sorted(found) if kind is ReturnKind.HARD or addr not in permanent)
    kind = ReturnKind.HARD if permanent else ReturnKind.SOFT
    how = "permanently" if permanent else "temporarily"
    who = ", ".join(r.address for r in recipients if r.kind is kind)
    return Returned(kind, clean(f"a bounce in an older format (read by flufl.bounce): {who} "
                                f"failed {how}"),
                    recipients=recipients)


def _failures(msg: Message) -> tuple[set[str], set[str]]:
    # flufl.bounce returns bytes addresses; the detectors expect a compat32 Message.
    temporary, permanent = all_failures(msg)
    return _decoded(temporary), _decoded(permanent)


def _decoded(found: set[bytes]) -> set[str]:
    return {addr for raw in found
            if (addr := address(raw.decode("ascii", "replace") if isinstance(raw, bytes)
                                else str(raw)))}
