"""Text classification data: columns -> checked examples -> label ids -> tokens."""
from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tlscale.data.readers import Record, Table, kind_of, read_table
from tlscale.errors import DataError, did_you_mean
from tlscale.spec.schema import DataSpec

MAX_REPORTED = 20


@dataclass
class Examples:
    texts: Sequence[str]
    pairs: Sequence[str] | None
    raw_labels: Sequence[object]
    where: Sequence[str]
    labels: list[int] = field(default_factory=list)
    store: Any = None  # the on-disk TokenStore these rows come from (tlscale/data/token_cache.py), if cached
    rows: Sequence[int] | None = None  # each example's row in store

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: list[int]) -> Examples:
        return Examples(
            texts=[self.texts[i] for i in indices],
            pairs=[self.pairs[i] for i in indices] if self.pairs is not None else None,
            raw_labels=[self.raw_labels[i] for i in indices],
            where=[self.where[i] for i in indices],
            labels=[self.labels[i] for i in indices] if self.labels else [],
            store=self.store,
            rows=[self.rows[i] for i in indices] if self.rows is not None else None,
        )


@dataclass
class ClassificationData:
    label_names: list[str]
    train: Examples
    eval: Examples


class ErrorCollector:
    """Report every bad row at once (up to a cap), not just the first."""

    def __init__(self):
        self.messages: list[str] = []
        self.count = 0

    def add(self, message: str) -> None:
        self.count += 1
        if len(self.messages) < MAX_REPORTED:
            self.messages.append(message)

    def raise_if_any(self) -> None:
        if self.count:
            extra = [f"... and {self.count - len(self.messages)} more"] if self.count > len(self.messages) else []
            raise DataError(self.messages + extra)


def check_columns(table: Table, spec: DataSpec, need_label: bool) -> None:
    wanted = [("data.text_column", spec.text_column)]
    if spec.text_pair_column:
        wanted.append(("data.text_pair_column", spec.text_pair_column))
    if need_label:
        wanted.append(("data.label_column", spec.label_column))
    problems = [
        f"{table.path}:1: {field_name} '{column}' is not a column.{did_you_mean(column, table.columns)} "
        f"Columns found: {', '.join(map(str, table.columns)) or '(none)'}"
        for field_name, column in wanted if column not in table.columns
    ]
    if problems:
        raise DataError(problems)


def read_examples(path: Path, spec: DataSpec, need_label: bool = True) -> Examples:
    table = read_table(path, spec.format)
    if not table.records:
        raise DataError(f"{path}: no data rows (the dataset is empty)")
    check_columns(table, spec, need_label)
    errors = ErrorCollector()
    examples = examples_from(table.records, spec, need_label, errors)
    errors.raise_if_any()
    return examples


def examples_from(records: list[Record], spec: DataSpec, need_label: bool, errors: ErrorCollector) -> Examples:
    """Records -> checked examples; every problem goes to errors (a whole file, or one chunk of a big one)."""
    texts, pairs, labels, where = [], [] if spec.text_pair_column else None, [], []
    for record in records:
        text = _text(record.values.get(spec.text_column), record.where, spec.text_column, errors)
        pair = None
        if spec.text_pair_column:
            pair = _text(record.values.get(spec.text_pair_column), record.where, spec.text_pair_column, errors)
        label = record.values.get(spec.label_column) if need_label else None
        if need_label and (label is None or str(label).strip() == ""):
            errors.add(f"{record.where}: empty label in column '{spec.label_column}'")
        elif isinstance(label, (list, tuple, dict)):
            errors.add(f"{record.where}: column '{spec.label_column}': expected a label name or id, found "
                       f"{kind_of(label)}")
        texts.append(text)
        if pairs is not None:
            pairs.append(pair)
        labels.append(label.strip() if isinstance(label, str) else label)
        where.append(record.where)
    return Examples(texts, pairs, labels, where)


