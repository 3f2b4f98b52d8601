"""Applying returned messages: each bounce rule through apply_returned, with the corpus in
tests/data/bounces/ carrying real VERP addresses of a real send (SQLite and PostgreSQL)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from mailer.bounces import Applied, Disposition, apply_event, apply_returned
from mailer.config import Config
from mailer.errors import InputError
from mailer.returns.events import ProviderEvent
from mailer.returns.kinds import ReturnKind
from mailer.returns.verp import verp_sender
from mailer.states import SubscriptionStatus
from mailer.store import Store
from tests import storehelp
from tests.conftest import Project
from tests.smtpd import Received, RecordingServer
from tests.test_dispatch import confirmed, run_send

BOUNCE_ADDRESS = "bounces@news.example.com"
CORPUS = Path(__file__).parent / "data" / "bounces"
EXPECTED = yaml.safe_load((CORPUS / "expected.yaml").read_text(encoding="utf-8"))
FAKE_VERP = re.compile(rb"bounces\+[0-9a-z]+@news\.example\.com")
ADA, BOB = "ada@example.com", "bob@example.com"
ISSUE = """---
subject: "Machine Learning Issues #0{n}"
status: ready
send_after: 2026-11-0{n}
---
Issue {n}.
"""
SmtpUrl = Callable[[RecordingServer], str]


@dataclass
class Sent:
    """A project sending real issues to a recording server, with bounces on."""

    project: Project
    store: Store
    server: RecordingServer
    config: Config
    issues: int = 1
    sends: list[int] = field(default_factory=list)

    async def issue(self) -> dict[str, Received]:
        """Send the next issue; what each recipient got, by address."""
        if self.sends:
            self.issues += 1
            self.project.write_issue(f"2026-11-0{self.issues}-issue.md",
                                     ISSUE.format(n=self.issues))
        before = len(self.server.messages)
        self.sends.append(await run_send(self.config, self.store))
        return {m.rcpt_tos[0]: m for m in self.server.messages[before:]}

    async def apply(self, name: str, to: Received, *, envelope: bool = True,
                    at: datetime | None = None) -> Applied:
        """Apply corpus message `name` as a bounce of the message `to` got."""
        raw = returned(name, to)
        return await apply_returned(
            self.store, raw, source="smtp", settings=self.config.settings,
            envelope_recipients=[to.mail_from] if envelope else [], now=at or now())

    async def status(self, email: str) -> SubscriptionStatus:
        sub = await storehelp.subscription_of(self.store, email, "ml-issues")
        assert sub is not None
        return sub.status


def now() -> datetime:
    # Deliveries are stamped by the real clock, so bounces are applied on it too.
    return datetime.now(UTC)


def returned(name: str, to: Received) -> bytes:
    """A corpus message made about `to`'s delivery: our real VERP address in place of the
    made-up one, and the reader's address in place of the corpus's."""
    raw = FAKE_VERP.sub(to.mail_from.encode(), (CORPUS / name).read_bytes())
    for address in EXPECTED[name]["addresses"]:
        raw = re.sub(re.escape(address).encode(), to.rcpt_tos[0].encode(), raw, flags=re.I)
    return raw


@pytest.fixture
async def sent(project: Project, store: Store, smtp_url_of: SmtpUrl) -> AsyncIterator[Sent]:
    async with RecordingServer() as server:
        config = project.configure(smtp_url=smtp_url_of(server), retry_base_seconds=0,
                                   bounce_address=BOUNCE_ADDRESS)
        await confirmed(store, [ADA, BOB])
        yield Sent(project, store, server, config)


async def test_a_hard_bounce_suppresses_the_address_everywhere_and_the_next_issue_skips_it(
    sent: Sent,
) -> None:
    await sent.store.add_subscriber(ADA, newsletter="other-list", confirmed=True)
    first = await sent.issue()
    assert first[ADA].mail_from != first[BOB].mail_from  # one VERP address per delivery

    applied = await sent.apply("postfix-user-unknown.eml", first[ADA])

    assert applied.outcome == Disposition.APPLIED
    assert applied.kind == ReturnKind.HARD
    assert applied.address == ADA
    assert applied.action == f"hard bounce: {ADA} is now bounced"
    assert await sent.status(ADA) == SubscriptionStatus.BOUNCED
    other = await storehelp.subscription_of(sent.store, ADA, "other-list")
    assert other is not None and other.status == SubscriptionStatus.BOUNCED
    assert await sent.status(BOB) == SubscriptionStatus.CONFIRMED
    row = next(d for d in await storehelp.deliveries(sent.store, sent.sends[0])
               if d.email == ADA)
    assert row.id == applied.delivery_id
    assert row.returned_kind == ReturnKind.HARD and "User unknown" in (row.returned_reply or "")
    listed = await sent.store.returned_messages("ml-issues")
    assert [(r.address, r.kind, r.status_code) for r in listed] == [(ADA, "hard", "5.1.1")]

    assert list(await sent.issue()) == [BOB]


async def test_soft_bounces_suppress_only_when_the_limit_is_reached_within_the_window(
    sent: Sent,
) -> None:
    actions = []
    for _ in range(3):
        actions.append((await sent.apply("mailbox-full-5.2.2.eml", (await sent.issue())[ADA])
                        ).action)
        if len(actions) < 3:
            assert await sent.status(ADA) == SubscriptionStatus.CONFIRMED

    assert actions == ["soft bounce 1 of 3 within 30 days", "soft bounce 2 of 3 within 30 days",
                       f"soft bounce 3 of 3 within 30 days: {ADA} is now bounced"]
    assert await sent.status(ADA) == SubscriptionStatus.BOUNCED
    assert await sent.status(BOB) == SubscriptionStatus.CONFIRMED


async def test_soft_bounces_further_apart_than_the_window_never_add_up(sent: Sent) -> None:
    start = now()
    for days in (0, 20, 40):  # three in all, never three within 30 days
        applied = await sent.apply("mailbox-full-5.2.2.eml", (await sent.issue())[ADA],
                                   at=start + timedelta(days=days))
    assert applied.action == "soft bounce 2 of 3 within 30 days"
    assert await sent.status(ADA) == SubscriptionStatus.CONFIRMED


async def test_a_later_delivery_that_got_through_starts_the_soft_count_again(
    sent: Sent,
) -> None:
    start = now()
    await sent.apply("mailbox-full-5.2.2.eml", (await sent.issue())[ADA],
                     at=start + timedelta(hours=1))
    await sent.apply("mailbox-full-5.2.2.eml", (await sent.issue())[ADA],
                     at=start + timedelta(hours=2))
    await sent.issue()  # nothing comes back for this one
    fourth = (await sent.issue())[ADA]

    # Three hours later the third issue may still bounce (a DSN comes when the remote queue
    # gives up, days later): it proves nothing yet, and the count goes on.
    assert (await sent.apply("mailbox-full-5.2.2.eml", fourth, at=start + timedelta(hours=3))
            ).action == f"soft bounce 3 of 3 within 30 days: {ADA} is now bounced"


async def test_a_delivery_settled_without_a_bounce_resets_the_count(sent: Sent) -> None:
    start = now()
    await sent.apply("mailbox-full-5.2.2.eml", (await sent.issue())[ADA],
                     at=start + timedelta(hours=1))
    await sent.apply("mailbox-full-5.2.2.eml", (await sent.issue())[ADA],
                     at=start + timedelta(hours=2))
    await sent.issue()  # got through: six days and nothing came back
    fourth = (await sent.issue())[ADA]

    applied = await sent.apply("mailbox-full-5.2.2.eml", fourth, at=start + timedelta(days=6))

    assert applied.action == "soft bounce 1 of 3 within 30 days"
    assert await sent.status(ADA) == SubscriptionStatus.CONFIRMED


async def test_a_complaint_marks_every_subscription_complained_and_no_issue_follows(
    sent: Sent,
) -> None:
    first = await sent.issue()
    # The ARF report comes to the feedback address; our VERP is in the original it quotes.
    applied = await sent.apply("arf-complaint.eml", first[ADA], envelope=False)

    assert (applied.outcome, applied.kind) == (Disposition.APPLIED, ReturnKind.COMPLAINT)
    assert applied.action == f"complaint: {ADA} is now complained"
    assert await sent.status(ADA) == SubscriptionStatus.COMPLAINED
    assert list(await sent.issue()) == [BOB]
    # An import never brings a complained address back; their own sign-up does, pending
    # until they confirm by the link mailed to them.
    await confirmed(sent.store, [ADA])
    assert await sent.status(ADA) == SubscriptionStatus.COMPLAINED
    signed = await sent.store.sign_up(ADA, newsletter="ml-issues", name="", now=now(),
                                      every=timedelta(minutes=10), lease=timedelta(minutes=1))
    assert signed.claimed and await sent.status(ADA) == SubscriptionStatus.PENDING


async def test_a_policy_refusal_leaves_the_address_alone_and_counts_against_the_send(
    sent: Sent,
) -> None:
    first = await sent.issue()
    applied = await sent.apply("spam-block-5.7.1.eml", first[ADA])

    assert applied.kind == ReturnKind.POLICY and applied.outcome == Disposition.APPLIED
    assert applied.action == "policy refusal counted against ml-issues/2026-12-07-first-issue"
    assert await sent.status(ADA) == SubscriptionStatus.CONFIRMED
    assert await sent.store.return_counts(sent.sends[0]) == {"policy": 1}


async def test_an_auto_reply_is_kept_as_evidence_and_changes_nothing(sent: Sent) -> None:
    first = await sent.issue()
    applied = await sent.apply("vacation-sieve.eml", first[ADA], envelope=False)

    assert (applied.outcome, applied.action) == (Disposition.IGNORED, "ignored: auto-reply")
    assert applied.delivery_id is not None
    assert await sent.status(ADA) == SubscriptionStatus.CONFIRMED
    assert [r.kind for r in await sent.store.returned_messages()] == ["auto_reply"]
    assert await sent.store.return_counts(sent.sends[0]) == {}


async def test_forged_and_foreign_verp_tokens_and_strangers_change_nothing(sent: Sent) -> None:
    first = await sent.issue()
    real = first[ADA]
    local, _, domain = real.mail_from.partition("@")
    tampered = local[:-1] + ("a" if local[-1] != "a" else "b") + "@" + domain
    ada_id = next(d.id for d in await storehelp.deliveries(sent.store, sent.sends[0])
                  if d.email == ADA)
    foreign = verp_sender(BOUNCE_ADDRESS, "another-installations-key", ada_id)
    for address in (tampered, foreign):
        applied = await sent.apply("postfix-user-unknown.eml",
                                   Received(address, real.rcpt_tos, b""))
        assert (applied.outcome, applied.action) == (Disposition.NOT_OURS,
                                                     "not ours: forged VERP token")
        assert applied.delivery_id is None

    # A DSN about an address we never mailed, for a message that is not ours.
    stranger = (CORPUS / "postfix-user-unknown.eml").read_bytes()
    stranger = FAKE_VERP.sub(b"postmaster@news.example.com", stranger)
    applied = await apply_returned(sent.store, stranger, source="pipe",
                                   settings=sent.config.settings, now=now())
    assert applied.outcome == Disposition.NOT_OURS

    assert await sent.status(ADA) == SubscriptionStatus.CONFIRMED
    assert await sent.store.returned_messages() == []


async def test_the_same_bounce_twice_is_a_duplicate_the_second_time(sent: Sent) -> None:
    first = await sent.issue()
    once = await sent.apply("mailbox-full-5.2.2.eml", first[ADA])
    twice = await sent.apply("mailbox-full-5.2.2.eml", first[ADA])

    assert once.outcome == Disposition.APPLIED
    assert (twice.outcome, twice.action) == (Disposition.DUPLICATE, "duplicate: applied before")
    assert len(await sent.store.returned_messages()) == 1
    assert await sent.store.return_counts(sent.sends[0]) == {"soft": 1}


async def test_without_a_verp_address_the_original_message_id_finds_the_delivery(
    sent: Sent,
) -> None:
    first = await sent.issue()
    rows = {d.email: d for d in await storehelp.deliveries(sent.store, sent.sends[0])}
    raw = returned("postfix-user-unknown.eml", first[BOB])
    raw = raw.replace(first[BOB].mail_from.encode(), BOUNCE_ADDRESS.encode())  # no token
    raw = raw.replace(b"<173295720000.4821.12@news.example.com>",
                      (rows[BOB].message_id or "").encode())

    applied = await apply_returned(sent.store, raw, source="imap",
                                   settings=sent.config.settings, now=now())

    assert (applied.outcome, applied.delivery_id) == (Disposition.APPLIED, rows[BOB].id)
    assert await sent.status(BOB) == SubscriptionStatus.BOUNCED
    # The same Message-ID in a report about someone else is not about our delivery.
    other = raw.replace(BOB.encode(), b"carol@example.net")
    assert (await apply_returned(sent.store, other, source="imap",
                                 settings=sent.config.settings, now=now())
            ).outcome == Disposition.NOT_OURS


async def test_a_provider_complaint_applies_once_however_often_the_webhook_is_retried(
    sent: Sent,
) -> None:
    await sent.issue()
    row = next(d for d in await storehelp.deliveries(sent.store, sent.sends[0])
               if d.email == ADA)
    event = ProviderEvent(kind=ReturnKind.COMPLAINT, address=ADA, message_id=row.message_id,
                          verp=None, status=None, detail="abuse", provider="postmark",
                          occurred_at=now(), provider_id="pm-1")
    results = [await apply_event(sent.store, event, source="postmark",
                                 settings=sent.config.settings, raw=b"{}", now=now())
               for _ in range(2)]

    assert [r.outcome for r in results] == [Disposition.APPLIED, Disposition.DUPLICATE]
    assert await sent.status(ADA) == SubscriptionStatus.COMPLAINED


async def test_an_oversize_message_is_refused_with_input_error(sent: Sent) -> None:
    with pytest.raises(InputError):
        await apply_returned(sent.store, b"x" * (10 * 1024 * 1024 + 1), source="pipe",
                             settings=sent.config.settings, now=now())
