"""multi_task: one encoder trained on several tasks at once (MT-DNN, Liu et al. 2019), each task with its own
head, data, loss and metrics.

Each part is an ordinary registered task (text_classification, extractive_qa, masked_lm or a plugin's) with a
spec of its own: the multi-task spec's model, strategy, training and distribution, plus the part's `data` and
task section. A batch holds one task's examples, collated and scored by that task; the order of the tasks'
batches is drawn per epoch (tlscale/data/task_sampling.py). Every head is saved with the encoder as its task's
own model folder (model/NAME, with a single-task spec), which plain transformers and `tlscale eval/predict/
export` load as they load a single-task run's model.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Literal

from pydantic import ConfigDict, Field, ValidationError

from tlscale.data.task_sampling import SAMPLINGS, epoch_counts, schedule, take_batches
from tlscale.errors import ConfigError
from tlscale.eval.metrics import METRICS, register_metric
from tlscale.files import write_json_atomic
from tlscale.spec.schema import DataSpec, Section, TaskOptions
from tlscale.tasks.base import TASKS, Task, TaskData

register_metric("task_mean", "max", "mean over a multi-task run's tasks of each task's main metric, as a share of "
                "a perfect score (accuracy as is, SQuAD F1 / 100)")

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"
MANIFEST = "multitask.json"


class TaskEntry(Section):
    """One task of a multi-task run. Besides these keys, the task's own section (qa: for extractive_qa)."""

    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)

    name: str = Field(pattern=NAME_PATTERN, max_length=64, description="Its name: the folder of its model "
                      "(model/NAME) and evaluation files (tasks/NAME), the prefix of its metrics (NAME/accuracy).")
    task: str = Field(description="A registered task whose main metric rises: text_classification, "
                      "extractive_qa, masked_lm, or your own.")
    data: DataSpec = Field(description="This task's training and evaluation data, as in a single-task spec.")


class MultiTaskOptions(TaskOptions):
    """multi_task: the tasks that share the encoder, and how an epoch's batches are drawn from them."""

    tasks: list[TaskEntry] = Field(min_length=2, description="The tasks, each {name, task, data} plus its own "
                                   "section (qa: ...). The first task's model is the one whose encoder is shared.")
    sampling: Literal["proportional", "temperature", "round_robin"] = Field(
        "proportional", description="Which task each batch comes from. proportional: every task's batches once "
        "per epoch; temperature: task shares of n^(1/T) (small tasks oversampled); round_robin: equal shares, in "
        "turn. An epoch has as many batches as the tasks together.")
    temperature: float = Field(2.0, ge=1.0, le=1000.0, description="sampling temperature: 1 is proportional, "
                               "large values approach equal shares (MT-DNN and T5 use 2-5).")

    def problems(self, spec) -> dict:
        found: dict = {}
        names = [entry.name for entry in self.tasks]
        for i, entry in enumerate(self.tasks):
            if names.count(entry.name) > 1:
                found[("tasks", i, "name")] = f"expected each name once, found '{entry.name}' {names.count(entry.name)} times"
            if entry.task == "multi_task":
                found[("tasks", i, "task")] = "a multi_task run cannot hold another multi_task"
                continue
            try:
                part = part_spec(spec, entry)
            except ValidationError as exc:
                for err in exc.errors():
                    found[("tasks", i, *err["loc"])] = _message(err)
                continue
            metric = METRICS.get(TASKS.get(part.task).metrics[0])
            if metric.direction != "max":
                found[("tasks", i, "task")] = (f"task '{part.task}' is scored by {metric.name} (lower is better); "
                                               "multi_task averages rising main metrics")
            if getattr(part, "distill", None) is not None and part.distill.enabled:
                found[("tasks", i, "distill")] = "distillation inside a multi_task run is not supported; distil " \
                                                 "a single-task run"
        if spec.strategy.name in ("lora", "qlora"):
            found[("tasks",)] = (f"strategy '{spec.strategy.name}' is not supported with multi_task yet (the PEFT "
                                 "wrapper expects one task model); use full, partial, feature_extraction or "
                                 "gradual_unfreeze")
        dist = spec.distributed
        if dist.backend == "deepspeed" and dist.zero_stage == 3:
            found[("tasks",)] = ("DeepSpeed ZeRO-3 is not supported with multi_task yet (the task models reach the "
                                 "shared encoder outside the partitioned module tree); use zero_stage 1 or 2")
        return found


def _message(err: dict) -> str:
    if err["type"] == "missing":
        return "required field is missing"
    if err["type"] == "extra_forbidden":
        return f"unknown key '{err['loc'][-1]}'"
    return err["msg"].removeprefix("Value error, ")


def part_spec(spec, entry: TaskEntry):
    """The single-task spec of one part: the multi-task spec's model, strategy, training, distribution and
    runner, with the part's task, data and task section."""
    from tlscale.spec.schema import JobSpec

    raw = {k: v for k, v in spec.model_dump(mode="json").items()
           if k not in ("multi_task", "data", "ladder", "fewshot")}
    raw.update(task=entry.task, data=entry.data.model_dump(mode="json", exclude_unset=True), **entry.model_extra)
    raw["training"] = {**raw["training"], "metric_for_best": "auto"}
    return JobSpec.model_validate(raw)


