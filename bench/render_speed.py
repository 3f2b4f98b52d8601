"""How fast does `mailer` render an issue, and personalise it per recipient?

Usage: .venv/bin/python bench/render_speed.py [ISSUE.md] [--recipients 20000] [--repeat 50]

Renders the seed issue (tests/data/ml-issue-02.md unless ISSUE.md is given) with the project's
templates: Markdown → Jinja2 → MJML → HTML and the text part, as `send-now` does once per issue.
Then personalises it for N recipients two ways: `render.personalize` (the unsubscribe URL into
the HTML and text parts) and `PreparedMessage.personalize` (the complete MIME message bytes,
what the sender hands to SMTP). Targets: ≤ 20 ms per issue, ≤ 30 µs per recipient on one
core. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mailer import config, content  # noqa: E402
from mailer.content import render  # noqa: E402
from mailer.content.rendered import RenderedIssue, personalize  # noqa: E402
from mailer.delivery import message  # noqa: E402

SCHEDULES = """\
settings:
  base_url: https://news.example.com
  postal_address: "Example Publishing, 1 Sample Street, 10115 Berlin, Germany"
newsletters:
  ml-issues:
    name: Machine Learning Issues
    from: "Machine Learning Issues <newsletter@example.com>"
    issues: {issues}
"""


def timed(func: Callable[[], object], repeat: int) -> list[float]:
    """Seconds per call, `repeat` calls."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("issue", nargs="?", type=Path, default=REPO / "tests/data/ml-issue-02.md")
    parser.add_argument("--recipients", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        schedules = Path(tmp) / "schedules.yaml"
        schedules.write_text(SCHEDULES.format(issues=args.issue.resolve().parent))
        cfg = config.load(schedules, env={"MAILER_SECRET_KEY": "bench"})
    newsletter = cfg.newsletters["ml-issues"]
    issue = content.load_issue(args.issue, tz=newsletter.tz)
    templates = REPO / "templates"

    def render_once() -> RenderedIssue:
        return render.render_issue(issue, newsletter, cfg.settings, templates_dir=templates)

    cold = timed(render_once, 1)[0]  # includes compiling the template
    warm = timed(render_once, args.repeat)
    rendered = render_once()
    letter = message.Letter(sender=newsletter.sender, reply_to=None,
                            list_id=message.list_id(newsletter.id, cfg.settings.base_url),
                            rendered=rendered)
    prepared = message.prepare_message(letter)
    urls = [f"https://news.example.com/unsubscribe/{n:08d}.AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"
            for n in range(args.recipients)]
    date = datetime(2026, 12, 7, 8, tzinfo=UTC)

    start = time.perf_counter()
    for url in urls:
        personalize(rendered, unsubscribe_url=url)
    parts = (time.perf_counter() - start) / len(urls)
    start = time.perf_counter()
    for n, url in enumerate(urls):
        prepared.personalize(to_email=f"reader{n}@example.com", to_name="Ada Reader",
                             unsubscribe_url=url, msg_id=f"<{n}.bench@example.com>", date=date)
    whole = (time.perf_counter() - start) / len(urls)

    print(f"issue: {args.issue} ({len(issue.body.encode()) / 1024:.1f} KB Markdown → "
          f"{rendered.html_bytes / 1024:.1f} KB HTML, {len(rendered.text.encode()) / 1024:.1f} KB "
          "text)")
    print(f"render once:      {statistics.median(warm) * 1e3:6.2f} ms median of {args.repeat} "
          f"(min {min(warm) * 1e3:.2f} ms; first call {cold * 1e3:.2f} ms with template "
          "compile)   target ≤ 20 ms")
    print(f"personalise:      {parts * 1e6:6.2f} µs per recipient (render.personalize, "
          f"{args.recipients} recipients)   target ≤ 30 µs")
    print(f"whole message:    {whole * 1e6:6.2f} µs per recipient (PreparedMessage.personalize: "
          "headers + both parts as MIME bytes)")


if __name__ == "__main__":
    main()
