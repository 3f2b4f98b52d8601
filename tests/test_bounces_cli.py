"""`mailer bounces process` as an MTA's pipe runs it (stdin, exit codes 0 and 75),
`mailer bounces list`, and the bounce and complaint rates in `mailer status`."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Project
from tests.smtpd import Received, ServerThread
from tests.test_cli import ENV, add_confirmed, mailer

BOUNCE_ADDRESS = "bounces@news.example.com"
CORPUS = Path(__file__).parent / "data" / "bounces"
FAKE_VERP = re.compile(rb"bounces\+[0-9a-z]+@news\.example\.com")
ADA, BOB = "ada@example.com", "bob@example.com"


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    # As in test_cli: the CLI is a thin layer; test_bounces_apply runs both databases.
    return f"sqlite:///{tmp_path}/project/var/mailer.db"


def pipe(project: Project, data: bytes, *args: str,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """`python -m mailer bounces process ARGS` with the message on stdin, as an MTA runs it."""
    environment = {k: v for k, v in {**os.environ, **ENV, **(env or {})}.items()
                   if v is not None}
    return subprocess.run(
        [sys.executable, "-m", "mailer", "--config", str(project.config_path), "bounces",
         "process", *args], input=data, capture_output=True, env=environment,
        cwd=project.root, timeout=120)


def dsn(name: str, to: Received) -> bytes:
    """A corpus DSN about the message `to` got: our real VERP address and their address."""
    raw = FAKE_VERP.sub(to.mail_from.encode(), (CORPUS / name).read_bytes())
    return re.sub(rb"nobody@example\.org", to.rcpt_tos[0].encode(), raw, flags=re.I)


def send_issue(project: Project) -> dict[str, Received]:
    with ServerThread() as server:
        project.configure(smtp_url=f"smtp://127.0.0.1:{server.port}",
                          bounce_address=BOUNCE_ADDRESS)
        add_confirmed(project, ADA, BOB)
        result = mailer(project, "send-now", "ml-issues", "--yes")
        assert result.returncode == 0, result.stderr
        return {m.rcpt_tos[0]: m for m in server.messages}


@pytest.mark.slow
def test_a_dsn_piped_on_stdin_bounces_the_address_and_shows_in_list_and_status(
    project: Project,
) -> None:
    sent = send_issue(project)

    result = pipe(project, dsn("postfix-user-unknown.eml", sent[ADA]), "-")

    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().strip() == f"hard: hard bounce: {ADA} is now bounced"
    listed = mailer(project, "subscribers", "list", "--list", "ml-issues")
    assert re.search(rf"{ADA}\s.*bounced", listed.stdout), listed.stdout

    again = pipe(project, dsn("postfix-user-unknown.eml", sent[ADA]))  # no FILE: stdin too
    assert again.returncode == 0
    assert again.stdout.decode().strip() == "hard: duplicate: applied before"

    shown = mailer(project, "bounces", "list", "--list", "ml-issues")
    assert shown.returncode == 0, shown.stderr
    line = next(line for line in shown.stdout.splitlines() if ADA in line)
    assert "hard" in line and "5.1.1" in line and "ml-issues/2026-12-07-first-issue" in line

    status = mailer(project, "status")
    assert status.returncode == 0, status.stderr
    _, after = [line.split() for line in status.stdout.splitlines()
                if line.split()[:1] == ["ml-issues/2026-12-07-first-issue"]]
    assert after[2] == "50.0%", status.stdout  # 1 hard bounce of 2 sent
    assert "1 hard bounce(s), 50.0% of 2 sent, at or past 5%" in status.stdout


@pytest.mark.slow
def test_complaint_and_policy_rates_show_in_status(project: Project) -> None:
    sent = send_issue(project)
    complaint = FAKE_VERP.sub(sent[BOB].mail_from.encode(),
                              (CORPUS / "arf-complaint.eml").read_bytes())
    assert pipe(project, complaint).stdout.decode().strip() == \
        f"complaint: complaint: {BOB} is now complained"
    policy = dsn("spam-block-5.7.1.eml", sent[ADA])
    result = pipe(project, policy, "--recipient", sent[ADA].mail_from)
    assert result.stdout.decode().strip() == \
        "policy: policy refusal counted against ml-issues/2026-12-07-first-issue"

    status = mailer(project, "status", "ml-issues")

    assert "1 complaint(s), 50.00% of 2 sent, at or past 0.3%" in status.stdout, status.stdout
    assert "1 refused by the receiver's policy" in status.stdout


def test_a_file_argument_and_anything_unusable_exit_0_with_the_reason(
    project: Project, tmp_path: Path,
) -> None:
    send_issue(project)
    garbage = tmp_path / "garbage.eml"
    garbage.write_bytes(b"\x00\xffnot a message at all")
    result = mailer(project, "bounces", "process", str(garbage))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "unknown: not ours: no message of ours matches it"

    huge = pipe(project, b"x" * (10 * 1024 * 1024 + 1))
    assert huge.returncode == 0, huge.stderr
    assert huge.stdout.decode().startswith("ignored: ")
    assert "bytes is more than" in huge.stdout.decode()

    missing = mailer(project, "bounces", "process", str(tmp_path / "missing.eml"))
    assert missing.returncode == 2  # a person typed it: a bad argument, not a bounce


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("database_url", [
    pytest.param(f"postgresql+asyncpg://mailer@127.0.0.1:{free_port()}/mailer", id="postgresql"),
    # A folder where the database file should be: SQLite cannot open it (even as root).
    pytest.param("sqlite:///{root}/var", id="sqlite"),
])
def test_an_unreachable_database_exits_75_so_the_mta_retries(
    project: Project, database_url: str,
) -> None:
    project.configure(bounce_address=BOUNCE_ADDRESS)
    (project.root / "var").mkdir(exist_ok=True)
    database_url = database_url.format(root=project.root)
    raw = (CORPUS / "postfix-user-unknown.eml").read_bytes()

    result = pipe(project, raw, "-", env={"MAILER_DATABASE_URL": database_url})

    assert result.returncode == 75, result.stderr
    assert "the database is unreachable" in result.stderr.decode()


def test_bounces_list_says_when_nothing_came_back(project: Project) -> None:
    project.configure()
    result = mailer(project, "bounces", "list")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "nothing came back"
