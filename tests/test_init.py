"""`mailer init`: run as a user runs it, in a fresh process, against a real folder."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mailer import config as config_mod
from mailer.cli import starter
from mailer.errors import InputError

REPO = Path(__file__).resolve().parents[1]
SAMPLE_SLUG = "2026-12-07-first-issue"
# Every template the project ships (emails and web pages: a project's templates/ replaces
# the bundled ones as a whole), the config and the sample issue.
STARTER = (
    "schedules.yaml",
    *sorted(p.relative_to(REPO).as_posix() for p in (REPO / "templates").rglob("*.j2")),
    f"content/ml-issues/{SAMPLE_SLUG}.md",
)


def mailer(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python -m mailer ARGS` in a clean environment: no MAILER_* variable leaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILER_")}
    return subprocess.run([sys.executable, "-m", "mailer", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under `root` with its bytes and modification time (ns)."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_init_writes_a_starter_whose_sample_issue_a_dry_run_would_send(tmp_path: Path) -> None:
    news = tmp_path / "news"

    done = mailer("init", str(news), cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    for rel in STARTER:
        assert (news / rel).is_file(), rel
        assert f"wrote {news / rel}" in done.stdout
    dry = mailer("--config", str(news / "schedules.yaml"), "send-now", "ml-issues", "--dry-run",
                 cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert SAMPLE_SLUG in dry.stdout
    assert "0 confirmed subscriber" in " ".join(dry.stdout.split())


def test_init_copies_the_repository_example_files_byte_for_byte(tmp_path: Path) -> None:
    written = starter.write(tmp_path / "news")

    assert sorted(p.relative_to(tmp_path / "news").as_posix() for p in written) == sorted(STARTER)
    for path in written:
        assert path.read_bytes() == (REPO / path.relative_to(tmp_path / "news")).read_bytes()


def test_the_written_config_loads_and_its_issues_folder_exists(tmp_path: Path) -> None:
    starter.write(tmp_path)

    cfg = config_mod.load(tmp_path / "schedules.yaml", env={})

    assert cfg.newsletter("ml-issues").issues.is_dir()
    assert cfg.templates_dir == tmp_path / "templates"


def test_a_second_init_exits_2_naming_the_existing_file_and_changes_nothing(
        tmp_path: Path) -> None:
    news = tmp_path / "news"
    assert mailer("init", str(news), cwd=tmp_path).returncode == 0
    (news / "schedules.yaml").write_text("# my own settings\n", encoding="utf-8")
    before = snapshot(news)

    again = mailer("init", str(news), cwd=tmp_path)

    assert again.returncode == 2
    assert again.stdout == ""
    lines = again.stderr.splitlines()
    assert len(lines) == 1, again.stderr
    assert str(news / "schedules.yaml") in lines[0]
    assert snapshot(news) == before


def test_init_writes_nothing_when_only_one_file_is_in_the_way(tmp_path: Path) -> None:
    issue = tmp_path / "content" / "ml-issues" / f"{SAMPLE_SLUG}.md"
    issue.parent.mkdir(parents=True)
    issue.write_text("mine\n", encoding="utf-8")

    with pytest.raises(InputError, match=re.escape(str(issue))):
        starter.write(tmp_path)

    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "content", "content/ml-issues", f"content/ml-issues/{SAMPLE_SLUG}.md"]
    assert issue.read_text(encoding="utf-8") == "mine\n"


def test_init_refuses_a_target_that_is_a_file(tmp_path: Path) -> None:
    target = tmp_path / "news"
    target.write_text("not a folder\n", encoding="utf-8")

    with pytest.raises(InputError, match=re.escape(str(target))):
        starter.write(target)

    assert target.read_text(encoding="utf-8") == "not a folder\n"


def test_init_adds_the_starter_beside_unrelated_files(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("hello\n", encoding="utf-8")

    written = starter.write(tmp_path)

    assert len(written) == len(STARTER)
    assert (tmp_path / "README.md").read_text(encoding="utf-8") == "hello\n"


def test_a_clash_found_while_writing_undoes_everything_already_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plan = starter.starter_files()
    # The last file is planned twice: the second write finds it "already there".
    monkeypatch.setattr(starter, "starter_files", lambda: [*plan, plan[-1]])

    with pytest.raises(InputError, match="appeared while writing"):
        starter.write(tmp_path / "news")

    assert not (tmp_path / "news").exists()
