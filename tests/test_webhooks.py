"""POST /webhooks/ses, /postmark, /mailgun: the app on a real socket, real HTTP requests."""

from __future__ import annotations

import http.server
import ipaddress
import json
import ssl
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from mailer import config as config_mod
from mailer.returns.events import ProviderEvent
from mailer.returns.kinds import ReturnKind
from mailer.store import Store
from mailer.web import create_app
from mailer.web.webhooks import MAX_WEBHOOK_BODY, WebhookState, fetch_https
from tests.conftest import Project
from tests.test_returns_webhooks import (
    CERT_URL,
    SIGNING_KEY,
    TOPIC,
    basic,
    certificate,
    confirmation,
    mailgun_event,
    mailgun_signature,
    notification,
    postmark_bounce,
    ses_bounce,
    sign,
)
from tests.test_signup_privacy import client, served

# The webhooks touch no database: one backend is enough for the tests that serve the app.
sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

HOOK_USER, HOOK_PASSWORD = "hook", "s3cr:et"


@dataclass
class Collector:
    """The test's own consumer of verified events (what the daemon wires to the use case)."""

    got: list[tuple[ProviderEvent, str, bytes]] = field(default_factory=list)

    async def __call__(self, event: ProviderEvent, provider: str, raw: bytes) -> None:
        self.got.append((event, provider, raw))


@dataclass
class Served:
    url: str
    webhooks: WebhookState
    collector: Collector


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
async def app_url(project: Project, store: Store) -> AsyncIterator[Served]:
    project.configure(ses_topic_arns=TOPIC)
    config = config_mod.load(project.config_path, env={
        "MAILER_SECRET_KEY": "test-key", "MAILER_MAILGUN_SIGNING_KEY": SIGNING_KEY,
        "MAILER_WEBHOOK_USER": HOOK_USER, "MAILER_WEBHOOK_PASSWORD": HOOK_PASSWORD})
    collector = Collector()
    app = create_app(config, store=store, returned_events=collector)
    async with served(app) as url:
        yield Served(url, app.state.webhooks, collector)


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def signed_notification(key: rsa.RSAPrivateKey, **extra: str) -> dict[str, Any]:
    return sign(notification(ses_bounce(), Timestamp=iso(datetime.now(UTC)), **extra), key)


async def post(url: str, path: str, body: object, **headers: str) -> httpx.Response:
    async with client(url) as http:
        return await http.post(path, content=json.dumps(body).encode(),
                               headers={"content-type": "application/json", **headers})


# ---- SES through SNS -----------------------------------------------------------------------

def trust(served_app: Served, key: rsa.RSAPrivateKey) -> None:
    # The route fetches the certificate only from https://sns.<region>.amazonaws.com, which
    # no test can serve: the cache is filled instead, as a first fetch would have filled it.
    # fetch_https itself is tested below against a local HTTPS server.
    now = datetime.now(UTC)
    served_app.webhooks.remember_certificate(
        CERT_URL, certificate(key, valid_from=now - timedelta(days=1),
                              valid_until=now + timedelta(days=1)))


@sqlite_only
async def test_a_signed_ses_bounce_is_handed_over(app_url: Served,
                                                  key: rsa.RSAPrivateKey) -> None:
    trust(app_url, key)
    message = signed_notification(key)
    answer = await post(app_url.url, "/webhooks/ses", message, **{"x-amz-sns-message-type":
                                                                 "Notification"})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"status": "ok", "events": 1}
    [(event, provider, raw)] = app_url.collector.got
    assert (event.kind, event.address, provider) == (ReturnKind.HARD, "reader@example.com", "ses")
    assert json.loads(raw) == message


@sqlite_only
@pytest.mark.parametrize("change", [
    {"Message": json.dumps(ses_bounce(status="5.2.2"))},  # tampered after signing
    {"Signature": "AAAA"},
])
async def test_a_forged_sns_message_is_refused_and_nothing_handed(
        app_url: Served, key: rsa.RSAPrivateKey, change: dict[str, str]) -> None:
    trust(app_url, key)
    answer = await post(app_url.url, "/webhooks/ses", {**signed_notification(key), **change})
    assert answer.status_code == 403
    assert app_url.collector.got == []


