"""`mailer preview` and the Gmail clipping guard of `send-now` (and `--queue`), as a user runs
them."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from email import message_from_bytes, policy
from pathlib import Path

import pytest

from mailer.content.rendered import GMAIL_CLIP_BYTES
from tests import tools
from tests.conftest import Project

ISSUE = "2026-12-07-first-issue.md"


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    # Preview touches no database; send-now's guard runs before any SQL that differs.
    return f"sqlite:///{tmp_path}/project/var/mailer.db"


def mailer(project: Project, *args: str, env: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "MAILER_SECRET_KEY": "preview-test-key", "COLUMNS": "200",
                   **(env or {})}
    environment.pop("MAILER_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "mailer", "--config", str(project.config_path), *args],
        capture_output=True, text=True, env=environment, cwd=project.root, timeout=120,
        stdin=subprocess.DEVNULL,
    )


def long_issue(project: Project) -> Path:
    """An issue whose HTML is well past Gmail's 102 KB."""
    paragraph = ("A paragraph long enough to add up, with [a link](https://example.com/{n}) "
                 "and some *emphasis* so the markup weighs what real issues weigh.\n\n")
    body = "".join(paragraph.format(n=n) for n in range(700))
    return project.write_issue("2026-12-21-long.md", '---\nsubject: "A very long issue"\n'
                               f"status: ready\n---\n# A very long issue\n\n{body}")


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = struct.unpack(">II", data[16:24])
    return width, height


# --- formats -------------------------------------------------------------------------------------


def test_preview_writes_the_chosen_format_to_the_out_file_and_names_it(
    project: Project, tmp_path: Path
) -> None:
    project.configure()
    issue = str(project.issues / ISSUE)

    outputs = {fmt: tmp_path / f"issue.{fmt}" for fmt in ("text", "eml")}
    results = {fmt: mailer(project, "preview", issue, "--format", fmt, "--out", str(path))
               for fmt, path in outputs.items()}

    for fmt, result in results.items():
        assert result.returncode == 0, result.stderr
        assert result.stdout == "" and f"wrote {outputs[fmt]}" in result.stderr
    assert "<" not in outputs["text"].read_text()
    message = message_from_bytes(outputs["eml"].read_bytes(), policy=policy.default)
    assert message.get_content_type() == "multipart/alternative"
    assert message["To"] == "Sample Reader <reader@example.com>"


# --- --open -------------------------------------------------------------------------------------


def test_open_writes_html_and_text_and_hands_the_html_to_the_browser(
    project: Project, tmp_path: Path
) -> None:
    project.configure()
    opened = tmp_path / "opened.txt"
    fake_browser = tmp_path / "fake-browser"
    fake_browser.write_text(f'#!/bin/sh\necho "$1" >> {opened}\n')
    fake_browser.chmod(0o755)

    result = mailer(project, "preview", str(project.issues / ISSUE), "--open",
                    env={"BROWSER": str(fake_browser)})

    assert result.returncode == 0, result.stderr
    html = project.root / "var" / "preview" / "2026-12-07-first-issue.html"
    text = html.with_suffix(".txt")
    assert result.stdout == ""
    assert f"wrote {html}" in result.stderr and f"wrote {text}" in result.stderr
    assert html.read_text().lower().startswith("<!doctype html")
    assert "Unsubscribe: http" in text.read_text()
    assert opened.read_text().split() == [html.as_uri()]


def test_open_without_a_browser_says_where_the_files_are(project: Project, tmp_path: Path) -> None:
    project.configure()
    nowhere = tmp_path / "empty-path"
    nowhere.mkdir()
    env = {"PATH": str(nowhere), "BROWSER": "", "DISPLAY": "", "WAYLAND_DISPLAY": ""}

    result = mailer(project, "preview", str(project.issues / ISSUE), "--open",
                    "--out", str(tmp_path / "out" / "issue.html"), env=env)

    assert result.returncode == 0, result.stderr
    html = tmp_path / "out" / "issue.html"
    assert html.exists() and html.with_suffix(".txt").exists()
    assert f"no browser to open here: open {html} yourself" in result.stderr


