"""content: issue files → Issue, with errors that name the line, and the due-issue rule."""

from __future__ import annotations

import contextlib
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailer.content import Issue, load_issue, load_issues, parse_issue, pick_due_issue
from mailer.errors import ContentError

REPO = Path(__file__).resolve().parent.parent
BERLIN = ZoneInfo("Europe/Berlin")
PATH = Path("content/ml-issues/2026-12-07-first.md")


def issue_text(front: str, body: str = "# Hello\n\nBody.\n") -> str:
    return f"---\n{textwrap.dedent(front)}---\n{body}"


def parse_error(front: str, **kwargs: object) -> ContentError:
    with pytest.raises(ContentError) as caught:
        parse_issue(issue_text(front), path=PATH, **kwargs)  # type: ignore[arg-type]
    return caught.value


def make(slug: str, *, status: str = "ready", send_after: datetime | None = None) -> Issue:
    return Issue(slug=slug, path=Path(f"{slug}.md"), subject=slug, status=status,  # type: ignore[arg-type]
                 send_after=send_after, preheader="", body="")


def test_the_sample_issue_parses() -> None:
    path = REPO / "content" / "ml-issues" / "2026-12-07-first-issue.md"
    issue = load_issue(path, tz=BERLIN)
    assert issue.slug == "2026-12-07-first-issue"
    assert issue.status == "ready"
    assert issue.subject.startswith("Machine Learning Issues #01")
    assert issue.send_after == datetime(2026, 11, 1, tzinfo=BERLIN)
    assert issue.preheader
    for piece in ("[![", "```bash", "| Topic", "\n- ", "/subscribe/ml-issues"):
        assert piece in issue.body
    assert not issue.body.startswith("\n")


def test_front_matter_fields_are_read() -> None:
    issue = parse_issue(issue_text("""\
        subject: "Issue #02"
        status: ready
        send_after: 2026-12-07 09:30:00
        preheader: "  TOGL,
          fair networks  "
        """), path=PATH, tz=BERLIN)
    assert issue.subject == "Issue #02"
    assert issue.send_after == datetime(2026, 12, 7, 9, 30, tzinfo=BERLIN)
    assert issue.preheader == "TOGL, fair networks"
    assert issue.body == "# Hello\n\nBody.\n"
    assert issue.slug == "2026-12-07-first" and issue.path == PATH


@pytest.mark.parametrize(("value", "expected"), [
    ("2026-12-07", datetime(2026, 12, 7, tzinfo=BERLIN)),
    ("2026-12-07 09:00", datetime(2026, 12, 7, 9, tzinfo=BERLIN)),
    ("'2026-12-07T09:00'", datetime(2026, 12, 7, 9, tzinfo=BERLIN)),
    ("2026-12-07T09:00:00Z", datetime(2026, 12, 7, 9, tzinfo=UTC)),
    ("2026-12-07 09:00:00+05:00", datetime(2026, 12, 7, 4, tzinfo=UTC)),
])
def test_send_after_is_tz_aware_and_naive_values_use_the_newsletter_tz(
        value: str, expected: datetime) -> None:
    issue = parse_issue(issue_text(f"subject: x\nsend_after: {value}\n"), path=PATH, tz=BERLIN)
    assert issue.send_after == expected
    assert issue.send_after is not None and issue.send_after.tzinfo is not None


def test_status_defaults_to_draft_so_nothing_is_sent_by_accident() -> None:
    issue = parse_issue(issue_text("subject: x\n"), path=PATH)
    assert issue.status == "draft" and issue.send_after is None and issue.preheader == ""


def test_crlf_files_and_a_bom_are_accepted() -> None:
    text = "\ufeff---\r\nsubject: x\r\nstatus: ready\r\n---\r\nBody\r\n"
    issue = parse_issue(text, path=PATH)
    assert (issue.subject, issue.status, issue.body) == ("x", "ready", "Body\n")


@pytest.mark.parametrize("subject", ['"Hi\\r\\nBcc: all@example.com"', '"Hi\\nthere"',
                                     '"Hi\\u2028there"', "|\n  two\n  lines"])
def test_a_subject_with_a_line_break_is_refused_as_header_injection(subject: str) -> None:
    error = parse_error(f"status: ready\nsubject: {subject}\n")
    assert (error.field, error.line, error.file) == ("subject", 3, str(PATH))
    assert "inject" in error.message


@pytest.mark.parametrize(("front", "field", "line", "words"), [
    ("status: ready\n", "subject", 1, "required"),
    ("subject: x\nstatus: sent\n", "status", 3, "ready or draft"),
    ("subject: x\nsend_after: next week\n", "send_after", 3, "expected a date"),
    ("subject: 42\n", "subject", 2, "quote it"),
    ("subject: '  '\n", "subject", 2, "empty"),
    ("subject: x\npreheader: [a]\n", "preheader", 3, "expected text"),
    ("subject: x\nauthor: me\n", "author", 3, "unknown front-matter key"),
])
def test_front_matter_errors_name_the_file_line_and_key(front: str, field: str, line: int,
                                                        words: str) -> None:
    error = parse_error(front)
    assert (error.field, error.line) == (field, line)
    assert words in error.message
    assert str(error).startswith(f"{PATH}:{line}: {field}: ")


