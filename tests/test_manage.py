"""The subscriber's own page, GET/POST /manage/{token}, over real HTTP on SQLite and
PostgreSQL: switches per newsletter, name, download, erase, and the tokens it takes."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import strategies as st
from sqlalchemy import String, func, or_, select, update

from mailer import config as config_mod
from mailer import tokens
from mailer.config import Config
from mailer.rows import ReturnRecord
from mailer.schedule import Clock
from mailer.states import SubscriptionStatus
from mailer.store import Store
from mailer.store.models import (
    Delivery,
    ErasedAddress,
    ReturnedMessage,
    Subscriber,
    Subscription,
)
from mailer.subscriptions.manage import ACTIONS, address_hash
from mailer.web import create_app
from mailer.web.manage import FIELDS
from tests import storehelp
from tests.conftest import Project
from tests.smtpd import RecordingServer, ServerThread
from tests.test_web import (
    KEY,
    LATER,
    LiveServer,
    Site,
    SmtpUrl,
    bodies,
    forge,
    never_a_server_error,
    path_of,
)
from tests.tools import Listening, run_cli, settled_client

MANAGE_LINK = re.compile(r"https?://\S+/manage/[A-Za-z0-9_.-]+")
ADA, BOB = "ada@example.com", "bob@example.org"
SECOND = "weekly-notes"


def with_second_newsletter(project: Project, **settings: Any) -> Config:
    """schedules.yaml with ml-issues and a second newsletter, loaded."""
    project.configure(**settings)
    (project.root / "content" / SECOND).mkdir(exist_ok=True)
    with project.config_path.open("a", encoding="utf-8") as f:
        f.write(f"  {SECOND}:\n    name: Weekly Notes\n"
                '    from: "Weekly Notes <notes@example.com>"\n'
                f"    issues: content/{SECOND}\n    schedule:\n      cron: \"0 9 * * 1\"\n")
    return config_mod.load(project.config_path, env={"MAILER_SECRET_KEY": KEY})


@pytest.fixture
async def site(project: Project, store: Store, smtpd: RecordingServer,
               smtp_url_of: SmtpUrl) -> AsyncIterator[Site]:
    """test_web's site, with two newsletters."""
    listening = Listening()
    config = with_second_newsletter(project, smtp_url=smtp_url_of(smtpd),
                                    subscribe_rate_per_minute=0, base_url=listening.url)
    app = create_app(config, store=store)
    async with settled_client(app, listening, config.settings) as c:
        yield Site(project, config, store, c, smtpd)


def manage_links(message: EmailMessage) -> tuple[str, str]:
    """The manage link of the (text, html) parts of an issue."""
    text, html = (message.get_body(preferencelist=(kind,)) for kind in ("plain", "html"))
    assert text is not None and html is not None
    [in_text] = MANAGE_LINK.findall(text.get_content())
    [in_html] = re.findall(r'href="(https?://[^"]+/manage/[^"]+)"', html.get_content())
    return in_text, in_html


async def table_dump(store: Store) -> dict[str, list[tuple[Any, ...]]]:
    """Every row that a page could change, to show that a request changed nothing."""
    async with store.session() as s:
        return {
            "subscribers": [tuple(r) for r in await s.execute(
                select(Subscriber.id, Subscriber.email, Subscriber.name).order_by(Subscriber.id))],
            "subscriptions": [tuple(r) for r in await s.execute(
                select(Subscription.id, Subscription.newsletter, Subscription.status,
                       Subscription.confirmed_at, Subscription.unsubscribed_at,
                       Subscription.token_generation).order_by(Subscription.id))],
            "erased": [tuple(r) for r in await s.execute(select(ErasedAddress.address_hash))],
        }


