"""Double opt-in, confirm, unsubscribe and resubscribe: real store (both databases), real SMTP."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from mailer import subscriptions, tokens
from mailer.config import Config
from mailer.errors import SubscriberError, TokenError
from mailer.states import SubscriptionStatus
from mailer.store import Store
from mailer.store.models import Subscription
from tests import storehelp
from tests.conftest import Project
from tests.smtpd import RecordingServer
from tests.test_tokens import confirm_token_signed_at

KEY = "test-key"  # what Project.configure puts in MAILER_SECRET_KEY
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
CONFIRM_LINK = re.compile(r"https?://\S+/confirm/[A-Za-z0-9_.-]+")
SmtpUrl = Callable[[RecordingServer], str]


def confirm_links(server: RecordingServer, to: str) -> list[str]:
    """The confirmation links in the plain-text parts of every message sent to `to`."""
    links = []
    for received in server.messages:
        if received.rcpt_tos == [to]:
            text = received.parsed().get_body(preferencelist=("plain",))
            assert text is not None
            links += CONFIRM_LINK.findall(text.get_content())
    return links


async def sign_up(config: Config, store: Store, email: str, *, name: str = "",
                  now: datetime = T0) -> bool:
    """What POST /subscribe does: subscribe, then send the email if one is due."""
    newsletter = config.newsletter("ml-issues")
    due = await subscriptions.subscribe(config, store, newsletter, email, name=name, now=now)
    if due is None:
        return False
    return await subscriptions.deliver_confirmation(config, store, newsletter, due)


async def status_of(store: Store, email: str) -> SubscriptionStatus | None:
    sub = await storehelp.subscription_of(store, email, "ml-issues")
    return sub.status if sub else None


@pytest.fixture
def config(project: Project, smtpd: RecordingServer, smtp_url_of: SmtpUrl) -> Config:
    return project.configure(smtp_url=smtp_url_of(smtpd))


async def test_a_new_address_becomes_pending_and_gets_one_email_with_a_working_link(
    config: Config, store: Store, smtpd: RecordingServer,
) -> None:
    assert await sign_up(config, store, "ada@example.com", name="Ada")

    assert await status_of(store, "ada@example.com") == SubscriptionStatus.PENDING
    [link] = confirm_links(smtpd, "ada@example.com")
    assert link.startswith(config.settings.base_url + "/confirm/")
    message = smtpd.messages[0].parsed()
    assert message["Subject"] == "Confirm your subscription to Machine Learning Issues"
    assert message["Auto-Submitted"] == "auto-generated"

    sub = await subscriptions.confirm(config, store, link.rsplit("/", 1)[1])
    assert sub.status == SubscriptionStatus.CONFIRMED
    assert await store.count_recipients("ml-issues") == 1


async def test_signing_up_again_within_ten_minutes_sends_no_second_email(
    config: Config, store: Store, smtpd: RecordingServer,
) -> None:
    assert await sign_up(config, store, "ada@example.com", now=T0)
    assert not await sign_up(config, store, "ada@example.com", now=T0 + timedelta(minutes=9))

    assert len(smtpd.messages) == 1


async def test_signing_up_again_after_ten_minutes_sends_the_email_again(
    config: Config, store: Store, smtpd: RecordingServer,
) -> None:
    assert await sign_up(config, store, "ada@example.com", now=T0)
    assert await sign_up(config, store, "ada@example.com", now=T0 + timedelta(minutes=10))
    assert not await sign_up(config, store, "ada@example.com", now=T0 + timedelta(minutes=11))

    assert len(confirm_links(smtpd, "ada@example.com")) == 2


async def test_many_sign_ups_of_one_address_at_the_same_moment_send_one_email(
    config: Config, store: Store, smtpd: RecordingServer,
) -> None:
    sent = await asyncio.gather(*(sign_up(config, store, "ada@example.com") for _ in range(5)))

    assert sorted(sent) == [False, False, False, False, True]
    assert len(smtpd.messages) == 1


async def test_a_confirmed_address_that_signs_up_again_stays_confirmed_and_gets_no_email(
    config: Config, store: Store, smtpd: RecordingServer,
) -> None:
    await store.add_subscriber("ada@example.com", newsletter="ml-issues", confirmed=True)

    assert not await sign_up(config, store, "ada@example.com")

    assert await status_of(store, "ada@example.com") == SubscriptionStatus.CONFIRMED
    assert smtpd.messages == []


async def test_an_address_that_left_signs_up_as_pending_and_must_confirm_again(
    config: Config, store: Store, smtpd: RecordingServer,
) -> None:
    sub = await store.add_subscriber("ada@example.com", newsletter="ml-issues", confirmed=True)
    await subscriptions.unsubscribe(config, store, tokens.unsubscribe_token(KEY, sub.id))

    assert await sign_up(config, store, "ada@example.com")

    assert await status_of(store, "ada@example.com") == SubscriptionStatus.PENDING
    assert await store.count_recipients("ml-issues") == 0
    [link] = confirm_links(smtpd, "ada@example.com")
    await subscriptions.confirm(config, store, link.rsplit("/", 1)[1])
    assert await status_of(store, "ada@example.com") == SubscriptionStatus.CONFIRMED


async def test_a_confirmation_email_the_server_refused_is_sent_on_the_next_sign_up(
    project: Project, store: Store, smtp_url_of: SmtpUrl,
) -> None:
    refusal = {"ada@example.com": ["451 4.3.0 try again later"]}
    async with RecordingServer(fail_rcpt=refusal) as smtpd:
        config = project.configure(smtp_url=smtp_url_of(smtpd))
        assert not await sign_up(config, store, "ada@example.com", now=T0)
        # The failed claim was given back: no ten-minute wait for an email that never left.
        assert await sign_up(config, store, "ada@example.com", now=T0 + timedelta(minutes=1))

    assert len(confirm_links(smtpd, "ada@example.com")) == 1


async def test_a_sign_up_never_renames_an_address_that_is_already_known(
    config: Config, store: Store,
) -> None:
    await sign_up(config, store, "ada@example.com", name="Ada Lovelace")
    await sign_up(config, store, "ada@example.com", name="Mallory", now=T0 + timedelta(hours=1))
    await store.add_subscriber("grace@example.com", newsletter="ml-issues", confirmed=True)
    await sign_up(config, store, "grace@example.com", name="Mallory")

    names = {row.email: row.name async for row in store.subscribers(newsletter="ml-issues")}
    assert names == {"ada@example.com": "Ada Lovelace", "grace@example.com": ""}


@pytest.mark.parametrize("email", [
    "ada@example.com\r\nBcc: victim@example.org", "ada@", "a" * 300 + "@example.com",
    "ada@ex\u0430mple.com",  # Cyrillic а in a Latin domain label
])
async def test_a_bad_address_is_refused_and_nothing_is_stored_or_sent(
    config: Config, store: Store, smtpd: RecordingServer, email: str,
) -> None:
    with pytest.raises(SubscriberError) as refused:
        await sign_up(config, store, email)

    assert refused.value.field == "email"
    assert [row async for row in store.subscribers(newsletter="ml-issues")] == []
    assert smtpd.messages == []


async def test_a_name_with_a_line_break_is_refused_and_nothing_is_stored(
    config: Config, store: Store, smtpd: RecordingServer,
) -> None:
    with pytest.raises(SubscriberError, match="line breaks"):
        await sign_up(config, store, "ada@example.com", name="Ada\r\nBcc: victim@example.org")

    assert await status_of(store, "ada@example.com") is None
    assert smtpd.messages == []


async def test_confirming_twice_is_fine(config: Config, store: Store) -> None:
    sub = await store.add_subscriber("ada@example.com", newsletter="ml-issues")
    token = tokens.confirm_token(KEY, sub.id)

    first = await subscriptions.confirm(config, store, token)
    again = await subscriptions.confirm(config, store, token)

    assert first.status == again.status == SubscriptionStatus.CONFIRMED
    assert first.confirmed_at == again.confirmed_at


async def test_a_confirmation_link_opened_after_unsubscribing_is_refused_and_changes_nothing(
    config: Config, store: Store,
) -> None:
    # A mail scanner may fetch an old confirmation link long after the reader has left.
    sub = await store.add_subscriber("ada@example.com", newsletter="ml-issues")
    token = tokens.confirm_token(KEY, sub.id)
    await subscriptions.confirm(config, store, token)
    await subscriptions.unsubscribe(config, store, tokens.unsubscribe_token(KEY, sub.id))

    with pytest.raises(TokenError, match="not valid any more"):
        await subscriptions.confirm(config, store, token)

    assert await status_of(store, "ada@example.com") == SubscriptionStatus.UNSUBSCRIBED


async def test_an_expired_confirmation_link_is_refused_and_changes_nothing(
    config: Config, store: Store,
) -> None:
    sub = await store.add_subscriber("ada@example.com", newsletter="ml-issues")
    signed_at = datetime.now(UTC) - timedelta(days=config.settings.confirm_token_days, hours=1)

    with pytest.raises(TokenError, match="expired"):
        await subscriptions.confirm(config, store, confirm_token_signed_at(KEY, sub.id, signed_at))

    assert await status_of(store, "ada@example.com") == SubscriptionStatus.PENDING


async def test_a_confirmation_link_of_a_removed_subscription_is_refused(
    config: Config, store: Store,
) -> None:
    sub = await store.add_subscriber("ada@example.com", newsletter="ml-issues")
    await store.remove_subscriber("ada@example.com", newsletter="ml-issues")

    with pytest.raises(TokenError):
        await subscriptions.confirm(config, store, tokens.confirm_token(KEY, sub.id))


async def test_unsubscribing_twice_keeps_the_time_of_the_first(
    config: Config, store: Store,
) -> None:
    sub = await store.add_subscriber("ada@example.com", newsletter="ml-issues", confirmed=True)
    token = tokens.unsubscribe_token(KEY, sub.id)

    first = await subscriptions.unsubscribe(config, store, token, now=T0)
    again = await subscriptions.unsubscribe(config, store, token, now=T0 + timedelta(days=1))

    assert first is not None and again is not None
    assert again.status == SubscriptionStatus.UNSUBSCRIBED
    assert again.unsubscribed_at == T0


async def test_unsubscribing_with_the_link_of_a_test_copy_changes_nothing(
    config: Config, store: Store,
) -> None:
    await store.add_subscriber("ada@example.com", newsletter="ml-issues", confirmed=True)

    assert await subscriptions.unsubscribe(config, store, tokens.unsubscribe_token(KEY, 0)) is None

    assert await status_of(store, "ada@example.com") == SubscriptionStatus.CONFIRMED


async def test_resubscribing_with_the_unsubscribe_link_confirms_again(
    config: Config, store: Store,
) -> None:
    sub = await store.add_subscriber("ada@example.com", newsletter="ml-issues", confirmed=True)
    token = tokens.unsubscribe_token(KEY, sub.id)
    await subscriptions.unsubscribe(config, store, token)

    back = await subscriptions.resubscribe(config, store, token)

    assert back.status == SubscriptionStatus.CONFIRMED and back.unsubscribed_at is None
    assert await store.count_recipients("ml-issues") == 1


async def test_a_token_for_one_subscriber_never_touches_another(
    config: Config, store: Store,
) -> None:
    ada = await store.add_subscriber("ada@example.com", newsletter="ml-issues", confirmed=True)
    grace = await store.add_subscriber("grace@example.com", newsletter="ml-issues",
                                       confirmed=True)
    alan = await store.add_subscriber("alan@example.org", newsletter="ml-issues")
    bob = await store.add_subscriber("bob@example.org", newsletter="ml-issues")

    await subscriptions.unsubscribe(config, store, tokens.unsubscribe_token(KEY, ada.id))
    await subscriptions.confirm(config, store, tokens.confirm_token(KEY, alan.id))

    assert await status_of(store, "ada@example.com") == SubscriptionStatus.UNSUBSCRIBED
    assert await status_of(store, "grace@example.com") == SubscriptionStatus.CONFIRMED
    assert await status_of(store, "alan@example.org") == SubscriptionStatus.CONFIRMED
    assert await status_of(store, "bob@example.org") == SubscriptionStatus.PENDING
    assert grace.id != ada.id and bob.id != alan.id


async def test_a_confirmation_email_lost_with_the_process_is_sent_by_a_sign_up_after_the_lease(
    config: Config, store: Store, smtpd: RecordingServer,
) -> None:
    newsletter = config.newsletter("ml-issues")
    # Claimed, then the process died before the relay had it: the row says it is unsent.
    lost = await subscriptions.subscribe(config, store, newsletter, "ada@example.com", now=T0)
    assert lost is not None
    lease = subscriptions.CONFIRM_UNSENT_LEASE

    assert not await sign_up(config, store, "ada@example.com", now=T0 + lease / 2)
    assert await sign_up(config, store, "ada@example.com", now=T0 + lease)
    # Sent this time: the ten-minute rule holds again.
    assert not await sign_up(config, store, "ada@example.com", now=T0 + 2 * lease)
    assert len(confirm_links(smtpd, "ada@example.com")) == 1


async def test_every_confirmation_link_of_one_pending_period_confirms(
    config: Config, store: Store, smtpd: RecordingServer,
) -> None:
    assert await sign_up(config, store, "ada@example.com", now=T0)
    assert await sign_up(config, store, "ada@example.com", now=T0 + timedelta(minutes=10))
    first, second = confirm_links(smtpd, "ada@example.com")

    assert (await subscriptions.confirm(config, store, first.rsplit("/", 1)[1])).status \
        == SubscriptionStatus.CONFIRMED
    assert (await subscriptions.confirm(config, store, second.rsplit("/", 1)[1])).status \
        == SubscriptionStatus.CONFIRMED


async def test_a_confirmation_link_from_before_a_bounce_does_not_confirm_the_next_sign_up(
    config: Config, store: Store, smtpd: RecordingServer,
) -> None:
    assert await sign_up(config, store, "ada@example.com", now=T0)
    [old] = confirm_links(smtpd, "ada@example.com")
    await subscriptions.confirm(config, store, old.rsplit("/", 1)[1])
    sub = await storehelp.subscription_of(store, "ada@example.com", "ml-issues")
    assert sub is not None
    async with store.session.begin() as s:  # what a hard bounce of an issue does (journal)
        await s.execute(update(Subscription).where(Subscription.id == sub.id)
                        .values(status=SubscriptionStatus.BOUNCED, bounced_at=T0))

    assert await sign_up(config, store, "ada@example.com", now=T0 + timedelta(days=1))
    with pytest.raises(TokenError, match="not valid any more"):
        await subscriptions.confirm(config, store, old.rsplit("/", 1)[1])
    assert await status_of(store, "ada@example.com") == SubscriptionStatus.PENDING
    [_, new] = confirm_links(smtpd, "ada@example.com")
    await subscriptions.confirm(config, store, new.rsplit("/", 1)[1])
    assert await status_of(store, "ada@example.com") == SubscriptionStatus.CONFIRMED
