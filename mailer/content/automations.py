"""A newsletter's automatic emails as files, and when a reader is due for each (pure).

`welcome.md` beside the issues goes to each reader once, when they confirm; the steps in
`sequence/*.md` go once each, in file order, `after` the confirmation. Which readers one
run queues is a window over the instant their sequence counts from (`sequence_from`):

- due: their point (`sequence_from + after`) has come;
- not long overdue when the email appeared: a step the author adds today reaches the readers
  whose point came at most `catch_up_hours` before the engine first saw it ready, and every
  reader whose point comes later, however long the daemon was down meanwhile. So adding a
  "day 2" step to an old newsletter does not mail every old reader at once, and a stopped
  daemon skips no one.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path

from mailer.content.issues import SEQUENCE_FOLDER, WELCOME_FILE, Issue, load_issue
from mailer.errors import ContentError
from mailer.rows import DueWindow


def due_window(email: Issue, *, first_seen: datetime, now: datetime,
               catch_up: timedelta) -> DueWindow:
    """Who is due for `email` at `now`, when the engine first saw it ready at `first_seen`."""
    return DueWindow(not_before=first_seen - catch_up - email.after, due_by=now - email.after)


def load_automatic_emails(directory: Path, *, tz: tzinfo = UTC) -> list[Issue]:
    """The welcome email (if any), then the sequence steps in file order, drafts included.

    Raises:
        ContentError: a file is broken, or a step's `after` is shorter than an earlier
            step's (the steps go in file order, so the files must say the same).
    """
    directory = Path(directory)
    emails: list[Issue] = []
    welcome = directory / WELCOME_FILE
    if welcome.is_file():
        emails.append(load_issue(welcome, tz=tz))
    folder = directory / SEQUENCE_FOLDER
    if folder.is_dir():
        paths = sorted(p for p in folder.glob("*.md")
                       if p.is_file() and not p.name.startswith((".", "_")))
        steps = [load_issue(p, tz=tz) for p in paths]
        for earlier, later in zip(steps, steps[1:], strict=False):
            if later.after < earlier.after:
                raise ContentError(
                    f"after {_words(later.after)} is sooner than {earlier.slug}'s "
                    f"{_words(earlier.after)}: steps go out in file order, so rename the "
                    "files or change their after", file=str(later.path), field="after")
        emails += steps
    return emails


def automatic_paths(directory: Path) -> list[Path]:
    """The files load_automatic_emails reads (what the daemon watches for edits)."""
    directory = Path(directory)
    return sorted([*directory.glob(WELCOME_FILE), *(directory / SEQUENCE_FOLDER).glob("*.md")])


def describe_after(email: Issue) -> str:
    """How `mailer status` names when the email goes: "at confirmation", "after 3 days"."""
    return "at confirmation" if not email.after else f"after {_words(email.after)}"


def _words(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    for unit, size in (("week", 604800), ("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds / 3600:g} hours"