async def mentions(store: Store, email: str) -> dict[str, int]:
    """How many rows of each table still hold `email` anywhere a person's data is kept."""
    async with store.session() as s:
        async def count(query: Any) -> int:
            return int((await s.execute(query)).scalar_one())
        return {
            "subscribers": await count(select(func.count()).select_from(Subscriber)
                                       .where(Subscriber.email == email)),
            "attributes": await count(select(func.count()).select_from(Subscriber)
                                      .where(Subscriber.attributes.is_not(None),
                                             func.lower(func.cast(Subscriber.attributes, String))
                                             .contains("london"))),
            "subscriptions": await count(select(func.count()).select_from(Subscription)
                                         .join(Subscriber).where(Subscriber.email == email)),
            "deliveries": await count(select(func.count()).select_from(Delivery).where(or_(
                Delivery.email == email, Delivery.smtp_reply.contains(email)))),
            "returned_messages": await count(
                select(func.count()).select_from(ReturnedMessage).where(or_(
                    ReturnedMessage.address == email, ReturnedMessage.diagnostic.contains(email),
                    ReturnedMessage.evidence.contains(email.encode())))),
        }


async def ada_and_bob_get_an_issue(site: Site) -> dict[str, EmailMessage]:
    await site.store.add_subscriber(ADA, newsletter="ml-issues", name="Ada", confirmed=True,
                                    attributes={"city": "London"})
    await site.store.add_subscriber(ADA, newsletter=SECOND, confirmed=True)
    await site.store.add_subscriber(BOB, newsletter="ml-issues", name="Bob", confirmed=True)
    return await site.send_now()


async def test_every_issue_carries_each_readers_own_manage_link_in_html_and_text(
    site: Site,
) -> None:
    sent = await ada_and_bob_get_an_issue(site)

    links = {who: manage_links(sent[who]) for who in (ADA, BOB)}
    for who in (ADA, BOB):
        in_text, in_html = links[who]
        assert in_text == in_html
        own = await storehelp.subscription_of(site.store, who, "ml-issues")
        assert own is not None
        assert tokens.read_manage_token(KEY, in_text.rsplit("/", 1)[1]) == own.id
    assert links[ADA][0] != links[BOB][0]
    text = sent[ADA].get_body(preferencelist=("plain",))
    assert text is not None and "Your subscriptions and data: http" in text.get_content()


async def test_opening_the_manage_page_changes_nothing_and_shows_only_its_subscriber(
    site: Site,
) -> None:
    sent = await ada_and_bob_get_an_issue(site)
    link = manage_links(sent[ADA])[0]
    before = await table_dump(site.store)

    opened = [await site.client.get(link) for _ in range(3)]
    head = await site.client.head(link)

    assert [p.status_code for p in opened] == [200] * 3 and head.status_code == 200
    assert await table_dump(site.store) == before
    page = opened[0].text
    assert "Leave Machine Learning Issues" in page and "Leave Weekly Notes" in page
    assert 'value="Ada"' in page
    assert ADA not in page and BOB not in page and "Bob" not in page
    assert page.count(f'action="{path_of(link)}"') == page.count("<form")
    assert "<script" not in page


async def test_forged_tampered_and_other_purpose_tokens_get_400_and_change_nothing(
    site: Site,
) -> None:
    sent = await ada_and_bob_get_an_issue(site)
    token = manage_links(sent[ADA])[0].rsplit("/", 1)[1]
    bob = manage_links(sent[BOB])[0].rsplit("/", 1)[1]
    ada_id = tokens.read_manage_token(KEY, token)
    bad = {
        "forged signature": forge(token),
        "signed with another key": tokens.manage_token("another-key", ada_id),
        "an unsubscribe token": tokens.unsubscribe_token(KEY, ada_id),
        "a confirmation token": tokens.confirm_token(KEY, ada_id),
        "bob's payload with ada's signature": bob.split(".")[0] + "." + token.split(".")[1],
        "padding added": token + "=",
        "not a token at all": "hello",
    }
    # Genuine, of a subscription that is gone: 400 too, but "delete me" is done already.
    gone = f"/manage/{tokens.manage_token(KEY, 999_999)}"
    before = await table_dump(site.store)

    assert (await site.client.get(gone)).status_code == 400
    assert (await site.client.post(gone, data={"action": "rename"})).status_code == 400
    for what, forged in bad.items():
        url = f"/manage/{quote(forged)}"
        for answer in (await site.client.get(url),
                       await site.client.post(url, data={"action": "delete", "confirm": "yes"}),
                       await site.client.post(url, data={"action": "leave",
                                                         "newsletter": "ml-issues"})):
            assert answer.status_code == 400, what
            assert "This did not work" in answer.text and "not valid" in answer.text, what
            assert "<form" not in answer.text, what

    assert await table_dump(site.store) == before


