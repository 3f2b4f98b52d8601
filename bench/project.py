"""The project bench/send.py sends from: the sample issue (with personal fields if asked),
`schedules.yaml` and a list of confirmed subscribers, imported by `mailer` itself."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAILER = [sys.executable, "-m", "mailer"]
SESSIONS = 10  # smtp-source sessions and mailer's concurrency

# Three personal fields, in the subject and the opening line of the sample issue.
FIELDS_SUBJECT = 'subject: "Issue #01 for {{ subscriber.name | default(\\"you\\") }}: small models"'
FIELDS_LINE = ('Hello {{ subscriber.name | default("there") }} in '
               '{{ subscriber.attributes.city | default("your city") }} '
               '(sent to {{ subscriber.email }}).\n\n')
CITIES = ("Oslo", "Zürich", "São Paulo", "Kraków", "Lyon", "")


def with_fields(issues: Path) -> None:
    """Make the sample issue in `issues` greet each reader with three personal fields."""
    for path in issues.glob("*.md"):
        head, _, body = path.read_text(encoding="utf-8").partition("\n---\n")
        head = "\n".join(FIELDS_SUBJECT if line.startswith("subject:") else line
                         for line in head.splitlines())
        path.write_text(f"{head}\n---\n{FIELDS_LINE}{body}", encoding="utf-8")


def smtp_url(port: int, *, pipelining: bool = True) -> str:
    """Where the mailer contenders send: MAILER_SMTP_URL, which overrides schedules.yaml."""
    # `?pipelining=off` (mailer.delivery.targets): one command per round trip even though
    # smtp-sink offers PIPELINING (RFC 2920).
    return f"smtp://127.0.0.1:{port}" + ("" if pipelining else "?pipelining=off")


def make_project(root: Path, *, port: int, database_url: str, subscribers: int,
                 fields: bool = False, cities: bool = False) -> dict[str, str]:
    """A project folder with the sample issue (with personal fields if `fields`) and
    `subscribers` confirmed subscribers (with a city attribute if `cities`); returns the
    environment to run `mailer` in (MAILER_SMTP_URL may be set afresh for each run)."""
    (root / "content").mkdir(parents=True)
    shutil.copytree(REPO / "content" / "ml-issues", root / "content" / "ml-issues")
    if fields:
        with_fields(root / "content" / "ml-issues")
    (root / "schedules.yaml").write_text(textwrap.dedent(f"""\
        settings:
          database_url: {database_url}
          smtp_url: smtp://127.0.0.1:{port}
          concurrency: {SESSIONS}
          postal_address: "1 Bench Street, Benchville"
        newsletters:
          ml-issues:
            name: Machine Learning Issues
            from: "Machine Learning Issues <newsletter@example.com>"
            issues: content/ml-issues
        """), encoding="utf-8")
    csv = root / "subscribers.csv"
    with csv.open("w", encoding="utf-8") as out:  # line by line: see send.own_peak_rss_mb()
        out.write("email,name,city\n" if cities else "email,name\n")
        for i in range(subscribers):
            city = f",{CITIES[i % len(CITIES)]}" if cities else ""
            out.write(f"reader{i}@example.com,Reader {i}{city}\n")
    env = {**os.environ, "MAILER_SECRET_KEY": "bench-key", "MAILER_CONFIG":
           str(root / "schedules.yaml")}
    subprocess.run([*MAILER, "subscribers", "import", str(csv), "--list", "ml-issues",
                    "--confirmed"], env=env, cwd=root, check=True, stdout=subprocess.DEVNULL)
    csv.unlink()
    return env


def sample_message(env: dict[str, str], cwd: Path) -> bytes:
    issue = next((cwd / "content" / "ml-issues").glob("*.md"))
    return subprocess.run([*MAILER, "preview", str(issue), "--format", "eml"], env=env, cwd=cwd,
                          check=True, capture_output=True).stdout


def copy_database(root: Path, to: Path) -> None:
    """A fresh copy of a SQLite project's list (nothing sent yet) for one more run."""
    shutil.rmtree(to, ignore_errors=True)
    shutil.copytree(root, to)
