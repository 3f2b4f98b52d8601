"""The ways back that `mailer run` hosts, all feeding mailer.bounces' one use case: the SMTP
receiver on `bounce_listen`, the poller of `bounce_mailbox`, and the handler the webhook
routes hand their provider events to (`mailer bounces process` is the fourth, in the CLI).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType

from mailer.bounces.apply import apply_event, apply_returned
from mailer.config import Config
from mailer.errors import TryLater
from mailer.returns.events import ProviderEvent
from mailer.runners.bounce_receiver import BounceReceiver
from mailer.runners.mailbox_poller import MailboxPoller
from mailer.states import utcnow
from mailer.store import Store
from mailer.store.db import unavailable

log = logging.getLogger("mailer.bounces")


class ReturnPaths:
    """`async with ReturnPaths(config, store) as paths:` runs the receiver and the poller
    that the settings ask for; `paths.provider_event` is the webhooks' handler.

    The settings are read through `config` at each message, so a reload's soft-bounce
    limits apply at once; where to listen and what to poll are read at start.
    """

    def __init__(self, config: Callable[[], Config], store: Store) -> None:
        self._config = config
        self._store = store
        self._stack = contextlib.AsyncExitStack()
        self.receiver: BounceReceiver | None = None
        self.poller: MailboxPoller | None = None

    async def __aenter__(self) -> ReturnPaths:
        settings = self._config().settings
        if settings.bounce_listen and settings.bounce_address:
            self.receiver = await self._stack.enter_async_context(BounceReceiver(
                settings.bounce_listen, bounce_address=settings.bounce_address,
                handle=self.returned_by_smtp))
        elif settings.bounce_listen:
            log.warning("bounce_listen is set without bounce_address: not listening "
                        "(nothing could tell which delivery a bounce is for)")
        if settings.bounce_mailbox:
            password = settings.bounce_password.get_secret_value() \
                if settings.bounce_password else ""
            self.poller = await self._stack.enter_async_context(MailboxPoller(
                settings.bounce_mailbox, password=password, handle=self.returned_by_mailbox,
                every_seconds=settings.bounce_poll_seconds))
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self._stack.aclose()

    async def returned_by_smtp(self, raw: bytes, recipients: list[str]) -> None:
        """A message the receiver took; TryLater (451) while the database is away."""
        await self._apply(raw, "smtp", recipients)

    async def returned_by_mailbox(self, raw: bytes) -> None:
        """A message from the bounce mailbox; an exception leaves it there for next time."""
        await self._apply(raw, "imap", ())

    async def provider_event(self, event: ProviderEvent, source: str, raw: bytes) -> None:
        """A verified webhook event (SES, Postmark, Mailgun)."""
        with _later_while_away():  # a webhook not answered 2xx is sent again
            await apply_event(self._store, event, source=source,
                              settings=self._config().settings, raw=raw, now=utcnow())

    async def _apply(self, raw: bytes, source: str, recipients: Sequence[str]) -> None:
        with _later_while_away():
            await apply_returned(self._store, raw, source=source,
                                 settings=self._config().settings,
                                 envelope_recipients=list(recipients), now=utcnow())


@contextlib.contextmanager
def _later_while_away() -> Iterator[None]:
    """A database that cannot be reached now becomes TryLater: the sender keeps what it
    brought (451 to an MTA, 503 to a webhook) and comes again."""
    try:
        yield
    except Exception as exc:
        if unavailable(exc):
            raise TryLater(str(exc)) from exc
        raise
