"""The IMAP poller of returned mail: bounces and complaints that land in a mailbox, fetched.

For installs whose bounce address is a mailbox at a provider rather than an SMTP server of
their own. Every `every_seconds`, one connection: each message of the folder is handed over
as bytes, then moved to the processed folder (kept as evidence, never deleted); a message
whose handling failed stays where it is and is tried again on the next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import ipaddress
import logging
import re
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from mailer.errors import ConfigError

log = logging.getLogger("mailer.bounces")

TIMEOUT_SECONDS = 30.0  # per network operation; a poll never hangs the daemon's next one
# How long stopping waits for a poll under way to finish the message it is at.
STOP_GRACE_SECONDS = 10.0
_UIDS = re.compile(rb"UID (\d+)")

Handle = Callable[[bytes], Awaitable[None]]


@dataclass(frozen=True)
class MailboxUrl:
    """`imaps://user@host[:port]/FOLDER` (or `imap://` on loopback), read."""

    tls: bool
    user: str
    host: str
    port: int
    folder: str

    @classmethod
    def parse(cls, url: str) -> MailboxUrl:
        """Read a bounce_mailbox URL; the folder defaults to INBOX.

        Raises:
            ConfigError: another scheme, no user or host, plain IMAP to a host that is not
                loopback, or a folder name that is not plain ASCII.
        """
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            raise ConfigError(f"bad port in {url!r}", field="bounce_mailbox") from None
        if parts.scheme not in ("imaps", "imap") or not parts.hostname or not parts.username:
            raise ConfigError(f"expected imaps://user@host[:port]/FOLDER, got {url!r}",
                              field="bounce_mailbox")
        if parts.password is not None:
            raise ConfigError("secrets only from the environment: drop the password from "
                              "bounce_mailbox and set MAILER_BOUNCE_PASSWORD",
                              field="bounce_mailbox")
        tls = parts.scheme == "imaps"
        if not tls and not _loopback(parts.hostname):
            # The password and every bounce (subscribers' addresses) would cross the
            # network in clear.
            raise ConfigError(f"plain imap:// is for a server on this machine only; use "
                              f"imaps:// for {parts.hostname}", field="bounce_mailbox")
        folder = unquote(parts.path.lstrip("/")) or "INBOX"
        if not folder.isascii() or not folder.isprintable():
            # IMAP spells other names in modified UTF-7 (RFC 3501 §5.1.3), not done here.
            raise ConfigError(f"the folder name must be plain ASCII, got {folder!r}",
                              field="bounce_mailbox")
        return cls(tls=tls, user=unquote(parts.username), host=parts.hostname,
                   port=port or (993 if tls else 143), folder=folder)

    def __str__(self) -> str:
        return f"{'imaps' if self.tls else 'imap'}://{self.user}@{self.host}:{self.port}/" \
               f"{self.folder}"


def _loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def quoted(name: str) -> str:
    """A mailbox name as an IMAP quoted string (imaplib sends arguments as they are)."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _check(reply: tuple[str, Sequence[object]], doing: str) -> Sequence[object]:
    status, data = reply
    if status != "OK":
        raise imaplib.IMAP4.error(f"{doing}: {status} {data!r}"[:300])
    return data


def move_message(client: imaplib.IMAP4, uid: bytes, folder: str, *, can_move: bool,
                 uidplus: bool) -> None:
    """Move one message (by UID) of the selected folder to `folder`: UID MOVE (RFC 6851)
    when the server has it, else UID COPY, the \\Deleted flag and an expunge: UID EXPUNGE
    (RFC 4315) of this message alone when the server has UIDPLUS, else EXPUNGE.

    Raises:
        imaplib.IMAP4.error: the server refused a step; the message is still in its folder
            (at worst copied as well, or flagged \\Deleted and not expunged).
    """
    if can_move:
        _check(client.uid("MOVE", uid.decode(), quoted(folder)), "UID MOVE")
        return
    _check(client.uid("COPY", uid.decode(), quoted(folder)), "UID COPY")
    _check(client.uid("STORE", uid.decode(), "+FLAGS.SILENT", r"(\Deleted)"), "UID STORE")
    if uidplus:
        _check(client.uid("EXPUNGE", uid.decode()), "UID EXPUNGE")
    else:
        # Also expunges what another client flagged \Deleted here: what it asked for.
        _check(client.expunge(), "EXPUNGE")


