"""Real aiosmtpd test server that records what it receives and injects SMTP faults per test."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from types import TracebackType
from typing import Any, AnyStr, NoReturn, cast

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

# Which DATA transactions a fault applies to: True = all, False = none, or a collection of
# recipient addresses (any envelope recipient matches, every time) and 1-based DATA ordinals
# (the n-th DATA command this server received, so it fires once).
Selector = bool | Collection[str | int]

ACCEPTED = "250 2.0.0 OK: queued"


@dataclass(frozen=True)
class Received:
    """One message the server accepted: the envelope and the DATA bytes (CRLF, un-dot-stuffed)."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    def parsed(self) -> EmailMessage:
        """The DATA bytes parsed with the modern email policy."""
        return message_from_bytes(self.data, policy=policy.default)


def _selected(selector: Selector, rcpt_tos: Sequence[str], ordinal: int) -> bool:
    if isinstance(selector, bool):
        return selector
    return ordinal in selector or any(rcpt in selector for rcpt in rcpt_tos)


async def _hang() -> NoReturn:
    # After closing the transport, wait for connection_lost() to cancel the session task: this
    # leaves without a reply and without aiosmtpd writing to a closed transport.
    await asyncio.get_running_loop().create_future()
    raise AssertionError("unreachable")


class _FaultySMTP(SMTP):
    """aiosmtpd's SMTP with the connection-level faults: a greeting reply and drops in DATA."""

    def __init__(self, recorder: RecordingServer, **options: Any) -> None:
        super().__init__(recorder, **options)
        self.recorder = recorder
        self.data_ordinal = 0
        self.lost: asyncio.Future[None] = self.loop.create_future()
        self._greeting: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._greeting = self.recorder._connection_made(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self.recorder._live.discard(self)
        super().connection_lost(error)
        if not self.lost.done():
            self.lost.set_result(None)

    async def push(self, status: AnyStr) -> None:
        # The first push of a connection is the 220 greeting; a fault replaces it and hangs up.
        if self._greeting is not None:
            greeting, self._greeting = self._greeting, None
            await super().push(greeting)
            self._close()
            await _hang()
        await super().push(status)

    async def smtp_DATA(self, arg: str) -> None:
        rcpt_tos = self.envelope.rcpt_tos if self.envelope else []
        if rcpt_tos and not arg:
            self.data_ordinal = self.recorder._next_data_ordinal()
            if _selected(self.recorder.drop_before_data_end, rcpt_tos, self.data_ordinal):
                # Before the 354 reply, so the client never sends the content: nothing stored.
                self._close()
                await _hang()
        await super().smtp_DATA(arg)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class RecordingServer:
    """aiosmtpd server in the running loop on an ephemeral port, recording messages and faults.

    Faults (all optional, keyword-only):
      fail_rcpt: address -> replies given to successive RCPTs for it, then it is accepted
        ({"a@x": ["451 4.3.0 try later"] * 2} refuses twice, accepts the third time).
      reject_rcpt: address -> reply given to every RCPT for it ("550 5.1.1 no such user").
      stall_rcpt: address -> seconds to wait before answering each RCPT for it.
      reply_on_connect: greetings for the first len() connections instead of 220; each such
        connection is closed right after (["421 4.3.2 busy"] * 2).
      drop_before_data_end: close on DATA, before the 354 reply; nothing is stored.
      drop_after_data: store the message, then close without replying (outcome unknown).
      stall_seconds / stall_for: store the message, then sleep before replying.
      data_reply / data_reply_for: reply to the end of DATA with this instead of 250;
        the message is stored only if the reply is 2xx.
      refuse_login: offer AUTH (without TLS) and refuse every login with 535.
      pipelining: offer PIPELINING (RFC 2920); aiosmtpd reads one command line at a time
        and answers each in order, so it serves a pipelined client as it is.
    Recorded: messages (list of Received), rcpt_attempts ((address, reply) per RCPT),
    connections (count). Appends happen on the server's loop; reading them from another
    thread is safe (see wait_for_messages).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        messages: list[Received] | None = None,
        fail_rcpt: Mapping[str, Sequence[str]] | None = None,
        reject_rcpt: Mapping[str, str] | None = None,
        stall_rcpt: Mapping[str, float] | None = None,
        reply_on_connect: Sequence[str] = (),
        drop_before_data_end: Selector = False,
        drop_after_data: Selector = False,
        stall_seconds: float = 0.0,
        stall_for: Selector = True,
        data_reply: str | None = None,
        data_reply_for: Selector = True,
        refuse_login: bool = False,
        pipelining: bool = False,
    ) -> None:
        self.host = host
        self.port = port
        self.messages: list[Received] = [] if messages is None else messages
        self.rcpt_attempts: list[tuple[str, str]] = []
        self.connections = 0
        self.fail_rcpt = {address: deque(replies) for address, replies in (fail_rcpt or {}).items()}
        self.reject_rcpt = dict(reject_rcpt or {})
        self.stall_rcpt = dict(stall_rcpt or {})
        if isinstance(reply_on_connect, str):
            reply_on_connect = [reply_on_connect]
        self.reply_on_connect = deque(reply_on_connect)
        self.drop_before_data_end = drop_before_data_end
        self.drop_after_data = drop_after_data
        self.stall_seconds = stall_seconds
        self.stall_for = stall_for
        self.data_reply = data_reply
        self.data_reply_for = data_reply_for
        self.refuse_login = refuse_login
        self.logins = 0
        self._data_count = 0
        self._changed = threading.Condition()
        self._server: asyncio.Server | None = None
        self._live: set[_FaultySMTP] = set()
        if pipelining:  # aiosmtpd looks its hooks up on the handler: only this one has it
            self.handle_EHLO = self._ehlo_with_pipelining

    # -- aiosmtpd handler hooks --------------------------------------------------------------

    async def _ehlo_with_pipelining(self, server: SMTP, session: Session, envelope: Envelope,
                                    hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname  # the hook takes over this from aiosmtpd
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        """Refuse per fail_rcpt/reject_rcpt, else accept the recipient."""
        if address in self.stall_rcpt:
            await asyncio.sleep(self.stall_rcpt[address])
        pending = self.fail_rcpt.get(address)
        if address in self.reject_rcpt:
            reply = self.reject_rcpt[address]
        elif pending:
            reply = pending.popleft()
        else:
            reply = "250 2.1.5 OK"
        self.rcpt_attempts.append((address, reply))
        if reply.startswith("2"):
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
        return reply

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Store the message unless data_reply refuses it, then apply drop/stall faults."""
        ordinal = cast(_FaultySMTP, server).data_ordinal
        rcpt_tos = list(envelope.rcpt_tos)
        reply = ACCEPTED
        if self.data_reply is not None and _selected(self.data_reply_for, rcpt_tos, ordinal):
            reply = self.data_reply
        if reply.startswith("2"):
            data = envelope.original_content or b""
            self._record(Received(envelope.mail_from or "", rcpt_tos, data))
        if _selected(self.drop_after_data, rcpt_tos, ordinal):
            cast(_FaultySMTP, server)._close()
            await _hang()
        if self.stall_seconds and _selected(self.stall_for, rcpt_tos, ordinal):
            await asyncio.sleep(self.stall_seconds)
        return reply

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> RecordingServer:
        """Start listening in the running loop; port 0 becomes the bound port."""
        loop = asyncio.get_running_loop()
        auth: dict[str, Any] = {}
        if self.refuse_login:
            auth = {"authenticator": self._refuse, "auth_require_tls": False}
        self._server = await loop.create_server(
            lambda: _FaultySMTP(self, hostname="smtpd.test", loop=loop, enable_SMTPUTF8=True,
                                **auth),
            self.host,
            self.port,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop listening, close client connections still open, and wait until all are gone."""
        if self._server is None:
            return
        self._server.close()
        connections = list(self._live)
        for connection in connections:
            connection._close()
        await self._server.wait_closed()
        await asyncio.gather(*(connection.lost for connection in connections))
        self._server = None

    def wait_for_messages(self, count: int, *, timeout: float = 10.0) -> list[Received]:
        """Block until at least count messages arrived; a copy of them.

        Only from a thread other than the server's (see ServerThread). Raises TimeoutError.
        """
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.messages) >= count, timeout):
                raise TimeoutError(f"{len(self.messages)} of {count} messages after {timeout}s")
            return list(self.messages)

    def _refuse(self, *args: Any) -> AuthResult:
        self.logins += 1
        return AuthResult(success=False, handled=False)

    # -- internals used by _FaultySMTP -------------------------------------------------------

    def _connection_made(self, connection: _FaultySMTP) -> str | None:
        self._live.add(connection)
        self.connections += 1
        return self.reply_on_connect.popleft() if self.reply_on_connect else None

    def _next_data_ordinal(self) -> int:
        self._data_count += 1
        return self._data_count

    def _record(self, message: Received) -> None:
        with self._changed:
            self.messages.append(message)
            self._changed.notify_all()


class ServerThread:
    """A RecordingServer on its own thread and event loop, for tests that run mailer as a process.

    ``with ServerThread(fail_rcpt=...) as server:`` yields the RecordingServer; read
    ``list(server.messages)`` or ``server.wait_for_messages(n)`` from the test thread.
    """

    def __init__(self, **options: Any) -> None:
        self.server = RecordingServer(**options)
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="smtpd", daemon=True)

    def __enter__(self) -> RecordingServer:
        """Start the thread and wait until the server listens. Raises what starting raised."""
        self._thread.start()
        if not self._ready.wait(timeout=10):
            raise TimeoutError("test SMTP server did not start within 10s")
        if self._error is not None:
            self._thread.join()
            raise self._error
        return self.server

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the server and join the thread."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)
        if self._error is not None and exc is None:
            raise self._error

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            async with self.server:
                self._ready.set()
                await self._stop.wait()
        except BaseException as error:  # handed to __enter__ instead of the thread excepthook
            self._error = error
        finally:
            self._ready.set()
