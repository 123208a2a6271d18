"""The ladder's cells: one run per method x label budget x seed, each a complete job spec of its own, written
into the ladder folder so that a cell can be rerun, inspected or compared like any other run."""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from tlscale.errors import ConfigError
from tlscale.spec.schema import LADDER_FEWSHOT_METHODS, JobSpec, LadderMethod, StrategySpec

FEWSHOT_BUDGET_CAP = "all"  # few-shot methods train on k examples per class: they have no "whole pool" cell


@dataclass(frozen=True)
class Pool:
    """What the planner needs to know of the data: sizes and the majority-class baseline."""
    classes: int
    train_examples: int
    smallest_class: int
    eval_examples: int
    majority: float  # accuracy of always answering the training pool's most frequent label


@dataclass
class Cell:
    method: str  # its label in the table
    name: str  # the method it runs
    budget: int | str  # labelled examples per class, 0 for zero-shot, or "all"
    seed: int
    spec: dict
    folder: Path
    teacher: Cell | None = None  # the cell whose run teaches this one (ladder.methods[].teacher)

    @property
    def command(self) -> str:
        return "fewshot" if self.name in LADDER_FEWSHOT_METHODS else "train"

    @property
    def run_dir(self) -> Path:
        return self.folder / "run"

    @property
    def spec_file(self) -> Path:
        return self.folder / "spec.yaml"

    @property
    def key(self) -> str:
        return f"{self.method} k={self.budget} seed {self.seed}"

    def done(self) -> bool:
        """Finished, and with the spec planned now (a changed recipe runs again)."""
        return (self.run_dir / "metrics.json").is_file() and self.same_recipe()

    def same_recipe(self) -> bool:
        """The written spec means what the planned one means (compared after validation: a field spelled the
        older way, or added since with its default, is not a new recipe)."""
        if not self.spec_file.is_file():
            return False
        with planned_teacher(self):
            try:
                written = JobSpec.model_validate(yaml.safe_load(self.spec_file.read_text()))
            except Exception:  # unreadable or no longer valid: run the cell again
                return False
            return written.model_dump(mode="json") == JobSpec.model_validate(self.spec).model_dump(mode="json")


@contextmanager
def planned_teacher(cell: Cell):
    """Validate a student cell's spec as its teacher's run will find it: there (it may not have run yet)."""
    from tlscale.tasks.distillation import PLANNED_TEACHERS

    token = PLANNED_TEACHERS.set(frozenset([cell.teacher.run_dir]) if cell.teacher else frozenset())
    try:
        yield
    finally:
        PLANNED_TEACHERS.reset(token)


def read_pool(spec: JobSpec) -> Pool:
    from collections import Counter

    from tlscale.data.classification import build_classification_data

    data = build_classification_data(spec.data, spec.seed)
    counts = Counter(data.train.labels)
    top = counts.most_common(1)[0][0]
    return Pool(classes=len(data.label_names), train_examples=len(data.train), smallest_class=min(counts.values()),
                eval_examples=len(data.eval),
                majority=sum(1 for y in data.eval.labels if y == top) / max(1, len(data.eval)))


def plan(spec: JobSpec, pool: Pool, ladder_dir: Path) -> list[Cell]:
    """Every cell of the ladder, in table order. A budget larger than the smallest class is an error."""
    ladder = spec.ladder
    asked = {b for entry in ladder.methods for b in entry.budgets or ladder.budgets}
    too_big = sorted(b for b in asked if b != "all" and b > pool.smallest_class)
    if too_big:
        raise ConfigError(f"ladder.budgets: {too_big} labelled examples per class, but the training pool's smallest "
                          f"class has {pool.smallest_class}; lower the budgets or raise data.limit")
    base = spec.model_dump(mode="json", exclude={"ladder"})
    cells = []
    for index, entry in enumerate(ladder.methods):
        folder = ladder_dir / "cells" / slug(entry.shown)
        if entry.name == "zero_shot":
            budgets, seeds = [0], ladder.seeds[:1]  # nothing is drawn: one cell
        elif entry.name in LADDER_FEWSHOT_METHODS:
            budgets, seeds = [b for b in entry.budgets or ladder.budgets if b != FEWSHOT_BUDGET_CAP], ladder.seeds
        else:
            budgets, seeds = entry.budgets or ladder.budgets, ladder.seeds
        for budget in budgets:
            for seed in seeds:
                raw = cell_spec(base, spec, entry, budget, seed, pool)
                where = folder / f"k{budget}" / f"seed{seed}"
                raw["output_dir"] = str(where / "run")
                cells.append(Cell(entry.shown, entry.name, budget, seed, raw, where))
    by_key = {(c.method, c.budget, c.seed): c for c in cells}
    for cell in cells:
        index, entry = next((i, m) for i, m in enumerate(ladder.methods) if m.shown == cell.method)
        where = f"ladder.methods[{index}] ({entry.shown})"
        if entry.teacher is not None:
            cell.teacher = by_key.get((entry.teacher, cell.budget, cell.seed))
            if cell.teacher is None:
                raise ConfigError(f"{where}.teacher: '{entry.teacher}' has no cell with {cell.budget} labelled "
                                  f"examples per class and seed {cell.seed} to teach this one's; give both the "
                                  "same budgets (few-shot methods have no 'all')")
            cell.spec["distill"] = {**(cell.spec.get("distill") or {}), "teacher": [str(cell.teacher.run_dir)]}
        with planned_teacher(cell):
            _check(cell.spec, where)
    return cells


