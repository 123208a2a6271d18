"""Knowledge distillation for text_classification: the student learns from gold labels and from a teacher's
soft labels, on a transfer set of the labelled examples plus unlabelled text.

loss = alpha * CE(gold) + (1 - alpha) * T^2 * KL(teacher_T || student_T)  [+ hidden_weight * (1 - cos)]
(Hinton et al. 2015; DistilBERT's cosine term on the pooled features). Unlabelled texts get only the
teacher's terms. Teacher outputs are computed once per (teacher, texts, max_length) and cached on disk, so
epochs, ranks and later students of the same teacher (other seeds, budgets) reuse them. Self-training keeps
only the unlabelled texts a (few-shot) teacher is surest of, balanced over classes (select_per_class).
"""
from __future__ import annotations

import hashlib
import json
import os
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field, PositiveInt

from tlscale.data.batching import Encoded, no_grad, sequential_batches
from tlscale.data.classification import Examples, read_examples
from tlscale.errors import ConfigError, DataError
from tlscale.files import cache_root
from tlscale.registry import Registry
from tlscale.spec.schema import TaskOptions, UserPath

if TYPE_CHECKING:  # torch loads when a model runs, not when a spec or its data is checked
    import torch

UNLABELLED = -100  # the label of a transfer text without one: only the teacher's terms train on it
# Teachers scored by a layer above this one: "fewshot" (tlscale.fewshot.teacher, registered by tlscale.runners):
# (run folder, transfer examples, student spec, want_features) -> {"log_probs", "label_names"}
TEACHER_SCORERS: Registry = Registry("distillation teacher")
# Teachers a ladder will have run before this student trains (its cells are planned before any runs)
PLANNED_TEACHERS: ContextVar[frozenset[Path]] = ContextVar("PLANNED_TEACHERS", default=frozenset())


class DistillOptions(TaskOptions):
    """text_classification `distill:` learn from one or more teachers as well as from the labels."""

    teacher: list[UserPath] = Field(
        [], description="Teachers: tlscale run folders, saved classifier folders (a tlscale model or any "
        "transformers *ForSequenceClassification), or JSONL files of soft labels, one row per transfer text: "
        "{\"text\": ..., \"probabilities\": {label: p}} (what `tlscale predict` writes, e.g. for a prompted LLM's "
        "labels), or a `tlscale fewshot` run folder of one seed (its method is fitted again on that seed's "
        "labelled examples and labels the transfer texts: self-training). Several: their probabilities are "
        "averaged (an ensemble). Empty: no distillation.")
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="Weight of the cross-entropy on gold labels; 1 - alpha "
                         "weighs matching the teacher (T^2 * KL at temperature T). 0: the teacher only.")
    temperature: float = Field(2.0, gt=0.0, le=100.0, description="Softens teacher and student distributions "
                               "alike before the KL term (Hinton et al.); 1 keeps them as they are.")
    unlabeled_file: UserPath | None = Field(
        None, description="More transfer text without labels (data's text columns; a label column is ignored). "
        "Texts of the evaluation set or already labelled are skipped.")
    unlabeled_limit: PositiveInt | None = Field(None, description="A seeded sample of this many unlabelled texts.")
    unlabeled_min_words: int = Field(0, ge=0, le=10_000, description="Only unlabelled texts of at least this many "
                                     "words (before unlabeled_limit samples): a corpus of phrases, such as SST-2's "
                                     "training file, would otherwise fill a selection with short, easy ones.")
    hidden_weight: float = Field(0.0, ge=0.0, le=100.0, description="Weight of a cosine term between the "
                                 "student's and the teacher's pooled features (a tlscale teacher of the same "
                                 "hidden size, e.g. a student built with model.keep_layers from it). 0: off.")
    select_per_class: PositiveInt | None = Field(
        None, description="Self-training's selection (Du et al. 2021): of the unlabelled texts keep, for each "
        "class, the N the teacher gives that class most surely (its prediction, ranked by probability), so "
        "the student learns from balanced and surer soft labels. None: every unlabelled text.")
    batch_size: PositiveInt = Field(64, le=65_536, description="Texts per teacher forward pass (computed once).")

    @property
    def enabled(self) -> bool:
        return bool(self.teacher)

    def problems(self, spec) -> dict[str, str]:
        if not self.enabled:
            named = [k for k in ("unlabeled_file", "unlabeled_limit", "unlabeled_min_words", "select_per_class")
                     if getattr(self, k)]
            return {named[0]: "needs distill.teacher: unlabelled text only trains through a teacher"} if named else {}
        missing = [str(p) for p in self.teacher if not p.exists() and p not in PLANNED_TEACHERS.get()]
        if missing:
            return {"teacher": f"expected run folders, model folders or .jsonl files; found nothing at "
                               f"{', '.join(missing)}"}
        fewshot = [p for p in self.teacher if is_fewshot_run(p)]
        if fewshot and self.hidden_weight:
            return {"hidden_weight": f"needs model teachers; '{fewshot[0]}' is a few-shot run"}
        for run in fewshot:
            if problem := one_seed_problem(run):
                return {"teacher": problem}
        for key in ("unlabeled_min_words", "select_per_class"):
            if getattr(self, key) and self.unlabeled_file is None:
                return {key: "selects among unlabelled texts; set distill.unlabeled_file"}
        if self.unlabeled_file is not None and not self.unlabeled_file.is_file():
            return {"unlabeled_file": f"expected a file of texts; found nothing at {self.unlabeled_file}"}
        if spec.strategy.name == "feature_extraction":
            return {"teacher": "distillation trains the student's encoder, which strategy feature_extraction "
                               "freezes; found strategy feature_extraction (use full, partial, lora, ...)"}
        if self.hidden_weight and any(p.suffix == ".jsonl" for p in self.teacher):
            return {"hidden_weight": "needs model teachers (a soft-label file has no features)"}
        return {}


