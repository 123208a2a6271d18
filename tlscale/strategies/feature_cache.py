"""Feature extraction's speed-up: the frozen backbone runs once per example, the head reuses it."""
from __future__ import annotations

import torch


class FeatureCache:
    def __init__(self, size: int, store: bool = True):
        self.size = size
        self.store = store
        self.features: torch.Tensor | None = None
        self.filled = torch.zeros(size, dtype=torch.bool)

    @torch.no_grad()
    def _compute(self, model, batch: dict) -> torch.Tensor:
        backbone = model.backbone
        was_training = backbone.training
        backbone.eval()  # frozen means frozen: no dropout, so features are the same every epoch
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        features = model.features(**inputs)
        backbone.train(was_training)
        return features.float().cpu()

    def inputs(self, model, batch: dict, index: torch.Tensor) -> dict:
        """Model inputs with `features` in place of tokens."""
        model = getattr(model, "module", model)
        missing = ~self.filled[index]
        if not self.store:
            features = self._compute(model, batch)
        else:
            if missing.any():
                rows = missing.nonzero().squeeze(1).to(batch["input_ids"].device)
                sub = {k: v.index_select(0, rows) for k, v in batch.items() if k != "labels"}
                computed = self._compute(model, sub)
                if self.features is None:
                    self.features = torch.zeros(self.size, computed.shape[1])
                self.features[index[missing]] = computed
                self.filled[index[missing]] = True
            features = self.features[index]
        out = {"features": features.to(batch["input_ids"].device)}
        if "labels" in batch:
            out["labels"] = batch["labels"]
        return out