def cell_spec(base: dict, spec: JobSpec, entry: LadderMethod, budget, seed: int, pool: Pool) -> dict:
    import copy

    from tlscale.spec.loading import apply_overrides

    base = copy.deepcopy(base)  # a method's nested overrides (data.augment.*, fewshot.setfit.*) stay its own
    ladder = spec.ladder
    raw = {k: v for k, v in base.items() if k not in ("fewshot", "strategy")}
    raw["data"] = {**base["data"], "seed": spec.seed if spec.data.seed is None else spec.data.seed}  # one pool
    if entry.name in LADDER_FEWSHOT_METHODS:
        fewshot = dict(base.get("fewshot") or {})
        fewshot["seeds"] = [seed]
        if entry.name == "zero_shot" and ladder.prompt_model is None:
            fewshot.update(method="zero_shot", k=0)
        elif entry.name in ("zero_shot", "prompt"):
            raw["model"] = {"name_or_path": ladder.prompt_model}
            k = 0 if entry.name == "zero_shot" else min(ladder.prompt_k, budget)
            fewshot.update(method="prompt", k=k, k_per="class", selection="knn" if k else "balanced",
                           pool_per_class=budget if k else None)
        else:
            fewshot.update(method=entry.name, k=budget)
        raw["fewshot"] = fewshot
        return apply_overrides(raw, entry.overrides)
    raw["seed"] = seed
    raw["strategy"] = {k: v for k, v in base["strategy"].items() if k in StrategySpec.model_fields}
    raw["strategy"]["name"] = entry.name
    if budget != "all":
        raw["data"]["per_class"] = budget
    # the ladder reports its cells on the evaluation set: nothing may be chosen on it during training
    raw["training"] = {**base["training"], "eval_every_steps": None, "keep_best": False}
    raw = apply_overrides(raw, entry.overrides)
    training = raw["training"]
    examples = pool.train_examples if budget == "all" else budget * pool.classes
    examples *= 1 + (raw["data"].get("augment") or {}).get("copies", 0)  # (at most: repeated variants are dropped)
    examples += unlabelled_texts(raw.get("distill") or {}, pool)  # a student's transfer set (at most)
    steps_per_epoch = math.ceil(examples / (training["batch_size"] * training.get("grad_accum_steps", 1)))
    training["epochs"] = max(training["epochs"], math.ceil(ladder.min_steps / steps_per_epoch))
    return raw


def unlabelled_texts(distill: dict, pool: Pool) -> int:
    """How many unlabelled texts a student cell learns from, at most (its epochs follow)."""
    if not distill.get("unlabeled_file"):
        return 0
    if distill.get("select_per_class"):
        return distill["select_per_class"] * pool.classes
    try:
        with open(distill["unlabeled_file"], "rb") as f:
            rows = max(0, sum(1 for _ in f) - 1)
    except OSError:  # (validation names a missing file)
        return 0
    return min(rows, distill.get("unlabeled_limit") or rows)


def _check(raw: dict, where: str) -> None:
    from pydantic import ValidationError

    try:
        JobSpec.model_validate(raw)
    except ValidationError as exc:
        from tlscale.spec.loading import format_errors

        raise ConfigError(format_errors(exc, where, {}, None, raw)) from None


def slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text)
