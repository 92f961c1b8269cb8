"""nas: a neural-architecture-search explorer for DenseNet on your images (Fashion-MNIST
by default).

The library, a folder per stage of the pipeline: arch (space -> config -> model, macs)
-> data (formats, decode, dataset) -> training (budget, step, fit, gpu, measure) ->
study (metrics, record, objective, storage) -> parallel (threads, workers, slurm, run)
-> results (front, picks, refinements, table, figures, page, artifacts). The commands
on top (search, refine, report, export, train, cost, dashboard, doctor) use it; errors
is what every layer raises.
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
