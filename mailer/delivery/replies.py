"""SMTP replies read in order from a byte stream, and the pipelined envelope (pure: no I/O).

With PIPELINING (RFC 2920) several replies can arrive in one read, or one reply across
several reads; the parser keeps what it has not yet handed out, so no reply is lost or
paired with the wrong command.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

# RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets; real servers send longer
# EHLO lines, so the bound is generous and only stops a stream with no line end at all.
MAX_LINE = 8192
MAX_REPLY = MAX_LINE * 4

START_INPUT = 354
# What accepts each command of the flight (MAIL, RCPT, DATA), as aiosmtplib's mail(), rcpt()
# and data() judge them; RFC 5321 §3.6.1: a 251 "user not local; will forward" accepts.
FLIGHT_ACCEPTS: tuple[tuple[int, ...], ...] = ((250,), (250, 251), (START_INPUT,))


@dataclass(frozen=True, slots=True)
class Reply:
    """One complete reply: its code and its text (continuation lines joined by newlines)."""

    code: int
    text: str


class MalformedReply(ValueError):
    """The server sent something that is not an SMTP reply."""


class ReplyParser:
    """Splits the bytes a server sends into replies, in the order they came."""

    __slots__ = ("_buffer", "_lines", "_ready")

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._lines: list[bytes] = []  # the lines of a multi-line reply read so far
        self._ready: deque[Reply] = deque()

    def feed(self, data: bytes) -> None:
        """Take `data` as it arrived.

        Raises:
            MalformedReply: a line without a 3-digit code, or a reply beyond the bounds.
        """
        self._buffer.extend(data)
        while (end := self._buffer.find(b"\n")) >= 0:
            line = bytes(self._buffer[:end + 1])
            del self._buffer[:end + 1]
            self._take(line)
        if len(self._buffer) > MAX_LINE:
            raise MalformedReply("reply line too long")

    def _take(self, line: bytes) -> None:
        if len(line) > MAX_LINE or sum(map(len, self._lines)) > MAX_REPLY:
            raise MalformedReply("reply too long")
        code = line[:3]
        # RFC 5321 §4.2: "250-" continues a reply, "250 " (or a bare "250") ends it.
        if not code.isdigit() or line[3:4] not in (b"-", b" ", b"\r", b"\n"):
            raise MalformedReply(f"not an SMTP reply: {line[:80]!r}")
        self._lines.append(line)
        if line[3:4] == b"-":
            return
        lines, self._lines = self._lines, []
        text = "\n".join(part[4:].strip(b" \t\r\n").decode("utf-8", "surrogateescape")
                         for part in lines)
        self._ready.append(Reply(int(code), text))

    def next_reply(self) -> Reply | None:
        """The oldest complete reply not yet handed out, or None."""
        return self._ready.popleft() if self._ready else None


def envelope_flight(sender: str, recipient: str) -> bytes:
    """MAIL FROM, RCPT TO and DATA as one write (RFC 2920 §3.1: DATA may end a group).

    Both addresses must be PLAIN_ADDRESS (wire.py): nothing here quotes or checks them.
    """
    return (b"MAIL FROM:<%s>\r\nRCPT TO:<%s>\r\nDATA\r\n"
            % (sender.encode("ascii"), recipient.encode("ascii")))


def final_dot(data: bytes) -> bytes:
    """A body in wire form (CRLF-ended, dot-stuffed) with the line that ends DATA."""
    return data + b".\r\n"


def first_refusal(replies: Sequence[Reply]) -> Reply | None:
    """The reply to MAIL, RCPT or DATA (in that order) that refuses, or None.

    The first refusal is the one that counts, as when each command waited for its reply:
    after a refused MAIL or RCPT the server answers DATA with 503 or 554 (RFC 2920 §3.1),
    which says nothing more about the recipient.
    """
    for reply, accepted in zip(replies, FLIGHT_ACCEPTS, strict=False):
        if reply.code not in accepted:
            return reply
    return None
