"""Few-shot methods: prompting a causal LM (rank classification by label-word log-likelihood, or generated
answers for extractive QA). Encoder baselines live in fewshot/encoders.py. A method loads its data and
model once; run(seed) draws that seed's examples and returns predictions scored by the shared evaluators."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tlscale.data.causal_lm import prompt_ids
from tlscale.fewshot.calibration import calibrate, content_free_distribution
from tlscale.fewshot.prompts import Template, verbalize
from tlscale.registry import Registry
from tlscale.fewshot.scoring import label_log_scores, shared_prefix_scores, tokenize_choices
from tlscale.fewshot.selection import SELECTIONS, Demonstrations, sentence_encoder

METHODS: Registry = Registry("fewshot method")  # prompt, linear_probe, setfit


def probabilities_rows(texts: list[str], probs: torch.Tensor, label_names: list[str], gold: list[int]) -> list[dict]:
    return [{"text": text, "label": label_names[int(p.argmax())], "gold": label_names[g],
             "probabilities": {n: round(float(v), 6) for n, v in zip(label_names, p)}}
            for text, p, g in zip(texts, probs, gold)]


ENCODER_TYPES = {"bert", "roberta", "distilbert", "electra", "deberta", "deberta-v2", "xlm-roberta", "albert",
                 "mpnet", "camembert", "ernie", "modernbert"}


def refuse_encoders(name_or_path: str) -> None:
    """transformers would bolt a random LM head onto an encoder and prompting would score noise."""
    from transformers import AutoConfig

    from tlscale.errors import ConfigError
    from tlscale.models.loading import resolve_model_path

    model_type = AutoConfig.from_pretrained(resolve_model_path(name_or_path)).model_type
    if model_type in ENCODER_TYPES:
        raise ConfigError(f"model.name_or_path: fewshot.method 'prompt' needs a causal (GPT-class) language model, "
                          f"and '{name_or_path}' is a {model_type} encoder; use method linear_probe or setfit with it")


@dataclass
class SeedResult:
    metrics: dict
    predictions: list[dict]
    prompts: list[str] = field(default_factory=list)


class ClassificationMethod:
    """Reads the classification data once: demonstrations and training sets come from data.train only."""

    def __init__(self, spec):
        from tlscale.data.classification import build_classification_data, fingerprint

        self.spec, self.fewshot = spec, spec.fewshot
        self.data = build_classification_data(spec.data, spec.seed)
        self.label_names = self.data.label_names
        self.gold = torch.tensor(self.data.eval.labels)
        self.data_notes = {"train_examples": len(self.data.train), "eval_examples": len(self.data.eval),
                           "labels": self.label_names, "eval_sha256": fingerprint(self.data.eval, self.label_names)}

    def label_probabilities(self, examples, seed: int) -> torch.Tensor:
        """(examples, labels) probabilities of any examples with the seed's labelled data, for `tlscale fewshot
        --label` (a distillation teacher's soft labels)."""
        from tlscale.errors import ConfigError

        raise ConfigError(f"--label: fewshot.method '{self.fewshot.method}' cannot label a file")

    def score(self, probs: torch.Tensor, extra: dict | None = None) -> tuple[dict, list[dict]]:
        from tlscale.eval import classification_metrics

        metrics = classification_metrics(probs, self.gold, self.label_names, self.spec.eval.calibration_bins)
        rows = probabilities_rows(self.data.eval.texts, probs, self.label_names, self.data.eval.labels)
        return {**metrics, **(extra or {})}, rows


class Prompting:
    """What prompting a causal LM needs whatever the task: the model, its tokenizer, the template."""

    def load(self, spec):
        from tlscale.models import load_tokenizer
        from tlscale.models.loading import build_causal_lm

        refuse_encoders(spec.model.name_or_path)
        self.model = build_causal_lm(spec.model).eval()
        self.tokenizer = load_tokenizer(spec.model)
        self.template = Template(spec.fewshot.template, spec.fewshot.separator, spec.fewshot.instruction)
        self.truncated = 0
        self._embed = None
        config = self.model.config
        positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        self.max_tokens = min(spec.model.max_length, positions or spec.model.max_length)

    def embed(self, texts: list[str]) -> torch.Tensor:
        if self._embed is None:
            self._embed = sentence_encoder(self.spec.fewshot.encoder)
        return self._embed(texts)

    def ids(self, prompt: str, room: int) -> list[int]:
        """Prompt tokens, cut from the left (the oldest demonstrations) to leave `room` tokens within
        model.max_length and the model's positions; cuts are counted."""
        ids = prompt_ids(self.tokenizer, prompt)
        limit = self.max_tokens - room
        if len(ids) > limit:
            self.truncated += 1
            ids = ids[len(ids) - limit:]
        return ids


class PromptClassification(ClassificationMethod, Prompting):
    def __init__(self, spec):
        super().__init__(spec)
        self.load(spec)
        self.words = verbalize(self.label_names, self.fewshot.verbalizer)
        prefix = self.template.answer_prefix()
        self.choices = tokenize_choices(self.tokenizer, [prefix + w for group in self.words for w in group])
        self.selection = SELECTIONS.get(self.fewshot.selection, field="fewshot.selection")(
            self.fewshot, self.data.train.labels, len(self.label_names), str(spec.data.train_file))

    def fields(self, examples, i: int) -> dict:
        return {"text": examples.texts[i], "text_pair": examples.pairs[i] if examples.pairs else ""}

    def demonstrations(self, seed: int, queries: list[str] | None = None) -> Demonstrations:
        """The seed's demonstrations for each query text (default: the evaluation texts)."""
        if self.fewshot.k == 0:
            return Demonstrations(fixed=[])
        train = self.data.train
        pool = self.selection.pool(seed)
        return self.selection.choose(pool, seed, self.embed, texts=train.texts,
                                     queries=self.data.eval.texts if queries is None else queries)

    def prompt(self, demos: list[int], query: dict) -> str:
        train = self.data.train
        shown = [(self.fields(train, j), self.words[train.labels[j]][0]) for j in demos]
        return self.template.render(shown, query)

    def label_scores(self, prompts: list[str]) -> torch.Tensor:
        room = max(len(c) for c in self.choices)
        ids = [self.ids(p, room) for p in prompts]
        scores = shared_prefix_scores(self.model, ids, self.choices, self.fewshot.batch_size,
                                      self.tokenizer.pad_token_id)
        return label_log_scores(scores, [len(g) for g in self.words], self.fewshot.score)

    def run(self, seed: int) -> SeedResult:
        probs, log_scores, prompts = self.probabilities(self.data.eval, seed)
        extra = {"prompts_truncated": self.truncated}
        if self.fewshot.calibration == "contextual":
            extra["uncalibrated_accuracy"] = (log_scores.argmax(1) == self.gold).float().mean().item()
        metrics, rows = self.score(probs, extra)
        return SeedResult(metrics, rows, prompts)

    def label_probabilities(self, examples, seed: int) -> torch.Tensor:
        return self.probabilities(examples, seed)[0]

    def probabilities(self, examples, seed: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """(label probabilities, raw label log-scores, prompts) of any examples, with the seed's
        demonstrations from the training data: the eval set, or a file to label (`tlscale fewshot --label`)."""
        demos = self.demonstrations(seed, examples.texts)
        prompts = [self.prompt(demos.for_input(i), self.fields(examples, i)) for i in range(len(examples))]
        self.truncated = 0
        log_scores = self.label_scores(prompts)
        if self.fewshot.calibration == "contextual":
            return self.calibrated(log_scores, demos), log_scores, prompts
        return torch.softmax(log_scores, dim=-1), log_scores, prompts

    def calibrated(self, log_scores: torch.Tensor, demos: Demonstrations) -> torch.Tensor:
        """Content-free inputs get the same demonstrations as the inputs they calibrate."""
        free = self.fewshot.content_free
        if demos.fixed is not None:
            cf_prompts = [self.prompt(demos.fixed, {"text": t, "text_pair": t}) for t in free]
            return calibrate(log_scores, content_free_distribution(self.label_scores(cf_prompts)))
        cf_prompts = [self.prompt(demos.for_input(i), {"text": t, "text_pair": t})
                      for i in range(len(log_scores)) for t in free]
        cf = self.label_scores(cf_prompts).view(len(log_scores), len(free), -1)
        p_cf = torch.stack([content_free_distribution(rows) for rows in cf])
        return calibrate(log_scores, p_cf)


class PromptQA(Prompting):
    """Extractive QA by generation: demonstrations with their first gold answer, the answer generated up
    to a stop string, scored with the shared SQuAD metric."""

    def __init__(self, spec):
        from tlscale.data.qa import fingerprint
        from tlscale.tasks.extractive_qa import question_split

        self.spec, self.fewshot = spec, spec.fewshot
        self.train, self.held_out, skipped = question_split(spec)
        self.data_notes = {"train_questions": len(self.train), "eval_questions": len(self.held_out),
                           "skipped_misaligned": len(skipped), "eval_sha256": fingerprint(self.held_out)}
        self.load(spec)

    @staticmethod
    def fields(question) -> dict:
        return {"context": question.context, "question": question.question}

    def demonstrations(self, seed: int) -> Demonstrations:
        import random

        k = self.fewshot.k
        if k == 0:
            return Demonstrations(fixed=[])
        pool_size = self.fewshot.pool_per_class or (k if self.fewshot.selection == "random" else 16)
        if pool_size > len(self.train) or k > pool_size:
            from tlscale.errors import DataError

            raise DataError(f"fewshot: {len(self.train)} training questions, a pool of {pool_size} and k {k} "
                            "do not fit together")
        pool = random.Random(seed).sample(range(len(self.train)), pool_size)
        selection = SELECTIONS.get(self.fewshot.selection, field="fewshot.selection")(
            self.fewshot, [0] * len(self.train), 1, str(self.spec.data.train_file))
        return selection.choose(pool, seed, self.embed, queries=[q.question for q in self.held_out],
                                texts=[q.question for q in self.train])

    def run(self, seed: int) -> SeedResult:
        from tlscale.eval.squad import squad_scores
        from tlscale.models.generate import Sampling, complete_ids

        demos = self.demonstrations(seed)
        prompts = []
        for i, question in enumerate(self.held_out):
            shown = [(self.fields(self.train[j]), self.train[j].answers[0]) for j in demos.for_input(i)]
            prompts.append(self.template.render(shown, self.fields(question)))
        self.truncated = 0
        ids = [self.ids(p, self.fewshot.max_new_tokens) for p in prompts]
        sampling = Sampling(max_new_tokens=self.fewshot.max_new_tokens, stop=list(self.fewshot.stop),
                            batch_size=self.fewshot.batch_size, seed=seed)
        answers = [a.strip() for a in complete_ids(self.model, self.tokenizer, ids, sampling)]
        predicted = {q.id: a for q, a in zip(self.held_out, answers)}
        metrics = squad_scores(predicted, {q.id: q.answers for q in self.held_out}, self.spec.qa.version)
        metrics.update({"num_examples": len(self.held_out), "prompts_truncated": self.truncated})
        rows = [{"id": q.id, "question": q.question, "prediction": a, "answers": q.answers}
                for q, a in zip(self.held_out, answers)]
        return SeedResult(metrics, rows, prompts)


@METHODS.register("prompt")
def prompt_method(spec):
    return PromptQA(spec) if spec.task == "extractive_qa" else PromptClassification(spec)
