"""Email quality, checked by the tools that decide it: the official MJML, Chromium, SpamAssassin.

Two issues go through every check: the seed issue users actually send (../shared/seed, where
this checkout has it) and one exercising every Markdown construct (tests/data/every-construct.md).
Screenshots land in test-artifacts/ (git-ignored) for a human to look at.
"""

from __future__ import annotations

import email
import email.policy
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pytest

from mailer import config as config_mod
from mailer import tokens
from mailer.config import Config
from mailer.content import colors, render
from mailer.delivery.message import message_id, prepare_message
from mailer.sending.preview import load_preview
from tests import tools

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Route

DATA = Path(__file__).parent / "data"
SEED = tools.REPO.parent / "shared" / "seed" / "ml-issue-02.md"
SEED_FRONT_MATTER = """---
subject: "Machine Learning Issue #02"
status: ready
send_after: 2026-12-07
preheader: "TOGL, fair networks and EasyNMT"
---
"""
CASES = ["ml-issue-02", "every-construct"]
WIDTHS = [320, 375, 600]
LOGO = "https://images.example.com/logo-192x192.png"
# The code blocks each issue must show line for line.
CODE = {
    "ml-issue-02": ["pip install -U easynmt"],
    "every-construct": [
        'def greet(name: str) -> str:\n    return f"Hello, {name}!"  # a comment that makes this '
        "line of code much longer than any phone screen is wide\n\nprint(greet(\"world\"))",
        "an indented code block\nwith two lines",
    ],
}
TAG = re.compile(r"</?[a-zA-Z][^>\n]*>")


# --- the issues, rendered by the real pipeline -------------------------------------------------


@dataclass(frozen=True)
class Email:
    name: str
    mjml: str  # the template's MJML for this issue, after Jinja
    html: str  # mjml-python's HTML, before personalisation (the unsubscribe slot still open)
    message: bytes  # the whole MIME message, byte for byte as the sender sends it

    def parts(self) -> tuple[str, str]:
        """(html, text) of the message, transfer-decoded."""
        parsed = email.message_from_bytes(self.message, policy=email.policy.default)
        html_part, text_part = parsed.get_body(("html",)), parsed.get_body(("plain",))
        assert html_part is not None and text_part is not None
        return cast(str, html_part.get_content()), cast(str, text_part.get_content())


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> Config:
    root = tmp_path_factory.mktemp("project")
    shutil.copytree(tools.REPO / "templates", root / "templates")
    (root / "content" / "ml-issues").mkdir(parents=True)
    shutil.copy(DATA / "every-construct.md", root / "content" / "ml-issues")
    if SEED.exists():  # a user's clone has no ../shared: that case is skipped below
        seed = SEED.read_text(encoding="utf-8")
        (root / "content" / "ml-issues" / "ml-issue-02.md").write_text(
            seed if seed.startswith("---") else SEED_FRONT_MATTER + seed, encoding="utf-8")
    (root / "schedules.yaml").write_text(f"""\
settings:
  base_url: https://news.example.com
  postal_address: "Example Publishing, 1 Sample Street, 10115 Berlin, Germany"
newsletters:
  ml-issues:
    name: Machine Learning Issues
    from: "Machine Learning Issues <newsletter@example.com>"
    reply_to: editor@example.com
    issues: content/ml-issues
    accent_color: "#c2410c"
    logo_url: {LOGO}
    footer_text: "You get this because you subscribed at news.example.com."
""", encoding="utf-8")
    return config_mod.load(root / "schedules.yaml", env={"MAILER_SECRET_KEY": "test-key"})


@pytest.fixture(scope="module", params=CASES)
def issue_email(request: pytest.FixtureRequest, cfg: Config) -> Email:
    name: str = request.param
    if name == "ml-issue-02" and not SEED.exists():
        pytest.skip(f"the seed issue is not in this checkout ({SEED}); every-construct runs")
    shown = load_preview(cfg, cfg.newsletters["ml-issues"].issues / f"{name}.md",
                         newsletter_id=None)
    url = f"{cfg.settings.base_url}/unsubscribe/{tokens.unsubscribe_token('test-key', 7)}"
    wire = prepare_message(shown.letter).personalize(
        to_email="ada@example.com", to_name="Ada Lovelace", unsubscribe_url=url,
        msg_id=message_id(shown.letter.sender_domain), date=datetime.now(UTC))
    return Email(name=name, mjml=shown.as_format("mjml").decode(), html=shown.rendered.html,
                 message=wire)


def confirm_mjml(cfg: Config) -> str:
    return render.render_confirm_mjml(cfg.newsletters["ml-issues"], cfg.settings,
                                      confirm_url="https://news.example.com/confirm/abc.DEF",
                                      templates_dir=cfg.templates_dir)


