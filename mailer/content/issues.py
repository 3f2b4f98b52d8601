"""Issue files (YAML front matter + Markdown) and the rule that picks a newsletter's due issue."""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from pathlib import Path
from typing import Any, Literal

from mailer.addresses import LINE_BREAKS
from mailer.config.yamlfile import line_of, load_yaml
from mailer.content import fields
from mailer.errors import ContentError
from mailer.states import SendKind

KEYS = ("subject", "status", "send_after", "preheader")
# What each kind of file may say: an automatic email goes when a reader is due for it, so
# it has no send_after; a sequence step says how long after the confirmation.
_KEYS_OF = {SendKind.ISSUE: KEYS, SendKind.WELCOME: ("subject", "status", "preheader"),
            SendKind.STEP: ("subject", "status", "preheader", "after")}
WELCOME_FILE = "welcome.md"
SEQUENCE_FOLDER = "sequence"
_AFTER = re.compile(r"(\d+(?:\.\d+)?)\s*(minute|hour|day|week)s?", re.IGNORECASE)
STATUSES = ("ready", "draft")
_SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# Every character Python or an MTA may treat as a line break, plus NUL: in a Subject header
# any of them could end the header and start a forged one (header injection).
_EARLIEST = datetime.min.replace(tzinfo=UTC)
_Fail = Callable[[str, str], ContentError]


@dataclass(frozen=True)
class Issue:
    """One issue file: its front matter, and its Markdown body."""

    slug: str
    path: Path
    subject: str
    status: Literal["ready", "draft"]
    send_after: datetime | None
    preheader: str
    body: str
    # An automatic email (welcome.md, sequence/*.md) rather than an issue; a step says how
    # long after a reader's confirmation it goes (the welcome email: at once).
    kind: SendKind = SendKind.ISSUE
    after: timedelta = timedelta(0)
    # Where the body and the front-matter values start in the file, for the line of a
    # personal field (see fields.uses).
    body_line: int = 1
    subject_line: int = 1
    preheader_line: int = 1

    def field_uses(self) -> list[fields.FieldUse]:
        """Every personal field the subject, preheader and body name, with its line."""
        file = str(self.path)
        return [*fields.uses(self.subject, file=file, first_line=self.subject_line),
                *fields.uses(self.preheader, file=file, first_line=self.preheader_line),
                *fields.uses(self.body, file=file, first_line=self.body_line)]


def kind_of(path: Path) -> SendKind:
    """What a Markdown file in a newsletter's folder is, by where it lies."""
    if path.parent.name == SEQUENCE_FOLDER:  # sequence/welcome.md is a step like any other
        return SendKind.STEP
    if path.name == WELCOME_FILE:
        return SendKind.WELCOME
    return SendKind.ISSUE


def parse_issue(text: str, *, path: Path, tz: tzinfo = UTC) -> Issue:
    """Parse an issue: a `---` YAML front matter block, then the Markdown body.

    Front matter keys: `subject` (required, one line), `status` (`ready` or `draft`; the
    default is `draft`, so an issue is never sent because a line was forgotten),
    `send_after` (a date means 00:00 in `tz`; a date and time without offset is in `tz`)
    and `preheader` (optional inbox preview text). An automatic email (its kind read from
    the path: welcome.md, sequence/*.md) has no `send_after`; a sequence step must say
    `after: 3 days` (minutes, hours, days or weeks after the confirmation). Its slug is its
    path in the folder (`welcome.md`, `sequence/day-3.md`), which no issue's slug may be
    (a file `welcome.md.md` is refused).

    The subject, preheader and body may hold personal fields (mailer.content.fields) and
    nothing else of a template: anything else between `{{ }}`, and any `{%` or `{#`, is
    refused here, so a broken issue stops at load, before any render.

    Raises:
        ContentError: naming the file, the line and the front-matter key.
    """
    file = str(path)
    kind = kind_of(Path(path))
    slug = Path(path).stem
    if not _SLUG.fullmatch(slug):
        raise ContentError("an issue's file name is its web address: use letters, digits, "
                           "'-', '_' and '.' only", file=file)
    if kind is SendKind.ISSUE and slug == WELCOME_FILE:  # sends are told apart by slug
        raise ContentError(f"this issue's address would be the welcome email's "
                           f"({WELCOME_FILE}): rename the file", file=file)
    lines = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines[0].rstrip() != "---":
        raise ContentError("an issue starts with front matter: a '---' line, subject: …, "
                           "status: …, then another '---' line", file=file, line=1)
    end = next((i for i, line in enumerate(lines[1:], 1) if line.rstrip() == "---"), None)
    if end is None:
        raise ContentError("the front matter is not closed: add a '---' line after it",
                           file=file, line=1)
    data, key_lines = load_yaml("\n".join(lines[1:end]), file=file, error=ContentError,
                                first_line=2)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ContentError("expected front matter as key: value lines", file=file, line=2)
    keys = _KEYS_OF[kind]
    for key in data:
        if key not in keys:
            raise ContentError(f"unknown front-matter key (expected one of: {', '.join(keys)})",
                               file=file, line=key_lines.get((str(key),)), field=str(key))

    def fail(key: str, message: str) -> ContentError:
        return ContentError(message, file=file, line=line_of(key_lines, (key,)) or 1, field=key)

    body = "\n".join(lines[end + 1:])
    if kind is SendKind.WELCOME:
        slug = WELCOME_FILE
    elif kind is SendKind.STEP:
        slug = f"{SEQUENCE_FOLDER}/{Path(path).name}"
    issue = Issue(
        slug=slug,
        kind=kind,
        after=_after(data.get("after"), fail) if kind is SendKind.STEP else timedelta(0),
        path=Path(path),
        subject=_subject(data.get("subject"), fail),
        status=_status(data.get("status", "draft"), fail),
        send_after=_send_after(data.get("send_after"), tz, fail),
        preheader=_preheader(data.get("preheader"), fail),
        body=body.lstrip("\n"),
        # Line end + 2 is the first after the closing '---'; stripped blank lines follow.
        body_line=end + 2 + len(body) - len(body.lstrip("\n")),
        subject_line=line_of(key_lines, ("subject",)) or 1,
        preheader_line=line_of(key_lines, ("preheader",)) or 1,
    )
    issue.field_uses()  # refuses anything in it that is not a personal field
    return issue


