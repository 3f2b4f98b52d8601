"""A browser for `mailer preview`: open the files it wrote, or screenshot an email in Chromium."""

from __future__ import annotations

import contextlib
import os
import shutil
import webbrowser
from collections.abc import Iterable
from pathlib import Path

from mailer.errors import MailerError

# A quiet headless Chromium: no sandbox (containers), no GPU, no calls home.
CHROMIUM_ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync")
_CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_LOAD_TIMEOUT_MS = 15_000


def find_chromium() -> str | None:
    """Chromium's executable: $MAILER_CHROMIUM, else the first one on PATH."""
    given = os.environ.get("MAILER_CHROMIUM")
    if given:
        return given if Path(given).exists() else None
    return next((path for name in _CHROMIUM_NAMES if (path := shutil.which(name))), None)


def screenshots(html: str, shots: Iterable[tuple[int, Path]]) -> list[Path]:
    """Render `html` in headless Chromium once per (width, png path): a full-page PNG each.

    The page loads its images as a mail client would; one that does not arrive within
    15 s is left out of the picture rather than failing the preview.

    Raises:
        MailerError: Chromium or Playwright's Python package is not installed.
    """
    executable = find_chromium()
    if executable is None:
        raise MailerError("--width needs Chromium: install it (apt-get install chromium) or "
                          "set MAILER_CHROMIUM to its path")
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise MailerError("--width drives Chromium with Playwright: pip install playwright "
                          "(no browser download needed)") from None
    written = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            for width, path in shots:
                page = browser.new_page(viewport={"width": width, "height": 800})
                # A slow or unreachable image: show the page without it.
                with contextlib.suppress(PlaywrightError):
                    page.set_content(html, wait_until="load", timeout=_LOAD_TIMEOUT_MS)
                path.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=path, full_page=True)
                page.close()
                written.append(path)
        finally:
            browser.close()
    return written


def open_files(paths: Iterable[Path]) -> bool:
    """Open each file in the user's browser; False when this machine has none to open."""
    try:
        browser = webbrowser.get()
    except webbrowser.Error:
        return False
    return all([browser.open(path.resolve().as_uri()) for path in paths])
