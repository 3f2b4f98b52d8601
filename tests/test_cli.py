"""The `mailer` command as a user runs it: its command line, a SQLite file, an SMTP server.

The commands run in the test's process (tests/tools.run_cli: the same typer app, exit codes,
stdout and stderr); one test runs `python -m mailer` as a real process. The processes
themselves (signals, crashes, daemons) are tested in test_daemon, test_crash and test_worker.
"""

from __future__ import annotations

import os
import subprocess
import sys
from email import message_from_bytes, policy
from pathlib import Path

import pytest

from tests.conftest import Project
from tests.smtpd import ServerThread
from tests.tools import run_cli, summary_of

SUBSCRIBERS = ["ada@example.com", "grace@example.com", "alan@example.org"]


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    # The CLI is a thin layer over the store; the store tests cover PostgreSQL.
    return f"sqlite:///{tmp_path}/project/var/mailer.db"


ENV: dict[str, str | None] = {"MAILER_SECRET_KEY": "cli-test-key", "COLUMNS": "200",
                              "MAILER_CONFIG": None}


def mailer(project: Project, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("--config", str(project.config_path), *args, cwd=project.root, env=ENV)


def mailer_process(project: Project, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m mailer …` as a new process, stdin not a terminal."""
    environment = {k: v for k, v in {**os.environ, **ENV}.items() if v is not None}
    return subprocess.run(
        [sys.executable, "-m", "mailer", "--config", str(project.config_path), *args],
        capture_output=True, text=True, env=environment, cwd=project.root, timeout=120,
        stdin=subprocess.DEVNULL,
    )


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def add_confirmed(project: Project, *emails: str) -> None:
    csv = project.root / "subscribers.csv"
    csv.write_text("email,name\n" + "".join(f"{e},\n" for e in emails), encoding="utf-8")
    result = mailer(project, "subscribers", "import", str(csv), "--list", "ml-issues",
                    "--confirmed")
    assert result.returncode == 0, result.stderr


def test_send_now_delivers_one_message_per_confirmed_subscriber_and_then_nothing(
    project: Project,
) -> None:
    with ServerThread() as server:
        project.configure(smtp_url=f"smtp://127.0.0.1:{server.port}")
        add_confirmed(project, *SUBSCRIBERS)
        pending = mailer(project, "subscribers", "add", "pending@example.com", "--list",
                         "ml-issues")
        assert pending.returncode == 0, pending.stderr
        confirm_mails = len(server.messages)  # the pending address got its confirmation

        first = mailer(project, "send-now", "ml-issues", "--yes")
        assert first.returncode == 0, first.stderr
        issue_mails = server.messages[confirm_mails:]
        assert sorted(r for m in issue_mails for r in m.rcpt_tos) == sorted(SUBSCRIBERS)
        assert summary_of(first.stdout) == {"sent": 3, "failed": 0, "retrying": 0,
                                            "unknown": 0, "skipped": 0,
                                            "possible duplicates": 0}, first.stdout

        second = mailer(project, "send-now", "ml-issues", "--yes")
        assert second.returncode == 0, second.stderr
        assert "nothing to send" in second.stdout
        assert len(server.messages) == confirm_mails + 3

    status = mailer(project, "status", "ml-issues")
    assert status.returncode == 0
    assert "2026-12-07-first-issue" in status.stdout and "finished" in status.stdout


def test_sent_messages_are_multipart_alternative_with_the_contract_headers(
    project: Project,
) -> None:
    with ServerThread() as server:
        project.configure(smtp_url=f"smtp://127.0.0.1:{server.port}")
        add_confirmed(project, *SUBSCRIBERS)
        assert mailer(project, "send-now", "ml-issues", "--yes").returncode == 0
        messages = [m.parsed() for m in server.messages]

    for message in messages:
        assert message.get_content_type() == "multipart/alternative"
        parts = [p.get_content_type() for p in message.iter_parts()]
        assert parts == ["text/plain", "text/html"]
        for header in ("From", "To", "Subject", "Date", "Message-ID", "List-Id",
                       "List-Unsubscribe", "List-Unsubscribe-Post"):
            assert message[header], header
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert len({m["Message-ID"] for m in messages}) == 3
    assert len({m["List-Unsubscribe"] for m in messages}) == 3


def test_dry_run_counts_recipients_and_sends_and_records_nothing(project: Project) -> None:
    with ServerThread() as server:
        project.configure(smtp_url=f"smtp://127.0.0.1:{server.port}")
        add_confirmed(project, *SUBSCRIBERS)
        result = mailer(project, "send-now", "ml-issues", "--dry-run")
        assert result.returncode == 0, result.stderr
        assert " 3 confirmed subscriber(s) of ml-issues" in result.stdout, result.stdout
        assert server.messages == []
        # Nothing recorded: the real send afterwards still reaches everyone.
        assert mailer(project, "send-now", "ml-issues", "--yes").returncode == 0
        assert len(server.messages) == 3


def test_to_sends_one_test_copy_that_is_not_recorded_as_the_issues_send(
    project: Project,
) -> None:
    with ServerThread() as server:
        project.configure(smtp_url=f"smtp://127.0.0.1:{server.port}")
        add_confirmed(project, *SUBSCRIBERS)
        result = mailer(project, "send-now", "ml-issues", "--to", "editor@example.com")
        assert result.returncode == 0, result.stderr
        assert [m.rcpt_tos for m in server.messages] == [["editor@example.com"]]

        assert mailer(project, "send-now", "ml-issues", "--yes").returncode == 0
        assert sorted(r for m in server.messages[1:] for r in m.rcpt_tos) == sorted(SUBSCRIBERS)


def test_send_now_exits_1_and_names_the_failure_when_a_recipient_is_refused(
    project: Project,
) -> None:
    with ServerThread(reject_rcpt={"alan@example.org": "550 5.1.1 no such user"}) as server:
        project.configure(smtp_url=f"smtp://127.0.0.1:{server.port}")
        add_confirmed(project, *SUBSCRIBERS)
        result = mailer(project, "send-now", "ml-issues", "--yes")
    assert result.returncode == 1
    assert "alan@example.org" in result.stdout and "no such user" in result.stdout


def test_send_now_without_yes_and_without_a_terminal_refuses(project: Project) -> None:
    with ServerThread() as server:
        project.configure(smtp_url=f"smtp://127.0.0.1:{server.port}")
        add_confirmed(project, *SUBSCRIBERS)
        result = mailer(project, "send-now", "ml-issues")
        assert result.returncode == 2
        assert "--yes" in result.stderr
        assert server.messages == []


def test_the_capture_server_writes_every_message_into_the_outbox_maildir(
    project: Project,
) -> None:
    project.configure(smtp_url="capture")
    add_confirmed(project, *SUBSCRIBERS)
    result = mailer(project, "send-now", "ml-issues", "--yes")
    assert result.returncode == 0, result.stderr
    outbox = project.root / "var" / "outbox" / "new"
    assert len(list(outbox.iterdir())) == 3
    assert str(project.root / "var" / "outbox") in result.stdout.replace("\n", "")


def test_subscribers_add_list_export_and_remove(project: Project) -> None:
    project.configure()
    added = mailer(project, "subscribers", "add", "Ada@Example.COM", "--list", "ml-issues",
                   "--name", "Ada Lovelace", "--confirmed")
    assert added.returncode == 0, added.stderr
    exported = mailer(project, "subscribers", "export", "--list", "ml-issues")
    assert exported.returncode == 0
    lines = exported.stdout.splitlines()
    assert lines[0] == "email,name,status,created_at,confirmed_at"
    assert lines[1].startswith("Ada@example.com,Ada Lovelace,confirmed,")
    assert "Ada@example.com" in mailer(project, "subscribers", "list", "--list",
                                       "ml-issues").stdout
    assert mailer(project, "subscribers", "remove", "Ada@example.com", "--list",
                  "ml-issues").returncode == 0
    after = mailer(project, "subscribers", "export", "--list", "ml-issues")
    assert after.stdout.splitlines() == [lines[0]]



def test_subscribers_list_shows_a_name_as_the_reader_typed_it_not_as_markup(
    project: Project,
) -> None:
    project.configure()
    name = "[b]Ada[/b] :smile:"
    assert mailer(project, "subscribers", "add", "ada@example.com", "--list", "ml-issues",
                  "--name", name, "--confirmed").returncode == 0
    listed = mailer(project, "subscribers", "list", "--list", "ml-issues")
    assert listed.returncode == 0, listed.stderr
    assert name in listed.stdout

# -- bad input: exit 2, one line naming the place, nothing stored ---------------------------


@pytest.mark.parametrize(("yaml_text", "expected"), [
    ("settings:\n  concurrency: [1\nnewsletters: {}\n", "malformed YAML"),
    ("settings:\n  concurency: 3\nnewsletters: {}\n", "settings.concurency: unknown key"),
    ("newsletters:\n  ml-issues:\n    name: X\n    from: not-an-address\n"
     "    issues: content/ml-issues\n", "newsletters.ml-issues.from"),
])
def test_a_broken_schedules_yaml_exits_2_with_one_line_naming_file_and_key(
    project: Project, yaml_text: str, expected: str,
) -> None:
    project.config_path.write_text(yaml_text, encoding="utf-8")
    result = mailer(project, "send-now", "ml-issues", "--yes")
    assert result.returncode == 2
    lines = error_lines(result)
    assert len(lines) == 1, result.stderr
    assert str(project.config_path) in lines[0] and expected in lines[0]


def test_broken_front_matter_exits_2_naming_the_issue_file_and_sends_nothing(
    project: Project,
) -> None:
    with ServerThread() as server:
        project.configure(smtp_url=f"smtp://127.0.0.1:{server.port}")
        add_confirmed(project, *SUBSCRIBERS)
        broken = project.write_issue(
            "2026-11-30-broken.md", "---\nsubject: [unclosed\nstatus: ready\n---\nBody\n")
        result = mailer(project, "send-now", "ml-issues", "--yes")
        assert result.returncode == 2
        lines = error_lines(result)
        assert len(lines) == 1 and str(broken) in lines[0], result.stderr
        assert server.messages == []


def test_a_csv_with_bad_rows_imports_nothing_and_lists_every_bad_line(project: Project) -> None:
    project.configure()
    csv = project.root / "people.csv"
    csv.write_text(
        "email,name\n"
        "ok@example.com,Fine\n"
        "not-an-address,Bad\n"
        "also@ok.example.com,\n"
        "two@@example.com,Bad\n"
        "x@example.com,a,b\n",
        encoding="utf-8",
    )
    result = mailer(project, "subscribers", "import", str(csv), "--list", "ml-issues",
                    "--confirmed")
    assert result.returncode == 2
    lines = error_lines(result)
    assert len(lines) == 1, result.stderr
    for bad_line in ("line 3", "line 5", "line 6"):
        assert bad_line in lines[0]
    assert "line 2" not in lines[0] and "line 4" not in lines[0]
    exported = mailer(project, "subscribers", "export", "--list", "ml-issues")
    assert exported.stdout.splitlines() == ["email,name,status,created_at,confirmed_at"]


def test_an_unknown_newsletter_exits_2_and_lists_the_known_ones(project: Project) -> None:
    project.configure()
    # A real process: `python -m mailer` turns the error into its exit status and stderr.
    result = mailer_process(project, "send-now", "no-such-list", "--yes")
    assert result.returncode == 2
    assert "no-such-list" in result.stderr and "ml-issues" in result.stderr


def test_preview_renders_the_issue_in_every_format(project: Project, tmp_path: Path) -> None:
    project.configure()
    issue = str(project.issues / "2026-12-07-first-issue.md")
    text = mailer(project, "preview", issue, "--text")
    assert text.returncode == 0, text.stderr
    assert "https://arxiv.org/abs/1503.02531" in text.stdout and "<" not in text.stdout

    mjml = mailer(project, "preview", issue, "--format", "mjml")
    assert mjml.stdout.lstrip().startswith("<mjml")

    out = tmp_path / "issue.eml"
    eml = mailer(project, "preview", issue, "--format", "eml", "--out", str(out))
    assert eml.returncode == 0 and eml.stdout == ""
    message = message_from_bytes(out.read_bytes(), policy=policy.default)
    assert message.get_content_type() == "multipart/alternative"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

    html = mailer(project, "preview", issue)
    assert html.stdout.lstrip().lower().startswith("<!doctype html")

    unknown = mailer(project, "preview", issue, "--format", "pdf")
    assert unknown.returncode == 2 and "--format" in unknown.stderr


def test_a_csv_row_with_a_control_character_in_the_name_is_reported_not_stored(
    project: Project,
) -> None:
    project.configure()
    csv = project.root / "people.csv"
    csv.write_text("email,name\nok@example.com,Fine\nbell@example.com,Ding\x07Dong\n",
                   encoding="utf-8")
    result = mailer(project, "subscribers", "import", str(csv), "--list", "ml-issues")
    assert result.returncode == 2 and "line 3" in result.stderr
    assert "control characters" in result.stderr


def test_status_lists_each_failure_with_the_servers_reply(project: Project) -> None:
    with ServerThread(reject_rcpt={"alan@example.org": "550 5.1.1 no such user"}) as server:
        project.configure(smtp_url=f"smtp://127.0.0.1:{server.port}")
        add_confirmed(project, *SUBSCRIBERS)
        assert mailer(project, "send-now", "ml-issues", "--yes").returncode == 1
    status = mailer(project, "status")
    assert status.returncode == 0, status.stderr
    assert "failed alan@example.org: 550 5.1.1 no such user" in status.stdout



def test_send_now_prints_a_relays_reply_as_written_even_if_it_looks_like_markup(
    project: Project,
) -> None:
    # The relay's text is data: rich must not read "[bold]" as a style or ":smile:" as emoji.
    reply = "550 5.1.1 [bold]no such[/bold] user :smile:"
    with ServerThread(reject_rcpt={"alan@example.org": reply}) as server:
        project.configure(smtp_url=f"smtp://127.0.0.1:{server.port}")
        add_confirmed(project, *SUBSCRIBERS)
        result = mailer(project, "send-now", "ml-issues", "--yes")
    assert result.returncode == 1, result.stderr
    assert f"failed alan@example.org: {reply}" in result.stdout

def test_send_now_resume_only_goes_on_with_a_paused_send_and_never_starts_one(
    project: Project,
) -> None:
    with ServerThread() as server:
        project.configure(smtp_url=f"smtp://127.0.0.1:{server.port}")
        add_confirmed(project, *SUBSCRIBERS)
        nothing = mailer(project, "send-now", "ml-issues", "--resume", "--yes")
        assert nothing.returncode == 0, nothing.stderr
        assert "nothing to resume" in nothing.stdout
        assert server.messages == []  # the due issue was not started
    # A relay that takes the connection and refuses every recipient for now: a send that
    # would only burn attempts pauses itself.
    refusing = {s: ["451 4.3.0 queue full, try later"] * 10 for s in SUBSCRIBERS}
    with ServerThread(fail_rcpt=refusing) as dead:
        project.configure(smtp_url=f"smtp://127.0.0.1:{dead.port}", error_window=3,
                          max_error_rate=1.0, retry_base_seconds=0)
        paused = mailer(project, "send-now", "ml-issues", "--yes")
        assert paused.returncode == 1 and "paused" in paused.stdout
    with ServerThread() as healthy:
        project.configure(smtp_url=f"smtp://127.0.0.1:{healthy.port}")
        resumed = mailer(project, "send-now", "ml-issues", "--resume", "--yes")
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert sorted(r for m in healthy.messages for r in m.rcpt_tos) == sorted(SUBSCRIBERS)
