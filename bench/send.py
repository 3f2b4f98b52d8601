"""How fast does `mailer` send? Side by side with Postfix's smtp-source and a bare aiosmtplib loop.

Usage: .venv/bin/python bench/send.py [--subscribers 100000] [--skip-postgres] [--fields]

--fields also sends an issue using three personal fields (name, email and a `city` attribute,
in the subject and the body) to the same list, alternating with the plain issue (--rounds
times each, 2 by default): the cost of splicing each reader's values in, from one run on one
machine. On a shared machine the spread between rounds can exceed the cost: add rounds.

Needs the project's test extras (scripts/setup test) and Postfix's smtp-sink and smtp-source:
    apt-get install postfix    (choose "No configuration": no mail daemon starts)
Every run starts smtp-sink on a free loopback port; each contender is one process,
measured with wait4(): wall seconds, CPU seconds (user+system) and peak RSS.
Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SINK, SOURCE = Path("/usr/sbin/smtp-sink"), Path("/usr/sbin/smtp-source")
MAILER = [sys.executable, "-m", "mailer"]
SESSIONS = 10  # smtp-source sessions and mailer's concurrency


@dataclass
class Run:
    name: str
    messages: int
    wall: float
    cpu: float
    rss_mb: float
    note: str = ""

    @property
    def rate(self) -> float:
        return self.messages / self.wall if self.wall else 0.0


def measured(name: str, messages: int, argv: list[str], *, env: dict[str, str] | None = None,
             cwd: Path | None = None) -> Run:
    """Run one process to its end and read its resource use from wait4()."""
    start = time.perf_counter()
    process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        assert process.stderr is not None
        sys.exit(f"{name} failed ({status}): {process.stderr.read().decode()[-2000:]}")
    return Run(name, messages, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)


def measured_together(name: str, messages: int, argvs: list[list[str]], env: dict[str, str],
                      cwd: Path) -> Run:
    """Several processes started at once; wall until the last ends, CPU summed, RSS max."""
    start = time.perf_counter()
    processes = [subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE) for argv in argvs]
    cpu, rss = 0.0, 0.0
    for process in processes:
        _, status, usage = os.wait4(process.pid, 0)
        if status != 0:
            assert process.stderr is not None
            sys.exit(f"{name} failed: {process.stderr.read().decode()[-2000:]}")
        cpu += usage.ru_utime + usage.ru_stime
        rss = max(rss, usage.ru_maxrss / 1024)
    return Run(name, messages, time.perf_counter() - start, cpu, rss)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_sink(port: int) -> subprocess.Popen[bytes]:
    user = ["-u", "nobody"] if os.geteuid() == 0 else []  # smtp-sink drops root itself
    sink = subprocess.Popen([str(SINK), *user, f"127.0.0.1:{port}", "1024"])
    for _ in range(100):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return sink
        time.sleep(0.05)
    sys.exit("smtp-sink did not start")


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


def make_project(root: Path, *, port: int, database_url: str, subscribers: int,
                 fields: bool = False, cities: bool = False) -> dict[str, str]:
    """A project folder with the sample issue (with personal fields if `fields`) and
    `subscribers` confirmed subscribers (with a city attribute if `cities`)."""
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
    with csv.open("w", encoding="utf-8") as out:  # line by line: see own_peak_rss_mb()
        out.write("email,name,city\n" if cities else "email,name\n")
        for i in range(subscribers):
            city = f",{CITIES[i % len(CITIES)]}" if cities else ""
            out.write(f"reader{i}@example.com,Reader {i}{city}\n")
    env = {**os.environ, "MAILER_SECRET_KEY": "bench-key", "MAILER_CONFIG":
           str(root / "schedules.yaml")}
    subprocess.run([*MAILER, "subscribers", "import", str(csv), "--list", "ml-issues",
                    "--confirmed"], env=env, cwd=root, check=True, stdout=subprocess.DEVNULL)
    return env


def sample_message(env: dict[str, str], cwd: Path) -> bytes:
    issue = next((cwd / "content" / "ml-issues").glob("*.md"))
    return subprocess.run([*MAILER, "preview", str(issue), "--format", "eml"], env=env, cwd=cwd,
                          check=True, capture_output=True).stdout


ALOOP = """\
import asyncio, sys, aiosmtplib
port, count, sessions, path = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
data = open(path, "rb").read()
async def session(n):
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
    await client.connect()
    for _ in range(n):
        await client.sendmail("a@example.com", ["b@example.com"], data)
    await client.quit()
async def main():
    per, extra = divmod(count, sessions)
    await asyncio.gather(*(session(per + (i < extra)) for i in range(sessions)))
