"""Label-preserving text augmentation for tiny labelled sets (EDA, Wei & Zou 2019): each training example
gains `copies` variants, each made by one operation (synonym replacement, insertion of a synonym, swap of
two words, deletion of words) touching about `rate` of its words. No network at run time: synonyms come from
the model's own input embeddings (tlscale/models/synonyms.py) or from a file the user gives.

Two guards for labels: negations, contrast, frequency and degree words ("not", "but", "often", "little", ...)
are never deleted, moved or replaced, and a variant equal to its original (or to an earlier variant) is
dropped. What no guard catches: a nearest neighbour in embedding space can be an antonym ("good" -> "bad"),
which is why the embedding table keeps only close, mutual neighbours. Variants are seeded by (seed, example,
copy): the same on every process and rerun.
"""
from __future__ import annotations

import random

from tlscale.data.classification import Examples

PROTECTED = frozenset("""not no never nor none nothing nobody neither n't cannot without hardly barely scarcely
but however although though yet isn't wasn't aren't don't doesn't didn't won't can't couldn't shouldn't
wouldn't often rarely seldom always sometimes usually less least little few much many enough even still
only almost""".split())
STOPWORDS = frozenset("""a an the and or of to in on at by for with from as is are was were be been being it its
it's 's this that these those he she they them his her their we us our you your i me my mine what which who whom
whose there here than then so such too very can will just do does did has have had having would should could
may might must shall about into over under again further once all any both each few more most other some own
same only up down out off""".split())


def augment_examples(examples: Examples, options, seed: int,
                     synonyms: dict[str, list[str]]) -> tuple[Examples, list[int], dict]:
    """The examples followed by their variants (text pairs: the first text varies, the second is kept), the
    index of each row's original (to keep a variant and its original in the same cross-validation fold), and
    counts for metrics.json."""
    originals = len(examples)
    if not options.copies:
        return examples, list(range(originals)), {}
    texts, pairs, raw, where, labels, origins = [], [], [], [], [], list(range(originals))
    counts = dict.fromkeys(options.operations, 0)
    for i in range(originals):
        seen = {" ".join(examples.texts[i].split())}
        for copy in range(options.copies):
            rng = random.Random(f"{seed}:{i}:{copy}")
            operation = options.operations[copy % len(options.operations)]
            text = vary(examples.texts[i], operation, options.rate, rng, synonyms)
            if text in seen:
                continue
            seen.add(text)
            counts[operation] += 1
            texts.append(text)
            raw.append(examples.raw_labels[i])
            where.append(f"{examples.where[i]} ({operation} variant {copy + 1})")
            labels.append(examples.labels[i])
            origins.append(i)
            if examples.pairs is not None:
                pairs.append(examples.pairs[i])
    merged = Examples(examples.texts + texts, examples.pairs + pairs if examples.pairs is not None else None,
                      examples.raw_labels + raw, examples.where + where, list(examples.labels) + labels)
    facts = {"labelled": originals, "variants": len(texts), "by_operation": counts, "synonym_words": len(synonyms)}
    return merged, origins, facts


def vary(text: str, operation: str, rate: float, rng: random.Random, synonyms: dict[str, list[str]]) -> str:
    words = text.split()
    n = max(1, round(rate * len(words)))
    return " ".join(OPERATIONS[operation](words, n, rng, synonyms))


def _movable(words: list[str]) -> list[int]:
    return [i for i, w in enumerate(words) if w.lower() not in PROTECTED]


def _replaceable(words: list[str], synonyms) -> list[int]:
    return [i for i, w in enumerate(words) if w.lower() in synonyms and w.lower() not in STOPWORDS | PROTECTED]


def replace_synonyms(words: list[str], n: int, rng: random.Random, synonyms) -> list[str]:
    words = list(words)
    candidates = _replaceable(words, synonyms)
    for i in rng.sample(candidates, min(n, len(candidates))):
        words[i] = rng.choice(synonyms[words[i].lower()])
    return words


def insert_synonyms(words: list[str], n: int, rng: random.Random, synonyms) -> list[str]:
    words = list(words)
    for _ in range(n):
        candidates = _replaceable(words, synonyms)
        if not candidates:
            break
        word = rng.choice(synonyms[words[rng.choice(candidates)].lower()])
        words.insert(rng.randrange(len(words) + 1), word)
    return words


def swap_words(words: list[str], n: int, rng: random.Random, synonyms) -> list[str]:
    words = list(words)
    movable = _movable(words)
    for _ in range(n if len(movable) >= 2 else 0):
        a, b = rng.sample(movable, 2)
        words[a], words[b] = words[b], words[a]
    return words


def delete_words(words: list[str], n: int, rng: random.Random, synonyms) -> list[str]:
    """Each deletable word goes with probability n / len (EDA's p = rate); one word always stays."""
    p = n / max(1, len(words))
    kept = [w for w in words if w.lower() in PROTECTED or rng.random() >= p]
    return kept or [rng.choice(words)]


OPERATIONS = {"synonym": replace_synonyms, "insert": insert_synonyms, "swap": swap_words, "delete": delete_words}
