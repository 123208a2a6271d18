"""Encoder baselines for tiny data, trained on k labelled examples per class that each seed draws from the
training file: a linear probe on frozen sentence embeddings, and a SetFit-style contrastive fine-tune of
the encoder (Tunstall et al., 2022) followed by the same head. Both predict through the shared evaluator.

The encoder is a sentence-transformers model (model.name_or_path; a plain transformer gets mean pooling).
The head is scikit-learn's logistic regression on L2-normalised embeddings; its regularisation C is
chosen by cross-validation on the k examples themselves (leave-one-out; 8 stratified folds beyond 64
examples), never on evaluation data.
With a verbalizer, its phrases describe the labels ("a bad film" / "a good film"): how much closer an
input's embedding is to each label's mean description than to the first label's joins the head's features
(with two labels: its projection on the "sentiment direction"). That is zero-shot
knowledge from the encoder itself, and at 16 examples per class it is worth more than the fine-tune
(SST-2, measured on a validation sample of the training file: see the README).
"""
from __future__ import annotations

import copy
import random
import time

import numpy as np
import torch

from tlscale.data.classification import draw_per_class
from tlscale.errors import require
from tlscale.fewshot.methods import METHODS, ClassificationMethod, SeedResult

HEAD_C = (0.1, 1.0, 10.0, 100.0)
DESCRIPTION_SCALE = 5.0  # one similarity column per label beside hundreds of embedding columns
ZERO_SHOT_TEMPERATURE = 0.05


class EncoderBaseline(ClassificationMethod):
    def __init__(self, spec):
        super().__init__(spec)
        SentenceTransformer = require("sentence_transformers").SentenceTransformer

        from tlscale.models.loading import resolve_model_path

        self.encoder = SentenceTransformer(resolve_model_path(spec.model.name_or_path), device="cpu")
        self.encoder.max_seq_length = spec.model.max_length
        self.separator = f" {self.encoder.tokenizer.sep_token or '|'} "
        self.train_texts = self._texts(self.data.train, self.separator)
        self.eval_texts = self._texts(self.data.eval, self.separator)
        self.embed(self.encoder, self.eval_texts[:8])  # warm-up: the timings below are the work, not first calls

    @staticmethod
    def _texts(examples, separator: str) -> list[str]:
        if examples.pairs is None:
            return examples.texts
        return [f"{a}{separator}{b}" for a, b in zip(examples.texts, examples.pairs)]

    def training_set(self, seed: int) -> list[int]:
        return draw_per_class(self.data.train.labels, self.fewshot.k, seed, str(self.spec.data.train_file))

    def training_examples(self, seed: int) -> tuple[list[str], list[int], list[int], dict]:
        """The seed's k per class, followed by their augmented variants when data.augment asks for them, and
        the original each text comes from."""
        chosen = self.training_set(seed)
        texts, labels = [self.train_texts[i] for i in chosen], [self.data.train.labels[i] for i in chosen]
        augment = self.spec.data.augment
        if not augment.copies:
            return texts, labels, list(range(len(chosen))), {"train_examples": len(chosen)}
        from tlscale.data.augment import augment_examples
        from tlscale.models.synonyms import synonym_table

        table = synonym_table(augment, self.encoder.tokenizer,
                              lambda: self.encoder[0].auto_model.get_input_embeddings().weight)
        merged, origins, facts = augment_examples(self.data.train.subset(chosen), augment, seed, table)
        return (self._texts(merged, self.separator), merged.labels, origins,
                {"train_examples": len(chosen), "augmented_examples": facts["variants"]})

    def timed_embed(self, model, texts: list[str]) -> tuple[np.ndarray, float]:
        started = time.perf_counter()
        return self.embed(model, texts), time.perf_counter() - started

    def embed(self, model, texts: list[str]) -> np.ndarray:
        return model.encode(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False,
                            convert_to_numpy=True)

    def label_descriptions(self, model) -> np.ndarray | None:
        """[labels, dim]: the mean embedding of each label's verbalizer phrases (None without a verbalizer)."""
        if self.fewshot.verbalizer is None:
            return None
        from tlscale.fewshot.prompts import verbalize

        return np.stack([self.embed(model, phrases).mean(0) for phrases in verbalize(self.label_names,
                                                                                      self.fewshot.verbalizer)])

    def predict(self, model, train_vectors: np.ndarray, labels: list[int], eval_vectors: np.ndarray, seed: int,
                groups: list[int] | None = None):
        described = self.label_descriptions(model)
        if described is not None:  # how much closer to label c's description than to the first label's
            contrasts = (described[1:] - described[0]).T
            train_vectors, eval_vectors = (np.hstack([v, DESCRIPTION_SCALE * v @ contrasts])
                                           for v in (train_vectors, eval_vectors))
        head, c = fit_head(train_vectors, labels, seed, groups)
        self.head_params = int(head.coef_.size + head.intercept_.size)
        probs = np.zeros((len(eval_vectors), len(self.label_names)))
        probs[:, head.classes_] = head.predict_proba(eval_vectors)
        return torch.tensor(probs, dtype=torch.float), c

    def adapted_encoder(self, texts: list[str], labels: list[int], seed: int):
        """The encoder the head is fitted on: the pretrained one, shared (SetFit: a fine-tuned copy)."""
        return self.encoder

    def label_probabilities(self, examples, seed: int) -> torch.Tensor:
        """Label probabilities of any examples (`tlscale fewshot --label`): the method fitted on the seed's k
        per class, as for the evaluation set."""
        texts, labels, origins, _ = self.training_examples(seed)
        model = self.adapted_encoder(texts, labels, seed)
        vectors = self.embed(model, self._texts(examples, self.separator))
        return self.predict(model, self.embed(model, texts), labels, vectors, seed, origins)[0]


