"""How fast does `mailer` send? Side by side with Postfix's smtp-source and a bare aiosmtplib loop.

Usage: .venv/bin/python bench/send.py [--subscribers 100000] [--rtt-ms 0,10] [--no-pipelining]
                                      [--only send-now,worker1] [--skip-postgres] [--fields]

Contenders (--only picks some, in this order): `source` (Postfix's smtp-source: the
machine's limit), `aloop` (a bare aiosmtplib loop sending one pre-encoded message: the
Python ceiling), `send-now` (`mailer send-now` on SQLite), `joined` (the same, with one
`mailer worker --once` joining the send once its first message is out: do two processes
beat one here?), `worker1` and `worker2` (`mailer worker --once` ×1 and ×2 on PostgreSQL,
after `send-now --queue`). Each is one process (or
two) to its end, measured with wait4(): wall seconds, CPU seconds (user+system) and peak RSS.

Columns: msgs/s; `× source`, that rate over smtp-source's at the same round trip in the same
run (1.00 = as fast as Postfix's C client; compare these rather than msgs/s between runs
or machines); `first msg s`, for mailer, from the process start to the first message the
sink accepted (contenders.first_accepted says how it is read).

--rtt-ms N (a list: 0,10) sends through bench/latency.py's proxy, which adds N ms to every
round trip (N/2 each way), as a relay across a network would; every contender of that round
goes through the same proxy. 0 (the default) sends straight to smtp-sink. --no-pipelining
makes mailer send one command per round trip (`?pipelining=off` in its smtp_url).

--fields also sends an issue using three personal fields (name, email and a `city` attribute,
in the subject and the body) to the same list, alternating with the plain issue (--rounds
times each, 2 by default), at the first round trip given: the cost of splicing each
reader's values in. On a shared machine the spread between rounds can exceed the cost.

Needs the project's test extras (scripts/setup test) and Postfix's smtp-sink and smtp-source:
    apt-get install postfix    (choose "No configuration": no mail daemon starts)
PostgreSQL contenders need Debian's postgresql (tests/pg.py starts a throwaway server).
Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from contenders import (
    KEYS,
    Run,
    bare_loop,
    first_accepted,
    joined,
    measured,
    measured_together,
    smtp_source,
)
from project import MAILER, REPO, SESSIONS, copy_database, make_project, sample_message, smtp_url
from sink import SINK, SOURCE, delayed, sink

SQLITE = "sqlite:///var/mailer.db"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=100_000)
    parser.add_argument("--rtt-ms", default="0", type=lambda text: [
        float(part) for part in text.split(",")],
        help="round trips to add, in ms, comma-separated (0: straight to the sink)")
    parser.add_argument("--no-pipelining", action="store_true",
                        help="mailer sends one SMTP command per round trip")
    parser.add_argument("--only", default=",".join(KEYS), type=lambda text: text.split(","),
                        help=f"the contenders to run, of {','.join(KEYS)}")
    parser.add_argument("--skip-postgres", action="store_true",
                        help="leave out worker1 and worker2")
    parser.add_argument("--fields", action="store_true",
                        help="also send an issue with three personal fields, and compare")
    parser.add_argument("--rounds", type=int, default=2,
                        help="with --fields: how many times each issue is sent, alternating")
    args = parser.parse_args()
    unknown = set(args.only) - set(KEYS)
    if unknown:
        parser.error(f"--only: unknown {', '.join(sorted(unknown))} (of {', '.join(KEYS)})")
    if args.skip_postgres:
        args.only = [key for key in args.only if not key.startswith("worker")]
    return args


def main() -> None:
    args = parse_args()
    if not (SINK.exists() and SOURCE.exists()):
        sys.exit("bench/send.py needs Postfix's smtp-sink and smtp-source: "
                 "apt-get install postfix, and choose 'No configuration' so no mail daemon "
                 "starts")
    n, only = args.subscribers, args.only
    # As `pip install` does for an installed package: a checkout run with
    # PYTHONDONTWRITEBYTECODE (set on some CI machines) would otherwise compile every
    # module of mailer from source at each start, and pay for it in time and memory.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "mailer")],
                   check=True, stdout=subprocess.DEVNULL)
    runs: list[Run] = []
    with sink() as port, tempfile.TemporaryDirectory(prefix="mailer-bench-") as tmp_name:
        tmp = Path(tmp_name)
        base = tmp / "sqlite"
        env = make_project(base, port=port, database_url=SQLITE,
                           subscribers=n if {"send-now", "joined"} & set(only) else 0)
        message = tmp / "message.eml"
        message.write_bytes(sample_message(env, base))
        size = message.stat().st_size
        print(f"{n:,} messages of {size / 1024:.1f} KB to smtp-sink on 127.0.0.1:{port}, "
              f"{SESSIONS} connections, {os.cpu_count()} cores; round trips added: "
              f"{', '.join(f'{rtt:g} ms' for rtt in args.rtt_ms)}"
              f"{'; mailer without pipelining' if args.no_pipelining else ''}\n", flush=True)
        print(HEADER, flush=True)
        with postgres(tmp, port=port, subscribers=n,
                      wanted=any(key.startswith("worker") for key in only)) as pg_run:
            for rtt in args.rtt_ms:
                with delayed(port, rtt) as target:
                    url = smtp_url(target, pipelining=not args.no_pipelining)
                    here = []
                    if "source" in only:
                        here.append(measured("smtp-source (Postfix)", n, smtp_source(
                            target, messages=n, size=size, sessions=SESSIONS)))
                    if "aloop" in only:
                        here.append(measured("bare aiosmtplib loop", n, bare_loop(
                            target, messages=n, sessions=SESSIONS, message=message)))
                    if "send-now" in only:
                        root = tmp / f"send-now-{rtt:g}"
                        copy_database(base, root)
                        run = measured("mailer send-now, SQLite", n,
                                       [*MAILER, "send-now", "ml-issues", "--yes"],
                                       env=_env(env, root, url), cwd=root)
                        here.append(first_accepted(run, SQLITE, root))
                    if "joined" in only:
                        root = tmp / f"joined-{rtt:g}"
                        copy_database(base, root)
                        run = joined("send-now + worker joining, SQLite", n,
                                     [*MAILER, "send-now", "ml-issues", "--yes"],
                                     [*MAILER, "worker", "--once"], env=_env(env, root, url),
                                     cwd=root, database=root / "var" / "mailer.db")
                        here.append(first_accepted(run, SQLITE, root))
                    for workers in (1, 2):
                        if f"worker{workers}" in only and pg_run is not None:
                            here.append(pg_run(workers, rtt, url))
                    for run in here:
                        run.rtt_ms = rtt
                        print(_line(run, here), flush=True)
                    runs += here
        if args.fields:
            with delayed(port, args.rtt_ms[0]) as target:
                url = smtp_url(target, pipelining=not args.no_pipelining)
                for run in field_runs(tmp, port=port, url=url, subscribers=n,
                                      rounds=args.rounds):
                    run.rtt_ms = args.rtt_ms[0]
                    runs.append(run)
    print()
    report(runs)


def _env(env: dict[str, str], root: Path, url: str) -> dict[str, str]:
    # schedules.yaml of the copied project, and the route to the sink of this round.
    return {**env, "MAILER_CONFIG": str(root / "schedules.yaml"), "MAILER_SMTP_URL": url}


def field_runs(tmp: Path, *, port: int, url: str, subscribers: int, rounds: int) -> list[Run]:
    """The plain issue and the one with three personal fields, to the same list (with a
    city each), `rounds` times each in the order ABBA…: a machine that slows down or
    speeds up during the run weighs on both alike."""
    runs = []
    for round_ in range(1, rounds + 1):
        for fields in ((False, True) if round_ % 2 else (True, False)):
            root = tmp / f"fields-{fields}-{round_}"
            env = make_project(root, port=port, database_url=SQLITE,
                               subscribers=subscribers, fields=fields, cities=True)
            label = "3 personal fields" if fields else "no fields"
            run = measured(f"send-now, SQLite, {label} #{round_}", subscribers,
                           [*MAILER, "send-now", "ml-issues", "--yes"],
                           env=_env(env, root, url), cwd=root)
            runs.append(first_accepted(run, SQLITE, root))
    return runs


_PG = """\
import sys
sys.path.insert(0, sys.argv[1])
from tests import pg
pg.create_database(sys.argv[2], sys.argv[3], template=sys.argv[4] or None)
print(pg.database_url(sys.argv[2], sys.argv[3]))
"""


@contextlib.contextmanager
def postgres(tmp: Path, *, port: int, subscribers: int, wanted: bool) -> Iterator[
        PgRun | None]:
    """A throwaway PostgreSQL server with the list imported once (a template database);
    yields how to run the workers on a fresh copy of it, or None when not wanted or not
    possible here."""
    if not wanted:
        yield None
        return
    sys.path.insert(0, str(REPO))
    from tests import pg  # the test suite's throwaway server, from Debian's binaries

    if pg.missing_reason():
        print(f"skipping PostgreSQL: {pg.missing_reason()}")
        yield None
        return
    with pg.server() as admin:
        def create(name: str, template: str = "") -> str:
            # In a process of its own: asyncpg here would weigh on every later figure.
            return subprocess.run([sys.executable, "-c", _PG, str(REPO), admin, name, template],
                                  check=True, capture_output=True, text=True).stdout.strip()

        root = tmp / "pg"
        env = make_project(root, port=port, database_url=create("benchlist"),
                           subscribers=subscribers)
        yield PgRun(create, root, env, subscribers)


class PgRun:
    """`mailer worker --once` ×N on a fresh copy of the list, after `send-now --queue`."""

    def __init__(self, create: Callable[[str, str], str], root: Path, env: dict[str, str],
                 messages: int) -> None:
        self.create, self.root, self.env, self.messages = create, root, env, messages

    def __call__(self, workers: int, rtt: float, url: str) -> Run:
        database = self.create(f"bench_{workers}_{rtt:g}".replace(".", "_"), "benchlist")
        env = {**self.env, "MAILER_DATABASE_URL": database, "MAILER_SMTP_URL": url}
        subprocess.run([*MAILER, "send-now", "ml-issues", "--queue"], env=env, cwd=self.root,
                       check=True, stdout=subprocess.DEVNULL)
        run = measured_together(f"mailer worker x{workers}, PostgreSQL", self.messages,
                                [[*MAILER, "worker", "--once"]] * workers, env=env,
                                cwd=self.root)
        return first_accepted(run, database, self.root)


def own_peak_rss_mb() -> float:
    """Linux counts a child's peak RSS from before its exec(), when it was a copy of this
    process: no figure below is smaller than this one, so this script stays small."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


