"""extractive_qa: SQuAD-style span extraction over long contexts, scored like the official SQuAD scripts."""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Literal

from pydantic import Field, PositiveInt

from tlscale.data.batching import sequential_batches
from tlscale.data.qa import MAX_REPORTED, drop_misaligned, fingerprint, read_questions, split_by_article
from tlscale.data.qa_windows import make_windows
from tlscale.errors import DataError
from tlscale.eval.qa_evaluation import collate_windows, qa_metrics
from tlscale.spec.schema import TaskOptions
from tlscale.tasks.base import TASKS, Task, TaskData, gather_rows, seeded_sample

if TYPE_CHECKING:  # torch loads when a model runs, not when a spec or its data is checked
    import torch

PAD_LOGIT = -1e4


class QaOptions(TaskOptions):
    """extractive_qa: how contexts become windows and spans become answers."""

    doc_stride: PositiveInt = Field(128, description="Tokens of overlap between consecutive windows of a context.")
    n_best: PositiveInt = Field(20, description="Start and end candidates per window.")
    max_answer_tokens: PositiveInt = Field(30, description="Longest answer span, in tokens.")
    version: Literal["v1", "v2"] = Field("v1", description="v2: unanswerable questions and HasAns/NoAns scores.")
    null_threshold: float = Field(0.0, description="v2: answer '' when the no-answer score beats the best span "
                                  "by more than this.")
    train_articles: PositiveInt | None = Field(
        None, description="Without data.eval_file: the first N articles of a SQuAD JSON train, the rest evaluate.")

    def problems(self, spec) -> dict[str, str]:
        if self.doc_stride >= spec.model.max_length // 2:  # windows would advance by less than half their length
            return {"doc_stride": f"must be below model.max_length / 2 ({spec.model.max_length // 2}), found "
                                  f"{self.doc_stride}"}
        return {}


def question_split(spec) -> tuple[list, list, list[str]]:
    """(training questions, held-out questions, ids of misaligned answers left out of training): the eval
    file, or the training file split by article; data.limit / eval_limit samples."""
    questions = read_questions(spec.data.train_file)
    if spec.data.eval_file is not None:
        train, held_out = questions, read_questions(spec.data.eval_file)
    elif spec.qa.train_articles is not None:
        train, held_out = split_by_article(questions, spec.qa.train_articles)
    else:
        raise DataError("data.eval_file: extractive_qa needs an eval file, or qa.train_articles to split the "
                        "training file by article")
    if spec.qa.version == "v1":
        _refuse_unanswerable(train + held_out)
    train, skipped = drop_misaligned(train)
    if not train:
        raise DataError(f"{spec.data.train_file}: no training question has its answer at answer_start")
    train = seeded_sample(train, spec.data.limit, spec.seed)
    held_out = seeded_sample(held_out, spec.data.eval_limit, spec.seed)
    return train, held_out, skipped


def _refuse_unanswerable(questions: list) -> None:
    """qa.version v1 has no "no answer": an unanswerable question (empty answers in a flat file, is_impossible
    in SQuAD JSON) would train the model to point at nothing and be scored as never answered."""
    problems = [f"{q.where}: no answers (an unanswerable question), but qa.version is v1, where every question has "
                "an answer; set qa.version: v2 for unanswerable questions" for q in questions if not q.answers]
    if problems:
        more = len(problems) - MAX_REPORTED
        raise DataError(problems[:MAX_REPORTED] + ([f"... and {more} more unanswerable questions"] if more > 0 else []))


