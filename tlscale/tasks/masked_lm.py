"""masked_lm: continued pretraining of an encoder on raw in-domain text (domain- and task-adaptive
pretraining, Gururangan et al. 2020), before fine-tuning it with `model.init_from: RUN`.

Masks are dynamic (RoBERTa): drawn anew every epoch, from (seed, epoch, example), so they do not depend on
the number of processes or on a resume. 80% of the chosen tokens become [MASK], 10% a random token, 10%
stay (BERT). whole_word masks every piece of a chosen word. A checkpoint without an MLM head (a sentence
encoder such as all-MiniLM-L6-v2) gets a new one, its decoder tied to the input embeddings.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import Field

from tlscale.data.batching import attention_mask, pad, sequential_batches
from tlscale.data.classification import read_examples, sample
from tlscale.errors import ConfigError, DataError
from tlscale.eval.metrics import register_metric
from tlscale.spec.schema import TaskOptions
from tlscale.tasks.base import TASKS, Task, TaskData, gather_rows

if TYPE_CHECKING:  # torch loads when a model runs, not when a spec or its data is checked
    import torch

IGNORE = -100
EVAL_ROUND = -1  # held-out masks: fixed, the same at every evaluation

register_metric("masked_accuracy", "max", "share of masked tokens whose original token is the most probable")


class MLMOptions(TaskOptions):
    """masked_lm: how tokens are masked."""

    probability: float = Field(0.15, gt=0.0, lt=1.0, description="Share of tokens (or words) chosen for "
                               "prediction in each sequence (BERT: 0.15).")
    whole_word: bool = Field(False, description="Mask every token of a chosen word together (needs a fast "
                             "tokenizer, for word boundaries).")


@dataclass
class TextSet:
    """Tokenized texts; masks are drawn at collation from (seed, round, index)."""
    input_ids: list[list[int]]
    words: list[list[int | None]]  # word index of each token; None for special tokens
    seed: int
    round: int = 0  # the epoch (training) or EVAL_ROUND
    truncated: int = 0
    mask_id: int = 0  # the tokenizer's [MASK], and its vocabulary size for random replacements
    vocab_size: int = 0

    def __len__(self) -> int:
        return len(self.input_ids)


def tokenize_texts(texts: list[str], tokenizer, max_length: int, seed: int, round: int) -> TextSet:
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("model.name_or_path: masked_lm needs a fast tokenizer (word boundaries)")
    encoded = tokenizer(texts, truncation=True, max_length=max_length, return_overflowing_tokens=False)
    words = [encoded.word_ids(i) for i in range(len(texts))]
    full = tokenizer(texts, truncation=False, verbose=False)["input_ids"]
    truncated = sum(len(ids) > max_length for ids in full)
    return TextSet(encoded["input_ids"], words, seed, round, truncated, tokenizer.mask_token_id, len(tokenizer))


def mask_example(data: TextSet, i: int, probability: float, whole_word: bool, mask_id: int,
                 vocab_size: int) -> tuple[list[int], list[int]]:
    """(inputs, labels) of example i for this round; at least one unit is chosen."""
    rng = random.Random(f"{data.seed}:{data.round}:{i}")
    ids, words = data.input_ids[i], data.words[i]
    units: dict = {}
    for position, word in enumerate(words):
        if word is not None:
            units.setdefault(word if whole_word else position, []).append(position)
    groups = list(units.values())
    chosen = [g for g in groups if rng.random() < probability] or ([rng.choice(groups)] if groups else [])
    inputs, labels = list(ids), [IGNORE] * len(ids)
    for group in chosen:
        draw = rng.random()
        for position in group:
            labels[position] = ids[position]
            if draw < 0.8:
                inputs[position] = mask_id
            elif draw < 0.9:
                inputs[position] = rng.randrange(vocab_size)
    return inputs, labels


@TASKS.register("masked_lm")
class MaskedLM(Task):
    name = "masked_lm"
    auto_class = "AutoModelForMaskedLM"
    metrics = ("loss", "perplexity", "masked_accuracy")
    headline_metrics = ("loss", "perplexity", "masked_accuracy")
    options, options_key = MLMOptions, "mlm"

    def prepare(self, tokenizer) -> TaskData:
        spec = self.spec
        if tokenizer.mask_token_id is None:
            raise ConfigError(f"model.name_or_path: '{spec.model.name_or_path}' has no mask token; masked_lm is "
                              "for encoders (BERT-class). For GPT-class models use task causal_lm with text records")
        texts = read_examples(spec.data.train_file, spec.data, need_label=False)
        if spec.data.eval_file is not None:
            held_out = read_examples(spec.data.eval_file, spec.data, need_label=False)
        else:  # a seeded held-out share of the texts
            order = list(range(len(texts)))
            random.Random(spec.seed).shuffle(order)
            cut = max(1, round(len(texts) * spec.data.eval_fraction))
            held_out, texts = texts.subset(sorted(order[:cut])), texts.subset(sorted(order[cut:]))
        texts, held_out = sample(texts, spec.data.limit, spec.seed), sample(held_out, spec.data.eval_limit, spec.seed)
        if not len(texts) or not len(held_out):
            raise DataError(f"{spec.data.train_file}: masked_lm needs training and held-out texts; found "
                            f"{len(texts)} and {len(held_out)}")
        train = tokenize_texts(texts.texts, tokenizer, spec.model.max_length, spec.seed, 0)
        evaluation = tokenize_texts(held_out.texts, tokenizer, spec.model.max_length, spec.seed, EVAL_ROUND)
        notes = {"train_texts": len(train), "eval_texts": len(evaluation), "mask_probability": spec.mlm.probability,
                 "whole_word": spec.mlm.whole_word, "train_tokens": sum(len(ids) for ids in train.input_ids)}
        return TaskData(train, evaluation, None, train.truncated, notes=notes)

    def build_model(self, data: TaskData, load_options: dict):
        from tlscale.models.loading import build_masked_lm

        return build_masked_lm(self.spec.model, load_options)

    def start_epoch(self, data: TaskData, epoch: int) -> None:
        data.train.round = epoch  # dynamic masking: new masks each epoch

    def collate(self, dataset: TextSet, indices, pad_id):
        import torch

        options = self.spec.mlm
        pairs = [mask_example(dataset, i, options.probability, options.whole_word, dataset.mask_id,
                              dataset.vocab_size) for i in indices]
        rows = [inputs for inputs, _ in pairs]
        return {"input_ids": pad(rows, pad_id), "attention_mask": attention_mask(rows),
                "labels": pad([labels for _, labels in pairs], IGNORE), "index": torch.tensor(indices)}

    def loss(self, model, batch):
        """Mean over texts of each text's mean loss over its masked tokens: every text counts the same,
        so the loop's per-example weighting makes N processes compute one process's gradient."""
        sums, counts, _ = token_losses(model, batch)
        return (sums / counts).mean()

    def evaluate(self, accelerator, model, data, run, pad_id, feature_cache=None, write_files=False) -> dict:
        import torch

        eval_set = data.eval

        @torch.no_grad()
        def score(indices):
            batch = self.collate(eval_set, indices, pad_id)
            index = batch.pop("index")
            sums, counts, correct = token_losses(model, {k: v.to(accelerator.device) for k, v in batch.items()})
            return index, torch.stack([sums, counts, correct], dim=1).cpu()

        was_training = model.training
        model.eval()
        batches = sequential_batches([len(ids) for ids in eval_set.input_ids], self.spec.eval.batch_size)
        rows = gather_rows(accelerator, score, batches, len(eval_set))
        model.train(was_training)
        tokens = rows[:, 1].sum().item()
        loss = rows[:, 0].sum().item() / tokens
        return {"loss": loss, "perplexity": math.exp(min(loss, 50)), "masked_accuracy": rows[:, 2].sum().item() / tokens,
                "masked_tokens": int(tokens), "num_examples": len(eval_set)}

    def headline(self, metrics: dict) -> str:
        return (f"eval masked-token loss {metrics['loss']:.4f}  perplexity {metrics['perplexity']:.2f}  "
                f"accuracy {metrics['masked_accuracy']:.4f}  ({metrics['num_examples']} texts, "
                f"{metrics['masked_tokens']} masked tokens)")

    @classmethod
    def predict_file(cls, checkpoint, trained, input_file, output_file, options) -> int:
        raise ConfigError(f"--checkpoint: a masked_lm model is a starting point, not a predictor; fine-tune it "
                          f"with model.init_from: {checkpoint}")


def token_losses(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per text: summed cross-entropy over its masked tokens, their count, and how many were predicted."""
    import torch.nn.functional as F

    labels = batch.pop("labels")
    logits = model(**batch).logits.float()
    token_loss = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")
    counted = labels != IGNORE
    correct = ((logits.argmax(-1) == labels) & counted).sum(1).float()
    return (token_loss * counted).sum(1), counted.sum(1).float(), correct