class Page_(HTMLParser):
    """What a reader gets from an HTML email: visible text, links, images, language."""

    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.words: list[str] = []
        self.links: list[str] = []
        self.images: list[tuple[str, str | None]] = []
        self.lang: tuple[str | None, str | None] = (None, None)
        self._skip = 0
        self.feed(page)
        self.close()

    @property
    def text(self) -> str:
        return " ".join(" ".join(self.words).split())

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag in ("style", "script", "title"):
            self._skip += 1
        elif tag == "html":
            self.lang = (values.get("lang"), values.get("dir"))
        elif tag == "a" and values.get("href"):
            self.links.append(str(values["href"]))
        elif tag == "img":
            self.images.append((str(values.get("src")), values.get("alt")))

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "script", "title"):
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.words.append(data)


def run(*command: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False,
                          **kwargs)


# --- (a) the official MJML ----------------------------------------------------------------------


def test_issue_template_passes_the_official_mjml_validator_in_strict_mode(
    issue_email: Email, tmp_path: Path
) -> None:
    mjml = tools.mjml()
    source = tmp_path / f"{issue_email.name}.mjml"
    source.write_text(issue_email.mjml, encoding="utf-8")

    result = run(mjml, "--validate", "strict", str(source))

    assert result.returncode == 0, result.stdout + result.stderr
    assert "illegal" not in result.stdout + result.stderr


def test_confirmation_template_passes_the_official_mjml_validator_in_strict_mode(
    cfg: Config, tmp_path: Path
) -> None:
    mjml = tools.mjml()
    source = tmp_path / "confirm.mjml"
    source.write_text(confirm_mjml(cfg), encoding="utf-8")

    result = run(mjml, "--validate", "strict", str(source))

    assert result.returncode == 0, result.stdout + result.stderr


def test_official_mjml_and_mjml_python_give_readers_the_same_text_links_and_images(
    issue_email: Email, tmp_path: Path
) -> None:
    mjml = tools.mjml()
    source = tmp_path / f"{issue_email.name}.mjml"
    source.write_text(issue_email.mjml, encoding="utf-8")

    result = run(mjml, "--stdout", "--config.validationLevel=strict", str(source))
    assert result.returncode == 0, result.stderr
    official, ours = Page_(result.stdout), Page_(issue_email.html)

    assert ours.text == official.text
    assert ours.links == official.links
    assert ours.images == official.images
    assert ours.lang == official.lang == ("en", "ltr")
    assert all(alt for _, alt in ours.images), "every image has alt text"
    assert "fonts.googleapis.com" not in result.stdout + issue_email.html


def test_confirmation_email_reads_the_same_from_both_mjml_renderers(
    cfg: Config, tmp_path: Path
) -> None:
    mjml = tools.mjml()
    source = tmp_path / "confirm.mjml"
    source.write_text(confirm_mjml(cfg), encoding="utf-8")

    result = run(mjml, "--stdout", "--config.validationLevel=strict", str(source))
    _, ours, _ = render.render_confirm(cfg.newsletters["ml-issues"], cfg.settings,
                                       confirm_url="https://news.example.com/confirm/abc.DEF",
                                       templates_dir=cfg.templates_dir)

    assert result.returncode == 0, result.stderr
    assert Page_(ours).text == Page_(result.stdout).text
    assert Page_(ours).links == Page_(result.stdout).links


# --- (b) a real browser at phone and desktop widths ---------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = tools.chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable,
                                              args=tools.CHROMIUM_ARGS)
        yield launched
        launched.close()


def serve_images_offline(route: Route) -> None:
    """Every image URL gets a PNG of the size its name says (default 1200x600); nothing else
    leaves the machine."""
    url = route.request.url
    if route.request.resource_type != "image":
        route.abort()
        return
    size = re.search(r"(\d+)x(\d+)", url.rsplit("/", 1)[-1])
    width, height = (int(size[1]), int(size[2])) if size else (1200, 600)
    route.fulfill(status=200, content_type="image/png", body=tools.png(width, height))


def open_email(browser: Browser, page_html: str, *, width: int, **options: Any) -> Page:
    page = browser.new_page(viewport={"width": width, "height": 900}, **options)
    page.route("http*://**/*", serve_images_offline)
    page.set_content(page_html, wait_until="load")
    return page


# Columns wider than the screen, and elements that stick out of their column unless a scroll
# box of their own holds them. (The rounded card hides what overflows it, so the page itself
# never scrolls: scrollWidth alone would miss a cut-off column.)
OVERFLOWING = """() => {
  const out = [];
  for (const column of document.querySelectorAll('.mj-column-per-100')) {
    const box = column.getBoundingClientRect();
    if (box.left < 0 || box.right > window.innerWidth) {
      out.push(`column ${Math.round(box.left)}-${Math.round(box.right)} wider than the screen`);
    }
    for (const el of column.querySelectorAll('*')) {
      const r = el.getBoundingClientRect();
      if (r.width === 0 || (r.left >= box.left - 0.5 && r.right <= box.right + 0.5)) continue;
      let scroller = el.parentElement, held = false;
      while (scroller && scroller !== column) {
        const o = getComputedStyle(scroller).overflowX;
        if (o === 'auto' || o === 'scroll') {
          const s = scroller.getBoundingClientRect();
          held = s.left >= box.left - 0.5 && s.right <= box.right + 0.5;
          break;
        }
        scroller = scroller.parentElement;
      }
      if (!held) out.push(`${el.tagName} ${Math.round(r.left)}-${Math.round(r.right)} ` +
                          `outside ${Math.round(box.left)}-${Math.round(box.right)}: ` +
                          (el.textContent || el.getAttribute('src') || '').slice(0, 40));
    }
  }
  return out;
}"""

