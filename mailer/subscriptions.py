"""Subscribing and leaving: double opt-in, confirm, unsubscribe, and CSV import rows."""

from __future__ import annotations

import asyncio
import csv
import logging
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

from mailer import render, tokens
from mailer.addresses import clean_name, normalize_email
from mailer.config import Config, Newsletter
from mailer.errors import MailerError, SubscriberError, TokenError
from mailer.keys import token_key
from mailer.message import message_id
from mailer.models import Subscription, SubscriptionStatus, utcnow
from mailer.sender import send_one
from mailer.store import Store

log = logging.getLogger("mailer.subscriptions")

MAX_IMPORT_ERRORS_SHOWN = 20


def read_csv(path: Path) -> list[tuple[str, str]]:
    """Rows (email, name) of an import file with columns `email[,name]` (a header is optional).

    Raises:
        SubscriberError: naming every bad row by line number; nothing is returned then.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise SubscriberError(f"cannot read: {exc}", file=str(path)) from None
    rows: list[tuple[str, str]] = []
    problems: list[str] = []
    seen: set[str] = set()
    reader = csv.reader(text.splitlines())
    for cells in reader:
        line = reader.line_num
        if not cells or all(not c.strip() for c in cells):
            continue
        if line == 1 and cells[0].strip().lower() in ("email", "e-mail", "address"):
            continue
        if len(cells) > 2:
            problems.append(f"line {line}: expected email[,name], got {len(cells)} columns")
            continue
        try:
            email = normalize_email(cells[0])
            name = clean_name(cells[1] if len(cells) > 1 else "")
        except SubscriberError as exc:
            problems.append(f"line {line}: {exc.message}")
            continue
        if email in seen:
            continue
        seen.add(email)
        rows.append((email, name))
    if problems:
        shown = problems[:MAX_IMPORT_ERRORS_SHOWN]
        more = len(problems) - len(shown)
        summary = "; ".join(shown) + (f"; and {more} more" if more else "")
        raise SubscriberError(f"{len(problems)} bad row(s), nothing imported: {summary}",
                              file=str(path))
    return rows


def confirm_url(config: Config, key: str, subscription_id: int) -> str:
    return f"{config.settings.base_url}/confirm/{tokens.confirm_token(key, subscription_id)}"


async def send_confirmation(config: Config, newsletter: Newsletter, email: str,
                            subscription_id: int) -> None:
    """Email the double opt-in link to the address that asked to subscribe."""
    url = confirm_url(config, token_key(config.settings), subscription_id)
    subject, html, text = render.render_confirm(newsletter, config.settings, confirm_url=url,
                                                templates_dir=config.templates_dir)
    msg = EmailMessage()
    msg["From"] = newsletter.sender
    msg["To"] = email
    msg["Subject"] = subject
    msg["Date"] = format_datetime(utcnow())
    sender_address = msg["From"].addresses[0].addr_spec
    msg["Message-ID"] = message_id(sender_address.rpartition("@")[2])
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to this
    msg.set_content(text)
    msg.add_alternative(html, subtype="html")
    await send_one(config, sender_address, email, msg.as_bytes())


async def add(config: Config, store: Store, newsletter: Newsletter, raw_email: str, *,
              name: str = "", confirmed: bool = False) -> str:
    """`subscribers add`: a confirmed subscriber, or a pending one who gets the confirm email.

    Raises:
        SubscriberError: the address or name is not usable.
    """
    email = normalize_email(raw_email, where="email")
    sub = await store.add_subscriber(email, newsletter=newsletter.id, name=clean_name(name),
                                     confirmed=confirmed)
    if sub.status == SubscriptionStatus.PENDING:
        await send_confirmation(config, newsletter, email, sub.id)
        await store.mark_confirm_sent(sub.id)
        return f"{email} is pending on {newsletter.id}: a confirmation email was sent"
    return f"{email} is {sub.status.value} on {newsletter.id}"


def confirm_max_age(config: Config) -> timedelta:
    return timedelta(days=config.settings.confirm_token_days)


# -- the public side: sign-up form, confirmation link, unsubscribe link -------------------------

# A pending address gets its confirmation email again when it signs up again, but never
# more often than this: the form must not become a way to flood a stranger's inbox.
CONFIRM_RESEND_INTERVAL = timedelta(minutes=10)


@dataclass(frozen=True, slots=True)
class ConfirmationDue:
    """A confirmation email that one sign-up won the right to send (see claim_confirm_email)."""

    subscription_id: int
    email: str
    claimed_at: datetime


async def subscribe(config: Config, store: Store, newsletter: Newsletter, raw_email: str, *,
                    name: str = "", now: datetime | None = None) -> ConfirmationDue | None:
    """A sign-up from the public form: store a pending subscription, decide on the email.

    New, pending, unsubscribed and bounced addresses end up pending; a confirmed one is
    left alone. Returns the confirmation email to send, or None when none is due (already
    confirmed, or one went out less than CONFIRM_RESEND_INTERVAL ago). Callers answer the
    same either way, so the answer never tells whether an address is on the list.

    Raises:
        SubscriberError: the address or name is not usable; nothing was stored.
    """
    if not raw_email.strip():
        raise SubscriberError("an address is required", field="email")
    if config.settings.check_deliverability:
        # email-validator resolves MX records with blocking DNS calls: keep the loop free.
        email = await asyncio.to_thread(normalize_email, raw_email, check_deliverability=True,
                                        where="email")
    else:
        email = normalize_email(raw_email, where="email")
    _refuse_lookalike_domain(email)
    name = clean_name(name, where="name")
    # A form field can carry anything: control characters have no place in a display name,
    # and a lone surrogate (valid in JSON, "\ud800") cannot even be stored as UTF-8.
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in name):
        raise SubscriberError("a name may not contain control characters", field="name")
    sub = await store.request_subscription(email, newsletter=newsletter.id, name=name)
    if sub.status != SubscriptionStatus.PENDING:
        return None
    now = now or utcnow()
    if not await store.claim_confirm_email(sub.id, now=now, every=CONFIRM_RESEND_INTERVAL):
        return None
    return ConfirmationDue(subscription_id=sub.id, email=email, claimed_at=now)


# Scripts whose letters pass for each other (Latin a, Cyrillic а, Greek α): one domain label
# mixing them is a lookalike. Other mixtures are ordinary (Japanese labels mix three scripts).
_CONFUSABLE_SCRIPTS = {"LATIN", "CYRILLIC", "GREEK"}


def _refuse_lookalike_domain(email: str) -> None:
    # Browsers show such labels as xn--… for the same reason (UTS #39, mixed-script
    # detection). The public form refuses them; the local part is ASCII already.
    for label in email.rpartition("@")[2].split("."):
        try:
            text = label.encode("ascii").decode("idna") if label.startswith("xn--") else label
        except UnicodeError:  # email-validator checked the IDNA form; be safe regardless
            text = label
        scripts = {unicodedata.name(c, "?").split()[0] for c in text if c.isalpha()}
        if len(scripts & _CONFUSABLE_SCRIPTS) > 1:
            raise SubscriberError(f"the domain mixes {' and '.join(sorted(scripts))} letters "
                                  f"that look alike ({text!r}): please check it", field="email")


async def deliver_confirmation(config: Config, store: Store, newsletter: Newsletter,
                               due: ConfirmationDue) -> bool:
    """Send a claimed confirmation email; True when the server took it.

    It runs after the answer to the form went out (its timing must not reveal whether
    an address was new), so a failure is logged, not raised, and the claim is given
    back: the next sign-up of the address sends the email instead of waiting.
    """
    try:
        await send_confirmation(config, newsletter, due.email, due.subscription_id)
    except MailerError as exc:
        log.error("confirmation email for subscription %d not sent: %s", due.subscription_id,
                  exc)
        await store.release_confirm_email(due.subscription_id, claimed_at=due.claimed_at)
        return False
    log.info("confirmation email sent for subscription %d", due.subscription_id)
    return True


async def confirm(config: Config, store: Store, token: str, *, now: datetime | None = None
                  ) -> Subscription:
    """Confirm the subscription a confirmation link was made for; twice is fine.

    Raises:
        TokenError: the link is forged, expired or for something else, or its subscription
            is gone or ended after the link was sent; nothing was changed.
    """
    subscription_id = tokens.read_confirm_token(token_key(config.settings), token,
                                                max_age=confirm_max_age(config))
    sub = await store.confirm_subscription(subscription_id, now=now or utcnow())
    if sub is None:
        raise TokenError("this confirmation link is not valid any more; please subscribe again")
    if sub.status != SubscriptionStatus.CONFIRMED:
        raise TokenError("this confirmation link is not valid any more: the subscription "
                         "ended after it was sent; please subscribe again")
    return sub


async def find_by_unsubscribe_token(config: Config, store: Store, token: str
                                    ) -> Subscription | None:
    """The subscription an unsubscribe link is for, changing nothing (None: it is gone).

    Raises:
        TokenError: the link is forged or made for something else.
    """
    subscription_id = tokens.read_unsubscribe_token(token_key(config.settings), token)
    return await store.subscription(subscription_id)


async def unsubscribe(config: Config, store: Store, token: str, *, now: datetime | None = None
                      ) -> Subscription | None:
    """End the subscription an unsubscribe link is for, at once; idempotent.

    None: the subscription does not exist (removed, or the link of a test copy), so there
    is nothing left to stop.

    Raises:
        TokenError: the link is forged or made for something else; nothing was changed.
    """
    subscription_id = tokens.read_unsubscribe_token(token_key(config.settings), token)
    sub = await store.unsubscribe_subscription(subscription_id, now=now or utcnow())
    if sub is not None:
        log.info("subscription %d unsubscribed", subscription_id)
    return sub


async def resubscribe(config: Config, store: Store, token: str, *, now: datetime | None = None
                      ) -> Subscription:
    """Undo unsubscribing with the same link: the subscription is confirmed again.

    Raises:
        TokenError: the link is forged or for something else, or the subscription is gone.
    """
    subscription_id = tokens.read_unsubscribe_token(token_key(config.settings), token)
    sub = await store.resubscribe_subscription(subscription_id, now=now or utcnow())
    if sub is None:
        raise TokenError("this subscription no longer exists; please subscribe again")
    log.info("subscription %d resubscribed", subscription_id)
    return sub


__all__ = ["ConfirmationDue", "Subscription", "add", "confirm", "deliver_confirmation",
           "find_by_unsubscribe_token", "read_csv", "resubscribe", "send_confirmation",
           "subscribe", "unsubscribe"]
