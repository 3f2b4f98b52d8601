"""One message outside any send (a test copy, a confirmation email), and the relay to use.

It lives below the send pipeline so the web process, which sends confirmation emails,
never loads the dispatch code.
"""

from __future__ import annotations

import contextlib

from mailer.config import Config, Settings
from mailer.delivery.transport import SmtpTarget, SmtpTransport, parse_smtp_url


async def enter_smtp_target(settings: Settings, stack: contextlib.AsyncExitStack) -> SmtpTarget:
    """The relay of settings.smtp_url; for `capture`, the built-in capture server, started
    on `stack` (it stops when the stack closes)."""
    if settings.smtp_url == "capture":
        from mailer.delivery.capture import CaptureServer  # aiosmtpd: only for capture

        capture = await stack.enter_async_context(CaptureServer(settings.var_dir / "outbox"))
        return SmtpTarget(host=capture.host, port=capture.port, start_tls=False)
    password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
    return parse_smtp_url(settings.smtp_url, password=password)


async def send_one(config: Config, sender: str, recipient: str, data: bytes
                   ) -> tuple[int, str]:
    """Send a single message outside any send; the server's (code, reply).

    Raises:
        DeliveryError: the server refused it or could not be reached.
    """
    async with contextlib.AsyncExitStack() as stack:
        transport = SmtpTransport(await enter_smtp_target(config.settings, stack))
        try:
            return await transport.send(sender, recipient, data)
        finally:
            await transport.aclose()