async def test_leave_one_newsletter_stay_on_the_other_then_join_again_each_idempotent(
    site: Site,
) -> None:
    link = manage_links((await ada_and_bob_get_an_issue(site))[ADA])[0]
    leave = {"action": "leave", "newsletter": "ml-issues"}

    first = await site.client.post(link, data=leave)
    when = await storehelp.subscription_of(site.store, ADA, "ml-issues")
    again = await site.client.post(link, data=leave)

    assert (first.status_code, again.status_code) == (200, 200)
    assert "You left Machine Learning Issues." in first.text
    assert "Subscribe to Machine Learning Issues" in first.text
    after = await storehelp.subscription_of(site.store, ADA, "ml-issues")
    assert when is not None and after is not None
    assert after.status == SubscriptionStatus.UNSUBSCRIBED
    assert after.unsubscribed_at == when.unsubscribed_at  # the first time stays
    notes = await storehelp.subscription_of(site.store, ADA, SECOND)
    assert notes is not None and notes.status == SubscriptionStatus.CONFIRMED
    assert await site.status(BOB) == SubscriptionStatus.CONFIRMED
    site.write_second_issue()
    assert sorted(await site.send_now(LATER)) == [BOB]

    # Back again from the same page: the link proved the address, no email is needed.
    mails = len(site.smtpd.messages)
    back = await site.client.post(link, data={"action": "join", "newsletter": "ml-issues"})
    assert "You are subscribed to Machine Learning Issues." in back.text
    assert await site.status(ADA) == SubscriptionStatus.CONFIRMED
    assert len(site.smtpd.messages) == mails
    unknown = await site.client.post(link, data={"action": "join", "newsletter": "nope"})
    assert unknown.status_code == 400 and "no newsletter of that name" in unknown.text


async def test_a_newsletter_never_joined_can_be_joined_and_another_readers_token_is_theirs(
    site: Site,
) -> None:
    sent = await ada_and_bob_get_an_issue(site)
    bob = manage_links(sent[BOB])[0]

    joined = await site.client.post(bob, data={"action": "join", "newsletter": SECOND})

    assert joined.status_code == 200 and "Leave Weekly Notes" in joined.text
    notes = await storehelp.subscription_of(site.store, BOB, SECOND)
    assert notes is not None and notes.status == SubscriptionStatus.CONFIRMED
    ada = await storehelp.subscription_of(site.store, ADA, SECOND)
    assert ada is not None and ada.status == SubscriptionStatus.CONFIRMED
    assert ADA not in joined.text and "Ada" not in joined.text



async def test_joining_on_the_manage_page_starts_the_sequence_on_the_daemons_clock_at_once(
    project: Project, store: Store, smtpd: RecordingServer, smtp_url_of: SmtpUrl,
) -> None:
    # As a confirmation does: the reader's automatic emails count from the daemon's clock
    # (test_now moves it), and its automatic-email runner is woken for the welcome.
    listening = Listening()
    config = with_second_newsletter(project, smtp_url=smtp_url_of(smtpd),
                                    subscribe_rate_per_minute=0, base_url=listening.url)
    moment, woken = datetime(2031, 5, 6, 7, 8, tzinfo=UTC), []
    app = create_app(config, store=store, clock=Clock(moment), on_confirmed=woken.append)
    async with settled_client(app, listening, config.settings) as client:
        sent = await ada_and_bob_get_an_issue(Site(project, config, store, client, smtpd))
        joined = await client.post(manage_links(sent[BOB])[0],
                                   data={"action": "join", "newsletter": SECOND})
    assert joined.status_code == 200
    notes = await storehelp.subscription_of(store, BOB, SECOND)
    assert notes is not None and notes.sequence_from is not None
    assert moment <= notes.sequence_from < moment + timedelta(minutes=5)
    assert woken == [SECOND]

