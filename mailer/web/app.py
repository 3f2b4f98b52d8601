"""The HTTP side (Starlette): sign-up form, confirm, one-click unsubscribe, archive, metrics,
provider webhooks.

A flat `routes` table of thin handlers: each parses its input, calls one use case in
`subscriptions` (or one store read), and picks a page. Domain errors become status codes
in `pages` only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

from markupsafe import Markup
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from mailer import subscriptions
from mailer.config import Config, Newsletter
from mailer.content import fields, render
from mailer.content.rendered import RenderedIssue
from mailer.rows import RelayHealth
from mailer.schedule import Clock
from mailer.states import SubscriptionStatus
from mailer.store import Store
from mailer.web.confirmations import ConfirmationQueue
from mailer.web.guards import MAX_BODY, RateLimiter, SecurityHeaders, read_body, read_fields
from mailer.web.health import healthz, metrics_text
from mailer.web.manage import manage_action, manage_page
from mailer.web.pages import EXCEPTION_HANDLERS, page, wants_json
from mailer.web.ports import WebStore
from mailer.web.routing import Resource
from mailer.web.server import SignalServer, server_config
from mailer.web.webhooks import (
    ReturnedEvents,
    WebhookState,
    mailgun_webhook,
    postmark_webhook,
    ses_webhook,
)

log = logging.getLogger("mailer.web")

HONEYPOT = "website"  # the form field only bots fill in
# Submits the confirm page's form as it loads: a person sees "subscribed" without a click,
# while a mail scanner that only GETs the link confirms nothing. Its CSP allows this script.
CONFIRM_SCRIPT = "document.forms.confirm.submit();"

__all__ = ["HONEYPOT", "MAX_BODY", "create_app", "routes", "serve"]


def _config(request: Request) -> Config:
    config: Config = request.app.state.config
    return config


def _store(request: Request) -> WebStore:
    store: WebStore = request.app.state.store
    return store


def _newsletter(request: Request) -> Newsletter:
    newsletter = _config(request).newsletters.get(request.path_params["newsletter"])
    if newsletter is None:
        raise HTTPException(404, "there is no newsletter of that name here")
    return newsletter


def _known(config: Config, newsletter_id: str) -> Newsletter | None:
    # A subscription may outlive its newsletter's entry in schedules.yaml.
    return config.newsletters.get(newsletter_id)


# -- handlers ------------------------------------------------------------------------------------


async def subscribe_form(request: Request) -> Response:
    """GET /subscribe/{newsletter}: the sign-up form."""
    newsletter = _newsletter(request)
    return page(request, "subscribe", title="Subscribe", newsletter=newsletter,
                honeypot=HONEYPOT)


async def subscribe(request: Request) -> Response:
    """POST /subscribe/{newsletter}: form or JSON `email`, `name`; one answer for all."""
    config = _config(request)
    newsletter = _newsletter(request)
    client = request.client.host if request.client else "unknown"
    wait = request.app.state.limiter.retry_after(client, config.settings.subscribe_rate_per_minute)
    if wait:
        raise HTTPException(429, f"too many sign-ups from your address; try again in {wait} "
                                 "seconds", headers={"Retry-After": str(wait)})
    fields = await read_fields(request, ("email", "name", HONEYPOT))
    background = None
    if fields.get(HONEYPOT):
        log.info("sign-up with the honeypot filled in: ignored",
                 extra={"newsletter": newsletter.id})
    else:
        store = _store(request)
        due = await subscriptions.subscribe(config, store, newsletter, fields.get("email", ""),
                                            name=fields.get("name", ""))
        if due is not None:
            # Queued once the answer is out, for the app's own tasks to send: neither the
            # answer's timing nor its connection may wait for the email, or they would
            # tell a new address from a known one.
            queue: ConfirmationQueue = request.app.state.confirmations
            background = BackgroundTask(queue.put, config, store, newsletter, due)
    # The same answer for a new, pending or confirmed address (and a bot): no enumeration.
    if wants_json(request):
        return JSONResponse({"status": "ok", "message": "check your inbox to confirm"},
                            background=background)
    return page(request, "check_inbox", title="Check your inbox", newsletter=newsletter,
                background=background)


async def confirm_page(request: Request) -> Response:
    """GET /confirm/{token}: the double opt-in link, a page whose form confirms; changes
    nothing. 400 when the link is forged or expired, or its subscription is gone."""
    config = _config(request)
    token = request.path_params["token"]
    sub = await subscriptions.find_by_confirm_token(config, _store(request), token)
    newsletter = _known(config, sub.newsletter)
    if wants_json(request):
        return JSONResponse({"status": sub.status.value, "newsletter": sub.newsletter})
    if sub.status == SubscriptionStatus.CONFIRMED:  # opened again: nothing left to do
        return page(request, "confirmed", title="Subscribed", newsletter=newsletter,
                    resubscribed=False)
    # Any other state is for the POST to judge, as for a click without the script.
    response = page(request, "confirm", title="Confirm", newsletter=newsletter, token=token,
                    script=Markup(CONFIRM_SCRIPT))
    response.headers["content-security-policy"] = SecurityHeaders.csp_allowing(CONFIRM_SCRIPT)
    return response


async def confirm(request: Request) -> Response:
    """POST /confirm/{token}: confirm, idempotent; 400 when forged, expired or stale."""
    config = _config(request)
    await read_body(request)  # the form sends nothing; whatever came is capped and dropped
    sub = await subscriptions.confirm(config, _store(request), request.path_params["token"],
                                      now=request.app.state.clock.now())
    newsletter = _known(config, sub.newsletter)
    if request.app.state.on_confirmed is not None:
        request.app.state.on_confirmed(sub.newsletter)
    if wants_json(request):
        return JSONResponse({"status": "confirmed", "newsletter": sub.newsletter})
    return page(request, "confirmed", title="Subscribed", newsletter=newsletter,
                resubscribed=False)


async def unsubscribe_page(request: Request) -> Response:
    """GET /unsubscribe/{token}: a page with one button; changes nothing."""
    config = _config(request)
    token = request.path_params["token"]
    # A GET never changes anything: mail scanners and link previews open every link.
    sub = await subscriptions.find_by_unsubscribe_token(config, _store(request), token)
    newsletter = _known(config, sub.newsletter) if sub else None
    if sub is None or newsletter is None or sub.status == SubscriptionStatus.UNSUBSCRIBED:
        return page(request, "unsubscribed", title="Unsubscribed", newsletter=newsletter,
                    token=token)
    return page(request, "unsubscribe", title="Unsubscribe", newsletter=newsletter, token=token)


async def unsubscribe(request: Request) -> Response:
    """POST /unsubscribe/{token}: leave at once (RFC 8058 one-click); idempotent."""
    config = _config(request)
    token = request.path_params["token"]
    # RFC 8058: the mail client POSTs "List-Unsubscribe=One-Click" and can send nothing
    # else (no CSRF token, no cookie); any body is accepted and the link alone decides.
    await read_body(request)
    sub = await subscriptions.unsubscribe(config, _store(request), token)
    newsletter = _known(config, sub.newsletter) if sub else None
    if wants_json(request):
        return JSONResponse({"status": "unsubscribed"})
    return page(request, "unsubscribed", title="Unsubscribed", newsletter=newsletter, token=token)


async def resubscribe(request: Request) -> Response:
    """POST /resubscribe/{token}: undo leaving, with the same unsubscribe link."""
    config = _config(request)
    await read_body(request)
    sub = await subscriptions.resubscribe(config, _store(request), request.path_params["token"])
    if wants_json(request):
        return JSONResponse({"status": "confirmed", "newsletter": sub.newsletter})
    return page(request, "confirmed", title="Subscribed", newsletter=_known(config, sub.newsletter),
                resubscribed=True)


async def archive(request: Request) -> Response:
    """GET /issues/{newsletter}: the issues that went out, newest first."""
    newsletter = _newsletter(request)
    # A subject with personal fields shows their defaults here, as the web view does.
    issues = [dataclasses.replace(i, subject=fields.public_text(i.subject),
                                  preheader=fields.public_text(i.preheader))
              for i in await _store(request).archived_issues(newsletter.id)]
    return page(request, "archive", title="Past issues", newsletter=newsletter, issues=issues)


async def issue(request: Request) -> Response:
    """GET /issues/{newsletter}/{slug}: the email's HTML without anyone's personal links."""
    newsletter = _newsletter(request)
    send = await _store(request).archived_issue(newsletter.id, request.path_params["slug"])
    if send is None:
        raise HTTPException(404, "there is no sent issue of that name here")
    rendered = RenderedIssue(subject=send.subject, preheader=send.preheader,
                                    html=send.html, text=send.text, web_url=send.web_url)
    return HTMLResponse(render.render_web_view(rendered))


routes = [
    Resource("/subscribe/{newsletter}", name="subscribe", GET=subscribe_form, POST=subscribe),
    Resource("/confirm/{token}", name="confirm", GET=confirm_page, POST=confirm),
    Resource("/unsubscribe/{token}", name="unsubscribe", GET=unsubscribe_page, POST=unsubscribe),
    Resource("/resubscribe/{token}", name="resubscribe", POST=resubscribe),
    Resource("/manage/{token}", name="manage", GET=manage_page, POST=manage_action),
    Resource("/issues/{newsletter}", name="archive", GET=archive),
    Resource("/issues/{newsletter}/{slug}", name="issue", GET=issue),
    Resource("/healthz", name="healthz", GET=healthz),
    Resource("/metrics", name="metrics", GET=metrics_text),
    Resource("/webhooks/ses", name="webhook_ses", POST=ses_webhook),
    Resource("/webhooks/postmark", name="webhook_postmark", POST=postmark_webhook),
    Resource("/webhooks/mailgun", name="webhook_mailgun", POST=mailgun_webhook),
]


# -- the app and `mailer serve` ---------------------------------------------------------------


async def serve(config: Config, *, host: str | None = None, port: int | None = None) -> None:
    """`mailer serve`: the web app alone under uvicorn until SIGTERM/SIGINT.

    Raises:
        MailerError: the database cannot be opened (before anything listens).
    """
    async with Store.open(config.settings.database_url) as store:
        await SignalServer(server_config(
            create_app(config, store=store), config.settings, host=host or config.settings.host,
            port=config.settings.port if port is None else port, log_level="info",
        )).serve()


def create_app(config: Config, *, store: WebStore | None = None,
               relay_health: Callable[[], Sequence[RelayHealth]] | None = None,
               returned_events: ReturnedEvents | None = None,
               clock: Clock | None = None,
               on_confirmed: Callable[[str], None] | None = None) -> Starlette:
    """The web app. Handlers read `app.state.config` (the daemon swaps it on reload) and
    `app.state.store`; without `store`, the app opens its own in its lifespan.
    `relay_health`: the sending process's view of its relays, for /healthz and /metrics
    (the daemon's; a web-only process has none). `returned_events`: what takes each
    verified provider webhook event (event, provider, raw body); without it the webhook
    routes answer 503. `clock`: the daemon's (test_now moves it), stamped on confirmations,
    where automatic emails count from; `on_confirmed(newsletter)`: told of each
    confirmation, so the welcome email goes at once rather than at the next look."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            if store is None:
                app.state.store = await stack.enter_async_context(
                    Store.open(app.state.config.settings.database_url))
            # Left first: unsent confirmation emails are given back while the store is open.
            await stack.enter_async_context(app.state.confirmations)
            yield

    app = Starlette(routes=routes, lifespan=lifespan, middleware=[Middleware(SecurityHeaders)],
                    exception_handlers=EXCEPTION_HANDLERS)
    # Its redirect to the path with(out) a slash is built from the Host header: another site.
    app.router.redirect_slashes = False
    app.state.config = config
    app.state.relay_health = relay_health
    app.state.returned_events = returned_events
    app.state.webhooks = WebhookState()
    app.state.limiter = RateLimiter()
    app.state.confirmations = ConfirmationQueue()
    app.state.clock = clock or Clock(config.settings.test_now)
    app.state.on_confirmed = on_confirmed
    if store is not None:
        app.state.store = store
    return app
