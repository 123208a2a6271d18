"""A classification file read, checked and tokenized once, then kept on disk.

A million-row file takes minutes to tokenize and gigabytes as Python lists; every run and every process of a
launched or Ray run paid that again. Here the file is streamed in chunks (memory bounded by the chunk), each
chunk checked with the same messages as a small file and tokenized by the same call, and the result written as
flat numpy arrays under the tlscale cache. Later runs, and every rank, memory-map those arrays: nothing is read
into Python objects until a batch needs it. The cache key is the file's bytes, the columns, the tokenizer and
max_length, so a changed file or tokenizer never reuses stale tokens. Deleting the folder only costs time."""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import shutil
from array import array
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from tlscale.data.classification import ErrorCollector, Examples, check_columns, examples_from, read_examples
from tlscale.data.readers import STREAMING, Record, Table, detect_format, existing_file, stream_table
from tlscale.errors import DataError
from tlscale.files import cache_root

VERSION = 1
CHUNK_ROWS = 20_000
log = logging.getLogger("tlscale")


def cached_reader(tokenizer, max_length: int):
    """A reader for build_classification_data that goes through the store; the tokenizer's digest is taken
    once for both files."""
    digest: list[str] = []

    def read(path, spec):
        digest[:] = digest or [tokenizer_digest(tokenizer)]
        return cached_examples(path, spec, tokenizer, max_length, tokenizer_key=digest[0])

    return read


def cached_examples(path: Path, spec, tokenizer, max_length: int, need_label: bool = True,
                    tokenizer_key: str | None = None) -> Examples:
    """The file's examples, backed by the on-disk store (built first when missing). A format registered by a
    user is read directly: its rows' file:line labels may not follow the built-in readers' shape."""
    path = existing_file(path)
    if detect_format(path, spec.format) not in (*STREAMING, "json"):
        return read_examples(path, spec, need_label)
    key = cache_key(path, spec, tokenizer_key or tokenizer_digest(tokenizer), max_length, need_label)
    folder = cache_root() / "data" / key
    store = _open(folder, path)
    if store is None:
        rows = build_store(path, spec, tokenizer, max_length, need_label, folder)
        log.info("data: %s: %s rows read, checked and tokenized once; kept in %s", path, f"{rows:,}", folder)
        store = TokenStore(folder, path)
    else:
        log.info("data: %s: tokenized rows reused from %s", path, folder)
    return store.examples()


def _open(folder: Path, path: Path) -> TokenStore | None:
    """The store in folder, or None when there is none or it cannot be read (then it is built again)."""
    if not (folder / "meta.json").is_file():
        return None
    try:
        return TokenStore(folder, path)
    except (OSError, ValueError, KeyError) as exc:
        log.warning("data: the cached copy of %s in %s cannot be read (%s); building it again", path, folder, exc)
        shutil.rmtree(folder, ignore_errors=True)
        return None


