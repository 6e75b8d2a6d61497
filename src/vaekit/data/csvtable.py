"""CSV tables: numeric columns under a header row, an optional label column.

Read in blocks by a C parser (pyarrow's when installed, numpy's otherwise) and checked against the csv module's
rules; a block with a bad cell is read again cell by cell by the exact reader, which names the line and column.
Both give the same values bit for bit: every accepted number is converted correctly rounded to float64, then to
float32.
"""

from __future__ import annotations

import csv
import io
import math
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from vaekit.errors import DataError

if TYPE_CHECKING:
    import pyarrow
    import pyarrow.parquet

from vaekit.data.tabular import Table, _labels

# CSV text per bulk parse, about 28,000 rows of 30 numbers: big enough that each call's overhead vanishes, small
# enough that a block's text and float64 values stay a small share of the table's memory (8 and 16 MiB read a
# million rows equally fast, 32 MiB a third slower)
_BLOCK_BYTES = 16 << 20
_ARROW_BLOCK = 2 << 20  # pyarrow's own unit of work, one thread each: 8 per block


def read_csv(path: Path, label_column: str | None) -> Table:
    # The bulk reader answers whenever it can vouch for the answer; the exact reader is the reference for every
    # result and message, and reads whatever the bulk reader cannot vouch for.
    try:
        return _read_csv_bulk(path, label_column)
    except (_Undecided, OSError):
        return _read_csv_exact(path, label_column)


class _Undecided(Exception):
    """The bulk CSV reader cannot vouch for this file: the exact reader reads it."""


def _read_csv_exact(path: Path, label_column: str | None) -> Table:
    """The reference: the csv module, then ``float`` cell by cell. Slow (seconds per 100,000 rows)."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read {path} as CSV: {e}") from e
    header = _check_header(rows[0] if rows else None, path, label_column)
    table = _Rows(header, label_column, len(rows) - 1)
    table.add(_parse_rows(rows[1:], path, header, 2))
    return table.table(path)


def _read_csv_bulk(path: Path, label_column: str | None) -> Table:
    """The exact reader's table or error, block by block at the speed of a C parser; raises _Undecided where
    the file holds something on which the bulk parsers and the csv module could disagree.

    A block the bulk parser refuses, or whose values are not all finite, is read again by the exact reader, which
    names the bad cell's line and column. That error is raised only once the rest of the file is known to hold
    nothing the exact reader would have refused first (it reads the whole file before looking at any cell).
    """
    parse, table, line = _bulk_parser(), None, 2
    with path.open("rb") as f:
        try:
            header, pending = _check_header(_first_row(f.readline()), path, label_column), None
        except DataError as e:
            header, pending = [], e
        size = os.fstat(f.fileno()).st_size
        for block in _blocks(f):
            if _undecidable(block):
                raise _Undecided
            if pending is not None:
                continue  # from here on, only looking for what the exact reader would have refused first
            try:
                values = _parse_block(block, (path, header, line), parse)
            except DataError as e:
                pending = e
                continue
            if table is None:  # room for the whole table, from the first block's bytes per row and a margin
                table = _Rows(header, label_column, len(values) + math.ceil(
                    1.25 * len(values) * (size - f.tell()) / len(block)))
            table.add(values)
            line += len(values)
    if pending is not None:
        raise pending
    return (table or _Rows(header, label_column, 0)).table(path)


def _first_row(raw: bytes) -> list[str] | None:
    """The header's cells, when the first line holds exactly the first record (None in an empty file)."""
    try:
        rows = list(csv.reader(io.StringIO(raw.decode("utf-8"), newline=""), strict=True))
    except (UnicodeDecodeError, csv.Error):  # strict: a quoted field that goes on past this line is refused
        raise _Undecided from None
    if len(rows) > 1:  # a lone \r ends a record for the csv module
        raise _Undecided
    return rows[0] if rows else None


def _blocks(f: BinaryIO) -> Iterator[bytes]:
    """The rest of ``f`` in blocks of whole lines, about _BLOCK_BYTES each."""
    while block := f.read(_BLOCK_BYTES):
        yield block + f.readline()


