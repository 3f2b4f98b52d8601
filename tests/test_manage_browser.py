"""A reader manages their subscriptions in headless Chromium on a 320 px phone, from the
link in an issue's footer: leave one newsletter, keep another, rename, download, erase;
and the page's accessibility (names of controls, contrast, visible focus, tab order)."""

from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect
from starlette.applications import Starlette

from mailer.states import SubscriptionStatus
from mailer.store import Store
from tests import storehelp
from tests.conftest import Project
from tests.smtpd import ServerThread
from tests.test_browser import KEY, SMALL_PHONE, chromium, fits_the_phone, run, send_now
from tests.test_manage import ADA, BOB, SECOND, mentions, with_second_newsletter
from tests.test_web import LiveServer
from tests.tools import run_cli

pytestmark = pytest.mark.browser
__all__ = ["chromium"]  # the fixture, shared with test_browser

# WCAG 2.2 AA: 4.5:1 for text, 3:1 for large text (24 px, or 18.66 px bold).
CONTRAST_PROBLEMS = """() => {
  const rgb = c => c.match(/[\\d.]+/g).map(Number);
  const lum = ([r, g, b]) => {
    const f = v => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const background = el => {
    for (; el; el = el.parentElement) {
      const c = rgb(getComputedStyle(el).backgroundColor);
      if (c.length < 4 || c[3] > 0) return c.slice(0, 3);
    }
    return [255, 255, 255];
  };
  const problems = [];
  for (const el of document.querySelectorAll("body *")) {
    const own = [...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
    if (!own || !el.getClientRects().length) continue;
    const style = getComputedStyle(el);
    const [a, b] = [lum(rgb(style.color)), lum(background(el))];
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    const size = parseFloat(style.fontSize), bold = Number(style.fontWeight) >= 700;
    const large = size >= 24 || (bold && size >= 18.66);
    const text = el.textContent.trim().slice(0, 30);
    if (ratio < (large ? 3 : 4.5)) problems.push(`${el.tagName} "${text}" ${ratio.toFixed(2)}`);
  }
  return problems;
}"""

UNNAMED_CONTROLS = """() => [...document.querySelectorAll("input, button, select, textarea")]
  .filter(el => el.type !== "hidden" && !el.closest("[aria-hidden=true]"))
  .filter(el => {
    const labelled = el.labels && [...el.labels].some(l => l.textContent.trim());
    const own = el.tagName === "BUTTON" && el.textContent.trim();
    return !(labelled || own || (el.getAttribute("aria-label") || "").trim());
  }).map(el => el.outerHTML)"""

CONTROLS = """() => [...document.querySelectorAll("a[href], input, button, select, textarea")]
  .filter(el => el.type !== "hidden" && el.tabIndex >= 0 && el.getClientRects().length)
  .map(el => el.outerHTML)"""

FOCUSED = """() => {
  const el = document.activeElement, style = getComputedStyle(el);
  return [el.outerHTML, style.outlineStyle, parseFloat(style.outlineWidth)];
}"""


def accessible(page: Page) -> None:
    """Every control named, enough contrast, and the Tab key reaches every control, each
    with a visible focus ring."""
    fits_the_phone(page)
    assert page.evaluate(UNNAMED_CONTROLS) == []
    assert page.evaluate(CONTRAST_PROBLEMS) == []
    controls = page.evaluate(CONTROLS)
    reached = []
    page.locator("body").focus()
    for _ in range(len(controls)):
        page.keyboard.press("Tab")
        html, outline, width = page.evaluate(FOCUSED)
        assert outline != "none" and width >= 2, html
        reached.append(html)
    assert reached == controls


def cli(*args: str, project: Project) -> subprocess.CompletedProcess[str]:
    # Off this thread: Playwright's sync API keeps an event loop running here.
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(run_cli, "--config", str(project.config_path), *args,
                           cwd=project.root, env={"MAILER_SECRET_KEY": KEY, "COLUMNS": "200",
                                                  "MAILER_CONFIG": None}).result()


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    # What the browser sees does not depend on the database; test_manage covers PostgreSQL.
    return f"sqlite:///{tmp_path}/project/var/mailer.db"


