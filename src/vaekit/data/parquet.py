"""Parquet tables (through pyarrow, an optional dependency): integer and float columns are the features, a
label column the labels; nulls, NaN/inf and other column types are refused by file, column and row."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from vaekit.errors import DataError

if TYPE_CHECKING:
    import pyarrow
    import pyarrow.parquet

from vaekit.data.csvtable import _arrow_numbers
from vaekit.data.tabular import Table, _labels

_PARQUET_BATCH = 1 << 16  # rows per Parquet batch (pyarrow decodes a whole row group's columns regardless)


def read_parquet(path: Path, label_column: str | None) -> Table:
    pa, pq = _pyarrow_parquet(path)
    try:
        with pq.ParquetFile(path) as f:
            features, label_at = _parquet_layout(f.schema_arrow, path, label_column)
            return _parquet_rows(f, path, features, label_at)
    except DataError:
        raise
    except (pa.ArrowException, OSError, ValueError) as e:
        raise DataError(f"cannot read {path} as Parquet: {e}") from e


def _pyarrow_parquet(path: Path) -> tuple[ModuleType, ModuleType]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"reading {path} needs pyarrow, which is not installed: pip install 'vaekit[parquet]'") \
            from None
    return pa, pq


def _parquet_layout(schema: pyarrow.Schema, path: Path,
                    label_column: str | None) -> tuple[list[tuple[int, str]], int | None]:
    """The feature columns (position, name) and the label column's position; refuses columns that are not
    numbers. A pandas index stored as a column is not a feature."""
    import pyarrow as pa

    names, index = schema.names, _pandas_index_columns(schema)
    if label_column is not None and label_column not in names:
        raise DataError(f"{path} has no column {label_column!r}; its columns are {names}")
    label_at = None if label_column is None else names.index(label_column)
    features = [(j, name) for j, name in enumerate(names) if j != label_at and name not in index]
    for j, name in [*features, *([] if label_at is None else [(label_at, label_column)])]:
        kind = schema.field(j).type
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
            raise DataError(f"{path}, column {name!r} holds {kind} values; vaekit needs numeric columns "
                            "(integers or floating-point numbers)")
    return features, label_at


def _pandas_index_columns(schema: pyarrow.Schema) -> set[str]:
    try:
        meta = schema.pandas_metadata  # None unless pandas wrote the file
    except ValueError:  # metadata that is not JSON: no index to know of
        return set()
    index = meta.get("index_columns", []) if isinstance(meta, dict) else []
    return {c for c in index if isinstance(c, str)} if isinstance(index, list) else set()


def _parquet_rows(f: pyarrow.parquet.ParquetFile, path: Path, features: list[tuple[int, str]],
                  label_at: int | None) -> Table:
    """Batch by batch into one float32 array, whose row count the file's metadata gives."""
    promised = f.metadata.num_rows
    try:
        x = np.empty((promised, len(features)), np.float32)
    except (MemoryError, ValueError):
        raise DataError(f"{path}: its metadata promises {promised:,} rows of {len(features)} columns, more than "
                        "this machine can hold") from None
    labels, start, label = [], 0, None if label_at is None else f.schema_arrow.names[label_at]
    for batch in f.iter_batches(batch_size=_PARQUET_BATCH):
        end = start + batch.num_rows
        if end > promised:
            raise DataError(f"{path}: holds more rows than the {promised:,} its metadata promises")
        for i, (j, name) in enumerate(features):
            values = _parquet_values(batch.column(j), path, name, start)
            with np.errstate(over="ignore"):  # beyond float32: inf, which _check reports by position
                x[start:end, i] = values if values.dtype.kind == "f" else values.astype(np.float64)
        if label_at is not None:
            labels.append(_parquet_values(batch.column(label_at), path, label, start))
        start = end
    if start != promised:
        raise DataError(f"{path}: holds {start:,} rows, but its metadata promises {promised:,}")
    names = tuple(name for _, name in features)
    if label_at is None:
        return Table(x, None, names)
    y = np.concatenate(labels) if labels else np.empty(0)
    return Table(x, _labels(y, f"{path}, column {label!r}"), names)


def _parquet_values(column: pyarrow.Array, path: Path, name: str, start: int) -> np.ndarray:
    """A column of a batch as numbers; ``start`` is the batch's first row, for the messages."""
    if column.null_count:
        row = start + int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{path}, column {name!r}, row {row}: a missing value (null); vaekit needs a number in every "
                        "cell")
    values = _arrow_numbers(column)
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        row = int(np.flatnonzero(~np.isfinite(values))[0])
        raise DataError(f"{path}, column {name!r}, row {start + row}: {values[row]} is not a finite number")
    return values