async def test_the_name_is_changed_and_a_bad_one_is_refused(site: Site) -> None:
    link = manage_links((await ada_and_bob_get_an_issue(site))[ADA])[0]

    saved = await site.client.post(link, data={"action": "rename", "name": "Ada Lovelace"})
    bad = await site.client.post(link, data={"action": "rename", "name": "Ada\x00"})
    nothing = await site.client.post(link, data={"action": "fly"})

    assert saved.status_code == 200 and 'value="Ada Lovelace"' in saved.text
    assert "Your name is saved." in saved.text
    assert bad.status_code == 400 and nothing.status_code == 400
    rows = {r.email: r.name for r in await site.rows()}
    assert rows == {ADA: "Ada Lovelace", BOB: "Bob"}


async def test_download_my_data_is_a_json_file_of_this_subscriber_only(site: Site) -> None:
    link = manage_links((await ada_and_bob_get_an_issue(site))[ADA])[0]
    await site.client.post(link, data={"action": "leave", "newsletter": SECOND})

    answer = await site.client.post(link, data={"action": "export"})

    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["content-disposition"].startswith("attachment;")
    data = answer.json()
    assert (data["email"], data["name"]) == (ADA, "Ada")
    assert data["attributes"] == {"city": "London"}
    subs = {s["newsletter"]: s for s in data["subscriptions"]}
    assert subs["ml-issues"]["status"] == "confirmed" and subs["ml-issues"]["confirmed_at"]
    assert subs[SECOND]["status"] == "unsubscribed" and subs[SECOND]["unsubscribed_at"]
    [delivery] = data["deliveries"]
    assert delivery["newsletter"] == "ml-issues" and delivery["status"] == "sent"
    assert delivery["sent_at"] and delivery["subject"]
    assert BOB not in answer.text and "Bob" not in answer.text


async def test_delete_me_erases_the_address_everywhere_and_keeps_only_a_keyed_hash(
    site: Site,
) -> None:
    sent = await ada_and_bob_get_an_issue(site)
    link = manage_links(sent[ADA])[0]
    ada_delivery = (await site.client.post(link, data={"action": "export"})).json()
    assert ada_delivery["deliveries"]
    async with site.store.session.begin() as s:  # a server's reply that quotes the address
        await s.execute(update(Delivery).where(Delivery.email == ADA)
                        .values(smtp_reply=f"250 ok <{ADA}> queued"))
    [ada_row] = [d for d in await storehelp.deliveries(site.store, 1) if d.email == ADA]
    await site.store.record_returned(ReturnRecord(
        received_at=LATER, source="pipe", kind="soft", fingerprint="f1",
        delivery_id=ada_row.id, send_id=1, subscription_id=ada_row.subscription_id,
        address=ADA, status_code="4.2.2", diagnostic=f"452 4.2.2 <{ADA}>: mailbox full",
        evidence=f"Final-Recipient: rfc822; {ADA}\r\n".encode()))
    assert (await mentions(site.store, ADA))["returned_messages"] == 1

    unticked = await site.client.post(link, data={"action": "delete"})
    assert unticked.status_code == 400 and "ick the box to confirm" in unticked.text
    assert await site.status(ADA) == SubscriptionStatus.CONFIRMED

    erased = await site.client.post(link, data={"action": "delete", "confirm": "yes"})
    again = await site.client.post(link, data={"action": "delete", "confirm": "yes"})

    assert erased.status_code == 200 and "Your address is erased" in erased.text
    assert again.status_code == 200 and "Your address is erased" in again.text
    assert await mentions(site.store, ADA) == {"subscribers": 0, "attributes": 0,
                                               "subscriptions": 0, "deliveries": 0,
                                               "returned_messages": 0}
    dump = await table_dump(site.store)
    assert dump["erased"] == [(address_hash(KEY, ADA),)]
    assert ADA not in str(dump)
    assert [r.email for r in await site.rows()] == [BOB]
    reopened = await site.client.get(link)
    assert reopened.status_code == 400 and "not valid any more" in reopened.text
    # The send's history keeps its counts, without the address.
    [row] = [d for d in await storehelp.deliveries(site.store, 1) if d.email == ""]
    assert row.name == "" and row.subscription_id is None and row.smtp_reply is not None
    assert ADA not in row.smtp_reply

    site.write_second_issue()
    assert sorted(await site.send_now(LATER)) == [BOB]

    # The person acting again through the form starts a fresh double opt-in.
    answer = await site.sign_up(ADA)
    assert answer.status_code == 200
    assert await site.status(ADA) == SubscriptionStatus.PENDING
    assert site.confirm_link(ADA)