@dataclass
class TaskSets:
    """Several tasks' datasets as one index space: item i of task t is offsets[t] + i."""
    sets: list
    offsets: list[int] = field(init=False)

    def __post_init__(self):
        self.offsets, total = [], 0
        for part in self.sets:
            self.offsets.append(total)
            total += len(part)
        self.total = total

    def __len__(self) -> int:
        return self.total

    @property
    def input_ids(self) -> list:
        return [ids for part in self.sets for ids in part.input_ids]

    def locate(self, indices: list[int]) -> tuple[int, list[int]]:
        """(task, indices within its set) of a batch, which holds one task's items."""
        t = max(i for i, start in enumerate(self.offsets) if start <= indices[0])
        end = self.offsets[t] + len(self.sets[t])
        if not all(self.offsets[t] <= i < end for i in indices):
            raise ValueError("a multi-task batch mixes tasks")
        return t, [i - self.offsets[t] for i in indices]


@dataclass
class MultiTaskData(TaskData):
    parts: dict = field(default_factory=dict)  # name -> the part's own TaskData


class TaskView:
    """The prepared multi-task model (DDP, DeepSpeed) seen as one task's model: calls go through the
    wrapper, so its hooks (gradient reduction) run."""

    def __init__(self, model, task: int):
        self.model, self.task = model, task

    def __call__(self, **batch):
        return self.model(task=self.task, **batch)


