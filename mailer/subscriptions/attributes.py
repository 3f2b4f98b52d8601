"""Subscriber attributes: keys `[a-z0-9_]+`, one-line text values, checked on the way in.

An attribute is what a personal field `{{ subscriber.attributes.KEY }}` shows, so a value
goes into a Subject header and two body parts: like a name, it is one visible line. An
empty value is no value (the key is left out), so an export, which writes every key as a
column, imports back as exactly what was stored.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping

from mailer.addresses import LINE_BREAKS
from mailer.content.fields import KEY
from mailer.errors import SubscriberError

MAX_VALUE = 1000
MAX_KEYS = 100
# Joiners are spelling in Persian and Indic names and build emoji (see addresses.clean_name).
_JOINERS = "\u200c\u200d"


def check_key(key: str, *, where: str | None = None) -> str:
    """An attribute key as given, if it is one.

    Raises:
        SubscriberError: not `[a-z0-9_]+`.
    """
    if not KEY.fullmatch(key):
        raise SubscriberError(f"attribute {key[:40]!r}: a key is lower-case letters, digits "
                              "and '_' ([a-z0-9_]+)", field=where)
    return key


def clean_value(raw: str, *, key: str) -> str:
    """An attribute value, stripped; "" means none.

    Raises:
        SubscriberError: a line break, a control or invisible format character, or more
            than MAX_VALUE characters.
    """
    value = raw.strip()
    if LINE_BREAKS.search(value):
        raise SubscriberError(f"attribute {key}: a value may not contain line breaks")
    for char in value:
        category = unicodedata.category(char)
        if category in ("Cc", "Cs", "Zl", "Zp") or (category == "Cf" and char not in _JOINERS):
            raise SubscriberError(f"attribute {key}: a value may not contain U+{ord(char):04X} "
                                  "(control and invisible characters are refused)")
    if len(value) > MAX_VALUE:
        raise SubscriberError(f"attribute {key}: a value may have at most {MAX_VALUE} "
                              "characters")
    return value


def clean_attributes(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Checked attributes from (key, value) pairs; empty values are left out.

    Raises:
        SubscriberError: a bad key or value, or too many keys.
    """
    attributes = {}
    for key, raw in pairs:
        value = clean_value(raw, key=check_key(key))
        if value:
            attributes[key] = value
    if len(attributes) > MAX_KEYS:
        raise SubscriberError(f"at most {MAX_KEYS} attributes per subscriber")
    return attributes


def parse_options(options: Iterable[str]) -> dict[str, str]:
    """`--attr KEY=VALUE` options (repeatable; the last of a key wins) as attributes.

    Raises:
        SubscriberError: an option without '=', a bad key or value.
    """
    pairs: dict[str, str] = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep:
            raise SubscriberError(f"--attr {option[:40]!r}: expected KEY=VALUE", field="--attr")
        pairs[check_key(key.strip(), where="--attr")] = value
    return clean_attributes(pairs.items())


def as_columns(attributes: Mapping[str, str], keys: Iterable[str]) -> list[str]:
    """The export's cells of `attributes` under the columns `keys` ("" for none)."""
    return [attributes.get(key, "") for key in keys]
