"""causal_lm: supervised fine-tuning of GPT-class models (prompt/completion, chat messages, plain text)."""
from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING

from pydantic import Field, PositiveInt

from tlscale.data.batching import sequential_batches
from tlscale.data.causal_lm import IGNORE, collate_lm, label_tokens, pack, read_lm_records, tokenize_lm
from tlscale.spec.schema import TaskOptions
from tlscale.tasks.base import TASKS, Task, TaskData, gather_rows, seeded_sample

if TYPE_CHECKING:  # torch loads when a model runs, not when a spec or its data is checked
    import torch


class LMOptions(TaskOptions):
    """causal_lm: packing and sampled generations."""

    packing: bool = Field(False, description="Several examples per training sequence (block-diagonal attention).")
    generations: int = Field(4, ge=0, description="Held-out prompts to sample completions for (generations.jsonl).")
    max_new_tokens: PositiveInt = Field(32, description="Longest sampled completion in generations.jsonl.")


@TASKS.register("causal_lm")
class CausalLM(Task):
    name = "causal_lm"
    auto_class = "AutoModelForCausalLM"
    metrics = ("loss", "perplexity")
    headline_metrics = ("loss", "perplexity")
    options, options_key = LMOptions, "lm"

    def prepare(self, tokenizer) -> TaskData:
        spec, lm = self.spec, self.spec.lm
        records = read_lm_records(spec.data.train_file, tokenizer)
        if spec.data.eval_file is not None:
            train, held_out = records, read_lm_records(spec.data.eval_file, tokenizer)
        else:  # a seeded held-out share of the records
            order = list(range(len(records)))
            random.Random(spec.seed).shuffle(order)
            cut = max(1, round(len(records) * spec.data.eval_fraction))
            held_out, train = [records[i] for i in sorted(order[:cut])], [records[i] for i in sorted(order[cut:])]
        train = seeded_sample(train, spec.data.limit, spec.seed)
        held_out = seeded_sample(held_out, spec.data.eval_limit, spec.seed)
        train_set = tokenize_lm(train, tokenizer, spec.model.max_length)
        eval_set = tokenize_lm(held_out, tokenizer, spec.model.max_length)
        examples = len(train_set)
        if lm.packing:
            train_set = pack(train_set, spec.model.max_length)
        notes = {"train_examples": examples, "train_sequences": len(train_set), "eval_examples": len(eval_set),
                 "packing": lm.packing, "train_label_tokens": label_tokens(train_set, list(range(len(train_set))))}
        return TaskData(train_set, eval_set, None, train_set.truncated, eval_items=tokenizer, notes=notes)

    def build_model(self, data: TaskData, load_options: dict):
        from tlscale.models.loading import build_causal_lm

        return build_causal_lm(self.spec.model, load_options)

    def collate(self, dataset, indices, pad_id):
        return collate_lm(dataset, indices, pad_id)

    def weight(self, dataset, indices) -> int:
        return label_tokens(dataset, indices)

    def evaluate(self, accelerator, model, data, run, pad_id, feature_cache=None, write_files=False) -> dict:
        import torch

        spec, eval_set = self.spec, data.eval

        @torch.no_grad()
        def score(indices):
            batch = collate_lm(eval_set, indices, pad_id)
            index, labels = batch.pop("index"), batch.pop("labels")
            logits = model(**{k: v.to(accelerator.device) for k, v in batch.items()}).logits.float().cpu()
            token_loss = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:],
                                                           ignore_index=IGNORE, reduction="none")
            counted = (labels[:, 1:] != IGNORE)
            return index, torch.stack([(token_loss * counted).sum(1), counted.sum(1).float()], dim=1)

        was_training = model.training
        model.eval()
        batches = sequential_batches([len(ids) for ids in eval_set.input_ids], spec.eval.batch_size)
        rows = gather_rows(accelerator, score, batches, len(eval_set))
        model.train(was_training)
        tokens = rows[:, 1].sum().item()
        loss = rows[:, 0].sum().item() / max(tokens, 1)
        metrics = {"loss": loss, "perplexity": math.exp(min(loss, 50)), "tokens": int(tokens),
                   "num_examples": len(eval_set)}
        if write_files and accelerator.is_main_process and accelerator.num_processes == 1:
            self._write_generations(model, data.eval_items, eval_set, run.path / "generations.jsonl", accelerator)
        return metrics

    def _write_generations(self, model, tokenizer, eval_set, path, accelerator) -> None:
        """A few sampled completions of held-out prompts, beside the metrics."""
        from tlscale.models.generate import Sampling, complete
        from tlscale.files import write_jsonl_atomic

        lm = self.spec.lm
        prompts = [p for p in eval_set.prompts if p][:lm.generations]
        sampling = Sampling(max_new_tokens=lm.max_new_tokens, temperature=0.8, top_p=0.9, seed=self.spec.seed)
        generated = complete(model, tokenizer, prompts, sampling, accelerator.device)
        write_jsonl_atomic(path, [{"prompt": p, "generated": g} for p, g in zip(prompts, generated)])

    def headline(self, metrics: dict) -> str:
        return (f"eval loss {metrics['loss']:.4f}  perplexity {metrics['perplexity']:.2f}  "
                f"({metrics['num_examples']} examples, {metrics['tokens']} tokens)")

    @classmethod
    def predict_file(cls, checkpoint, trained, input_file, output_file, options) -> int:
        from tlscale.errors import ConfigError

        raise ConfigError(f"--checkpoint: a {cls.name} model; use `tlscale generate --checkpoint {checkpoint} "
                          f"--input {input_file}` for completions")
