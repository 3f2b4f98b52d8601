"""Abuse limits of the web endpoints: body size, strict form reading, rate limit, headers."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections import deque
from collections.abc import Callable

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_BODY = 16 * 1024  # an address, a name and a honeypot take a few hundred bytes
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
# No scripts and no third-party requests on our pages; images in the web view of an issue
# may come from anywhere, as in the email. frame-ancestors: no clickjacking of the buttons.
CSP = ("default-src 'none'; img-src http: https: data:; style-src 'unsafe-inline'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


def content_type(request: Request) -> str:
    """The request's media type, lower case, without parameters."""
    return request.headers.get("content-type", "").partition(";")[0].strip().lower()


async def read_body(request: Request, *, limit: int = MAX_BODY) -> bytes:
    """The request body, refused with 413 past `limit` bytes without reading the rest.

    Raises:
        HTTPException: 413.
    """
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise HTTPException(413, f"a request body may have at most {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"a request body may have at most {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_fields(request: Request, names: tuple[str, ...]) -> dict[str, str]:
    """The named text fields of a form or JSON object body (other fields are ignored).

    Raises:
        HTTPException: 413 too large, 415 another content type, 400 malformed.
    """
    body = await read_body(request)
    kind = content_type(request)
    if kind == "application/json":
        try:
            data = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise HTTPException(400, "the body is not valid JSON") from None
        if not isinstance(data, dict):
            raise HTTPException(400, 'expected a JSON object like {"email": "you@example.com"}')
        values = {name: data[name] for name in names if data.get(name) is not None}
    elif kind in FORM_TYPES:
        async def replay() -> Message:
            return {"type": "http.request", "body": body, "more_body": False}

        # Starlette's parsers, on the body already read (and so already size-checked).
        form = await Request(request.scope, replay).form(max_files=0, max_fields=50,
                                                          max_part_size=MAX_BODY)
        values = {}
        for name in names:
            given = form.getlist(name)
            if len(given) > 1:
                raise HTTPException(400, f"{name}: given more than once")
            if given:
                values[name] = given[0]
    else:
        raise HTTPException(415, "send the form as application/x-www-form-urlencoded, "
                                 "multipart/form-data or application/json")
    for name, value in values.items():
        if not isinstance(value, str) or isinstance(value, UploadFile):
            raise HTTPException(400, f"{name}: expected text")
    return values


class RateLimiter:
    """At most N requests per client address in any 60 seconds (in memory, per process)."""

    WINDOW = 60.0
    MAX_CLIENTS = 10_000

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.hits: dict[str, deque[float]] = {}

    def retry_after(self, client: str, per_minute: int) -> int:
        """0, and the request is counted; or the seconds until this client may try again."""
        if per_minute <= 0:  # 0 = no limit, as for rate_per_second
            return 0
        now = self.clock()
        if len(self.hits) >= self.MAX_CLIENTS:  # forget clients quiet for a whole window
            self.hits = {k: q for k, q in self.hits.items() if q and q[-1] > now - self.WINDOW}
        hits = self.hits.setdefault(client, deque())
        while hits and hits[0] <= now - self.WINDOW:
            hits.popleft()
        if len(hits) >= per_minute:
            return max(1, int(hits[0] + self.WINDOW - now + 0.999))
        hits.append(now)
        return 0


class SecurityHeaders:
    """ASGI middleware: headers every answer carries. No sniffing, no framing, no caching,
    and no Referer that would hand a confirm or unsubscribe token in the URL to another site.
    A header the answer sets itself wins (the confirm page's CSP allows its one script)."""

    HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
               (b"x-frame-options", b"DENY"), (b"content-security-policy", CSP.encode()),
               (b"cache-control", b"no-store")]

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    @staticmethod
    def csp_allowing(script: str) -> str:
        """The CSP of a page with one inline script: that script alone may run, allowed by
        its hash (never 'unsafe-inline', which would let an injected one run too)."""
        digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
        return f"{CSP}; script-src 'sha256-{digest}'"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                own = {name.lower() for name, _ in headers}
                message["headers"] = headers + [h for h in self.HEADERS if h[0] not in own]
            await send(message)

        await self.app(scope, receive, send_with_headers)