def _text(value: object, where: str, column: str, errors: ErrorCollector) -> str:
    """Only strings are text: a JSON list or object would be trained on as its Python repr."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        errors.add(f"{where}: missing text in column '{column}'")
        return ""
    if not isinstance(value, str):
        errors.add(f"{where}: column '{column}': expected text, found {kind_of(value)}")
        return ""
    if not value.strip():
        errors.add(f"{where}: empty text in column '{column}'")
    return value


def _int_like(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) or (isinstance(value, str) and value.lstrip("-").isdigit())


def infer_label_names(raw: Sequence[object]) -> list[str]:
    distinct = raw.distinct() if hasattr(raw, "distinct") else raw  # a cached column knows its values
    return sorted({str(v) for v in distinct}, key=lambda v: (0, int(v)) if _int_like(v) else (1, v))


def encode_labels(examples: Examples, names: list[str], declared: bool) -> None:
    """Raw labels are names, or integer ids when declared names are given."""
    index = {name: i for i, name in enumerate(names)}

    def label_id(raw) -> int:
        key = str(raw)
        if key in index:
            return index[key]
        if declared and _int_like(raw) and 0 <= int(raw) < len(names):
            return int(raw)
        return -1

    raw_labels = examples.raw_labels
    ids = raw_labels.map_distinct(label_id) if hasattr(raw_labels, "map_distinct") else list(map(label_id, raw_labels))
    errors = ErrorCollector()
    for i in (i for i, label in enumerate(ids) if label < 0):
        errors.add(f"{examples.where[i]}: unknown label '{raw_labels[i]}'. Expected one of: {', '.join(names)}"
                   + (" (or an id 0..%d)" % (len(names) - 1) if declared else ""))
    errors.raise_if_any()
    examples.labels = ids


def sample(examples: Examples, limit: int | None, seed: int) -> Examples:
    if limit is None or limit >= len(examples):
        return examples
    return examples.subset(sorted(random.Random(seed).sample(range(len(examples)), limit)))


def draw_per_class(labels: list[int], per_class: int, seed: int, source: str) -> list[int]:
    """per_class indices of each class, seeded; an error names a class that has too few."""
    rng = random.Random(seed)
    chosen = []
    for label in sorted(set(labels)):
        members = [i for i, y in enumerate(labels) if y == label]
        if len(members) < per_class:
            raise DataError(f"{source}: class {label} has {len(members)} training examples; a draw of "
                            f"{per_class} per class needs {per_class}")
        chosen.extend(rng.sample(members, per_class))
    return sorted(chosen)


def fingerprint(examples: Examples, label_names: list[str]) -> str:
    """SHA-256 of the (text, pair, label) rows in order: runs whose evaluation sets share it were scored on the
    same examples, which equal sizes alone do not prove."""
    digest = hashlib.sha256()
    pairs = examples.pairs or [None] * len(examples)
    for text, pair, label in zip(examples.texts, pairs, examples.labels):
        digest.update(json.dumps([text, pair, label_names[label] if label >= 0 else None]).encode() + b"\n")
    return digest.hexdigest()


def stratified_split(examples: Examples, fraction: float, seed: int) -> tuple[Examples, Examples]:
    rng = random.Random(seed)
    by_label: dict[int, list[int]] = {}
    for i, label in enumerate(examples.labels):
        by_label.setdefault(label, []).append(i)
    held_out: list[int] = []
    for label in sorted(by_label):
        indices = by_label[label]
        rng.shuffle(indices)
        take = min(len(indices) - 1, max(1, round(len(indices) * fraction)))
        held_out.extend(indices[:take])
    held = set(held_out)
    train = [i for i in range(len(examples)) if i not in held]
    if not train or not held_out:
        raise DataError(f"data.eval_fraction: cannot split {len(examples)} examples into train and eval; "
                        "give data.eval_file or more rows")
    return examples.subset(train), examples.subset(sorted(held_out))


def require_two_classes(train: Examples, names: list[str], path: Path, sampled: bool = False) -> None:
    """Training data of one class trains a constant classifier without a word of warning."""
    found = sorted(set(train.labels))
    if len(found) < 2:
        after = f" (after data.limit sampled {len(train)} rows)" if sampled else ""
        raise DataError(f"{path}: every training example has the label '{names[found[0]]}'{after}; a classifier "
                        "needs examples of at least 2 classes")


def build_classification_data(spec: DataSpec, seed: int, read=read_examples) -> ClassificationData:
    """read(path, spec) -> Examples: read_examples, or the on-disk token store's (token_cache.cached_reader)."""
    train = read(spec.train_file, spec)
    names = list(spec.labels) if spec.labels else infer_label_names(train.raw_labels)
    encode_labels(train, names, declared=bool(spec.labels))
    require_two_classes(train, names, spec.train_file)
    if spec.eval_file is not None:
        eval_examples = read(spec.eval_file, spec)
        encode_labels(eval_examples, names, declared=bool(spec.labels))
    pool_seed = seed if spec.seed is None else spec.seed
    train = sample(train, spec.limit, pool_seed)
    if spec.limit is not None:
        require_two_classes(train, names, spec.train_file, sampled=True)
    if spec.eval_file is None:
        train, eval_examples = stratified_split(train, spec.eval_fraction, pool_seed)
    eval_examples = sample(eval_examples, spec.eval_limit, pool_seed)
    if spec.per_class is not None:  # the label budget, drawn with the run's seed from the (shared) pool
        train = train.subset(draw_per_class(train.labels, spec.per_class, seed, f"data.per_class: {spec.train_file}"))
    return ClassificationData(names, train, eval_examples)