def _undecidable(block: bytes) -> bool:
    """Quotes, NUL bytes, a carriage return that does not end a CRLF line, bytes that are not UTF-8 or a field
    beyond the csv module's size limit: where the exact reader's records or errors could differ from the bulk
    parsers'."""
    if b'"' in block or b"\x00" in block or (b"\r" in block and block.count(b"\r") != block.count(b"\r\n")):
        return True
    if not block.isascii():
        try:
            block.decode("utf-8")
        except UnicodeDecodeError:
            return True
    return _may_hold_long_field(block, csv.field_size_limit())


def _may_hold_long_field(block: bytes, limit: int) -> bool:
    # A field of `limit` bytes covers an aligned window of limit // 2 bytes whole, and a table of numbers has a
    # comma or a line end in every such window: a few short searches per window, not a pass over every field.
    step = max(limit // 2, 1)
    for start in range(0, len(block) - step + 1, step):
        if block.find(b",", start, start + step) < 0 and block.find(b"\n", start, start + step) < 0:
            return True
    return False


def _parse_block(block: bytes, where: tuple[Path, list[str], int],
                 parse: Callable[[bytes, int], np.ndarray | None]) -> np.ndarray:
    """A block's float64 values, one row per line: bulk-parsed, or by the exact reader where that fails or finds
    values that are not finite. ``where``: the file, its header and the block's first line number."""
    path, header, line = where
    values = parse(block, len(header)) if block.isascii() else None  # float() also takes non-ASCII digits
    if values is None or values.shape[1] != len(header) or not np.isfinite(values).all():
        return _parse_rows(list(csv.reader(io.StringIO(block.decode("utf-8"), newline=""))), path, header, line)
    return values


def _bulk_parser() -> Callable[[bytes, int], np.ndarray | None]:
    """pyarrow's CSV reader when pyarrow is installed (several times faster), numpy's otherwise. Either returns
    a block's values with one row per line, or None where it refuses a cell or a line."""
    try:
        import pyarrow.csv  # noqa: F401
    except ImportError:
        return _bulk_numpy
    return _bulk_arrow


def _bulk_numpy(block: bytes, width: int) -> np.ndarray | None:
    """numpy's C reader: its numbers go through Python's own string-to-double conversion (so values equal
    ``float``'s), and it accepts a subset of what ``float`` does (no ``1_000``). It skips blank lines, which
    the csv module reports: the row count tells."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "input contained no data"
            values = np.loadtxt(io.BytesIO(block), dtype=np.float64, delimiter=",", comments=None, ndmin=2,
                                encoding="ascii")
    except ValueError:
        return None
    return values if len(values) == block.count(b"\n") + (not block.endswith(b"\n")) else None


def _bulk_arrow(block: bytes, width: int) -> np.ndarray | None:
    """pyarrow's reader with nothing special (no quotes, no null words, blank lines kept, so refused as empty
    cells): it converts numbers correctly rounded, as ``float`` does, and accepts a subset of what ``float``
    does."""
    import pyarrow as pa
    from pyarrow import csv as pacsv

    names = [str(j) for j in range(width)]
    # A copy in pyarrow's own memory: its threaded reader may drop its last reference to the input on a worker
    # thread after returning; were that a Python object, freeing it would need the GIL, and a process exiting just
    # then aborts ("terminate called without an active exception"). The copy costs a few ms per block.
    text = pa.allocate_buffer(len(block))
    pa.FixedSizeBufferWriter(text).write(block)
    try:
        table = pacsv.read_csv(
            pa.BufferReader(text), read_options=pacsv.ReadOptions(column_names=names, block_size=_ARROW_BLOCK),
            parse_options=pacsv.ParseOptions(quote_char=False, ignore_empty_lines=False),
            convert_options=pacsv.ConvertOptions(column_types=dict.fromkeys(names, pa.float64()), null_values=[],
                                                 strings_can_be_null=False, quoted_strings_can_be_null=False))
    except (pa.ArrowException, ValueError):
        return None
    if table.num_columns != width or any(c.null_count for c in table.columns):
        return None
    values = np.empty((width, table.num_rows))  # column by column into contiguous rows: strided writes are slow
    for j, column in enumerate(table.columns):
        start = 0
        for chunk in column.chunks:
            values[j, start:start + len(chunk)] = _arrow_numbers(chunk)
            start += len(chunk)
    return values.T


def _arrow_numbers(array: pyarrow.Array) -> np.ndarray:
    """A numeric Arrow array without nulls as a numpy view of its values buffer. (``Array.to_numpy`` imports
    pandas where it is installed: a quarter of a second and 50 MB on the first read.)"""
    import pyarrow as pa

    kind = "f" if pa.types.is_floating(array.type) else "i" if pa.types.is_signed_integer(array.type) else "u"
    dtype = np.dtype(f"{kind}{array.type.bit_width // 8}")
    if len(array) == 0:
        return np.empty(0, dtype)
    return np.frombuffer(array.buffers()[1], dtype, len(array), array.offset * dtype.itemsize)


def _check_header(row: list[str] | None, path: Path, label_column: str | None) -> list[str]:
    if not row or not any(row):
        raise DataError(f"{path} is empty: expected a header row and at least one data row")
    header = [h.strip() for h in row]
    if label_column is not None and label_column not in header:
        raise DataError(f"{path} has no column {label_column!r}; its columns are {header}")
    return header


def _parse_rows(rows: list[list[str]], path: Path, header: list[str], first_line: int) -> np.ndarray:
    """Cells as float64 (rows, columns), cell by cell; ``first_line`` is the line number of ``rows[0]``."""
    values = np.empty((len(rows), len(header)), dtype=np.float64)
    for i, row in enumerate(rows, start=first_line):
        if len(row) != len(header):
            raise DataError(f"{path}, line {i}: {len(row)} fields, but the header has {len(header)}")
        for j, cell in enumerate(row):
            values[i - first_line, j] = _number(cell, path, i, header[j])
    return values


class _Rows:
    """A table's features (float32) and labels (float64) filled block by block into arrays sized from an estimate
    of its row count, so that no float64 copy of the whole table exists and no final concatenation copies it:
    rows past the last one are never written, so their pages never become resident."""

    def __init__(self, header: list[str], label_column: str | None, capacity: int) -> None:
        self.label_at = None if label_column is None else header.index(label_column)
        self.name = label_column
        self.columns = tuple(h for j, h in enumerate(header) if j != self.label_at)
        self.x = np.empty((capacity, len(self.columns)), np.float32)
        self.y = np.empty(capacity if self.label_at is not None else 0)
        self.n = 0

    def add(self, values: np.ndarray) -> None:
        """Append float64 rows (rows, columns of the header)."""
        end, at = self.n + len(values), self.label_at
        if end > len(self.x):
            self._grow(end)
        with np.errstate(over="ignore"):  # values beyond float32 become inf, which _check reports by position
            if at is None:
                self.x[self.n:end] = values
            else:
                self.x[self.n:end, :at], self.x[self.n:end, at:] = values[:, :at], values[:, at + 1:]
                self.y[self.n:end] = values[:, at]
        self.n = end

    def _grow(self, rows: int) -> None:
        capacity = max(rows, len(self.x) * 3 // 2)
        x, self.x = self.x, np.empty((capacity, self.x.shape[1]), np.float32)
        self.x[:self.n] = x[:self.n]
        if self.label_at is not None:
            y, self.y = self.y, np.empty(capacity)
            self.y[:self.n] = y[:self.n]

    def table(self, path: Path) -> Table:
        y = None if self.label_at is None else _labels(self.y[:self.n], f"{path}, column {self.name!r}")
        return Table(self.x[:self.n], y, self.columns)


def _number(cell: str, path: Path, line: int, column: str) -> float:
    try:
        value = float(cell)
    except ValueError:
        what = "an empty cell" if not cell.strip() else f"non-numeric value {cell.strip()!r}"
        raise DataError(f"{path}, line {line}, column {column!r}: {what}; vaekit needs numeric columns") from None
    if not math.isfinite(value):
        raise DataError(f"{path}, line {line}, column {column!r}: {cell.strip()} is not a finite number")
    return value
