"""`tlscale fewshot SPEC`: every seed draws its labelled examples from the training data, a method turns
them into predictions on the evaluation data, and the shared evaluator scores them; metrics.json holds
per-seed figures and their mean and standard deviation in the schema of trained runs (`eval.accuracy`, ...)."""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from tlscale.errors import ConfigError
from tlscale.spec import JobSpec
from tlscale.files import write_json_atomic, write_jsonl_atomic, write_text_atomic



def run_fewshot(spec: JobSpec, overwrite: bool = False, log=print) -> dict:
    if spec.fewshot is None:
        raise ConfigError("fewshot: the spec has no fewshot section; add one (see `tlscale schema`)")
    from tlscale.run_folder import claim

    out = Path(spec.output_dir)
    if (out / "model").exists() or (out / "checkpoints").exists():
        raise ConfigError(f"output_dir: '{out}' holds a training run; give the few-shot job its own output_dir")
    with claim(out, overwrite=overwrite) as run_claim:
        from tlscale.spec.loading import dump_spec

        metrics = _run_seeds(spec, out, log)
        write_text_atomic(out / "spec.yaml", dump_spec(spec))  # what refits it (a distillation teacher)
        run_claim.succeeded()
    return metrics


def _run_seeds(spec: JobSpec, out: Path, log) -> dict:
    from tlscale.fewshot import encoders  # noqa: F401  (registers the encoder methods)
    from tlscale.fewshot.methods import METHODS

    method = METHODS.get(spec.fewshot.method, field="fewshot.method")(spec)
    started = time.perf_counter()
    per_seed: dict[str, dict] = {}
    prompts_seen = []
    for seed in spec.fewshot.seeds:
        seed_started = time.perf_counter()
        result = method.run(seed)
        result.metrics["seconds"] = round(time.perf_counter() - seed_started, 2)
        per_seed[str(seed)] = result.metrics
        prompts_seen += [{"seed": seed, "prompt": p} for p in result.prompts[:3]]
        if spec.eval.predictions:
            write_jsonl_atomic(out / f"predictions-seed{seed}.jsonl", result.predictions)
        log(f"seed {seed}: " + "  ".join(f"{k} {result.metrics[k]:.4f}" for k in headline_metrics(spec.task)
                                           if k in result.metrics))
    summary = summarize(per_seed, headline_metrics(spec.task))
    metrics = {"task": spec.task, "method": spec.fewshot.method, "model": spec.model.name_or_path,
               "fewshot": spec.fewshot.model_dump(mode="json"), "eval": summary, "seeds": per_seed,
               "data": method.data_notes, "seconds": round(time.perf_counter() - started, 2)}
    if prompts_seen:
        write_jsonl_atomic(out / "prompts.jsonl", prompts_seen)
    write_json_atomic(out / "metrics.json", metrics)
    return metrics


def summarize(per_seed: dict[str, dict], headline: tuple[str, ...]) -> dict:
    """Mean of every number the seeds share, plus the sample standard deviation (n-1) of the headline ones."""
    seeds = list(per_seed.values())
    summary = {"seeds": len(seeds)}
    for key, value in seeds[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and all(key in s for s in seeds):
            values = [float(s[key]) for s in seeds]
            mean = sum(values) / len(values)
            summary[key] = seeds[0][key] if len(set(values)) == 1 else mean  # counts stay counts
            if key in headline:
                summary[f"{key}_std"] = (math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
                                         if len(values) > 1 else 0.0)
    return summary


def results_table(metrics: dict):
    """A rich table: one row per seed, then mean ± std."""
    from rich.table import Table

    keys = [k for k in headline_metrics(metrics["task"]) if k in metrics["eval"]]
    seeds = metrics["eval"]["seeds"]
    table = Table(title=f"{metrics['method']} on {metrics['model']} ({metrics['task']}, "
                        f"k={metrics['fewshot']['k']}, {seeds} seed{'s' if seeds != 1 else ''})", title_justify="left")
    table.add_column("seed")
    for key in keys:
        table.add_column(key, justify="right")
    for seed, values in metrics["seeds"].items():
        table.add_row(seed, *(f"{values[k]:.4f}" for k in keys))
    if seeds > 1:  # (one seed has no spread to show)
        table.add_row("mean ± std", *(f"{metrics['eval'][k]:.4f} ± {metrics['eval'][k + '_std']:.4f}" for k in keys),
                      style="bold")
    return table


def headline_metrics(task: str) -> tuple[str, ...]:
    from tlscale.tasks import TASKS

    return TASKS.get(task, field="task").headline_metrics


def label_file(spec: JobSpec, input_file: Path, output_file: Path, log=print) -> int:
    """`tlscale fewshot SPEC --label FILE --output OUT.jsonl`: the few-shot method's label probabilities for every
    row of FILE (data's text columns; no labels needed), fitted on (or prompted with) the first seed's labelled
    examples, as the JSONL soft labels a distillation teacher reads (`distill.teacher: [OUT.jsonl]`): a prompted
    LLM, or an encoder baseline trained on k per class whose labels a student learns from (self-training).
    Returns the row count."""
    if spec.fewshot is None or spec.task != "text_classification":
        raise ConfigError("--label: labels a file with a few-shot classifier; needs task text_classification and a "
                          "fewshot section")
    from tlscale.data.classification import read_examples
    from tlscale.eval import write_predictions
    from tlscale.fewshot.methods import METHODS  # (the package registers every built-in method)

    examples = read_examples(Path(input_file), spec.data, need_label=False)
    method = METHODS.get(spec.fewshot.method, field="fewshot.method")(spec)
    seed = spec.fewshot.seeds[0]
    started = time.perf_counter()
    probs = method.label_probabilities(examples, seed)
    write_predictions(Path(output_file), examples.texts, probs, method.label_names, None, examples.where)
    if spec.fewshot.method == "prompt":
        how = (f"{spec.fewshot.k} demonstrations{' per class' if spec.fewshot.k_per == 'class' else ''}, "
               f"{method.truncated} prompts cut to fit")
    else:
        how = f"{spec.fewshot.method} on {spec.fewshot.k} labelled examples per class"
    log(f"labelled {len(examples)} rows of {input_file} in {time.perf_counter() - started:.0f} s (seed {seed}, {how})")
    return len(examples)
