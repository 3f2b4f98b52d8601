"""VERP envelope senders: `local+TOKEN@domain`, where a signed TOKEN names one delivery."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re

from mailer.errors import ConfigError, InputError, TokenError

# The derivation label binds the key to this one purpose, as tokens.py's salts do: a VERP
# token is never a valid unsubscribe or confirm token, nor the other way round.
_PURPOSE = b"mailer.verp.v1"
# 80 bits of MAC: forging a bounce for a chosen delivery means guessing it online, one mail
# per guess, so 2**-80 a try is far beyond reach, while 64 bits would already do. 80 is the
# length that base32 spells in exactly 16 characters with no spare bits, so every MAC has
# exactly one spelling and a token can be used as a key.
_MAC_BYTES = 10
_MAC_CHARS = 16
# Delivery ids are SQL BIGINTs: 2**63 - 1 is 13 base-36 digits.
_MAX_ID = 2**63 - 1
_ID_CHARS = 13
# RFC 5321 §4.5.3.1.1: a local part is at most 64 octets.
_MAX_LOCAL = 64
# Only lower-case letters and digits: MTAs that fold local parts to lower case keep the
# token intact, and nothing in it needs quoting. No leading zero, so one id has one spelling.
_TOKEN = re.compile(rf"(0|[1-9a-z][0-9a-z]{{0,{_ID_CHARS - 1}}})([a-z2-7]{{{_MAC_CHARS}}})")
# RFC 5322 dot-atom: a bounce address that would need quoting cannot carry a VERP suffix.
_ATOM = r"[A-Za-z0-9!#$%&'*/=?^_`{|}~-]+"
_LOCAL = re.compile(rf"{_ATOM}(?:\.{_ATOM})*")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def verp_sender(bounce_address: str, secret_key: str, delivery_id: int) -> str:
    """The envelope sender for one delivery: `local+TOKEN@domain` of the bounce address.

    Raises:
        ConfigError: the bounce address is not `local@domain` in plain atoms, or its local
            part leaves no room for a token within 64 characters.
        InputError: the delivery id is not an integer from 0 to 2**63 - 1.
    """
    local, domain = split_bounce_address(bounce_address)
    if isinstance(delivery_id, bool) or not isinstance(delivery_id, int) \
            or not 0 <= delivery_id <= _MAX_ID:
        raise InputError("a delivery id is an integer from 0 to 2**63 - 1", field="delivery_id")
    return f"{local}+{_base36(delivery_id)}{_mac(secret_key, delivery_id)}@{domain}"


def delivery_of(address: str, bounce_address: str, secret_key: str) -> int:
    """The delivery id that a VERP address made by `verp_sender` names.

    The domain and the token are read case-insensitively (MTAs fold them); one pair of
    angle brackets around the address, as in a Return-Path header, is allowed.

    Raises:
        TokenError: the address is not a VERP address of this bounce address, or its token
            was not signed with this key.
        ConfigError: the bounce address itself is unusable (see verp_sender).
    """
    token = _token_of(address, bounce_address)
    if token is None:
        raise TokenError("this address is not one of our VERP return addresses")
    match = _TOKEN.fullmatch(token)
    if match is None:
        raise TokenError("this VERP token is malformed")
    delivery_id = int(match[1], 36)
    if delivery_id > _MAX_ID or not hmac.compare_digest(match[2], _mac(secret_key, delivery_id)):
        raise TokenError("this VERP token is not valid")
    return delivery_id


def is_verp_for(address: str, bounce_address: str) -> bool:
    """Whether an address has the shape of a VERP address of this bounce address.

    A cheap test to route a message before verifying; it checks no signature.
    """
    try:
        token = _token_of(address, bounce_address)
    except ConfigError:
        return False
    return token is not None and _TOKEN.fullmatch(token) is not None


def max_local_length() -> int:
    """The longest bounce-address local part that still leaves room for any delivery's token."""
    return _MAX_LOCAL - 1 - _ID_CHARS - _MAC_CHARS


@functools.lru_cache(maxsize=8)
def split_bounce_address(bounce_address: str) -> tuple[str, str]:
    """(local, domain) of a bounce address that can carry a VERP token; read once per
    address, not once per message (a send asks for every recipient).

    Raises:
        ConfigError: not `local@domain` in plain atoms, a '+' in it, or a local part too
            long to leave room for a token.
    """
    local, at, domain = bounce_address.strip().rpartition("@")
    if not at or not _LOCAL.fullmatch(local) or not _DOMAIN.fullmatch(domain):
        raise ConfigError("the bounce address must be local@domain, with no quoting",
                          field="bounce_address")
    if "+" in local:
        # The '+' is the VERP separator; a second one would make the split ambiguous.
        raise ConfigError("the bounce address must not contain '+'", field="bounce_address")
    if len(local) > max_local_length():
        raise ConfigError(f"the bounce address local part must be at most {max_local_length()} "
                          "characters to leave room for the VERP token (RFC 5321: 64 in all)",
                          field="bounce_address")
    return local, domain


def _token_of(address: str, bounce_address: str) -> str | None:
    local, domain = split_bounce_address(bounce_address)
    text = address.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    their_local, at, their_domain = text.rpartition("@")
    prefix = local.lower() + "+"
    if not at or their_domain.lower() != domain.lower() \
            or not their_local.lower().startswith(prefix) or len(their_local) > _MAX_LOCAL:
        return None
    return their_local[len(prefix):].lower()


@functools.lru_cache(maxsize=4)
def _key(secret_key: str) -> bytes:
    return hmac.new(secret_key.encode("utf-8"), _PURPOSE, hashlib.sha256).digest()


def _mac(secret_key: str, delivery_id: int) -> str:
    # The MAC covers the id alone: a reader sees their own token in the Return-Path, and can
    # forge nothing with it but a bounce of their own delivery.
    digest = hmac.new(_key(secret_key), str(delivery_id).encode("ascii"), hashlib.sha256).digest()
    return base64.b32encode(digest[:_MAC_BYTES]).decode("ascii").lower()


def _base36(number: int) -> str:
    digits = ""
    while True:
        number, digit = divmod(number, 36)
        digits = _DIGITS[digit] + digits
        if not number:
            return digits
