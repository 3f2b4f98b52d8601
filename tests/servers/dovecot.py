"""A private Dovecot IMAP server for tests: its own config file, folders, log and loopback port.

Each instance has its own base_dir, state_dir and instance name, so two test processes can
run one each at the same time without sharing a socket, a pid file or a state file.
"""

from __future__ import annotations

import contextlib
import grp
import imaplib
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

DOVECOT = "/usr/sbin/dovecot"

# Only this file is read (no conf.d includes): nothing of the system's Dovecot applies.
CONFIG = """\
instance_name = mailer-test-{name}
base_dir = {folder}/run
state_dir = {files}/state
log_path = {files}/dovecot.log
listen = 127.0.0.1
protocols = imap
{owners}
ssl = {ssl}
{ssl_files}
disable_plaintext_auth = {disable_plaintext}
auth_mechanisms = plain login
# A refused login answers at once: a test of a wrong password need not wait 2 s.
auth_failure_delay = 0
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {folder}/passwd
}}
userdb {{
  driver = static
  args = home={folder}/mail/%u
}}
mail_location = maildir:{folder}/mail/%u
service imap-login {{
  inet_listener imap {{
    port = {imap_port}
  }}
  inet_listener imaps {{
    port = {imaps_port}
    ssl = yes
  }}
{login_chroot}
}}
{anvil_chroot}
"""

# Nor do repeated ones: anvil's penalty for failures from one address (2 s doubling to 15 s)
# is switched off by closing its socket, as Dovecot's documentation says; a test that polls
# with a wrong password makes many failures.
NO_PENALTY = """\
  unix_listener anvil-auth-penalty {
    mode = 0
  }
"""

# Dovecot refuses to run its login processes as root: as root, the unprivileged users of
# Debian's package run them and own the mail; as anyone else, that user runs everything.
AS_ROOT = """\
default_login_user = dovenull
default_internal_user = dovecot
mail_uid = dovecot
mail_gid = dovecot
first_valid_uid = 1"""
AS_USER = """\
default_login_user = {user}
default_internal_user = {user}
default_internal_group = {group}"""


def dovecot_available() -> str | None:
    """Why no private Dovecot can run here, or None when one can."""
    if not Path(DOVECOT).exists():
        return "Dovecot is not installed (apt-get install dovecot-imapd); scripts/test installs it"
    if shutil.which("openssl") is None:
        return "the openssl CLI is missing (apt-get install openssl): it makes the certificate"
    if os.geteuid() == 0:
        for user in ("dovecot", "dovenull"):
            try:
                pwd.getpwnam(user)
            except KeyError:
                return f"user {user} is missing: Dovecot is not installed the Debian way"
    return None


@dataclass(frozen=True)
class DovecotInstance:
    """A running private Dovecot: its IMAP port, the account, and its certificate (TLS)."""

    port: int
    user: str
    password: str
    cafile: Path | None

    def connect(self) -> imaplib.IMAP4:
        """A logged-out IMAP client: IMAPS verified against cafile, or plain IMAP."""
        if self.cafile is None:
            return imaplib.IMAP4("127.0.0.1", self.port, timeout=10)
        context = ssl.create_default_context(cafile=str(self.cafile))
        return imaplib.IMAP4_SSL("127.0.0.1", self.port, ssl_context=context, timeout=10)

    def append(self, folder: str, raw: bytes) -> None:
        """Store one message in `folder` of the account, creating the folder when missing."""
        with self.connect() as client:
            client.login(self.user, self.password)
            if folder.upper() != "INBOX":
                client.create(folder)  # "already exists" is a NO reply, not an error
            status, reply = client.append(folder, None, None, raw)
            if status != "OK":
                raise RuntimeError(f"APPEND to {folder} failed: {reply!r}")

    def messages(self, folder: str) -> list[bytes]:
        """The full raw bytes of every message in `folder`, oldest first."""
        with self.connect() as client:
            client.login(self.user, self.password)
            status, reply = client.select(folder, readonly=True)
            if status != "OK":
                raise RuntimeError(f"SELECT {folder} failed: {reply!r}")
            _, found = client.search(None, "ALL")
            found_ids = found[0].split() if found and found[0] else []
            raw: list[bytes] = []
            for number in found_ids:
                _, parts = client.fetch(number, "(BODY.PEEK[])")
                raw.extend(part[1] for part in parts if isinstance(part, tuple))
            return raw


