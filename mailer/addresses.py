"""Email address checks and normalisation (email-validator); no DNS unless asked for."""

from __future__ import annotations

import re
import unicodedata

from email_validator import EmailNotValidError, validate_email

from mailer.errors import SubscriberError

MAX_NAME = 200
# Every character str.splitlines() breaks at, and NUL: none may reach a header, where
# the email package would start a new line (header injection).
LINE_BREAKS = re.compile(r"[\r\n\v\f\x00\x1c-\x1e\x85\u2028\u2029]")


def normalize_email(raw: str, *, check_deliverability: bool = False,
                    where: str | None = None) -> str:
    """The canonical form of an address (domain lower-cased, IDNA-normalised).

    Raises:
        SubscriberError: not a usable address, naming why and where it came from.
    """
    if LINE_BREAKS.search(raw):
        raise SubscriberError("an address may not contain line breaks", field=where)
    try:
        result = validate_email(raw.strip(), check_deliverability=check_deliverability,
                                allow_smtputf8=False)
    except EmailNotValidError as exc:
        raise SubscriberError(f"{raw.strip()[:80]!r} is not a valid address: {exc}",
                              field=where) from None
    # The local part is kept as typed (RFC 5321 lets servers treat it case-sensitively);
    # the domain is normalised so Bob@EXAMPLE.com and Bob@example.com are one subscriber,
    # and kept in its IDNA form (xn--…): that is what goes into To and the SMTP envelope
    # without SMTPUTF8, and bücher.example and xn--bcher-kva.example are one subscriber.
    return result.ascii_email or result.normalized


def clean_name(raw: str | None, *, where: str | None = None) -> str:
    """A display name safe for a header: one line, bounded length.

    Raises:
        SubscriberError: the name has line breaks or control characters, or is too long.
    """
    name = (raw or "").strip()
    if LINE_BREAKS.search(name):
        raise SubscriberError("a name may not contain line breaks", field=where)
    # Control characters and lone surrogates: unprintable, and no database stores the latter.
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in name):
        raise SubscriberError("a name may not contain control characters", field=where)
    if len(name) > MAX_NAME:
        raise SubscriberError(f"a name may have at most {MAX_NAME} characters", field=where)
    return name
