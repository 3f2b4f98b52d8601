"""Personal fields in an issue: the closed `{{ subscriber.… }}` syntax and its slot markers (pure).

An issue's body and subject may greet each reader with exactly these, nothing else:

    {{ subscriber.email }}
    {{ subscriber.name }}
    {{ subscriber.attributes.KEY }}          KEY: [a-z0-9_]+
    … each optionally followed by  | default("text")

Whitespace is free inside the braces and around `.`, `|` and the parentheses, within one
line. The default is a double-quoted string in which `\\"` stands for `"` and `\\\\` for `\\`;
any other backslash, a line break or a control character in it is an error. Anything else
between `{{` and `}}`, and every `{%` or `{#`, is refused with the file and line: this is a
scanner of its own, not a template engine, so nothing in an issue file is ever evaluated.

The renderer replaces each field by its marker (`Field.marker`): letters and hex digits
only, so Markdown, HTML escaping, MJML and the plain-text conversion all leave it as it is.
The marker spells the field and its default, so a send read back from the database knows
its fields without a table of its own; the send path splices each reader's value in.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from mailer.errors import ContentError

KEY = re.compile(r"[a-z0-9_]+")
MAX_DEFAULT = 200

_PREFIX, _SUFFIX = "MAILERFIELD", "END"
MARKER_PATTERN = _PREFIX + "[0-9a-f]+" + _SUFFIX  # without a group, to build others from
MARKER = re.compile(_PREFIX + r"([0-9a-f]+)" + _SUFFIX)
_SEP = "\x1f"  # between the path and the default inside a marker (never in either)

_OPENERS = re.compile(r"\{[{%#]")
_FIELD = re.compile(
    r"\{\{[ \t]*subscriber[ \t]*\.[ \t]*"
    r"(?P<path>email|name|attributes[ \t]*\.[ \t]*(?P<key>[a-z0-9_]+))[ \t]*"
    r"(?:\|[ \t]*default[ \t]*\([ \t]*\"(?P<default>(?:[^\"\\\r\n]|\\.)*)\"[ \t]*\)[ \t]*)?"
    r"\}\}"
)
_ESCAPE = re.compile(r"\\(.)")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


@dataclass(frozen=True, slots=True)
class Field:
    """One personal field as an issue names it: `email`, `name` or `attributes.KEY`, and its
    default (None: none given, so a reader without a value stops the send)."""

    path: str
    default: str | None = None

    @property
    def marker(self) -> str:
        """The slot left in the rendered HTML, text and subject for this field."""
        payload = self.path if self.default is None else self.path + _SEP + self.default
        return _PREFIX + payload.encode("utf-8").hex() + _SUFFIX

    @property
    def key(self) -> str | None:
        """The attribute key of an `attributes.KEY` field."""
        return self.path.partition(".")[2] or None

    def source(self) -> str:
        """The field as an author writes it (for messages)."""
        if self.default is None:
            return f"{{{{ subscriber.{self.path} }}}}"
        quoted = self.default.replace("\\", "\\\\").replace('"', '\\"')
        return f'{{{{ subscriber.{self.path} | default("{quoted}") }}}}'

    def value(self, *, email: str, name: str, attributes: Mapping[str, str]) -> str | None:
        """This reader's value: theirs, else the default; None when they have neither."""
        if self.path == "email":
            own: str | None = email
        elif self.path == "name":
            own = name
        else:
            own = attributes.get(self.key or "")
        if own:
            return own
        return self.default


@dataclass(frozen=True, slots=True)
class FieldUse:
    """Where an issue file names a field: for the message that stops a send."""

    field: Field
    line: int


def field_of_marker(marker: str) -> Field:
    """The Field a marker (as MARKER matches it) stands for."""
    match = MARKER.fullmatch(marker)
    if match is None:
        raise ValueError(f"not a field marker: {marker[:40]!r}")
    path, sep, default = bytes.fromhex(match.group(1)).decode("utf-8").partition(_SEP)
    return Field(path, default if sep else None)


def fields_in(*texts: str) -> tuple[Field, ...]:
    """The distinct fields whose markers the rendered texts hold, sorted."""
    found = {m.group(0) for text in texts for m in MARKER.finditer(text)}
    return tuple(sorted((field_of_marker(marker) for marker in found),
                        key=lambda f: (f.path, f.default is not None, f.default or "")))


