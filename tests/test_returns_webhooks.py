"""Provider webhooks: SNS signatures (both versions) and SES, Postmark and Mailgun payloads."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from mailer.errors import InputError
from mailer.returns.events import ProviderEvent, SignatureError
from mailer.returns.kinds import ReturnKind
from mailer.returns.webhooks.mailgun import parse_mailgun, verify_mailgun
from mailer.returns.webhooks.postmark import check_basic_auth, parse_postmark
from mailer.returns.webhooks.ses import parse_ses
from mailer.returns.webhooks.sns import signing_cert_url, subscribe_url, verify_sns

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
TOPIC = "arn:aws:sns:eu-west-1:123456789012:newsletter-returns"
CERT_URL = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-0123456789abcdef.pem"
OUR_ID = "<176.20261130.abc@news.example.org>"
VERP = "bounces+2a5bmgxtq3k7hvfe6c@news.example.org"

# The fields SNS signs, written out here independently of the module under test.
NOTIFICATION_FIELDS = ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"]
CONFIRMATION_FIELDS = ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token",
                       "TopicArn", "Type"]
Json = dict[str, Any]


# ---- SNS: keys, certificates and signing ----------------------------------------------------

@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def certificate(key: rsa.RSAPrivateKey, *, valid_from: datetime = NOW - timedelta(days=30),
                valid_until: datetime = NOW + timedelta(days=300)) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(valid_from).not_valid_after(valid_until)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def cert(key: rsa.RSAPrivateKey) -> bytes:
    return certificate(key)


def sign(message: Json, key: rsa.RSAPrivateKey, version: str = "2") -> Json:
    fields = NOTIFICATION_FIELDS if message["Type"] == "Notification" else CONFIRMATION_FIELDS
    text = "".join(f"{name}\n{message[name]}\n" for name in fields if name in message)
    algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
    signature = key.sign(text.encode("utf-8"), padding.PKCS1v15(), algorithm)
    return {**message, "SignatureVersion": version,
            "Signature": base64.b64encode(signature).decode("ascii")}


def ses_bounce(bounce_type: str = "Permanent", sub_type: str = "General",
               status: str = "5.1.1",
               diagnostic: str = "smtp; 550 5.1.1 <reader@example.com>: user unknown",
               with_headers: bool = True) -> Json:
    mail: Json = {
        "timestamp": "2026-11-30T11:58:00.000Z",
        "source": VERP,
        "messageId": "0100018c-ses-id",
        "destination": ["Reader@Example.com"],
        "commonHeaders": {"from": ["News <news@news.example.org>"],
                          "to": ["Reader@Example.com"], "messageId": OUR_ID,
                          "subject": "Issue 12"},
    }
    if with_headers:
        mail["headersTruncated"] = False
        mail["headers"] = [{"name": "From", "value": "News <news@news.example.org>"},
                           {"name": "Message-ID", "value": OUR_ID}]
    return {
        "notificationType": "Bounce",
        "bounce": {"bounceType": bounce_type, "bounceSubType": sub_type,
                   "bouncedRecipients": [{"emailAddress": "Reader@Example.com",
                                          "action": "failed", "status": status,
                                          "diagnosticCode": diagnostic}],
                   "timestamp": "2026-11-30T11:58:30.500Z",
                   "feedbackId": "0100018c-feedback", "reportingMTA": "dsn; a1.example"},
        "mail": mail,
    }


def notification(body: Mapping[str, object], **extra: str) -> Json:
    return {"Type": "Notification", "MessageId": "5b8a7e2c-0000-4b1e-9c1a-1f2e3d4c5b6a",
            "TopicArn": TOPIC, "Message": json.dumps(body),
            "Timestamp": "2026-11-30T11:59:00.123Z", "SigningCertURL": CERT_URL,
            "UnsubscribeURL": "https://sns.eu-west-1.amazonaws.com/?Action=Unsubscribe&x=1",
            **extra}


def confirmation(kind: str = "SubscriptionConfirmation") -> Json:
    return {"Type": kind, "MessageId": "0c3b1f1e-0000-4a4b-8c8d-9e9f0a1b2c3d",
            "Token": "2336412f37fb687f5d51e6e2425a8a58",
            "TopicArn": TOPIC,
            "Message": f"You have chosen to subscribe to the topic {TOPIC}.\n"
                       "To confirm the subscription, visit the SubscribeURL included.",
            "SubscribeURL": "https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription"
                            f"&TopicArn={TOPIC}&Token=2336412f37fb687f5d51e6e2425a8a58",
            "Timestamp": "2026-11-30T11:59:00.123Z", "SigningCertURL": CERT_URL}


def verify(message: Mapping[str, object], cert_pem: bytes, now: datetime = NOW) -> None:
    verify_sns(message, cert_pem, now=now, topic_arns={TOPIC})


# ---- SNS: accepted ------------------------------------------------------------------------

@pytest.mark.parametrize("version", ["1", "2"])
def test_a_signed_ses_bounce_notification_verifies(version: str, key: rsa.RSAPrivateKey,
                                                   cert: bytes) -> None:
    verify(sign(notification(ses_bounce()), key, version), cert)


@pytest.mark.parametrize("version", ["1", "2"])
def test_a_notification_with_a_subject_signs_the_subject_too(
        version: str, key: rsa.RSAPrivateKey, cert: bytes) -> None:
    message = sign(notification(ses_bounce(), Subject="Amazon SES Email Event"), key, version)
    verify(message, cert)
    with pytest.raises(SignatureError):
        verify({**message, "Subject": "Something else"}, cert)


@pytest.mark.parametrize("version", ["1", "2"])
@pytest.mark.parametrize("kind", ["SubscriptionConfirmation", "UnsubscribeConfirmation"])
def test_a_signed_confirmation_verifies(kind: str, version: str, key: rsa.RSAPrivateKey,
                                        cert: bytes) -> None:
    verify(sign(confirmation(kind), key, version), cert)


def test_the_subscribe_url_of_a_confirmation_is_given_back() -> None:
    assert subscribe_url(confirmation()).startswith(
        "https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&")


def test_the_signing_cert_url_is_given_back_when_it_is_snss() -> None:
    assert signing_cert_url(notification(ses_bounce())) == CERT_URL
    china = "https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-1.pem"
    assert signing_cert_url({"SigningCertURL": china}) == china


# ---- SNS: refused -------------------------------------------------------------------------

def test_a_signature_by_another_key_is_refused(key: rsa.RSAPrivateKey, cert: bytes) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(SignatureError) as caught:
        verify(sign(notification(ses_bounce()), other), cert)
    assert caught.value.field == "Signature"


@pytest.mark.parametrize("field", ["Message", "MessageId", "Timestamp", "Type"])
def test_a_tampered_signed_field_is_refused(field: str, key: rsa.RSAPrivateKey,
                                            cert: bytes) -> None:
    message = sign(notification(ses_bounce()), key)
    tampered = {
        "Message": json.dumps(ses_bounce(bounce_type="Transient")),
        "MessageId": "5b8a7e2c-0000-4b1e-9c1a-000000000000",
        "Timestamp": "2026-11-30T11:59:01.123Z",
        "Type": "UnsubscribeConfirmation",
    }[field]
    with pytest.raises((SignatureError, InputError)):
        verify({**message, field: tampered}, cert)


def test_a_tampered_subscribe_url_is_refused(key: rsa.RSAPrivateKey, cert: bytes) -> None:
    message = sign(confirmation(), key)
    forged = message["SubscribeURL"].replace("Token=", "Token=0")
    with pytest.raises(SignatureError):
        verify({**message, "SubscribeURL": forged}, cert)


@pytest.mark.parametrize("url", [
    "https://sns.us-east-1.amazonaws.com.evil.example/SimpleNotificationService-1.pem",
    "http://sns.us-east-1.amazonaws.com/SimpleNotificationService-1.pem",
    "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-1.txt",
    "https://sns.us-east-1.amazonaws.com/cert.pem?x=.pem",
    "https://sns.us-east-1.amazonaws.com@evil.example/SimpleNotificationService-1.pem",
    "https://sns.us-east-1.amazonaws.com:8443/SimpleNotificationService-1.pem",
    "https://evil.example/sns.us-east-1.amazonaws.com/SimpleNotificationService-1.pem",
    "https://s3.amazonaws.com/SimpleNotificationService-1.pem",
    "https://sns.us_east.amazonaws.com/SimpleNotificationService-1.pem",
    "https://sns.us-east-1.amazonaws.com\\@evil.example/x.pem",
    "https://sns.us-east-1.amazonaws.com/x.pem#frag",
])
def test_a_signing_cert_url_off_sns_is_refused(url: str, key: rsa.RSAPrivateKey,
                                               cert: bytes) -> None:
    message = sign(notification(ses_bounce(), SigningCertURL=url), key)
    with pytest.raises(SignatureError) as caught:
        verify(message, cert)
    assert caught.value.field == "SigningCertURL"
    with pytest.raises(SignatureError):
        signing_cert_url(message)


@pytest.mark.parametrize("url", [
    "https://sns.eu-west-1.amazonaws.com.evil.example/?Action=ConfirmSubscription",
    "http://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription",
    "https://sns.eu-west-1.amazonaws.com/?Action=Publish",
    "https://evil.example/?Action=ConfirmSubscription",
])
def test_a_subscribe_url_off_sns_is_refused(url: str) -> None:
    with pytest.raises(SignatureError):
        subscribe_url({**confirmation(), "SubscribeURL": url})


def test_a_subscribe_url_is_only_read_from_a_subscription_confirmation() -> None:
    with pytest.raises(InputError) as caught:
        subscribe_url(confirmation("UnsubscribeConfirmation"))
    assert caught.value.field == "Type"


def test_a_notification_older_than_an_hour_is_refused(key: rsa.RSAPrivateKey,
                                                      cert: bytes) -> None:
    message = sign(notification(ses_bounce()), key)
    verify(message, cert, now=NOW + timedelta(minutes=59))
    with pytest.raises(SignatureError) as caught:
        verify(message, cert, now=NOW + timedelta(minutes=61))
    assert caught.value.field == "Timestamp"


def test_a_notification_from_the_future_is_refused(key: rsa.RSAPrivateKey, cert: bytes) -> None:
    message = sign(notification(ses_bounce(), Timestamp="2026-11-30T12:10:00.000Z"), key)
    with pytest.raises(SignatureError):
        verify(message, cert)


@pytest.mark.parametrize("window", [
    (NOW - timedelta(days=400), NOW - timedelta(days=1)),
    (NOW + timedelta(days=1), NOW + timedelta(days=400)),
])
def test_a_certificate_not_valid_now_is_refused(window: tuple[datetime, datetime],
                                                key: rsa.RSAPrivateKey) -> None:
    pem = certificate(key, valid_from=window[0], valid_until=window[1])
    with pytest.raises(SignatureError) as caught:
        verify(sign(notification(ses_bounce()), key), pem)
    assert "not valid now" in str(caught.value)


def test_a_message_for_another_topic_is_refused(key: rsa.RSAPrivateKey, cert: bytes) -> None:
    other = TOPIC.replace("123456789012", "999999999999")
    message = sign(notification(ses_bounce(), TopicArn=other), key)
    with pytest.raises(SignatureError) as caught:
        verify(message, cert)
    assert caught.value.field == "TopicArn"


@pytest.mark.parametrize(("change", "error", "field"), [
    ({"SignatureVersion": "3"}, SignatureError, "SignatureVersion"),
    ({"Signature": "not base64!"}, SignatureError, "Signature"),
    ({"Signature": "\x80"}, SignatureError, "Signature"),
    ({"Message": "\ud800"}, SignatureError, "Signature"),
    ({"Type": "Publish"}, InputError, "Type"),
    ({"Timestamp": "yesterday"}, InputError, "Timestamp"),
    ({"Timestamp": "2026-11-30T11:59:00"}, InputError, "Timestamp"),
    ({"MessageId": 12}, InputError, "MessageId"),
    ({"Message": None}, InputError, "Message"),
])
def test_a_malformed_message_is_refused_with_the_field_named(
        change: Json, error: type[Exception], field: str, key: rsa.RSAPrivateKey,
        cert: bytes) -> None:
    message = {**sign(notification(ses_bounce()), key), **change}
    with pytest.raises(error) as caught:
        verify(message, cert)
    assert getattr(caught.value, "field", None) == field


def test_a_certificate_that_is_not_pem_is_refused(key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(SignatureError):
        verify(sign(notification(ses_bounce()), key), b"<html>not a certificate</html>")


# ---- SES payloads -------------------------------------------------------------------------

def test_a_permanent_ses_bounce_is_hard_with_our_message_id() -> None:
    [event] = parse_ses(notification(ses_bounce()))
    assert event == ProviderEvent(
        kind=ReturnKind.HARD, address="reader@example.com", message_id=OUR_ID, verp=VERP,
        status="5.1.1", detail="smtp; 550 5.1.1 <reader@example.com>: user unknown",
        provider="ses", occurred_at=datetime(2026, 11, 30, 11, 58, 30, 500000, tzinfo=UTC),
        provider_id="0100018c-ses-id")


@pytest.mark.parametrize(("bounce_type", "sub_type", "status", "kind"), [
    ("Transient", "MailboxFull", "4.2.2", "soft"),
    ("Transient", "General", "4.4.7", "soft"),
    ("Transient", "ContentRejected", "5.3.0", "policy"),
    ("Permanent", "General", "5.7.1", "policy"),
    ("Permanent", "Suppressed", "5.1.1", "hard"),
    ("Undetermined", "Undetermined", "5.0.0", "unknown"),
    # A specific status outranks the provider's bare bounce type: one rule for every way back.
    ("Permanent", "General", "5.2.2", "soft"),
    ("Undetermined", "Undetermined", "5.1.1", "hard"),
])
def test_ses_bounce_types_map_to_kinds(bounce_type: str, sub_type: str, status: str,
                                       kind: str) -> None:
    [event] = parse_ses(notification(ses_bounce(bounce_type, sub_type, status, "")))
    assert (event.kind, event.status, event.detail) == (kind, status, "")


def test_without_original_headers_the_common_headers_give_the_message_id() -> None:
    [event] = parse_ses(notification(ses_bounce(with_headers=False)))
    assert event.message_id == OUR_ID


def test_an_ses_complaint_is_a_complaint_for_each_recipient() -> None:
    body = {**ses_bounce(), "notificationType": "Complaint"}
    del body["bounce"]
    body["complaint"] = {"complainedRecipients": [{"emailAddress": "a@example.com"},
                                                  {"emailAddress": "B@example.com"}],
                         "timestamp": "2026-11-30T11:58:40Z", "feedbackId": "f",
                         "complaintFeedbackType": "abuse"}
    events = parse_ses(notification(body))
    assert [(e.kind, e.address) for e in events] == [("complaint", "a@example.com"),
                                                     ("complaint", "b@example.com")]


def test_an_ses_delivery_delay_event_is_delayed() -> None:
    body = {"eventType": "DeliveryDelay", "mail": ses_bounce()["mail"],
            "deliveryDelay": {"timestamp": "2026-11-30T11:58:40Z", "delayType": "MailboxFull",
                              "expirationTime": "2026-11-30T23:58:40Z",
                              "delayedRecipients": [{"emailAddress": "reader@example.com",
                                                     "status": "4.2.2",
                                                     "diagnosticCode": "452 mailbox full"}]}}
    [event] = parse_ses(notification(body))
    assert (event.kind, event.status) == ("delayed", "4.2.2")


def test_deliveries_and_confirmations_report_no_return() -> None:
    body = {"notificationType": "Delivery", "mail": ses_bounce()["mail"],
            "delivery": {"timestamp": "2026-11-30T11:58:40Z", "recipients": ["a@example.com"]}}
    assert parse_ses(notification(body)) == []
    assert parse_ses(confirmation()) == []


@pytest.mark.parametrize(("body", "field"), [
    ("not json", "Message"),
    ("[]", "Message"),
    (json.dumps({"notificationType": "Bounce"}), "mail"),
    (json.dumps({**ses_bounce(), "bounce": {"bounceType": "Permanent",
                                            "bouncedRecipients": [{}]}}),
     "bounce.bouncedRecipients[0].emailAddress"),
    (json.dumps({**ses_bounce(), "bounce": {"bounceType": "Permanent",
                                            "bouncedRecipients": "x"}}),
     "bounce.bouncedRecipients"),
    (json.dumps({**ses_bounce(), "mail": {"headers": [{"name": 1}]}}), "mail.headers[0].name"),
])
def test_a_malformed_ses_message_names_the_field(body: str, field: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_ses({**notification({}), "Message": body})
    assert caught.value.field == field


# ---- Postmark -----------------------------------------------------------------------------

def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_postmark_basic_auth_accepts_the_configured_pair_only() -> None:
    assert check_basic_auth(basic("hook", "s3cr:et"), "hook", "s3cr:et")
    assert check_basic_auth("basic " + basic("hook", "pw")[6:], "hook", "pw")
    for header in [None, "", basic("hook", "wrong"), basic("other", "pw"), "Bearer abc",
                   "Basic !!!", "Basic é", "Basic " + base64.b64encode(b"hookpw").decode(),
                   basic("", "")]:
        assert not check_basic_auth(header, "hook", "pw"), header
    assert not check_basic_auth(basic("", ""), "", "")


def postmark_bounce(kind: str = "HardBounce", **extra: object) -> Json:
    return {"RecordType": "Bounce", "ID": 4323372036854775807, "Type": kind, "TypeCode": 1,
            "Name": "Hard bounce", "Tag": "issue-12",
            "MessageID": "9f1c2a5e-0000-4c4f-9d6e-7a8b9c0d1e2f", "ServerID": 23,
            "MessageStream": "broadcast",
            "Description": "The server was unable to deliver your message.",
            "Details": "smtp;550 5.1.1 The email account does not exist.",
            "Email": "Reader@Example.com", "From": "news@news.example.org",
            "BouncedAt": "2026-11-30T06:58:10.2735393-05:00", "DumpAvailable": False,
            "Inactive": True, "CanActivate": True, "Subject": "Issue 12", **extra}


def test_a_postmark_hard_bounce_is_hard() -> None:
    [event] = parse_postmark(postmark_bounce())
    assert event == ProviderEvent(
        kind=ReturnKind.HARD, address="reader@example.com", message_id=None, verp=None,
        status="5.1.1",
        detail="smtp;550 5.1.1 The email account does not exist.", provider="postmark",
        occurred_at=datetime(2026, 11, 30, 11, 58, 10, 273539, tzinfo=UTC),
        provider_id="9f1c2a5e-0000-4c4f-9d6e-7a8b9c0d1e2f")


@pytest.mark.parametrize(("kind", "details", "expected"), [
    ("SoftBounce", "452 4.2.2 mailbox full", "soft"),
    ("Transient", "", "soft"),
    ("DnsError", "", "soft"),
    ("SpamNotification", "554 5.7.1 rejected as spam", "policy"),
    ("HardBounce", "550 5.7.1 blocked by policy", "policy"),
    ("Blocked", "", "policy"),
    ("AutoResponder", "", "auto_reply"),
    ("BadEmailAddress", "", "hard"),
    ("Unknown", "", "unknown"),
    # Postmark's own finer verdict stands whatever the text says.
    ("SpamNotification", "550 5.1.1 no such user", "policy"),
    ("ManuallyDeactivated", "", "hard"),
])
def test_postmark_bounce_types_map_to_kinds(kind: str, details: str, expected: str) -> None:
    [event] = parse_postmark(postmark_bounce(kind, Details=details))
    assert event.kind == expected
    assert event.detail == (details or "The server was unable to deliver your message.")


def test_a_postmark_spam_complaint_is_a_complaint() -> None:
    [event] = parse_postmark(postmark_bounce("SpamComplaint", RecordType="SpamComplaint"))
    assert (event.kind, event.address) == ("complaint", "reader@example.com")


@pytest.mark.parametrize("payload", [postmark_bounce("Subscribe"),
                                     postmark_bounce("OpenRelayTest"),
                                     {"RecordType": "Delivery", "Email": "a@example.com"},
                                     {"RecordType": "Open"}])
def test_postmark_records_that_are_not_returns_give_nothing(payload: Json) -> None:
    assert parse_postmark(payload) == []


@pytest.mark.parametrize(("change", "field"), [
    ({"Email": None}, "Email"), ({"Email": "not an address"}, "Email"), ({"Type": 1}, "Type"),
    ({"BouncedAt": "soon"}, "BouncedAt"), ({"RecordType": []}, "RecordType"),
])
def test_a_malformed_postmark_payload_names_the_field(change: Json, field: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_postmark({**postmark_bounce(), **change})
    assert caught.value.field == field


# ---- Mailgun ------------------------------------------------------------------------------

SIGNING_KEY = "mailgun-webhook-signing-key"
MAX_AGE = timedelta(minutes=15)


def mailgun_signature(timestamp: int, token: str = "a" * 50, key: str = SIGNING_KEY) -> Json:
    digest = hmac.new(key.encode(), f"{timestamp}{token}".encode(), hashlib.sha256).hexdigest()
    return {"timestamp": str(timestamp), "token": token, "signature": digest}


def test_a_good_mailgun_signature_verifies() -> None:
    verify_mailgun(mailgun_signature(int(NOW.timestamp()) - 30), SIGNING_KEY, now=NOW,
                   max_age=MAX_AGE)


@pytest.mark.parametrize("signature", [
    mailgun_signature(int(NOW.timestamp()), key="another-key"),
    {**mailgun_signature(int(NOW.timestamp())), "token": "b" * 50},
    {**mailgun_signature(int(NOW.timestamp())), "timestamp": str(int(NOW.timestamp()) + 1)},
    {**mailgun_signature(int(NOW.timestamp())), "signature": "00" * 32},
    {**mailgun_signature(int(NOW.timestamp())), "signature": "é" * 64},
    {**mailgun_signature(int(NOW.timestamp())), "token": "\ud800"},
])
def test_a_bad_mailgun_signature_is_refused(signature: Json) -> None:
    with pytest.raises(SignatureError):
        verify_mailgun(signature, SIGNING_KEY, now=NOW, max_age=MAX_AGE)


@pytest.mark.parametrize("age", [timedelta(minutes=16), -timedelta(minutes=10)])
def test_an_old_or_future_mailgun_signature_is_refused(age: timedelta) -> None:
    with pytest.raises(SignatureError) as caught:
        verify_mailgun(mailgun_signature(int((NOW - age).timestamp())), SIGNING_KEY, now=NOW,
                       max_age=MAX_AGE)
    assert caught.value.field == "signature.timestamp"


@pytest.mark.parametrize(("change", "field"), [
    ({"timestamp": "12.5"}, "signature.timestamp"), ({"timestamp": True}, "signature.timestamp"),
    ({"token": None}, "signature.token"), ({"signature": 5}, "signature.signature"),
    ({"timestamp": "9" * 5000}, "signature.timestamp"),
])
def test_a_malformed_mailgun_signature_names_the_field(change: Json, field: str) -> None:
    with pytest.raises(InputError) as caught:
        verify_mailgun({**mailgun_signature(int(NOW.timestamp())), **change}, SIGNING_KEY,
                       now=NOW, max_age=MAX_AGE)
    assert caught.value.field == field


def mailgun_event(event: str = "failed", **extra: object) -> Json:
    data: Json = {
        "id": "G9Bn5sl1TC6nu79C8C0bwg", "timestamp": 1764503890.25, "event": event,
        "log-level": "error", "recipient": "Reader@Example.com",
        "recipient-domain": "example.com",
        "envelope": {"sender": VERP, "transport": "smtp", "targets": "reader@example.com"},
        "message": {"headers": {"to": "reader@example.com", "from": "news@news.example.org",
                                "subject": "Issue 12",
                                "message-id": OUR_ID.strip("<>")}},
        **extra,
    }
    if event == "failed":
        data.setdefault("severity", "permanent")
        data.setdefault("reason", "bounce")
        data.setdefault("delivery-status", {
            "code": 550, "attempt-no": 1, "enhanced-code": "5.1.1",
            "message": "5.1.1 The email account that you tried to reach does not exist.",
            "description": ""})
    return {"signature": mailgun_signature(int(NOW.timestamp())), "event-data": data}


def test_a_permanent_mailgun_failure_is_hard_with_the_brackets_restored() -> None:
    [event] = parse_mailgun(mailgun_event())
    assert event == ProviderEvent(
        kind=ReturnKind.HARD, address="reader@example.com", message_id=OUR_ID, verp=VERP,
        status="5.1.1",
        detail="5.1.1 The email account that you tried to reach does not exist.",
        provider="mailgun", occurred_at=datetime.fromtimestamp(1764503890.25, UTC),
        provider_id="G9Bn5sl1TC6nu79C8C0bwg")


@pytest.mark.parametrize(("extra", "kind"), [
    ({"severity": "temporary", "reason": "generic"}, "delayed"),
    ({"reason": "old", "delivery-status": {"code": 452, "message": "4.2.2 Mailbox full"}},
     "soft"),
    ({"reason": "espblock"}, "policy"),
    ({"reason": "suppress-bounce"}, "hard"),
    ({"reason": "suppress-complaint"}, "complaint"),
    ({"reason": "bounce", "delivery-status": None}, "hard"),
    ({"delivery-status": {"code": 605, "message": "Not delivering to a bounced address"}},
     "hard"),
    ({"delivery-status": {"code": 554, "message": "5.7.1 Message rejected as spam"}}, "policy"),
])
def test_mailgun_failures_map_to_kinds(extra: Json, kind: str) -> None:
    [event] = parse_mailgun(mailgun_event(**extra))
    assert event.kind == kind


def test_a_mailgun_complaint_is_a_complaint() -> None:
    [event] = parse_mailgun(mailgun_event("complained"))
    assert (event.kind, event.message_id, event.status) == ("complaint", OUR_ID, None)


@pytest.mark.parametrize("payload", [mailgun_event("delivered"), mailgun_event("opened"),
                                     mailgun_event(reason="suppress-unsubscribe")])
def test_mailgun_events_that_are_not_returns_give_nothing(payload: Json) -> None:
    assert parse_mailgun(payload) == []


@pytest.mark.parametrize(("change", "field"), [
    ({"recipient": None}, "event-data.recipient"),
    ({"severity": "sometimes"}, "event-data.severity"),
    ({"timestamp": "yesterday"}, "event-data.timestamp"),
    ({"timestamp": float("inf")}, "event-data.timestamp"),
    ({"message": {"headers": []}}, "event-data.message.headers"),
    ({"delivery-status": {"message": 5}}, "event-data.delivery-status.message"),
])
def test_a_malformed_mailgun_payload_names_the_field(change: Json, field: str) -> None:
    payload = mailgun_event()
    payload["event-data"].update(change)
    with pytest.raises(InputError) as caught:
        parse_mailgun(payload)
    assert caught.value.field == field


def test_a_mailgun_payload_without_event_data_names_it() -> None:
    with pytest.raises(InputError) as caught:
        parse_mailgun({"signature": {}})
    assert caught.value.field == "event-data"


# ---- any damage to a payload is an InputError, never a KeyError or TypeError --------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                  max_size=3),
    max_leaves=6)


def damaged(payload: Json, data: st.DataObject) -> Json:
    """The payload with one value somewhere in it replaced by any JSON value."""
    copied = copy.deepcopy(payload)
    node: Any = copied
    while True:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            return copied
        key = data.draw(st.sampled_from(keys))
        child = node[key]
        if isinstance(child, dict | list) and child and data.draw(st.booleans()):
            node = child
            continue
        node[key] = data.draw(json_values)
        return copied


Parse = Callable[[Json], list[ProviderEvent]]


def parse_ses_body(body: Json) -> list[ProviderEvent]:
    return parse_ses(notification(body))


@settings(max_examples=300)
@given(st.data(), st.sampled_from([
    (parse_ses_body, ses_bounce()), (parse_postmark, postmark_bounce()),
    (parse_mailgun, mailgun_event()),
]))
def test_a_damaged_payload_is_read_or_refused_cleanly(data: st.DataObject,
                                                      case: tuple[Parse, Json]) -> None:
    parse, payload = case
    try:
        events = parse(damaged(payload, data))
    except InputError:
        return
    for event in events:
        assert event.address == event.address.lower() and "@" in event.address


@settings(max_examples=200)
@given(st.data())
def test_a_damaged_sns_message_is_refused_cleanly(data: st.DataObject) -> None:
    # Keys are made once per test run by the fixture; hypothesis wants none here, so sign
    # with a key of its own, made lazily and kept.
    key, pem = _fuzz_key()
    message = sign(notification(ses_bounce()), key)
    del message["UnsubscribeURL"]  # the one field SNS does not sign
    broken = damaged(message, data)
    if broken == message:
        return
    with pytest.raises((InputError, SignatureError)):
        verify(broken, pem)


_FUZZ: list[tuple[rsa.RSAPrivateKey, bytes]] = []


def _fuzz_key() -> tuple[rsa.RSAPrivateKey, bytes]:
    if not _FUZZ:
        made = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _FUZZ.append((made, certificate(made)))
    return _FUZZ[0]
