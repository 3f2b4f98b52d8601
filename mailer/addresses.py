"""Email addresses and display names: checked and normalised on the way in, written into a
header on the way out; no DNS unless asked for."""

from __future__ import annotations

import base64
import re
import unicodedata

from email_validator import EmailNotValidError, validate_email

from mailer.errors import InputError, SubscriberError

MAX_NAME = 200
MAX_LOCAL_PART = 64  # RFC 5321 §4.5.3.1.1: octets before the @
# Every character str.splitlines() breaks at, and NUL: none may reach a header, where
# the email package would start a new line (header injection).
LINE_BREAKS = re.compile(r"[\r\n\v\f\x00\x1c-\x1e\x85\u2028\u2029]")
# The joiners are format characters (Cf) that scripts and emoji need: ZWNJ is spelling in
# Persian and Indic names, ZWJ builds emoji sequences (👩‍💻) and Indic conjuncts. Both only
# ever follow a non-ASCII character there; between Latin letters they only hide things.
_JOINERS = "\u200c\u200d"
# Tag characters (U+E0020–E007F) are invisible, and can carry hidden ASCII, except in the
# one sequence that uses them: a subdivision flag (🏴 + tags + CANCEL TAG, UTS #51).
_FLAG_TAG_SEQUENCE = re.compile("\U0001F3F4[\U000E0020-\U000E007E]+\U000E007F")


def normalize_email(raw: str, *, check_deliverability: bool = False,
                    where: str | None = None) -> str:
    """The canonical form of an address (domain lower-cased, IDNA-normalised).

    Raises:
        SubscriberError: not a usable address, naming why and where it came from.
    """
    if LINE_BREAKS.search(raw):
        raise SubscriberError("an address may not contain line breaks", field=where)
    try:
        result = validate_email(raw.strip(), check_deliverability=check_deliverability,
                                allow_smtputf8=False)
    except EmailNotValidError as exc:
        raise SubscriberError(f"{raw.strip()[:80]!r} is not a valid address: {exc}",
                              field=where) from None
    address = result.ascii_email or result.normalized
    local_octets = len(result.local_part.encode("utf-8"))
    if local_octets > MAX_LOCAL_PART:
        raise SubscriberError(f"the part before the @ has {local_octets} characters; RFC 5321 "
                              f"allows at most {MAX_LOCAL_PART}", field=where)
    if "=?" in address:
        # Mail programs (Python's email package among them) decode "=?…?=" in an address as
        # an RFC 2047 encoded word, which §5 forbids there: they would read another address.
        raise SubscriberError("an address may not contain '=?' (it reads as an encoded word)",
                              field=where)
    # The local part is kept as typed (RFC 5321 lets servers treat it case-sensitively);
    # the domain is normalised so Bob@EXAMPLE.com and Bob@example.com are one subscriber,
    # and kept in its IDNA form (xn--…): that is what goes into To and the SMTP envelope
    # without SMTPUTF8, and bücher.example and xn--bcher-kva.example are one subscriber.
    return address


def clean_name(raw: str | None, *, where: str | None = None) -> str:
    """A display name safe for a header and a reader: one line, visible, bounded length.

    Raises:
        SubscriberError: the name has line breaks, control characters or invisible format
            characters (bidirectional controls, zero-width spaces), or is too long.
    """
    name = (raw or "").strip()
    if LINE_BREAKS.search(name):
        raise SubscriberError("a name may not contain line breaks", field=where)
    checked = _FLAG_TAG_SEQUENCE.sub("\U0001F3F4", name)
    for i, char in enumerate(checked):
        category = unicodedata.category(char)
        # Control characters and lone surrogates: unprintable, and no database stores the
        # latter.
        if category in ("Cc", "Cs"):
            raise SubscriberError("a name may not contain control characters", field=where)
        # Format characters are invisible: bidirectional controls (U+202E and kin) show
        # "Eve\u202egro.live" as "Eveevil.org" (CVE-2021-42574), zero-width ones hide text.
        if category == "Cf" and not (char in _JOINERS and i and not checked[i - 1].isascii()):
            raise SubscriberError(
                f"a name may not contain U+{ord(char):04X} "
                f"({unicodedata.name(char, 'a format character')}): invisible characters that "
                "reorder or hide text are refused", field=where)
    if len(name) > MAX_NAME:
        raise SubscriberError(f"a name may have at most {MAX_NAME} characters", field=where)
    return name


# -- writing a mailbox into a header (To, From, Reply-To) -------------------------------------

# RFC 5322 §3.2.3 atext words between single spaces (or none): a phrase as it stands. Single
# spaces, as a reader takes any run of folding white space between words for one (§3.2.2).
_ATOM_PHRASE = re.compile(
    r"(?:[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?: [A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*)?")
