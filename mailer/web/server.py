"""The HTTP/1.1 server under the web app: uvicorn's h11 protocol with read deadlines.

`mailer serve` and `mailer run` both build their uvicorn config here, so the two answer
alike: no `server` header, X-Forwarded-For believed only from `trusted_proxies`, and no
connection held open by a client that sends its request slowly or not at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

import h11
import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import STATUS_PHRASES, H11Protocol

from mailer.config import Settings
from mailer.web.guards import SecurityHeaders

log = logging.getLogger("mailer.web")

# uvicorn waits for a request head for ever and for a body as long as bytes trickle in, so
# a client can hold a connection (and its memory) with a byte now and then: slowloris.
# Every real client sends a head in one packet and our bodies (a form, a one-click
# unsubscribe: at most MAX_BODY) in well under a second; these leave room for a bad phone
# line. HEAD: from connection open, or from the end of the previous answer on a kept-alive
# connection, to the end of the head. BODY: from the end of the head to the end of the body.
HEAD_TIMEOUT = 10.0
BODY_TIMEOUT = 15.0


class DeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request head or body does not
    arrive in time (408 when part of it did), and whose own error answers carry the
    security headers of the app's pages."""

    head_timeout: ClassVar[float] = HEAD_TIMEOUT
    body_timeout: ClassVar[float] = BODY_TIMEOUT

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._watching: tuple[object, object] | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()

    def send_400_response(self, msg: str) -> None:
        self._answer(400, msg)

    def _watch(self) -> None:
        # The deadline runs per phase of a request, not per packet: bytes arriving do not
        # restart it. h11 tells the phase; the cycle tells one request from the next.
        state, cycle = self.conn.their_state, self.cycle
        if (state, cycle) == self._watching:
            return
        self._watching = (state, cycle)
        self._disarm()
        if self.transport.is_closing():
            return
        if state is h11.IDLE:
            self._deadline = self.loop.call_later(self.head_timeout, self._too_slow, "head")
        elif state is h11.SEND_BODY:
            self._deadline = self.loop.call_later(self.body_timeout, self._too_slow, "body")

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self, phase: str) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if phase == "head":
            # Nothing of a request came (an idle kept-alive connection, a browser's
            # preconnect): closed without a word.
            begun = bool(self.conn.trailing_data[0])
        else:
            begun = not self.cycle.response_started
            if not self.cycle.response_complete:
                # The app's answer, should one still come, must not follow ours on the wire.
                self.cycle.disconnected = True
                self.cycle.message_event.set()
        log.debug("request not complete in time: connection closed", extra={
            "phase": phase, "client": self.client[0] if self.client else "unknown"})
        if begun:
            self._answer(408, f"the request {phase} did not arrive in time")
        else:
            self.transport.close()

    def _answer(self, status: int, text: str) -> None:
        """Answer with status and a line of text, then close (as uvicorn's own 400 does)."""
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            self.transport.close()  # an answer is already on its way: cutting it is all
            return
        body = f"{text}\n".encode()
        headers = [(b"content-type", b"text/plain; charset=utf-8"),
                   (b"content-length", str(len(body)).encode()), (b"connection", b"close"),
                   *SecurityHeaders.HEADERS]
        for event in (h11.Response(status_code=status, headers=headers,
                                   reason=STATUS_PHRASES[status]),
                      h11.Data(data=body), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event) or b"")
        self.transport.close()


class SignalServer(uvicorn.Server):
    """uvicorn's server for `mailer serve`, where it is the whole process: it handles
    SIGTERM/SIGINT itself, and after a graceful stop returns instead of raising the signal
    again (which would kill the process before the store is closed, and exit with -15, not 0)."""

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


class EmbeddedServer(uvicorn.Server):
    """uvicorn's server inside `mailer run`, one part of the daemon: it installs no signal
    handlers, because the daemon owns SIGTERM/SIGINT and stops the server itself."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def server_config(app: ASGIApp, settings: Settings, /, *, head_timeout: float = HEAD_TIMEOUT,
                  body_timeout: float = BODY_TIMEOUT, **options: Any) -> uvicorn.Config:
    """uvicorn's config for the web app; `options` go to uvicorn.Config as they are."""
    class Protocol(DeadlineProtocol):  # uvicorn makes one per connection from the class
        pass

    Protocol.head_timeout, Protocol.body_timeout = head_timeout, body_timeout
    proxies = list(settings.trusted_proxies)
    return uvicorn.Config(
        # Around the whole app too: Starlette sends its 500 page from outside the app's own
        # middleware, which would leave it without the headers.
        SecurityHeaders(app), http=Protocol, server_header=False, ws="none",
        # Without trusted proxies, X-Forwarded-For is ignored whoever sends it: believed
        # from anyone on the peer address (uvicorn trusts 127.0.0.1), it would let each
        # request claim a new client address past the sign-up rate limit.
        proxy_headers=bool(proxies), forwarded_allow_ips=proxies, **options)
