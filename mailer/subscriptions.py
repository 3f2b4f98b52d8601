"""Subscribing and leaving: double opt-in, confirm, unsubscribe, and CSV import rows."""

from __future__ import annotations

import csv
import logging
from datetime import timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

from mailer import render, tokens
from mailer.addresses import clean_name, normalize_email
from mailer.config import Config, Newsletter
from mailer.errors import SubscriberError
from mailer.keys import load_or_create_secret_key
from mailer.message import message_id
from mailer.models import Subscription, SubscriptionStatus, utcnow
from mailer.sender import send_one
from mailer.store import Store

log = logging.getLogger("mailer.subscriptions")

MAX_IMPORT_ERRORS_SHOWN = 20


def secret_key(config: Config) -> str:
    configured = config.settings.secret_key
    return load_or_create_secret_key(configured.get_secret_value() if configured else None,
                                     config.settings.var_dir)


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
    url = confirm_url(config, secret_key(config), subscription_id)
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


__all__ = ["Subscription", "add", "read_csv", "send_confirmation"]
