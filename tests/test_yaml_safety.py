"""YAML anchors and aliases are refused before anything walks the tree: a 2 KB alias bomb
("billion laughs") in schedules.yaml or in front matter costs milliseconds, not gigabytes."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from mailer import config
from mailer.config import yamlfile
from mailer.content import parse_issue
from mailer.errors import ConfigError, ContentError
from mailer.runners.daemon import load_snapshot
from tests.conftest import Project
from tests.test_cli import error_lines, mailer
from tests.test_daemon import Daemon, write_config

REPO = Path(__file__).resolve().parents[1]
REFUSED = "anchors and aliases (&x / *x) are not supported"


def bomb(levels: int = 9, *, indent: str = "") -> str:
    """Nested aliases, 9 to a list: `levels` deep they stand for 9**levels strings."""
    lines = [f'{indent}l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"{indent}l{i}: &l{i} [{','.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


BOMB_CONFIG = "settings:\n  concurrency: 3\nnewsletters: {}\nbombs:\n" + bomb(indent="  ")


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/project/var/mailer.db"


def test_the_bomb_is_small() -> None:
    assert len(BOMB_CONFIG) < 2048


def test_an_alias_bomb_in_schedules_yaml_exits_2_at_once_naming_file_and_line(
    project: Project,
) -> None:
    project.config_path.write_text(BOMB_CONFIG, encoding="utf-8")
    started = time.monotonic()
    result = mailer(project, "status")
    assert time.monotonic() - started < 5  # 13 s and 1.5 GB at 7 levels before; 9: MemoryError
    assert result.returncode == 2
    lines = error_lines(result)
    assert lines == [f"error: {project.config_path}:5: {REFUSED}"], result.stderr


@pytest.mark.parametrize(("text", "line"), [
    ("a: &x 1\nb: 2\n", 1),
    ("a: 1\nb: *x\n", 2),
    ("base: {x: 1}\nc:\n  <<: *base\n", 3),
    ("a:\n  - !!str &x 1\n", 2),
])
def test_every_anchor_and_alias_is_refused_naming_its_line(text: str, line: int) -> None:
    with pytest.raises(ConfigError) as caught:
        yamlfile.load_yaml(text, file="schedules.yaml")
    assert str(caught.value) == f"schedules.yaml:{line}: {REFUSED}"


def test_ampersands_and_stars_inside_values_are_plain_text() -> None:
    data, _ = yamlfile.load_yaml('cron: "0 9 * * 1"\nname: Tom & Jerry\nx: a*b\n', file="f")
    assert data == {"cron": "0 9 * * 1", "name": "Tom & Jerry", "x": "a*b"}


def test_an_alias_bomb_in_front_matter_is_a_content_error_naming_the_issue_line() -> None:
    text = "---\nsubject: Hi\nstatus: ready\n" + bomb() + "---\nBody\n"
    started = time.monotonic()
    with pytest.raises(ContentError) as caught:
        parse_issue(text, path=Path("content/ml-issues/bomb.md"))
    assert time.monotonic() - started < 1
    assert str(caught.value) == f"content/ml-issues/bomb.md:4: {REFUSED}"


def test_the_reload_of_the_daemon_refuses_the_bomb(tmp_path: Path) -> None:
    # What `mailer run` calls on SIGHUP or an edit; the daemon test below goes through it.
    path = tmp_path / "schedules.yaml"
    path.write_text(BOMB_CONFIG, encoding="utf-8")
    started = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        load_snapshot(path)
    assert time.monotonic() - started < 1
    assert str(caught.value) == f"{path}:5: {REFUSED}"


def test_a_running_daemon_refuses_to_reload_an_alias_bomb_and_keeps_running(
    project: Project,
) -> None:
    path = write_config(project, None, watch_seconds=0)  # SIGHUP only
    with Daemon(path, test_now=None) as daemon:
        daemon.wait_for("running")
        text = path.read_text(encoding="utf-8")
        path.write_text(text + "bombs:\n" + bomb(indent="  "), encoding="utf-8")
        bomb_line = text.count("\n") + 2
        daemon.proc.send_signal(signal.SIGHUP)
        log = daemon.wait_for("reload refused", timeout=10)
        assert daemon.stop() == 0
    refused = next(line for line in log.splitlines() if "reload refused" in line)
    assert f"{path}:{bomb_line}: {REFUSED}" in refused


@pytest.mark.parametrize("path", [REPO / "schedules.yaml",
                                  REPO / "mailer" / "starter" / "schedules.yaml"],
                         ids=["example", "starter"])
def test_the_shipped_schedules_yaml_files_load(path: Path) -> None:
    assert config.load(path, env={}).newsletters


def test_the_shipped_issues_parse() -> None:
    issues = [*REPO.glob("content/*/*.md"), *REPO.glob("mailer/starter/content/*/*.md")]
    assert issues
    for issue in issues:
        parse_issue(issue.read_text(encoding="utf-8"), path=issue)
