"""What a task is: the five things the training loop asks of it. Everything else in the loop (batches,
accumulation, distribution, checkpoints, strategies) is the same for every task."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlscale.registry import Registry

if TYPE_CHECKING:  # torch loads when a model runs, not when a spec or its data is checked
    import torch

TASKS: Registry[type[Task]] = Registry("task")


@dataclass
class TaskData:
    train: Any  # a dataset: len(), .input_ids (for lengths and batching); collated by the task
    eval: Any
    label_names: list[str] | None = None  # classification: the label map saved with the model
    truncated: int = 0  # training inputs cut by max_length
    eval_items: Any = None  # what the eval inputs came from (examples, questions), for predictions files
    notes: dict = field(default_factory=dict)  # JSON facts for metrics.json (skipped records, windows, ...)


class Task:
    """What the loop, `tlscale eval`, `predict`, `export` and `compare` ask of a task; commands name none."""
    name = ""
    auto_class = "AutoModel"  # how plain transformers reloads the saved model
    metrics: tuple[str, ...] = ("loss",)  # names in tlscale.eval.metrics.METRICS; the first is the default
    headline_metrics: tuple[str, ...] = ("loss",)  # `tlscale compare` columns
    caches_features = False  # feature_extraction may cache pooled backbone outputs
    options = None  # a TaskOptions model: the task's own spec section, read as spec.<options_key>
    options_key: str | None = None  # that section's key ("qa" for extractive_qa)
    reads_data = True  # False: the spec has no top-level `data` (multi_task: each task names its own)
    uses_every_parameter = True  # False: a step may leave parameters without gradients (DDP must look for them)

    def __init__(self, spec):
        self.spec = spec

    @classmethod
    def data_sections(cls, raw: dict) -> list[tuple[str, dict]]:
        """(where, section) of each data section of a raw spec dict: the files a service must upload and
        check. The sections are raw's own dicts (edit them to rewrite paths)."""
        data = raw.get("data")
        return [("data", data)] if isinstance(data, dict) else []

    @property
    def default_metric(self) -> str:
        """What keep-best and metric_for_best: auto follow."""
        return self.metrics[0]

    def prepare(self, tokenizer) -> TaskData:
        raise NotImplementedError

    def build_model(self, data: TaskData, load_options: dict):
        raise NotImplementedError

    def start_epoch(self, data: TaskData, epoch: int) -> None:
        """Called before each epoch (and a resumed one) on every rank: per-epoch data such as fresh masks."""

    def batch_count(self, train, batch_size: int, world: int) -> int:
        """Micro-batches of one epoch (what epoch_batches returns); a last batch smaller than the world
        cannot give every rank an example."""
        full, tail = divmod(len(train), batch_size)
        return full + (tail >= world)

    def epoch_batches(self, train, batch_size: int, seed: int, group_by_length: bool, world: int) -> list[list[int]]:
        """The epoch's global batches of training indices, in order (seed: the run's and the epoch's)."""
        from tlscale.data.batching import length_grouped_batches, lengths, shuffled_batches

        batches = (length_grouped_batches(lengths(train.input_ids), batch_size, seed)
                   if group_by_length else shuffled_batches(len(train), batch_size, seed))
        return [b for b in batches if len(b) >= world]

    def collate(self, dataset, indices: list[int], pad_id: int) -> dict[str, torch.Tensor]:
        """A padded batch with labels and an `index` tensor naming the examples."""
        raise NotImplementedError

    def loss(self, model, batch: dict) -> torch.Tensor:
        """The mean loss of one collated batch. A task with several heads or objectives (multi-task,
        masked LM) computes its own here; strategies may wrap it (Strategy.loss)."""
        return model(**batch).loss

    def weight(self, dataset, indices: list[int]) -> int:
        """How many items the model's mean loss of this batch averages over (examples; tokens for LMs).
        The loop weights each rank's loss by it, so N processes compute one process's gradient."""
        return len(indices)

    def evaluate(self, accelerator, model, data: TaskData, run, pad_id: int, feature_cache=None,
                 write_files: bool = False) -> dict:
        raise NotImplementedError

    @classmethod
    def headline_columns(cls, metrics: dict) -> tuple[str, ...]:
        """`tlscale compare` columns for runs like this metrics.json (multi_task adds each task's)."""
        return tuple(cls.headline_metrics)

    def headline(self, metrics: dict) -> str:
        return " ".join(f"{k}={metrics[k]:.4f}" for k in self.metrics if isinstance(metrics.get(k), float))

    # --- the trained model: saved at the end (and when best), checked after saving ----------------------

    def save_model(self, accelerator, model, tokenizer, data: TaskData, spec_yaml: str, folder: Path) -> None:
        """A save_pretrained folder plain transformers loads (every rank calls it: ZeRO-3 gathers)."""
        from tlscale.models.saving import save_model

        save_model(accelerator, model, tokenizer, data.label_names, spec_yaml, folder)

    def load_weights(self, model, folder: Path) -> None:
        """Load a folder save_model wrote (the best model kept during training) into the live model."""
        from tlscale.models.saving import load_model_weights

        load_model_weights(model, folder)

    def probe_loss(self, model, data: TaskData, pad_id: int, device) -> float | dict:
        """The live model's loss on a fixed evaluation batch, which the saved model must reproduce."""
        from tlscale.models.verify import batch_loss, fixed_batch

        return batch_loss(model, fixed_batch(self, data.eval, pad_id), device)

    def verify_saved(self, folder: Path, data: TaskData, pad_id: int, expected, mixed_precision: str) -> dict:
        """Reload what save_model wrote and check it gives probe_loss's figure (tlscale/models/verify.py)."""
        from tlscale.models.saving import adapter_dir
        from tlscale.models.verify import fixed_batch, verify_adapter, verify_saved_model

        report = verify_saved_model(folder, fixed_batch(self, data.eval, pad_id), expected, self.auto_class,
                                    mixed_precision)
        if adapter_dir(folder).is_dir():
            report["adapter"] = verify_adapter(adapter_dir(folder))
        return report

    # --- saved models: `tlscale eval`, `predict`, `export` --------------------------------------------

    def load_saved(self, checkpoint: str | Path):
        """(model, tokenizer) of a saved model of this task (RUN/model or the run folder)."""
        from tlscale.models.saved import load_task_model

        model, tokenizer = load_task_model(checkpoint, self.auto_class)
        tokenizer.model_max_length = self.spec.model.max_length
        return model, tokenizer

    def saved_data(self, tokenizer, label_names: list[str] | None = None) -> TaskData:
        """The spec's data for a saved model (a classifier also checks the labels it was trained with)."""
        return self.prepare(tokenizer)

    def evaluate_saved(self, model, tokenizer, out: Path | None, data: TaskData | None = None) -> dict:
        """The loop's own evaluation (Task.evaluate) of a model in this process, on the spec's eval data
        (data: already prepared with saved_data); with out, the task's files are written there."""
        from types import SimpleNamespace

        from accelerate import Accelerator

        accelerator = Accelerator()
        data = data or self.saved_data(tokenizer)
        return self.evaluate(accelerator, model.to(accelerator.device), data, SimpleNamespace(path=out),
                             tokenizer.pad_token_id, write_files=out is not None)

    def evaluate_checkpoint(self, checkpoint: str | Path, out: Path) -> dict:
        model, tokenizer = self.load_saved(checkpoint)
        return self.evaluate_saved(model, tokenizer, out)

    @classmethod
    def predict_file(cls, checkpoint: Path, trained: dict, input_file: Path, output_file: Path,
                     options: dict) -> int:
        """`tlscale predict`: write one prediction per input row; returns the count. trained: the spec the
        model was trained with; options: the command's (text_column, batch_size, ...)."""
        from tlscale.errors import ConfigError

        raise ConfigError(f"--checkpoint: a {cls.name} model; `tlscale predict` does not apply to this task")


