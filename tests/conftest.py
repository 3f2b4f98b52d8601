"""Shared fixtures: a project folder, the database (SQLite and PostgreSQL), a real SMTP server."""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mailer import config as config_mod
from mailer.config import Config
from mailer.store import Store
from tests import pg
from tests.smtpd import RecordingServer

REPO = Path(__file__).resolve().parents[1]
SAMPLE_ISSUES = REPO / "content" / "ml-issues"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist, start each worker's share with its part of the slow tests.

    scripts/test runs `--dist worksteal`, which hands worker k the k-th of equal contiguous
    shares and lets an idle worker steal from the end of another's: a slow test (marked
    `slow`: processes, real waits, Postfix) left at the end of a share runs alone while the
    others idle. Dealt round-robin to the front of each share, they overlap instead, and
    only quick tests are left to steal. Without xdist the order is unchanged.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers < 2:
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    quick = [item for item in items if not item.get_closest_marker("slow")]
    ordered: list[pytest.Item] = []
    left = len(items)
    for k in range(workers):
        share = left // (workers - k)  # as the scheduler splits them
        left -= share
        own = slow[k::workers]
        take = max(0, share - len(own))
        ordered += own + quick[:take]
        quick = quick[take:]
    items[:] = ordered + quick


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    reason = pg.missing_reason()
    if reason:
        if pg.REQUIRED:
            pytest.fail(f"MAILER_TEST_REQUIRE_POSTGRES=1 but {reason}")
        pytest.skip(reason)
    with pg.server() as url:
        yield url


def _migrate(database_url: str) -> None:
    """Bring a database to the newest migration the way mailer does: Store.open runs alembic."""
    async def go() -> None:
        store = await Store.open(database_url)
        await store.close()

    asyncio.run(go())


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A SQLite file migrated once per session (from the migrations as they are now): each
    test gets a copy, instead of running every migration again (~0.1 s each)."""
    path = tmp_path_factory.mktemp("template") / "mailer.db"
    _migrate(f"sqlite:///{path}")
    # The last connection closed checkpointed the WAL: the whole database is in the one file.
    assert not path.with_name(f"{path.name}-wal").exists()
    return path.read_bytes()


@pytest.fixture(scope="session")
def pg_template(pg_admin_url: str) -> Iterator[str]:
    """The name of a PostgreSQL database migrated once per session (from the migrations as
    they are now), which each test's database is created from (CREATE DATABASE … TEMPLATE)."""
    name = f"mailer_template_{uuid.uuid4().hex[:12]}"
    url = pg.create_database(pg_admin_url, name)
    try:
        _migrate(url)
        yield name
    finally:
        pg.drop_database(pg_admin_url, name)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database at the newest migration, with no rows: a SQLite file, or a new
    database on the test PostgreSQL. Both are copies of a template that mailer's own
    migrations built at the start of the session; mailer's open finds them current."""
    if request.param == "sqlite":
        template: bytes = request.getfixturevalue("sqlite_template")
        path = tmp_path / "var" / "mailer.db"
        path.parent.mkdir(mode=0o700)
        # 0600 in a 0700 folder, as mailer creates its database (db.create_engine).
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(template)
        yield f"sqlite:///{path}"
        return
    admin: str = request.getfixturevalue("pg_admin_url")
    pg_template: str = request.getfixturevalue("pg_template")
    name = f"mailer_test_{uuid.uuid4().hex[:12]}"
    url = pg.create_database(admin, name, template=pg_template)
    try:
        yield url
    finally:
        pg.drop_database(admin, name)


@dataclass
class Project:
    """A user's project folder: schedules.yaml, templates/, content/ml-issues/."""

    root: Path
    db_url: str

    @property
    def config_path(self) -> Path:
        return self.root / "schedules.yaml"

    @property
    def issues(self) -> Path:
        return self.root / "content" / "ml-issues"

    def configure(self, *, smtp_url: str = "capture", **settings: object) -> Config:
        """Write schedules.yaml for this project and load it."""
        # Every SMTP wait 50 times shorter than in use: the greeting 6 s, the reply to the
        # final dot 12 s, a down relay tried again after 0.04 s up to 0.6 s, and send-now
        # gives up on the relays after 0.6 s.
        values = {"database_url": self.db_url, "smtp_url": smtp_url, "concurrency": 3,
                  "smtp_timeout_scale": 0.02,
                  "postal_address": "'1 Test Street, Testville'", **settings}
        lines = [
            "settings:",
            *(f"  {key}: {value}" for key, value in values.items()),
            "newsletters:",
            "  ml-issues:",
            "    name: Machine Learning Issues",
            '    from: "Machine Learning Issues <newsletter@example.com>"',
            "    reply_to: editor@example.com",
            "    issues: content/ml-issues",
            "    schedule:",
            "      every: 2 weeks",
            "      starting: 2026-12-07 09:00",
            "      timezone: Europe/Berlin",
        ]
        self.config_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return config_mod.load(self.config_path, env={"MAILER_SECRET_KEY": "test-key"})

    def write_issue(self, name: str, text: str) -> Path:
        path = self.issues / name
        path.write_text(text, encoding="utf-8")
        return path


@pytest.fixture
def project(tmp_path: Path, db_url: str) -> Project:
    root = tmp_path / "project"
    (root / "content").mkdir(parents=True)
    shutil.copytree(SAMPLE_ISSUES, root / "content" / "ml-issues")
    shutil.copytree(REPO / "templates", root / "templates")
    return Project(root=root, db_url=db_url)


@pytest.fixture
async def store(project: Project) -> AsyncIterator[Store]:
    store = await Store.open(project.db_url)
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def smtpd() -> AsyncIterator[RecordingServer]:
    """A real aiosmtpd server on a loopback port, in the test's event loop, recording messages."""
    async with RecordingServer() as server:
        yield server


@pytest.fixture
def smtp_url_of() -> Callable[[RecordingServer], str]:
    return lambda server: f"smtp://{server.host}:{server.port}"
