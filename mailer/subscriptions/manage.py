"""A subscriber's own page: their newsletters, their name, their data, and erasing them.

Everything is reached with the manage token of one of their subscriptions (the link in
every issue's footer), so a page can only ever show and change its own subscriber.
Joining a newsletter from here confirms at once, with no confirmation email: the token
reached the address by mail, which proves it as well as a confirmation link would.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import unicodedata
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from mailer import tokens
from mailer.addresses import clean_name, normalize_email
from mailer.config import Config
from mailer.errors import SubscriberError, TokenError
from mailer.keys import token_key
from mailer.rows import PersonDelivery, PersonRow
from mailer.states import utcnow
from mailer.subscriptions import csvcells

log = logging.getLogger("mailer.subscriptions")

ACTIONS = ("leave", "join", "rename", "export", "delete")


class ErasedStore(Protocol):
    """The one query `subscribers add/import --confirmed` needs to refuse erased addresses."""

    async def erased_among(self, hashes: Mapping[str, str]) -> set[str]: ...


class ManageStore(ErasedStore, Protocol):
    """The queries of the manage page (mailer.store.Store satisfies it)."""

    async def person(self, subscription_id: int) -> PersonRow | None: ...

    async def person_deliveries(self, subscriber_id: int) -> list[PersonDelivery]: ...

    async def rename_subscriber(self, subscriber_id: int, name: str) -> None: ...

    async def leave_newsletter(self, subscriber_id: int, newsletter: str, *,
                               now: datetime) -> None: ...

    async def join_newsletter(self, subscriber_id: int, newsletter: str, *,
                              now: datetime) -> None: ...

    async def erase_subscriber(self, subscriber_id: int, *, address_hash: str,
                               now: datetime) -> bool: ...


def manage_url(config: Config, key: str, subscription_id: int) -> str:
    """The link to a subscriber's own page, made from one of their subscriptions."""
    return f"{config.settings.base_url}/manage/{tokens.manage_token(key, subscription_id)}"


def address_hash(secret_key: str, email: str) -> str:
    """HMAC-SHA256 of a normalised address under the install's key, hex: what is kept of
    an erased address. Keyed, so a list of known addresses cannot be checked against it
    by anyone without the key."""
    return hmac.new(secret_key.encode(), b"mailer.erased.v1\0" + email.encode(),
                    hashlib.sha256).hexdigest()


async def find_person(config: Config, store: ManageStore, token: str) -> PersonRow:
    """The subscriber a manage link is for, changing nothing (a scanner's GET).

    Raises:
        TokenError: the link is forged or made for something else, or its subscriber is
            gone (erased or removed).
    """
    subscription_id = tokens.read_manage_token(token_key(config.settings), token)
    person = await store.person(subscription_id)
    if person is None:
        raise TokenError("this link to your subscription page is not valid any more: the "
                         "address is no longer on any of our lists")
    return person


async def leave(config: Config, store: ManageStore, person: PersonRow, newsletter: str, *,
                now: datetime | None = None) -> None:
    """Leave one newsletter; the others stay as they are. Idempotent.

    Raises:
        SubscriberError: the subscriber is not on that newsletter.
    """
    if newsletter not in {s.newsletter for s in person.subscriptions}:
        raise SubscriberError("you are not on that newsletter", field="newsletter")
    await store.leave_newsletter(person.subscriber_id, newsletter, now=now or utcnow())
    log.info("left from the manage page", extra={"subscriber_id": person.subscriber_id,
                                                  "newsletter": newsletter})


async def join(config: Config, store: ManageStore, person: PersonRow, newsletter: str, *,
               now: datetime | None = None) -> None:
    """Join (or come back to) a newsletter of this install, confirmed at once. Idempotent.

    Raises:
        SubscriberError: there is no such newsletter here.
    """
    if newsletter not in config.newsletters:
        raise SubscriberError("there is no newsletter of that name here", field="newsletter")
    await store.join_newsletter(person.subscriber_id, newsletter, now=now or utcnow())
    log.info("joined from the manage page", extra={"subscriber_id": person.subscriber_id,
                                                    "newsletter": newsletter})


