"""Synonyms for augmentation without a network or a shipped thesaurus: close, mutual nearest neighbours
among the whole words of a model's own input-embedding table. For all-MiniLM-L6-v2 at cosine 0.55:
great -> terrific, wonderful, excellent; terrible -> horrible, awful; movie -> film. Forms of the same word
(movie/movies, slow/slower) are left out: they add little. Derived once per embedding table and cached.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from tlscale.data.augment import PROTECTED, STOPWORDS
from tlscale.errors import ConfigError
from tlscale.files import cache_root

NEIGHBOURS = 8  # candidates per word before the similarity and mutuality filters
CHUNK = 2048


def synonym_table(augment, tokenizer, embeddings) -> dict[str, list[str]]:
    """The table `augment` asks for: its synonyms_file, else derived from `embeddings()` (a [vocab, dim]
    tensor, loaded only when needed). Empty when no operation uses synonyms."""
    if not augment.copies or not {"synonym", "insert"} & set(augment.operations):
        return {}
    if augment.synonyms_file is not None:
        return read_synonyms(augment.synonyms_file)
    weight = embeddings()
    key = hashlib.sha256(weight.detach().float().contiguous().numpy().tobytes())
    key.update(f"{augment.min_similarity}:{NEIGHBOURS}:{len(tokenizer)}".encode())
    cache = cache_root() / "synonyms" / (key.hexdigest()[:24] + ".json")
    if cache.is_file():
        return json.loads(cache.read_text())
    table = derive_synonyms(tokenizer, weight, augment.min_similarity)
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(json.dumps(table))
    partial.replace(cache)  # whole or absent, whichever process writes it
    return table


def read_synonyms(path: Path) -> dict[str, list[str]]:
    try:
        table = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"data.augment.synonyms_file: expected a JSON object {{word: [synonyms]}} in {path}; "
                          f"{exc}") from None
    if not isinstance(table, dict) or not all(isinstance(v, list) and all(isinstance(s, str) for s in v)
                                              for v in table.values()):
        raise ConfigError(f"data.augment.synonyms_file: expected a JSON object {{word: [synonyms]}} in {path}")
    return {word.lower(): synonyms for word, synonyms in table.items() if synonyms}


def derive_synonyms(tokenizer, weight, min_similarity: float) -> dict[str, list[str]]:
    import torch

    vocab = tokenizer.get_vocab()
    words = sorted(w for w in vocab if len(w) >= 3 and w.isalpha() and w.islower() and w.isascii()
                   and w not in STOPWORDS and w not in PROTECTED)
    if len(words) < 2:
        return {}
    vectors = torch.nn.functional.normalize(weight.detach().float()[[vocab[w] for w in words]], dim=1)
    top = []
    for start in range(0, len(words), CHUNK):
        similarity = vectors[start:start + CHUNK] @ vectors.T
        similarity[torch.arange(similarity.shape[0]), torch.arange(start, start + similarity.shape[0])] = -1
        values, indices = similarity.topk(min(NEIGHBOURS, len(words) - 1), dim=1)
        top.extend(zip(values.tolist(), indices.tolist()))
    near = [{j for v, j in zip(values, indices) if v >= min_similarity} for values, indices in top]
    table = {}
    for i, word in enumerate(words):
        chosen = [words[j] for j in top[i][1] if j in near[i] and i in near[j] and not same_stem(word, words[j])]
        if chosen:
            table[word] = chosen
    return table


def same_stem(a: str, b: str) -> bool:
    shortest = min(len(a), len(b))
    return a[:min(4, shortest)] == b[:min(4, shortest)]


def input_embeddings(name_or_path: str):
    """The input-embedding table of a checkpoint (its weights loaded once, on CPU)."""
    from transformers import AutoModel

    from tlscale.models.loading import resolve_model_path

    return AutoModel.from_pretrained(resolve_model_path(name_or_path)).get_input_embeddings().weight
