"""Subscriber attributes: migration 0008, CSV import and export, `subscribers add --attr`, what a
claim hands the sender, and the count of readers a field without a default would miss."""

from __future__ import annotations

import csv
import io
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config as AlembicConfig
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from mailer.errors import SubscriberError
from mailer.rows import ImportRow
from mailer.states import utcnow
from mailer.store import Store, db
from mailer.subscriptions import csvcells, read_import
from mailer.subscriptions.attributes import as_columns, clean_value, parse_options
from tests import pg
from tests.conftest import Project
from tests.test_cli import error_lines
from tests.tools import run_cli

ENV: dict[str, str | None] = {"MAILER_SECRET_KEY": "attr-test-key", "COLUMNS": "200",
                              "MAILER_CONFIG": None}


def run(project: Project, *args: str) -> str:
    result = run_cli("--config", str(project.config_path), *args, cwd=project.root, env=ENV)
    assert result.returncode == 0, result.stderr
    return result.stdout


# -- the migration ---------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no schema at all, to migrate step by step."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/empty.db"
        return
    admin: str = request.getfixturevalue("pg_admin_url")
    name = f"mailer_mig_{uuid.uuid4().hex[:12]}"
    url = pg.create_database(admin, name)
    try:
        yield url
    finally:
        pg.drop_database(admin, name)


def _to(revision: str, direction: str = "upgrade") -> Callable[[Connection], None]:
    """Run alembic to `revision` on a connection, as db.migrate does to the newest."""
    def go(connection: Connection) -> None:
        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(db.MIGRATIONS))
        cfg.attributes["connection"] = connection
        getattr(command, direction)(cfg, revision)
    return go


def _columns(connection: Connection) -> list[str]:
    return [column["name"] for column in inspect(connection).get_columns("subscribers")]


async def test_migration_0008_gives_every_existing_subscriber_no_attributes_and_goes_back(
    empty_db_url: str,
) -> None:
    engine = db.create_engine(empty_db_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_to("0007"))
            await conn.execute(text(
                "INSERT INTO subscribers (email, name, created_at) "
                "VALUES ('old@example.com', 'Old', CURRENT_TIMESTAMP)"))
        async with engine.begin() as conn:
            await conn.run_sync(_to("0008"))
        async with Store.open(empty_db_url) as store:  # on to the newest, as mailer does
            rows = [row async for row in store.subscribers(newsletter="none")]
            assert rows == []
            await store.add_subscriber("old@example.com", newsletter="ml-issues",
                                       confirmed=True, attributes={"city": "Oslo"})
            (row,) = [row async for row in store.subscribers(newsletter="ml-issues")]
            assert row.name == "Old" and row.attributes == {"city": "Oslo"}
        async with engine.begin() as conn:
            await conn.run_sync(_to("0007", "downgrade"))
            assert "attributes" not in await conn.run_sync(_columns)
            await conn.run_sync(_to("0008"))
            (attributes,) = (await conn.execute(text(
                "SELECT attributes FROM subscribers"))).one()
            assert attributes in ({}, "{}")
    finally:
        await engine.dispose()


# -- the store ---------------------------------------------------------------------------------


async def test_claims_carry_each_subscribers_attributes(store: Store) -> None:
    await store.import_subscribers([
        ImportRow("a@example.com", "A", {"city": "Oslo", "plan": "pro"}),
        ImportRow("b@example.com", "", {}),
    ], newsletter="ml-issues", confirmed=True)
    send, _ = await store.open_send(newsletter="ml-issues", slug="one", subject="One",
                                    preheader="", html="<p>1</p>", text="1",
                                    web_url="https://example.com/one")
    claimed = await store.claim_deliveries(send.id, worker_id="w", limit=10, now=utcnow())
    assert {r.email: dict(r.attributes) for r in claimed} == {
        "a@example.com": {"city": "Oslo", "plan": "pro"}, "b@example.com": {}}


