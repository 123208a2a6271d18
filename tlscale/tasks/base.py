"""What a task is: the five things the training loop asks of it. Everything else in the loop (batches,
accumulation, distribution, checkpoints, strategies) is the same for every task."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from tlscale.registry import Registry

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
    name = ""
    auto_class = "AutoModel"  # how plain transformers reloads the saved model
    metrics = {"loss": "min"}  # metric name -> min/max, for metric_for_best
    default_metric = "loss"
    caches_features = False  # feature_extraction may cache pooled backbone outputs

    def __init__(self, spec):
        self.spec = spec

    def prepare(self, tokenizer) -> TaskData:
        raise NotImplementedError

    def build_model(self, data: TaskData, load_options: dict):
        raise NotImplementedError

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

    def headline(self, metrics: dict) -> str:
        return " ".join(f"{k}={metrics[k]:.4f}" for k in self.metrics if isinstance(metrics.get(k), float))


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
