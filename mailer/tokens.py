"""Signed, purpose-bound tokens for confirm, unsubscribe and manage links (itsdangerous,
HMAC-SHA256)."""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeGuard

from itsdangerous import BadData, SignatureExpired, URLSafeSerializer, URLSafeTimedSerializer
from itsdangerous.encoding import base64_decode, base64_encode

from mailer.errors import TokenError

# The salt binds a token to its purpose: a confirm token never works as an unsubscribe
# or manage token and the other way round, even though all of them sign a subscription id.
_CONFIRM = "mailer.confirm.v1"
_UNSUBSCRIBE = "mailer.unsubscribe.v1"
_MANAGE = "mailer.manage.v1"
_SIGNER = {"digest_method": hashlib.sha256}
# payload.signature or payload.timestamp.signature, in the URL-safe alphabet only.
_SHAPE = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+){1,2}")


@functools.lru_cache(maxsize=8)
def _serializer(secret_key: str, salt: str) -> URLSafeSerializer:
    # Built once per key, not once per recipient: a send signs tokens for every message.
    return URLSafeSerializer(secret_key, salt=salt, signer_kwargs=_SIGNER)


def _unsubscribe_serializer(secret_key: str) -> URLSafeSerializer:
    return _serializer(secret_key, _UNSUBSCRIBE)


@functools.lru_cache(maxsize=4)
def _confirm_serializer(secret_key: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(secret_key, salt=_CONFIRM, signer_kwargs=_SIGNER)


def _canonical(token: str, error: str) -> str:
    # itsdangerous decodes base64 leniently ('+' for '-', padding, unused low bits), so one
    # signature has several spellings. A token is used as a key (logs, rate limits): accept
    # exactly the spelling we issued.
    signature = token.rpartition(".")[2]
    try:
        canonical = bool(_SHAPE.fullmatch(token)) and \
            base64_encode(base64_decode(signature)) == signature.encode()
    except BadData:
        canonical = False
    if not canonical:
        raise TokenError(error)
    return token


@functools.lru_cache(maxsize=8)
def _mac(secret_key: str, salt: str) -> hmac.HMAC:
    return hmac.new(_serializer(secret_key, salt).make_signer().derive_key(),
                    digestmod=hashlib.sha256)


def _signed_id(secret_key: str, salt: str, subscription_id: int) -> str:
    # Exactly what `URLSafeSerializer.dumps(subscription_id)` makes (a test compares them),
    # with itsdangerous's per-call work (key derivation, JSON, the zlib trial) done once per
    # key: a send signs tokens for every message, and dumps() cost 8% of the sender's CPU.
    digits = str(int(subscription_id)).encode("ascii")  # the JSON of an int
    if len(digits) > 9:
        # dumps() zlib-compresses a payload when that saves two bytes or more; zlib's own
        # header and checksum (6 bytes) plus a block make that impossible up to 9 bytes.
        return str(_serializer(secret_key, salt).dumps(subscription_id))
    payload = base64_encode(digits)
    mac = _mac(secret_key, salt).copy()
    mac.update(payload)
    return (payload + b"." + base64_encode(mac.digest())).decode("ascii")


def unsubscribe_token(secret_key: str, subscription_id: int) -> str:
    """The token in a subscriber's unsubscribe link; it never expires (old issues keep working).

    Exactly what `URLSafeSerializer.dumps(subscription_id)` makes, built once per key.
    """
    return _signed_id(secret_key, _UNSUBSCRIBE, subscription_id)


def manage_token(secret_key: str, subscription_id: int) -> str:
    """The token in a subscriber's manage-my-subscriptions link (GET /manage/{token}).

    It signs the subscription the email went out for, and through it its subscriber; it
    never expires, like the unsubscribe link, and dies with the subscription (an erased
    address has none, and ids are never reused).
    """
    return _signed_id(secret_key, _MANAGE, subscription_id)


def read_manage_token(secret_key: str, token: str) -> int:
    """The subscription id a manage token was made for.

    Raises:
        TokenError: the token was not made with this key for the manage page.
    """
    token = _canonical(token, "this link to your subscription page is not valid")
    try:
        value = _serializer(secret_key, _MANAGE).loads(token)
    except BadData:
        raise TokenError("this link to your subscription page is not valid") from None
    if not _is_int(value):
        raise TokenError("this link to your subscription page is not valid")
    return value


def read_unsubscribe_token(secret_key: str, token: str) -> int:
    """The subscription id an unsubscribe token was made for.

    Raises:
        TokenError: the token was not made with this key for unsubscribing.
    """
    token = _canonical(token, "this unsubscribe link is not valid")
    try:
        value = _unsubscribe_serializer(secret_key).loads(token)
    except BadData:
        raise TokenError("this unsubscribe link is not valid") from None
    if not _is_int(value):
        raise TokenError("this unsubscribe link is not valid")
    return value


@dataclass(frozen=True, slots=True)
class ConfirmLink:
    """What a confirmation token says: the subscription, and its token generation then."""

    subscription_id: int
    generation: int


def confirm_token(secret_key: str, subscription_id: int, generation: int = 0) -> str:
    """The token in a double opt-in confirmation link; it carries its signing time.

    Generation 0 signs the bare id, exactly as tokens were made before generations
    existed, so links already mailed read back the same; later ones sign [id, generation].
    """
    payload: int | list[int] = [subscription_id, generation] if generation else subscription_id
    return str(_confirm_serializer(secret_key).dumps(payload))


def read_confirm_link(secret_key: str, token: str, *, max_age: timedelta) -> ConfirmLink:
    """The subscription and generation a confirmation token was made for, if it is younger
    than max_age.

    Raises:
        TokenError: forged, made for another purpose, or expired.
    """
    token = _canonical(token, "this confirmation link is not valid")
    serializer = _confirm_serializer(secret_key)
    try:
        value = serializer.loads(token, max_age=int(max_age.total_seconds()))
    except SignatureExpired:
        raise TokenError("this confirmation link has expired; please subscribe again") from None
    except BadData:
        raise TokenError("this confirmation link is not valid") from None
    if _is_int(value):
        return ConfirmLink(value, 0)
    # [id, 0] is never made (generation 0 signs the bare id): one spelling per link.
    if isinstance(value, list) and len(value) == 2 and all(map(_is_int, value)) \
            and value[1] > 0:
        return ConfirmLink(value[0], value[1])
    raise TokenError("this confirmation link is not valid")


def read_confirm_token(secret_key: str, token: str, *, max_age: timedelta) -> int:
    """The subscription id a confirmation token was made for, if it is younger than max_age.

    Raises:
        TokenError: forged, made for another purpose, or expired.
    """
    return read_confirm_link(secret_key, token, max_age=max_age).subscription_id


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)
