"""The token-signing key: configured, or generated once into var/secret.key with mode 0600."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from email import message_from_bytes, policy
from pathlib import Path

import pytest

from mailer import tokens
from mailer.errors import ConfigError
from mailer.keys import load_or_create_secret_key
from tests.conftest import Project

KEY_VARIABLES = ("MAILER_SECRET_KEY", "MAILER_SECRET_KEY_FILE")


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    # Key handling does not depend on the database; the store tests cover PostgreSQL.
    return f"sqlite:///{tmp_path}/project/var/mailer.db"


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def mailer(project: Project, *args: str, env: dict[str, str] | None = None,
           ) -> subprocess.CompletedProcess[str]:
    """Run `python -m mailer` with no key in its environment unless `env` gives one."""
    environment = {name: value for name, value in os.environ.items()
                   if name not in (*KEY_VARIABLES, "MAILER_CONFIG")}
    environment.update({"COLUMNS": "200", **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "mailer", "--config", str(project.config_path), *args],
        capture_output=True, text=True, env=environment, cwd=project.root, timeout=120,
        stdin=subprocess.DEVNULL,
    )


def add_confirmed(project: Project, email: str) -> None:
    # With a key in the environment, so that importing cannot be what creates secret.key.
    csv = project.root / "subscribers.csv"
    csv.write_text(f"email,name\n{email},\n", encoding="utf-8")
    result = mailer(project, "subscribers", "import", str(csv), "--list", "ml-issues",
                    "--confirmed", env={"MAILER_SECRET_KEY": "import-only-key"})
    assert result.returncode == 0, result.stderr


def unsubscribe_tokens_in(maildir: Path) -> list[str]:
    found = []
    for path in sorted((maildir / "new").iterdir()):
        message = message_from_bytes(path.read_bytes(), policy=policy.default)
        match = re.search(r"/unsubscribe/([^>\s]+)>", str(message["List-Unsubscribe"]))
        assert match, message["List-Unsubscribe"]
        found.append(match[1])
    return found


# -- load_or_create_secret_key ------------------------------------------------------------------


def test_without_a_configured_key_one_is_generated_into_var_with_mode_0600(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    var_dir = tmp_path / "var"
    key = load_or_create_secret_key(None, var_dir)
    path = var_dir / "secret.key"
    assert mode_of(path) == 0o600
    assert path.read_text().strip() == key
    assert len(key) >= 32
    err = capsys.readouterr().err
    assert str(path) in err and "0600" in err


def test_the_generated_key_is_reused_silently_on_the_next_call(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    var_dir = tmp_path / "var"
    first = load_or_create_secret_key(None, var_dir)
    capsys.readouterr()
    assert load_or_create_secret_key(None, var_dir) == first
    assert capsys.readouterr() == ("", "")


def test_a_generated_key_is_not_predictable(tmp_path: Path) -> None:
    first = load_or_create_secret_key(None, tmp_path / "one")
    second = load_or_create_secret_key(None, tmp_path / "two")
    assert first != second


def test_a_configured_key_wins_and_no_file_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    var_dir = tmp_path / "var"
    assert load_or_create_secret_key("configured-key", var_dir) == "configured-key"
    assert not (var_dir / "secret.key").exists()
    assert capsys.readouterr() == ("", "")


def test_a_configured_key_wins_over_an_existing_key_file(tmp_path: Path) -> None:
    var_dir = tmp_path / "var"
    load_or_create_secret_key(None, var_dir)
    before = (var_dir / "secret.key").read_text()
    assert load_or_create_secret_key("configured-key", var_dir) == "configured-key"
    assert (var_dir / "secret.key").read_text() == before


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_key_file_others_can_read_is_refused_naming_the_file_and_the_fix(
    tmp_path: Path, mode: int,
) -> None:
    var_dir = tmp_path / "var"
    var_dir.mkdir()
    path = var_dir / "secret.key"
    path.write_text("kept-key\n")
    path.chmod(mode)
    with pytest.raises(ConfigError) as caught:
        load_or_create_secret_key(None, var_dir)
    assert caught.value.file == str(path)
    assert str(path) in str(caught.value) and "chmod 600" in str(caught.value)
    assert "kept-key" not in str(caught.value)
    assert path.read_text() == "kept-key\n"  # refused, not replaced


def test_an_existing_key_file_with_mode_0600_is_used_as_it_is(tmp_path: Path) -> None:
    var_dir = tmp_path / "var"
    var_dir.mkdir()
    path = var_dir / "secret.key"
    path.write_text("kept-key\n")
    path.chmod(0o600)
    assert load_or_create_secret_key(None, var_dir) == "kept-key"


def test_an_empty_key_file_is_refused_rather_than_signing_with_an_empty_key(
    tmp_path: Path,
) -> None:
    var_dir = tmp_path / "var"
    var_dir.mkdir()
    path = var_dir / "secret.key"
    path.write_text("\n")
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="empty") as caught:
        load_or_create_secret_key(None, var_dir)
    assert caught.value.file == str(path)


# -- through the CLI ----------------------------------------------------------------------------


def test_listing_subscribers_works_without_a_configured_key(project: Project) -> None:
    project.configure(smtp_url="capture")
    result = mailer(project, "subscribers", "list", "--list", "ml-issues")
    assert result.returncode == 0, result.stderr
    assert "error" not in result.stderr


@pytest.mark.slow
def test_the_first_send_without_a_configured_key_generates_var_secret_key(
    project: Project,
) -> None:
    project.configure(smtp_url="capture")
    add_confirmed(project, "ada@example.com")
    path = project.root / "var" / "secret.key"
    assert not path.exists()

    result = mailer(project, "send-now", "ml-issues", "--yes")
    assert result.returncode == 0, result.stderr
    assert mode_of(path) == 0o600
    assert str(path) in result.stderr
    key = path.read_text().strip()
    [token] = unsubscribe_tokens_in(project.root / "var" / "outbox")
    assert isinstance(tokens.read_unsubscribe_token(key, token), int)

    # The next run, a new process, signs with the same key and says nothing about it.
    issue = project.issues / "2026-12-07-first-issue.md"
    copy = mailer(project, "send-now", "ml-issues", "--issue", str(issue),
                  "--to", "editor@example.com")
    assert copy.returncode == 0, copy.stderr
    assert "test copy" in copy.stdout
    assert str(path) not in copy.stderr
    assert path.read_text().strip() == key
    test_copy = [t for t in unsubscribe_tokens_in(project.root / "var" / "outbox")
                 if t != token]
    assert [tokens.read_unsubscribe_token(key, t) for t in test_copy] == [0]


@pytest.mark.parametrize("command", [
    ("subscribers", "list", "--list", "ml-issues"),
    ("send-now", "ml-issues", "--yes"),
    ("status",),
], ids=" ".join)
def test_a_key_file_others_can_read_makes_any_command_exit_2_naming_the_file(
    project: Project, command: tuple[str, ...],
) -> None:
    project.configure(smtp_url="capture")
    key_file = project.root / "signing.key"
    key_file.write_text("do-not-print-me\n", encoding="utf-8")
    key_file.chmod(0o644)

    result = mailer(project, *command, env={"MAILER_SECRET_KEY_FILE": str(key_file)})
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert str(key_file) in lines[0] and "chmod 600" in lines[0]
    assert "do-not-print-me" not in result.stderr + result.stdout
    assert not (project.root / "var" / "secret.key").exists()

    key_file.chmod(0o600)
    fixed = mailer(project, *command, env={"MAILER_SECRET_KEY_FILE": str(key_file)})
    assert fixed.returncode == 0, fixed.stderr
