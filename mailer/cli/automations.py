"""`mailer automations run [--once]`: send the welcome emails and sequence steps due now, as
the daemon does by itself (for those who run mailer from cron instead of `mailer run`)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from mailer.cli.common import err, fails_cleanly, open_store, out, run_async, state

if TYPE_CHECKING:
    from mailer.config import Config
    from mailer.content import Issue
    from mailer.sending.automations import AutomationRun

app = typer.Typer(no_args_is_help=True, help="Welcome emails and sequence steps.")


@app.command("run")
@fails_cleanly
def automations_run(
    once: Annotated[bool, typer.Option(
        "--once", help="send what is due now and return (else look again every minute "
                       "until Ctrl-C)")] = False,
) -> None:
    """Send the welcome emails and sequence steps that are due now; exit 0 when each went
    to everyone due, 1 when a delivery failed or no relay answered, 2 for a broken file."""
    from mailer.cli.send import command_logs

    cfg = state.config()
    emails = _load(cfg)  # a broken file stops the command before anything is sent
    with command_logs(cfg):
        raise typer.Exit(run_async(_run(cfg, emails, once=once)))


def _load(cfg: Config) -> dict[str, list[Issue]]:
    from mailer.content.automations import load_automatic_emails

    return {n.id: load_automatic_emails(n.issues, tz=n.tz) for n in cfg.newsletters.values()}


async def _run(cfg: Config, emails: dict[str, list[Issue]], *, once: bool) -> int:
    """Passes until nothing is left to do (`once`) or Ctrl-C; `emails` are the files as
    loaded for the first pass (each later pass reads them again: they may have changed)."""
    from rich.progress import Progress

    from mailer.cli.send import ProgressBar, progress_columns, stop_on_interrupt
    from mailer.runners.automations import TICK_SECONDS
    from mailer.schedule import Clock
    from mailer.sending.automations import Renders, run_due
    from mailer.sending.sender import Sender

    clock, renders, code = Clock(cfg.settings.test_now), Renders(), 0
    async with open_store(cfg) as store, Sender(cfg, store, give_up_on_relays=True) as sender:
        with Progress(*progress_columns(remaining=False), console=out,
                      transient=False) as progress, \
                stop_on_interrupt(sender):
            while True:
                run: AutomationRun = await run_due(
                    cfg, store, sender, emails, now=clock.now(), renders=renders,
                    observe=lambda n, due: ProgressBar(progress, f"{n.id}/{due.email.slug}"))
                code = max(code, _report(run))
                if once or sender.stopping or sender.relay_failure:
                    break
                for _ in range(int(TICK_SECONDS)):  # as the daemon; a second at a time for Ctrl-C
                    if sender.stopping:
                        break
                    await asyncio.sleep(1)
                emails = _load(cfg)
    return code


def _report(run: AutomationRun) -> int:
    """Print what one pass sent and what stopped it; the pass's exit code."""
    from rich.table import Table

    code = 0
    for error in run.errors:
        err.print(f"[red]error:[/red] {escape(str(error))}", highlight=False, soft_wrap=True)
        code = 2
    if not run.reports:
        if not run.errors:
            out.print("nothing due: every reader has each automatic email due so far")
        return code
    # This pass's outcomes, and what is still open; `mailer status` has the totals.
    table = Table("automatic email", "sent", "failed", "unknown", "retrying",
                  "sent in all", title="summary")
    for report in run.reports:
        t, c = report.tally, report.counts
        table.add_row(f"{report.send.newsletter}/{report.send.slug}", str(t.sent),
                      str(t.failed), str(t.unknown), str(c.open), str(c.sent))
        if t.failed or t.unknown or c.open:
            code = max(code, 1)
        if report.relay_failure is not None:
            err.print(f"error: no relay answered ({report.relay_failure}); nothing more was "
                      "sent: run `mailer automations run` again once the relay is back",
                      highlight=False, markup=False, soft_wrap=True)
            code = max(code, 1)
    out.print(table)
    return code
