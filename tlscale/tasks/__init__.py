"""Tasks: what the loop trains and how it is scored. Importing this package registers the built-in ones."""
from tlscale.tasks import causal_lm, classification, extractive_qa, masked_lm, multi_task  # noqa: F401  (registers)
from tlscale.tasks.base import TASKS, Task, TaskData


def build_task(spec) -> Task:
    return TASKS.get(spec.task, field="task")(spec)


__all__ = ["TASKS", "Task", "TaskData", "build_task"]