@dataclass
class TransferSet(Encoded):
    """The student's training data: tokens, gold labels (UNLABELLED for unlabelled texts), the teacher's
    log-probabilities at T=1 and, for hidden matching, its pooled features."""
    teacher_log_probs: torch.Tensor | None = None
    teacher_features: torch.Tensor | None = None


def transfer_examples(spec, labelled: Examples, eval_examples: Examples) -> tuple[Examples, dict]:
    """The labelled examples followed by the unlabelled texts (eval texts and repeats of labelled ones left
    out, so the student never trains on the inputs it is scored on)."""
    options = spec.distill
    if options.unlabeled_file is None:
        return labelled, {"unlabeled": 0}
    from tlscale.data.classification import sample

    unlabeled = read_examples(options.unlabeled_file, spec.data, need_label=False)
    seen = {(t, p) for t, p in zip(eval_examples.texts, eval_examples.pairs or [None] * len(eval_examples))}
    seen |= {(t, p) for t, p in zip(labelled.texts, labelled.pairs or [None] * len(labelled))}
    pairs = unlabeled.pairs or [None] * len(unlabeled)
    keep = [i for i, key in enumerate(zip(unlabeled.texts, pairs)) if key not in seen]
    skipped = len(unlabeled) - len(keep)
    short = 0
    if options.unlabeled_min_words:
        long = [i for i in keep if len(unlabeled.texts[i].split()) >= options.unlabeled_min_words]
        keep, short = long, len(keep) - len(long)
    unlabeled = sample(unlabeled.subset(keep), options.unlabeled_limit, spec.seed)
    merged = Examples(labelled.texts + unlabeled.texts,
                      labelled.pairs + unlabeled.pairs if labelled.pairs is not None else None,
                      labelled.raw_labels + [None] * len(unlabeled), labelled.where + unlabeled.where,
                      list(labelled.labels) + [UNLABELLED] * len(unlabeled))
    facts = {"unlabeled": len(unlabeled), "unlabeled_skipped_as_eval_or_labelled": skipped}
    return merged, {**facts, "unlabeled_shorter_than_min_words": short} if options.unlabeled_min_words else facts


@dataclass
class Teaching:
    """Every teacher's outputs on the transfer texts, averaged: log-probabilities at T=1 (N, classes) and, for
    hidden matching, pooled features (N, hidden)."""
    log_probs: torch.Tensor
    features: torch.Tensor | None

    def subset(self, indices: list[int]) -> Teaching:
        return Teaching(self.log_probs[indices], self.features[indices] if self.features is not None else None)


