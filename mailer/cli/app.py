"""The `mailer` command line (typer + rich): thin commands over the use-case modules."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from mailer.cli import automations as cli_automations
from mailer.cli import bounces as cli_bounces
from mailer.cli import subscribers as cli_subscribers
from mailer.cli.common import (
    err,
    fails_cleanly,
    now,
    out,
    run_async,
    state,
)
from mailer.errors import InputError

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Markdown newsletters delivered on schedule, exactly once.")
app.add_typer(cli_subscribers.app, name="subscribers")
app.add_typer(cli_bounces.app, name="bounces")
app.add_typer(cli_automations.app, name="automations")


@app.callback()
def main_options(
    config: Annotated[Path | None, typer.Option(
        "--config", envvar="MAILER_CONFIG", help="schedules.yaml to use (default ./schedules.yaml)",
    )] = None,
) -> None:
    state.config_path = config
    state._config = None


# -- run -----------------------------------------------------------------------------------------


@app.command()
@fails_cleanly
def run(
    host: Annotated[str | None, typer.Option(
        help="address of the web endpoints (default: settings.host, 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(
        help="port of the web endpoints (default: settings.port, 8025; 0: any free port)",
        min=0, max=65535)] = None,
    log_json: Annotated[bool, typer.Option(
        "--log-json", help="log one JSON object per line (default: settings.log_json)")] = False,
) -> None:
    """The daemon: sends each due issue on schedule and serves the web endpoints.

    SIGTERM or SIGINT stop it cleanly (a second one at once); SIGHUP reloads schedules.yaml
    and the issues, as does editing them.
    """
    from mailer.runners import daemon

    cfg = state.config()
    raise typer.Exit(run_async(daemon.run(cfg.path, host=host, port=port, log_json=log_json)))


# -- send-now ------------------------------------------------------------------------------------


@app.command("send-now")
@fails_cleanly
def send_now(
    newsletter: Annotated[str, typer.Argument(help="the newsletter id from schedules.yaml")],
    issue: Annotated[Path | None, typer.Option(
        help="send this issue file instead of the due one")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="render and count, send nothing")] = False,
    to: Annotated[str | None, typer.Option(
        help="send one test copy to this address only")] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask before sending")] = False,
    resend_unknown: Annotated[bool, typer.Option(
        "--resend-unknown", help="also resend deliveries whose outcome is unknown")] = False,
    force: Annotated[bool, typer.Option(
        "--force", help="send even an issue Gmail would clip (HTML past 102 KB)")] = False,
    queue: Annotated[bool, typer.Option(
        "--queue", help="only queue the issue; `mailer worker` processes deliver it")] = False,
    resume: Annotated[bool, typer.Option(
        "--resume", help="only go on with an interrupted or paused send; never start the "
                         "next issue")] = False,
) -> None:
    """Send the due (or given) issue now to every confirmed subscriber."""
    from mailer.cli import send as cli_send
    from mailer.runners import worker

    cfg = state.config()
    with cli_send.command_logs(cfg):
        if queue:
            out.print(run_async(worker.queue_issue(cfg, newsletter, now=now(cfg),
                                                   issue_path=issue, force=force)),
                      highlight=False)
            return
        code = run_async(cli_send.send_now(
            cfg, cfg.newsletter(newsletter), issue_path=issue, dry_run=dry_run, to=to,
            yes=yes, resend_unknown=resend_unknown, now=now(cfg), console=out, force=force,
            resume=resume,
        ))
    raise typer.Exit(code)


# -- preview -------------------------------------------------------------------------------------


@app.command()
@fails_cleanly
def preview(
    file: Annotated[Path, typer.Argument(help="the issue's Markdown file")],
    format: Annotated[str, typer.Option("--format", help="html, text, mjml or eml")] = "html",
    text: Annotated[bool, typer.Option("--text", help="same as --format text")] = False,
    out_path: Annotated[Path | None, typer.Option(
        "--out", help="write here, not to stdout")] = None,
    newsletter: Annotated[str | None, typer.Option(
        "--newsletter",
        help="which newsletter's template (default: the one whose folder holds FILE)",
    )] = None,
    open_: Annotated[bool, typer.Option(
        "--open", help="write the HTML and text parts and open them in a browser")] = False,
    width: Annotated[list[int] | None, typer.Option(
        "--width", min=200, max=4000,
        help="screenshot the HTML this many pixels wide with headless Chromium (PNG); "
             "repeat for several widths")] = None,
) -> None:
    """Render an issue exactly as subscribers get it."""
    from mailer.content import render
    from mailer.content import screenshots as browser
    from mailer.sending import preview as previews

    fmt = "text" if text else format
    if fmt not in previews.FORMATS:
        raise InputError(f"unknown format {fmt!r}: use html, text, mjml or eml", field="--format")
    cfg = state.config()
    shown = previews.load_preview(cfg, file, newsletter_id=newsletter)
    if shown.rendered.clipped:
        err.print(f"[yellow]warning:[/yellow] {file}: {render.clip_warning(shown.rendered)}",
                  highlight=False, soft_wrap=True)
    data = shown.as_format(fmt)
    if not (out_path or open_ or width):
        sys.stdout.buffer.write(data)
        return
    files = previews.write_preview(shown, data, out=out_path, open_files=open_,
                                   widths=width or [])
    for path in files.written:
        err.print(f"wrote {path}", highlight=False, soft_wrap=True)
    if files.html and not browser.open_files([files.html]):
        err.print(f"no browser to open here: open {files.html} yourself", highlight=False,
                  soft_wrap=True)


# -- status and init -----------------------------------------------------------------------------


@app.command()
@fails_cleanly
def status(newsletter: Annotated[str | None, typer.Argument()] = None) -> None:
    """Show each newsletter's next run and last send, then every send: sent, failed, open,
    and its bounce and complaint rates."""
    from mailer.cli import status as cli_status

    cli_status.show(state.config(), newsletter)


@app.command()
@fails_cleanly
def init(directory: Annotated[Path, typer.Argument(
        help="folder to write into (created if missing; existing files are never overwritten)",
)] = Path(".")) -> None:
    """Write a working starter: schedules.yaml, templates/, one sample issue."""
    from mailer.cli import starter

    for path in starter.write(directory):
        out.print(f"wrote {path}", markup=False, highlight=False, soft_wrap=True)
    where = "" if directory == Path(".") else f"cd {directory} && "
    out.print(f"next: {where}mailer send-now ml-issues --dry-run",
              markup=False, highlight=False, soft_wrap=True)


# -- serve ---------------------------------------------------------------------------------------


@app.command()
@fails_cleanly
def serve(
    host: Annotated[str | None, typer.Option(help="address to listen on (default: settings.host)")
                    ] = None,
    port: Annotated[int | None, typer.Option(help="port to listen on (default: settings.port)")
                    ] = None,
) -> None:
    """Run only the HTTP endpoints (subscribe, confirm, unsubscribe, archive, metrics)."""
    from mailer import web

    run_async(web.serve(state.config(), host=host, port=port))


@app.command("worker")
@fails_cleanly
def worker_command(
    once: Annotated[bool, typer.Option(
        "--once", help="exit when no send has anything left to deliver")] = False,
) -> None:
    """Deliver queued sends (sender only: no scheduler, no web); run several to scale out."""
    from mailer.runners import worker

    cfg = state.config()
    raise typer.Exit(run_async(worker.run_worker(cfg, once=once)))


def main() -> Any:
    """Entry point of the `mailer` console script."""
    return app()