# A dot-string local part at a domain (as transport._PLAIN_ADDRESS): what normalize_email
# lets through, and nothing that could end the angle-addr or start another mailbox.
_ADDR_SPEC = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9.-]+")
_PRINTABLE = re.compile(r"[ -~]+")
_MAX_ADDRESS = 254  # RFC 5321 §4.5.3.1.3: a path of 256 octets with its brackets
_LINE = 78  # RFC 5322 §2.1.1: a line SHOULD have at most 78 characters before its CRLF
_WORD = 75  # RFC 2047 §2: an encoded word has at most 75 characters
_WORD_START = "=?utf-8?b?"


def mailbox_header(header: str, name: str, address: str, /, *, name_field: str,
                   address_field: str) -> str:
    """The line `Header: name <address>` (CRLF, folded at 78), the name shown as typed.

    The name is text, never decoded: atext words go as they are; other printable ASCII as
    an RFC 5322 quoted-string; anything else, and any "=?" a reader would decode as an
    encoded word, as RFC 2047 'B' words of its UTF-8. No email package parses it, so no
    Python version can write out what an encoded word in the input decodes to.

    Raises:
        InputError: a line break in either, or an address no header can carry as it is.
    """
    # The common names, plain words or none: three cheap checks, one line.
    if "=?" not in name and _ATOM_PHRASE.fullmatch(name) and _ADDR_SPEC.fullmatch(address):
        line = f"{header}: {name} <{address}>\r\n" if name else f"{header}: {address}\r\n"
        if len(line) <= _LINE + 2:
            return line
    _one_line(name, name_field)
    _one_line(address, address_field)
    if not _ADDR_SPEC.fullmatch(address) or len(address) > _MAX_ADDRESS:
        raise InputError(f"{address[:80]!r} is not an address a header can carry",
                         field=address_field)
    prefix = f"{header}: "
    if not name:
        return f"{prefix}{address}\r\n"
    if "=?" not in name and _PRINTABLE.fullmatch(name):
        if _ATOM_PHRASE.fullmatch(name):
            words = name.split(" ")
        else:
            # RFC 5322 §3.2.4: a quoted-string may fold at its spaces; only \ and " need a
            # backslash.
            words = ('"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"').split(" ")
        lines = _fold(prefix, words)
        if max(map(len, lines)) <= _LINE:
            return _with_address(lines, address)
    # A word too long to fold, or not ASCII text: encoded words always fit a line.
    return _with_address(_fold(prefix, _encoded_words(name, _LINE - len(prefix), name_field)),
                         address)


def text_header(header: str, text: str, /, *, field: str) -> str:
    """The line `Header: text` (CRLF, folded at 78) of an unstructured header (a Subject):
    printable ASCII words as they are, anything else, and any "=?", as RFC 2047 'B' words,
    so what a reader decodes is `text` and never a header of its own.

    Raises:
        InputError: a line break in `text`.
    """
    _one_line(text, field)
    prefix = f"{header}: "
    if not text:
        return prefix.rstrip() + "\r\n"
    if "=?" not in text and text == text.strip() and _PRINTABLE.fullmatch(text):
        lines = _fold(prefix, text.split(" "))
        if max(map(len, lines)) <= _LINE:
            return "\r\n".join(lines) + "\r\n"
    return "\r\n".join(_fold(prefix, _encoded_words(text, _LINE - len(prefix), field))) + "\r\n"


def _fold(prefix: str, words: list[str]) -> list[str]:
    # Folding at a space keeps it (RFC 5322 §2.2.3: unfolding removes only the CRLF); an
    # empty word (two spaces) is never folded before, so no line is white space only.
    lines = [prefix + words[0]]
    for word in words[1:]:
        if word and len(lines[-1]) + 1 + len(word) > _LINE:
            lines.append(" " + word)
        else:
            lines[-1] += " " + word
    return lines


def _with_address(lines: list[str], address: str) -> str:
    angle = f"<{address}>"
    if len(lines[-1]) + 1 + len(angle) > _LINE:
        lines.append(" " + angle)
    else:
        lines[-1] += " " + angle
    return "\r\n".join(lines) + "\r\n"


def _encoded_words(text: str, first: int, field: str) -> list[str]:
    # RFC 2047 §5: each word holds whole characters, so a UTF-8 sequence is never cut; the
    # whitespace between adjacent words is not part of the text (§6.2).
    room = (min(first, _WORD) - len(_WORD_START) - 2) // 4 * 3  # bytes per word
    chunks, chunk = [], b""
    try:
        for char in text:
            data = char.encode("utf-8")
            if len(chunk) + len(data) > room:
                chunks.append(chunk)
                chunk, room = b"", (_WORD - len(_WORD_START) - 2) // 4 * 3
            chunk += data
    except UnicodeEncodeError:
        raise InputError("a name must be Unicode text (a lone surrogate is not)",
                         field=field) from None
    chunks.append(chunk)
    return [f"{_WORD_START}{base64.b64encode(c).decode('ascii')}?=" for c in chunks]


def _one_line(value: str, field: str) -> None:
    # A header value with a line break could smuggle in new headers (header injection).
    if LINE_BREAKS.search(value):
        raise InputError("a header value may not contain a line break", field=field)
