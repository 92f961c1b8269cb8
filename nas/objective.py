"""One Optuna trial: sample -> config -> cost -> (budget check) -> train -> stored trial.

Two objectives: validation accuracy (maximise) and MACs (fvcore) in millions at batch 1
(minimise). Everything else a user may want to browse is a user attribute of the trial:
the architecture JSON, parameters, train time, throughput, device. With a MAC budget,
an architecture over it is marked infeasible through `trial.set_constraint` and is not
trained: its accuracy value is 0.0 and its `trained` attribute is false, and Optuna
keeps infeasible trials off the Pareto front. A network the study has already trained
(same config, same seed) is not trained again: the trial takes its twin's values and
carries `duplicate_of` (its `trained` attribute is false, so the front counts the network
once).

A trial that runs out of memory, diverges (NaN loss) or samples an architecture the
builder rejects fails alone: its reason is stored as the `fail_reason` attribute, the
device memory is released, and the search goes on.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field

import optuna
import torch
from tqdm import tqdm

from nas.budget import TrainBudget
from nas.cli import exception_chain, interruption
from nas.concurrent import StopFlag, release_memory
from nas.config import ConfigError
from nas.cost import measure_cost
from nas.data import FashionMNIST
from nas.fit import Diverged, train_and_evaluate
from nas.space import SearchSpace, sample

__all__ = ["CATCH", "Objective", "TrialFailed", "failure_reason", "trained_twin"]


class TrialFailed(Exception):
    """A trial that failed for a reason of its own (stored as its fail_reason attribute)."""


# The trial failures that cost one trial, not the search (nas.search catches these).
CATCH = (TrialFailed,)


def failure_reason(e: BaseException) -> str | None:
    """A one-line reason if `e` is a per-trial failure, None if it is a bug to surface.

    An out-of-memory error counts wherever it stands in the exception's chain: during a
    CUDA graph capture it surfaces as the capture's own RuntimeError ("operation failed
    due to a previous error during capture"), raised while handling the OOM.
    """
    for x in exception_chain(e):
        text = str(x)
        if isinstance(x, torch.OutOfMemoryError) or (
            isinstance(x, RuntimeError) and "CUDA error: out of memory" in text
        ):
            return f"out of GPU memory: {text.splitlines()[0][:300] if text else 'CUDA OOM'}"
        if isinstance(x, RuntimeError) and "can't allocate memory" in text:
            return f"out of memory: {text[text.find('DefaultCPUAllocator') :][:300]}"
    if isinstance(e, Diverged):
        return f"diverged: {e}"
    if isinstance(e, ConfigError):
        return f"architecture rejected: {e}"
    return None


class TrialProgress:
    """Lines about a long trial while it trains: the first after `first` seconds, then one
    every `every` seconds (images done, elapsed, an estimate of the rest), in a terminal
    and in a log alike. Short trials print nothing."""

    def __init__(
        self,
        label: str,
        total_steps: int,
        batch: int,
        first: float = 30,
        every: float = 60,
        stop: StopFlag | None = None,
    ) -> None:
        self.label, self.total, self.batch = label, total_steps, batch
        self.t0 = time.perf_counter()
        self.next = self.t0 + first
        self.every = every
        self.stop = stop  # a trial thread stops here when the main thread was signalled

    def __call__(self, step: int, _loss: torch.Tensor) -> None:
        if self.stop is not None:
            self.stop.check()
        now = time.perf_counter()
        if now < self.next:
            return
        self.next = now + self.every
        done, elapsed = step + 1, now - self.t0
        left = elapsed / done * (self.total - done)
        tqdm.write(
            f"{self.label}: {done * self.batch:,} of {self.total * self.batch:,} images, "
            f"{elapsed:.0f} s, about {left:.0f} s of training left",
            file=sys.stdout,
        )
        sys.stdout.flush()


@dataclass
class Objective:
    space: SearchSpace
    budget: TrainBudget
    data: FashionMNIST  # already on the training device
    max_mmacs: float | None = None  # MACs (fvcore) budget in millions, or None
    label: str = ""  # prefix of this worker's progress lines ("[w1] " with several)
    stop: StopFlag | None = None  # set when trials run in threads (nas.concurrent)
    # One trial samples at a time: the sampler's state is shared, and a --seed reseeds it
    # per trial (nas.workers), so draws of trials running side by side must not interleave.
    _sampling: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __call__(self, trial: optuna.Trial) -> tuple[float, float]:
        reason = None
        try:
            return self._run(trial)
        except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM, SIGHUP (nas.cli)
            trial.set_user_attr("fail_reason", f"interrupted ({interruption(e)[0]})")
            raise
        except Exception as e:
            reason = failure_reason(e)
            if reason is None:
                raise
        # Out of the except block: the traceback (and the model and CUDA graph its frames
        # hold) is gone, so the memory can go back to the device.
        release_memory()
        trial.set_user_attr("fail_reason", reason)
        raise TrialFailed(reason)

    def _run(self, trial: optuna.Trial) -> tuple[float, float]:
        t0 = time.perf_counter()
        with self._sampling:
            config = sample(trial, self.space)
        seed = trial.user_attrs.get("seed")  # nas.refine's trials name their seed
        twin = trained_twin(trial, config.to_dict(), seed)
        if twin is not None:  # TPE proposes what it has seen: never train it twice
            for key in ("config", "params", "macs_fvcore"):
                trial.set_user_attr(key, twin.user_attrs[key])
            trial.set_user_attr("duplicate_of", twin.number)
            trial.set_user_attr("trained", False)  # its values are its twin's
            self._constrain(trial, twin.values[1])
            return twin.values[0], twin.values[1]
        t1 = time.perf_counter()
        cost = measure_cost(config)
        mmacs = cost.fvcore_macs / 1e6
        trial.set_user_attr("config", config.to_dict())
        trial.set_user_attr("params", cost.params)
        trial.set_user_attr("macs_fvcore", cost.fvcore_macs)
        trial.set_user_attr("fvcore_seconds", round(cost.fvcore_seconds, 4))
        t2 = time.perf_counter()
        if self._constrain(trial, mmacs):
            trial.set_user_attr("trained", False)
            return 0.0, mmacs
        d = self.data
        b = self.budget if seed is None else self.budget.with_seed(seed)
        progress = TrialProgress(
            f"{self.label}trial {trial.number:>4}", b.steps, b.batch_size, stop=self.stop
        )
        if self.stop is not None:
            self.stop.check()
        r = train_and_evaluate(config, b, d.train_x, d.train_y, d.val_x, d.val_y, on_step=progress)
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

    def _constrain(self, trial: optuna.Trial, mmacs: float) -> bool:
        """Record the MAC constraint (if there is a budget); True if over it."""
        if self.max_mmacs is None:
            return False
        over = mmacs - self.max_mmacs
        trial.set_constraint("mmacs_over_budget", over)
        # optuna-dashboard 0.21 reads constraints only from this older attribute.
        trial.storage.set_trial_system_attr(trial._trial_id, "constraints", [over])
        return over > 0


def trained_twin(
    trial: optuna.Trial, config: dict, seed: int | None = None
) -> optuna.trial.FrozenTrial | None:
    """The study's first complete, trained trial of exactly this architecture and seed, if
    any (a study holds one budget, so its accuracy is this trial's too)."""
    for t in trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        a = t.user_attrs
        if a.get("trained") is True and a.get("config") == config and a.get("seed") == seed:
            return t
    return None
