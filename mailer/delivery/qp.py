"""Quoted-printable pieces that splice into each other: the shared body of an issue's message
and each recipient's URLs and values, every line at most 76 characters (RFC 2045 §6.7) and
none starting with "." where a value is spliced (pure)."""

from __future__ import annotations

import functools
import re
from email import quoprimime

# RFC 2045 §6.7: encoded lines are at most 76 characters; one is kept for the soft break
# ("=") that joins a piece to the recipient's URL spliced in after it.
_QP_LINE = 75
_LINE_STARTING_WITH_DOT = re.compile(rb"^\.", re.MULTILINE)


def qp(text: str) -> bytes:
    """Quoted-printable body text with CRLF line ends and room for one trailing soft break."""
    encoded = quoprimime.body_encode(text.encode("utf-8").decode("latin-1"),
                                     maxlinelen=_QP_LINE, eol="\n")
    return encoded.replace("\n", "\r\n").encode("ascii")


def qp_piece(text: str) -> bytes:
    # A piece followed by a splice ends in a soft line break, so the spliced bytes start a
    # line of their own and no line grows past 76 characters.
    encoded = qp(text)
    return encoded if encoded.endswith(b"\r\n") or not encoded else encoded + b"=\r\n"


def qp_url(url: str) -> bytes:
    """A URL as quoted-printable lines of at most 76 characters, ending in a soft break.

    A line never starts with "." (it is written =2E), so the spliced bytes need no
    SMTP dot-stuffing (RFC 5321 §4.5.2).
    """
    escaped = url.replace("=", "=3D")
    lines, start = [], 0
    width = _QP_LINE - 2  # room for a leading "." written as "=2E"
    while start < len(escaped):
        end = min(start + width, len(escaped))
        # Never cut an "=XX" escape in two.
        cut = escaped.rfind("=", end - 2, end)
        if end < len(escaped) and cut > start:
            end = cut
        line = escaped[start:end]
        lines.append("=2E" + line[1:] if line.startswith(".") else line)
        start = end
    return "".join(line + "=\r\n" for line in lines).encode("ascii")


def dot_stuff(piece: bytes) -> bytes:
    # Every piece starts a line (see qp_piece), so "^" is a line start here too.
    return _LINE_STARTING_WITH_DOT.sub(b"..", piece)


# Printable ASCII that quoted-printable leaves as it is: no "=", no "." first (the line
# needs no dot-stuffing), no space last, short enough for one line with its soft break.
_PLAIN_VALUE = re.compile(r"[!-\-/-<>-~](?:[ !-<>-~]{0,70}[!-<>-~])?")


@functools.lru_cache(maxsize=4096)
def qp_value(text: str) -> bytes:
    """A personal value as quoted-printable lines of at most 76 characters, starting a line
    and ending in a soft break (or a hard one it holds), no line starting with "." (see
    qp_url). Cached: defaults and common values repeat across a list."""
    if not text:
        return b""
    if _PLAIN_VALUE.fullmatch(text):
        return text.encode("ascii") + b"=\r\n"
    # 73: room for a leading "." written "=2E" on any line.
    encoded = quoprimime.body_encode(text.encode("utf-8").decode("latin-1"),
                                     maxlinelen=_QP_LINE - 2, eol="\n")
    lines = ["=2E" + line[1:] if line.startswith(".") else line
             for line in encoded.split("\n")]
    joined = "\r\n".join(lines)
    return (joined if encoded.endswith("\n") else joined + "=\r\n").encode("ascii")
