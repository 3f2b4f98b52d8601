"""`mailer run`: the scheduler, the sender and the web endpoints in one process and one loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn

from mailer import config as config_mod
from mailer import content, logs
from mailer.config import Config
from mailer.content.automations import automatic_paths, load_automatic_emails
from mailer.delivery.signing import signer_from_settings
from mailer.errors import MailerError
from mailer.runners.automations import AutomationRunner
from mailer.runners.returns import ReturnPaths
from mailer.runners.scheduler import Scheduler
from mailer.runners.slots import LoadedFiles, SlotRunner
from mailer.schedule import Clock
from mailer.sending.sender import Sender
from mailer.store import Store
from mailer.web import create_app
from mailer.web.server import EmbeddedServer, server_config

log = logging.getLogger("mailer.daemon")

ABORT_WAIT_SECONDS = 5.0  # after cutting connections, for their outcomes to be written
# Settings a running daemon cannot swap: they are read once, while it starts.
RESTART_SETTINGS = ("database_url", "smtp_url", "smtp_timeout_scale", "host", "port",
                    "var_dir", "secret_key", "smtp_password", "test_now", "trusted_proxies",
                    "bounce_listen", "bounce_mailbox", "bounce_password")


def fingerprint(config: Config) -> tuple[object, ...]:
    """Size and mtime of schedules.yaml, of every issue file and of every automatic email:
    it changes with any edit."""
    paths = [config.path]
    for newsletter in config.newsletters.values():
        with contextlib.suppress(OSError):
            paths += sorted(newsletter.issues.glob("*.md"))
            paths += automatic_paths(newsletter.issues)
    stats: list[object] = []
    for path in paths:
        try:
            st = path.stat()
            stats.append((str(path), st.st_mtime_ns, st.st_size))
        except OSError:
            stats.append((str(path), None))
    return tuple(stats)


def load_snapshot(path: Path) -> LoadedFiles:
    """Load schedules.yaml and every newsletter's issues; all of it or nothing.

    Raises:
        ConfigError, ContentError: naming the file, line and key of the first mistake.
    """
    config = config_mod.load(path)
    seen = fingerprint(config)
    issues = {n.id: content.load_issues(n.issues, tz=n.tz) for n in config.newsletters.values()}
    automatic = {n.id: load_automatic_emails(n.issues, tz=n.tz)
                 for n in config.newsletters.values()}
    return LoadedFiles(config=config, issues=issues, fingerprint=seen, automatic=automatic)


def listen(host: str, port: int) -> socket.socket:
    """A bound TCP socket for the web endpoints (port 0: any free port).

    Raises:
        MailerError: the address is taken or not ours.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        raise MailerError(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                          field="--port") from None
    return sock