@contextmanager
def private_dovecot(tmp: Path, *, user: str, password: str, tls: bool,
                    ) -> Iterator[DovecotInstance]:
    """Run a Dovecot with one account (user, password) on a loopback port: IMAPS with a
    certificate made for 127.0.0.1 when tls, else plain IMAP; stopped on exit.

    Its config, certificate, state and log are written into `tmp` and stay there; its
    sockets and mail live in a short folder under /tmp (removed on exit), as socket names
    must fit in 108 bytes.
    Raises RuntimeError (with the end of its log) when it does not start.
    """
    # /tmp, not $TMPDIR: that may be long too.
    folder = Path(tempfile.mkdtemp(prefix="mailer-dovecot-", dir="/tmp"))
    files = tmp / folder.name
    files.mkdir()
    try:
        (folder / "mail").mkdir()
        # In tmp: the master still writes its state file while it shuts down, after the
        # folder is gone.
        (files / "state").mkdir()
        (folder / "passwd").write_text(f"{user}:{{PLAIN}}{password}\n")
        as_root = os.geteuid() == 0
        if as_root:
            # The login, auth and imap processes run as dovenull and dovecot: they pass
            # through the folder to their sockets, the password file and the mail.
            folder.chmod(0o711)
            shutil.chown(folder / "mail", "dovecot", "dovecot")
            (folder / "passwd").chmod(0o644)
        cafile = _make_certificate(files) if tls else None
        port = _start(folder, files, as_root=as_root, tls=tls)
        try:
            yield DovecotInstance(port, user, password, cafile)
        finally:
            _stop(folder, files / "dovecot.conf")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _stop(folder: Path, config: Path, *, wait: bool = False) -> None:
    # `dovecot stop` waits for the master, which sleeps ~3 s while it shuts down. Its
    # listeners close at once and nothing else of it is shared, so a signal is enough,
    # unless the same folder is started again.
    try:
        pid = int((folder / "run" / "master.pid").read_text())
    except (OSError, ValueError):
        wait = True
    if wait:
        subprocess.run([DOVECOT, "-c", str(config), "stop"], capture_output=True, timeout=30)
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)


def _start(folder: Path, files: Path, *, as_root: bool, tls: bool) -> int:
    owners = AS_ROOT if as_root else AS_USER.format(
        user=pwd.getpwuid(os.geteuid()).pw_name, group=grp.getgrgid(os.getegid()).gr_name)
    # Without root there is no chroot: the login and anvil processes then run unconfined.
    no_chroot = "" if as_root else "  chroot ="
    config = files / "dovecot.conf"
    for attempt in range(3):
        # A port free a moment ago may be taken meanwhile by another test process.
        port = _free_port()
        config.write_text(CONFIG.format(
            name=folder.name, folder=folder, files=files, owners=owners,
            ssl="required" if tls else "no",
            ssl_files=(f"ssl_cert = <{files}/cert.pem\nssl_key = <{files}/key.pem"
                       if tls else ""),
            disable_plaintext="yes" if tls else "no",
            imap_port=0 if tls else port, imaps_port=port if tls else 0,
            login_chroot=no_chroot, anvil_chroot=f"service anvil {{\n{no_chroot}\n{NO_PENALTY}}}"))
        # The daemon keeps the streams it was given: a pipe would never reach end of file.
        with (files / "start.err").open("w+") as errors:
            started = subprocess.run([DOVECOT, "-c", str(config)], stdin=subprocess.DEVNULL,
                                     stdout=errors, stderr=errors, timeout=30)
            errors.seek(0)
            said = errors.read()
        if started.returncode == 0 and _answers(port, tls=tls):
            return port
        _stop(folder, config, wait=True)
        if attempt == 2:
            log = files / "dovecot.log"
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:]
                             if log.exists() else [])
            raise RuntimeError(f"private Dovecot in {folder} did not start ({said.strip()})"
                               f"; its log ends:\n{tail}")
    raise AssertionError("unreachable")


def _answers(port: int, *, tls: bool, timeout: float = 10.0) -> bool:
    # The greeting comes only once the login process is up; over IMAPS it follows the
    # handshake, so an answer means the certificate loaded too.
    deadline = time.monotonic() + timeout
    # Unverified: this asks only whether it answers; the tests verify the certificate.
    context = ssl._create_unverified_context() if tls else None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as raw:
                if context is None:
                    greeting = raw.recv(100)
                else:
                    with context.wrap_socket(raw) as stream:
                        greeting = stream.recv(100)
            if greeting.startswith(b"* OK"):
                return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


def _make_certificate(folder: Path) -> Path:
    cert, key = folder / "cert.pem", folder / "key.pem"
    # A self-signed certificate for the address clients dial, so they can verify it with
    # hostname checking on, as a careful client does. An EC key: RSA takes ~0.5 s to make.
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "2",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60)
    return cert


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
