"""The SMTP receiver of returned mail: bounces and complaints for the bounce address, by SMTP.

An MX record for the bounce domain, or an MTA transport (Postfix `transport_maps`, Exim's
`manualroute`), points at `bounce_listen`; every message for the bounce address or one of its
VERP forms is handed over as bytes with its envelope recipients, and nothing else is taken.

No AUTH: a bounce comes from any MTA on the internet, none of which has a login here. No
STARTTLS yet: on loopback behind an MTA it would protect nothing, and for a public MX the
mail it carries (reports about our own messages) is what MTAs send in clear when a server
offers nothing else; aiosmtpd's `tls_context` option is where it would be added.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from mailer.config.settings import split_listen
from mailer.delivery.smtp_server import TrackedConnection, close_server
from mailer.errors import TryLater
from mailer.returns.verp import is_verp_for

log = logging.getLogger("mailer.bounces")
_aiosmtpd_log = logging.getLogger("mail.log")

MAX_BYTES = 10 * 1024 * 1024
# RFC 5321 §4.5.3.1.8: a server must take 100 recipients; a bounce has one, so more than
# that is not a bounce, and the list stays small.
MAX_RECIPIENTS = 100
# How long stopping waits for messages being handed over, so a bounce applied just before
# the stop is also answered (an unanswered one comes again and would count twice).
STOP_GRACE_SECONDS = 5.0

ACCEPTED = "250 2.0.0 OK"
RELAY_DENIED = "550 5.7.1 relaying denied"
TOO_MANY = "452 4.5.3 too many recipients"
TRY_LATER = "451 4.3.0 try again later"

Handle = Callable[[bytes, list[str]], Awaitable[None]]


def is_temporary(error: BaseException) -> bool:
    """Whether a handle's failure is worth a retry by the sending MTA: TryLater, or an
    OSError (ConnectionError, TimeoutError: a database or disk that is away for now).

    Anything else is a message we cannot read, and it would fail the same way next time.
    """
    return isinstance(error, TryLater | OSError)


class _ReturnsHandler:
    """aiosmtpd handler: recipients of the bounce address only; each message to `handle`."""

    def __init__(self, bounce_address: str, handle: Handle) -> None:
        self.bounce_address = bounce_address.strip().lower()
        self.handle = handle
        self.busy: set[asyncio.Future[None]] = set()

    def ours(self, address: str) -> bool:
        # Compared without case, as is_verp_for reads the VERP local part: MTAs fold it.
        return address.strip().lower() == self.bounce_address \
            or is_verp_for(address, self.bounce_address)

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if not self.ours(address):
            # Never an open relay: a message for anyone else is not ours to take.
            log.info("recipient refused: not the bounce address",
                     extra={"recipient": address[:200], "peer": str(session.peer)})
            return RELAY_DENIED
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return TOO_MANY
        envelope.rcpt_tos.append(address)
        return ACCEPTED

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        recipients = list(envelope.rcpt_tos)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.busy.add(done)
        try:
            await self.handle(raw, recipients)
        except Exception as exc:
            if is_temporary(exc):
                log.warning("returned message not applied now: the sender will retry",
                            extra={"recipients": recipients, "bytes": len(raw),
                                   "reason": f"{type(exc).__name__}: {exc}"})
                return TRY_LATER
            # Accepted all the same: refusing it would make the reporting MTA send a bounce
            # of the bounce to the null sender or a forged one (backscatter), and the same
            # bytes would fail the same way on every retry.
            log.error("returned message could not be applied; accepted and dropped",
                      exc_info=True, extra={"recipients": recipients, "bytes": len(raw)})
            return ACCEPTED
        finally:
            self.busy.discard(done)
            done.set_result(None)
        log.info("returned message received",
                 extra={"recipients": recipients, "bytes": len(raw),
                        "mail_from": envelope.mail_from or ""})
        return ACCEPTED


class BounceReceiver:
    """SMTP server in the running loop that takes returned mail for the bounce address.

    Usage: ``async with BounceReceiver("127.0.0.1:2526", bounce_address=..., handle=...)``;
    with port 0, `.port` is the port it got. RCPT is accepted only for the bounce address
    and its VERP forms (550 5.7.1 otherwise); MAIL FROM may be anything, the null sender of
    a DSN included; DATA past `max_bytes` gets 552. For each message, ``await handle(raw,
    recipients)``: when it raises TryLater or an OSError the answer is 451 (the MTA keeps
    the message), any other exception is logged and answered 250 (no backscatter).
    """

    def __init__(self, listen: str, *, bounce_address: str, handle: Handle,
                 max_bytes: int = MAX_BYTES) -> None:
        self.host, self.port = split_listen(listen)
        self._handler = _ReturnsHandler(bounce_address, handle)
        self._options: dict[str, Any] = {
            # Our own name in the greeting; also skips a slow socket.getfqdn() per connection.
            "hostname": bounce_address.rpartition("@")[2] or "mailer-bounces",
            "data_size_limit": max_bytes,
            "enable_SMTPUTF8": True,  # a DSN about an internationalised address may need it
        }
        self._server: asyncio.Server | None = None
        self._live: set[TrackedConnection] = set()

    async def __aenter__(self) -> BounceReceiver:
        """Bind and start serving. Raises OSError when the address cannot be bound."""
        if _aiosmtpd_log.level == logging.NOTSET:
            # aiosmtpd logs every command at INFO; keep its warnings, unless someone chose.
            _aiosmtpd_log.setLevel(logging.WARNING)
        loop = asyncio.get_running_loop()
        handler = self._handler
        self._server = await loop.create_server(
            lambda: TrackedConnection(handler, self._live, loop=loop, **self._options),
            self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("receiving returned mail by SMTP", extra={"host": self.host, "port": self.port})
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Stop listening, let messages being handed over finish (a few seconds at most),
        then close the connections left and wait until all are gone."""
        if self._server is None:
            return
        self._server.close()
        if self._handler.busy:
            await asyncio.wait(set(self._handler.busy), timeout=STOP_GRACE_SECONDS)
        await close_server(self._server, self._live)
        self._server = None
        log.info("stopped receiving returned mail by SMTP", extra={"port": self.port})