@sqlite_only
async def test_an_sns_message_of_another_topic_is_refused(app_url: Served,
                                                          key: rsa.RSAPrivateKey) -> None:
    trust(app_url, key)
    other = signed_notification(key, TopicArn="arn:aws:sns:eu-west-1:999999999999:theirs")
    answer = await post(app_url.url, "/webhooks/ses", other)
    assert answer.status_code == 403
    assert "topic" in answer.json()["error"]
    assert app_url.collector.got == []


@sqlite_only
async def test_sns_types_other_than_notification_and_confirmation_are_refused(
        app_url: Served, key: rsa.RSAPrivateKey) -> None:
    trust(app_url, key)
    message = sign({**confirmation("UnsubscribeConfirmation"),
                    "Timestamp": iso(datetime.now(UTC))}, key)
    answer = await post(app_url.url, "/webhooks/ses", message)
    assert answer.status_code == 400
    assert app_url.collector.got == []


@sqlite_only
async def test_a_certificate_off_sns_is_never_fetched(app_url: Served,
                                                      key: rsa.RSAPrivateKey) -> None:
    message = signed_notification(key, SigningCertURL="https://127.0.0.1:1/cert.pem")
    answer = await post(app_url.url, "/webhooks/ses", message)
    assert answer.status_code == 403
    assert app_url.webhooks.certificates == {}


@sqlite_only
async def test_without_topics_configured_every_sns_message_is_refused(
        project: Project, store: Store, key: rsa.RSAPrivateKey,
        caplog: pytest.LogCaptureFixture) -> None:
    collector = Collector()
    app = create_app(project.configure(), store=store, returned_events=collector)
    async with served(app) as url:
        answer = await post(url, "/webhooks/ses", signed_notification(key))
    assert answer.status_code == 403
    assert "ses_topic_arns" in answer.json()["error"]
    assert collector.got == []
    assert any(r.name == "mailer.web" and getattr(r, "provider", None) == "ses"
               for r in caplog.records)


@sqlite_only
async def test_without_a_consumer_the_webhooks_answer_503(project: Project,
                                                          store: Store) -> None:
    async with served(create_app(project.configure(), store=store)) as url:
        answer = await post(url, "/webhooks/postmark", postmark_bounce())
    assert answer.status_code == 503


@sqlite_only
async def test_a_body_past_the_limit_is_refused_with_413(app_url: Served) -> None:
    answer = await post(app_url.url, "/webhooks/ses", {"x": "y" * MAX_WEBHOOK_BODY})
    assert answer.status_code == 413
    assert app_url.collector.got == []


# ---- Postmark -------------------------------------------------------------------------------

@sqlite_only
@pytest.mark.parametrize("authorization", [None, basic(HOOK_USER, "wrong"),
                                           basic("other", HOOK_PASSWORD), "Bearer x"])
async def test_postmark_without_the_right_basic_auth_gets_401(
        app_url: Served, authorization: str | None) -> None:
    headers = {"authorization": authorization} if authorization else {}
    answer = await post(app_url.url, "/webhooks/postmark", postmark_bounce(), **headers)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith("Basic")
    assert app_url.collector.got == []


@sqlite_only
async def test_postmark_with_the_right_basic_auth_is_handed_over(app_url: Served) -> None:
    answer = await post(app_url.url, "/webhooks/postmark", postmark_bounce(),
                        authorization=basic(HOOK_USER, HOOK_PASSWORD))
    assert answer.status_code == 200
    [(event, provider, _)] = app_url.collector.got
    assert (event.kind, event.address, provider) == (ReturnKind.HARD, "reader@example.com",
                                                     "postmark")


@sqlite_only
async def test_a_malformed_postmark_payload_is_400(app_url: Served) -> None:
    answer = await post(app_url.url, "/webhooks/postmark", {"RecordType": 5},
                        authorization=basic(HOOK_USER, HOOK_PASSWORD))
    assert answer.status_code == 400
    assert app_url.collector.got == []


@sqlite_only
async def test_postmark_is_refused_while_no_user_and_password_are_set(
        project: Project, store: Store) -> None:
    collector = Collector()
    app = create_app(project.configure(), store=store, returned_events=collector)
    async with served(app) as url:
        answer = await post(url, "/webhooks/postmark", postmark_bounce(),
                            authorization=basic("", ""))
    assert answer.status_code == 403
    assert collector.got == []


