"""nas: a neural-architecture-search explorer for DenseNet on your images (Fashion-MNIST
by default).

The pipeline, one module each: space (sample) -> config -> model -> cost, measure (costs)
-> metrics (objectives, budgets) -> budget/step/fit (training) -> objective (trial) ->
concurrent, workers, storage -> search (CLI) -> front -> refine, report, export, train.
"""

from __future__ import annotations

from nas.arch.config import D2L_CHAPTER, ArchConfig
from nas.arch.space import PRESETS, SearchSpace, sample
from nas.errors import ConfigError
from nas.training.budget import BUDGETS, TrainBudget

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
