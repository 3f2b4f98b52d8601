"""Typed reads from a decoded JSON payload: a missing or mistyped key is an InputError naming it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TypeVar

from mailer.errors import InputError

T = TypeVar("T")


def required(obj: Mapping[str, object], key: str, kind: type[T], path: str = "") -> T:
    """obj[key], which must be present and of the given type.

    Raises:
        InputError: the key is missing or its value has another type; `field` is its path.
    """
    field = _join(path, key)
    if not isinstance(obj, Mapping):
        raise InputError("expected a JSON object", field=path or "payload")
    if key not in obj or obj[key] is None:
        raise InputError("missing", field=field)
    return _typed(obj[key], kind, field)


def optional(obj: Mapping[str, object], key: str, kind: type[T], path: str = "") -> T | None:
    """obj[key] if present and not null, which must then be of the given type.

    Raises:
        InputError: the value has another type; `field` is its path.
    """
    if not isinstance(obj, Mapping):
        raise InputError("expected a JSON object", field=path or "payload")
    value = obj.get(key)
    return None if value is None else _typed(value, kind, _join(path, key))


def objects(obj: Mapping[str, object], key: str, path: str = "") -> list[Mapping[str, object]]:
    """obj[key] as a list of JSON objects; a missing key is an empty list.

    Raises:
        InputError: the value is not a list of objects; `field` names the bad item.
    """
    field = _join(path, key)
    items = optional(obj, key, list, path) or []
    for index, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise InputError("expected a JSON object", field=f"{field}[{index}]")
    return items


def mapping(obj: Mapping[str, object], key: str, path: str = "", *,
            missing_ok: bool = False) -> Mapping[str, object]:
    """obj[key], which must be a JSON object; with missing_ok, an absent key is an empty one.

    Raises:
        InputError: the key is missing (unless missing_ok) or not an object; `field` is its
            path.
    """
    value = optional(obj, key, object, path) if missing_ok else required(obj, key, object, path)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InputError("expected a JSON object", field=_join(path, key))
    return value


def texts(obj: Mapping[str, object], key: str, path: str = "") -> list[str]:
    """obj[key] as a list of strings; a missing key is an empty list.

    Raises:
        InputError: the value is not a list of strings; `field` names the bad item.
    """
    field = _join(path, key)
    items: Sequence[object] = optional(obj, key, list, path) or []
    return [_typed(item, str, f"{field}[{index}]") for index, item in enumerate(items)]


def timestamp(value: str, field: str) -> datetime:
    """An ISO 8601 time with its offset (`Z` included), as an aware datetime in UTC.

    Raises:
        InputError: not an ISO 8601 time, or one with no offset (its instant is unknown).
    """
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InputError(f"not an ISO 8601 time: {value[:40]!r}", field=field) from None
    if moment.tzinfo is None:
        raise InputError("a time without a UTC offset", field=field)
    return moment.astimezone(UTC)


def _typed(value: object, kind: type[T], field: str) -> T:
    # bool is an int in Python but never a number in these payloads.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise InputError(f"expected {_json_name(kind)}", field=field)
    return value


def _json_name(kind: type[object]) -> str:
    names: dict[type[object], str] = {str: "a string", int: "an integer", float: "a number",
                                      bool: "true or false", list: "a list"}
    return names.get(kind, "a JSON object")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
