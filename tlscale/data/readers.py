"""Read local tabular files into records that remember where they came from (file:line).

Text files are read as UTF-8 with an optional BOM (utf-8-sig): a BOM left in place turns the first column
into '\ufeffsentence', which prints exactly like 'sentence'."""
from __future__ import annotations

import csv
import json
import sys
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
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found (cwd is {Path.cwd()})")
    if not path.is_file():
        raise DataError(f"{path}: expected a file, found a directory")
    fmt = detect_format(path, declared_format)
    try:
        return READERS.get(fmt)(path)
    except DataError:
        raise
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); is it really {fmt}?") from None
    except (OSError, ValueError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read as {fmt}: {exc}") from None


def _delimited(path: Path, delimiter: str, quoting: int) -> Table:
    limit = csv.field_size_limit(sys.maxsize)  # long documents (QA contexts) exceed the 128 KiB default
    try:
        return _read_delimited(path, delimiter, quoting)
    finally:
        csv.field_size_limit(limit)  # the process's setting is not ours to keep


def _read_delimited(path: Path, delimiter: str, quoting: int) -> Table:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle, delimiter=delimiter, quoting=quoting)
        header = next(reader, None)
        if not header:
            raise DataError(f"{path}:1: empty file, expected a header row")
        header = [h.strip() for h in header]
        _unique_columns(f"{path}:1", header)
        records = []
        line = reader.line_num
        for row in reader:
            start, line = line + 1, reader.line_num
            if not row or row == [""]:
                continue
            if len(row) != len(header):
                raise DataError(
                    f"{path}:{start}: expected {len(header)} fields ({delimiter!r}-separated: "
                    f"{', '.join(header)}), found {len(row)}"
                )
            records.append(Record(dict(zip(header, row)), f"{path}:{start}"))
    return Table(path, header, records)


@READERS.register("csv")
def read_csv(path: Path) -> Table:
    return _delimited(path, ",", csv.QUOTE_MINIMAL)


@READERS.register("tsv")
def read_tsv(path: Path) -> Table:
    """GLUE-style TSV: no quoting, quotes are part of the text."""
    return _delimited(path, "\t", csv.QUOTE_NONE)


@READERS.register("jsonl")
def read_jsonl(path: Path) -> Table:
    records, columns = [], {}
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
            columns.update(dict.fromkeys(value))
            records.append(Record(value, f"{path}:{number}"))
    return Table(path, list(columns), records)


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
    import pyarrow.parquet as pq

    try:
        _unique_columns(str(path), pq.read_schema(path).names)
        table = pq.read_table(path)
    except DataError:
        raise
    except Exception as exc:  # pyarrow raises its own hierarchy  # noqa: BLE001
        raise DataError(f"{path}: cannot read as parquet: {exc}") from None
    rows = table.to_pylist()
    return Table(path, table.column_names, [Record(r, f"{path}: row {i}") for i, r in enumerate(rows)])
