"""A private Postfix instance for tests: its own config folder, queue, log and loopback port.

Debian's Postfix runs a second instance from any folder that the default instance lists in
`alternate_config_directories` (/etc/postfix/main.cf). That line is shared by every test
process on the machine, so it is edited under a file lock and each instance adds and removes
only its own folder.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import smtplib
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

DEFAULT_CONFIG = Path("/etc/postfix")
LOCK_FILE = Path("/tmp/mailer-test-postfix.lock")
# Left by the first instance when "No configuration" left no default main.cf: the last one to
# stop removes the file again, so the machine is as the package left it.
CREATED_MARK = Path("/tmp/mailer-test-postfix.created-main-cf")
FOLDER_PREFIX = "mailer-postfix-"
NO_TRANSPORTS: Mapping[str, int] = MappingProxyType({})

# Timers that make a temporary failure final within seconds instead of five days:
# a queue lifetime of 0 means "try once" (postconf(5)), so a 4xx becomes a DSN right after
# the first attempt; the backoff and queue-run timers matter only for mail that is deferred
# anyway (a remote server that is down), and delay warnings would be a second report.
MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
maillog_file = {maillog}
maillog_file_prefixes = {tmp}
myhostname = postfix.test
mydomain = postfix.test
myorigin = $myhostname
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
relayhost = [127.0.0.1]:{relayhost_port}
transport_maps = texthash:{config}/transport
smtp_tls_security_level = none
smtpd_tls_security_level = none
smtputf8_enable = no
biff = no
maximal_queue_lifetime = 0
bounce_queue_lifetime = 0
minimal_backoff_time = 1s
maximal_backoff_time = 2s
queue_run_delay = 1s
delay_warning_time = 0h
"""

# Only the services a relay needs, none chrooted (a chroot would need copies of /etc files).
MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


def postfix_available() -> str | None:
    """Why no private Postfix can run here, or None when one can."""
    if not Path("/usr/sbin/postfix").exists():
        if Path("/usr/sbin/sendmail").exists():
            return ("Postfix is not installed, and another mail server is: installing "
                    "Postfix would replace it, so scripts/test leaves that to you")
        return ("Postfix is not installed (apt-get install postfix, with debconf's "
                "'No configuration'); scripts/test installs it")
    if os.geteuid() != 0:
        return "a private Postfix needs root: its master process and /etc/postfix/main.cf"
    if not DEFAULT_CONFIG.is_dir():
        return f"{DEFAULT_CONFIG} is missing: Postfix is not installed the Debian way"
    return None


@dataclass(frozen=True)
class PostfixInstance:
    """A running private Postfix: its config folder, its smtpd's port and its maillog."""

    config: Path
    port: int
    maillog: Path

    def flush(self) -> None:
        """Ask the queue manager to try every deferred message now."""
        _run(["postqueue", "-c", str(self.config), "-f"])

    def log_text(self) -> str:
        """The instance's whole maillog so far."""
        return self.maillog.read_text(errors="replace") if self.maillog.exists() else ""

    def queue_is_empty(self) -> bool:
        """Whether no message waits in any of its queues (incoming, active, deferred, hold)."""
        listed = _run(["postqueue", "-c", str(self.config), "-j"]).stdout
        return not any(json.loads(line) for line in listed.splitlines() if line.strip())


@contextmanager
def private_postfix(tmp: Path, *, relayhost_port: int,
                    transports: Mapping[str, int] = NO_TRANSPORTS) -> Iterator[PostfixInstance]:
    """Run a Postfix that relays everything to 127.0.0.1:relayhost_port, and each domain of
    `transports` to 127.0.0.1 on its port instead; stopped and unlisted on exit.

    Its maillog is written into `tmp` and stays there; the rest lives in a short folder
    under /tmp (removed on exit), as Postfix's socket names must fit in 108 bytes.
    Raises RuntimeError (with the end of its maillog) when it does not start.
    """
    # /tmp, not $TMPDIR: that may be long too.
    folder = Path(tempfile.mkdtemp(prefix=FOLDER_PREFIX, dir="/tmp"))
    config = folder / "etc"
    maillog = tmp / f"{folder.name}.maillog"
    try:
        _prepare(folder, maillog, relayhost_port, transports)
        # Start and stop under the lock too: both read the default main.cf, and Postfix waits
        # up to a second for a file that another process has just rewritten.
        with _default_config_locked() as main_cf:
            _list_config(main_cf, config)
            port = _start(config, maillog)
        yield PostfixInstance(config, port, maillog)
    finally:
        with _default_config_locked() as main_cf:
            try:
                _run(["postfix", "-c", str(config), "stop"], check=False)
            finally:
                _unlist_config(main_cf, config)
                shutil.rmtree(folder, ignore_errors=True)