class MailboxPoller:
    """Polls the bounce mailbox every `every_seconds` while inside ``async with``.

    Each message handled without an exception is moved to `processed_folder` (created when
    missing); one whose handle raised stays and comes again next poll. A poll that fails
    (server down, wrong password) is logged when the state changes and tried again next
    time; it never ends the loop.

    Raises (constructor):
        ConfigError: the URL is unusable (see MailboxUrl.parse).
    """

    def __init__(self, url: str, *, password: str, handle: Handle, every_seconds: float = 60,
                 processed_folder: str = "Processed") -> None:
        self.mailbox = MailboxUrl.parse(url)
        if not processed_folder.isascii() or not processed_folder.isprintable() \
                or processed_folder.upper() == self.mailbox.folder.upper():
            raise ConfigError("the processed folder must be a plain ASCII name other than "
                              "the polled folder", field="processed_folder")
        self._password = password
        self.handle = handle
        self.every_seconds = every_seconds
        self.processed_folder = processed_folder
        self._trouble: str | None = None  # why the last poll failed; None while it works
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> MailboxPoller:
        """Start polling (the first poll at once)."""
        self._stop.clear()
        self._task = asyncio.create_task(self._run(), name="bounce-mailbox-poller")
        log.info("polling the bounce mailbox",
                 extra={"mailbox": str(self.mailbox), "every_seconds": self.every_seconds})
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Stop: a poll under way finishes its message, or is cancelled after a grace."""
        if self._task is None:
            return
        self._stop.set()
        await asyncio.wait({self._task}, timeout=STOP_GRACE_SECONDS)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        log.info("stopped polling the bounce mailbox", extra={"mailbox": str(self.mailbox)})

    async def _run(self) -> None:
        while not self._stop.is_set():
            await self.poll_once()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.every_seconds)

    async def poll_once(self) -> int:
        """One poll: how many messages were handed over and moved. Never raises for the
        server's sake (down, refusing the login): that is logged and the answer is 0."""
        async with self._lock:
            handled = 0
            try:
                client = await asyncio.to_thread(self._connect)
            except (imaplib.IMAP4.error, OSError) as exc:
                self._failed(exc)
                return 0
            try:
                uids, can_move, uidplus = await asyncio.to_thread(self._open_folder, client)
                self._recovered()
                for uid in uids:
                    if self._stop.is_set():
                        break
                    handled += await self._take(client, uid, can_move=can_move,
                                                uidplus=uidplus)
            except (imaplib.IMAP4.error, OSError) as exc:
                self._failed(exc)
                await asyncio.to_thread(_logout, client)
            except asyncio.CancelledError:
                # A worker thread may still be reading this connection: it is not ours to
                # log out now; it closes when the thread is done and drops it.
                raise
            else:
                await asyncio.to_thread(_logout, client)
            return handled

    async def _take(self, client: imaplib.IMAP4, uid: bytes, *, can_move: bool,
                    uidplus: bool) -> int:
        raw = await asyncio.to_thread(_fetch, client, uid)
        if raw is None:  # gone meanwhile (another client moved or expunged it)
            return 0
        try:
            await self.handle(raw)
        except Exception:
            log.warning("returned message from the mailbox not applied; left for the next "
                        "poll", exc_info=True,
                        extra={"mailbox": str(self.mailbox), "uid": uid.decode(),
                               "bytes": len(raw)})
            return 0
        await asyncio.to_thread(move_message, client, uid, self.processed_folder,
                                can_move=can_move, uidplus=uidplus)
        return 1

    def _connect(self) -> imaplib.IMAP4:
        box = self.mailbox
        client: imaplib.IMAP4
        if box.tls:
            # The system's trust store, with host name checking (SSL_CERT_FILE is honoured).
            client = imaplib.IMAP4_SSL(box.host, box.port, ssl_context=ssl.create_default_context(),
                                       timeout=TIMEOUT_SECONDS)
        else:
            client = imaplib.IMAP4(box.host, box.port, timeout=TIMEOUT_SECONDS)
        try:
            client.login(box.user, self._password)
        except BaseException:
            _logout(client)
            raise
        return client

    def _open_folder(self, client: imaplib.IMAP4) -> tuple[list[bytes], bool, bool]:
        # After the login: servers may announce more capabilities to a logged-in user.
        words = b" ".join(p for p in _check(client.capability(), "CAPABILITY")
                          if isinstance(p, bytes)).upper().split()
        with contextlib.suppress(imaplib.IMAP4.error):
            client.create(quoted(self.processed_folder))  # NO when it exists: fine
        _check(client.select(quoted(self.mailbox.folder)), f"SELECT {self.mailbox.folder}")
        # UNDELETED: a message copied and flagged by an earlier poll whose expunge failed
        # was already handled.
        found = _check(client.uid("SEARCH", "UNDELETED"), "UID SEARCH")
        uids = found[0].split() if found and isinstance(found[0], bytes) else []
        return uids, b"MOVE" in words, b"UIDPLUS" in words

    def _failed(self, exc: BaseException) -> None:
        reason = f"{type(exc).__name__}: {exc}"[:300]
        if reason != self._trouble:  # once per change, not once a minute while it lasts
            log.warning("bounce mailbox poll failed; trying again next time",
                        extra={"mailbox": str(self.mailbox), "reason": reason})
        self._trouble = reason

    def _recovered(self) -> None:
        if self._trouble is not None:
            log.info("bounce mailbox reachable again", extra={"mailbox": str(self.mailbox)})
        self._trouble = None


def _fetch(client: imaplib.IMAP4, uid: bytes) -> bytes | None:
    # BODY.PEEK: a message whose handling fails is left exactly as it was, unread included.
    data = _check(client.uid("FETCH", uid.decode(), "(BODY.PEEK[])"), "UID FETCH")
    for part in data:
        if isinstance(part, tuple) and len(part) == 2 and isinstance(part[1], bytes):
            match = _UIDS.search(part[0])
            if match is None or match[1] == uid:
                return part[1]
    return None


def _logout(client: imaplib.IMAP4) -> None:
    try:
        client.logout()
    except (imaplib.IMAP4.error, OSError):
        with contextlib.suppress(OSError):
            client.shutdown()