async def rename(store: ManageStore, person: PersonRow, raw_name: str) -> str:
    """Set the subscriber's name (empty: no name); the name as stored.

    Raises:
        SubscriberError: the name is not usable.
    """
    name = clean_name(raw_name, where="name")
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in name):
        raise SubscriberError("a name may not contain control characters", field="name")
    await store.rename_subscriber(person.subscriber_id, name)
    return name


async def export(store: ManageStore, person: PersonRow) -> dict[str, Any]:
    """Everything stored about this subscriber, as a JSON-ready document ("download my
    data"): nothing about anyone else."""
    deliveries = await store.person_deliveries(person.subscriber_id)
    return {
        "email": person.email,
        "name": person.name,
        "attributes": dict(person.attributes),
        "created_at": _iso(person.created_at),
        "subscriptions": [
            {"newsletter": s.newsletter, "status": s.status.value,
             "created_at": _iso(s.created_at), "confirmed_at": _iso(s.confirmed_at),
             "unsubscribed_at": _iso(s.unsubscribed_at), "bounced_at": _iso(s.bounced_at)}
            for s in person.subscriptions],
        "deliveries": [
            {"newsletter": d.newsletter, "issue": d.issue, "subject": d.subject,
             "status": d.status.value, "queued_at": _iso(d.queued_at),
             "sent_at": _iso(d.sent_at), "returned": d.returned_kind,
             "returned_at": _iso(d.returned_at)}
            for d in deliveries],
    }


async def erase(config: Config, store: ManageStore, person: PersonRow, *,
                now: datetime | None = None) -> None:
    """"Delete me": erase the subscriber and every copy of the address, keeping only its
    keyed hash (see address_hash). Idempotent. A later form sign-up of the address starts
    a fresh double opt-in; `subscribers add/import --confirmed` of it is refused."""
    erased = await store.erase_subscriber(
        person.subscriber_id, address_hash=address_hash(token_key(config.settings),
                                                        person.email),
        now=now or utcnow())
    if erased:
        log.info("subscriber erased at their request",
                 extra={"subscriber_id": person.subscriber_id})


REFUSED = ("was erased at its owner's request (\"delete me\"); only they can subscribe "
           "it again, through the sign-up form")


async def refuse_erased(config: Config, store: ErasedStore, emails: Iterable[str], *,
                        file: Path | None = None) -> None:
    """Stop `--confirmed` from bringing back an address its owner erased.

    Raises:
        SubscriberError: naming each such address (with its line in `file`, as bad rows
            of an import are named); nothing may be stored then.
    """
    key = token_key(config.settings)
    if file is None:  # `subscribers add`: one address, as typed
        emails = [normalize_email(e, where="email") for e in emails]
    hashes = {address_hash(key, e): e for e in emails}
    erased = await store.erased_among(hashes)
    if not erased:
        return
    if file is None:
        raise SubscriberError(f"{', '.join(sorted(erased))} {REFUSED}", field="email")
    problems = [f"line {line}: {email} {REFUSED}" for line, email in _lines_of(file, erased)]
    raise SubscriberError(f"{len(problems)} bad row(s), nothing imported: "
                          + "; ".join(problems), file=str(file))


def _lines_of(file: Path, emails: set[str]) -> list[tuple[int, str]]:
    # The rows read_csv returned carry no line numbers; this runs only when there is
    # something to refuse, so reading the file once more costs nothing in the usual case.
    found: list[tuple[int, str]] = []
    with file.open("rb") as binary:
        for line, raw in csvcells.records(binary):
            if not raw:
                continue
            try:
                email = normalize_email(csvcells.unescape_cell(raw[0]))
            except SubscriberError:
                continue
            if email in emails and email not in {e for _, e in found}:
                found.append((line, email))
    return found


def _iso(when: datetime | None) -> str | None:
    return when.isoformat() if when is not None else None
