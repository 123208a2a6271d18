"""Any transformers backbone + a pooling + a linear (or one-hidden-layer) head, as one PreTrainedModel.

Why our own class: the native *ForSequenceClassification heads fix the pooling
(CLS + pooler for BERT, last token for GPT-2), but a sentence-transformers
checkpoint such as all-MiniLM-L6-v2 was trained for mean pooling, and frozen
features are only good with the pooling the checkpoint learned. This file
imports nothing from tlscale on purpose: `save_pretrained` copies it beside the
weights, so plain transformers loads a tlscale model with
`AutoModelForSequenceClassification.from_pretrained(dir, trust_remote_code=True)`.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

POOLINGS = ("cls", "mean", "last")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, how: str) -> torch.Tensor:
    if how == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    if how == "mean":
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    if how == "last":  # last non-padding token, whichever side the padding is on
        positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        last = (attention_mask * positions).argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"unknown pooling '{how}', expected one of {POOLINGS}")


def drop_unused_pooler(backbone: nn.Module) -> nn.Module:
    """BERT-style poolers are never used here; removing them saves compute and keeps DDP happy."""
    if getattr(backbone, "pooler", None) is not None:
        backbone.pooler = None
    return backbone


class PooledSequenceClassifier(PreTrainedModel):
    config_class = PretrainedConfig
    base_model_prefix = "backbone"
    supports_gradient_checkpointing = True

    def __init__(self, config: PretrainedConfig):
        super().__init__(config)
        self.backbone = drop_unused_pooler(AutoModel.from_config(config))
        self.pooling = getattr(config, "classifier_pooling", "cls")
        dropout = getattr(config, "classifier_dropout", None)
        if dropout is None:
            dropout = getattr(config, "hidden_dropout_prob", 0.1)
        self.dropout = nn.Dropout(dropout)
        self.pool_layers = getattr(config, "classifier_pool_layers", None)  # several layers, concatenated
        features = config.hidden_size * len(self.pool_layers or [-1])
        width = getattr(config, "classifier_hidden_size", None)  # an MLP head: frozen features often need one
        self.classifier = (nn.Linear(features, config.num_labels) if not width else
                           nn.Sequential(nn.Linear(features, width), nn.GELU(), nn.Dropout(dropout),
                                         nn.Linear(width, config.num_labels)))
        self.post_init()

    def features(self, input_ids=None, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        """Pooled backbone output: what feature extraction caches."""
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        if not self.pool_layers:
            hidden = self.backbone(**kwargs).last_hidden_state
            return pool(hidden, attention_mask, self.pooling)
        # Each layer normalized on its own: deeper layers' states are larger, and a head fed the raw
        # concatenation mostly hears the loudest layer.
        states = self.backbone(**kwargs, output_hidden_states=True).hidden_states
        pooled = [pool(states[i], attention_mask, self.pooling) for i in self.pool_layers]
        return torch.cat([nn.functional.layer_norm(p, p.shape[-1:]) for p in pooled], dim=-1)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None,
                features=None, output_hidden_states=None, **unused) -> SequenceClassifierOutput:
        """output_hidden_states: the pooled features, as hidden_states=(features,) (distillation matches them)."""
        if features is None:
            features = self.features(input_ids, attention_mask, token_type_ids)
        head_dtype = next(self.classifier.parameters()).dtype
        logits = self.classifier(self.dropout(features.to(head_dtype)))  # k-bit bases: bf16 out
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.float(), labels)
        return SequenceClassifierOutput(loss=loss, logits=logits,
                                        hidden_states=(features,) if output_hidden_states else None)