# ---- Mailgun --------------------------------------------------------------------------------

def mailgun_request(token: str, key: str = SIGNING_KEY) -> dict[str, Any]:
    return {**mailgun_event(),
            "signature": mailgun_signature(int(datetime.now(UTC).timestamp()), token, key)}


@sqlite_only
async def test_a_fresh_signed_mailgun_event_is_handed_over(app_url: Served) -> None:
    answer = await post(app_url.url, "/webhooks/mailgun", mailgun_request("t" * 50))
    assert answer.status_code == 200
    [(event, provider, _)] = app_url.collector.got
    assert (event.kind, provider) == (ReturnKind.HARD, "mailgun")


@sqlite_only
async def test_a_mailgun_event_with_a_bad_signature_is_403(app_url: Served) -> None:
    answer = await post(app_url.url, "/webhooks/mailgun", mailgun_request("t" * 50, "other"))
    assert answer.status_code == 403
    unsigned = {k: v for k, v in mailgun_request("u" * 50).items() if k != "signature"}
    assert (await post(app_url.url, "/webhooks/mailgun", unsigned)).status_code == 401
    assert app_url.collector.got == []


@sqlite_only
async def test_a_replayed_mailgun_request_is_403(app_url: Served) -> None:
    request = mailgun_request("r" * 50)
    assert (await post(app_url.url, "/webhooks/mailgun", request)).status_code == 200
    replay = await post(app_url.url, "/webhooks/mailgun", request)
    assert replay.status_code == 403
    assert "replay" in replay.json()["error"]
    assert len(app_url.collector.got) == 1


@sqlite_only
async def test_a_mailgun_request_that_failed_downstream_may_come_again(
        project: Project, store: Store) -> None:
    calls: list[str] = []

    async def failing_once(event: ProviderEvent, provider: str, raw: bytes) -> None:
        calls.append(provider)
        if len(calls) == 1:
            raise OSError("database away")

    config = config_mod.load(project.configure().path, env={
        "MAILER_SECRET_KEY": "test-key", "MAILER_MAILGUN_SIGNING_KEY": SIGNING_KEY})
    async with served(create_app(config, store=store, returned_events=failing_once)) as url:
        request = mailgun_request("f" * 50)
        assert (await post(url, "/webhooks/mailgun", request)).status_code == 500
        assert (await post(url, "/webhooks/mailgun", request)).status_code == 200
    assert calls == ["mailgun", "mailgun"]


# ---- fetching from SNS ------------------------------------------------------------------------

@pytest.fixture
def https_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local HTTPS server (certificate for 127.0.0.1): /cert.pem, and /moved redirecting."""
    cert, key_file = tmp_path / "https.pem", tmp_path / "https.key"
    server_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    made = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(server_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(server_key, hashes.SHA256()))
    cert.write_bytes(made.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(server_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 -- the name http.server calls
            if self.path == "/moved":
                self.send_response(302)
                self.send_header("Location", "https://127.0.0.1:1/elsewhere.pem")
                self.end_headers()
                return
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"-----BEGIN CERTIFICATE-----\n")

        def log_message(self, *args: object) -> None: ...

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", cert
    finally:
        server.shutdown()
        server.server_close()


def test_fetch_https_verifies_with_the_system_trust_and_follows_no_redirect(
        https_server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    base, cert = https_server
    with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):
        fetch_https(f"{base}/cert.pem")  # not in the system's trust store
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    assert fetch_https(f"{base}/cert.pem") == b"-----BEGIN CERTIFICATE-----\n"
    with pytest.raises(OSError, match="302"):
        fetch_https(f"{base}/moved")
    with pytest.raises(OSError, match="more than"):
        fetch_https(f"{base}/cert.pem", limit=5)
    with pytest.raises(OSError, match="only https"):
        fetch_https(base.replace("https", "http") + "/cert.pem")


def test_the_token_memory_forgets_after_the_max_age() -> None:
    state, now = WebhookState(), datetime(2026, 11, 30, tzinfo=UTC)
    assert state.first_use("a", now=now)
    assert not state.first_use("a", now=now + timedelta(minutes=14))
    assert state.first_use("a", now=now + timedelta(minutes=16))
