"""The colours of an email: the newsletter's accent made readable on light and dark pages."""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailer.errors import RenderError

_HEX = re.compile(r"#(?:[0-9a-fA-F]{3}){1,2}")
# WCAG 2 AA for body text: what a link or a name in the accent colour has to reach.
READABLE = 4.5
CARD = "#ffffff"  # the card the text sits on
DARK_CARD = "#1f2937"  # the same card under prefers-color-scheme: dark


@dataclass(frozen=True)
class Palette:
    """`accent` as configured (borders, button), `text` for accent-coloured text on the
    card, `dark_text` for the same in dark mode, `on_accent` for text on an accent button."""

    accent: str
    text: str
    dark_text: str
    on_accent: str


def palette(accent: str) -> Palette:
    """The colours derived from a newsletter's `accent_color`.

    Raises:
        RenderError: not a hex colour (it lands in CSS, where HTML escaping protects nothing).
    """
    if not _HEX.fullmatch(accent):
        raise RenderError("expected a hex colour like #2563eb", field="accent_color")
    accent = _long(accent).lower()
    on_accent = max(("#ffffff", "#111827"), key=lambda c: contrast(c, accent))
    return Palette(accent=accent, text=readable(accent, on=CARD),
                   dark_text=readable(accent, on=DARK_CARD), on_accent=on_accent)


def readable(color: str, *, on: str) -> str:
    """`color`, moved towards black or white just far enough to be readable on `on`."""
    towards = "#000000" if luminance(on) > 0.5 else "#ffffff"
    for step in range(11):
        mixed = _mix(color, towards, step / 10)
        if contrast(mixed, on) >= READABLE:
            return mixed
    return towards


def contrast(a: str, b: str) -> float:
    """WCAG 2 contrast ratio of two colours, 1 to 21."""
    light, dark = sorted((luminance(a), luminance(b)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def luminance(color: str) -> float:
    """WCAG 2 relative luminance of a hex colour, 0 (black) to 1 (white)."""

    def channel(value: int) -> float:
        c = value / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(v) for v in _rgb(color))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def _mix(color: str, other: str, amount: float) -> str:
    mixed = (round(a + (b - a) * amount) for a, b in zip(_rgb(color), _rgb(other), strict=True))
    return "#" + "".join(f"{v:02x}" for v in mixed)


def _rgb(color: str) -> tuple[int, int, int]:
    value = _long(color)
    return int(value[1:3], 16), int(value[3:5], 16), int(value[5:7], 16)


def _long(color: str) -> str:
    return "#" + "".join(c * 2 for c in color[1:]) if len(color) == 4 else color
