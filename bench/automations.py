"""Do automatic emails go out as fast as an issue? 10,000 readers due for one welcome email
at once, side by side with `mailer send-now` of the same text to the same list.

Usage: .venv/bin/python bench/automations.py [--readers 10000] [--rounds 2]

Both send the sample issue's text (the welcome email is that issue's file, renamed) to
smtp-sink on a free loopback port, 10 connections, from a fresh copy of the same SQLite
project each time: `mailer automations run --once` (queue the 10,000 due readers, then
deliver them) against `mailer send-now ml-issues --yes` (open the send, queue the list chunk
by chunk, deliver). Each run is one process measured with wait4() (wall, CPU, peak RSS),
alternating, `--rounds` times each. Figures are printed, never asserted. Needs Postfix's
smtp-sink (apt-get install postfix, "No configuration").
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from contenders import Run, measured
from project import MAILER, REPO, copy_database, make_project
from sink import SINK, sink

SQLITE = "sqlite:///var/mailer.db"


def welcome_project(root: Path, *, port: int, readers: int) -> dict[str, str]:
    """The bench project with its sample issue also as welcome.md, and `readers` readers
    whose automatic emails start now (`import --confirmed --welcome`)."""
    env = make_project(root, port=port, database_url=SQLITE, subscribers=0)
    issues = root / "content" / "ml-issues"
    issue = next(issues.glob("*.md"))
    # The same file as a welcome email: no send_after (automatic emails have none).
    text = "\n".join(line for line in issue.read_text(encoding="utf-8").splitlines()
                     if not line.startswith("send_after:"))
    (issues / "welcome.md").write_text(text + "\n", encoding="utf-8")
    csv = root / "readers.csv"
    with csv.open("w", encoding="utf-8") as out:
        out.write("email,name\n")
        for i in range(readers):
            out.write(f"reader{i}@example.com,Reader {i}\n")
    subprocess.run([*MAILER, "subscribers", "import", str(csv), "--list", "ml-issues",
                    "--confirmed", "--welcome"], env=env, cwd=root, check=True,
                   stdout=subprocess.DEVNULL)
    csv.unlink()
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readers", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if not SINK.exists():
        sys.exit("bench/automations.py needs Postfix's smtp-sink: apt-get install postfix")
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "mailer")],
                   check=True, stdout=subprocess.DEVNULL)
    runs: list[Run] = []
    with sink() as port, tempfile.TemporaryDirectory(prefix="mailer-bench-") as tmp_name:
        base = Path(tmp_name) / "base"
        env = welcome_project(base, port=port, readers=args.readers)
        print(f"{args.readers:,} readers due for one automatic email, and the same text as "
              f"an issue, to smtp-sink on 127.0.0.1:{port}, {os.cpu_count()} cores\n",
              flush=True)
        commands = {"mailer automations run --once": ["automations", "run", "--once"],
                    "mailer send-now (an issue)": ["send-now", "ml-issues", "--yes"]}
        for round_ in range(args.rounds):
            for name, argv in commands.items():
                run_dir = Path(tmp_name) / f"run-{round_}-{len(runs)}"
                copy_database(base, run_dir)
                run_env = {**env, "MAILER_CONFIG": str(run_dir / "schedules.yaml")}
                run = measured(name, args.readers, [*MAILER, *argv], env=run_env, cwd=run_dir)
                runs.append(run)
                print(f"{name:32} {run.rate:8,.0f} msgs/s {run.cpu:6.1f} CPU s "
                      f"{run.rss_mb:5.0f} MB peak RSS", flush=True)
    for name in commands:
        rates = [r.rate for r in runs if r.name == name]
        print(f"mean of {len(rates)}: {name:32} {sum(rates) / len(rates):8,.0f} msgs/s")
    auto = [r.rate for r in runs if "automations" in r.name]
    issue = [r.rate for r in runs if "send-now" in r.name]
    print(f"automatic email / issue: {(sum(auto) / len(auto)) / (sum(issue) / len(issue)):.2f}")


if __name__ == "__main__":
    main()
