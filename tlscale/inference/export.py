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
    """(spec, model, tokenizer, label names): the base rebuilt as training built it (quantized for
    QLoRA), with the adapter loaded by plain peft on top."""
    from peft import PeftModel
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
    base = build_task(spec).build_model(TaskData(None, None, label_names), strategy.load_options())
    model = PeftModel.from_pretrained(base, adapter).eval()
    return spec, model, AutoTokenizer.from_pretrained(adapter), label_names


def export_merged(adapter: Path, output: Path, dtype: str | None = None, evaluate: bool = True) -> dict:
    """Merge (dequantizing a k-bit base first), write a save_pretrained folder, and report how the
    merged model's evaluation differs from the adapter-on-base one."""
    from tlscale.inference.evaluate import score_on_eval_data
    from tlscale.training.checkpoints import merged_copy, write_json_atomic, write_model

    adapter = find_adapter(adapter)
    if Path(output).resolve() in (adapter.resolve(), adapter.parent.resolve()):
        raise ConfigError(f"--output: '{output}' would overwrite the adapter or its run; choose a new folder")
    spec, model, tokenizer, label_names = load_adapter_model(adapter)
    report: dict = {"adapter": str(adapter), "strategy": spec.strategy.name}
    evaluate = evaluate and spec.task == "text_classification"  # other tasks: scored at the end of training
    if evaluate:
        *_, adapter_probs, adapter_metrics = score_on_eval_data(model, tokenizer, label_names, spec)
    merged = merged_copy(model)
    if dtype is not None:
        merged = merged.to(DTYPES[dtype])
    report["dtype"] = str(next(merged.parameters()).dtype).removeprefix("torch.")
    if evaluate:
        *_, merged_probs, merged_metrics = score_on_eval_data(merged, tokenizer, label_names, spec)
        report["eval_adapter"] = _headline(adapter_metrics)
        report["eval_merged"] = _headline(merged_metrics)
        report["difference"] = {
            **{key: merged_metrics[key] - adapter_metrics[key] for key in ("accuracy", "f1_macro", "loss")},
            "max_abs_probability": (merged_probs - adapter_probs).abs().max().item(),
            "predictions_changed": int((merged_probs.argmax(-1) != adapter_probs.argmax(-1)).sum()),
            "num_examples": adapter_metrics["num_examples"],
        }
    write_model(merged, merged.state_dict(), tokenizer, label_names, (adapter / "tlscale_spec.yaml").read_text(),
                Path(output))
    write_json_atomic(Path(output) / "export.json", report)
    return report


def _headline(metrics: dict) -> dict:
    return {key: metrics[key] for key in ("accuracy", "f1_macro", "loss", "num_examples")}


__all__ = ["export_merged", "find_adapter", "load_adapter_model"]
