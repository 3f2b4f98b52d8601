"""The HTTP side (Starlette): sign-up form, confirm, one-click unsubscribe, archive, metrics.

A flat `routes` table of thin handlers: each parses its input, calls one use case in
`subscriptions` (or one store read), and picks a page. Domain errors become status codes
in `pages` only.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from mailer import metrics, render, subscriptions
from mailer.config import Config, Newsletter
from mailer.guards import MAX_BODY, RateLimiter, SecurityHeaders, read_body, read_fields
from mailer.models import SubscriptionStatus
from mailer.pages import EXCEPTION_HANDLERS, page, wants_json
from mailer.store import Store

log = logging.getLogger("mailer.web")

HONEYPOT = "website"  # the form field only bots fill in

__all__ = ["HONEYPOT", "MAX_BODY", "create_app", "routes", "serve"]


def _config(request: Request) -> Config:
    config: Config = request.app.state.config
    return config


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
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
        log.info("sign-up to %s with the honeypot filled in: ignored", newsletter.id)
    else:
        store = _store(request)
        due = await subscriptions.subscribe(config, store, newsletter, fields.get("email", ""),
                                            name=fields.get("name", ""))
        if due is not None:
            # After the answer: its timing must not tell a new address from a known one.
            background = BackgroundTask(subscriptions.deliver_confirmation, config, store,
                                        newsletter, due)
    # The same answer for a new, pending or confirmed address (and a bot): no enumeration.
    if wants_json(request):
        return JSONResponse({"status": "ok", "message": "check your inbox to confirm"},
                            background=background)
    return page(request, "check_inbox", title="Check your inbox", newsletter=newsletter,
                background=background)


async def confirm(request: Request) -> Response:
    """GET /confirm/{token}: the double opt-in link; 400 when forged, expired or stale."""
    config = _config(request)
    sub = await subscriptions.confirm(config, _store(request), request.path_params["token"])
    newsletter = _known(config, sub.newsletter)
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
    issues = await _store(request).archived_issues(newsletter.id)
    return page(request, "archive", title="Past issues", newsletter=newsletter, issues=issues)


async def issue(request: Request) -> Response:
    """GET /issues/{newsletter}/{slug}: the email's HTML without anyone's personal links."""
    newsletter = _newsletter(request)
    send = await _store(request).archived_issue(newsletter.id, request.path_params["slug"])
    if send is None:
        raise HTTPException(404, "there is no sent issue of that name here")
    rendered = render.RenderedIssue(subject=send.subject, preheader=send.preheader,
                                    html=send.html, text=send.text, web_url=send.web_url)
    return HTMLResponse(render.render_web_view(rendered))


async def healthz(request: Request) -> Response:
    """GET /healthz: liveness (the process answers HTTP)."""
    return PlainTextResponse("ok\n")


async def metrics_text(request: Request) -> Response:
    """GET /metrics: Prometheus text, counted in the database now."""
    config = _config(request)
    body = await metrics.exposition(_store(request), config.newsletters)
    return Response(body, media_type=metrics.CONTENT_TYPE)


routes = [
    Route("/subscribe/{newsletter}", subscribe_form, methods=["GET"], name="subscribe_form"),
    Route("/subscribe/{newsletter}", subscribe, methods=["POST"], name="subscribe"),
    Route("/confirm/{token}", confirm, methods=["GET"], name="confirm"),
    Route("/unsubscribe/{token}", unsubscribe_page, methods=["GET"], name="unsubscribe_page"),
    Route("/unsubscribe/{token}", unsubscribe, methods=["POST"], name="unsubscribe"),
    Route("/resubscribe/{token}", resubscribe, methods=["POST"], name="resubscribe"),
    Route("/issues/{newsletter}", archive, methods=["GET"], name="archive"),
    Route("/issues/{newsletter}/{slug}", issue, methods=["GET"], name="issue"),
    Route("/healthz", healthz, methods=["GET"], name="healthz"),
    Route("/metrics", metrics_text, methods=["GET"], name="metrics"),
]


# -- the app and `mailer serve` ---------------------------------------------------------------


class _Server(uvicorn.Server):
    """uvicorn's server, except that after a graceful stop on SIGTERM/SIGINT it returns
    instead of raising the signal again (which would kill the process before the store is
    closed, and exit with -15 instead of 0)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # signals reach the main thread only
            return
        previous = {sig: signal.signal(sig, self.handle_exit)
                    for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


async def serve(config: Config, *, host: str | None = None, port: int | None = None) -> None:
    """`mailer serve`: the web app alone under uvicorn until SIGTERM/SIGINT.

    Raises:
        MailerError: the database cannot be opened (before anything listens).
    """
    store = await Store.open(config.settings.database_url)
    try:
        await _Server(uvicorn.Config(
            create_app(config, store=store), host=host or config.settings.host,
            port=config.settings.port if port is None else port, ws="none", log_level="info",
        )).serve()
    finally:
        await store.close()


def create_app(config: Config, *, store: Store | None = None) -> Starlette:
    """The web app. Handlers read `app.state.config` (the daemon swaps it on reload) and
    `app.state.store`; without `store`, the app opens its own in its lifespan."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if store is not None:
            yield
            return
        own = await Store.open(app.state.config.settings.database_url)
        app.state.store = own
        try:
            yield
        finally:
            await own.close()

    app = Starlette(routes=routes, lifespan=lifespan, middleware=[Middleware(SecurityHeaders)],
                    exception_handlers=EXCEPTION_HANDLERS)
    app.state.config = config
    app.state.limiter = RateLimiter()
    if store is not None:
        app.state.store = store
    return app
