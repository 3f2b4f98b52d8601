"""Personal fields through the real send path: a CSV of email,name,city, `mailer send-now`, and
what a real SMTP server (aiosmtpd) receives for each reader, hostile names included; and the
issues that must stop before anything is sent."""

from __future__ import annotations

import asyncio
import html
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest

from mailer.store import Store
from tests.conftest import Project
from tests.smtpd import Received, ServerThread
from tests.test_cli import error_lines
from tests.tools import run_cli

ENV: dict[str, str | None] = {"MAILER_SECRET_KEY": "fields-test-key", "COLUMNS": "200",
                              "MAILER_CONFIG": None}
ISSUE = """\
---
subject: 'Hello {{ subscriber.name | default("there") }}, news for {{ subscriber.attributes.city | default("your city") }}'
status: ready
---
# This week

Hello **{{ subscriber.name | default("there") }}**! Here is what happened in
{{ subscriber.attributes.city | default("your city") }}, sent to {{ subscriber.email }}.
"""  # noqa: E501
# name → (what the reader is called, city cell)
READERS = {
    "ann@example.com": ("Ann", "Oslo"),
    "script@example.com": ("<script>alert(1)</script>", "<b>Rome</b>"),
    "amp@example.com": ("Tom & Jerry", "A&B"),
    "quotes@example.com": ('The "Quoted" O\'Brien', '"Bergen"'),
    "zoe@example.com": ("Zoë Ł", "Łódź"),
    "word@example.com": ("=?utf-8?q?x?=", "=?utf-8?b?QmNjOiB4?="),
    "noname@example.com": ("", ""),
}


