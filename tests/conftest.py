"""Shared fixtures: a project folder, the database (SQLite and PostgreSQL), a real SMTP server."""

from __future__ import annotations

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


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    reason = pg.missing_reason()
    if reason:
        if pg.REQUIRED:
            pytest.fail(f"MAILER_TEST_REQUIRE_POSTGRES=1 but {reason}")
        pytest.skip(reason)
    with pg.server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: a SQLite file, or a new database on the test PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/var/mailer.db"
        return
    admin: str = request.getfixturevalue("pg_admin_url")
    name = f"mailer_test_{uuid.uuid4().hex[:12]}"
    url = pg.create_database(admin, name)
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
        values = {"database_url": self.db_url, "smtp_url": smtp_url, "concurrency": 3,
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
    return lambda server: f"smtp://{server.host}:{server.port}?timeout=5"
