"""nas: a neural-architecture-search explorer for DenseNet on Fashion-MNIST.

The pipeline, one module each: space (sample) -> config -> model -> cost -> budget/train
-> objective (trial) -> storage -> search (CLI) -> export.
"""

from __future__ import annotations

from nas.budget import BUDGETS, TrainBudget
from nas.config import D2L_CHAPTER, ArchConfig, ConfigError
from nas.space import PRESETS, SearchSpace, sample

__all__ = [
    "BUDGETS",
    "D2L_CHAPTER",
    "PRESETS",
    "ArchConfig",
    "ConfigError",
    "SearchSpace",
    "TrainBudget",
    "sample",
]