# --- --width ------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.browser
def test_width_saves_a_full_page_screenshot_per_width_from_chromium(
    project: Project, tmp_path: Path
) -> None:
    chromium = tools.chromium()
    project.configure()
    out = tmp_path / "shots" / "issue.html"

    result = mailer(project, "preview", str(project.issues / ISSUE), "--out", str(out),
                    "--width", "375", "--width", "600", env={"MAILER_CHROMIUM": chromium})

    assert result.returncode == 0, result.stderr
    for width in (375, 600):
        shot = out.with_name(f"issue-{width}px.png")
        assert f"wrote {shot}" in result.stderr
        shot_width, shot_height = png_size(shot)
        assert shot_width == width and shot_height > 1000  # the whole issue, not one screen
        tools.artifact(f"preview-cli-{width}px.png").write_bytes(shot.read_bytes())


def test_width_without_chromium_fails_with_one_clear_line(project: Project, tmp_path: Path) -> None:
    project.configure()

    result = mailer(project, "preview", str(project.issues / ISSUE), "--width", "375",
                    env={"MAILER_CHROMIUM": str(tmp_path / "no-such-chromium")})

    assert result.returncode == 1
    assert "--width needs Chromium" in result.stderr
    assert "Traceback" not in result.stderr


# --- Gmail clipping ----------------------------------------------------------------------------


def test_preview_warns_naming_the_size_when_gmail_would_clip_the_issue(
    project: Project,
) -> None:
    project.configure()
    issue = long_issue(project)

    clipped = mailer(project, "preview", str(issue))
    fine = mailer(project, "preview", str(project.issues / ISSUE))

    assert clipped.returncode == 0, clipped.stderr
    size = len(clipped.stdout.encode())
    assert size > GMAIL_CLIP_BYTES
    warning = " ".join(clipped.stderr.split())
    assert "warning:" in warning and "Gmail clips messages past 102 KB" in warning
    # The size it names is the HTML's, to the tenth of a KB (the sample link is shorter).
    named = float(warning.split("the HTML is ")[1].split(" KB")[0])
    assert abs(named - size / 1024) < 0.2
    assert "Gmail" not in fine.stderr


@pytest.mark.slow
def test_send_now_refuses_an_issue_gmail_would_clip_unless_forced(project: Project) -> None:
    project.configure()
    csv = project.root / "people.csv"
    csv.write_text("email,name\nada@example.com,Ada\n", encoding="utf-8")
    assert mailer(project, "subscribers", "import", str(csv), "--list", "ml-issues",
                  "--confirmed").returncode == 0
    issue = str(long_issue(project))
    outbox = project.root / "var" / "outbox" / "new"

    dry_run = mailer(project, "send-now", "ml-issues", "--issue", issue, "--dry-run")
    refused = mailer(project, "send-now", "ml-issues", "--issue", issue, "--yes")
    test_copy = mailer(project, "send-now", "ml-issues", "--issue", issue, "--to",
                       "me@example.com")
    sent_before = list(outbox.iterdir()) if outbox.exists() else []
    forced = mailer(project, "send-now", "ml-issues", "--issue", issue, "--yes", "--force")

    assert dry_run.returncode == 0 and "Gmail clips" in " ".join(dry_run.stdout.split())
    for result in (refused, test_copy):
        assert result.returncode == 2, result.stdout + result.stderr
        line = " ".join(result.stderr.split())
        assert "2026-12-21-long.md" in line and "KB" in line and "--force" in line
    assert sent_before == []
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert "sending anyway (--force)" in " ".join(forced.stdout.split())
    assert len(list(outbox.iterdir())) == 1


@pytest.mark.slow
def test_send_now_queue_refuses_an_issue_gmail_would_clip_unless_forced(
    project: Project,
) -> None:
    project.configure()
    issue = str(long_issue(project))

    refused = mailer(project, "send-now", "ml-issues", "--issue", issue, "--queue")
    forced = mailer(project, "send-now", "ml-issues", "--issue", issue, "--queue", "--force")

    assert refused.returncode == 2, refused.stdout + refused.stderr
    line = " ".join(refused.stderr.split())
    assert "2026-12-21-long.md" in line and "KB" in line and "--force" in line
    assert "queued" not in refused.stdout
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert "queued ml-issues/2026-12-21-long" in forced.stdout