async def test_an_import_or_add_fills_attributes_an_address_lacks_and_changes_none(
    store: Store,
) -> None:
    await store.import_subscribers([ImportRow("a@example.com", "A", {"city": "Oslo"})],
                                   newsletter="ml-issues", confirmed=True)
    await store.import_subscribers(
        [ImportRow("a@example.com", "A", {"city": "Bergen", "plan": "pro"})],
        newsletter="ml-issues", confirmed=True)
    await store.add_subscriber("a@example.com", newsletter="other", confirmed=True,
                               attributes={"city": "Rome", "team": "blue"})
    (row,) = [row async for row in store.subscribers(newsletter="ml-issues")]
    assert row.attributes == {"city": "Oslo", "plan": "pro", "team": "blue"}
    assert await store.attribute_keys(newsletter="ml-issues") == ["city", "plan", "team"]


async def test_lacking_counts_confirmed_readers_without_a_name_or_an_attribute_in_sql(
    store: Store,
) -> None:
    await store.import_subscribers([
        ImportRow("a@example.com", "Ann", {"city": "Oslo"}),
        ImportRow("b@example.com", "", {"city": "Rome"}),
        ImportRow("c@example.com", "", {}),
        ImportRow("d@example.com", "Dee", {"plan": "x"}),
    ], newsletter="ml-issues", confirmed=True)
    await store.add_subscriber("pending@example.com", newsletter="ml-issues")  # not counted
    await store.add_subscriber("e@example.com", newsletter="other", confirmed=True)
    assert await store.lacking("ml-issues", name=True) == 2
    assert await store.lacking("ml-issues", key="city") == 2
    assert await store.lacking("ml-issues", key="plan") == 3
    assert await store.lacking("ml-issues", key="nobody_has_it") == 4
    assert await store.lacking("ml-issues") == 0


# -- CSV: import, export, and import of an export ----------------------------------------------


def _import_text(body: str, *, confirmed: bool = True) -> list[ImportRow]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "people.csv"
        path.write_text(body, encoding="utf-8")
        return read_import(path, confirmed=confirmed)


def test_every_column_after_email_and_name_is_an_attribute_named_by_the_header() -> None:
    rows = _import_text("email,name,city,plan\na@example.com,Ann,Oslo,pro\n"
                        "b@example.com,,,\nc@example.com,Cy,Rome\n")
    assert rows == [ImportRow("a@example.com", "Ann", {"city": "Oslo", "plan": "pro"}),
                    ImportRow("b@example.com", "", {}),
                    ImportRow("c@example.com", "Cy", {"city": "Rome"})]


@pytest.mark.parametrize(("body", "message"), [
    ("email,name,City\na@example.com,A,Oslo\n", r":1: header: attribute 'City': a key is"),
    ("email,name,city,city\na@example.com,A,x,y\n", r":1: header: attribute column 'city' "
                                                     "appears twice"),
    ("email,name,my city\n", r":1: header: attribute 'my city'"),
    ("a@example.com,A,Oslo\n", r"line 1: expected email\[,name\], got 3 columns \(attribute "
                               "columns need a header"),
    ("email,name,city\na@example.com,A,Oslo,extra\n", r"line 2: expected email\[,name\],city"),
    ("email,name,city\na@example.com,A,\"Os\nlo\"\nb@example.com,B,\x07\n",
     r"2 bad row\(s\), nothing imported: line 2: attribute city: a value may not contain line "
     r"breaks; line 4: attribute city: a value may not contain U\+0007"),
])
def test_a_bad_header_or_attribute_is_reported_with_its_line_and_nothing_is_imported(
    body: str, message: str,
) -> None:
    with pytest.raises(SubscriberError, match=message):
        _import_text(body)


def _export(rows: list[ImportRow]) -> str:
    # Written as `subscribers export` writes them (cli/subscribers.py).
    keys = sorted({key for row in rows for key in row.attributes})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*csvcells.EXPORT_HEADER, *keys])
    for row in rows:
        writer.writerow(csvcells.escape_row(
            [row.email, row.name, "confirmed", "2026-12-07T09:00:00+00:00",
             "2026-12-07T09:00:00+00:00", *as_columns(row.attributes, keys)]))
    return out.getvalue()


