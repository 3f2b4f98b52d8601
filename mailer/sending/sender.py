"""A sending process: worker registration and heartbeat, the SMTP target, and one send at a time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING

from mailer.config import Config, Newsletter
from mailer.delivery.dispatch import Dispatcher
from mailer.delivery.outcomes import DispatchSettings, Tally
from mailer.delivery.signing import signer_from_settings
from mailer.delivery.transport import SmtpTarget, SmtpTransport, parse_smtp_url
from mailer.keys import token_key
from mailer.sending.prepare import finish_if_done, letter_for, new_worker_id, recover_dead_workers
from mailer.states import SendStatus
from mailer.store import Outcome, Store
from mailer.store.models import Send

if TYPE_CHECKING:
    from mailer.delivery.capture import CaptureServer

log = logging.getLogger("mailer.sender")

HEARTBEAT_SECONDS = 10.0


def dispatch_settings(config: Config) -> DispatchSettings:
    s = config.settings
    return DispatchSettings(
        concurrency=s.concurrency,
        max_attempts=s.max_attempts,
        retry_base_seconds=s.retry_base_seconds,
        hard_bounce_limit=s.hard_bounce_limit,
        max_error_rate=s.max_error_rate,
        error_window=s.error_window,
        rate_per_second=s.rate_per_second,
        max_per_hour=s.max_per_hour,
    )


class Sender:
    """`async with Sender(config, store) as sender: await sender.deliver(send, newsletter)`.

    Registers this process as a worker (so a crash is noticed and its claims released),
    keeps a heartbeat, and starts the built-in capture server when smtp_url is `capture`.
    """

    def __init__(self, config: Config, store: Store) -> None:
        self.config = config
        self.store = store
        self.worker_id = new_worker_id()
        self.secret_key = token_key(config.settings)
        self.target: SmtpTarget | None = None
        self.capture: CaptureServer | None = None  # smtp_url: capture
        self._stack = contextlib.AsyncExitStack()
        self._heartbeat: asyncio.Task[None] | None = None
        self._current: Dispatcher | None = None
        self._transports: weakref.WeakSet[SmtpTransport] = weakref.WeakSet()
        self._stopping = False
        self.unknown_released = 0

    async def __aenter__(self) -> Sender:
        s = self.config.settings
        if s.smtp_url == "capture":
            from mailer.delivery.capture import CaptureServer  # aiosmtpd: only for capture

            self.capture = await self._stack.enter_async_context(
                CaptureServer(s.var_dir / "outbox"))
            self.target = SmtpTarget(host=self.capture.host, port=self.capture.port,
                                     start_tls=False)
        else:
            password = s.smtp_password.get_secret_value() if s.smtp_password else None
            self.target = parse_smtp_url(s.smtp_url, password=password)
        self.unknown_released = await recover_dead_workers(self.store)
        await self.store.register_worker(self.worker_id, host=socket.gethostname(),
                                         pid=os.getpid())
        self._heartbeat = asyncio.create_task(self._beat(), name="mailer-heartbeat")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        # Claims go back to the queue. A row still SENDING here had its transaction cut
        # (a cancelled send, a broken database): it becomes UNKNOWN now, because once this
        # worker's row is gone nothing else would ever release it.
        cut = await self.store.release_dead_workers([self.worker_id])
        if cut:
            log.warning("%d deliveries were cut mid-transaction: recorded as unknown", cut)
        await self._stack.aclose()

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            try:
                await self.store.heartbeat(self.worker_id)
            except Exception:  # a database hiccup must not kill the sender; the next beat retries
                log.exception("heartbeat failed")

    def transport(self) -> SmtpTransport:
        assert self.target is not None, "use Sender as an async context manager"
        transport = SmtpTransport(self.target)
        self._transports.add(transport)
        return transport

    def stop(self) -> None:
        """Stop taking new messages, in this send and any later one (a stop can come just
        before a deliver() begins); what is in flight finishes and is recorded."""
        self._stopping = True
        if self._current is not None:
            self._current.stop()

    def abort(self) -> None:
        """Cut every open SMTP connection, for a stop whose grace period ran out.

        Each cut transaction still ends with an outcome that is recorded: unknown when the
        server already had the whole message, a retry for later when it had not.
        """
        self.stop()
        for transport in list(self._transports):
            transport.abort()

    async def deliver(self, send: Send, newsletter: Newsletter,
                      on_outcome: Callable[[Outcome], None] | None = None) -> Tally:
        """Send every open delivery of `send` from this process; marks the send finished."""
        dispatcher = Dispatcher(
            self.store, send_id=send.id,
            letter=letter_for(send, newsletter, self.config.settings.base_url),
            secret_key=self.secret_key, base_url=self.config.settings.base_url,
            worker_id=self.worker_id, transport_factory=self.transport,
            settings=dispatch_settings(self.config), on_outcome=on_outcome,
            signer=signer_from_settings(self.config.settings),  # the key is read once per send
        )
        self._current = dispatcher
        if self._stopping:
            dispatcher.stop()
        try:
            if send.status == SendStatus.PAUSED:
                await self.store.set_send_status(send.id, SendStatus.SENDING)
            tally = await dispatcher.run()
        finally:
            self._current = None
        if dispatcher.pause_reason is not None:
            await self.store.set_send_status(send.id, SendStatus.PAUSED,
                                             dispatcher.pause_reason)
        elif not dispatcher.stopping:
            await finish_if_done(self.store, send.id)
        return tally


async def send_one(config: Config, sender: str, recipient: str, data: bytes) -> tuple[int, str]:
    """Send a single message outside any send (a test copy, a confirmation email).

    Raises:
        DeliveryError: the server refused it or could not be reached.
    """
    s = config.settings
    async with contextlib.AsyncExitStack() as stack:
        if s.smtp_url == "capture":
            from mailer.delivery.capture import CaptureServer  # aiosmtpd: only for capture

            capture = await stack.enter_async_context(CaptureServer(s.var_dir / "outbox"))
            target = SmtpTarget(host=capture.host, port=capture.port, start_tls=False)
        else:
            password = s.smtp_password.get_secret_value() if s.smtp_password else None
            target = parse_smtp_url(s.smtp_url, password=password)
        transport = SmtpTransport(target)
        try:
            return await transport.send(sender, recipient, data)
        finally:
            await transport.aclose()
