"""One Optuna trial: sample -> config -> cost -> (budget check) -> train -> stored trial.

Two objectives: validation accuracy (maximise) and MACs (fvcore) in millions at batch 1
(minimise). Everything else a user may want to browse is a user attribute of the trial:
the architecture JSON, parameters, train time, throughput, device. With a MAC budget,
an architecture over it is marked infeasible through `trial.set_constraint` and is not
trained: its accuracy value is 0.0 and its `trained` attribute is false, and Optuna
keeps infeasible trials off the Pareto front.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import optuna
import torch

from nas.budget import TrainBudget
from nas.cost import measure_cost
from nas.data import FashionMNIST
from nas.space import SearchSpace, sample
from nas.train import Diverged, train_and_evaluate

__all__ = ["CATCH", "Objective"]

# Trial failures that cost one trial, not the search: the reason is stored on the trial.
CATCH = (Diverged, torch.OutOfMemoryError)


@dataclass
class Objective:
    space: SearchSpace
    budget: TrainBudget
    data: FashionMNIST  # already on the training device
    max_mmacs: float | None = None  # MACs (fvcore) budget in millions, or None

    def __call__(self, trial: optuna.Trial) -> tuple[float, float]:
        t0 = time.perf_counter()
        config = sample(trial, self.space)
        t1 = time.perf_counter()
        cost = measure_cost(config)
        mmacs = cost.fvcore_macs / 1e6
        trial.set_user_attr("config", config.to_dict())
        trial.set_user_attr("params", cost.params)
        trial.set_user_attr("fvcore_seconds", round(cost.fvcore_seconds, 4))
        t2 = time.perf_counter()
        if self.max_mmacs is not None:
            trial.set_constraint("mmacs_over_budget", mmacs - self.max_mmacs)
            if mmacs > self.max_mmacs:
                trial.set_user_attr("trained", False)
                return 0.0, mmacs
        d = self.data
        try:
            r = train_and_evaluate(config, self.budget, d.train_x, d.train_y, d.val_x, d.val_y)
        except CATCH as e:
            trial.set_user_attr("fail_reason", f"{type(e).__name__}: {e}"[:500])
            if d.train_x.is_cuda:
                torch.cuda.empty_cache()
            raise
        t3 = time.perf_counter()
        trial.set_user_attr("trained", True)
        trial.set_user_attr("train_seconds", round(r.train_seconds, 3))
        trial.set_user_attr("images_per_second", round(r.images_per_second, 1))
        trial.set_user_attr("final_loss", round(r.final_loss, 5))
        trial.set_user_attr("device", r.device)
        # Where the trial's time went (seconds), for the benchmark's overhead split.
        seconds = {
            "sample": t1 - t0,
            "cost_and_attrs": t2 - t1,
            "setup": t3 - t2 - r.train_seconds - r.eval_seconds,  # build, to(device)
            "warmup": r.warmup_seconds,  # first steps incl. CUDA graph capture
            "steady_train": r.train_seconds - r.warmup_seconds,
            "eval": r.eval_seconds,
            "attrs": time.perf_counter() - t3,
        }
        trial.set_user_attr("seconds", {k: round(v, 4) for k, v in seconds.items()})
        return r.accuracy, mmacs