def _accepted(value: str) -> bool:
    try:
        return clean_value(value, key="k") == value and value != ""
    except SubscriberError:
        return False


values = st.text(max_size=30).filter(_accepted)
keys = st.from_regex(r"[a-z0-9_]{1,8}", fullmatch=True)


@pytest.mark.slow
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["=cmd", "ann", "'+x", "-b", "c.d"]),
                          st.dictionaries(keys, values, max_size=4)),
                min_size=1, max_size=5, unique_by=lambda r: r[0]))
def test_importing_an_export_gives_back_every_attribute_formula_quotes_and_all(
    people: list[tuple[str, dict[str, str]]],
) -> None:
    rows = [ImportRow(f"{local}@example.com", "", attrs) for local, attrs in people]
    assert _import_text(_export(rows)) == rows


def test_attr_options_are_checked_and_empty_values_mean_none() -> None:
    assert parse_options(["city=Oslo", "plan= pro ", "empty=", "city=Bergen"]) == {
        "city": "Bergen", "plan": "pro"}
    for bad in (["city"], ["City=x"], ["a b=x"], ["note=a\nb"]):
        with pytest.raises(SubscriberError):
            parse_options(bad)


# -- through the CLI, on both databases ------------------------------------------------------


def test_add_attr_import_and_export_round_trip_through_the_cli(project: Project) -> None:
    project.configure()
    run(project, "subscribers", "add", "ada@example.com", "--list", "ml-issues", "--name",
        "Ada", "--attr", "city=London", "--attr", "plan=+pro", "--confirmed")
    people = project.root / "people.csv"
    people.write_text("email,name,city,team\ngrace@example.com,Grace,\"=1+2\",navy\n"
                      "alan@example.org,Alan,,\n", encoding="utf-8")
    run(project, "subscribers", "import", str(people), "--list", "ml-issues", "--confirmed")
    first = run(project, "subscribers", "export", "--list", "ml-issues")
    lines = first.splitlines()
    assert lines[0] == "email,name,status,created_at,confirmed_at,city,plan,team"
    assert lines[1].startswith("ada@example.com,Ada,confirmed,") and \
        lines[1].endswith(",London,'+pro,")
    assert lines[2].endswith(",'=1+2,,navy") and lines[3].endswith(",,,")
    # The export imports into another list as exactly what was stored.
    exported = project.root / "export.csv"
    exported.write_text(first, encoding="utf-8")
    project.config_path.write_text(project.config_path.read_text(encoding="utf-8").replace(
        "  ml-issues:", "  other:\n    name: Other\n    from: o@example.com\n"
        "    issues: content/ml-issues\n  ml-issues:"), encoding="utf-8")
    run(project, "subscribers", "import", str(exported), "--list", "other", "--confirmed")
    again = run(project, "subscribers", "export", "--list", "other")
    assert [line.split(",")[:2] + line.split(",")[5:] for line in again.splitlines()] == \
        [line.split(",")[:2] + line.split(",")[5:] for line in lines]


def test_a_bad_attr_option_exits_2_in_one_line_and_adds_no_one(project: Project) -> None:
    project.configure()
    result = run_cli("--config", str(project.config_path), "subscribers", "add",
                     "ada@example.com", "--list", "ml-issues", "--attr", "City=London",
                     "--confirmed", cwd=project.root, env=ENV)
    assert result.returncode == 2
    (line,) = error_lines(result)
    assert "--attr" in line and "[a-z0-9_]+" in line
    assert run(project, "subscribers", "export", "--list", "ml-issues").splitlines() == [
        "email,name,status,created_at,confirmed_at"]


def test_a_bad_header_exits_2_naming_line_1(project: Project) -> None:
    project.configure()
    people = project.root / "people.csv"
    people.write_text("email,name,Home Town\na@example.com,A,Oslo\n", encoding="utf-8")
    result = run_cli("--config", str(project.config_path), "subscribers", "import",
                     str(people), "--list", "ml-issues", cwd=project.root, env=ENV)
    assert result.returncode == 2
    (line,) = error_lines(result)
    assert f"{people}:1: header: attribute 'Home Town'" in line and "nothing imported" in line