def _prepare(folder: Path, maillog: Path, relayhost_port: int,
             transports: Mapping[str, int]) -> None:
    # The master opens its lock file in the data folder as postfix, by its full name.
    folder.chmod(0o711)
    # The config apart from the queue: `postfix check` wants everything in it owned by root.
    config, queue, data = folder / "etc", folder / "queue", folder / "data"
    for path in (config, queue, data):
        path.mkdir()
    shutil.chown(data, "postfix")
    (config / "main.cf").write_text(MAIN_CF.format(
        tmp=maillog.parent, maillog=maillog, config=config, queue=queue, data=data,
        relayhost_port=relayhost_port))
    (config / "transport").write_text("".join(
        f"{domain} smtp:[127.0.0.1]:{port}\n" for domain, port in transports.items()))
    _backdate(config / "main.cf", config / "transport")


def _start(config: Path, maillog: Path) -> int:
    for attempt in range(3):
        # A port free a moment ago may be taken meanwhile by another test process: then the
        # master cannot bind it, `start` fails, and another port is tried.
        port = _free_port()
        (config / "master.cf").write_text(MASTER_CF.format(port=port))
        _backdate(config / "master.cf")
        started = _run(["postfix", "-c", str(config), "start"], check=False)
        if started.returncode == 0 and _answers(port):
            return port
        _run(["postfix", "-c", str(config), "stop"], check=False)
        if attempt == 2:
            tail = "\n".join(maillog.read_text(errors="replace").splitlines()[-20:]
                             if maillog.exists() else [])
            raise RuntimeError(f"private Postfix in {config} did not start "
                               f"({started.stdout}{started.stderr}); its maillog ends:\n{tail}")
    raise AssertionError("unreachable")


def _answers(port: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=2) as client:
                return client.noop()[0] == 250
        except (OSError, smtplib.SMTPException):
            time.sleep(0.05)
    return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _backdate(*paths: Path) -> None:
    # Postfix reads a config file only once it is a second old (a younger one may still be
    # being written) and waits until then: a fresh file would cost each start ~2 s.
    past = time.time() - 5
    for path in paths:
        os.utime(path, (past, past))


def _run(argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    # /usr/sbin named: it is not on every user's PATH.
    done = subprocess.run(["/usr/sbin/" + argv[0], *argv[1:]], capture_output=True, text=True,
                          timeout=60)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr}")
    return done


@contextmanager
def _default_config_locked() -> Iterator[Path]:
    with LOCK_FILE.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield DEFAULT_CONFIG / "main.cf"
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _listed(main_cf: Path) -> list[str]:
    value = _run(["postconf", "-c", str(main_cf.parent), "-h",
                  "alternate_config_directories"]).stdout
    return value.replace(",", " ").split()


def _write_listed(main_cf: Path, folders: list[str]) -> None:
    config = str(main_cf.parent)
    if folders:
        _run(["postconf", "-c", config, "-e",
              f"alternate_config_directories = {' '.join(folders)}"])
        _backdate(main_cf)
        return
    _run(["postconf", "-c", config, "-X", "alternate_config_directories"])
    _backdate(main_cf)
    if CREATED_MARK.exists() and not main_cf.read_text().strip():
        main_cf.unlink()
        CREATED_MARK.unlink()


def _list_config(main_cf: Path, config: Path) -> None:
    if not main_cf.exists():
        main_cf.touch()
        _backdate(main_cf)
        CREATED_MARK.touch()
    # Folders of ours that are gone were left by a test process that was killed.
    kept = [f for f in _listed(main_cf)
            if Path(f).is_dir() or not Path(f).parent.name.startswith(FOLDER_PREFIX)]
    _write_listed(main_cf, [*kept, str(config)])


def _unlist_config(main_cf: Path, config: Path) -> None:
    if main_cf.exists():
        _write_listed(main_cf, [f for f in _listed(main_cf) if f != str(config)])