asyncio.run(main())
"""


def first_message_delay(database: Path, started: float) -> float:
    with sqlite3.connect(database) as db:
        (first,) = db.execute("SELECT min(sent_at) FROM deliveries").fetchone()
    return datetime.fromisoformat(first).replace(tzinfo=UTC).timestamp() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=100_000)
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--fields", action="store_true",
                        help="also send an issue with three personal fields, and compare")
    parser.add_argument("--rounds", type=int, default=2,
                        help="with --fields: how many times each issue is sent, alternating")
    args = parser.parse_args()
    if not (SINK.exists() and SOURCE.exists()):
        sys.exit("bench/send.py needs Postfix's smtp-sink and smtp-source: "
                 "apt-get install postfix, and choose 'No configuration' so no mail daemon "
                 "starts")
    n = args.subscribers
    # As `pip install` does for an installed package: a checkout run with
    # PYTHONDONTWRITEBYTECODE (set on some CI machines) would otherwise compile every
    # module of mailer from source at each start, and pay for it in time and memory.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "mailer")],
                   check=True, stdout=subprocess.DEVNULL)
    port = free_port()
    sink = start_sink(port)
    runs: list[Run] = []
    try:
        with tempfile.TemporaryDirectory(prefix="mailer-bench-") as tmp:
            root = Path(tmp) / "sqlite"
            env = make_project(root, port=port, database_url="sqlite:///var/mailer.db",
                               subscribers=n)
            message = sample_message(env, root)
            (Path(tmp) / "message.eml").write_bytes(message)
            size = len(message)
            print(f"{n:,} messages of {size / 1024:.1f} KB to smtp-sink on 127.0.0.1:{port}, "
                  f"{SESSIONS} connections, {os.cpu_count()} cores\n", flush=True)

            runs.append(measured("smtp-source (Postfix)", n, [
                str(SOURCE), "-s", str(SESSIONS), "-l", str(size), "-m", str(n),
                "-f", "a@example.com", "-t", "b@example.com", f"127.0.0.1:{port}"]))
            runs.append(measured("bare aiosmtplib loop", n, [
                sys.executable, "-c", ALOOP, str(port), str(n), str(SESSIONS),
                str(Path(tmp) / "message.eml")]))
            started = time.time()
            run = measured("mailer send-now, SQLite", n, [*MAILER, "send-now", "ml-issues",
                                                          "--yes"], env=env, cwd=root)
            run.note = (f"first message after "
                        f"{first_message_delay(root / 'var' / 'mailer.db', started):.2f} s")
            runs.append(run)
            if args.fields:
                runs += field_runs(Path(tmp), port=port, subscribers=n, rounds=args.rounds)
            if not args.skip_postgres:
                runs += postgres_runs(Path(tmp), port=port, subscribers=n)
    finally:
        sink.terminate()
        sink.wait()
    report(runs)


def field_runs(tmp: Path, *, port: int, subscribers: int, rounds: int) -> list[Run]:
    """The plain issue and the one with three personal fields, to the same list (with a
    city each), `rounds` times each in the order ABBA…: a machine that slows down or
    speeds up during the run weighs on both alike."""
    runs = []
    for round_ in range(1, rounds + 1):
        for fields in ((False, True) if round_ % 2 else (True, False)):
            root = tmp / f"fields-{fields}-{round_}"
            env = make_project(root, port=port, database_url="sqlite:///var/mailer.db",
                               subscribers=subscribers, fields=fields, cities=True)
            label = "3 personal fields" if fields else "no fields"
            runs.append(measured(f"send-now, SQLite, {label} #{round_}", subscribers,
                                 [*MAILER, "send-now", "ml-issues", "--yes"], env=env, cwd=root))
    return runs


def postgres_runs(tmp: Path, *, port: int, subscribers: int) -> list[Run]:
    sys.path.insert(0, str(REPO))
    from tests import pg  # the test suite's throwaway server, from Debian's binaries

    if pg.missing_reason():
        print(f"skipping PostgreSQL: {pg.missing_reason()}")
        return []
    runs = []
    with pg.server() as admin:
        for workers in (1, 2):
            url = pg.create_database(admin, f"bench{workers}")
            root = tmp / f"pg{workers}"
            env = make_project(root, port=port, database_url=url, subscribers=subscribers)
            subprocess.run([*MAILER, "send-now", "ml-issues", "--queue"], env=env, cwd=root,
                           check=True, stdout=subprocess.DEVNULL)
            runs.append(measured_together(
                f"mailer worker x{workers}, PostgreSQL", subscribers,
                [[*MAILER, "worker", "--once"]] * workers, env, root))
    return runs


def own_peak_rss_mb() -> float:
    """Linux counts a child's peak RSS from before its exec(), when it was a copy of this
    process: no figure below is smaller than this one, so this script stays small."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def report(runs: list[Run]) -> None:
    print(f"{'':38} {'msgs/s':>8} {'wall s':>8} {'CPU s':>8} {'peak RSS MB':>12}")
    for run in runs:
        print(f"{run.name:38} {run.rate:8,.0f} {run.wall:8.1f} {run.cpu:8.1f} "
              f"{run.rss_mb:12.1f}  {run.note}")
    print(f"(no peak RSS reads below {own_peak_rss_mb():.1f} MB, this script's own: Linux "
          "counts a child's memory from before its exec)")
    by_name = {run.name: run for run in runs}
    bare, ours = by_name.get("bare aiosmtplib loop"), by_name.get("mailer send-now, SQLite")
    if bare and ours:
        print(f"\nmailer send-now / bare aiosmtplib loop: {ours.rate / bare.rate:.2f}")
    plain = [run.rate for run in runs if "no fields" in run.name]
    fields = [run.rate for run in runs if "personal fields" in run.name]
    if plain and fields:
        cost = 1 - (sum(fields) / len(fields)) / (sum(plain) / len(plain))
        print(f"three personal fields cost {cost:.1%} of the throughput "
              f"(mean of {len(fields)} runs each, alternating)")


if __name__ == "__main__":
    main()