HEADER = (f"{'RTT ms':>6}  {'':38} {'msgs/s':>8} {'× source':>8} {'wall s':>7} {'CPU s':>7} "
          f"{'peak RSS MB':>11} {'first msg s':>11}")


def _line(run: Run, same_rtt: list[Run]) -> str:
    source = next((r for r in same_rtt if r.name.startswith("smtp-source")), None)
    ratio = f"{run.rate / source.rate:8.2f}" if source and source.rate else f"{'—':>8}"
    first = f"{run.first_s:11.2f}" if run.first_s is not None else f"{'—':>11}"
    return (f"{run.rtt_ms:6g}  {run.name:38} {run.rate:8,.0f} {ratio} {run.wall:7.1f} "
            f"{run.cpu:7.1f} {run.rss_mb:11.1f} {first}  {run.note}").rstrip()


def report(runs: list[Run]) -> None:
    print(HEADER)
    for run in runs:
        print(_line(run, [r for r in runs if r.rtt_ms == run.rtt_ms]))
    print(f"(no peak RSS reads below {own_peak_rss_mb():.1f} MB, this script's own: Linux "
          "counts a child's memory from before its exec)")
    for rtt in sorted({run.rtt_ms for run in runs}):
        by_name = {run.name: run for run in runs if run.rtt_ms == rtt}
        bare, ours = by_name.get("bare aiosmtplib loop"), by_name.get("mailer send-now, SQLite")
        if bare and ours:
            print(f"RTT {rtt:g} ms: mailer send-now / bare aiosmtplib loop: "
                  f"{ours.rate / bare.rate:.2f}")
    plain = [run.rate for run in runs if "no fields" in run.name]
    fields = [run.rate for run in runs if "personal fields" in run.name]
    if plain and fields:
        cost = 1 - (sum(fields) / len(fields)) / (sum(plain) / len(plain))
        print(f"three personal fields cost {cost:.1%} of the throughput "
              f"(mean of {len(fields)} runs each, alternating)")


if __name__ == "__main__":
    main()
