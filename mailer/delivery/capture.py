"""Built-in capture SMTP server (smtp_url: capture): every accepted message lands in a Maildir."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from mailer.delivery.smtp_server import TrackedConnection, close_server
from mailer.keys import make_private_dir

# Generous on purpose: above what common relays take (Gmail: 25 MB), so capture never rejects
# a message a real relay would accept, yet bounded because aiosmtpd holds DATA in memory.
DATA_SIZE_LIMIT = 32 * 1024 * 1024
ACCEPTED = "250 Message accepted for delivery"
_SMTP_OPTIONS: dict[str, Any] = {
    "hostname": "mailer-capture",  # also skips a slow socket.getfqdn() per connection
    "data_size_limit": DATA_SIZE_LIMIT,
    "enable_SMTPUTF8": True,  # accept internationalised addresses, as a relay would
}

_aiosmtpd_log = logging.getLogger("mail.log")


def _envelope_headers(envelope: Envelope) -> bytes:
    # What an MDA prepends, so the author sees the envelope (e.g. a Bcc) in the stored file.
    lines = [f"Return-Path: <{envelope.mail_from or ''}>"]
    lines += [f"Delivered-To: {rcpt}" for rcpt in envelope.rcpt_tos]
    # CR/LF dropped so an envelope address cannot inject headers; surrogateescape restores
    # the wire bytes of SMTPUTF8 arguments, which aiosmtpd decoded that way.
    text = "".join(line.replace("\r", "").replace("\n", "") + "\r\n" for line in lines)
    return text.encode("utf-8", "surrogateescape")


_MESSAGES = itertools.count()


class _Maildir:
    """A Maildir that only receives: each message written into tmp/ with mode 0600, fsynced,
    then linked into new/ (so a reader never sees half a message), as an MDA delivers.

    By hand rather than with mailbox.Maildir, which creates message files 0666 minus the
    umask (0644 for most): every captured message names a subscriber and carries their
    personal links. The folders are made 0700, as mailbox.Maildir does.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        for folder in (path, path / "tmp", path / "new", path / "cur"):
            make_private_dir(folder)
        host = socket.gethostname().replace("/", "_").replace(":", "_")
        self._suffix = f"P{os.getpid()}.{host}"

    def add(self, data: bytes) -> Path:
        # The classic unique name: time, a counter shared by every box of the process, the
        # pid and the host. Nanoseconds first (19 digits until 2286): names sort by arrival.
        name = f"{time.time_ns()}.Q{next(_MESSAGES)}{self._suffix}"
        tmp, new = self.path / "tmp" / name, self.path / "new" / name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            with open(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.link(tmp, new)  # fails rather than overwrite, unlike rename
        finally:
            os.unlink(tmp)
        return new


class _MaildirHandler:
    """aiosmtpd handler that stores each message in a Maildir and counts them."""

    def __init__(self, maildir: _Maildir) -> None:
        self.maildir = maildir
        self.count = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        # Synchronous on purpose: a capture box takes test traffic, and add() is already
        # atomic (written in tmp/, fsynced, linked into new/).
        self.maildir.add(_envelope_headers(envelope) + data)
        self.count += 1
        return ACCEPTED


class CaptureServer:
    """SMTP server in the running event loop that writes every message it accepts to a Maildir.

    Usage: ``async with CaptureServer(var_dir / "outbox") as server: ...`` then send to
    ``server.host:server.port``. The stored files are the bytes received, after a
    ``Return-Path`` and one ``Delivered-To`` header per envelope recipient.
    """

    def __init__(self, outbox_dir: Path, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.outbox_dir, self.host = Path(outbox_dir), host
        self.port = port  # replaced by the bound port once started (port 0 = ephemeral)
        self._handler: _MaildirHandler | None = None
        self._server: asyncio.Server | None = None
        self._live: set[TrackedConnection] = set()

    @property
    def count(self) -> int:
        """Messages stored since this server started."""
        return self._handler.count if self._handler else 0

    async def __aenter__(self) -> CaptureServer:
        """Bind and start serving. Raises OSError when the address cannot be bound."""
        if _aiosmtpd_log.level == logging.NOTSET:
            # aiosmtpd logs every command at INFO; keep its warnings, unless someone chose a level.
            _aiosmtpd_log.setLevel(logging.WARNING)
        loop = asyncio.get_running_loop()
        handler = self._handler = _MaildirHandler(_Maildir(self.outbox_dir))
        self._server = await loop.create_server(
            lambda: TrackedConnection(handler, self._live, loop=loop, **_SMTP_OPTIONS),
            self.host,
            self.port,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Stop listening, close open client connections and wait until all are gone."""
        if self._server is None:
            return
        await close_server(self._server, self._live)
        self._server = None