@pytest.mark.slow
def test_a_reader_manages_their_subscriptions_and_erases_themselves_on_a_small_phone(
    project: Project, chromium: Browser, tmp_path: Path,
) -> None:
    with ServerThread() as smtp, LiveServer(project, smtp_url=f"smtp://127.0.0.1:{smtp.port}") \
            as site:
        site.config = with_second_newsletter(project, smtp_url=f"smtp://127.0.0.1:{smtp.port}",
                                             base_url=site.url)
        app = site.server.config.app
        assert isinstance(app, Starlette)
        app.state.config = site.config  # as the daemon swaps it on reload

        async def prepare() -> None:
            async with Store.open(site.config.settings.database_url) as store:
                await store.add_subscriber(ADA, newsletter="ml-issues", name="Ada",
                                           confirmed=True)
                await store.add_subscriber(ADA, newsletter=SECOND, confirmed=True)
                await store.add_subscriber(BOB, newsletter="ml-issues", confirmed=True)

        async def state() -> tuple[dict[str, Any], list[tuple[str, str]], dict[str, int]]:
            async with Store.open(site.config.settings.database_url) as store:
                subs = {n: await storehelp.subscription_of(store, ADA, n)
                        for n in ("ml-issues", SECOND)}
                rows = [(r.email, r.name) async for r in store.subscribers(
                    newsletter="ml-issues")]
                return ({n: s.status if s else None for n, s in subs.items()}, rows,
                        await mentions(store, ADA))

        run(prepare())
        assert send_now(site.config) == 0
        [issue] = [m.parsed() for m in smtp.wait_for_messages(2) if m.rcpt_tos == [ADA]]
        html = issue.get_body(preferencelist=("html",))
        assert html is not None
        page = chromium.new_page(viewport=SMALL_PHONE, is_mobile=True, has_touch=True)

        # The footer's link, clicked in the email as a mail client shows it.
        page.set_content(html.get_content())
        page.get_by_role("link", name="Manage your subscriptions").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Your subscriptions")
        before = run(state())
        assert before[0] == {"ml-issues": SubscriptionStatus.CONFIRMED,
                             SECOND: SubscriptionStatus.CONFIRMED}
        accessible(page)
        page.reload()
        assert run(state()) == before  # opening it, twice, changed nothing
        for scheme in ("dark", "light"):
            page.emulate_media(color_scheme=scheme)
            assert page.evaluate(CONTRAST_PROBLEMS) == [], scheme

        page.get_by_role("button", name="Leave Machine Learning Issues").click()
        expect(page.get_by_role("status")).to_have_text("You left Machine Learning Issues.")
        expect(page.get_by_role("button", name="Leave Weekly Notes")).to_be_visible()
        accessible(page)
        assert run(state())[0] == {"ml-issues": SubscriptionStatus.UNSUBSCRIBED,
                                   SECOND: SubscriptionStatus.CONFIRMED}

        page.get_by_label("Name").fill("Ada Lovelace")
        page.get_by_role("button", name="Save my name").click()
        expect(page.get_by_role("status")).to_have_text("Your name is saved.")
        expect(page.get_by_label("Name")).to_have_value("Ada Lovelace")
        assert (ADA, "Ada Lovelace") in run(state())[1]

        with page.expect_download() as download:
            page.get_by_role("button", name="Download my data").click()
        data = json.loads(Path(download.value.path()).read_text(encoding="utf-8"))
        assert (data["email"], data["name"]) == (ADA, "Ada Lovelace")
        assert {s["newsletter"]: s["status"] for s in data["subscriptions"]} == {
            "ml-issues": "unsubscribed", SECOND: "confirmed"}
        [delivery] = data["deliveries"]
        assert delivery["status"] == "sent" and delivery["sent_at"]
        assert BOB not in json.dumps(data)

        page.get_by_label("Yes, erase my address and my data").check()
        page.get_by_role("button", name="Delete me").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Your address is erased")
        fits_the_phone(page)
        statuses, rows, left = run(state())
        assert statuses == {"ml-issues": None, SECOND: None}
        assert rows == [(BOB, "")] and set(left.values()) == {0}

        csv = tmp_path / "back.csv"
        csv.write_text(f"email,name\n{ADA},Ada\n", encoding="utf-8")
        refused = cli("subscribers", "import", str(csv), "--list", "ml-issues", "--confirmed",
                      project=project)
        assert refused.returncode == 2
        assert "line 2:" in refused.stderr and "erased at its owner's request" in refused.stderr
