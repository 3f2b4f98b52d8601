"""Issues as authors write them, rendered once into an email (pure: no I/O beyond the file read)."""

from mailer.content.issues import (
    KEYS,
    STATUSES,
    Issue,
    load_issue,
    load_issues,
    parse_issue,
    pick_due_issue,
)

__all__ = [
    "Issue",
    "KEYS",
    "STATUSES",
    "load_issue",
    "load_issues",
    "parse_issue",
    "pick_due_issue",
]