async def test_subscribers_import_and_add_with_confirmed_refuse_an_erased_address(
    site: Site, tmp_path: Path,
) -> None:
    link = manage_links((await ada_and_bob_get_an_issue(site))[ADA])[0]
    await site.client.post(link, data={"action": "delete", "confirm": "yes"})
    csv = tmp_path / "people.csv"
    csv.write_text(f"email,name\nnew@example.com,New\n{ADA},Ada\n", encoding="utf-8")
    env: dict[str, str | None] = {"MAILER_SECRET_KEY": KEY, "COLUMNS": "200",
                                  "MAILER_CONFIG": None}

    async def mailer(*args: str) -> Any:
        # In a thread: the command runs its own event loop, as it does from a shell.
        return await asyncio.to_thread(run_cli, "--config", str(site.project.config_path),
                                       *args, cwd=site.project.root, env=env)

    imported = await mailer("subscribers", "import", str(csv), "--list", "ml-issues", "--confirmed")
    added = await mailer("subscribers", "add", ADA, "--list", "ml-issues", "--confirmed")

    assert imported.returncode == 2, imported.stderr
    [line] = [x for x in imported.stderr.splitlines() if x.strip()]
    assert "line 3:" in line and "erased at its owner's request" in line
    assert "nothing imported" in line and "line 2" not in line
    assert added.returncode == 2 and "erased at its owner's request" in added.stderr
    assert [r.email for r in await site.rows()] == [BOB]  # nothing half-imported
    # Without --confirmed it is pending and waits for the person's own confirmation.
    pending = await mailer("subscribers", "import", str(csv), "--list", "ml-issues")
    assert pending.returncode == 0, pending.stderr
    assert await site.status(ADA) == SubscriptionStatus.PENDING
    # Once they confirm by their own link, an import listing them again is fine.
    again = await storehelp.subscription_of(site.store, ADA, "ml-issues")
    assert again is not None
    await site.store.confirm_subscription(again.id, generation=again.token_generation,
                                          now=LATER - timedelta(days=1))
    assert (await mailer("subscribers", "import", str(csv), "--list", "ml-issues",
                         "--confirmed")).returncode == 0


MANAGE_BODIES = st.one_of(
    bodies,
    st.dictionaries(st.sampled_from(list(FIELDS) + ["x"]),
                    st.sampled_from([*ACTIONS, "ml-issues", SECOND, "yes", ""]) | st.text(
                        max_size=30), max_size=4)
    .map(lambda d: "&".join(f"{quote(k)}={quote(v)}" for k, v in d.items()).encode()),
)


def test_random_bodies_to_the_manage_page_never_get_a_server_error(project: Project) -> None:
    with ServerThread() as smtp, LiveServer(project, smtp_url=f"smtp://127.0.0.1:{smtp.port}",
                                            subscribe_rate_per_minute=0) as live, \
            httpx.Client(base_url=live.url, timeout=30) as client:

        async def add() -> int:
            async with Store.open(live.config.settings.database_url) as store:
                return (await store.add_subscriber(ADA, newsletter="ml-issues",
                                                   confirmed=True)).id

        valid = tokens.manage_token(KEY, asyncio.run(add()))
        paths = st.sampled_from([f"/manage/{valid}", f"/manage/{valid}x", "/manage/garbage"])

        never_a_server_error(client, paths, MANAGE_BODIES)
