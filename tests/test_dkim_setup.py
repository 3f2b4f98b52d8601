"""Where the DKIM setup is checked: only commands that send need it whole, through the real CLI.

A service unit usually gives the key to the daemon alone (MAILER_DKIM_KEY_FILE), while
dkim_selector and dkim_domain sit in schedules.yaml for everyone: the admin's
`subscribers import` must not trip over the key it never needs.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import dkim
import pytest

from tests.conftest import Project
from tests.smtpd import ServerThread
from tests.test_cli import add_confirmed, error_lines
from tests.test_signing import DOMAIN, SELECTOR, Key, dns_stub, make_key
from tests.tools import run_cli

SUBSCRIBERS = ["ada@example.com", "grace@example.com"]
# No key in the environment: None removes a variable the test run itself may have.
ENV: dict[str, str | None] = {"MAILER_SECRET_KEY": "dkim-test-key", "COLUMNS": "200",
                              "MAILER_CONFIG": None, "MAILER_DKIM_KEY_FILE": None,
                              "MAILER_DKIM_KEY": None}


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    # The CLI is a thin layer over the store; the store tests cover PostgreSQL.
    return f"sqlite:///{tmp_path}/project/var/mailer.db"


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Key:
    return make_key(tmp_path_factory.mktemp("dkim"), 2048)


def mailer(project: Project, *args: str, cwd: Path | None = None,
           ) -> subprocess.CompletedProcess[str]:
    return run_cli("--config", str(project.config_path), *args, cwd=cwd or project.root,
                   env=ENV)


def configure(project: Project, smtp_url: str, **settings: object) -> None:
    project.configure(smtp_url=smtp_url, dkim_selector=SELECTOR, dkim_domain=DOMAIN, **settings)


def test_commands_that_send_nothing_work_with_selector_and_domain_but_no_key(
    project: Project,
) -> None:
    configure(project, "smtp://127.0.0.1:1")  # nothing may connect: these commands send nothing
    add_confirmed(project, *SUBSCRIBERS)
    listed = mailer(project, "subscribers", "list", "--list", "ml-issues")
    assert listed.returncode == 0, listed.stderr
    assert all(email in listed.stdout for email in SUBSCRIBERS), listed.stdout
    status = mailer(project, "status")
    assert status.returncode == 0, status.stderr
    dry_run = mailer(project, "send-now", "ml-issues", "--dry-run")
    assert dry_run.returncode == 0, dry_run.stderr


def test_send_now_without_a_key_exits_2_naming_the_missing_key_and_sends_nothing(
    project: Project, key: Key,
) -> None:
    with ServerThread() as server:
        configure(project, f"smtp://127.0.0.1:{server.port}")
        add_confirmed(project, *SUBSCRIBERS)
        for args in (("--yes",), ("--to", "editor@example.com")):
            result = mailer(project, "send-now", "ml-issues", *args)
            assert result.returncode == 2, (args, result.stdout, result.stderr)
            [line] = error_lines(result)
            assert line.startswith(f"error: {project.config_path}: "), line
            assert "missing: settings.dkim_key_file or MAILER_DKIM_KEY_FILE" in line, line
            assert "dkim_selector" not in line.split("missing:")[1], line
        assert server.messages == []

        # Nothing was opened either: with the key given, the one send reaches everyone.
        result = run_cli("--config", str(project.config_path), "send-now", "ml-issues",
                         "--yes", cwd=project.root,
                         env={**ENV, "MAILER_DKIM_KEY_FILE": str(key.path)})
        assert result.returncode == 0, result.stderr
        assert sorted(r for m in server.messages for r in m.rcpt_tos) == SUBSCRIBERS
        for received in server.messages:
            assert dkim.verify(received.data, dnsfunc=dns_stub(key))


def test_a_key_file_named_in_the_settings_signs_every_message_and_the_test_copy(
    project: Project, key: Key, tmp_path: Path,
) -> None:
    (project.root / "keys").mkdir()
    local = project.root / "keys" / "dkim.pem"
    local.write_bytes(key.path.read_bytes())
    local.chmod(0o600)
    elsewhere = tmp_path / "elsewhere"  # the path is relative to schedules.yaml, not the cwd
    elsewhere.mkdir()
    with ServerThread() as server:
        configure(project, f"smtp://127.0.0.1:{server.port}", dkim_key_file="keys/dkim.pem")
        add_confirmed(project, *SUBSCRIBERS)
        copy = mailer(project, "send-now", "ml-issues", "--to", "editor@example.com",
                      cwd=elsewhere)
        assert copy.returncode == 0, copy.stderr
        sent = mailer(project, "send-now", "ml-issues", "--yes", cwd=elsewhere)
        assert sent.returncode == 0, sent.stderr
        messages = list(server.messages)

    assert [m.rcpt_tos for m in messages[:1]] == [["editor@example.com"]]
    assert sorted(r for m in messages[1:] for r in m.rcpt_tos) == SUBSCRIBERS
    for received in messages:
        assert received.data.startswith(b"DKIM-Signature:"), received.rcpt_tos
        assert dkim.verify(received.data, dnsfunc=dns_stub(key)), received.rcpt_tos


def test_a_key_file_others_may_read_is_refused_naming_the_file_and_nothing_is_sent(
    project: Project, key: Key,
) -> None:
    loose = project.root / "dkim.pem"
    loose.write_bytes(key.path.read_bytes())
    loose.chmod(0o644)
    with ServerThread() as server:
        configure(project, f"smtp://127.0.0.1:{server.port}", dkim_key_file="dkim.pem")
        add_confirmed(project, *SUBSCRIBERS)  # never reads the key: its mode does not matter
        result = mailer(project, "send-now", "ml-issues", "--yes")
        assert result.returncode == 2, (result.stdout, result.stderr)
        [line] = error_lines(result)
        assert f"{loose}: settings.dkim_key_file: secret file has mode 0644" in line, line
        assert f"chmod 600 {loose}" in line, line
        assert server.messages == []


def test_the_worker_refuses_a_key_without_selector_and_domain_naming_both(
    project: Project, key: Key,
) -> None:
    with ServerThread() as server:
        project.configure(smtp_url=f"smtp://127.0.0.1:{server.port}",
                          dkim_key_file=str(key.path))
        add_confirmed(project, *SUBSCRIBERS)
        result = mailer(project, "worker", "--once")
        assert result.returncode == 2, (result.stdout, result.stderr)
        [line] = error_lines(result)
        assert "missing: settings.dkim_selector and settings.dkim_domain" in line, line
        assert server.messages == []