def mailer(project: Project, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("--config", str(project.config_path), *args, cwd=project.root, env=ENV)


def csv_cell(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def import_readers(project: Project, readers: Mapping[str, tuple[str, str]]) -> None:
    people = project.root / "people.csv"
    people.write_text("email,name,city\n" + "".join(
        f"{email},{csv_cell(name)},{csv_cell(city)}\n"
        for email, (name, city) in readers.items()), encoding="utf-8")
    result = mailer(project, "subscribers", "import", str(people), "--list", "ml-issues",
                    "--confirmed")
    assert result.returncode == 0, result.stderr


def only_issue(project: Project, text: str) -> Path:
    for old in project.issues.glob("*.md"):
        old.unlink()
    return project.write_issue("2026-12-07-hello.md", text)


def by_reader(messages: list[Received]) -> dict[str, Received]:
    return {message.rcpt_tos[0]: message for message in messages}


def parts(message: Received) -> tuple[str, str, str]:
    parsed = message.parsed()
    assert not parsed.defects and all(not part.defects for part in parsed.walk())
    text, page = parsed.get_body(("plain",)), parsed.get_body(("html",))
    assert text is not None and page is not None
    return str(parsed["Subject"]), text.get_content(), page.get_content()


def test_each_reader_is_greeted_by_name_in_subject_text_and_html_hostile_names_inert(
    project: Project,
) -> None:
    only_issue(project, ISSUE)
    with ServerThread() as server:
        project.configure(smtp_url=f"smtp://127.0.0.1:{server.port}")
        import_readers(project, READERS)
        result = mailer(project, "send-now", "ml-issues", "--yes")
        assert result.returncode == 0, result.stderr
        received = by_reader(list(server.messages))
    assert sorted(received) == sorted(READERS)
    for email, (name, city) in READERS.items():
        shown_name, shown_city = name or "there", city or "your city"
        subject, text, page = parts(received[email])
        assert subject == f"Hello {shown_name}, news for {shown_city}"
        assert f"Hello *{shown_name}*!" in text and shown_city in text and email in text
        assert f"Hello <strong>{html.escape(shown_name)}</strong>!" in page
        assert html.escape(shown_city) in page
        assert "<script>" not in page and "<b>Rome" not in page and "MAILERFIELD" not in page
        assert "MAILERFIELD" not in text + subject
        # The encoded word a reader typed is their name, not a header it decodes to.
        head = received[email].data.split(b"\r\n\r\n", 1)[0]
        assert b"\r\nBcc:" not in head and b"\r\nSubject: Hello =?utf-8?q?x?=" not in head


async def _add_raw(db_url: str) -> None:
    # Straight into the store, past every check on the way in (clean_name refuses line
    # breaks): a value that got into the database some other way must still be inert.
    async with Store.open(db_url) as store:
        await store.add_subscriber("eve@example.com", newsletter="ml-issues", confirmed=True,
                                   name="Eve\r\nBcc: x@evil.example",
                                   attributes={"city": "Nice\r\nBcc: y@evil.example\r\n"})


def test_a_line_break_in_a_name_or_attribute_never_starts_a_header(project: Project) -> None:
    only_issue(project, ISSUE)
    with ServerThread() as server:
        project.configure(smtp_url=f"smtp://127.0.0.1:{server.port}")
        asyncio.run(_add_raw(project.db_url))
        result = mailer(project, "send-now", "ml-issues", "--yes")
        assert result.returncode == 0, result.stderr + result.stdout
        (message,) = list(server.messages)
    assert message.rcpt_tos == ["eve@example.com"]
    parsed = message.parsed()
    assert parsed.get_all("Bcc") is None
    head = message.data.split(b"\r\n\r\n", 1)[0]
    assert not any(line.startswith(b"Bcc") for line in head.split(b"\r\n"))
    assert str(parsed["Subject"]) == "Hello Eve Bcc: x@evil.example, news for Nice Bcc: " \
                                     "y@evil.example"
    (to,) = parsed["To"].addresses
    assert (to.display_name, to.addr_spec) == ("Eve Bcc: x@evil.example", "eve@example.com")
    _, text, page = parts(message)
    # Raw in the text part: a line of the body, which no mail reader takes for a header.
    assert "Hello *Eve\nBcc: x@evil.example*!" in text.replace("\r\n", "\n")
    assert "Hello <strong>Eve\r\nBcc: x@evil.example</strong>!" in page


NO_DEFAULT = """\
---
subject: 'News'
status: ready
---
Hello {{ subscriber.name | default("there") }},

the weather in {{ subscriber.attributes.city }} today.
"""


def test_a_field_without_default_that_some_lack_stops_send_now_and_dry_run_and_preview(
    project: Project,
) -> None:
    issue = only_issue(project, NO_DEFAULT)
    with ServerThread() as server:
        project.configure(smtp_url=f"smtp://127.0.0.1:{server.port}")
        import_readers(project, {"a@example.com": ("A", "Oslo"), "b@example.com": ("B", ""),
                                 "c@example.com": ("", "")})
        for args in (["send-now", "ml-issues", "--yes"], ["send-now", "ml-issues", "--dry-run"],
                     ["send-now", "ml-issues", "--to", "me@example.com"],
                     ["preview", str(issue), "--format", "text"]):
            result = mailer(project, *args)
            assert result.returncode == 2, (args, result.stdout, result.stderr)
            (line,) = error_lines(result)
            assert line.startswith(f"error: {issue}:7: ") or f"{issue}:7: " in line, line
            assert "{{ subscriber.attributes.city }} has no default" in line
            assert "2 confirmed subscriber(s) of ml-issues have no attribute city" in line
        assert list(server.messages) == []
    status = mailer(project, "status", "ml-issues")
    assert "2026-12-07-hello" not in status.stdout  # no send was opened


def test_once_everyone_has_the_value_the_field_needs_no_default(project: Project) -> None:
    issue = only_issue(project, NO_DEFAULT)
    with ServerThread() as server:
        project.configure(smtp_url=f"smtp://127.0.0.1:{server.port}")
        import_readers(project, {"a@example.com": ("A", "Oslo"), "b@example.com": ("", "Rome")})
        preview = mailer(project, "preview", str(issue), "--format", "text")
        assert preview.returncode == 0, preview.stderr
        assert "Hello Sample Reader," in preview.stdout and "[city]" in preview.stdout
        result = mailer(project, "send-now", "ml-issues", "--yes")
        assert result.returncode == 0, result.stderr
        received = by_reader(list(server.messages))
    assert "Hello there," in parts(received["b@example.com"])[1]
    assert "weather in Rome today" in parts(received["b@example.com"])[1]


@pytest.mark.parametrize("body", [
    "{{ cycler.__init__.__globals__ }}",
    "{% for x in y %}x{% endfor %}",
    "{{ config }}",
    "{{ subscriber.name.__class__ }}",
    "{{ subscriber.name | upper }}",
])
def test_an_issue_trying_template_code_is_refused_in_one_line_and_nothing_is_sent(
    project: Project, body: str,
) -> None:
    issue = only_issue(project, f"---\nsubject: Hi\nstatus: ready\n---\nHello\n\n{body}\n")
    with ServerThread() as server:
        project.configure(smtp_url=f"smtp://127.0.0.1:{server.port}")
        import_readers(project, {"a@example.com": ("A", "Oslo")})
        for args in (["send-now", "ml-issues", "--yes"], ["preview", str(issue)]):
            result = mailer(project, *args)
            assert result.returncode == 2, result.stderr
            (line,) = error_lines(result)
            assert f"{issue}:7: " in line and "personal field" in line
        assert list(server.messages) == []