def _subject(value: Any, fail: _Fail) -> str:
    if value is None:
        raise fail("subject", "required: the email's Subject line")
    if not isinstance(value, str):
        raise fail("subject", f"expected one line of text, got {value!r}; quote it")
    if LINE_BREAKS.search(value):
        raise fail("subject", "must be one line: a line break in a Subject header would let "
                              "it inject other headers")
    if not value.strip():
        raise fail("subject", "must not be empty")
    return value.strip()


def _status(value: Any, fail: _Fail) -> Literal["ready", "draft"]:
    if value == "ready":
        return "ready"
    if value == "draft":
        return "draft"
    raise fail("status", f"expected ready or draft, got {value!r}")


def _send_after(value: Any, tz: tzinfo, fail: _Fail) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        # YAML only reads date-times with seconds as timestamps; accept "2026-12-07 09:00" too.
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise fail("send_after", f"expected a date (2026-12-07) or a date and time "
                                     f"(2026-12-07 09:00), got {value!r}") from None
    if isinstance(value, datetime):
        return value.replace(tzinfo=tz) if value.tzinfo is None else value
    if isinstance(value, date):
        return datetime.combine(value, time(), tzinfo=tz)
    raise fail("send_after", f"expected a date (2026-12-07) or a date and time "
                             f"(2026-12-07 09:00), got {value!r}")


def _after(value: Any, fail: _Fail) -> timedelta:
    if value is None:
        raise fail("after", "required in a sequence step: how long after the reader "
                            "confirmed it goes, e.g. after: 3 days")
    match = _AFTER.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise fail("after", f"expected a number and a unit (minutes, hours, days or weeks), "
                            f"e.g. 3 days, got {value!r}")
    unit = match.group(2).lower()
    return timedelta(**{f"{unit}s": float(match.group(1))})


def _preheader(value: Any, fail: _Fail) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise fail("preheader", f"expected text, got {value!r}; quote it")
    return " ".join(value.split())


def load_issue(path: Path, *, tz: tzinfo = UTC) -> Issue:
    """Read and parse one issue file.

    Raises:
        ContentError: the file cannot be read as UTF-8, or is not a valid issue.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ContentError(f"cannot read issue: {exc}", file=str(path)) from None
    return parse_issue(text, path=Path(path), tz=tz)


def load_issues(directory: Path, *, tz: tzinfo = UTC) -> list[Issue]:
    """Every `*.md` issue in `directory`, by file name; names starting with `.` or `_` are skipped.

    Raises:
        ContentError: the folder is missing, or any issue in it is broken.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ContentError("issues folder not found", file=str(directory))
    # welcome.md is the newsletter's welcome email, never one of its issues.
    paths = sorted(p for p in directory.glob("*.md")
                   if p.is_file() and not p.name.startswith((".", "_"))
                   and p.name != WELCOME_FILE)
    return [load_issue(p, tz=tz) for p in paths]


def pick_due_issue(issues: Iterable[Issue], sent_slugs: Collection[str],
                   now: datetime) -> Issue | None:
    """The oldest ready issue (by send_after, then file name) that is due at `now` and unsent.

    An issue without send_after is due at once and counts as the oldest. Drafts are never due.
    """
    due = [issue for issue in issues
           if issue.status == "ready" and issue.slug not in sent_slugs
           and (issue.send_after is None or issue.send_after <= now)]
    return min(due, key=lambda i: (i.send_after or _EARLIEST, i.path.name), default=None)