@TASKS.register("multi_task")
class MultiTask(Task):
    name = "multi_task"
    auto_class = "AutoModel"  # each task's folder names its own (model/NAME)
    metrics = ("task_mean",)
    headline_metrics = ("task_mean",)
    options, options_key = MultiTaskOptions, "multi_task"
    reads_data = False
    uses_every_parameter = False

    @classmethod
    def data_sections(cls, raw: dict) -> list[tuple[str, dict]]:
        tasks = (raw.get("multi_task") or {}).get("tasks") if isinstance(raw.get("multi_task"), dict) else None
        return [(f"multi_task.tasks.{i}.data", entry["data"]) for i, entry in enumerate(tasks or [])
                if isinstance(entry, dict) and isinstance(entry.get("data"), dict)]

    def __init__(self, spec):
        super().__init__(spec)
        from tlscale.tasks import build_task

        self.entries = list(spec.multi_task.tasks)
        self.parts = {entry.name: build_task(part_spec(spec, entry)) for entry in self.entries}

    def prepare(self, tokenizer) -> TaskData:
        parts = {name: task.prepare(tokenizer) for name, task in self.parts.items()}
        train = TaskSets([p.train for p in parts.values()])
        evaluation = TaskSets([p.eval for p in parts.values()])
        options, batch_size = self.spec.multi_task, self.spec.training.batch_size
        one_pass = self._part_batches(train, batch_size, self.spec.world_size)
        counts = epoch_counts(one_pass, options.sampling, options.temperature)
        sampling = {"method": options.sampling, **({"temperature": options.temperature}
                                                   if options.sampling == "temperature" else {}),
                    "batches_per_pass": dict(zip(parts, one_pass)), "batches_per_epoch": dict(zip(parts, counts))}
        kinds = {entry.name: entry.task for entry in self.entries}
        notes = {"tasks": {name: {"task": kinds[name], "train": len(p.train), "eval": len(p.eval), **p.notes}
                           for name, p in parts.items()},
                 "eval_sha256": "+".join(str(p.notes.get("eval_sha256")) for p in parts.values()),
                 "sampling": sampling}
        return MultiTaskData(train, evaluation, None, sum(p.truncated for p in parts.values()), notes=notes,
                             parts=parts)

    def build_model(self, data: MultiTaskData, load_options: dict):
        from tlscale.models.multi_head import MultiTaskModel

        return MultiTaskModel({name: task.build_model(data.parts[name], load_options)
                               for name, task in self.parts.items()})

    # --- batches: one task each, in the sampled order ---------------------------------------------------

    def _part_batches(self, train: TaskSets, batch_size: int, world: int) -> list[int]:
        return [task.batch_count(part, batch_size, world) for task, part in zip(self.parts.values(), train.sets)]

    def batch_count(self, train, batch_size, world) -> int:
        return sum(self._part_batches(train, batch_size, world))

    def epoch_batches(self, train, batch_size, seed, group_by_length, world) -> list[list[int]]:
        options = self.spec.multi_task
        counts = epoch_counts(self._part_batches(train, batch_size, world), options.sampling, options.temperature)
        streams = []
        for t, (name, task) in enumerate(self.parts.items()):
            def one_pass(p, task=task, part=train.sets[t], name=name):
                return task.epoch_batches(part, batch_size, random.Random(f"{seed}:{name}:{p}").getrandbits(31),
                                          group_by_length, world)
            streams.append(iter([[train.offsets[t] + i for i in b] for b in take_batches(one_pass, counts[t])]))
        return [next(streams[t]) for t in schedule(counts, options.sampling, f"{seed}:tasks")]

    def collate(self, dataset, indices, pad_id):
        import torch

        t, local = dataset.locate(indices)
        batch = self._task(t).collate(dataset.sets[t], local, pad_id)
        batch["task"] = torch.tensor(t)
        return batch

    def loss(self, model, batch):
        t = int(batch.pop("task"))
        return self._task(t).loss(TaskView(model, t), batch)

    def weight(self, dataset, indices) -> int:
        t, local = dataset.locate(indices)
        return self._task(t).weight(dataset.sets[t], local)

    def _task(self, t: int) -> Task:
        return self.parts[self.entries[t].name]

    # --- evaluation: each task's own, and their mean ------------------------------------------------------

    def evaluate(self, accelerator, model, data, run, pad_id, feature_cache=None, write_files=False) -> dict:
        results = {}
        for name, task in self.parts.items():
            out = Path(run.path) / "tasks" / name if run is not None and run.path is not None else None
            if write_files and out is not None and accelerator.is_main_process:
                out.mkdir(parents=True, exist_ok=True)
            results[name] = task.evaluate(accelerator, model.task_models[name], data.parts[name],
                                          SimpleNamespace(path=out), pad_id, write_files=write_files and out is not None)
        return self.combine(results)

    def combine(self, results: dict) -> dict:
        shares = [results[name][task.default_metric] / METRICS.get(task.default_metric).scale
                  for name, task in self.parts.items()]
        flat = {f"{name}/{k}": v for name, r in results.items() for k, v in r.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)}
        return {"task_mean": sum(shares) / len(shares),
                "num_examples": sum(r.get("num_examples", 0) for r in results.values()), **flat, "tasks": results}

    @classmethod
    def headline_columns(cls, metrics: dict) -> tuple[str, ...]:
        tasks = (metrics.get("data") or {}).get("tasks") or {}
        return ("task_mean", *(f"{name}/{key}" for name, part in tasks.items() if part.get("task") in TASKS
                               for key in TASKS.get(part["task"]).headline_columns({})))

    def headline(self, metrics: dict) -> str:
        lines = [f"{name}: {task.headline(metrics['tasks'][name])}" for name, task in self.parts.items()]
        return f"mean of the tasks' main metrics {metrics['task_mean']:.4f}\n  " + "\n  ".join(lines)

    # --- the model: one folder per task -------------------------------------------------------------------

    def save_model(self, accelerator, model, tokenizer, data, spec_yaml, folder) -> None:
        """model/NAME per task, published together (ZeRO-3, which would need gathered weights, is refused)."""
        from tlscale.models.saving import write_dir, write_model
        from tlscale.spec.loading import dump_spec

        raw = accelerator.unwrap_model(model)

        def write(tmp: Path) -> None:
            tmp.mkdir(parents=True)
            for name, task in self.parts.items():
                write_model(raw.task_models[name], None, tokenizer, data.parts[name].label_names,
                            dump_spec(task.spec), tmp / name)
            (tmp / "tlscale_spec.yaml").write_text(spec_yaml)
            write_json_atomic(tmp / MANIFEST, {"tasks": {e.name: e.task for e in self.entries}})

        if accelerator.is_main_process:
            write_dir(folder, write)
        accelerator.wait_for_everyone()

    def load_weights(self, model, folder) -> None:
        for name, task in self.parts.items():
            task.load_weights(model.task_models[name], folder / name)

    def probe_loss(self, model, data, pad_id, device) -> dict:
        return {name: task.probe_loss(model.task_models[name], data.parts[name], pad_id, device)
                for name, task in self.parts.items()}

    def verify_saved(self, folder, data, pad_id, expected, mixed_precision) -> dict:
        return {"tasks": {name: task.verify_saved(folder / name, data.parts[name], pad_id, expected[name],
                                                  mixed_precision) for name, task in self.parts.items()}}

    # --- saved models: `tlscale eval`, `predict`, `export` ------------------------------------------------

    def evaluate_checkpoint(self, checkpoint, out: Path) -> dict:
        folder = _model_folder(Path(checkpoint))
        results = {}
        for name, task in self.parts.items():
            (out / name).mkdir(parents=True, exist_ok=True)
            results[name] = task.evaluate_checkpoint(folder / name, out / name)
        return self.combine(results)

    @classmethod
    def predict_file(cls, checkpoint, trained, input_file, output_file, options) -> int:
        names = [entry["name"] for entry in trained.get("multi_task", {}).get("tasks", [])]
        raise ConfigError(f"--checkpoint: a multi-task model holds one model per task; predict with one of them: "
                          + ", ".join(f"{checkpoint}/{name}" for name in names))


def _model_folder(checkpoint: Path) -> Path:
    """RUN/model from a run folder or the model folder itself."""
    for folder in (checkpoint / "model", checkpoint):
        if (folder / MANIFEST).is_file():
            return folder
    raise ConfigError(f"--checkpoint: '{checkpoint}' is not a multi-task run or model folder (no {MANIFEST})")


__all__ = ["MultiTask", "MultiTaskOptions", "TaskEntry", "part_spec", "SAMPLINGS"]