def teach(examples: Examples, spec, label_names: list[str]) -> tuple[Teaching, dict]:
    """Every teacher's outputs on the transfer texts (cached), averaged over teachers, and their lineage."""
    import torch

    options = spec.distill
    log_probs, features, lineage = [], [], []
    for teacher in options.teacher:
        outputs, facts = teacher_outputs(teacher, examples, spec, label_names, want_features=options.hidden_weight > 0)
        log_probs.append(outputs["log_probs"])
        if "features" in outputs:
            features.append(outputs["features"])
        lineage.append(facts)
    mean = torch.logsumexp(torch.stack(log_probs), dim=0) - torch.log(torch.tensor(float(len(log_probs))))
    labelled = [i for i, y in enumerate(examples.labels) if y != UNLABELLED]
    agree = (mean[labelled].argmax(1) == torch.tensor([examples.labels[i] for i in labelled])).float().mean()
    return (Teaching(mean, torch.stack(features).mean(0) if features else None),
            {"teachers": lineage, "teacher_train_accuracy": round(float(agree), 4) if labelled else None})


def select_confident(examples: Examples, teaching: Teaching, per_class: int | None, label_names: list[str]
                     ) -> tuple[Examples, Teaching, dict]:
    """The labelled examples and, of the unlabelled texts, the `per_class` the teacher is surest of for each
    class it predicts. A class the teacher predicts less often keeps fewer (counted in the facts)."""
    if per_class is None:
        return examples, teaching, {}
    labelled = [i for i, y in enumerate(examples.labels) if y != UNLABELLED]
    unlabelled = [i for i, y in enumerate(examples.labels) if y == UNLABELLED]
    probs = teaching.log_probs[unlabelled].exp()
    confidence, predicted = probs.max(1)
    keep, kept = [], {}
    for c, name in enumerate(label_names):
        mine = (predicted == c).nonzero().flatten()
        best = mine[confidence[mine].argsort(descending=True, stable=True)[:per_class]]  # same on every rank
        keep += [unlabelled[i] for i in best.tolist()]
        surest = round(float(confidence[best].min()), 4) if len(best) else None
        kept[name] = {"texts": len(best), "min_probability": surest}
    chosen = labelled + sorted(keep)
    return examples.subset(chosen), teaching.subset(chosen), {"selected": kept}


def transfer_set(encoded: Encoded, teaching: Teaching) -> TransferSet:
    return TransferSet(encoded.input_ids, encoded.token_type_ids, encoded.labels, encoded.truncated,
                       teacher_log_probs=teaching.log_probs, teacher_features=teaching.features)


def collate_with_teacher(batch: dict, data: TransferSet, indices: list[int]) -> dict:
    batch["teacher_log_probs"] = data.teacher_log_probs[indices]
    if data.teacher_features is not None:
        batch["teacher_features"] = data.teacher_features[indices]
    return batch


def distillation_loss(model, batch: dict, options: DistillOptions) -> torch.Tensor:
    """Mean over the batch's texts of alpha * CE (labelled ones) + (1 - alpha) * T^2 * KL (+ cosine term)."""
    import torch
    import torch.nn.functional as F

    teacher = batch.pop("teacher_log_probs").float()
    teacher_features = batch.pop("teacher_features", None)
    labels = batch.pop("labels")
    out = model(**batch, output_hidden_states=teacher_features is not None)
    logits = out.logits.float()
    T = options.temperature
    target = F.log_softmax(teacher / T, dim=-1)
    kl = F.kl_div(F.log_softmax(logits / T, dim=-1), target, log_target=True, reduction="none").sum(-1)
    labelled = labels != UNLABELLED
    ce = torch.zeros_like(kl)
    if labelled.any():
        ce[labelled] = F.cross_entropy(logits[labelled], labels[labelled], reduction="none")
    loss = options.alpha * ce + (1 - options.alpha) * T * T * kl
    if teacher_features is not None:
        student = out.hidden_states[-1].float()
        loss = loss + options.hidden_weight * (1 - F.cosine_similarity(student, teacher_features.float(), dim=-1))
    return loss.mean()


# --- teachers ---------------------------------------------------------------------------------------------------

