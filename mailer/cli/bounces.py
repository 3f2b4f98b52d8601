"""`mailer bounces …`: apply a returned message handed over by an MTA pipe, and list what
came back."""

from __future__ import annotations

import sys
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, Protocol

import typer
from rich.markup import escape

from mailer.cli.common import err, fails_cleanly, now, open_store, out, run_async, state
from mailer.errors import ConfigError, InputError, MailerError
from mailer.rows import ReturnedRow

if TYPE_CHECKING:
    from mailer.bounces import Applied
    from mailer.config import Config

app = typer.Typer(no_args_is_help=True, help="Bounces and complaints: apply one, list them.")

# sysexits.h: what an MTA's pipe delivery understands. EX_TEMPFAIL keeps the message queued
# and retried; any other failure would make the MTA bounce the bounce back to the remote
# server, so everything that is not worth a retry exits 0 with the reason.
EX_TEMPFAIL = 75
_REPLY_WIDTH = 120  # of the server's text in the table; the full text is in the database


class BounceListStore(Protocol):
    """`mailer bounces list`: the returned messages, newest first."""

    async def returned_messages(self, newsletter: str | None = None, *, limit: int = 200
                                ) -> list[ReturnedRow]: ...


def _store(cfg: Config) -> AbstractAsyncContextManager[BounceListStore]:
    return open_store(cfg)


@app.command("process")
def bounces_process(
    file: Annotated[Path | None, typer.Argument(
        help="the message (a DSN, an ARF report, an auto-reply…); '-' or none: stdin")] = None,
    recipient: Annotated[str | None, typer.Option(
        "--recipient", help="the envelope recipient (our VERP address), as the MTA has it "
                            "(else To, Delivered-To or X-Original-To are read)")] = None,
) -> None:
    """Apply one returned message, as an MTA's pipe hands it over; print what it was and what
    changed. Exit 0 when handled or deliberately ignored, 75 when it should be retried."""
    # Here, not at the top: the parser and its detectors load only for this command.
    from mailer import bounces

    try:
        cfg = state.config()
        if file is None or str(file) == "-":
            raw = sys.stdin.buffer.read()
        else:
            try:
                raw = file.read_bytes()
            except OSError as exc:
                raise InputError(f"{file}: {exc.strerror or exc}", field="FILE") from None

        async def go() -> Applied:
            async with open_store(cfg) as store:
                return await bounces.apply_returned(
                    store, raw, source="pipe", settings=cfg.settings,
                    envelope_recipients=[recipient] if recipient else [], now=now(cfg))

        applied = run_async(go())
    except ConfigError as exc:
        # The installation is broken, not the message: keep it queued until it is fixed.
        _fail(f"{exc} (the message stays with the MTA, which retries)", EX_TEMPFAIL)
    except InputError as exc:
        if exc.field == "FILE":
            _fail(str(exc), exc.exit_code)
        out.print(f"ignored: {exc}", markup=False, highlight=False, soft_wrap=True)
        return
    except MailerError as exc:
        _fail(str(exc), exc.exit_code)
    except Exception as exc:
        from mailer.store.db import unavailable

        if not unavailable(exc):
            raise
        _fail(f"the database is unreachable: {_first_line(exc)} (the MTA retries)",
              EX_TEMPFAIL)
    out.print(f"{applied.kind.value}: {applied.action}", markup=False, highlight=False,
              soft_wrap=True)


@app.command("list")
@fails_cleanly
def bounces_list(
    list_: Annotated[str | None, typer.Option("--list", help="only this newsletter's")] = None,
    limit: Annotated[int, typer.Option(min=1, help="at most this many")] = 200,
) -> None:
    """Bounces, complaints and auto-replies received, newest first: when, address, kind, the
    server's reply, the issue."""
    cfg = state.config()
    if list_:
        cfg.newsletter(list_)

    async def go() -> list[ReturnedRow]:
        async with _store(cfg) as store:
            return await store.returned_messages(list_, limit=limit)

    rows = run_async(go())
    if not rows:
        out.print("nothing came back" + (f" for {list_}" if list_ else ""), highlight=False)
        return
    from rich import box
    from rich.table import Column, Table

    table = Table(Column("when (UTC)", no_wrap=True), Column("address", no_wrap=True),
                  "kind", "reply", Column("issue", no_wrap=True), "via",
                  box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for row in rows:
        reply = " ".join(filter(None, [row.status_code, row.diagnostic or row.reason]))
        table.add_row(f"{row.received_at:%Y-%m-%d %H:%M}", escape(row.address or "-"),
                      row.kind.replace("_", "-"), escape(reply[:_REPLY_WIDTH]),
                      escape(f"{row.newsletter}/{row.slug}" if row.newsletter else "-"),
                      row.source)
    out.print(table)


def _fail(message: str, code: int) -> NoReturn:
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
