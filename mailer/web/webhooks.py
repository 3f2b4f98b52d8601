"""Provider webhooks (POST /webhooks/ses, /postmark, /mailgun): checked, read, handed over.

Each handler reads the body (capped), proves the request came from the provider, reads its
events with the pure readers of `mailer.returns.webhooks`, and hands each to
`app.state.returned_events(event, provider, raw_body)`. A request that is unsigned, forged,
stale, replayed or malformed is refused (401, 403, 400), logged, and changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import urllib.request
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import NoReturn

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mailer.config import Settings
from mailer.errors import InputError, TryLater
from mailer.returns.events import ProviderEvent, SignatureError
from mailer.returns.webhooks import mailgun, postmark, ses, sns
from mailer.web.guards import read_body

log = logging.getLogger("mailer.web")

ReturnedEvents = Callable[[ProviderEvent, str, bytes], Awaitable[None]]

# SNS delivers messages of up to 256 KiB; Postmark and Mailgun payloads are far smaller.
MAX_WEBHOOK_BODY = 256 * 1024
MAX_CERTIFICATE_BYTES = 64 * 1024  # an SNS signing certificate is about 2 KiB
FETCH_TIMEOUT_SECONDS = 10.0
# Mailgun signs each attempt when it sends it; a quarter of an hour covers clocks and queues,
# and bounds both a captured request's use and the memory of tokens seen.
MAILGUN_MAX_AGE = timedelta(minutes=15)


class WebhookState:
    """What the webhook routes remember between requests, bounded: SNS signing certificates
    by URL, and the Mailgun tokens seen within MAILGUN_MAX_AGE (replay protection)."""

    MAX_CERTIFICATES = 32
    MAX_TOKENS = 100_000

    def __init__(self) -> None:
        self.certificates: OrderedDict[str, bytes] = OrderedDict()
        self.tokens: OrderedDict[str, datetime] = OrderedDict()

    def remember_certificate(self, url: str, pem: bytes) -> None:
        """Keep a fetched certificate; the oldest goes when the cache is full."""
        self.certificates[url] = pem
        while len(self.certificates) > self.MAX_CERTIFICATES:
            self.certificates.popitem(last=False)

    def first_use(self, token: str, *, now: datetime) -> bool:
        """Record a Mailgun token; False when it was seen within MAILGUN_MAX_AGE."""
        while self.tokens and next(iter(self.tokens.values())) < now:
            self.tokens.popitem(last=False)  # in order of expiry, as they were added
        if token in self.tokens:
            return False
        self.tokens[token] = now + MAILGUN_MAX_AGE
        while len(self.tokens) > self.MAX_TOKENS:
            self.tokens.popitem(last=False)
        return True


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    # The host was checked before the request; a redirect would lead anywhere.
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def fetch_https(url: str, *, limit: int = MAX_CERTIFICATE_BYTES) -> bytes:
    """GET an https URL with the system's trust store (SSL_CERT_FILE is honoured) and host
    name checking, following no redirect, reading at most `limit` bytes. Blocking.

    The caller decides which URLs may be fetched (sns.signing_cert_url, sns.subscribe_url).

    Raises:
        OSError: no connection, TLS not verified, a status other than 200, or too large.
    """
    if not url.startswith("https://"):
        raise OSError(f"only https URLs are fetched, not {url[:80]!r}")
    opener = urllib.request.build_opener(
        urllib.request.HTTPSHandler(context=ssl.create_default_context()), _NoRedirects())
    with opener.open(url, timeout=FETCH_TIMEOUT_SECONDS) as answer:
        if answer.status != 200:
            raise OSError(f"{url} answered {answer.status}")
        body: bytes = answer.read(limit + 1)
    if len(body) > limit:
        raise OSError(f"{url} answered more than {limit} bytes")
    return body


def _refuse(request: Request, provider: str, status: int, reason: str,
            headers: Mapping[str, str] | None = None) -> NoReturn:
    log.warning("webhook refused", extra={
        "provider": provider, "status": status, "reason": reason,
        "client": request.client.host if request.client else None})
    raise HTTPException(status, reason, headers=dict(headers or {}))


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.config.settings
    return settings


def _state(request: Request) -> WebhookState:
    state: WebhookState = request.app.state.webhooks
    return state


def _json_object(body: bytes) -> dict[str, object]:
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InputError("the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise InputError("expected a JSON object")
    return data


async def _received(request: Request, provider: str,
                    check: Callable[[Request, bytes], Awaitable[list[ProviderEvent]]]
                    ) -> Response:
    consumer: ReturnedEvents | None = request.app.state.returned_events
    if consumer is None:
        _refuse(request, provider, 503, "bounce handling is not set up")
    try:
        body = await read_body(request, limit=MAX_WEBHOOK_BODY)
    except HTTPException as exc:
        _refuse(request, provider, exc.status_code, str(exc.detail))
    try:
        events = await check(request, body)
    except SignatureError as exc:
        _refuse(request, provider, 403, str(exc))
    except InputError as exc:
        _refuse(request, provider, 400, str(exc))
    try:
        for event in events:
            # An exception here is a 5xx: the provider sends the request again later.
            await consumer(event, provider, body)
    except BaseException as exc:
        # Forgotten, so that the provider's retry of this very request is not a replay.
        _state(request).tokens.pop(getattr(request.state, "replay_token", ""), None)
        if isinstance(exc, TryLater):  # the database is away: a quiet 503, retried later
            raise HTTPException(503, "try again later", headers={"Retry-After": "60"}) \
                from None
        raise
    log.info("webhook received", extra={"provider": provider, "events": len(events)})
    return JSONResponse({"status": "ok", "events": len(events)})


async def _check_ses(request: Request, body: bytes) -> list[ProviderEvent]:
    topics = _settings(request).ses_topic_arns
    if not topics:
        # Any AWS account can sign messages of its own topic: without ours named, no SNS
        # message proves anything.
        _refuse(request, ses.PROVIDER, 403, "SES webhooks are not set up (ses_topic_arns)")
    message = _json_object(body)
    kind = message.get("Type")
    if kind not in (sns.NOTIFICATION, sns.SUBSCRIPTION_CONFIRMATION):
        _refuse(request, ses.PROVIDER, 400, "only SubscriptionConfirmation and Notification "
                                            "messages are taken")
    url = sns.signing_cert_url(message)
    state = _state(request)
    pem = state.certificates.get(url)
    if pem is None:
        try:
            pem = await asyncio.to_thread(fetch_https, url)
        except OSError as exc:
            log.warning("SNS signing certificate not fetched",
                        extra={"url": url, "reason": str(exc)[:300]})
            raise HTTPException(502, "the signing certificate could not be fetched; "
                                     "try again later") from None
        state.remember_certificate(url, pem)
    sns.verify_sns(message, pem, now=datetime.now(UTC), topic_arns=topics)
    if kind == sns.SUBSCRIPTION_CONFIRMATION:
        link = sns.subscribe_url(message)
        try:
            await asyncio.to_thread(fetch_https, link)
        except OSError as exc:
            log.warning("SNS subscription not confirmed",
                        extra={"topic": message.get("TopicArn"), "reason": str(exc)[:300]})
            raise HTTPException(502, "the subscription could not be confirmed; "
                                     "try again later") from None
        log.info("SNS subscription confirmed", extra={"topic": message.get("TopicArn")})
        return []
    return ses.parse_ses(message)


async def _check_postmark(request: Request, body: bytes) -> list[ProviderEvent]:
    settings = _settings(request)
    user, password = settings.webhook_user, settings.webhook_password
    if user is None or password is None:
        _refuse(request, postmark.PROVIDER, 403, "Postmark webhooks are not set up "
                                                 "(MAILER_WEBHOOK_USER, MAILER_WEBHOOK_PASSWORD)")
    if not postmark.check_basic_auth(request.headers.get("authorization"),
                                     user.get_secret_value(), password.get_secret_value()):
        _refuse(request, postmark.PROVIDER, 401, "the webhook's user and password are needed",
                headers={"WWW-Authenticate": 'Basic realm="webhooks", charset="UTF-8"'})
    return postmark.parse_postmark(_json_object(body))


async def _check_mailgun(request: Request, body: bytes) -> list[ProviderEvent]:
    key = _settings(request).mailgun_signing_key
    if key is None:
        _refuse(request, mailgun.PROVIDER, 403, "Mailgun webhooks are not set up "
                                                "(MAILER_MAILGUN_SIGNING_KEY)")
    payload = _json_object(body)
    signature = payload.get("signature")
    if not isinstance(signature, Mapping):
        _refuse(request, mailgun.PROVIDER, 401, "the request is not signed")
    now = datetime.now(UTC)
    mailgun.verify_mailgun(signature, key.get_secret_value(), now=now, max_age=MAILGUN_MAX_AGE)
    events = mailgun.parse_mailgun(payload)
    # Recorded only once signed (or anyone could fill the memory) and read (or a request we
    # refused as malformed could not be corrected and sent again).
    token = str(signature["token"])
    if not _state(request).first_use(token, now=now):
        _refuse(request, mailgun.PROVIDER, 403, "this request was already received (replay)")
    request.state.replay_token = token
    return events


async def ses_webhook(request: Request) -> Response:
    """POST /webhooks/ses: an SNS message, checked by its signature and our topic list."""
    return await _received(request, ses.PROVIDER, _check_ses)


async def postmark_webhook(request: Request) -> Response:
    """POST /webhooks/postmark: a Postmark bounce or spam complaint, with basic auth."""
    return await _received(request, postmark.PROVIDER, _check_postmark)


async def mailgun_webhook(request: Request) -> Response:
    """POST /webhooks/mailgun: a Mailgun event, checked by its HMAC signature and token."""
    return await _received(request, mailgun.PROVIDER, _check_mailgun)
