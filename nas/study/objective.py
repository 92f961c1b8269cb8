"""One Optuna trial: sample -> config -> costs -> (cost limits) -> train -> stored trial.

Objectives (nas.study.metrics): validation accuracy (maximise) and one or two costs
(minimise), by default MACs (fvcore) in millions at batch 1. Every trial measures all the
costs it can, whatever the objectives: parameters, MACs, CPU latency, and on a GPU with
the GPU to itself its latency and throughput, its CPU latency (on one core beside training
on a GPU, after training on a CPU, before training if a limit needs it) and after
training the step's GPU memory (a trial over its MAC or parameter limit is not trained,
and timed only where the time is an objective). What a trial stores, and under which
keys, is nas.study.record's: the costs with unit, device and runs, the architecture JSON,
train time, throughput, device. A cost limit (`--max-mmacs`, `--max-params`,
`--max-latency-ms`, `--max-memory-mb`) is an Optuna constraint (`trial.set_constraint`);
a trial over one whose cost is known before training is not trained: its accuracy value
is 0.0, it is recorded as not trained and over those limits; Optuna keeps infeasible
trials off the Pareto front. A network the study has already trained (same config, same
seed) is not trained again: the trial takes its twin's values and is recorded as its
duplicate (not trained, so the front counts the network once).

A trial that runs out of memory, diverges (NaN loss) or samples an architecture the
builder rejects fails alone: its reason is recorded, the device memory is released, and
the search goes on.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import optuna
import torch
from tqdm import tqdm

from nas.arch.config import ArchConfig
from nas.arch.macs import measure_cost
from nas.arch.space import SearchSpace, sample
from nas.data.dataset import Dataset
from nas.deploy.artifact import image_shape
from nas.deploy.timing import SHIPPED_FLOOR, shipped_latency
from nas.errors import ConfigError, StopFlag, exception_chain, first_line, interruption
from nas.study.metrics import DEFAULT_OBJECTIVES, METRICS, Limits
from nas.study.record import TrialRecord, write_trial
from nas.study.rungs import Halving, earlier_promotion, rung_of
from nas.training.budget import TrainBudget
from nas.training.fit import Diverged, TrainResult, train_and_evaluate
from nas.training.gpu import out_of_memory, release_if_large, release_memory
from nas.training.measure import MEMORY_NOTE, Measured, cpu_latency, gpu_latency_and_throughput

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
    gpu = out_of_memory(e)
    if gpu is not None:
        return f"out of GPU memory: {first_line(gpu)}"
    for x in exception_chain(e):
        text = str(x)
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
    data: Dataset  # already on the training device
    label: str = ""  # prefix of this worker's progress lines ("[w1] " with several)
    stop: StopFlag | None = None  # set when trials run in threads (nas.parallel.threads)
    objectives: tuple[str, ...] = DEFAULT_OBJECTIVES  # nas.study.metrics; accuracy first
    limits: Limits = field(default_factory=Limits)  # the cost limits (--max-*)
    gpu_timing: bool = False  # time GPU latency and throughput (the GPU to this trial alone)
    # trials that may run at once on this host (workers x concurrency): above 1, a timed
    # cost may include the others' load; stored on each trial, so the report can say so
    beside: int = 1
    halving: Halving | None = None  # a halving search: each run trains for its rung's budget
    # One trial samples at a time: the sampler's state is shared, and a --seed reseeds it
    # per trial (nas.parallel.workers), so draws of trials running side by side must not
    # interleave.
    _sampling: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __call__(self, trial: optuna.Trial) -> tuple[float, ...]:
        reason = None
        try:
            values = self._run(trial)
            # this trial's graph pools go back to CUDA only when the cache is large
            release_if_large(self.data.train_x.device)
            return values
        except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM, SIGHUP (nas.cli)
            write_trial(trial, fail_reason=f"interrupted ({interruption(e)[0]})")
            raise
        except Exception as e:
            reason = failure_reason(e)
            if reason is None:
                raise
        # Out of the except block: the traceback (and the model and CUDA graph its frames
        # hold) is gone, so the memory can go back to the device.
        release_memory()
        write_trial(trial, fail_reason=reason)
        raise TrialFailed(reason)

    def _run(self, trial: optuna.Trial) -> tuple[float, ...]:
        """Sample, look for a trained twin, measure costs, check budgets, train, record."""
        t0 = time.perf_counter()
        with self._sampling:
            config = sample(trial, self.space)
        # after sampling: a pruned trial with no parameters would empty multivariate TPE's
        # search space (the intersection of every trial's, pruned ones included) for good
        rung = self._rung(trial)
        seed = TrialRecord.of(trial).seed  # nas.refine's trials name their seed
        twin = trained_twin(trial, config.to_dict(), seed, rung, self.halving)
        if twin is not None:  # TPE proposes what it has seen: never train it twice
            return self._reuse(trial, twin)
        t1 = time.perf_counter()
        constraints: dict[str, float] = {}
        costs, over = self._costs_before_training(trial, config, constraints)
        t2 = time.perf_counter()
        if over:  # known before training: not trained
            write_trial(trial, trained=False, over_budget=over)
            return self.values(0.0, costs)
        b = self.budget if seed is None else self.budget.with_seed(seed)
        if self.halving is not None and rung is not None:
            b = self.halving.budget(b, rung)
        r, timer = self._train(trial, config, b, costs)
        t3 = time.perf_counter()
        if timer is not None:  # the CPU latency, timed beside training
            costs["latency_cpu"] = timer.result()
        if r.step_memory_bytes is not None:
            costs["memory"] = {
                "value": r.step_memory_bytes / 1e6,
                "unit": "MB",
                "device": f"{r.device}, batch {b.batch_size}",
                "note": MEMORY_NOTE,
            }
            over = self._constrain(trial, costs, constraints)
            if over:  # trained, but over a budget known only now
                write_trial(trial, over_budget=over)
        write_trial(trial, costs=costs)
        if rung is not None:
            write_trial(
                trial,  # the rungs below, as queued (a retry may carry its own too)
                rung_accuracies=(*TrialRecord.of(trial).rung_accuracies[:rung], r.accuracy),
            )
        self._record(trial, r, (t0, t1, t2, t3))
        return self.values(r.accuracy, costs)

    def _rung(self, trial: optuna.Trial) -> int | None:
        """The run's rung in a halving search (a new network's: 0), else None. A promotion
        another worker queued first is pruned here, untrained."""
        if self.halving is None:
            return None
        rung = TrialRecord.of(trial).rung
        if rung is None:
            write_trial(trial, rung=0)
            return 0
        earlier = earlier_promotion(trial)
        if earlier is not None:
            write_trial(trial, duplicate_of=earlier)
            raise optuna.TrialPruned(f"trial {earlier} takes the same network up a rung")
        return rung

    def _reuse(self, trial: optuna.Trial, twin: optuna.trial.FrozenTrial) -> tuple[float, ...]:
        """The values of the twin the study already trained (same network and seed)."""
        a = TrialRecord.of(twin)
        write_trial(
            trial,
            config=a.config,
            params=a.params,
            macs_fvcore=a.macs_fvcore,
            costs=a.costs,
            duplicate_of=twin.number,
            trained=False,  # its values are its twin's
        )
        self._constrain(trial, a.costs, {})
        return tuple(twin.values)

    def _costs_before_training(
        self, trial: optuna.Trial, config: ArchConfig, constraints: dict[str, float]
    ) -> tuple[dict[str, dict], list[str]]:
        """MACs and parameters; CPU latency if a budget needs it before training or the
        objective needs it of a network that will not be trained (else after training: a
        trial that fails, out of memory say, is never timed); GPU latency and throughput
        where timed. Returns the costs and the budgets they break."""
        cost = measure_cost(config)
        costs: dict[str, dict] = {
            "macs": {"value": cost.fvcore_macs / 1e6, "unit": "MMACs (fvcore)", "device": "-"},
            "params": {"value": cost.params / 1e6, "unit": "M", "device": "-"},
        }
        write_trial(
            trial,
            config=config.to_dict(),
            params=cost.params,
            macs_fvcore=cost.fvcore_macs,
            fvcore_seconds=round(cost.fvcore_seconds, 4),
        )
        # Over the MAC or parameter budget: infeasible, not trained, and timed only where
        # the time is an objective (a value Optuna needs, finite for optuna-dashboard).
        over = self._constrain(trial, costs, constraints)
        wanted = {METRICS[n].key for n in self.objectives}
        if (not over and "latency_cpu" in self.limits.needs()) or (
            over and "latency_cpu" in wanted
        ):
            costs["latency_cpu"] = cpu_latency(
                config, budget_ms=self.limits.get("latency_cpu")
            ).to_dict()
            if not over:  # over a MAC or parameter budget already: nothing to confirm
                self._confirm_as_shipped(config, costs)
        device = self.data.train_x.device
        if self.gpu_timing and device.type == "cuda" and (not over or "latency_gpu" in wanted):
            latency, throughput = gpu_latency_and_throughput(config, device)
            costs["latency_gpu"] = latency.to_dict()
            costs["throughput_gpu"] = throughput.to_dict()
        over += self._constrain(trial, costs, constraints)
        write_trial(trial, costs=costs, timed_beside=self.beside)
        return costs, over

    def _confirm_as_shipped(self, config: ArchConfig, costs: dict[str, dict]) -> None:
        """A network the eager stand-in puts over the CPU latency budget, but by less than
        the package could save, is timed as shipped before it is ruled out (its CPU
        package compiled and timed in a fresh process: tens of seconds); that figure
        judges the budget (nas.study.metrics.judged_value)."""
        budget = self.limits.get("latency_cpu")
        eager = costs["latency_cpu"]["value"]
        if budget is None or not budget < eager <= budget / SHIPPED_FLOOR:
            return
        shape = image_shape(*self.data.train_x.shape[1:])
        try:
            costs["latency_cpu_shipped"] = shipped_latency(config, shape, budget).to_dict()
        except RuntimeError as e:  # no C++ compiler, say: the eager figure judges
            costs["latency_cpu"]["shipped_error"] = first_line(e)

    def _train(
        self, trial: optuna.Trial, config: ArchConfig, b: TrainBudget, costs: dict[str, dict]
    ) -> tuple[TrainResult, CpuLatencyTimer | None]:
        """Train and score; the CPU latency, if still to measure, beside it (on a GPU)."""
        d = self.data
        progress = TrialProgress(
            f"{self.label}trial {trial.number:>4}", b.steps, b.batch_size, stop=self.stop
        )
        if self.stop is not None:
            self.stop.check()
        timer = (
            None
            if "latency_cpu" in costs
            else CpuLatencyTimer(config, d.train_x.device, self.limits.get("latency_cpu"))
        )
        r = train_and_evaluate(
            config,
            b,
            d.train,
            d.val,
            on_step=progress,
            on_warm=None if timer is None else timer.start,
        )
        return r, timer

    def _record(self, trial: optuna.Trial, r: TrainResult, marks: tuple[float, ...]) -> None:
        """What a user may browse, and where the trial's time went (seconds), for the
        benchmark's overhead split; marks: the times sampling, costing and training began
        and training ended."""
        t0, t1, t2, t3 = marks
        t4 = time.perf_counter()
        write_trial(
            trial,
            trained=True,
            train_seconds=round(r.train_seconds, 3),
            train_images=r.train_images,
            images_per_second=round(r.images_per_second, 1),
            final_loss=round(r.final_loss, 5),
            device=r.device,
            step_mode=r.step_mode,
        )
        seconds = {
            "sample": t1 - t0,
            "cost_and_attrs": t2 - t1,  # fvcore, GPU timing, storage writes
            "setup": t3 - t2 - r.train_seconds - r.eval_seconds,  # build, to(device)
            "warmup": r.warmup_seconds,  # first steps incl. CUDA graph capture
            "steady_train": r.train_seconds - r.warmup_seconds,
            "eval": r.eval_seconds,
            "latency_cpu": t4 - t3,  # waiting for the CPU latency (beside training on a GPU)
            "attrs": time.perf_counter() - t4,
        }
        write_trial(trial, seconds={k: round(v, 4) for k, v in seconds.items()})

    def values(self, accuracy: float, costs: dict[str, dict]) -> tuple[float, ...]:
        """The study's objective values; a cost never measured (the training memory of a
        trial over a budget known before training, which is not trained) is +inf, and such
        a trial is infeasible anyway."""
        out = [accuracy]
        for name in self.objectives[1:]:
            entry = costs.get(METRICS[name].key)
            out.append(entry["value"] if entry else math.inf)
        return tuple(out)

    def _constrain(
        self, trial: optuna.Trial, costs: dict[str, dict], done: dict[str, float]
    ) -> list[str]:
        """Record each limit's constraint (over > 0: infeasible) whose cost is measured and
        not yet recorded in `done`; return the costs over their limit."""
        keys = {name: key for name, key, _, _ in self.limits.checks()}
        over = []
        for name, excess in self.limits.excess(costs).items():
            if name in done:
                continue
            done[name] = excess
            trial.set_constraint(name, excess)
            if excess > 0:
                over.append(keys[name])
        if done:  # optuna-dashboard 0.21 reads constraints only from this older attribute
            trial.storage.set_trial_system_attr(
                trial._trial_id, "constraints", list(done.values())
            )
        return over


class CpuLatencyTimer:
    """A trial's CPU latency. Training on a GPU leaves the CPU nearly idle, so there it is
    timed on one core while the trial trains, from `start()`, which the training loop
    calls once warm-up and graph capture are over (model build, warm-up and capture
    would compete with it for the GIL); on the CPU, where training takes every core, it
    is timed after training. `result()` waits for it (and starts it if never started)."""

    def __init__(
        self, config: ArchConfig, device: torch.device, budget_ms: float | None = None
    ) -> None:
        self.config, self.beside, self.budget_ms = config, device.type == "cuda", budget_ms
        self._timing: Future[Measured] | None = None

    def start(self) -> None:
        if self.beside and self._timing is None:
            pool = ThreadPoolExecutor(1, thread_name_prefix="nas-cpu-latency")
            self._timing = pool.submit(cpu_latency, self.config, budget_ms=self.budget_ms)
            pool.shutdown(wait=False)

    def result(self) -> dict:
        if self._timing is None:
            return cpu_latency(self.config, budget_ms=self.budget_ms).to_dict()
        return self._timing.result().to_dict()


def trained_twin(
    trial: optuna.Trial,
    config: dict,
    seed: int | None = None,
    rung: int | None = None,
    halving: Halving | None = None,
) -> optuna.trial.FrozenTrial | None:
    """The study's first complete, trained trial of exactly this architecture, seed and
    rung, if any (a study holds one budget per rung, so its accuracy is this trial's too;
    in a halving search a trial from before it halved is of the top rung)."""
    for t in trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        a = TrialRecord.of(t)
        at = a.rung if halving is None else rung_of(a, halving)
        if a.trained and a.config == config and a.seed == seed and at == rung:
            return t
    return None
