"""A reader on a phone, in headless Chromium: subscribe, confirm from the email, unsubscribe."""

from __future__ import annotations

import asyncio
import io
import os
import re
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from playwright.sync_api import Browser, Page, ViewportSize, expect, sync_playwright
from rich.console import Console

from mailer import tokens
from mailer.cli import send as cli_send
from mailer.config import Config
from mailer.states import SubscriptionStatus
from mailer.store import Store
from tests import storehelp
from tests.conftest import Project
from tests.smtpd import RecordingServer, ServerThread
from tests.test_tokens import confirm_token_signed_at
from tests.test_web import LiveServer

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync"]
PHONE: ViewportSize = {"width": 375, "height": 667}
SMALL_PHONE: ViewportSize = {"width": 320, "height": 568}
NOW = datetime(2026, 12, 8, 9, 0, tzinfo=UTC)
CONFIRM_LINK = re.compile(r"https?://\S+/confirm/[A-Za-z0-9_.-]+")
READER = "reader@example.com"
KEY = "test-key"  # what Project.configure puts in MAILER_SECRET_KEY
T = TypeVar("T")


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    # What the browser sees does not depend on the database; test_web covers PostgreSQL.
    return f"sqlite:///{tmp_path}/project/var/mailer.db"


@pytest.fixture
def chromium() -> Iterator[Browser]:
    """Debian's chromium driven by Playwright; never a downloaded browser."""
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing (apt-get install chromium)"
        if os.environ.get("MAILER_TEST_REQUIRE_BROWSER") == "1":
            pytest.fail(f"MAILER_TEST_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(f"headless browser test skipped: {reason}")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    # Playwright's sync API keeps an event loop running in this thread: use another one.
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def status_of(config: Config, email: str) -> SubscriptionStatus | None:
    async def read() -> SubscriptionStatus | None:
        store = await Store.open(config.settings.database_url)
        try:
            sub = await storehelp.subscription_of(store, email, "ml-issues")
            return sub.status if sub else None
        finally:
            await store.close()

    return run(read())


def send_now(config: Config) -> int:
    """`mailer send-now ml-issues --yes`, in process."""
    return run(cli_send.send_now(
        config, config.newsletter("ml-issues"), issue_path=None, dry_run=False, to=None,
        yes=True, resend_unknown=False, now=NOW, console=Console(file=io.StringIO())))


def fits_the_phone(page: Page) -> None:
    """No sideways scrolling, body text of at least 16px, buttons big enough for a thumb."""
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    assert page.evaluate("parseFloat(getComputedStyle(document.body).fontSize)") >= 16
    for box in (b.bounding_box() for b in page.get_by_role("button").all()):
        assert box is not None and box["height"] >= 44


def test_a_reader_subscribes_confirms_and_unsubscribes_on_a_phone(
    project: Project, chromium: Browser,
) -> None:
    with ServerThread() as smtp, LiveServer(project, smtp_url=f"smtp://127.0.0.1:{smtp.port}") \
            as site:
        page = chromium.new_page(viewport=PHONE, is_mobile=True, has_touch=True)

        page.goto(f"{site.url}/subscribe/ml-issues")
        expect(page.get_by_role("heading", level=1)).to_have_text(
            "Subscribe to Machine Learning Issues")
        fits_the_phone(page)
        page.get_by_label("Email address").fill(READER)
        page.get_by_label("Name").fill("Rea Der")
        page.get_by_role("button", name="Subscribe").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Check your inbox")
        assert READER not in page.content()
        assert status_of(site.config, READER) == SubscriptionStatus.PENDING

        [mail] = smtp.wait_for_messages(1)
        text = mail.parsed().get_body(preferencelist=("plain",))
        assert text is not None and mail.rcpt_tos == [READER]
        [link] = CONFIRM_LINK.findall(text.get_content())
        # Opening the link is all it takes: the page's script sends the confirming POST,
        # which its Content-Security-Policy lets run (and nothing else).
        methods: list[str] = []
        page.on("request", lambda r: methods.append(r.method) if "/confirm/" in r.url else None)
        blocked: list[str] = []
        page.on("console", lambda m: blocked.append(m.text) if "Content Security" in m.text
                else None)
        page.goto(link)
        expect(page.get_by_role("heading", level=1)).to_have_text("You are subscribed")
        fits_the_phone(page)
        assert status_of(site.config, READER) == SubscriptionStatus.CONFIRMED
        assert methods == ["GET", "POST"] and blocked == []

        assert send_now(site.config) == 0
        issue = smtp.wait_for_messages(2)[1].parsed()
        assert issue["To"] == f"Rea Der <{READER}>"
        page.goto(issue["List-Unsubscribe"].strip("<>"))
        expect(page.get_by_role("heading", level=1)).to_have_text(
            "Unsubscribe from Machine Learning Issues?")
        expect(page.get_by_role("button")).to_have_count(1)
        fits_the_phone(page)
        assert status_of(site.config, READER) == SubscriptionStatus.CONFIRMED  # GET: no change

        page.get_by_role("button", name="Unsubscribe").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("You are unsubscribed")
        assert status_of(site.config, READER) == SubscriptionStatus.UNSUBSCRIBED

        page.get_by_role("button", name="Resubscribe").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Welcome back")
        assert status_of(site.config, READER) == SubscriptionStatus.CONFIRMED


def sign_up(site: LiveServer, smtp: RecordingServer, email: str) -> str:
    """Sign up over HTTP; the confirmation link the email brought."""
    answer = httpx.post(f"{site.url}/subscribe/ml-issues", data={"email": email}, timeout=30)
    assert answer.status_code == 200
    [mail] = [m for m in smtp.wait_for_messages(1) if m.rcpt_tos == [email]]
    text = mail.parsed().get_body(preferencelist=("plain",))
    assert text is not None
    [link] = CONFIRM_LINK.findall(text.get_content())
    return str(link)


def test_without_javascript_the_confirm_page_waits_for_its_button_which_confirms(
    project: Project, chromium: Browser,
) -> None:
    with ServerThread() as smtp, LiveServer(project, smtp_url=f"smtp://127.0.0.1:{smtp.port}") \
            as site:
        link = sign_up(site, smtp, READER)
        page = chromium.new_page(viewport=SMALL_PHONE, is_mobile=True, has_touch=True,
                                 java_script_enabled=False)

        page.goto(link)
        expect(page.get_by_role("heading", level=1)).to_have_text("Confirm your subscription")
        fits_the_phone(page)
        page.reload()  # a scanner, a preview, a second look: still nothing changes
        assert status_of(site.config, READER) == SubscriptionStatus.PENDING

        page.get_by_role("button", name="Confirm my subscription").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("You are subscribed")
        assert status_of(site.config, READER) == SubscriptionStatus.CONFIRMED


def test_a_forged_or_expired_confirm_link_gets_400_on_get_and_post_in_the_browser(
    project: Project, chromium: Browser,
) -> None:
    with ServerThread() as smtp, LiveServer(project, smtp_url=f"smtp://127.0.0.1:{smtp.port}") \
            as site:
        link = sign_up(site, smtp, READER)
        token = link.rsplit("/", 1)[1]
        subscription_id = tokens.read_confirm_token(KEY, token, max_age=timedelta(days=1))
        expired = confirm_token_signed_at(KEY, subscription_id,
                                          datetime.now(UTC) - timedelta(days=8))
        forged = token[:-1] + ("A" if token[-1] != "A" else "B")
        page = chromium.new_page(viewport=PHONE, is_mobile=True, has_touch=True)

        for bad, why in ((forged, "is not valid"), (expired, "has expired")):
            url = f"{site.url}/confirm/{bad}"
            opened = page.goto(url)
            assert opened is not None and opened.status == 400
            expect(page.get_by_role("heading", level=1)).to_have_text("This did not work")
            expect(page.get_by_text(why)).to_be_visible()
            assert page.request.post(url).status == 400

        assert status_of(site.config, READER) == SubscriptionStatus.PENDING
