"""Subscribing and leaving: double opt-in, confirm, unsubscribe, resubscribe."""

from __future__ import annotations

import asyncio
import logging
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parseaddr

from mailer import tokens
from mailer.addresses import clean_name, normalize_email
from mailer.config import Config, Newsletter
from mailer.content import render
from mailer.delivery.message import build_notice
from mailer.delivery.single import send_one
from mailer.errors import MailerError, SubscriberError, TokenError
from mailer.keys import token_key
from mailer.rows import SubscriptionRow
from mailer.states import SubscriptionStatus, utcnow
from mailer.subscriptions.ports import SubscriberStore

log = logging.getLogger("mailer.subscriptions")


def confirm_url(config: Config, key: str, subscription_id: int, generation: int) -> str:
    token = tokens.confirm_token(key, subscription_id, generation)
    return f"{config.settings.base_url}/confirm/{token}"


async def send_confirmation(config: Config, newsletter: Newsletter, email: str,
                            subscription_id: int, *, generation: int) -> None:
    """Email the double opt-in link to the address that asked to subscribe."""
    url = confirm_url(config, token_key(config.settings), subscription_id, generation)
    subject, html, text = render.render_confirm(newsletter, config.settings, confirm_url=url,
                                                templates_dir=config.templates_dir)
    msg = build_notice(newsletter.sender, to_email=email, subject=subject, text=text, html=html,
                       date=utcnow())
    sender_address = parseaddr(newsletter.sender)[1]
    await send_one(config, sender_address, email, msg.as_bytes())


async def add(config: Config, store: SubscriberStore, newsletter: Newsletter, raw_email: str, *,
              name: str = "", confirmed: bool = False,
              attributes: Mapping[str, str] | None = None) -> str:
    """`subscribers add`: a confirmed subscriber, or a pending one who gets the confirm email.
    `attributes` were checked by attributes.parse_options.

    Raises:
        SubscriberError: the address or name is not usable.
    """
    email = normalize_email(raw_email, where="email")
    sub = await store.add_subscriber(email, newsletter=newsletter.id, name=clean_name(name),
                                     confirmed=confirmed, attributes=attributes)
    if sub.status == SubscriptionStatus.PENDING:
        await send_confirmation(config, newsletter, email, sub.id,
                                generation=sub.token_generation)
        await store.mark_confirm_sent(sub.id)
        return f"{email} is pending on {newsletter.id}: a confirmation email was sent"
    return f"{email} is {sub.status.value} on {newsletter.id}"


def confirm_max_age(config: Config) -> timedelta:
    return timedelta(days=config.settings.confirm_token_days)


# -- the public side: sign-up form, confirmation link, unsubscribe link -------------------------

# A pending address gets its confirmation email again when it signs up again, but never
# more often than this: the form must not become a way to flood a stranger's inbox.
CONFIRM_RESEND_INTERVAL = timedelta(minutes=10)
# A confirmation email claimed but never reported sent (the process died on the way) is
# due again after this: longer than a send to a slow relay takes, shorter than the above.
CONFIRM_UNSENT_LEASE = timedelta(minutes=2)


@dataclass(frozen=True, slots=True)
class ConfirmationDue:
    """A confirmation email that one sign-up won the right to send (see Store.sign_up)."""

    subscription_id: int
    generation: int
    email: str
    claimed_at: datetime


