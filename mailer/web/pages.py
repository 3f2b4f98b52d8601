"""HTML pages of the web endpoints (templates/pages/*.html.j2) and their error answers."""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import jinja2
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response

from mailer.config import BUNDLED_TEMPLATES, Config, Newsletter
from mailer.errors import InputError
from mailer.web.guards import content_type

log = logging.getLogger("mailer.web")

HEADINGS = {400: "This did not work", 404: "Not found", 405: "Not allowed here",
            408: "Too slow", 413: "Too much data", 415: "Unsupported format",
            429: "Too many requests", 500: "Something went wrong"}
DEFAULT_ACCENT = "#2563eb"


@functools.lru_cache(maxsize=8)
def _environment(templates_dir: Path) -> jinja2.Environment:
    # The project's templates/pages/ win; a project made before pages existed gets ours.
    loader = jinja2.ChoiceLoader([jinja2.FileSystemLoader(templates_dir),
                                  jinja2.FileSystemLoader(BUNDLED_TEMPLATES)])
    return jinja2.Environment(loader=loader, autoescape=True, undefined=jinja2.StrictUndefined)


def page(request: Request, name: str, *, status: int = 200, title: str,
         newsletter: Newsletter | None = None, background: BackgroundTask | None = None,
         **context: Any) -> HTMLResponse:
    """Render templates/pages/NAME.html.j2 (autoescaped) into a response.

    Links are paths from the app's routes (`url('archive', newsletter=…)`), so a page works
    on whatever host and prefix it is served under.
    """
    config: Config = request.app.state.config
    root = request.scope.get("root_path", "")

    def url(route: str, **params: str) -> str:
        return f"{root}{request.app.url_path_for(route, **params)}"

    # The accent colour lands in CSS, where escaping protects nothing: config.py only lets
    # a hex colour through.
    html = _environment(config.templates_dir).get_template(f"pages/{name}.html.j2").render(
        title=title, newsletter=newsletter, url=url, postal_address=config.settings.postal_address,
        accent=newsletter.accent_color if newsletter else DEFAULT_ACCENT, **context)
    return HTMLResponse(html, status_code=status, background=background)


def wants_json(request: Request) -> bool:
    """JSON in, or JSON asked for (and not HTML): answer in JSON."""
    if content_type(request) == "application/json":
        return True
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


def error_response(request: Request, status: int, message: str,
                   headers: dict[str, str] | None = None) -> Response:
    """A clear answer for a 4xx/5xx: a page, or {"error": …} for JSON clients."""
    if wants_json(request):
        return JSONResponse({"error": message}, status_code=status, headers=headers)
    config: Config = request.app.state.config
    newsletter = config.newsletters.get(request.path_params.get("newsletter", ""))
    heading = HEADINGS.get(status, "Error")
    try:
        response: Response = page(request, "error", status=status, title=heading,
                                  heading=heading, message=message, newsletter=newsletter)
    except Exception:  # a broken custom error page must not hide the answer itself
        log.exception("templates/pages/error.html.j2 failed")
        response = PlainTextResponse(f"{heading}: {message}\n", status_code=status)
    response.headers.update(headers or {})
    return response


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's HTTPException (ours, and its own 404/405) as an error page."""
    assert isinstance(exc, HTTPException)
    message = exc.detail if exc.detail else HEADINGS.get(exc.status_code, "error")
    return error_response(request, exc.status_code, message, dict(exc.headers or {}))


async def input_error(request: Request, exc: Exception) -> Response:
    """TokenError (a forged, expired or swapped link) and SubscriberError (a bad address)."""
    assert isinstance(exc, InputError)
    return error_response(request, 400, str(exc))


async def client_gone(request: Request, exc: Exception) -> Response:
    """The client closed the connection before its whole request came: nobody to answer."""
    # One line, not a traceback: any client can do this at will (and the path may hold a
    # token, so the route's pattern stands for it).
    route = getattr(request.scope.get("route"), "path", "?")
    log.info("client went away before sending the whole request",
             extra={"method": request.method, "route": route})
    return Response(status_code=400)


async def server_error(request: Request, exc: Exception) -> Response:
    """Anything unexpected: a page that says so and nothing of the cause."""
    return error_response(request, 500, "something went wrong on our side; please try again "
                                        "in a few minutes")


EXCEPTION_HANDLERS = {HTTPException: http_error, InputError: input_error,
                      ClientDisconnect: client_gone, Exception: server_error}
