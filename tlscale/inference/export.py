"""`tlscale export ADAPTER --merge`: fold a LoRA/QLoRA adapter into its base as a plain model.

Also the last step of a LoRA run under ZeRO-3, where the workers hold only shards of the base and
write the adapter; the launching process merges it here.
"""
from __future__ import annotations

import json
from pathlib import Path

from tlscale.errors import ConfigError
from tlscale.models.quantization import DTYPES


def find_adapter(path: Path) -> Path:
    """An adapter folder, or a run folder holding one (RUN/model-adapter)."""
    path = Path(path)
    for candidate in (path, path / "model-adapter"):
        if (candidate / "adapter_config.json").is_file():
            return candidate
    raise ConfigError(f"ADAPTER: '{path}' is neither a PEFT adapter folder (adapter_config.json) nor a run "
                      "folder with model-adapter/ (was the run's strategy lora or qlora?)")


def load_adapter_model(adapter: Path):
    """(spec, task, model, tokenizer, label names): the base rebuilt as training built it (quantized for
    QLoRA), with the adapter loaded by plain peft on top."""
    from tlscale.errors import require

    PeftModel = require("peft").PeftModel
    from transformers import AutoTokenizer

    from tlscale.spec import load_spec
    from tlscale.strategies import build_strategy
    from tlscale.tasks import TaskData, build_task

    spec_file = adapter / "tlscale_spec.yaml"
    if not spec_file.is_file():
        raise ConfigError(f"ADAPTER: '{adapter}' has no tlscale_spec.yaml; it was not written by tlscale")
    spec = load_spec(spec_file)
    labels_file = adapter / "labels.json"
    label_names = json.loads(labels_file.read_text())["labels"] if labels_file.is_file() else None
    strategy = build_strategy(spec.strategy)
    task = build_task(spec)
    base = task.build_model(TaskData(None, None, label_names), strategy.load_options())
    model = PeftModel.from_pretrained(base, adapter).eval()
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    tokenizer.model_max_length = spec.model.max_length
    return spec, task, model, tokenizer, label_names


def export_merged(adapter: Path, output: Path, dtype: str | None = None, evaluate: bool = True) -> dict:
    """Merge (dequantizing a k-bit base first), write a save_pretrained folder, and report how the merged
    model's evaluation (the task's own, as at the end of training) differs from the adapter-on-base one."""
    from tlscale.files import write_json_atomic
    from tlscale.models.saving import merged_copy, write_model

    adapter = find_adapter(adapter)
    if Path(output).resolve() in (adapter.resolve(), adapter.parent.resolve()):
        raise ConfigError(f"--output: '{output}' would overwrite the adapter or its run; choose a new folder")
    spec, task, model, tokenizer, label_names = load_adapter_model(adapter)
    report: dict = {"adapter": str(adapter), "strategy": spec.strategy.name, "task": spec.task}
    if evaluate:
        data = task.saved_data(tokenizer, label_names)  # once, for both models
        before = _scores(task, model, tokenizer, data)
    merged = merged_copy(model)
    if dtype is not None:
        merged = merged.to(DTYPES[dtype])
    report["dtype"] = str(next(merged.parameters()).dtype).removeprefix("torch.")
    if evaluate:
        after = _scores(task, merged, tokenizer, data)
        report.update(_difference(task, before, after))
    write_model(merged, merged.state_dict(), tokenizer, label_names, (adapter / "tlscale_spec.yaml").read_text(),
                Path(output))
    write_json_atomic(Path(output) / "export.json", report)
    return report


def _scores(task, model, tokenizer, data) -> tuple[dict, object]:
    """The task's metrics, and its per-example outputs where the task exposes them (class probabilities)."""
    metrics = task.evaluate_saved(model, tokenizer, None, data)
    outputs = None
    if hasattr(task, "probabilities"):
        from accelerate import Accelerator

        outputs = task.probabilities(Accelerator(), model, data, tokenizer.pad_token_id)
    return metrics, outputs


def _difference(task, before: tuple[dict, object], after: tuple[dict, object]) -> dict:
    (a, a_out), (m, m_out) = before, after
    keys = [k for k in task.metrics if isinstance(a.get(k), float)]
    shown = [*keys, "num_examples"]
    difference = {k: m[k] - a[k] for k in keys}
    if a_out is not None:
        difference["max_abs_probability"] = (m_out - a_out).abs().max().item()
        difference["predictions_changed"] = int((m_out.argmax(-1) != a_out.argmax(-1)).sum())
    difference["num_examples"] = a.get("num_examples")
    return {"eval_adapter": {k: a.get(k) for k in shown}, "eval_merged": {k: m.get(k) for k in shown},
            "difference": difference}


__all__ = ["export_merged", "find_adapter", "load_adapter_model"]
