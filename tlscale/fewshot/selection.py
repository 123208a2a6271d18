"""Which labelled examples a seed may show (its pool, drawn from the training data only) and which of them
become each prompt's demonstrations: random, class-balanced, or the nearest neighbours of the input."""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from tlscale.data.classification import draw_per_class
from tlscale.errors import DataError
from tlscale.registry import Registry

SELECTIONS: Registry[type] = Registry("fewshot selection")
KNN_DEFAULT_POOL = 16


@dataclass
class Demonstrations:
    """Pool indices (into the training data) shown before each input, in prompt order."""
    fixed: list[int] | None = None  # the same for every input
    per_input: list[list[int]] | None = None

    def for_input(self, i: int) -> list[int]:
        return self.fixed if self.fixed is not None else self.per_input[i]


class Selection:
    def __init__(self, fewshot, labels: list[int], n_classes: int, source: str):
        self.fewshot, self.labels, self.n_classes, self.source = fewshot, labels, n_classes, source

    @property
    def k_total(self) -> int:
        return self.fewshot.k * (self.n_classes if self.fewshot.k_per == "class" else 1)

    def k_per_class(self) -> int:
        if self.fewshot.k_per == "class":
            return self.fewshot.k
        if self.fewshot.k % self.n_classes:
            raise DataError(f"fewshot.k: {self.fewshot.k} demonstrations in total cannot be balanced over "
                            f"{self.n_classes} classes; use a multiple of {self.n_classes} or k_per: class")
        return self.fewshot.k // self.n_classes

    def pool(self, seed: int) -> list[int]:
        raise NotImplementedError

    def choose(self, pool: list[int], seed: int, embed=None, queries: list[str] | None = None,
               texts: list[str] | None = None) -> Demonstrations:
        raise NotImplementedError


@SELECTIONS.register("random")
class RandomSelection(Selection):
    """k demonstrations drawn without regard to class (the evaluation harnesses' default)."""

    def pool(self, seed):
        if self.fewshot.pool_per_class:
            return draw_per_class(self.labels, self.fewshot.pool_per_class, seed, self.source)
        if self.k_total > len(self.labels):
            raise DataError(f"{self.source}: {len(self.labels)} training examples, fewshot.k asks for {self.k_total}")
        return sorted(random.Random(seed).sample(range(len(self.labels)), self.k_total))

    def choose(self, pool, seed, embed=None, queries=None, texts=None):
        if self.k_total > len(pool):
            raise DataError(f"fewshot.pool_per_class: a pool of {len(pool)} cannot give {self.k_total} demonstrations")
        return Demonstrations(fixed=random.Random(seed + 1).sample(pool, self.k_total))


@SELECTIONS.register("balanced")
class BalancedSelection(Selection):
    """Exactly the same number of demonstrations of every class, in a seeded random order."""

    def pool(self, seed):
        return draw_per_class(self.labels, self.fewshot.pool_per_class or self.k_per_class(), seed, self.source)

    def choose(self, pool, seed, embed=None, queries=None, texts=None):
        rng = random.Random(seed + 1)
        chosen = []
        for label in range(self.n_classes):
            members = [i for i in pool if self.labels[i] == label]
            chosen.extend(rng.sample(members, self.k_per_class()))
        rng.shuffle(chosen)
        return Demonstrations(fixed=chosen)


@SELECTIONS.register("knn")
class NearestSelection(Selection):
    """For each input, the pool examples most similar to it (cosine of sentence embeddings), the nearest
    last, right before the query (Liu et al., 2022). k_per: class takes the k nearest of each class."""

    def pool(self, seed):
        per_class = self.fewshot.pool_per_class or max(KNN_DEFAULT_POOL, self.k_per_class())
        return draw_per_class(self.labels, per_class, seed, self.source)

    def choose(self, pool, seed, embed=None, queries=None, texts=None):
        pool_vectors = embed([texts[i] for i in pool])
        query_vectors = embed(queries)
        if self.fewshot.k_per == "class":
            groups = [[p for p, i in enumerate(pool) if self.labels[i] == label] for label in range(self.n_classes)]
            take = self.fewshot.k
        else:
            groups, take = [list(range(len(pool)))], self.k_total
        similarity = cosine(query_vectors, pool_vectors)
        per_input = []
        for row in similarity:
            picked = [p for group in groups for p in nearest(row, group, take)]
            picked.sort(key=lambda p: row[p].item())  # ascending: the nearest ends up next to the query
            per_input.append([pool[p] for p in picked])
        return Demonstrations(per_input=per_input)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = torch.nn.functional.normalize(a.float(), dim=-1)
    b = torch.nn.functional.normalize(b.float(), dim=-1)
    return a @ b.T


def nearest(similarity_row: torch.Tensor, candidates: list[int], k: int) -> list[int]:
    """The k candidates with the highest similarity (ties: the lower index)."""
    if k > len(candidates):
        raise DataError(f"fewshot.k: knn asks for {k} neighbours among {len(candidates)} pool examples; raise "
                        "fewshot.pool_per_class")
    values = similarity_row[candidates]
    order = sorted(range(len(candidates)), key=lambda c: (-values[c].item(), candidates[c]))
    return [candidates[c] for c in order[:k]]


def sentence_encoder(name_or_path: str, batch_size: int = 64):
    """texts -> embeddings with a sentence-transformers encoder (mean pooling for a plain transformer)."""
    from tlscale.errors import require

    SentenceTransformer = require("sentence_transformers").SentenceTransformer

    from tlscale.models.loading import resolve_model_path

    model = SentenceTransformer(resolve_model_path(name_or_path), device="cpu")

    def embed(texts: list[str]) -> torch.Tensor:
        return model.encode(texts, batch_size=batch_size, convert_to_tensor=True, show_progress_bar=False).cpu()

    return embed