def teacher_outputs(teacher: Path, examples: Examples, spec, label_names: list[str], want_features: bool):
    """{"log_probs": (N, classes) in the student's label order[, "features": (N, hidden)]}, and the facts
    metrics.json records about this teacher."""
    if teacher.suffix == ".jsonl":
        return soft_label_file(teacher, examples, label_names), {"soft_labels": str(teacher)}
    if is_fewshot_run(teacher):
        if problem := one_seed_problem(teacher):  # (the scorer loads its spec)
            raise ConfigError(f"distill.teacher: {problem}")
        folder, facts = teacher, fewshot_facts(teacher)
        rerun = str((teacher / "metrics.json").stat().st_mtime_ns).encode()  # (its data may have changed)
        key = cache_key(folder, examples, 0, False, extra=(teacher / "spec.yaml").read_bytes() + rerun)
        score = TEACHER_SCORERS.get("fewshot", field="distill.teacher")
    else:
        folder, facts = model_folder(teacher)
        key = cache_key(folder, examples, spec.model.max_length, want_features)
        score = score_with_model
    cached = cache_dir() / f"{key}.pt"
    import torch

    if cached.is_file():
        outputs = torch.load(cached)
        facts["cache"] = "reused"
    else:
        outputs = score(folder, examples, spec, want_features)
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        torch.save(outputs, tmp)
        tmp.replace(cached)  # atomic: ranks computing it at once write the same values
        facts["cache"] = "computed"
    facts["cache_file"] = str(cached)
    order = [outputs["label_names"].index(name) for name in _matching_labels(outputs["label_names"], label_names,
                                                                              teacher)]
    result = {"log_probs": outputs["log_probs"][:, order]}
    if want_features:
        result["features"] = outputs["features"]
    return result, facts


def model_folder(teacher: Path) -> tuple[Path, dict]:
    """A run folder's saved model, or the folder itself; facts for the lineage."""
    facts: dict = {"teacher": str(teacher)}
    if (teacher / "metrics.json").is_file() and (teacher / "model" / "config.json").is_file():
        metrics = json.loads((teacher / "metrics.json").read_text())
        facts["run_eval"] = {k: v for k, v in metrics.get("eval", {}).items() if k in ("accuracy", "f1_macro")}
        teacher = teacher / "model"
    if not (teacher / "config.json").is_file():
        raise ConfigError(f"distill.teacher: '{teacher}' is neither a tlscale run folder (trained or few-shot), a "
                          "saved model folder (config.json) nor a .jsonl file of soft labels")
    return teacher, facts


def cache_dir() -> Path:
    return cache_root() / "teacher"


