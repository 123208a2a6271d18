"""Saved models at work: evaluate, predict, generate and export (merge adapters). Used by the CLI, the
runners (a ZeRO-3 adapter merged after training) and few-shot baselines."""