@METHODS.register("linear_probe")
class LinearProbe(EncoderBaseline):
    """Frozen encoder: the evaluation embeddings are computed once for every seed."""

    def __init__(self, spec):
        super().__init__(spec)
        self.eval_vectors, self.eval_embed_s = self.timed_embed(self.encoder, self.eval_texts)

    def run(self, seed: int) -> SeedResult:
        started = time.perf_counter()
        texts, labels, origins, counts = self.training_examples(seed)
        vectors = self.embed(self.encoder, texts)
        probs, c = self.predict(self.encoder, vectors, labels, self.eval_vectors, seed, origins)
        train_s = time.perf_counter() - started  # (the head's predictions on the cached vectors: milliseconds)
        metrics, rows = self.score(probs, {"head_C": c, **counts,
                                           "trainable_params": self.head_params, "train_seconds": round(train_s, 3),
                                           "predict_seconds": round(self.eval_embed_s, 3)})
        return SeedResult(metrics, rows)


@METHODS.register("zero_shot")
class ZeroShot(EncoderBaseline):
    """No labelled examples: each input takes the label whose description (fewshot.verbalizer phrases, their
    mean embedding) is nearest. Probabilities are a softmax of the cosine similarities at temperature
    ZERO_SHOT_TEMPERATURE (a fixed choice: without labels nothing can calibrate it, so read its ECE with care)."""

    def run(self, seed: int) -> SeedResult:
        started = time.perf_counter()
        probs = self.label_probabilities(self.data.eval, seed)
        metrics, rows = self.score(probs, {"train_examples": 0, "trainable_params": 0, "train_seconds": 0.0,
                                           "predict_seconds": round(time.perf_counter() - started, 3)})
        return SeedResult(metrics, rows)

    def label_probabilities(self, examples, seed: int) -> torch.Tensor:
        described = self.label_descriptions(self.encoder)
        described = described / np.linalg.norm(described, axis=1, keepdims=True)
        vectors = self.embed(self.encoder, self._texts(examples, self.separator))
        return torch.softmax(torch.tensor(vectors @ described.T, dtype=torch.float) / ZERO_SHOT_TEMPERATURE, dim=1)


@METHODS.register("setfit")
class SetFit(EncoderBaseline):
    """A fresh copy of the encoder per seed, fine-tuned so that same-class pairs embed close together and
    different-class pairs apart (cosine similarity regressed to 1 / 0), then the probe's head."""

    def run(self, seed: int) -> SeedResult:
        started = time.perf_counter()
        texts, labels, origins, counts = self.training_examples(seed)
        model, (steps, first_loss, final_loss) = self.fine_tuned(texts, labels, seed)
        train_vectors = self.embed(model, texts)
        train_s = time.perf_counter() - started
        eval_vectors, predict_s = self.timed_embed(model, self.eval_texts)
        probs, c = self.predict(model, train_vectors, labels, eval_vectors, seed, origins)
        metrics, rows = self.score(probs, {"head_C": c, **counts, "pair_steps": steps,
                                           "first_pair_loss": first_loss, "final_pair_loss": final_loss,
                                           "trainable_params": self.head_params + sum(
                                               p.numel() for p in model.parameters() if p.requires_grad),
                                           "train_seconds": round(train_s, 3), "predict_seconds": round(predict_s, 3)})
        return SeedResult(metrics, rows)

    def adapted_encoder(self, texts: list[str], labels: list[int], seed: int):
        return self.fine_tuned(texts, labels, seed)[0]

    def fine_tuned(self, texts: list[str], labels: list[int], seed: int):
        """(a fine-tuned copy of the encoder, (pair steps, first and final pair loss))."""
        model = copy.deepcopy(self.encoder)
        return model, contrastive_finetune(model, texts, labels, self.fewshot.setfit, seed)


