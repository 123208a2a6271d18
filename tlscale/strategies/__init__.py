"""Transfer strategies. Importing this package registers the built-in ones."""
from tlscale.strategies import lora, standard  # noqa: F401  (registers)
from tlscale.strategies.base import STRATEGIES, Strategy, build_strategy, count_parameters
from tlscale.strategies.learning_rates import parameter_groups

__all__ = ["STRATEGIES", "Strategy", "build_strategy", "count_parameters", "parameter_groups"]
