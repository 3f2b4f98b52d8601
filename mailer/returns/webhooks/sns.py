"""Amazon SNS message signatures, checked as AWS documents them; the certificate is fetched by
the caller."""

from __future__ import annotations

import base64
import re
from collections.abc import Collection, Mapping
from datetime import datetime, timedelta
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from mailer.errors import InputError
from mailer.returns.events import SignatureError
from mailer.returns.webhooks.payload import optional, required, timestamp

NOTIFICATION = "Notification"
SUBSCRIPTION_CONFIRMATION = "SubscriptionConfirmation"
UNSUBSCRIBE_CONFIRMATION = "UnsubscribeConfirmation"

# The fields signed, in this order, as "Name\nvalue\n" each ("Verifying the signatures of
# Amazon SNS messages"); Subject only when the notification has one.
_SIGNED_FIELDS = {
    NOTIFICATION: ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    SUBSCRIPTION_CONFIRMATION: ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token",
                                "TopicArn", "Type"),
}
_SIGNED_FIELDS[UNSUBSCRIBE_CONFIRMATION] = _SIGNED_FIELDS[SUBSCRIPTION_CONFIRMATION]
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}
# Only SNS's own endpoints may serve the certificate or the confirmation link: anyone can
# host a certificate that verifies a message they signed themselves.
_SNS_HOST = re.compile(r"sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?")
# SNS retries a notification with its first Timestamp; an hour covers the default HTTP
# delivery policy many times over and bounds how long a captured request can be replayed.
MAX_AGE = timedelta(hours=1)
# A little of the future is tolerated for clocks that disagree by some seconds.
MAX_SKEW = timedelta(minutes=5)


def signing_cert_url(message: Mapping[str, object]) -> str:
    """The message's SigningCertURL, once it is known to point at an SNS endpoint over https.

    Raises:
        InputError: the field is missing or not a string.
        SignatureError: the URL is not https, not on `sns.<region>.amazonaws.com`, or not a .pem.
    """
    url = required(message, "SigningCertURL", str)
    if not _sns_url(url) or not urlsplit(url).path.endswith(".pem") or urlsplit(url).query:
        raise SignatureError("the signing certificate is not on an SNS endpoint",
                             field="SigningCertURL")
    return url


def subscribe_url(message: Mapping[str, object]) -> str:
    """The link that confirms an SNS subscription, once it is known to be SNS's own.

    Call it only on a message `verify_sns` accepted: the route GETs this link.

    Raises:
        InputError: not a SubscriptionConfirmation, or the field is missing.
        SignatureError: the URL is not an https ConfirmSubscription link on an SNS endpoint.
    """
    if required(message, "Type", str) != SUBSCRIPTION_CONFIRMATION:
        raise InputError("not a SubscriptionConfirmation", field="Type")
    url = required(message, "SubscribeURL", str)
    if not _sns_url(url) or parse_qs(urlsplit(url).query).get("Action") != ["ConfirmSubscription"]:
        raise SignatureError("the subscription link is not an SNS ConfirmSubscription link",
                             field="SubscribeURL")
    return url


def verify_sns(message: Mapping[str, object], cert_pem: bytes, *, now: datetime,
               topic_arns: Collection[str], max_age: timedelta = MAX_AGE) -> None:
    """Check that an SNS message was signed by SNS, recently, for one of our topics.

    `cert_pem` is what the caller fetched, with TLS verification, from
    `signing_cert_url(message)`. `topic_arns` is required: any AWS account can subscribe our
    endpoint to its own topic, and SNS signs that topic's forged "bounces" just as well.

    Raises:
        InputError: a field is missing or has the wrong type, or the type is unknown.
        SignatureError: the topic is not ours, the message is too old or from the future,
            the certificate is unusable or expired, or the signature does not match.
    """
    kind = required(message, "Type", str)
    fields = _SIGNED_FIELDS.get(kind)
    if fields is None:
        raise InputError(f"unknown SNS message type {kind[:40]!r}", field="Type")
    signing_cert_url(message)
    if required(message, "TopicArn", str) not in topic_arns:
        raise SignatureError("the message is for a topic we do not subscribe to",
                             field="TopicArn")
    sent = timestamp(required(message, "Timestamp", str), "Timestamp")
    if sent < now - max_age:
        raise SignatureError("the message is too old", field="Timestamp")
    if sent > now + MAX_SKEW:
        raise SignatureError("the message is dated in the future", field="Timestamp")
    algorithm = _HASHES.get(required(message, "SignatureVersion", str))
    if algorithm is None:
        raise SignatureError("unknown signature version", field="SignatureVersion")
    try:
        signature = base64.b64decode(required(message, "Signature", str), validate=True)
    except ValueError:  # binascii.Error, or a str that is not ASCII
        raise SignatureError("the signature is not base64", field="Signature") from None
    key = _public_key(cert_pem, now)
    try:
        key.verify(signature, _string_to_sign(message, fields), padding.PKCS1v15(), algorithm())
    except InvalidSignature:
        raise SignatureError("the signature does not match the message",
                             field="Signature") from None


def _string_to_sign(message: Mapping[str, object], fields: tuple[str, ...]) -> bytes:
    parts = []
    for name in fields:
        value = required(message, name, str) if name != "Subject" \
            else optional(message, name, str)
        if value is not None:
            parts.append(f"{name}\n{value}\n")
    # surrogatepass: a lone surrogate (valid JSON) must fail to verify, not crash.
    return "".join(parts).encode("utf-8", "surrogatepass")


def _public_key(cert_pem: bytes, now: datetime) -> rsa.RSAPublicKey:
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise SignatureError("the signing certificate is not a PEM certificate",
                             field="SigningCertURL") from None
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise SignatureError("the signing certificate is not valid now", field="SigningCertURL")
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise SignatureError("the signing certificate has no RSA key", field="SigningCertURL")
    return key


def _sns_url(url: str) -> bool:
    if not url.isascii() or any(c.isspace() or c == "\\" for c in url):
        return False
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    return parts.scheme == "https" and parts.username is None and parts.password is None \
        and port in (None, 443) and not parts.fragment \
        and _SNS_HOST.fullmatch(parts.hostname or "") is not None
