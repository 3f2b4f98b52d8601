"""One message outside any send (a test copy, a confirmation email), and the relay to use.

It lives below the send pipeline so the web process, which sends confirmation emails,
never loads the dispatch code.
"""

from __future__ import annotations

import contextlib

from mailer.config import Config, Settings
from mailer.delivery.targets import SmtpTarget, SmtpTimeouts, parse_relays
from mailer.delivery.transport import SmtpTransport
from mailer.errors import RelayUnavailable


def timeouts_of(settings: Settings) -> SmtpTimeouts:
    """RFC 5321's waits, scaled by smtp_timeout_scale."""
    return SmtpTimeouts().scaled(settings.smtp_timeout_scale)


async def enter_relays(settings: Settings, stack: contextlib.AsyncExitStack
                       ) -> list[SmtpTarget]:
    """The relays of settings.smtp_url in order of preference; for `capture`, the built-in
    capture server, started on `stack` (it stops when the stack closes)."""
    timeouts = timeouts_of(settings)
    if settings.smtp_url == "capture":
        from mailer.delivery.capture import CaptureServer  # aiosmtpd: only for capture

        capture = await stack.enter_async_context(CaptureServer(settings.var_dir / "outbox"))
        return [SmtpTarget(host=capture.host, port=capture.port, start_tls=False,
                           timeouts=timeouts)]
    password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
    return parse_relays(settings.smtp_urls, password=password, timeouts=timeouts)


async def send_one(config: Config, sender: str, recipient: str, data: bytes
                   ) -> tuple[int, str]:
    """Send a single message outside any send through the first relay that answers; the
    server's (code, reply).

    Raises:
        DeliveryError: the server refused it, or no relay could be reached (the last
            relay's RelayUnavailable).
    """
    async with contextlib.AsyncExitStack() as stack:
        relays = await enter_relays(config.settings, stack)
        for i, target in enumerate(relays):
            transport = SmtpTransport(target)
            try:
                return await transport.send(sender, recipient, data)
            except RelayUnavailable:
                if i == len(relays) - 1:
                    raise
            finally:
                await transport.aclose()
        raise AssertionError("unreachable: enter_relays returns at least one relay")