IMAGES = """() => Array.from(document.images).map(img => {
  const r = img.getBoundingClientRect();
  const c = img.closest('.mj-column-per-100').getBoundingClientRect();
  return {src: img.src, loaded: img.complete && img.naturalWidth > 0,
          inside: r.left >= c.left - 0.5 && r.right <= c.right + 0.5, width: r.width};
})"""


@pytest.mark.browser
@pytest.mark.parametrize("width", WIDTHS)
def test_email_fits_the_screen_with_images_in_the_column_and_code_intact(
    browser: Browser, issue_email: Email, width: int
) -> None:
    html, _ = issue_email.parts()
    page = open_email(browser, html, width=width)
    try:
        page.screenshot(path=tools.artifact(f"{issue_email.name}-{width}px.png"), full_page=True)
        scroll_width = page.evaluate("document.documentElement.scrollWidth")
        overflowing = page.evaluate(OVERFLOWING)
        images = page.evaluate(IMAGES)
        code = page.eval_on_selector_all("pre", "blocks => blocks.map(b => b.innerText)")
        wrapped = page.eval_on_selector_all(
            "pre", "blocks => blocks.every(b => b.scrollWidth <= b.clientWidth)")
    finally:
        page.close()

    assert scroll_width <= width
    assert overflowing == []
    assert images and all(image["loaded"] for image in images), images
    assert [image for image in images if not image["inside"]] == []
    for image in images:  # `{width=64}` in the Markdown, 64 px on every screen
        if image["src"].endswith("icon-64x64.png"):
            assert image["width"] == 64
    for block in CODE[issue_email.name]:
        assert block in [text.rstrip("\n") for text in code]
    assert wrapped, "long code lines wrap inside their box instead of scrolling the page"


@pytest.mark.browser
def test_dark_mode_darkens_the_card_and_keeps_text_and_links_readable(
    browser: Browser, issue_email: Email
) -> None:
    html, _ = issue_email.parts()
    page = open_email(browser, html, width=375, color_scheme="dark")
    try:
        page.screenshot(path=tools.artifact(f"{issue_email.name}-375px-dark.png"), full_page=True)
        card = page.eval_on_selector(".mailer-card", "e => getComputedStyle(e).backgroundColor")
        text = page.eval_on_selector(".mailer-text div", "e => getComputedStyle(e).color")
        link = page.eval_on_selector(".mailer-text a", "e => getComputedStyle(e).color")
    finally:
        page.close()

    assert card == "rgb(31, 41, 55)"
    for color in (text, link):
        assert colors.contrast(hex_of(color), colors.DARK_CARD) >= colors.READABLE, color


def hex_of(rgb: str) -> str:
    return "#" + "".join(f"{int(v):02x}" for v in re.findall(r"\d+", rgb)[:3])


# --- (c) SpamAssassin ---------------------------------------------------------------------------


def test_spamassassin_scores_the_whole_message_well_below_spam(
    issue_email: Email, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spamassassin = tools.spamassassin()
    # -L: local tests only (no DNS blocklists, no network); a private home keeps the run
    # from reading or training anyone's Bayes database.
    result = run(spamassassin, "-L", "-t",
                 f"--prefspath={tmp_path / 'user_prefs'}", input=issue_email.message.decode(),
                 env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})

    assert result.returncode in (0, 1), result.stderr
    report = result.stdout[result.stdout.rindex("Content analysis details:"):]
    score = float(re.search(r"\((-?[\d.]+) points", report)[1])  # type: ignore[index]
    rules = re.findall(r"^\s*(-?[\d.]+)\s+([A-Z0-9_]+)\s", report, re.M)
    with capsys.disabled():
        print(f"\nSpamAssassin {issue_email.name}: {score} points; rules fired: "
              + ", ".join(f"{name} {points}" for points, name in rules))
    assert score < 1.0, report


# --- (d) the text part --------------------------------------------------------------------------


def test_text_part_has_every_url_of_the_html_part_no_tags_and_short_lines(
    issue_email: Email,
) -> None:
    html, text = issue_email.parts()
    page = Page_(html)
    urls = {*page.links, *(src for src, _ in page.images if src != LOGO)}

    missing = sorted(url for url in urls if url not in text)
    long_lines = [line for line in text.splitlines() if len(line) > 78 and "://" not in line]

    assert urls and missing == []
    assert TAG.search(text) is None
    assert long_lines == []
    assert re.search(r"^\[1\] https://", text, re.M), "links listed as numbered references"
