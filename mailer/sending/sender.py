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

from mailer.config import Config, Newsletter
from mailer.content.rendered import RenderedIssue
from mailer.delivery.dispatch import Dispatcher
from mailer.delivery.message import Letter, letter_of
from mailer.delivery.outcomes import DispatchSettings, Tally
from mailer.delivery.relays import GIVE_UP_SECONDS, RelayPool
from mailer.delivery.signing import signer_from_settings
from mailer.delivery.single import enter_relays
from mailer.delivery.targets import SmtpTarget
from mailer.delivery.transport import SmtpTransport
from mailer.keys import token_key
from mailer.rows import Outcome, SendRow
from mailer.sending.recovery import new_worker_id, recover_dead_workers
from mailer.states import SendStatus
from mailer.store import Store

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
    With `give_up_on_relays` (send-now), a send stops once no relay has answered for about
    30 s (see RelayPool); without it (the daemon, workers) it waits for a relay.
    """

    def __init__(self, config: Config, store: Store, *, give_up_on_relays: bool = False
                 ) -> None:
        self.config = config
        self.store = store
        self.worker_id = new_worker_id()
        self.secret_key = token_key(config.settings)
        # Refused here, before a capture server starts or a message goes: an incomplete DKIM
        # setup or an unsafe key file (deliver() makes its own signer per send).
        signer_from_settings(config.settings, file=str(config.path))
        self.give_up_on_relays = give_up_on_relays
        self.relays: RelayPool | None = None
        self._stack = contextlib.AsyncExitStack()
        self._heartbeat: asyncio.Task[None] | None = None
        self._current: Dispatcher | None = None
        self._transports: weakref.WeakSet[SmtpTransport] = weakref.WeakSet()
        self._stopping = False
        self.unknown_released = 0
        self.relay_failure: str | None = None  # why the last deliver() found no relay
        # One send at a time, so rate_per_second holds for all of them together; an issue
        # goes before automatic emails (see deliver's `background`).
        self._turn = asyncio.Lock()
        self._issues_waiting = 0
        self._background = False  # the send delivering now is an automatic email's

    async def __aenter__(self) -> Sender:
        # smtp_url `capture`: the built-in capture server runs as long as this sender.
        targets = await enter_relays(self.config.settings, self._stack)
        scale = self.config.settings.smtp_timeout_scale
        self.relays = RelayPool(targets, scale=scale, give_up_after=(
            GIVE_UP_SECONDS * scale if self.give_up_on_relays else None))
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
            log.warning("deliveries cut mid-transaction: recorded as unknown",
                        extra={"unknown": cut, "worker": self.worker_id})
        await self._stack.aclose()

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            try:
                await self.store.heartbeat(self.worker_id)
            except Exception:  # a database hiccup must not kill the sender; the next beat retries
                log.exception("heartbeat failed")

    def transport(self, target: SmtpTarget) -> SmtpTransport:
        """A connection to `target`, cut by abort() with the others."""
        transport = SmtpTransport(target)
        self._transports.add(transport)
        return transport

    @property
    def stopping(self) -> bool:
        """stop() was called: no new send starts here."""
        return self._stopping

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

    async def deliver(self, send: SendRow, newsletter: Newsletter,
                      on_outcome: Callable[[Outcome], None] | None = None, *,
                      background: bool = False) -> Tally:
        """Send every open delivery of `send` from this process; marks the send finished.

        Sends go one at a time. A `background` one (an automatic email) gives way to an
        issue: it does not start while an issue waits, and one under way stops taking new
        messages when an issue comes (what it leaves stays queued for its next run).
        """
        if background:
            if self._issues_waiting:
                return Tally()
            async with self._turn:
                if self._issues_waiting:
                    return Tally()
                self._background = True
                try:
                    return await self._deliver(send, newsletter, on_outcome)
                finally:
                    self._background = False
        self._issues_waiting += 1
        if self._background and self._current is not None:
            self._current.stop()
        try:
            await self._turn.acquire()
        finally:
            self._issues_waiting -= 1
        try:
            return await self._deliver(send, newsletter, on_outcome)
        finally:
            self._turn.release()

    async def _deliver(self, send: SendRow, newsletter: Newsletter,
                       on_outcome: Callable[[Outcome], None] | None) -> Tally:
        assert self.relays is not None, "use Sender as an async context manager"
        dispatcher = Dispatcher(
            self.store, send_id=send.id,
            letter=letter_of_send(send, newsletter, self.config.settings.base_url),
            secret_key=self.secret_key, base_url=self.config.settings.base_url,
            worker_id=self.worker_id, transport_factory=self.transport, relays=self.relays,
            settings=dispatch_settings(self.config), on_outcome=on_outcome,
            # The key is read once per send, from the config of now (a reload may change it).
            signer=signer_from_settings(self.config.settings, file=str(self.config.path)),
            bounce_address=self.config.settings.bounce_address,
        )
        self._current = dispatcher
        self.relay_failure = None
        if self._stopping or (self._background and self._issues_waiting):
            dispatcher.stop()
        try:
            if send.status == SendStatus.PAUSED:
                await self.store.set_send_status(send.id, SendStatus.SENDING)
            tally = await dispatcher.run()
        finally:
            self._current = None
        # No relay answered (send-now only): the dispatcher stopped, so the send stays open
        # below, to go on when a relay does.
        self.relay_failure = dispatcher.relay_failure
        if dispatcher.stopping and not self._stopping:
            # Stopped for an issue (not for the process's end, which releases everything):
            # what it claimed and did not start goes back, or no later run could take it.
            await self.store.release_send_claims(send.id, self.worker_id)
        if dispatcher.pause_reason is not None:
            await self.store.set_send_status(send.id, SendStatus.PAUSED,
                                             dispatcher.pause_reason)
        elif not dispatcher.stopping:
            await finish_if_done(self.store, send.id)
        return tally



def letter_of_send(send: SendRow, newsletter: Newsletter, base_url: str) -> Letter:
    """The per-issue message parts, taken from the send row so a resume sends the same bytes."""
    rendered = RenderedIssue(subject=send.subject, preheader=send.preheader,
                                    html=send.html, text=send.text, web_url=send.web_url)
    return letter_of(newsletter, rendered, base_url=base_url)


async def finish_if_done(store: Store, send_id: int) -> bool:
    """Mark the send finished when no delivery is open any more; True if it is."""
    if await store.open_deliveries(send_id) == 0:
        await store.set_send_status(send_id, SendStatus.FINISHED)
        return True
    return False