async def subscribe(config: Config, store: SubscriberStore, newsletter: Newsletter,
                    raw_email: str, *, name: str = "", now: datetime | None = None
                    ) -> ConfirmationDue | None:
    """A sign-up from the public form: store a pending subscription, decide on the email.

    New, pending, unsubscribed and bounced addresses end up pending; a confirmed one is
    left alone. Returns the confirmation email to send, or None when none is due (already
    confirmed, or one went out less than CONFIRM_RESEND_INTERVAL ago). The database work
    is the same whichever it is, and callers answer the same either way (and send the
    email after answering), so neither the answer nor its timing tells whether an
    address is on the list.

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
    now = now or utcnow()
    signed = await store.sign_up(email, newsletter=newsletter.id, name=name, now=now,
                                 every=CONFIRM_RESEND_INTERVAL, lease=CONFIRM_UNSENT_LEASE)
    if not signed.claimed:
        return None
    return ConfirmationDue(subscription_id=signed.subscription_id,
                           generation=signed.generation, email=email, claimed_at=now)


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


async def deliver_confirmation(config: Config, store: SubscriberStore, newsletter: Newsletter,
                               due: ConfirmationDue) -> bool:
    """Send a claimed confirmation email; True when the server took it.

    It runs after the answer to the form went out (its timing must not reveal whether
    an address was new), so a failure is logged, not raised, and the claim is given
    back: the next sign-up of the address sends the email instead of waiting.
    """
    try:
        await send_confirmation(config, newsletter, due.email, due.subscription_id,
                                generation=due.generation)
    except MailerError as exc:
        log.error("confirmation email not sent",
                  extra={"subscription_id": due.subscription_id, "error": str(exc)})
        await store.release_confirm_email(due.subscription_id, claimed_at=due.claimed_at)
        return False
    await store.confirm_email_sent(due.subscription_id, claimed_at=due.claimed_at)
    log.info("confirmation email sent", extra={"subscription_id": due.subscription_id})
    return True


async def confirm(config: Config, store: SubscriberStore, token: str, *, now: datetime | None = None
                  ) -> SubscriptionRow:
    """Confirm the subscription a confirmation link was made for; twice is fine.

    Raises:
        TokenError: the link is forged, expired or for something else, or its subscription
            is gone, or ended or started over after the link was sent; nothing was changed.
    """
    link = tokens.read_confirm_link(token_key(config.settings), token,
                                    max_age=confirm_max_age(config))
    sub = await store.confirm_subscription(link.subscription_id, generation=link.generation,
                                           now=now or utcnow())
    if sub is None:
        raise TokenError("this confirmation link is not valid any more; please subscribe again")
    if sub.status != SubscriptionStatus.CONFIRMED or sub.token_generation != link.generation:
        raise TokenError("this confirmation link is not valid any more: the subscription "
                         "ended after it was sent; please subscribe again")
    return sub


async def find_by_confirm_token(config: Config, store: SubscriberStore, token: str
                                ) -> SubscriptionRow:
    """The subscription a confirmation link is for, changing nothing (a scanner's GET).

    Raises:
        TokenError: the link is forged, expired or for something else, or its subscription
            is gone or started over after the link was sent.
    """
    link = tokens.read_confirm_link(token_key(config.settings), token,
                                    max_age=confirm_max_age(config))
    sub = await store.subscription(link.subscription_id)
    if sub is None or sub.token_generation != link.generation:
        raise TokenError("this confirmation link is not valid any more; please subscribe again")
    return sub


async def find_by_unsubscribe_token(config: Config, store: SubscriberStore, token: str
                                    ) -> SubscriptionRow | None:
    """The subscription an unsubscribe link is for, changing nothing (None: it is gone).

    Raises:
        TokenError: the link is forged or made for something else.
    """
    subscription_id = tokens.read_unsubscribe_token(token_key(config.settings), token)
    return await store.subscription(subscription_id)


async def unsubscribe(config: Config, store: SubscriberStore, token: str, *,
                      now: datetime | None = None) -> SubscriptionRow | None:
    """End the subscription an unsubscribe link is for, at once; idempotent.

    None: the subscription does not exist (removed, or the link of a test copy), so there
    is nothing left to stop.

    Raises:
        TokenError: the link is forged or made for something else; nothing was changed.
    """
    subscription_id = tokens.read_unsubscribe_token(token_key(config.settings), token)
    sub = await store.unsubscribe_subscription(subscription_id, now=now or utcnow())
    if sub is not None:
        log.info("subscription unsubscribed", extra={"subscription_id": subscription_id})
    return sub


async def resubscribe(config: Config, store: SubscriberStore, token: str, *,
                      now: datetime | None = None) -> SubscriptionRow:
    """Undo unsubscribing with the same link: the subscription is confirmed again.

    Raises:
        TokenError: the link is forged or for something else, or the subscription is gone.
    """
    subscription_id = tokens.read_unsubscribe_token(token_key(config.settings), token)
    sub = await store.resubscribe_subscription(subscription_id, now=now or utcnow())
    if sub is None:
        raise TokenError("this subscription no longer exists; please subscribe again")
    log.info("subscription resubscribed", extra={"subscription_id": subscription_id})
    return sub


__all__ = ["ConfirmationDue", "add", "confirm", "deliver_confirmation",
           "find_by_confirm_token", "find_by_unsubscribe_token", "resubscribe",
           "send_confirmation", "subscribe", "unsubscribe"]
