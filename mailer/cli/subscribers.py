"""`mailer subscribers …`: add, import, export, list and remove subscribers."""

from __future__ import annotations

import csv
import sys
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mailer.cli.common import err, fails_cleanly, now, open_store, out, run_async, state
from mailer.errors import InputError
from mailer.states import SubscriptionStatus

if TYPE_CHECKING:
    from rich.table import Table

    from mailer.cli.ports import ListStore
    from mailer.config import Config

# The use cases are imported inside each command: building the `mailer` command (for
# `send-now`, `worker`, `--help`) must not load the renderer, SMTP or the database.

app = typer.Typer(no_args_is_help=True, help="Add, import, export and remove subscribers.")


ListOpt = Annotated[str, typer.Option("--list", help="the newsletter id")]


def _list_store(cfg: Config) -> AbstractAsyncContextManager[ListStore]:
    """The database as these commands use it: closed when the command's work is done."""
    return open_store(cfg)


@app.command("add")
@fails_cleanly
def subscribers_add(
    email: str, list_: ListOpt,
    name: Annotated[str, typer.Option(help="display name")] = "",
    attr: Annotated[list[str] | None, typer.Option(
        "--attr", metavar="KEY=VALUE",
        help="an attribute for personal fields (repeatable); fills one the address lacks")
    ] = None,
    confirmed: Annotated[bool, typer.Option(
        "--confirmed", help="skip double opt-in (only for people who already agreed)")] = False,
) -> None:
    """Add one subscriber (pending, with a confirmation email, unless --confirmed)."""
    from mailer import subscriptions
    from mailer.subscriptions import attributes as attrs
    from mailer.subscriptions.manage import refuse_erased

    cfg = state.config()
    newsletter = cfg.newsletter(list_)
    attributes = attrs.parse_options(attr or [])

    async def go() -> str:
        async with _list_store(cfg) as store:
            if confirmed:
                await refuse_erased(cfg, store, [email])
            return await subscriptions.add(cfg, store, newsletter, email, name=name,
                                           confirmed=confirmed, attributes=attributes)

    out.print(run_async(go()), highlight=False)


@app.command("import")
@fails_cleanly
def subscribers_import(
    file: Path, list_: ListOpt,
    confirmed: Annotated[bool, typer.Option("--confirmed")] = False,
    welcome: Annotated[bool, typer.Option(
        "--welcome", help="with --confirmed: start the welcome email and the sequence for "
                          "those it confirms (an import starts none by itself)")] = False,
) -> None:
    """Import a CSV (email[,name[,KEY…]], or an export; columns after the name are attributes
    named by the header); a bad row stops it and nothing is stored."""
    from mailer import subscriptions
    from mailer.subscriptions.manage import refuse_erased

    cfg = state.config()
    newsletter = cfg.newsletter(list_)
    if welcome and not confirmed:
        raise InputError("--welcome goes with --confirmed: pending readers get the welcome "
                         "email when they confirm", field="--welcome")
    rows = subscriptions.read_import(file, confirmed=confirmed)

    async def go() -> int:
        async with _list_store(cfg) as store:
            if confirmed:
                await refuse_erased(cfg, store, (row.email for row in rows), file=file)
            return await store.import_subscribers(rows, newsletter=newsletter.id,
                                                  confirmed=confirmed, welcome=welcome,
                                                  now=now(cfg))

    count = run_async(go())
    state_word = "confirmed" if confirmed else "pending"
    out.print(f"imported {count} subscribers into {newsletter.id} ({state_word})")


def _status_option(status: str | None) -> SubscriptionStatus | None:
    if status is None:
        return None
    try:
        return SubscriptionStatus(status)
    except ValueError:
        known = ", ".join(s.value for s in SubscriptionStatus)
        raise InputError(f"unknown status {status!r} (one of {known})", field="--status") from None


@app.command("export")
@fails_cleanly
def subscribers_export(
    list_: ListOpt, status: Annotated[str | None, typer.Option(help="only this state")] = None,
) -> None:
    """Write the subscribers as CSV to stdout."""
    from mailer.subscriptions import attributes as attrs
    from mailer.subscriptions import csvcells

    cfg = state.config()
    newsletter = cfg.newsletter(list_)
    wanted = _status_option(status)

    async def go() -> None:
        async with _list_store(cfg) as store:
            # Every attribute key is a column, sorted; `subscribers import` reads them back.
            keys = await store.attribute_keys(newsletter=newsletter.id, status=wanted)
            writer = csv.writer(sys.stdout, lineterminator="\n")
            writer.writerow([*csvcells.EXPORT_HEADER, *keys])
            async for row in store.subscribers(newsletter=newsletter.id, status=wanted):
                # Names come from the public form: a `=HYPERLINK(…)` must reach a
                # spreadsheet as text (`'=…`); `subscribers import` takes the quote off.
                writer.writerow(csvcells.escape_row([
                    row.email, row.name, row.status.value, row.created_at.isoformat(),
                    row.confirmed_at.isoformat() if row.confirmed_at else "",
                    *attrs.as_columns(row.attributes, keys)]))

    run_async(go())


@app.command("list")
@fails_cleanly
def subscribers_list(
    list_: ListOpt, status: Annotated[str | None, typer.Option(help="only this state")] = None,
) -> None:
    """Show the subscribers of a newsletter."""
    from rich.markup import escape
    from rich.table import Table

    cfg = state.config()
    newsletter = cfg.newsletter(list_)
    wanted = _status_option(status)

    async def go() -> Table:
        table = Table("email", "name", "status", "since")
        async with _list_store(cfg) as store:
            async for row in store.subscribers(newsletter=newsletter.id, status=wanted):
                # Escaped: a reader's name is their text, not rich markup to style (or
                # link) the author's terminal.
                table.add_row(escape(row.email), escape(row.name), row.status.value,
                              f"{row.created_at:%Y-%m-%d}")
        return table

    out.print(run_async(go()))


@app.command("remove")
@fails_cleanly
def subscribers_remove(email: str, list_: ListOpt) -> None:
    """Remove a subscriber from a newsletter (their address is deleted if on no other list)."""
    cfg = state.config()
    newsletter = cfg.newsletter(list_)

    async def go() -> bool:
        async with _list_store(cfg) as store:
            return await store.remove_subscriber(email.strip(), newsletter=newsletter.id)

    if not run_async(go()):
        err.print(f"error: {email} is not on {newsletter.id}")
        raise typer.Exit(1)
    out.print(f"removed {email} from {newsletter.id}")
