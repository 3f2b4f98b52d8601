"""`mailer send-now` and `mailer worker` load only what they use: every module imported is
memory the process keeps to its end (bench/send.py shows the peak RSS)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mailer.store import Store
from tests.conftest import Project
from tests.smtpd import ServerThread

# Runs the `mailer` command in this process, then writes every module it imported.
DUMP = """\
import atexit, sys
out = sys.argv.pop(1)
atexit.register(lambda: open(out, "w").write("\\n".join(sorted(sys.modules))))
from mailer.cli import main
main()
"""

# The web server, the daemon's scheduler, the migrations (the schema is current here) and
# the metrics: none is used to deliver.
NEVER = ("starlette", "uvicorn", "alembic", "apscheduler.schedulers", "prometheus_client")
# The renderer: a worker and a resumed send deliver what was rendered when the send opened.
RENDERER = ("mjml", "jinja2", "markdown_it", "nh3")


def imported(project: Project, tmp_path: Path, *args: str) -> set[str]:
    """Run `mailer --config … ARGS` in a fresh interpreter; the modules it imported."""
    dump = tmp_path / f"modules-{len(list(tmp_path.glob('modules-*')))}.txt"
    env = {**os.environ, "MAILER_SECRET_KEY": "imports-test-key"}
    done = subprocess.run([sys.executable, "-c", DUMP, str(dump), "--config",
                           str(project.config_path), *args], cwd=project.root, env=env,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    assert done.returncode == 0, done.stderr
    return set(dump.read_text().split())


def loaded(modules: set[str], packages: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == p or m.startswith(f"{p}.") for p in packages))


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_send_now_and_worker_import_no_web_scheduler_or_migrations(
    project: Project, store: Store, tmp_path: Path,
) -> None:
    await store.import_subscribers([(f"reader{i}@example.com", "") for i in range(3)],
                                   newsletter="ml-issues", confirmed=True)
    with ServerThread() as server:
        project.configure(smtp_url=f"smtp://127.0.0.1:{server.port}")
        send_now = imported(project, tmp_path, "send-now", "ml-issues", "--yes")
        assert len(server.messages) == 3
        assert loaded(send_now, NEVER) == []
        assert "mjml" in send_now  # it rendered the issue: the check sees what is imported

        # A queued send, delivered by `send-now --resume`, then one by a worker.
        for n, command in ((2, ("send-now", "ml-issues", "--resume", "--yes")),
                           (3, ("worker", "--once"))):
            project.write_issue(f"2026-12-2{n}-issue-{n}.md",
                                f'---\nsubject: "Issue {n}"\nstatus: ready\n---\nHello.\n')
            queued = imported(project, tmp_path, "send-now", "ml-issues", "--queue")
            assert "mjml" in queued
            delivering = imported(project, tmp_path, *command)
            assert len(server.messages) == 3 * n
            assert loaded(delivering, NEVER + RENDERER) == [], command


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_help_imports_no_database_or_config_models(project: Project, tmp_path: Path) -> None:
    project.configure()
    modules = imported(project, tmp_path, "--help")
    # (markdown_it is typer's: its help is rich Markdown.)
    assert loaded(modules, ("sqlalchemy", "pydantic", "aiosmtplib", "mjml", "jinja2", "nh3",
                            *NEVER)) == []