def data_sections(raw: dict) -> list[tuple[str, dict]]:
    """Task.data_sections of the task a raw spec names (the plain `data` section for an unknown one)."""
    task = raw.get("task", "text_classification")
    return (TASKS.get(task) if isinstance(task, str) and task in TASKS else Task).data_sections(raw)


def seeded_sample(items: list, limit: int | None, seed: int) -> list:
    """A seeded sample of limit items (data.limit / data.eval_limit), original order kept."""
    if limit is None or limit >= len(items):
        return items
    import random

    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in keep]


def gather_rows(accelerator, score, batches: list[list[int]], n: int) -> torch.Tensor:
    """Each rank scores its share of the batches (score(indices) -> (index, rows)); rows are gathered and
    placed by example index, so nothing is dropped or counted twice. Every rank runs as many forwards
    (ZeRO-3 parameter gathers need all ranks)."""
    import torch

    rank, world = accelerator.process_index, accelerator.num_processes
    mine = batches[rank::world]
    rounds = -(-len(batches) // world)
    mine += [batches[0]] * (rounds - len(mine))
    parts = [score(indices) for indices in mine]
    local_index = torch.cat([p[0] for p in parts])
    local_rows = torch.cat([p[1] for p in parts])
    if world > 1:
        local_index = accelerator.gather(accelerator.pad_across_processes(local_index.to(accelerator.device),
                                                                          pad_index=-1)).cpu()
        local_rows = accelerator.gather(accelerator.pad_across_processes(local_rows.to(accelerator.device))).cpu()
    result = torch.full((n, local_rows.shape[1]), float("nan"))
    keep = local_index >= 0
    result[local_index[keep]] = local_rows[keep].float()
    if torch.isnan(result).all(dim=1).any():
        raise RuntimeError("evaluation lost examples while gathering across processes")
    return result
