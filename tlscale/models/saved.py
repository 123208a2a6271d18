"""Saved models back in memory: a task's model from a `save_pretrained` folder or the run folder holding it."""
from __future__ import annotations

from pathlib import Path

ARCHITECTURES = {"AutoModelForQuestionAnswering": ("question-answering model", ("ForQuestionAnswering",)),
                 "AutoModelForCausalLM": ("causal language model", ("ForCausalLM", "LMHeadModel"))}


def load_task_model(checkpoint: str | Path, auto_class: str):
    """(model, tokenizer) from a saved folder, or the run folder holding RUN/model; the saved architecture
    must be the task's (a QA model is not evaluated as a language model)."""
    import transformers

    from tlscale.errors import ConfigError

    folder = Path(checkpoint)
    if (folder / "model" / "config.json").is_file() and not (folder / "config.json").is_file():
        folder = folder / "model"
    if (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file():
        raise ConfigError(f"--checkpoint: '{checkpoint}' is a LoRA adapter; use the run's merged model "
                          f"(RUN/model) or write one with `tlscale export RUN --merge --output DIR`")
    if not (folder / "config.json").is_file():
        raise ConfigError(f"--checkpoint: '{checkpoint}' is not a saved model folder (no config.json)")
    architectures = transformers.AutoConfig.from_pretrained(folder).architectures or []
    if auto_class in ARCHITECTURES:
        kind, suffixes = ARCHITECTURES[auto_class]
        if not any(a.endswith(suffixes) for a in architectures):
            raise ConfigError(f"--checkpoint: '{checkpoint}' holds {', '.join(architectures) or 'an unknown model'}, "
                              f"not a {kind} (expected a *{' / *'.join(suffixes)})")
    model = getattr(transformers, auto_class).from_pretrained(folder).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
