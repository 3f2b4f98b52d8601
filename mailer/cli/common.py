"""What every `mailer` command shares: the loaded config, error exits, the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from datetime import datetime
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from mailer.errors import MailerError
from mailer.states import utcnow

if TYPE_CHECKING:  # loaded by the commands that use them: `mailer --help` needs neither
    from mailer.config import Config
    from mailer.store import OpeningStore

out = Console(emoji=False)
err = Console(stderr=True, emoji=False)

P = ParamSpec("P")
R = TypeVar("R")


class State:
    config_path: Path | None = None
    _config: Config | None = None

    def config(self) -> Config:
        if self._config is None:
            from mailer import config as config_mod

            self._config = config_mod.load(self.config_path)
        return self._config


state = State()


def fails_cleanly(func: Callable[P, R]) -> Callable[P, R]:
    """MailerError → one line on stderr and exit 2 (bad input) or 1 (failed operation)."""

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except MailerError as exc:
            err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None

    return wrapper


def run_async(coro: Coroutine[Any, Any, R]) -> R:
    """Run a command's coroutine, on uvloop when installed (`pip install mailer[fast]`)."""
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(coro)


def now(cfg: Config) -> datetime:
    """The current time, or the documented test clock `test_now` when it is set."""
    return cfg.settings.test_now or utcnow()


def open_store(cfg: Config) -> OpeningStore:
    """The configured database: `async with open_store(cfg) as store:` closes it after."""
    from mailer.store import Store

    return Store.open(cfg.settings.database_url)