def scan(text: str, *, file: str, first_line: int = 1) -> Iterator[tuple[int, int, FieldUse]]:
    """(start, end, use) of every personal field in `text`, which starts at `first_line`.

    Raises:
        ContentError: a `{%`, `{#`, any `{{ … }}` that is not a personal field, a default
            with a control character or an unknown escape, or a marker typed by hand.
    """
    if _PREFIX in text:
        line = first_line + text.count("\n", 0, text.index(_PREFIX))
        raise ContentError(f"{_PREFIX!r} is reserved for personal fields", file=file, line=line)
    position = 0
    while (opener := _OPENERS.search(text, position)) is not None:
        start = opener.start()
        line = first_line + text.count("\n", 0, start)
        if opener.group(0) != "{{":
            raise ContentError(
                f"{opener.group(0)!r}: an issue is not a template; only personal fields "
                "such as {{ subscriber.name | default(\"there\") }} are allowed",
                file=file, line=line)
        match = _FIELD.match(text, start)
        if match is None:
            end = text.find("}}", start)
            shown = text[start:end + 2] if 0 <= end < start + 80 else text[start:start + 40]
            raise ContentError(
                f"{shown!r} is not a personal field: use {{{{ subscriber.email }}}}, "
                "{{ subscriber.name }} or {{ subscriber.attributes.KEY }}, each with an "
                "optional | default(\"…\")", file=file, line=line)
        key = match.group("key")
        path = f"attributes.{key}" if key else match.group("path")
        default = match.group("default")
        yield start, match.end(), FieldUse(Field(path, _unquote(default, file, line)), line)
        position = match.end()  # a default may hold "{{" as text


def uses(text: str, *, file: str, first_line: int = 1) -> list[FieldUse]:
    """Every personal field `text` names, with its line (see scan).

    Raises:
        ContentError: as scan.
    """
    return [use for _, _, use in scan(text, file=file, first_line=first_line)]


def mark(text: str, *, file: str, first_line: int = 1) -> str:
    """`text` with each personal field replaced by its marker.

    Raises:
        ContentError: as scan.
    """
    out, last = [], 0
    for start, end, use in scan(text, file=file, first_line=first_line):
        out += [text[last:start], use.field.marker]
        last = end
    return "".join(out) + text[last:] if out else text


def fill(text: str, value: Callable[[Field], str]) -> str:
    """`text` with every marker replaced by `value(field)` (slow path: previews, the web)."""
    if _PREFIX not in text:
        return text
    return MARKER.sub(lambda m: value(field_of_marker(m.group(0))), text)


def public_text(text: str) -> str:
    """`text` as anyone may see it (the web archive): each field shows its default, or
    nothing when it has none."""
    return fill(text, lambda field: field.default or "")


# -- the plain-text part: wrap at the width of the value, not of the marker --------------------

# Private use characters no author types: a head naming the marker (Supplementary Private
# Use Area-A), then fillers, so two markers side by side stay two.
_STAND_IN_BASE, _FILLER = 0xF0000, "\uf8ff"
_STAND_IN = re.compile("([\U000F0000-\U000FFFFD])\uf8ff*")


def stand_ins(text: str) -> tuple[str, list[str]]:
    """`text` with each marker replaced by a stand-in as long as a typical value (its
    default, or ten characters), and the markers to put back with `restore`."""
    if _PREFIX not in text:
        return text, []
    markers: list[str] = []

    def swap(match: re.Match[str]) -> str:
        marker = match.group(0)
        if marker not in markers:
            markers.append(marker)
        default = field_of_marker(marker).default
        width = min(max(len(default) if default else 10, 1), 30)
        return chr(_STAND_IN_BASE + markers.index(marker)) + _FILLER * (width - 1)

    return MARKER.sub(swap, text), markers


def has_stand_in(word: str) -> bool:
    return _STAND_IN.search(word) is not None


def restore(text: str, markers: list[str]) -> str:
    """The inverse of stand_ins."""
    if not markers:
        return text
    return _STAND_IN.sub(lambda m: markers[ord(m.group(1)) - _STAND_IN_BASE], text)


def body_value(value: str) -> str:
    """A value as a body part holds it: every line break a "\\n" (a lone CR would otherwise
    read as one break in one encoder and two in another)."""
    return value.replace("\r\n", "\n").replace("\r", "\n") if "\r" in value else value


def one_line(value: str) -> str:
    """A value as a header line may hold it: line breaks and runs of white space become one
    space (a Subject is one line; nothing a value holds may start another header)."""
    return " ".join(_CONTROL.sub(" ", value).split())


def _unquote(default: str | None, file: str, line: int) -> str | None:
    if default is None:
        return None
    bad = next((m.group(1) for m in _ESCAPE.finditer(default) if m.group(1) not in '"\\'),
               None)
    if bad is not None:
        raise ContentError(f"default(\"…\"): unknown escape '\\{bad}' (only \\\" and \\\\)",
                           file=file, line=line)
    value = _ESCAPE.sub(r"\1", default)
    if _CONTROL.search(value):
        raise ContentError("default(\"…\"): no control characters", file=file, line=line)
    if len(value) > MAX_DEFAULT:
        raise ContentError(f"default(\"…\"): at most {MAX_DEFAULT} characters",
                           file=file, line=line)
    return value