def fit_head(vectors: np.ndarray, labels: list[int], seed: int, groups: list[int] | None = None):
    """Logistic regression with C chosen by cross-validated accuracy on the training examples (ties: smaller
    C): leave-one-out up to LOO_MAX examples, beyond that CV_FOLDS stratified folds (the same choice for a
    fraction of the fits: 512 examples would be 2,048 fits by leave-one-out). `groups` (the original of each
    augmented variant) keeps a variant in its original's fold: held out together, never on both sides."""
    LogisticRegression = require("sklearn.linear_model").LogisticRegression  # the 'fewshot' extra

    labels = np.asarray(labels)
    folds = _folds(labels, seed, None if groups is None else np.asarray(groups))
    best_c, best = HEAD_C[0], -1.0
    for c in HEAD_C:
        hits = 0
        for held in folds:
            keep = np.ones(len(labels), dtype=bool)
            keep[held] = False
            model = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(vectors[keep], labels[keep])
            hits += int((model.predict(vectors[held]) == labels[held]).sum())
        if hits / len(labels) > best:
            best_c, best = c, hits / len(labels)
    return LogisticRegression(C=best_c, max_iter=2000, random_state=seed).fit(vectors, labels), best_c


LOO_MAX = 64
CV_FOLDS = 8


def _folds(labels: np.ndarray, seed: int, groups: np.ndarray | None = None) -> list[np.ndarray]:
    """Held-out index sets: one group each (leave-one-out: an example and its variants), or stratified folds
    of groups for larger sets."""
    groups = np.arange(len(labels)) if groups is None else groups
    first = {}
    for i, g in enumerate(groups):
        first.setdefault(int(g), i)
    if len(first) <= LOO_MAX:
        return [np.flatnonzero(groups == g) for g in first]
    rng = np.random.default_rng(seed)
    folds = [[] for _ in range(CV_FOLDS)]
    group_labels = np.array([labels[i] for i in first.values()])
    group_ids = np.array(list(first))
    for label in np.unique(group_labels):
        for n, g in enumerate(rng.permutation(group_ids[group_labels == label])):
            folds[n % CV_FOLDS].extend(np.flatnonzero(groups == g))
    return [np.array(sorted(f)) for f in folds if f]


def contrastive_pairs(labels: list[int], per_example: int, seed: int) -> list[tuple[int, int, float]]:
    """per_example pairs for every example, alternating a same-class partner (target 1) and a
    different-class partner (target 0), so positives and negatives are balanced whatever the classes."""
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    pairs = []
    for i, label in enumerate(labels):
        same = [j for j in by_class[label] if j != i]
        other = [j for j in range(len(labels)) if labels[j] != label]
        for n in range(per_example):
            if n % 2 == 0 and same:
                pairs.append((i, rng.choice(same), 1.0))
            elif other:
                pairs.append((i, rng.choice(other), 0.0))
    rng.shuffle(pairs)
    return pairs


def contrastive_finetune(model, texts: list[str], labels: list[int], setfit, seed: int) -> tuple[int, float, float]:
    """sentence-transformers' CosineSimilarityLoss on the pairs, AdamW with linear warmup and decay.
    Returns (optimizer steps, mean loss of the first and of the last 10 steps)."""
    CosineSimilarityLoss = require("sentence_transformers.losses").CosineSimilarityLoss

    torch.manual_seed(seed)
    pairs = contrastive_pairs(labels, setfit.pairs_per_example, seed)
    batches = [pairs[i:i + setfit.batch_size] for _ in range(setfit.epochs)
               for i in range(0, len(pairs), setfit.batch_size)]
    loss_fn = CosineSimilarityLoss(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=setfit.body_lr, weight_decay=0.01)
    warmup = int(setfit.warmup_ratio * len(batches))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: (step + 1) / max(1, warmup) if step < warmup
        else max(0.0, (len(batches) - step) / max(1, len(batches) - warmup)))
    model.train()
    losses = []
    for batch in batches:
        left = model.preprocess([texts[a] for a, _, _ in batch])
        right = model.preprocess([texts[b] for _, b, _ in batch])
        loss = loss_fn([left, right], torch.tensor([t for _, _, t in batch]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    model.eval()
    head, tail = losses[:10], losses[-10:]
    return len(batches), sum(head) / max(1, len(head)), sum(tail) / max(1, len(tail))
