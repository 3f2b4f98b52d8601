"""The relays of one sending process: which one to use now, and when to try a down one again.

A failure to connect, greet, start TLS or log in is the relay's (RelayUnavailable), never a
recipient's: the connection that met it asks here for the next relay in order of preference
and tries the same recipient there, charging nobody an attempt. A relay that failed is
tried again after a backoff (2 s, doubling, at most 30 s), by one connection at a time, so
traffic comes back to the first relay once it answers again. With every relay down, a
connection waits here; `mailer send-now` gives up 30 s after the last relay went down,
having tried each at 0, 2, 6 and 14 s (the daemon never does: it waits for the relay).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mailer.delivery.targets import SmtpTarget
from mailer.rows import RelayHealth

log = logging.getLogger("mailer.relays")

RETRY_FIRST_SECONDS = 2.0
RETRY_MAX_SECONDS = 30.0
GIVE_UP_SECONDS = 30.0


@dataclass
class Relay:
    """One relay and what this process last learnt of it."""

    target: SmtpTarget
    up: bool | None = None  # None: not tried yet
    reason: str = ""
    failures: int = 0  # tries in a row that failed
    retry_at: float = 0.0  # monotonic: when a down relay may be tried again
    down_since: float = 0.0
    probing: bool = False  # one connection is trying it again now

    @property
    def name(self) -> str:
        return self.target.name


def retry_after(failures: int, *, scale: float = 1.0) -> float:
    """Seconds before trying a relay again after `failures` failed tries in a row."""
    return min(RETRY_MAX_SECONDS, RETRY_FIRST_SECONDS * 2.0 ** max(0, failures - 1)) * scale


class RelayPool:
    """The relays in order of preference, shared by all connections of a process.

    `give_up_after`: seconds with every relay down after which lease() returns None and
    `gave_up` says why (None: wait for a relay for ever).
    """

    def __init__(self, targets: Sequence[SmtpTarget], *, scale: float = 1.0,
                 give_up_after: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not targets:
            raise ValueError("at least one relay")
        self.relays = [Relay(target) for target in targets]
        self.scale = scale
        self.give_up_after = give_up_after
        self.gave_up: str | None = None
        self._clock = clock
        self._changed = asyncio.Event()

    def health(self) -> list[RelayHealth]:
        """Each relay as this process last found it, in order of preference."""
        return [RelayHealth(r.name, r.up, r.reason) for r in self.relays]

    def pick(self, now: float) -> Relay | None:
        """The relay to use now, or None while every relay is down and none is due a try.

        The first relay that is up (or not tried yet) in order of preference; a down one
        before it whose retry time has come is tried first, by this caller alone.
        """
        for relay in self.relays:
            if relay.up is not False:
                return relay
            if not relay.probing and relay.retry_at <= now:
                relay.probing = True
                return relay
        return None

    def _next_wait(self, now: float) -> float | None:
        """Seconds until a down relay may be tried; None to give up (see give_up_after)."""
        due = [r.retry_at for r in self.relays if not r.probing]
        if len(due) < len(self.relays):  # a try is under way: its result decides
            return RETRY_FIRST_SECONDS * self.scale
        next_try = min(due)
        if self.give_up_after is not None:
            # Every relay has been down since the last of them went down.
            deadline = max(r.down_since for r in self.relays) + self.give_up_after
            if now >= deadline:
                return None
            next_try = min(next_try, deadline)
        return max(0.0, next_try - now)

    @property
    def any_up(self) -> bool:
        """Whether lease() has a relay at once (one is up, or not tried yet)."""
        return any(relay.up is not False for relay in self.relays)

    async def lease(self, stopping: asyncio.Event) -> Relay | None:
        """The relay to send the next message through; waits while all are down.

        None when `stopping` is set or this pool gave up (then `gave_up` says why).
        """
        while not stopping.is_set() and self.gave_up is None:
            now = self._clock()
            relay = self.pick(now)
            if relay is not None:
                return relay
            wait = self._next_wait(now)
            if wait is None:
                self.gave_up = "; ".join(f"{r.name}: {r.reason}" for r in self.relays)
                self._notify()
                break
            changed = self._changed
            waiters = [asyncio.ensure_future(stopping.wait()),
                       asyncio.ensure_future(changed.wait())]
            try:
                await asyncio.wait(waiters, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
                await asyncio.gather(*waiters, return_exceptions=True)
        return None

    def failed(self, relay: Relay, reason: str) -> None:
        """A try of `relay` failed for the relay's own reason."""
        now = self._clock()
        if relay.up is False and not relay.probing:
            return  # an attempt that overlapped the one that found it down
        relay.probing = False
        relay.failures += 1
        relay.retry_at = now + retry_after(relay.failures, scale=self.scale)
        relay.reason = reason
        if relay.up is not False:
            relay.up = False
            relay.down_since = now
            log.warning("relay down", extra={"relay": relay.name, "reason": reason,
                                             "retry_in_seconds": round(relay.retry_at - now, 1)})
        self._notify()

    def worked(self, relay: Relay) -> None:
        """`relay` answered a transaction (whatever it said about the recipient)."""
        relay.probing = False
        relay.failures = 0
        if relay.up is not True:
            if relay.up is False:
                log.info("relay back", extra={
                    "relay": relay.name,
                    "down_seconds": round(self._clock() - relay.down_since, 1)})
            relay.up, relay.reason = True, ""
            self._notify()

    def abandon(self, relay: Relay) -> None:
        """A try of `relay` ended without telling anything (cancelled): let another try."""
        if relay.probing:
            relay.probing = False
            self._notify()

    def restart(self) -> None:
        """Forget a give-up (a new send begins); what is known of each relay stays."""
        self.gave_up = None

    def _notify(self) -> None:
        # Wakes every waiting lease(): a relay came back, went down or a try ended.
        self._changed.set()
        self._changed = asyncio.Event()

