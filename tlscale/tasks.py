"""Task registry. A task names what the loop trains and how it is scored."""
from tlscale.registry import Registry

TASKS: Registry[str] = Registry("task")
TASKS.register("text_classification")("Sequence classification: sentiment, topic, intent, NLI with text pairs.")