def cache_key(path: Path, spec, tokenizer_key: str, max_length: int, need_label: bool) -> str:
    parts = {"version": VERSION, "file": file_digest(path), "format": detect_format(Path(path), spec.format),
             "text": spec.text_column, "pair": spec.text_pair_column, "label": spec.label_column if need_label else None,
             "tokenizer": tokenizer_key, "max_length": max_length}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tokenizer_digest(tokenizer) -> str:
    """The fast tokenizer's definition (vocabulary, normalizer, special tokens' post-processing), less the
    truncation and padding state that each call sets."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        definition = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("truncation", "padding")}
    else:
        definition = sorted(tokenizer.get_vocab().items())
    text = json.dumps(definition, sort_keys=True)
    return hashlib.sha256(f"{type(tokenizer).__name__}\n{text}".encode()).hexdigest()


def build_store(path: Path, spec, tokenizer, max_length: int, need_label: bool, folder: Path) -> int:
    """Stream, check and tokenize the file into folder (written aside, then renamed: never half a store)."""
    from tlscale.data.batching import tokenize_rows

    stream = stream_table(path, spec.format)
    first = list(itertools.islice(stream.records, CHUNK_ROWS))
    if not first:
        raise DataError(f"{path}: no data rows (the dataset is empty)")
    columns = dict.fromkeys(stream.columns)
    for record in first:
        columns.update(dict.fromkeys(record.values))
    check_columns(Table(Path(path), list(columns), first), spec, need_label)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        writer = StoreWriter(tmp, str(path), pairs=spec.text_pair_column is not None)
        errors = ErrorCollector()
        for chunk in itertools.chain([first], _chunks(stream.records)):
            examples = examples_from(chunk, spec, need_label, errors)
            if not errors.count:  # after a bad row the rest is still checked, but nothing more is kept
                writer.add(examples, *tokenize_rows(examples, tokenizer, max_length), need_label)
        errors.raise_if_any()
        rows = writer.finish({"max_length": max_length, "source": str(path)})
        try:
            os.rename(tmp, folder)
        except OSError:  # another process (a rank, a parallel run) published the same store first
            if not (folder / "meta.json").is_file():
                raise
        return rows
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _chunks(records: Iterator[Record]) -> Iterator[list[Record]]:
    while chunk := list(itertools.islice(records, CHUNK_ROWS)):
        yield chunk


class StoreWriter:
    """Appends chunks to flat files: token ids (int32), token type ids (int8), UTF-8 texts; per-row offsets,
    label codes and source line numbers stay in compact arrays until finish()."""

    def __init__(self, folder: Path, path: str, pairs: bool):
        self.folder, self.path = folder, path
        self.files = {name: open(folder / f"{name}.bin", "wb") for name in ("ids", "types", "texts", "pairs")}
        self.pairs = pairs
        self.token_ends, self.text_ends, self.pair_ends = array("q"), array("q"), array("q")
        self.truncated, self.codes, self.lines = array("b"), array("i"), array("q")
        self.label_codes: dict[str, int] = {}
        self.where_prefix: str | None = None
        self.has_types = None

    def add(self, examples: Examples, encoded: dict, long: list[int], need_label: bool) -> None:
        ids = encoded["input_ids"]
        self.files["ids"].write(np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32).tobytes())
        types = encoded.get("token_type_ids")
        self.has_types = types is not None
        if types is not None:
            self.files["types"].write(np.fromiter(itertools.chain.from_iterable(types), dtype=np.int8).tobytes())
        self.token_ends.extend(list(itertools.accumulate(map(len, ids), initial=self._end(self.token_ends)))[1:])
        flags = bytearray(len(ids))
        for i in long:
            flags[i] = 1
        self.truncated.frombytes(bytes(flags))
        self._texts(examples.texts, "texts", self.text_ends)
        if self.pairs:
            self._texts(examples.pairs, "pairs", self.pair_ends)
        if need_label:
            self.codes.extend(self.label_codes.setdefault(json.dumps(raw, default=str), len(self.label_codes))
                              for raw in examples.raw_labels)
        if self.where_prefix is None:
            self.where_prefix = examples.where[0].rstrip("0123456789")
        cut = len(self.where_prefix)
        self.lines.extend(int(where[cut:]) for where in examples.where)

    @staticmethod
    def _end(ends: array) -> int:
        return ends[-1] if ends else 0

    def _texts(self, texts: list[str], name: str, ends: array) -> None:
        encoded = [text.encode("utf-8") for text in texts]
        self.files[name].write(b"".join(encoded))
        ends.extend(list(itertools.accumulate(map(len, encoded), initial=self._end(ends)))[1:])

    def finish(self, meta: dict) -> int:
        for handle in self.files.values():
            handle.close()
        arrays = {"token_ends": self.token_ends, "text_ends": self.text_ends, "pair_ends": self.pair_ends,
                  "truncated": self.truncated, "label_codes": self.codes, "lines": self.lines}
        for name, values in arrays.items():
            np.save(self.folder / f"{name}.npy", np.frombuffer(values, dtype=values.typecode) if values else
                    np.zeros(0, dtype=values.typecode))
        rows = len(self.token_ends)
        labels = [json.loads(raw) for raw in self.label_codes]
        meta = {**meta, "version": VERSION, "rows": rows, "pairs": self.pairs, "token_types": bool(self.has_types),
                "labels": labels if self.codes else None,
                "where_prefix": self.where_prefix, "where_after_path": self.where_prefix[len(self.path):]
                if self.where_prefix.startswith(self.path) else None}
        (self.folder / "meta.json").write_text(json.dumps(meta))  # last: a folder with meta.json is complete
        return rows


class TokenStore:
    """A built store, memory-mapped: rows cost nothing until a batch reads them."""

    def __init__(self, folder: Path, path: Path):
        self.folder = folder
        self.meta = json.loads((folder / "meta.json").read_text())
        self.rows = self.meta["rows"]
        self.max_length = self.meta["max_length"]
        self.token_offsets = _offsets(folder / "token_ends.npy")
        self.ids = _flat(folder / "ids.bin", np.int32)
        self.types = _flat(folder / "types.bin", np.int8) if self.meta["token_types"] else None
        self.truncated = np.load(folder / "truncated.npy", mmap_mode="r")
        after = self.meta["where_after_path"]
        self.where_prefix = f"{path}{after}" if after is not None else self.meta["where_prefix"]

    def examples(self) -> Examples:
        folder, meta = self.folder, self.meta
        texts = TextColumn(_flat(folder / "texts.bin", np.uint8), _offsets(folder / "text_ends.npy"))
        pairs = TextColumn(_flat(folder / "pairs.bin", np.uint8), _offsets(folder / "pair_ends.npy")) \
            if meta["pairs"] else None
        labels = LabelColumn(meta["labels"], np.load(folder / "label_codes.npy", mmap_mode="r")) \
            if meta["labels"] is not None else [None] * self.rows
        where = WhereColumn(self.where_prefix, np.load(folder / "lines.npy", mmap_mode="r"))
        return Examples(texts, pairs, labels, where, store=self, rows=range(self.rows))

    def encoded(self, rows: Sequence[int], labels: list[int]):
        from tlscale.data.batching import Encoded

        rows = np.asarray(rows, dtype=np.int64)
        types = TokenRows(self.types, self.token_offsets, rows) if self.types is not None else None
        return Encoded(TokenRows(self.ids, self.token_offsets, rows), types, list(labels),
                       int(np.asarray(self.truncated)[rows].sum()))


def _flat(path: Path, dtype) -> np.ndarray:
    if path.stat().st_size == 0:  # np.memmap refuses an empty file
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def _offsets(path: Path) -> np.ndarray:
    return np.concatenate([np.zeros(1, dtype=np.int64), np.load(path)])


class Column(Sequence):
    """A read-only column over mapped arrays: an index reads one row, a slice a list of rows."""

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.row(j) for j in range(*i.indices(len(self)))]
        return self.row(i)

    def row(self, i: int):
        raise NotImplementedError


class TextColumn(Column):
    def __init__(self, blob: np.ndarray, offsets: np.ndarray):
        self.blob, self.offsets = blob, offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def row(self, i: int):
        return self.blob[self.offsets[i]:self.offsets[i + 1]].tobytes().decode("utf-8")


class LabelColumn(Column):
    """Raw labels as distinct values and one code per row."""

    def __init__(self, values: list, codes: np.ndarray):
        self.values, self.codes = values, codes

    def __len__(self) -> int:
        return len(self.codes)

    def row(self, i: int):
        return self.values[self.codes[i]]

    def distinct(self) -> list:
        return list(self.values)

    def map_distinct(self, function) -> list:
        """function applied once per distinct value, spread to every row."""
        return np.asarray([function(value) for value in self.values], dtype=np.int64)[self.codes].tolist()


class WhereColumn(Column):
    def __init__(self, prefix: str, numbers: np.ndarray):
        self.prefix, self.numbers = prefix, numbers

    def __len__(self) -> int:
        return len(self.numbers)

    def row(self, i: int):
        return f"{self.prefix}{self.numbers[i]}"


class TokenRows(Column):
    """The token rows of some store rows (a sample, a split); a row is read from the mapped file when asked for."""

    def __init__(self, flat: np.ndarray, offsets: np.ndarray, rows: np.ndarray):
        self.flat, self.starts, self.ends = flat, offsets[rows], offsets[rows + 1]

    def __len__(self) -> int:
        return len(self.starts)

    def row(self, i: int):
        return np.array(self.flat[self.starts[i]:self.ends[i]])  # a copy: the mapping is read-only

    def lengths(self) -> list[int]:
        return (self.ends - self.starts).tolist()
