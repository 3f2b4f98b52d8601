"""aiosmtpd's server protocol with its live connections tracked, for the two SMTP servers
mailer runs in its own event loop: the capture server and the bounce receiver."""

from __future__ import annotations

import asyncio
from typing import Any

from aiosmtpd.smtp import SMTP


class TrackedConnection(SMTP):
    """One client connection; it is in `live` while open, so that a server stopping can
    end the connections still open and wait (`lost`) until each is gone."""

    def __init__(self, handler: Any, live: set[TrackedConnection], **options: Any) -> None:
        super().__init__(handler, **options)
        self._live = live
        self.lost: asyncio.Future[None] = self.loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._live.add(self)

    def connection_lost(self, error: Exception | None) -> None:
        self._live.discard(self)
        super().connection_lost(error)
        if not self.lost.done():
            self.lost.set_result(None)


async def close_server(server: asyncio.Server, live: set[TrackedConnection]) -> None:
    """Stop listening, close the connections still open (a message cut off there gets no
    answer, so its sender keeps it: RFC 5321 §6.1) and wait until every one is gone."""
    server.close()
    connections = list(live)
    for connection in connections:
        if connection.transport is not None:
            connection.transport.close()
    await server.wait_closed()
    await asyncio.gather(*(connection.lost for connection in connections))