def test_malformed_front_matter_yaml_names_the_file_line() -> None:
    error = parse_error("subject: x\nstatus: [ready\n")
    assert error.line == 3 and "malformed YAML" in error.message


def test_an_impossible_date_names_its_line() -> None:
    error = parse_error("subject: x\nsend_after: 2026-02-30\n")
    assert error.line == 3 and "2026-02-30" in error.message


def test_missing_or_unclosed_front_matter_is_an_error() -> None:
    with pytest.raises(ContentError, match="starts with front matter"):
        parse_issue("# Just markdown\n", path=PATH)
    with pytest.raises(ContentError, match="not closed"):
        parse_issue("---\nsubject: x\n# body\n", path=PATH)


def test_a_file_name_unfit_for_a_url_is_refused() -> None:
    with pytest.raises(ContentError, match="web address"):
        parse_issue(issue_text("subject: x\n"), path=Path("my issue?.md"))


def test_load_issues_reads_md_files_by_name_and_skips_hidden_ones(tmp_path: Path) -> None:
    for name in ("b.md", "a.md", ".#a.md", "_template.md", "notes.txt"):
        (tmp_path / name).write_text(issue_text(f"subject: {name}\n"), encoding="utf-8")
    assert [i.slug for i in load_issues(tmp_path)] == ["a", "b"]


def test_one_broken_issue_makes_load_issues_fail_naming_it(tmp_path: Path) -> None:
    (tmp_path / "good.md").write_text(issue_text("subject: x\n"), encoding="utf-8")
    (tmp_path / "bad.md").write_bytes(b"---\nsubject: \xff\n---\n")
    with pytest.raises(ContentError) as caught:
        load_issues(tmp_path)
    assert caught.value.file == str(tmp_path / "bad.md")
    with pytest.raises(ContentError, match="not found"):
        load_issues(tmp_path / "missing")


NOW = datetime(2026, 12, 7, 9, tzinfo=UTC)


def test_the_due_issue_is_the_oldest_ready_unsent_one_whose_time_has_come() -> None:
    issues = [
        make("c-late", send_after=datetime(2026, 12, 1, tzinfo=UTC)),
        make("b-early", send_after=datetime(2026, 11, 1, tzinfo=UTC)),
        make("a-future", send_after=datetime(2026, 12, 8, tzinfo=UTC)),
        make("0-draft", status="draft"),
    ]
    assert pick_due_issue(issues, set(), NOW).slug == "b-early"  # type: ignore[union-attr]
    assert pick_due_issue(issues, {"b-early"}, NOW).slug == "c-late"  # type: ignore[union-attr]
    assert pick_due_issue(issues, {"b-early", "c-late"}, NOW) is None


def test_ties_on_send_after_go_by_file_name_and_undated_issues_come_first() -> None:
    day = datetime(2026, 11, 1, tzinfo=UTC)
    issues = [make("b", send_after=day), make("a", send_after=day)]
    assert pick_due_issue(issues, (), NOW).slug == "a"  # type: ignore[union-attr]
    issues += [make("z-undated")]
    assert pick_due_issue(issues, (), NOW).slug == "z-undated"  # type: ignore[union-attr]


def test_an_issue_is_due_exactly_at_its_send_after() -> None:
    issues = [make("x", send_after=NOW)]
    assert pick_due_issue(issues, (), NOW) is issues[0]
    assert pick_due_issue(issues, (), NOW.replace(second=0, minute=0, hour=8)) is None


def test_no_issues_means_nothing_is_due() -> None:
    assert pick_due_issue([], (), NOW) is None


@given(st.text())
def test_any_text_parses_or_raises_content_error(text: str) -> None:
    with contextlib.suppress(ContentError):
        parse_issue(text, path=PATH)


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=120),
       st.sampled_from(["", "subject: x\n", "subject: x\nstatus: ready\n"]))
def test_any_front_matter_parses_or_raises_content_error(front: str, prefix: str) -> None:
    try:
        issue = parse_issue(f"---\n{prefix}{front}\n---\nbody", path=PATH, tz=BERLIN)
    except ContentError as error:
        assert "\n" not in str(error)
    else:
        assert "\n" not in issue.subject and issue.status in ("ready", "draft")


_ISSUES = st.lists(
    st.builds(lambda slug, draft, days: make(
        slug, status="draft" if draft else "ready",
        send_after=None if days is None else NOW + timedelta(days=days)),
        st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True), st.booleans(),
        st.none() | st.integers(-30, 30)),
    max_size=8, unique_by=lambda i: i.slug)


@given(_ISSUES, st.data())
def test_the_due_issue_is_ready_unsent_due_and_no_eligible_issue_comes_before_it(
        issues: list[Issue], data: st.DataObject) -> None:
    sent = data.draw(st.sets(st.sampled_from([i.slug for i in issues]) if issues
                             else st.nothing()))
    due = pick_due_issue(issues, sent, NOW)
    eligible = [i for i in issues if i.status == "ready" and i.slug not in sent
                and (i.send_after is None or i.send_after <= NOW)]
    if due is None:
        assert eligible == []
        return
    assert due in eligible
    key = (due.send_after or datetime.min.replace(tzinfo=UTC), due.path.name)
    assert all(key <= (i.send_after or datetime.min.replace(tzinfo=UTC), i.path.name)
               for i in eligible)
