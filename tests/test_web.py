"""The HTTP endpoints over real HTTP: the app, a real SMTP server, SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import pytest
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from mailer import tokens
from mailer.cli import send as cli_send
from mailer.config import Config
from mailer.states import SubscriptionStatus
from mailer.store import Store, SubscriberRow
from mailer.web import HONEYPOT, MAX_BODY, create_app
from tests import storehelp
from tests.conftest import Project
from tests.smtpd import RecordingServer, ServerThread
from tests.test_tokens import confirm_token_signed_at
from tests.tools import Listening, settled_client, start_mailer_http

KEY = "test-key"  # what Project.configure puts in MAILER_SECRET_KEY
NOW = datetime(2026, 12, 8, 9, 0, tzinfo=UTC)  # the sample issue is due
LATER = datetime(2026, 12, 22, 9, 0, tzinfo=UTC)  # and the second one written by tests
CONFIRM_LINK = re.compile(r"https?://\S+/confirm/[A-Za-z0-9_.-]+")
SmtpUrl = Callable[[RecordingServer], str]

# Every one must get a 400 naming the email field, store nothing and send nothing.
BAD_ADDRESSES = [
    "", "   ", "plainaddress", "@example.com", "ada@", "ada@example", "ada@@example.com",
    "ada example@example.com",
    "ada@example.com\r\nBcc: victim@example.org",  # header injection
    "ada@example.com\nBcc: victim@example.org",
    "ada@example.com\rBcc: victim@example.org",
    "ada@example.com\u2028Bcc: victim@example.org",  # a Unicode line separator
    "ada\x00@example.com",
    "a" * 300 + "@example.com",  # local part past RFC 5321's 64 octets
    "ada@" + "a" * 300 + ".com",
    "\u0430da@example.com",  # Cyrillic а
    "ada@ex\u0430mple.com",  # Cyrillic а inside a Latin domain label
    "\uff41\uff44\uff41@example.com",  # full-width letters
    "ada\uff20example.com",  # full-width at-sign
    "\u202eada@example.com",  # right-to-left override
    "ada\u200b@example.com",  # zero-width space
    "ada@example..com", ".ada@example.com", "ada.@example.com", "ada@-example.com",
    "Ada <ada@example.com>", "ada@example.com, bob@example.com", "ada@[127.0.0.1]",
    "ada@localhost", "ada@example.invalid", '"ada"@example.com',
    "<script>alert(1)</script>@example.com",
]


def one_click_form() -> tuple[bytes, str]:
    return b"List-Unsubscribe=One-Click", "application/x-www-form-urlencoded"


def one_click_multipart() -> tuple[bytes, str]:
    # The example of RFC 8058 §8.
    boundary = "---FormBoundaryjWmhtjORrn"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\n"
            f"One-Click\r\n--{boundary}--\r\n")
    return body.encode(), f"multipart/form-data; boundary={boundary}"


@dataclass
class Site:
    """The app under test with its database, its SMTP server and an HTTP client."""

    project: Project
    config: Config
    store: Store
    client: httpx.AsyncClient
    smtpd: RecordingServer

    async def sign_up(self, email: str, **fields: str) -> httpx.Response:
        return await self.client.post("/subscribe/ml-issues", data={"email": email, **fields})

    def mails_to(self, email: str) -> list[EmailMessage]:
        return [m.parsed() for m in self.smtpd.messages if m.rcpt_tos == [email]]

    def confirm_link(self, email: str) -> str:
        texts = [m.get_body(preferencelist=("plain",)) for m in self.mails_to(email)]
        links = [link for t in texts if t for link in CONFIRM_LINK.findall(t.get_content())]
        assert links, f"no confirmation email reached {email}"
        return links[-1]

    async def rows(self) -> list[SubscriberRow]:
        return [row async for row in self.store.subscribers(newsletter="ml-issues")]

    async def status(self, email: str) -> SubscriptionStatus | None:
        sub = await storehelp.subscription_of(self.store, email, "ml-issues")
        return sub.status if sub else None

    async def add(self, *emails: str, confirmed: bool = True) -> list[int]:
        return [(await self.store.add_subscriber(e, newsletter="ml-issues",
                                                 confirmed=confirmed)).id for e in emails]

    async def send_now(self, now: datetime = NOW, *, exit_code: int = 0
                       ) -> dict[str, EmailMessage]:
        """`mailer send-now ml-issues --yes`, in process; the messages it sent, by recipient."""
        before = len(self.smtpd.messages)
        code = await cli_send.send_now(
            self.config, self.config.newsletter("ml-issues"), issue_path=None, dry_run=False,
            to=None, yes=True, resend_unknown=False, now=now,
            console=Console(file=io.StringIO(), width=200))
        assert code == exit_code
        return {m.rcpt_tos[0]: m.parsed() for m in self.smtpd.messages[before:]}

    def write_second_issue(self) -> None:
        self.project.write_issue("2026-12-21-second-issue.md", "---\nsubject: Second issue\n"
                                 "status: ready\nsend_after: 2026-12-21\n---\nMore news.\n")


@pytest.fixture
async def site(project: Project, store: Store, smtpd: RecordingServer,
               smtp_url_of: SmtpUrl) -> AsyncIterator[Site]:
    # Real HTTP over a loopback socket: uvicorn as `mailer run` configures it, in this loop.
    listening = Listening()
    config = project.configure(smtp_url=smtp_url_of(smtpd), subscribe_rate_per_minute=0,
                               base_url=listening.url)
    app = create_app(config, store=store)
    async with settled_client(app, listening, config.settings) as c:
        yield Site(project, config, store, c, smtpd)


def path_of(url: str) -> str:
    return urlsplit(url).path


def forge(token: str) -> str:
    last = token[-1]
    return token[:-1] + ("A" if last != "A" else "B")


# -- subscribe → confirm → send ------------------------------------------------------------------


async def test_the_subscribe_page_is_a_phone_ready_form_with_a_hidden_honeypot(
    site: Site,
) -> None:
    page = await site.client.get("/subscribe/ml-issues")

    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    html = page.text
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
    assert '<form method="post" action="/subscribe/ml-issues">' in html
    assert 'name="email" type="email" required' in html
    assert '<label for="email">' in html and '<label for="name">' in html
    assert f'name="{HONEYPOT}" type="text" tabindex="-1"' in html
    assert "Machine Learning Issues" in html


async def test_subscribe_then_the_emailed_link_confirms_and_the_next_send_now_includes_them(
    site: Site,
) -> None:
    await site.add("grace@example.com")

    answer = await site.sign_up("ada@example.com", name="Ada")
    assert answer.status_code == 200
    assert "Check your inbox" in answer.text
    assert await site.status("ada@example.com") == SubscriptionStatus.PENDING

    link = site.confirm_link("ada@example.com")
    opened = await site.client.get(link)
    assert opened.status_code == 200 and "Confirm your subscription" in opened.text
    assert await site.status("ada@example.com") == SubscriptionStatus.PENDING
    confirmed = await site.client.post(link)
    assert confirmed.status_code == 200
    assert "You are subscribed" in confirmed.text
    assert await site.status("ada@example.com") == SubscriptionStatus.CONFIRMED

    sent = await site.send_now()
    assert sorted(sent) == ["ada@example.com", "grace@example.com"]
    assert sent["ada@example.com"]["To"] == "Ada <ada@example.com>"


async def test_a_json_sign_up_gets_a_json_answer_and_the_confirmation_email(site: Site) -> None:
    answer = await site.client.post("/subscribe/ml-issues", json={"email": "ada@example.com"})

    assert answer.status_code == 200
    assert answer.json() == {"status": "ok", "message": "check your inbox to confirm"}
    assert len(site.mails_to("ada@example.com")) == 1


async def test_the_answer_is_identical_for_a_new_a_pending_and_a_confirmed_address(
    site: Site,
) -> None:
    await site.add("confirmed@example.com")
    await site.sign_up("pending@example.com")
    emails = ("new@example.com", "pending@example.com", "confirmed@example.com")

    forms = [await site.sign_up(email) for email in emails]
    jsons = [await site.client.post("/subscribe/ml-issues", json={"email": e}) for e in emails]

    for answers in (forms, jsons):
        assert len({(a.status_code, a.headers["content-type"], a.text) for a in answers}) == 1
        assert all(a.status_code == 200 for a in answers)
    assert [len(site.mails_to(e)) for e in emails] == [1, 1, 0]  # pending: once per 10 min
    assert await site.status("confirmed@example.com") == SubscriptionStatus.CONFIRMED


async def test_a_filled_in_honeypot_gets_the_usual_answer_but_nothing_is_stored_or_sent(
    site: Site,
) -> None:
    human = await site.sign_up("ada@example.com")
    bot = await site.sign_up("bot@example.com", **{HONEYPOT: "http://spam.example"})

    assert (bot.status_code, bot.text) == (human.status_code, human.text)
    assert await site.status("bot@example.com") is None
    assert site.mails_to("bot@example.com") == []


# -- tokens --------------------------------------------------------------------------------------


async def test_forged_expired_and_swapped_confirm_links_get_400_and_change_nothing(
    site: Site,
) -> None:
    await site.sign_up("ada@example.com")
    await site.sign_up("bob@example.com")
    ada = path_of(site.confirm_link("ada@example.com")).rsplit("/", 1)[1]
    bob = path_of(site.confirm_link("bob@example.com")).rsplit("/", 1)[1]
    ada_id = tokens.read_confirm_token(KEY, ada, max_age=timedelta(days=1))
    eight_days_ago = datetime.now(UTC) - timedelta(days=8)
    bad = {
        "forged signature": forge(ada),
        "signed with another key": tokens.confirm_token("another-key", ada_id),
        "expired": confirm_token_signed_at(KEY, ada_id, eight_days_ago),
        "an unsubscribe token": tokens.unsubscribe_token(KEY, ada_id),
        "bob's payload with ada's signature": bob.split(".")[0] + "." + ada.split(".", 1)[1],
        "not a token at all": "hello",
        "a subscription that does not exist": tokens.confirm_token(KEY, 999_999),
    }
    before = await site.rows()

    for what, token in bad.items():
        for method in ("GET", "POST"):
            answer = await site.client.request(method, f"/confirm/{quote(token)}")
            assert answer.status_code == 400, (method, what)
            assert "This did not work" in answer.text, (method, what)
            assert re.search(r"not valid|expired", answer.text), (method, what)
            assert "<script" not in answer.text and "<form" not in answer.text, (method, what)

    assert await site.rows() == before
    for method in ("GET", "POST"):
        expired = await site.client.request(method, f"/confirm/{bad['expired']}")
        assert "has expired; please subscribe again" in expired.text


async def test_opening_a_confirm_link_changes_nothing_and_its_form_posts_to_confirm(
    site: Site,
) -> None:
    await site.sign_up("ada@example.com")
    link = site.confirm_link("ada@example.com")

    # What a mail scanner or a link preview does: GET and HEAD, any number of times.
    opened = [await site.client.get(link) for _ in range(3)]
    head = await site.client.head(link)
    as_json = await site.client.get(link, headers={"accept": "application/json"})

    assert [p.status_code for p in opened] == [200] * 3 and head.status_code == 200
    assert as_json.json() == {"status": "pending", "newsletter": "ml-issues"}
    assert await site.status("ada@example.com") == SubscriptionStatus.PENDING
    html = opened[0].text
    assert html.count("<form") == 1 and html.count("<button") == 1
    assert f'<form id="confirm" method="post" action="{path_of(link)}">' in html
    assert "Confirm your subscription" in html and "Machine Learning Issues" in html

    first = await site.client.post(link)  # what the page's script (or its button) sends
    when = await storehelp.subscription_of(site.store, "ada@example.com", "ml-issues")
    again = await site.client.post(link, json={})
    reopened = await site.client.get(link)

    assert first.status_code == 200 and "You are subscribed" in first.text
    assert again.json() == {"status": "confirmed", "newsletter": "ml-issues"}
    assert reopened.status_code == 200 and "You are subscribed" in reopened.text
    after = await storehelp.subscription_of(site.store, "ada@example.com", "ml-issues")
    assert when is not None and after is not None
    assert after.status == SubscriptionStatus.CONFIRMED
    assert after.confirmed_at == when.confirmed_at  # idempotent: the first time stays


async def test_the_confirm_page_allows_its_one_script_by_hash_and_no_other_page_any(
    site: Site,
) -> None:
    await site.sign_up("ada@example.com")
    link = site.confirm_link("ada@example.com")

    opened = await site.client.get(link)
    confirmed = await site.client.post(link)

    [script] = re.findall(r"<script>(.*?)</script>", opened.text, re.S)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    [csp] = opened.headers.get_list("content-security-policy")  # one policy, not two
    assert csp.endswith(f"; script-src 'sha256-{digest}'")
    assert "default-src 'none'" in csp and "form-action 'self'" in csp
    assert "unsafe-inline" not in csp.split("script-src")[1]
    assert "frame-ancestors 'none'" in csp
    assert "script-src" not in confirmed.headers["content-security-policy"]
    assert "<script" not in confirmed.text


async def test_forged_and_swapped_unsubscribe_links_get_400_and_change_nothing(
    site: Site,
) -> None:
    ada_id, grace_id = await site.add("ada@example.com", "grace@example.com")
    ada = tokens.unsubscribe_token(KEY, ada_id)
    grace = tokens.unsubscribe_token(KEY, grace_id)
    bad = [forge(ada), tokens.unsubscribe_token("another-key", ada_id),
           tokens.confirm_token(KEY, ada_id), grace.split(".")[0] + "." + ada.split(".")[1],
           "hello"]
    before = await site.rows()

    for token in bad:
        for method in ("GET", "POST"):
            answer = await site.client.request(method, f"/unsubscribe/{token}",
                                               content=one_click_form()[0])
            assert answer.status_code == 400, (method, token)
            assert "This unsubscribe link is not valid" in answer.text
        assert (await site.client.post(f"/resubscribe/{token}")).status_code == 400

    assert await site.rows() == before


@pytest.mark.parametrize("body", [one_click_form, one_click_multipart],
                         ids=["urlencoded", "multipart"])
async def test_the_list_unsubscribe_url_of_a_sent_issue_works_with_a_one_click_post(
    site: Site, body: Callable[[], tuple[bytes, str]],
) -> None:
    await site.add("ada@example.com", "grace@example.com", "alan@example.org")
    issue = (await site.send_now())["ada@example.com"]
    assert issue["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    url = issue["List-Unsubscribe"].strip("<>")
    content, content_type = body()

    # A mail client's POST: the URL and the RFC 8058 body, no cookie, no form token.
    first = await site.client.post(url, content=content, headers={"content-type": content_type})
    when = (await storehelp.subscription_of(site.store, "ada@example.com", "ml-issues"))
    again = await site.client.post(url, content=content, headers={"content-type": content_type})

    assert (first.status_code, again.status_code) == (200, 200)
    assert "You are unsubscribed" in first.text
    assert await site.status("ada@example.com") == SubscriptionStatus.UNSUBSCRIBED
    after = await storehelp.subscription_of(site.store, "ada@example.com", "ml-issues")
    assert when is not None and after is not None
    assert after.unsubscribed_at == when.unsubscribed_at  # idempotent: the first time stays
    assert await site.status("grace@example.com") == SubscriptionStatus.CONFIRMED
    site.write_second_issue()
    assert sorted(await site.send_now(LATER)) == ["alan@example.org", "grace@example.com"]


async def test_opening_an_unsubscribe_link_changes_nothing_and_shows_one_button(
    site: Site,
) -> None:
    await site.add("ada@example.com")
    url = (await site.send_now())["ada@example.com"]["List-Unsubscribe"].strip("<>")

    pages = [await site.client.get(url) for _ in range(3)]
    head = await site.client.head(url)

    assert [p.status_code for p in pages] == [200, 200, 200] and head.status_code == 200
    html = pages[0].text
    assert html.count("<button") == 1 and html.count("<form") == 1
    assert f'<form method="post" action="{path_of(url)}">' in html
    assert "Unsubscribe from Machine Learning Issues?" in html
    assert await site.status("ada@example.com") == SubscriptionStatus.CONFIRMED


async def test_the_unsubscribed_page_offers_to_resubscribe_which_confirms_again(
    site: Site,
) -> None:
    [ada_id] = await site.add("ada@example.com")
    token = tokens.unsubscribe_token(KEY, ada_id)

    left = await site.client.post(f"/unsubscribe/{token}")
    assert f'<form method="post" action="/resubscribe/{token}">' in left.text
    opened_again = await site.client.get(f"/unsubscribe/{token}")
    assert "You are unsubscribed" in opened_again.text
    back = await site.client.post(f"/resubscribe/{token}")

    assert back.status_code == 200 and "Welcome back" in back.text
    assert await site.status("ada@example.com") == SubscriptionStatus.CONFIRMED


async def test_a_token_for_one_subscriber_never_touches_another(site: Site) -> None:
    ada_id, grace_id = await site.add("ada@example.com", "grace@example.com")
    await site.sign_up("alan@example.org")
    await site.sign_up("bob@example.org")

    await site.client.post(f"/unsubscribe/{tokens.unsubscribe_token(KEY, ada_id)}")
    await site.client.post(site.confirm_link("alan@example.org"))

    assert {r.email: r.status for r in await site.rows()} == {
        "ada@example.com": SubscriptionStatus.UNSUBSCRIBED,
        "grace@example.com": SubscriptionStatus.CONFIRMED,
        "alan@example.org": SubscriptionStatus.CONFIRMED,
        "bob@example.org": SubscriptionStatus.PENDING,
    }
    assert grace_id != ada_id


async def test_the_unsubscribe_link_of_a_test_copy_answers_but_changes_nothing(
    site: Site,
) -> None:
    await site.add("ada@example.com")
    before = await site.rows()
    token = tokens.unsubscribe_token(KEY, 0)  # what `send-now --to` puts in a test copy

    page = await site.client.get(f"/unsubscribe/{token}")
    post = await site.client.post(f"/unsubscribe/{token}", content=one_click_form()[0])

    assert (page.status_code, post.status_code) == (200, 200)
    assert "not on the list" in post.text
    assert await site.rows() == before


async def test_no_page_ever_shows_a_subscribers_address(site: Site) -> None:
    email = "ada.private@example.com"
    await site.sign_up(email, name="Ada Private")
    link = site.confirm_link(email)
    pages = [await site.sign_up(email), await site.client.get(link),
             await site.client.post(link), await site.client.get(link)]
    url = (await site.send_now())[email]["List-Unsubscribe"].strip("<>")
    pages += [await site.client.get(url), await site.client.post(url),
              await site.client.get(url), await site.client.get("/issues/ml-issues"),
              await site.client.get("/issues/ml-issues/2026-12-07-first-issue")]

    for answer in pages:
        assert answer.status_code == 200
        assert "ada.private" not in answer.text and "Ada Private" not in answer.text


# -- bad input -----------------------------------------------------------------------------------


async def test_malformed_addresses_get_400_naming_the_field_and_nothing_is_stored_or_sent(
    site: Site,
) -> None:
    assert len(BAD_ADDRESSES) >= 20
    for email in BAD_ADDRESSES:
        form = await site.sign_up(email)
        api = await site.client.post("/subscribe/ml-issues", json={"email": email})
        assert (form.status_code, api.status_code) == (400, 400), repr(email)
        assert "<p>Email: " in form.text, repr(email)
        assert api.json()["error"].startswith("email: "), repr(email)

    assert await site.rows() == []
    assert site.smtpd.messages == []


async def test_what_a_bad_address_quotes_back_is_escaped(site: Site) -> None:
    answer = await site.sign_up("<script>alert(1)</script>@example.com")

    assert answer.status_code == 400
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in answer.text
    assert "<script>" not in answer.text


@pytest.mark.parametrize(("name", "why"), [
    ("Ada\r\nBcc: victim@example.org", "line breaks"),
    ("Ada\x1b[31m", "control characters"),
    ("Ada \ud800", "control characters"),  # a lone surrogate: valid JSON, not storable
    ("A" * 201, "at most 200 characters"),
])
async def test_a_bad_name_gets_400_and_nothing_is_stored(site: Site, name: str, why: str
                                                         ) -> None:
    body = json.dumps({"email": "ada@example.com", "name": name})  # ASCII: "\ud800" escaped
    answer = await site.client.post("/subscribe/ml-issues", content=body,
                                    headers={"content-type": "application/json"})

    assert answer.status_code == 400
    assert answer.json()["error"].startswith("name: ") and why in answer.json()["error"]
    assert await site.rows() == [] and site.smtpd.messages == []


async def test_oversized_bodies_get_413_and_nothing_is_stored(site: Site) -> None:
    padding = "x" * (MAX_BODY + 1)
    [ada_id] = await site.add("ada@example.com")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked, counted as read
        for _ in range(MAX_BODY // 1024 + 2):
            yield b"email=ada%40example.com&name=" + b"x" * 1024

    declared = await site.sign_up("bob@example.com", name=padding)
    streamed = await site.client.post(
        "/subscribe/ml-issues", content=chunks(),
        headers={"content-type": "application/x-www-form-urlencoded"})
    unsubscribe = await site.client.post(f"/unsubscribe/{tokens.unsubscribe_token(KEY, ada_id)}",
                                         content=padding.encode())

    assert [declared.status_code, streamed.status_code, unsubscribe.status_code] == [413] * 3
    assert f"at most {MAX_BODY} bytes" in declared.text
    assert [r.email for r in await site.rows()] == ["ada@example.com"]
    assert await site.status("ada@example.com") == SubscriptionStatus.CONFIRMED
    assert site.smtpd.messages == []


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/xml",
                                          "application/x-www-form-urlencodedx"])
async def test_a_body_in_another_format_gets_415(site: Site, content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    answer = await site.client.post("/subscribe/ml-issues", content=b"email=ada%40example.com",
                                    headers=headers)

    assert answer.status_code == 415
    assert "application/x-www-form-urlencoded" in answer.text
    assert await site.rows() == []


@pytest.mark.parametrize("body", [b"{", b"[]", b'"ada@example.com"', b'{"email": 42}',
                                  b'{"email": ["ada@example.com"]}', b'{"email": {"a": 1}}',
                                  b"\xff\xfe", b'{"name": "Ada"}'])
async def test_malformed_json_gets_400_with_a_message(site: Site, body: bytes) -> None:
    answer = await site.client.post("/subscribe/ml-issues", content=body,
                                    headers={"content-type": "application/json"})

    assert answer.status_code == 400
    assert answer.json()["error"]
    assert await site.rows() == [] and site.smtpd.messages == []


async def test_a_field_sent_twice_gets_400(site: Site) -> None:
    answer = await site.client.post(
        "/subscribe/ml-issues", content=b"email=ada%40example.com&email=bob%40example.com",
        headers={"content-type": "application/x-www-form-urlencoded"})

    assert answer.status_code == 400 and "Email: given more than once" in answer.text
    assert await site.rows() == []


async def test_an_unknown_newsletter_gets_404_everywhere(site: Site) -> None:
    answers = [await site.client.get("/subscribe/nope"),
               await site.client.post("/subscribe/nope", data={"email": "ada@example.com"}),
               await site.client.get("/issues/nope"),
               await site.client.get("/issues/nope/2026-12-07-first-issue"),
               await site.client.get("/nothing-here")]

    assert [a.status_code for a in answers] == [404] * 5
    assert "There is no newsletter of that name here" in answers[1].text
    assert await site.rows() == [] and site.smtpd.messages == []


async def test_sign_ups_past_the_per_address_limit_get_429_and_other_addresses_do_not(
    project: Project, store: Store, smtpd: RecordingServer, smtp_url_of: SmtpUrl,
) -> None:
    config = project.configure(smtp_url=smtp_url_of(smtpd), subscribe_rate_per_minute=3)
    app = create_app(config, store=store)

    def client(ip: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(ip, 5555)),
                                 base_url=config.settings.base_url)

    async with client("203.0.113.7") as noisy, client("198.51.100.9") as other:
        answers = [await noisy.post("/subscribe/ml-issues", data={"email": f"n{i}@example.com"})
                   for i in range(4)]
        elsewhere = await other.post("/subscribe/ml-issues", data={"email": "o@example.com"})

    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert 1 <= int(answers[3].headers["retry-after"]) <= 60
    assert "Too many sign-ups from your address" in answers[3].text
    assert elsewhere.status_code == 200
    assert await storehelp.subscription_of(store, "n3@example.com", "ml-issues") is None


# -- archive, health, metrics --------------------------------------------------------------------


async def test_the_archive_lists_sent_issues_and_the_web_view_has_no_personal_link(
    site: Site,
) -> None:
    site.write_second_issue()
    empty = await site.client.get("/issues/ml-issues")
    await site.add("ada@example.com")
    issue = (await site.send_now())["ada@example.com"]

    archive = await site.client.get("/issues/ml-issues")
    web = await site.client.get("/issues/ml-issues/2026-12-07-first-issue")
    unsent = await site.client.get("/issues/ml-issues/2026-12-21-second-issue")

    assert "No issue has been sent yet" in empty.text
    assert archive.status_code == 200
    assert 'href="/issues/ml-issues/2026-12-07-first-issue"' in archive.text
    assert "Machine Learning Issues #01" in archive.text and "Second issue" not in archive.text
    assert web.status_code == 200 and web.headers["content-type"].startswith("text/html")
    assert "Distillation" in web.text
    assert "/unsubscribe/" not in web.text
    assert issue["List-Unsubscribe"].strip("<>") not in web.text
    assert unsent.status_code == 404


async def test_healthz_answers_ok(site: Site) -> None:
    answer = await site.client.get("/healthz")

    assert (answer.status_code, answer.text) == (200, "ok\n")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_metrics_count_subscribers_messages_and_sends_from_the_database(
    project: Project, store: Store, smtp_url_of: SmtpUrl,
) -> None:
    async with RecordingServer(reject_rcpt={"gone@example.com": "550 5.1.1 no such user"}) as smtpd:
        config = project.configure(smtp_url=smtp_url_of(smtpd))
        transport = httpx.ASGITransport(app=create_app(config, store=store))
        async with httpx.AsyncClient(transport=transport, base_url="http://x") as client:
            site = Site(project, config, store, client, smtpd)
            await site.add("ada@example.com", "grace@example.com", "gone@example.com")
            await site.add("pending@example.com", confirmed=False)
            await site.send_now(exit_code=1)  # 1: one recipient failed
            # A second app, as another process would run it, reports the same numbers:
            # they come from the database, not from counters in the process that sent.
            other = httpx.ASGITransport(app=create_app(config, store=store))
            async with httpx.AsyncClient(transport=other, base_url="http://x") as fresh:
                answer = await fresh.get("/metrics")

    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    found = samples(answer.text)
    ml = (("newsletter", "ml-issues"),)

    def state(s: str) -> tuple[tuple[str, str], ...]:
        return (("newsletter", "ml-issues"), ("state", s))

    def outcome(o: str) -> tuple[tuple[str, str], ...]:
        return (("newsletter", "ml-issues"), ("outcome", o))

    assert found[("mailer_subscribers", state("confirmed"))] == 2
    assert found[("mailer_subscribers", state("bounced"))] == 1
    assert found[("mailer_subscribers", state("pending"))] == 1
    assert found[("mailer_subscribers", state("unsubscribed"))] == 0
    assert found[("mailer_messages_total", outcome("sent"))] == 2
    assert found[("mailer_messages_total", outcome("failed"))] == 1
    assert found[("mailer_messages_queued", ml)] == 0
    assert found[("mailer_send_duration_seconds_count", ml)] == 1
    assert found[("mailer_send_duration_seconds_bucket", (("le", "+Inf"), *ml))] == 1
    assert 0 <= found[("mailer_send_duration_seconds_sum", ml)] < 60


async def test_every_page_forbids_framing_scripts_and_referrers(site: Site) -> None:
    for url in ("/subscribe/ml-issues", "/confirm/x", "/healthz", "/issues/ml-issues"):
        headers = (await site.client.get(url)).headers
        assert headers["referrer-policy"] == "no-referrer", url
        assert "frame-ancestors 'none'" in headers["content-security-policy"], url
        assert "script-src" not in headers["content-security-policy"]  # default-src 'none'
        assert headers["x-content-type-options"] == "nosniff"


# -- a real server, random bodies ----------------------------------------------------------------


class LiveServer:
    """The app behind a real uvicorn server on its own thread and event loop.

    It opens its own Store in its lifespan, as `mailer serve` does; the listening socket
    is bound first so that base_url can name its port.
    """

    def __init__(self, project: Project, **settings: Any) -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.config = project.configure(base_url=self.url, **settings)
        self.server = uvicorn.Server(uvicorn.Config(
            create_app(self.config), log_config=None, log_level="warning", ws="none",
            lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]},
                                       name="uvicorn", daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the web server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)
        self.socket.close()


CONTENT_TYPES = ["application/x-www-form-urlencoded", "multipart/form-data",
                 "multipart/form-data; boundary=xyz", "application/json",
                 "application/json; charset=latin-1", "text/plain", "", "*/*"]
# Any character JSON can carry, lone surrogates ("\ud800") and control characters included.
any_text = st.text(st.characters(exclude_categories=[]) | st.characters(categories=["Cs"]),
                   max_size=40)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | any_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8)
bodies = st.one_of(
    st.binary(max_size=600),
    st.dictionaries(st.sampled_from(["email", "name", HONEYPOT, "List-Unsubscribe", "x"]),
                    st.text(max_size=80), max_size=4).map(
        lambda d: "&".join(f"{quote(k)}={quote(v)}" for k, v in d.items()).encode()),
    st.dictionaries(st.sampled_from(["email", "name", HONEYPOT]), json_values, max_size=3)
    .map(lambda d: json.dumps(d).encode()),
    st.builds(lambda e, n: json.dumps({"email": e, "name": n}).encode(),
              st.sampled_from(["ada@example.com", "bob@example.org"]), any_text),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.just(b"--xyz\r\nContent-Disposition: form-data; name=\"email\"\r\n\r\na@example.com"
            b"\r\n--xyz--\r\n"),
)


def test_random_bodies_to_the_post_routes_never_get_a_server_error(project: Project) -> None:
    with ServerThread() as smtp, LiveServer(project, smtp_url=f"smtp://127.0.0.1:{smtp.port}",
                                            subscribe_rate_per_minute=0) as live, \
            httpx.Client(base_url=live.url, timeout=30) as client:
        valid = tokens.unsubscribe_token(KEY, 1)
        paths = st.sampled_from(["/subscribe/ml-issues", "/subscribe/nope",
                                 f"/unsubscribe/{valid}", f"/resubscribe/{valid}",
                                 "/unsubscribe/garbage", f"/unsubscribe/{valid}x"]) | \
            st.text(min_size=1, max_size=40).map(lambda t: f"/unsubscribe/{quote(t, safe='')}")

        never_a_server_error(client, paths, bodies)


def never_a_server_error(client: httpx.Client, paths: st.SearchStrategy[str],
                         bodies: st.SearchStrategy[bytes]) -> None:
    """POST 150 drawn bodies under every content type to drawn paths: none gets a 5xx."""

    @settings(max_examples=150, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(path=paths, content_type=st.sampled_from(CONTENT_TYPES), body=bodies)
    def post(path: str, content_type: str, body: bytes) -> None:
        answer = client.post(path, content=body, headers={"content-type": content_type})
        assert answer.status_code < 500, (answer.status_code, answer.text[:300])

    post()


def test_mailer_serve_answers_over_http_and_stops_cleanly_on_sigterm(project: Project) -> None:
    project.configure()
    env = {**os.environ, "MAILER_SECRET_KEY": KEY}
    env.pop("MAILER_CONFIG", None)
    server, url, health = start_mailer_http(project.root, project.config_path, "serve", env=env)
    try:
        form = httpx.get(f"{url}/subscribe/ml-issues")
    finally:
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=30)

    assert (health.status_code, health.text) == (200, "ok\n")
    assert form.status_code == 200 and "Subscribe to Machine Learning Issues" in form.text
    assert server.returncode == 0, output
