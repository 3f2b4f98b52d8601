"""Subscriber import files: a CSV of `email[,name[,KEY…]]` or an export, checked row by row."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mailer.addresses import clean_name, normalize_email
from mailer.errors import SubscriberError
from mailer.rows import ImportRow
from mailer.subscriptions import csvcells
from mailer.subscriptions.attributes import check_key, clean_attributes

MAX_IMPORT_ERRORS_SHOWN = 20


def read_csv(path: Path, *, confirmed: bool = False) -> list[tuple[str, str]]:
    """The (email, name) of every row of an import file (see read_import).

    Raises:
        SubscriberError: as read_import.
    """
    return [(row.email, row.name) for row in read_import(path, confirmed=confirmed)]


def read_import(path: Path, *, confirmed: bool = False) -> list[ImportRow]:
    """Rows of an import file: columns `email[,name]` (a header is optional), each column
    after them an attribute named by the header (`email,name,city`; then the header is
    needed), or an export, whose columns after `confirmed_at` are attributes (its status is
    checked; its dates are the old list's). An empty cell is no attribute. Cells the export
    quoted against spreadsheet formulas (`'=…`) read back as exported. Read line by line:
    a row over csvcells.MAX_RECORD_CHARS stops it there.

    Raises:
        SubscriberError: naming every bad row by line number, a bad header (line 1), or
            the line where the file stops being CSV (or UTF-8); nothing is returned then.
    """
    rows: list[ImportRow] = []
    keys: list[str] = []
    problems: list[str] = []
    bad = 0
    seen: set[str] = set()
    exported = False
    try:
        with path.open("rb") as binary:
            for line, raw in csvcells.records(binary):
                cells = [csvcells.unescape_cell(cell) for cell in raw]
                if not cells or all(not c.strip() for c in cells):
                    continue
                if line == 1 and cells[0].strip().lower() in ("email", "e-mail", "address"):
                    columns = len(csvcells.EXPORT_HEADER)
                    exported = (tuple(c.strip().lower() for c in cells[:columns])
                                == csvcells.EXPORT_HEADER)
                    keys = _header_keys(cells[columns if exported else 2:], path)
                    continue
                try:
                    row = _import_row(cells, exported=exported, confirmed=confirmed, keys=keys)
                except SubscriberError as exc:
                    bad += 1
                    if len(problems) < MAX_IMPORT_ERRORS_SHOWN:
                        problems.append(f"line {line}: {exc.message}")
                    continue
                if row[0] not in seen:
                    seen.add(row[0])
                    rows.append(row)
    except OSError as exc:
        raise SubscriberError(f"cannot read: {exc}", file=str(path)) from None
    except csvcells.CsvProblem as exc:
        raise SubscriberError(f"{exc.message}; nothing imported", file=str(path),
                              line=exc.line) from None
    if problems:
        more = bad - len(problems)
        summary = "; ".join(problems) + (f"; and {more} more" if more else "")
        raise SubscriberError(f"{bad} bad row(s), nothing imported: {summary}", file=str(path))
    return rows


def _header_keys(cells: Sequence[str], path: Path) -> list[str]:
    # The attribute columns of the header: their names are the keys, checked before any row.
    keys = [cell.strip() for cell in cells]
    for key in keys:
        try:
            check_key(key)
        except SubscriberError as exc:
            raise SubscriberError(f"header: {exc.message}; nothing imported", file=str(path),
                                  line=1) from None
    twice = sorted({key for key in keys if keys.count(key) > 1})
    if twice:
        raise SubscriberError(f"header: attribute column {twice[0]!r} appears twice; nothing "
                              "imported", file=str(path), line=1)
    return keys


def _import_row(cells: list[str], *, exported: bool, confirmed: bool,
                keys: Sequence[str]) -> ImportRow:
    base = len(csvcells.EXPORT_HEADER) if exported else 2
    if len(cells) > base + len(keys):
        expected = ",".join(csvcells.EXPORT_HEADER) if exported else "email[,name]"
        if keys:
            expected += "," + ",".join(keys)
        raise SubscriberError(f"expected {expected}, got {len(cells)} columns"
                              + ("" if keys else " (attribute columns need a header row "
                                 "naming them: email,name,KEY…)"))
    status = cells[2].strip() if exported and len(cells) > 2 else ""
    # Taking in an export must not undo what its list recorded: whoever left, bounced or
    # complained stays out, and --confirmed does not confirm someone who never did.
    allowed = ("confirmed",) if confirmed else ("pending", "confirmed")
    if status and status not in allowed:
        raise SubscriberError(f"status {status!r}: an import with{'' if confirmed else 'out'} "
                              f"--confirmed takes only {' or '.join(allowed)} rows of an "
                              "export (export with --status confirmed)")
    # A row shorter than the header (a spreadsheet drops trailing empty cells) lacks those.
    attributes = clean_attributes(zip(keys, cells[base:], strict=False))
    return ImportRow(normalize_email(cells[0]), clean_name(cells[1] if len(cells) > 1 else ""),
                     attributes)
