"""Few-shot scoring throughput: shared-prefix scoring (one forward per example: the prompt once, every
label choice after it under a tree-shaped attention mask) vs naive scoring (one forward per example and
choice on prompt + choice, the way evaluation harnesses score log-likelihood requests), on the same model,
prompts and batch size. Both are checked to give the same log-likelihoods.

The model is GPT-2-small-shaped (12 layers, hidden 768), built from a config with random weights (no
download; throughput does not depend on the weights), with the tiny GPT-2 tokenizer. Prompts are real SST-2
dev sentences after 4 class-balanced demonstrations from the SST-2 training file (~100-200 tokens).
Two verbalizers: 2 one-token label words (SST-2), and 5 labels of 1-4 tokens (an SST-5-style scale).

    .venv/bin/python bench/fewshot_scoring.py [--examples 48] [--repeats 2]
"""
from __future__ import annotations

import argparse
import time

from common import DATA  # sets up paths and offline mode

VERBALIZERS = {
    "2 labels, 1 token each": [" terrible", " great"],
    "5 labels, 1-4 tokens": [" terrible", " rather bad", " neither good nor bad", " fairly good", " great"],
}


def build(examples: int):
    import random

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from tlscale.data.causal_lm import prompt_ids
    from tlscale.fewshot.prompts import Template
    from tlscale.models import load_tokenizer
    from tlscale.spec.schema import ModelSpec

    tokenizer = load_tokenizer(ModelSpec(name_or_path="tiny:gpt2", max_length=128))
    tokenizer.model_max_length = 512  # the model below has 512 positions; the prompts are ~150 tokens
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=512, n_embd=768, n_layer=12, n_head=12,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = GPT2LMHeadModel(config).eval()
    rows = lambda name: [line.rsplit("\t", 1) for line in (DATA / "sst2" / name).read_text().splitlines()[1:]]  # noqa: E731
    train, dev = rows("train.tsv"), rows("dev.tsv")
    rng = random.Random(0)
    words = {"0": "terrible", "1": "great"}
    demos = [(({"text": s.strip()}), words[y]) for y in ("0", "1") for s, _ in
             rng.sample([r for r in train if r[1] == y and len(r[0].split()) > 8], 2)]
    rng.shuffle(demos)
    template = Template("Review: {text}\nSentiment: {label}")
    prompts = [prompt_ids(tokenizer, template.render(demos, {"text": s.strip()})) for s, _ in dev[:examples]]
    return model, tokenizer, prompts


def timed(function, *args, **kwargs):
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - started


def main() -> None:
    import torch

    from tlscale.fewshot.scoring import naive_scores, shared_prefix_scores, tokenize_choices

    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(2)
    model, tokenizer, prompts = build(args.examples)
    lengths = sorted(len(p) for p in prompts)
    print(f"GPT-2-small shape, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters; "
          f"{len(prompts)} prompts of {lengths[0]}-{lengths[-1]} tokens (median {lengths[len(lengths) // 2]}), "
          f"batch {args.batch_size}, best of {args.repeats}")
    for name, words in VERBALIZERS.items():
        choices = tokenize_choices(tokenizer, words)
        best = {"shared": float("inf"), "naive": float("inf")}
        for _ in range(args.repeats):  # interleaved, so machine noise hits both alike
            shared, seconds = timed(shared_prefix_scores, model, prompts, choices, args.batch_size,
                                    tokenizer.pad_token_id)
            best["shared"] = min(best["shared"], seconds)
            naive, seconds = timed(naive_scores, model, prompts, choices, args.batch_size, tokenizer.pad_token_id)
            best["naive"] = min(best["naive"], seconds)
        difference = (shared.logprob - naive.logprob).abs().max().item()
        rate = {k: len(prompts) / v for k, v in best.items()}
        print(f"{name} (choice tokens {[len(c) for c in choices]}): shared-prefix {rate['shared']:.2f} examples/s, "
              f"naive {rate['naive']:.2f} examples/s, ratio {rate['shared'] / rate['naive']:.2f}x; "
              f"max |log-likelihood difference| {difference:.1e}")


if __name__ == "__main__":
    main()