def cache_key(folder: Path, examples: Examples, max_length: int, features: bool, extra: bytes = b"") -> str:
    """Changes with the teacher's weights (their files' sizes and times), the texts and the length (and, for a
    few-shot teacher, its spec)."""
    digest = hashlib.sha256(f"{folder.resolve()}|{max_length}|{features}".encode() + extra)
    for weights in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        stat = weights.stat()
        digest.update(f"{weights.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    for i, text in enumerate(examples.texts):
        digest.update(text.encode() + b"\x00" + (examples.pairs[i].encode() if examples.pairs else b"") + b"\x01")
    return digest.hexdigest()[:32]


@no_grad
def score_with_model(folder: Path, examples: Examples, spec, want_features: bool) -> dict:
    """The teacher's log-probabilities (and pooled features) of every transfer text, with its own tokenizer."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tlscale.data.batching import collate, tokenize
    from tlscale.models import load_trained_classifier

    if not _is_plain(folder):
        model, tokenizer, names = load_trained_classifier(folder)
    else:
        if want_features:
            raise ConfigError(f"distill.hidden_weight: teacher '{folder}' is not a tlscale classifier; its pooled "
                              "features are unknown (set hidden_weight: 0)")
        model = AutoModelForSequenceClassification.from_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    model.eval()
    encoded = tokenize(examples, tokenizer, spec.model.max_length)
    encoded.labels = []
    log_probs = torch.empty(len(examples), len(names))
    features = None
    for indices in sequential_batches([len(ids) for ids in encoded.input_ids], spec.distill.batch_size):
        batch = collate(encoded, indices, tokenizer.pad_token_id or 0)
        batch.pop("index")
        if want_features:
            pooled = model.features(**batch)
            logits = model(features=pooled).logits
            if features is None:
                features = torch.empty(len(examples), pooled.shape[1])
            features[indices] = pooled.float()
        else:
            logits = model(**batch).logits
        log_probs[indices] = torch.log_softmax(logits.float(), dim=-1)
    outputs = {"log_probs": log_probs, "label_names": names}
    if features is not None:
        outputs["features"] = features
    return outputs


def is_fewshot_run(path: Path) -> bool:
    """A `tlscale fewshot` run folder: its metrics name the method (a trained run's name a strategy)."""
    if not (path / "metrics.json").is_file() or (path / "model").exists():
        return False
    try:
        return "method" in json.loads((path / "metrics.json").read_text())
    except ValueError:
        return False


def fewshot_spec(folder: Path):
    """The few-shot run's spec; one seed (the classifier it names), text classification."""
    from tlscale.spec.loading import load_spec

    if problem := one_seed_problem(folder):
        raise ConfigError(f"distill.teacher: {problem}")
    return load_spec(folder / "spec.yaml")


def one_seed_problem(folder: Path) -> str | None:
    """Why a few-shot run cannot teach, if it cannot: a teacher is one seed's text classifier."""
    import yaml

    if not (folder / "spec.yaml").is_file():
        return (f"'{folder}' is a few-shot run from a tlscale that did not keep its spec.yaml; run `tlscale "
                "fewshot` again with --overwrite")
    raw = yaml.safe_load((folder / "spec.yaml").read_text()) or {}
    seeds = (raw.get("fewshot") or {}).get("seeds") or []
    if raw.get("task") != "text_classification":
        return f"'{folder}' is a {raw.get('task')} few-shot run; a teacher classifies text"
    if len(seeds) != 1:
        return (f"few-shot run '{folder}' ran seeds {seeds}; a teacher is one seed's classifier: run it with "
                "fewshot.seeds=[S]")
    return None


def fewshot_facts(folder: Path) -> dict:
    metrics = json.loads((folder / "metrics.json").read_text())
    return {"teacher": str(folder), "fewshot_method": metrics["method"],
            "run_eval": {k: v for k, v in metrics.get("eval", {}).items() if k in ("accuracy", "f1_macro")}}


def _is_plain(folder: Path) -> bool:
    """A transformers classifier (not a tlscale PooledSequenceClassifier, which carries its own code)."""
    config = json.loads((folder / "config.json").read_text())
    return "PooledSequenceClassifier" not in (config.get("architectures") or [])


def _matching_labels(teacher_names: list[str], names: list[str], teacher: Path) -> list[str]:
    """The teacher's label names in the student's order. A teacher with generic names (LABEL_0, ...) and as
    many classes is taken in order."""
    if set(names) <= set(teacher_names):
        return names
    if len(teacher_names) == len(names) and all(n == f"LABEL_{i}" for i, n in enumerate(teacher_names)):
        return teacher_names
    raise ConfigError(f"distill.teacher: '{teacher}' predicts labels {teacher_names}; the student's data has "
                      f"{names}; a teacher must know every label of the student")


def soft_label_file(path: Path, examples: Examples, label_names: list[str]):
    """A JSONL teacher: a row per transfer text with its probabilities; every transfer text must have one."""
    import math

    import torch

    rows: dict[tuple, list[float]] = {}
    with path.open() as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                probs = [float(row["probabilities"][name]) for name in label_names]
                key = (row["text"], row.get("text_pair"))
            except (ValueError, KeyError, TypeError) as exc:
                raise DataError(f"{path}:{number}: expected {{\"text\": ..., \"probabilities\": {{label: p}}}} with "
                                f"every label of {label_names}; {type(exc).__name__}: {exc}") from None
            if any(p < 0 or not math.isfinite(p) for p in probs) or sum(probs) <= 0:
                raise DataError(f"{path}:{number}: probabilities must be finite, non-negative and not all 0")
            rows[key] = probs
    pairs = examples.pairs or [None] * len(examples)
    missing = [i for i, key in enumerate(zip(examples.texts, pairs)) if key not in rows]
    if missing:
        raise DataError(f"{path}: no soft labels for {len(missing)} of {len(examples)} transfer texts, e.g. "
                        f"{examples.where[missing[0]]}: {examples.texts[missing[0]][:80]!r}")
    table = torch.tensor([rows[key] for key in zip(examples.texts, pairs)])
    return {"log_probs": torch.log((table / table.sum(1, keepdim=True)).clamp_min(1e-12))}
