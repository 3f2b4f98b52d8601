"""What mailer writes to disk is its owner's alone: the database (every subscriber), its
-wal and -shm files and the captured mails are 0600, in folders mailer makes 0700."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailer.keys import load_or_create_secret_key
from tests.conftest import Project
from tests.test_cli import SUBSCRIBERS, add_confirmed, mailer
from tests.test_daemon import Daemon, write_config


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/project/var/mailer.db"


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    """The umask most systems give users (022: files 0644 unless made otherwise), inherited
    by every `mailer` process a test starts, so a private mode is mailer's own doing."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_subscribers_add_on_a_fresh_project_makes_var_0700_and_the_database_0600(
    project: Project,
) -> None:
    project.configure()
    var = project.root / "var"
    assert not var.exists()
    result = mailer(project, "subscribers", "add", "ada@example.com", "--list", "ml-issues",
                    "--confirmed")
    assert result.returncode == 0, result.stderr
    assert mode(var) == 0o700
    assert mode(var / "mailer.db") == 0o600
    # SQLite removes -wal and -shm when the last connection closes; where left, they are private.
    for leftover in (var / "mailer.db-wal", var / "mailer.db-shm"):
        assert not leftover.exists() or mode(leftover) == 0o600


@pytest.mark.slow
def test_the_wal_and_shm_files_of_a_running_daemon_are_0600(project: Project) -> None:
    path = write_config(project, None)
    var = project.root / "var"
    with Daemon(path, test_now=None) as daemon:
        daemon.wait_for("running")
        modes = {p.name: mode(p) for p in var.iterdir() if p.name.startswith("mailer.db")}
        assert daemon.stop() == 0
    assert modes == {"mailer.db": 0o600, "mailer.db-wal": 0o600, "mailer.db-shm": 0o600}
    assert mode(var) == 0o700


def test_captured_messages_are_0600_in_a_maildir_of_0700_folders(project: Project) -> None:
    project.configure(smtp_url="capture")
    add_confirmed(project, *SUBSCRIBERS)
    result = mailer(project, "send-now", "ml-issues", "--yes")
    assert result.returncode == 0, result.stderr
    outbox = project.root / "var" / "outbox"
    assert {folder.name: mode(folder) for folder in (outbox, *outbox.iterdir())} == {
        "outbox": 0o700, "tmp": 0o700, "new": 0o700, "cur": 0o700}
    messages = list((outbox / "new").iterdir())
    assert len(messages) == len(SUBSCRIBERS)
    assert {mode(message) for message in messages} == {0o600}
    assert list((outbox / "tmp").iterdir()) == []


def test_a_database_in_a_folder_the_user_made_is_0600_and_the_folder_keeps_its_mode(
    project: Project, tmp_path: Path,
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o755)  # whatever the umask was, the folder is the user's choice
    Project(root=project.root, db_url=f"sqlite:///{shared}/mailer.db").configure()
    result = mailer(project, "subscribers", "add", "ada@example.com", "--list", "ml-issues",
                    "--confirmed")
    assert result.returncode == 0, result.stderr
    assert mode(shared) == 0o755
    assert mode(shared / "mailer.db") == 0o600


def test_folders_mailer_makes_for_the_database_are_0700_all_the_way_down(
    project: Project, tmp_path: Path,
) -> None:
    Project(root=project.root, db_url=f"sqlite:///{tmp_path}/a/b/mailer.db").configure()
    result = mailer(project, "subscribers", "add", "ada@example.com", "--list", "ml-issues",
                    "--confirmed")
    assert result.returncode == 0, result.stderr
    assert (mode(tmp_path / "a"), mode(tmp_path / "a" / "b")) == (0o700, 0o700)
    assert mode(tmp_path / "a" / "b" / "mailer.db") == 0o600


def test_the_var_folder_made_for_the_generated_key_is_0700(tmp_path: Path) -> None:
    var = tmp_path / "var"
    assert load_or_create_secret_key(None, var)
    assert (mode(var), mode(var / "secret.key")) == (0o700, 0o600)
