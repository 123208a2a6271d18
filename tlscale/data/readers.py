"""Read local tabular files into records that remember where they came from (file:line).

Text files are read as UTF-8 with an optional BOM (utf-8-sig): a BOM left in place turns the first column
into '\ufeffsentence', which prints exactly like 'sentence'."""
from __future__ import annotations

import csv
import itertools
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tlscale.errors import DataError
from tlscale.registry import Registry

READERS: Registry = Registry("data format")
SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json",
            ".parquet": "parquet", ".pq": "parquet"}


@dataclass(frozen=True)
class Record:
    values: dict[str, Any]
    where: str  # "file:line" or "file:row N"


@dataclass(frozen=True)
class Table:
    path: Path
    columns: list[str]
    records: list[Record]


class DuplicateKey(ValueError):
    """A JSON object that names one key twice (json keeps the last value silently)."""

    def __init__(self, key: str):
        self.key = key
        super().__init__(f"key '{key}' appears twice in one object")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise DuplicateKey(next(key for i, key in enumerate(keys) if key in keys[:i]))
    return dict(pairs)


def load_json(text: str) -> Any:
    """json.loads that refuses duplicate keys (DuplicateKey) instead of keeping the last."""
    return json.loads(text, object_pairs_hook=_unique_keys)


def kind_of(value: Any) -> str:
    """What a cell holds, in the words of the file formats, for 'expected text, found ...' messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _unique_columns(where: str, columns: list[str]) -> None:
    """A repeated column name: every row would silently keep only one of the two cells."""
    seen: set[str] = set()
    for column in columns:
        if column in seen:
            raise DataError(f"{where}: column '{column}' appears twice in the header; rename one of them")
        seen.add(column)


def detect_format(path: Path, declared: str = "auto") -> str:
    if declared != "auto":
        return declared
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise DataError(
            f"{path}: cannot tell the format from the suffix '{path.suffix}'; set data.format to one of "
            f"{', '.join(READERS.names())}"
        )
    return fmt


def read_table(path: str | Path, declared_format: str = "auto") -> Table:
    stream = stream_table(path, declared_format)
    records = list(stream.records)
    columns = dict.fromkeys(stream.columns)
    for record in records:  # JSON Lines: every key of every object, in order of first appearance
        columns.update(dict.fromkeys(record.values))
    return Table(stream.path, list(columns), records)


def existing_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found (cwd is {Path.cwd()})")
    if not path.is_file():
        raise DataError(f"{path}: expected a file, found a directory")
    return path


@dataclass(frozen=True)
class Stream:
    """A table read record by record, so a million-row file never sits in memory as Python objects.
    columns: the header (csv, tsv, parquet) or, for JSON Lines, the keys seen in the first object."""

    path: Path
    columns: list[str]
    records: Iterator[Record]


def stream_table(path: str | Path, declared_format: str = "auto") -> Stream:
    """Open a table for reading; errors come as DataError whether they show at the header or on row 900,000."""
    path = existing_file(path)
    fmt = detect_format(path, declared_format)
    with _as_data_errors(path, fmt):
        if fmt in STREAMING:
            columns, records = STREAMING[fmt](path)
        else:  # a reader registered without a streaming variant returns the whole table
            table = READERS.get(fmt)(path)
            columns, records = table.columns, iter(table.records)
    return Stream(path, columns, _checked(records, path, fmt))


@contextmanager
def _as_data_errors(path: Path, fmt: str):
    try:
        yield
    except DataError:
        raise
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); is it really {fmt}?") from None
    except (OSError, ValueError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read as {fmt}: {exc}") from None


def _checked(records: Iterator[Record], path: Path, fmt: str) -> Iterator[Record]:
    with _as_data_errors(path, fmt):
        yield from records


def _delimited(path: Path, delimiter: str, quoting: int) -> tuple[list[str], Iterator[Record]]:
    handle = path.open(newline="", encoding="utf-8-sig")
    reader = csv.reader(handle, delimiter=delimiter, quoting=quoting)
    limit = csv.field_size_limit(sys.maxsize)  # long documents (QA contexts) exceed the 128 KiB default
    try:
        header = next(reader, None)
        if not header:
            raise DataError(f"{path}:1: empty file, expected a header row")
        header = [h.strip() for h in header]
        _unique_columns(f"{path}:1", header)
    except BaseException:
        handle.close()
        raise
    finally:
        csv.field_size_limit(limit)  # the process's setting is not ours to keep
    return header, _delimited_rows(handle, reader, header, path, delimiter)


def _delimited_rows(handle, reader, header: list[str], path: Path, delimiter: str) -> Iterator[Record]:
    with handle:
        line = reader.line_num
        limit = csv.field_size_limit(sys.maxsize)
        try:
            for row in reader:
                start, line = line + 1, reader.line_num
                if not row or row == [""]:
                    continue
                if len(row) != len(header):
                    raise DataError(
                        f"{path}:{start}: expected {len(header)} fields ({delimiter!r}-separated: "
                        f"{', '.join(header)}), found {len(row)}"
                    )
                yield Record(dict(zip(header, row)), f"{path}:{start}")
        finally:
            csv.field_size_limit(limit)


def _jsonl(path: Path) -> tuple[list[str], Iterator[Record]]:
    records = _jsonl_rows(path)
    first = next(records, None)
    if first is None:
        return [], iter(())
    return list(first.values), itertools.chain([first], records)


def _jsonl_rows(path: Path) -> Iterator[Record]:
    with path.open(encoding="utf-8-sig") as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                value = load_json(text)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}: invalid JSON ({exc.msg} at column {exc.colno})") from None
            except DuplicateKey as exc:
                raise DataError(f"{path}:{number}: {exc}") from None
            if not isinstance(value, dict):
                raise DataError(f"{path}:{number}: expected a JSON object per line, found {type(value).__name__}")
            yield Record(value, f"{path}:{number}")


def _parquet(path: Path) -> tuple[list[str], Iterator[Record]]:
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
        _unique_columns(str(path), names)
        batches = pq.ParquetFile(path).iter_batches(batch_size=10_000)
    except DataError:
        raise
    except Exception as exc:  # pyarrow raises its own hierarchy  # noqa: BLE001
        raise DataError(f"{path}: cannot read as parquet: {exc}") from None
    return names, _parquet_rows(path, batches)


def _parquet_rows(path: Path, batches) -> Iterator[Record]:
    number = 0
    try:
        for batch in batches:
            for row in batch.to_pylist():
                yield Record(row, f"{path}: row {number}")
                number += 1
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{path}: cannot read as parquet: {exc}") from None


@READERS.register("csv")
def read_csv(path: Path) -> Table:
    return read_table(path, "csv")


@READERS.register("tsv")
def read_tsv(path: Path) -> Table:
    """GLUE-style TSV: no quoting, quotes are part of the text."""
    return read_table(path, "tsv")


@READERS.register("jsonl")
def read_jsonl(path: Path) -> Table:
    return read_table(path, "jsonl")


@READERS.register("json")
def read_json(path: Path) -> Table:
    """A list of objects, or {"data": [...]} as many exports write it."""
    try:
        value = load_json(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    except DuplicateKey as exc:
        raise DataError(f"{path}: {exc}") from None
    if isinstance(value, dict) and isinstance(value.get("data"), list):
        value = value["data"]
    if not isinstance(value, list):
        raise DataError(f"{path}: expected a JSON list of records (or {{\"data\": [...]}}), found {type(value).__name__}")
    records, columns = [], {}
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise DataError(f"{path}: record {i}: expected an object, found {type(item).__name__}")
        columns.update(dict.fromkeys(item))
        records.append(Record(item, f"{path}: record {i}"))
    return Table(path, list(columns), records)


@READERS.register("parquet")
def read_parquet(path: Path) -> Table:
    return read_table(path, "parquet")


# The built-in formats read row by row (registered readers without an entry here are read whole).
STREAMING = {"csv": lambda path: _delimited(path, ",", csv.QUOTE_MINIMAL),
             "tsv": lambda path: _delimited(path, "\t", csv.QUOTE_NONE),
             "jsonl": _jsonl, "parquet": _parquet}
