"""Subscriber import files: a CSV of `email[,name]` or an export, checked row by row."""

from __future__ import annotations

from pathlib import Path

from mailer.addresses import clean_name, normalize_email
from mailer.errors import SubscriberError
from mailer.subscriptions import csvcells

MAX_IMPORT_ERRORS_SHOWN = 20


def read_csv(path: Path, *, confirmed: bool = False) -> list[tuple[str, str]]:
    """Rows (email, name) of an import file: columns `email[,name]` (a header is optional),
    or an export (its status is checked; its dates are the old list's). Cells the export
    quoted against spreadsheet formulas (`'=…`) read back as exported. Read line by line:
    a row over csvcells.MAX_RECORD_CHARS stops it there.

    Raises:
        SubscriberError: naming every bad row by line number, or the line where the file
            stops being CSV (or UTF-8); nothing is returned then.
    """
    rows: list[tuple[str, str]] = []
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
                    exported = tuple(c.strip().lower() for c in cells) == csvcells.EXPORT_HEADER
                    continue
                try:
                    row = _import_row(cells, exported=exported, confirmed=confirmed)
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


def _import_row(cells: list[str], *, exported: bool, confirmed: bool) -> tuple[str, str]:
    columns = len(csvcells.EXPORT_HEADER) if exported else 2
    if len(cells) > columns:
        expected = ",".join(csvcells.EXPORT_HEADER) if exported else "email[,name]"
        raise SubscriberError(f"expected {expected}, got {len(cells)} columns")
    status = cells[2].strip() if exported and len(cells) > 2 else ""
    # Taking in an export must not undo what its list recorded: whoever left, bounced or
    # complained stays out, and --confirmed does not confirm someone who never did.
    allowed = ("confirmed",) if confirmed else ("pending", "confirmed")
    if status and status not in allowed:
        raise SubscriberError(f"status {status!r}: an import with{'' if confirmed else 'out'} "
                              f"--confirmed takes only {' or '.join(allowed)} rows of an "
                              "export (export with --status confirmed)")
    return normalize_email(cells[0]), clean_name(cells[1] if len(cells) > 1 else "")
