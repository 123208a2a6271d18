"""Few-shot baselines. Importing the package registers every built-in method (prompting and the encoder
baselines), so METHODS is complete whichever module is imported first."""
from tlscale.fewshot import encoders  # noqa: F401  (registers linear_probe, setfit, zero_shot)