class Daemon:
    """One `mailer run`: `await Daemon(snapshot, host=…, port=…).run()` → exit code."""

    def __init__(self, snapshot: LoadedFiles, *, host: str, port: int) -> None:
        self.snapshot = snapshot
        self.host = host
        self.port = port
        self.clock = Clock(snapshot.config.settings.test_now)
        self.app: Any = None
        self.exit_code = 0
        self._stop = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._seen = snapshot.fingerprint
        self._sender: Sender | None = None
        self._scheduler: Scheduler | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT, then stop cleanly; returns the exit code.

        Raises:
            MailerError: the web address cannot be had.
        """
        settings = self.snapshot.config.settings
        sock = listen(self.host, self.port)
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(sock.close)
            try:
                store = await stack.enter_async_context(Store.open(settings.database_url))
            except Exception as exc:  # unreachable server, bad credentials, a locked file
                raise MailerError(f"cannot open the database: {exc}",
                                  field="settings.database_url") from None
            sender = self._sender = await stack.enter_async_context(
                Sender(self.snapshot.config, store))
            runner = SlotRunner(store, sender, self.clock, snapshot=lambda: self.snapshot,
                                refresh=self.check_files)
            slots = asyncio.create_task(runner.run_until_stopped(), name="mailer-slots")
            stack.callback(slots.cancel)  # only matters when starting up failed
            automations = AutomationRunner(store, sender, self.clock,
                                           snapshot=lambda: self.snapshot)
            automatic = asyncio.create_task(automations.run_until_stopped(),
                                            name="mailer-automations")
            stack.callback(automatic.cancel)
            scheduler = self._scheduler = await stack.enter_async_context(
                Scheduler(runner, store, self.clock))
            self._install_signals()
            await scheduler.apply(self.snapshot.config, starting=True)
            # What comes back: the bounce receiver and mailbox the settings ask for.
            returns = await stack.enter_async_context(
                ReturnPaths(lambda: self.snapshot.config, store))
            web = self._start_web(store, sock, returns, on_confirmed=automations.request)
            watch = asyncio.create_task(self._watch(), name="mailer-watch")
            where = "{}:{}".format(*sock.getsockname()[:2])
            log.info("running", extra={"pid": os.getpid(), "http": where,
                                       "newsletters": len(self.snapshot.config.newsletters),
                                       "clock": self.clock.now().isoformat()})
            await self._stop.wait()
            scheduler.stop()
            watch.cancel()
            runner.stop()
            automations.stop()
            await self._drain(slots, automatic, sender, settings.shutdown_grace_seconds)
            web[0].should_exit = True
            await asyncio.wait([web[1]], timeout=ABORT_WAIT_SECONDS)
        log.info("stopped", extra={"exit_code": self.exit_code})
        return self.exit_code

    def stop(self, reason: str) -> None:
        """Begin a clean stop: no new work, in-flight messages finish (see run)."""
        if not self._stop.is_set():
            grace = self.snapshot.config.settings.shutdown_grace_seconds
            log.info("stopping", extra={"reason": reason, "grace_seconds": grace})
            self._stop.set()

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_hangup)

    def _on_stop_signal(self, sig: signal.Signals) -> None:
        if not self._stop.is_set():
            self.stop(sig.name)
            return
        # A second signal: leave at once, as after a crash. The next start sees this pid gone:
        # messages claimed but not started go out then; one mid-transaction is recorded as
        # unknown (the server may have it) and is not resent blindly.
        log.warning("second signal: exiting at once", extra={"signal": sig.name})
        for handler in logging.getLogger().handlers:
            handler.flush()
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)

    def _on_hangup(self) -> None:
        task = asyncio.get_running_loop().create_task(self.reload("SIGHUP"))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self, slots: asyncio.Task[None], automatic: asyncio.Task[None],
                     sender: Sender, grace: float) -> None:
        # In-flight SMTP transactions get `grace` seconds to end on their own; then their
        # connections are cut, which still records each one's outcome (unknown where the
        # server had the whole message). Only a hung database is left to the cancel.
        sending = [slots, automatic]
        _, pending = await asyncio.wait(sending, timeout=grace)
        if pending:
            log.warning("grace period over: cutting in-flight SMTP transactions",
                        extra={"grace_seconds": grace})
            sender.abort()
            _, pending = await asyncio.wait(sending, timeout=ABORT_WAIT_SECONDS)
        if pending:
            log.error("sending did not stop: cancelled")
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=ABORT_WAIT_SECONDS)

    def _start_web(self, store: Store, sock: socket.socket, returns: ReturnPaths, *,
                   on_confirmed: Callable[[str], None]
                   ) -> tuple[uvicorn.Server, asyncio.Task[None]]:
        relays = self._sender.relays if self._sender is not None else None
        self.app = create_app(self.snapshot.config, store=store,
                              relay_health=relays.health if relays is not None else None,
                              returned_events=returns.provider_event, clock=self.clock,
                              on_confirmed=on_confirmed)
        server = EmbeddedServer(server_config(
            self.app, self.snapshot.config.settings, lifespan="on", log_config=None,
            access_log=False, timeout_graceful_shutdown=3))
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
        return server, asyncio.create_task(self._serve_web(server, sock), name="mailer-web")

    async def _serve_web(self, server: uvicorn.Server, sock: socket.socket) -> None:
        try:
            await server.serve(sockets=[sock])
        except (SystemExit, Exception) as exc:  # uvicorn exits the process on a failed start
            log.error("web endpoints failed", extra={"error": repr(exc)})
            self.exit_code = 1
            self.stop("the web endpoints failed")

    async def _watch(self) -> None:
        interval = self.snapshot.config.settings.watch_seconds
        while interval > 0:
            await asyncio.sleep(interval)
            try:
                await self.check_files()
            except Exception:
                log.exception("watching the files failed")
            interval = self.snapshot.config.settings.watch_seconds

    async def check_files(self) -> None:
        """Reload when schedules.yaml or an issue file changed since the last look."""
        current = await asyncio.to_thread(fingerprint, self.snapshot.config)
        if current != self._seen:
            self._seen = current
            await self.reload("files changed")

    async def reload(self, reason: str) -> None:
        """Load schedules.yaml and the issues again and switch to them, or, if anything in
        them is broken, keep running the last good ones and log why."""
        async with self._reload_lock:
            seen = await asyncio.to_thread(fingerprint, self.snapshot.config)
            try:
                fresh = await asyncio.to_thread(load_snapshot, self.snapshot.config.path)
                # The sender would refuse an incomplete DKIM setup at the next send.
                await asyncio.to_thread(signer_from_settings, fresh.config.settings,
                                        file=str(fresh.config.path))
            except MailerError as exc:
                self._seen = seen  # said once; the next edit is looked at again
                log.error("reload refused: the running configuration stays",
                          extra={"reason": reason, "error": str(exc)})
                return
            old, self.snapshot = self.snapshot, fresh
            self._seen = fresh.fingerprint
            settings = fresh.config.settings
            if self._sender is not None:
                self._sender.config = fresh.config
            if self.app is not None:
                self.app.state.config = fresh.config
            if old.config.settings.log_json != settings.log_json:
                logs.configure(json_lines=settings.log_json)
            if self._scheduler is not None:
                await self._scheduler.apply(fresh.config)
            log.info("configuration reloaded", extra={
                "reason": reason, "newsletters": ", ".join(fresh.config.newsletters) or "none",
                "issues": sum(len(i) for i in fresh.issues.values()),
                "automatic_emails": sum(len(a) for a in fresh.automatic.values())})
            stale = [k for k in RESTART_SETTINGS
                     if getattr(old.config.settings, k) != getattr(settings, k)]
            if stale:
                log.warning("changed settings take effect after a restart",
                            extra={"settings": ", ".join(stale)})


async def run(path: Path, *, host: str | None = None, port: int | None = None,
              log_json: bool = False) -> int:
    """`mailer run`: load everything, set up logging, run the daemon; returns the exit code.

    Raises:
        ConfigError, ContentError: a broken schedules.yaml or issue at start (exit 2).
        MailerError: the web address cannot be had.
    """
    snapshot = await asyncio.to_thread(load_snapshot, path)
    settings = snapshot.config.settings
    logs.configure(json_lines=log_json or settings.log_json)
    daemon = Daemon(snapshot, host=host or settings.host,
                    port=settings.port if port is None else port)
    return await daemon.run()