@TASKS.register("extractive_qa")
class ExtractiveQA(Task):
    name = "extractive_qa"
    auto_class = "AutoModelForQuestionAnswering"
    metrics = ("f1", "exact_match")
    headline_metrics = ("exact_match", "f1")
    options, options_key = QaOptions, "qa"

    def prepare(self, tokenizer) -> TaskData:
        spec, qa = self.spec, self.spec.qa
        train, held_out, skipped = question_split(spec)
        max_length = spec.model.max_length
        train_windows = make_windows(train, tokenizer, max_length, qa.doc_stride)
        eval_windows = make_windows(held_out, tokenizer, max_length, qa.doc_stride)
        notes = {"train_questions": len(train), "eval_questions": len(held_out),
                 "train_windows": len(train_windows), "eval_windows": len(eval_windows),
                 "skipped_misaligned": len(skipped), "skipped_ids": skipped[:20], "eval_sha256": fingerprint(held_out)}
        return TaskData(train_windows, eval_windows, None, 0, eval_items=held_out, notes=notes)

    def build_model(self, data: TaskData, load_options: dict):
        from tlscale.models.loading import build_qa_model

        return build_qa_model(self.spec.model, load_options)

    def collate(self, dataset, indices, pad_id):
        return collate_windows(dataset, indices, pad_id)

    def loss(self, model, batch):
        """transformers' span loss with padding left out: its softmax runs over every position of the padded
        batch, so the loss (and the gradient) would depend on how batches are padded and sharded over ranks."""
        import torch

        targets = {key: batch[key] for key in ("start_positions", "end_positions")}
        out = model(**{key: value for key, value in batch.items() if key not in targets})
        padding = batch["attention_mask"] == 0

        def span_loss(logits, positions):
            return torch.nn.functional.cross_entropy(logits.float().masked_fill(padding, PAD_LOGIT), positions)

        return (span_loss(out.start_logits, targets["start_positions"]) +
                span_loss(out.end_logits, targets["end_positions"])) / 2

    def evaluate(self, accelerator, model, data, run, pad_id, feature_cache=None, write_files=False) -> dict:
        import torch

        spec, qa, windows = self.spec, self.spec.qa, data.eval
        width = max(len(ids) for ids in windows.input_ids)

        @torch.no_grad()
        def score(indices):
            batch = collate_windows(windows, indices, pad_id, labels=False)
            index = batch.pop("index")
            out = model(**{k: v.to(accelerator.device) for k, v in batch.items()})
            rows = torch.full((len(indices), 2 * width), PAD_LOGIT)
            n = out.start_logits.shape[1]
            rows[:, :n] = out.start_logits.float().cpu()
            rows[:, width:width + n] = out.end_logits.float().cpu()
            return index, rows

        was_training = model.training
        model.eval()
        batches = sequential_batches([len(ids) for ids in windows.input_ids], spec.eval.batch_size)
        rows = gather_rows(accelerator, score, batches, len(windows))
        model.train(was_training)
        logits = {i: (rows[i, :len(windows.input_ids[i])], rows[i, width:width + len(windows.input_ids[i])])
                  for i in range(len(windows))}
        questions = data.eval_items
        metrics, answers = qa_metrics(questions, windows, logits, qa.version, qa.n_best, qa.max_answer_tokens,
                                      qa.null_threshold)
        metrics.update({"num_examples": len(questions), "windows": len(windows)})
        if write_files and accelerator.is_main_process and spec.eval.predictions:
            with open(run.path / "predictions.jsonl", "w") as out:
                for q in questions:
                    out.write(json.dumps({"id": q.id, "question": q.question, "prediction": answers[q.id],
                                          "answers": q.answers, "where": q.where}) + "\n")
        return metrics

    def headline(self, metrics: dict) -> str:
        return (f"eval exact match {metrics['exact_match']:.2f}  F1 {metrics['f1']:.2f}  "
                f"({metrics['num_examples']} questions, {metrics['windows']} windows)")

    @classmethod
    def predict_file(cls, checkpoint, trained, input_file, output_file, options) -> int:
        """The best answer span for each question of a SQuAD JSON or flat jsonl/csv file (gold answers
        optional), with the window settings the model was trained with."""
        import torch

        from pathlib import Path

        from tlscale.eval.qa_answers import best_answers
        from tlscale.eval.qa_evaluation import window_logits
        from tlscale.files import write_jsonl_atomic
        from tlscale.models.saved import load_task_model
        qa = QaOptions(**trained.get("qa", {}))
        model, tokenizer = load_task_model(checkpoint, cls.auto_class)
        max_length = trained.get("model", {}).get("max_length", 384)
        questions = read_questions(Path(input_file), need_answers=False)
        windows = make_windows(questions, tokenizer, max_length, qa.doc_stride)
        logits = window_logits(model, windows, list(range(len(windows))), tokenizer.pad_token_id,
                               options.get("batch_size", 64), torch.device("cpu"),
                               accepts_token_types="token_type_ids" in tokenizer.model_input_names)
        answers = best_answers(questions, windows, [logits[i][0] for i in range(len(windows))],
                               [logits[i][1] for i in range(len(windows))], n_best=qa.n_best,
                               max_answer_tokens=qa.max_answer_tokens,
                               null_threshold=qa.null_threshold if qa.version == "v2" else None)
        rows = [{"id": q.id, "question": q.question, "answer": answers[q.id], "source": q.where} for q in questions]
        write_jsonl_atomic(Path(output_file), rows)
        return len(rows)
