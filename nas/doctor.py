"""`python -m nas.doctor`: what to run first on a new machine or cluster node.

One line per check, PASS / FAIL / SKIP with the figure that decided it; exit status 0
only if every check that ran passed. On a GPU (under a minute on an H200):

- environment: torch, CUDA, driver, GPU, bf16, and whether graph replays wait for
  captures on this PyTorch (nas.training.gpu.GRAPH_LOCK);
- data: Fashion-MNIST found and read;
- SGD: the capturable optimizer equals torch.optim.SGD over 6 steps in float64;
- graph step: CUDA-graph replays equal eager steps (cuDNN deterministic, bf16 autocast;
  the limit is one bf16 rounding of the loss, and an LR frozen at capture is shown to be
  far outside it);
- 2 steps: a run shorter than the warm-up trains and reads no graph pool;
- 40 trials at K=2: tiny networks, a few steps each, two at a time in threads, as
  `nas.search --concurrency 2` runs them: none fails, every stream distinct,
  live memory flat (the least of the first ten trials against the last ten), reserved
  never more than nas.training.gpu.RELEASE_BYTES over it (the cache is emptied only then: how
  often is shown);
- latency: the d2l chapter network's GPU latency at batch 1 and the spread of its runs;
- graph vs eager: that network's training images/s both ways.

On a CPU it runs the CPU checks (its latency on one core instead of the GPU's) and says
which GPU checks it skipped.
"""

from __future__ import annotations

import json
import platform
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import optuna
import torch

from nas.arch.config import D2L_CHAPTER, small_densenet
from nas.arch.model import build_model
from nas.arch.space import PRESETS, sample
from nas.cli import make_parser, run_cli
from nas.data.dataset import Dataset, load_fashion_mnist, resolve_data_dir
from nas.errors import StopFlag, error_line
from nas.parallel.threads import nvidia_smi, run_concurrently
from nas.training.budget import get_budget
from nas.training.fit import pick_device, train_and_evaluate
from nas.training.gpu import GRAPH_LOCK, GRAPHS, STREAMS, release_if_large, release_threshold
from nas.training.measure import WIDE, cpu_latency, gpu_latency_and_throughput
from nas.training.step import WARMUP_STEPS, TensorLRSGD, device_batch, make_step

__all__ = ["Check", "main", "run_checks"]

SGD_LIMIT = 1e-10  # float64: the two optimizers differ by ~1e-14 (tests/training/test_step.py)
BF16_LIMIT = 2.0**-8  # relative: one rounding of bf16's 8 significant bits
K2_TRIALS, K2_STEPS = 40, 6  # 6 steps: 3 warm-up, a capture, 2 replays
FLAT_MB = 64  # reserved memory may grow this much from the first trials to the last
NOISY_SPREAD = WIDE  # interquartile / median above this: the latency is said to be noisy


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # PASS, FAIL or SKIP
    figure: str  # what decided it, with its unit
    seconds: float


def _environment(device: torch.device) -> tuple[bool, str]:
    cpu = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    text = f"torch {torch.__version__}, Python {platform.python_version()}, CPU {cpu}"
    if device.type != "cuda":
        return True, text
    props = torch.cuda.get_device_properties(device)
    bf16 = torch.cuda.is_bf16_supported()
    driver = _driver_version()
    text += (
        f"; CUDA {torch.version.cuda}, driver {driver}, {props.name} "
        f"({props.total_memory / 2**30:.0f} GiB), bf16 {'yes' if bf16 else 'NO'}; "
        f"{GRAPH_LOCK.describe()}"
    )
    return bf16, text


def _driver_version() -> str:
    out = nvidia_smi("driver_version")
    return out[0] if out else "unknown (no nvidia-smi answer)"


def _sgd_exact() -> tuple[bool, str]:
    """Six float64 steps of TensorLRSGD against torch.optim.SGD on one small network."""
    config = small_densenet()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (96, 28, 28), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (96,), generator=g)
    lrs = [0.05, 0.1, 0.1, 0.07, 0.02, 0.0]
    ours, ref = build_model(config, seed=0).double(), build_model(config, seed=0).double()
    opt = TensorLRSGD(list(ours.parameters()), momentum=0.9, weight_decay=5e-4, nesterov=True)
    step = make_step(
        ours, opt, x, y, image_size=config.image_size, batch_size=16, cuda_graph=False
    )
    sgd = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    worst = 0.0
    for i, lr in enumerate(lrs):
        idx = torch.arange(16 * i, 16 * (i + 1))
        a = step.run(idx, lr).item()
        for group in sgd.param_groups:
            group["lr"] = lr
        loss = torch.nn.functional.cross_entropy(
            ref(device_batch(x[idx], config.image_size, torch.float64)), y[idx]
        )
        sgd.zero_grad()
        loss.backward()
        sgd.step()
        worst = max(worst, abs(a - loss.item()) / abs(loss.item()))
    for p, q in zip(ours.parameters(), ref.parameters()):
        worst = max(worst, ((p - q).abs().max() / q.abs().max().clamp_min(1e-300)).item())
    return worst < SGD_LIMIT, f"max relative difference {worst:.1e} (limit {SGD_LIMIT:.0e})"


def _graph_step(data: Dataset) -> tuple[bool, str]:
    """Eight steps eagerly and as graph replays, same weights, same batches; then eagerly
    with the LR frozen at the capture's value, the bug the comparison exists for."""
    config = small_densenet()
    device = data.train_x.device
    lrs = [0.1, 0.1, 0.1, 0.5, 0.0, 0.5, 0.0, 0.5]  # the LR jumps at every replay
    assert len(lrs) > WARMUP_STEPS + 2

    def run(graph: bool, frozen: bool = False) -> list[float]:
        model = build_model(config, seed=0).to(device, memory_format=torch.channels_last)
        opt = TensorLRSGD(list(model.parameters()), momentum=0.9, weight_decay=5e-4, nesterov=True)
        step = make_step(
            model, opt, data.train_x, data.train_y, image_size=28, batch_size=64, cuda_graph=graph
        )
        out = []
        for i, lr in enumerate(lrs):
            lr = lrs[WARMUP_STEPS] if frozen and i > WARMUP_STEPS else lr
            out.append(step.run(torch.arange(64 * i, 64 * (i + 1), device=device), lr).item())
        step.close()
        if graph and step.mode != "cuda-graph":
            raise RuntimeError(f"the step did not run as a graph: {step.mode}")
        return out

    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        eager, graphed, frozen = run(False), run(True), run(False, frozen=True)
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved

    def rel(a: list[float], b: list[float]) -> float:
        return max(abs(p - q) / abs(q) for p, q in zip(a, b))

    diff, bug = rel(graphed, eager), rel(frozen, eager)
    ok = diff <= BF16_LIMIT < bug
    return ok, (
        f"losses of {len(lrs)} steps differ by {diff:.1e} relative (limit 2^-8 = "
        f"{BF16_LIMIT:.1e}); an LR frozen at capture moves them by {bug:.1e}"
    )


def _two_steps(data: Dataset) -> tuple[bool, str]:
    b = replace(get_budget("smoke"), train_images=128, batch_size=64, val_images=200)
    r = train_and_evaluate(small_densenet(), b, data.train, data.val)
    ok = r.steps == 2 and r.step_memory_bytes is None
    return ok, f"{r.steps} steps, step mode {r.step_mode!r}, accuracy {r.accuracy:.3f}"


def _trials_at_k2(data: Dataset) -> tuple[bool, str]:
    """40 tiny trials, two at a time, as nas.search --concurrency 2 runs them."""
    device = data.train_x.device
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    configs = [sample(study.ask(), PRESETS["tiny"]) for _ in range(K2_TRIALS)]
    budget = replace(
        get_budget("smoke"), train_images=64 * K2_STEPS, batch_size=64, val_images=500
    )
    reserved: list[float] = []  # MB reserved after each trial, in the order they ended
    allocated: list[float] = []  # MB in live tensors then
    modes: list[str] = []
    errors: list[str] = []
    releases = 0
    counter = iter(range(K2_TRIALS))
    lock = threading.Lock()

    def body(slot: int) -> None:
        nonlocal releases
        while True:
            with lock:
                n = next(counter, None)
            if n is None:
                return
            try:
                r = train_and_evaluate(configs[n], budget, data.train, data.val)
                gpu_latency_and_throughput(configs[n], device)
                modes.append(r.step_mode)
            except Exception as e:  # noqa: BLE001 - counted and shown
                errors.append(f"trial {n}: {error_line(e, limit=120)}")
            released = release_if_large(device)  # as nas.study.objective does after a trial
            with lock:
                releases += released
                reserved.append(torch.cuda.memory_reserved(device) / 1e6)
                allocated.append(torch.cuda.memory_allocated(device) / 1e6)

    run_concurrently(2, device, body, StopFlag())
    handles = [s.cuda_stream for s in STREAMS.held().values()]
    distinct = len(set(handles)) == len(handles)
    # The other trial is mid-run whenever one ends, so one reading carries its memory too;
    # the least of ten readings is the floor a leak of live tensors would raise.
    early, late = min(allocated[:10]), min(allocated[-10:])
    # Finished trials' pools stay cached until the unused part passes the threshold:
    # reserved is flat when it never exceeds the live memory by more than that.
    limit = release_threshold(torch.cuda.get_device_properties(device).total_memory) / 1e6
    over = max(r - a for r, a in zip(reserved, allocated, strict=True))
    graphs = sum(m == "cuda-graph" for m in modes)
    ok = (
        not errors
        and distinct
        and graphs == K2_TRIALS
        and late - early <= FLAT_MB
        and over <= limit + FLAT_MB
    )
    text = (
        f"{K2_TRIALS - len(errors)}/{K2_TRIALS} trials ok, {graphs} as graphs; "
        f"{len(handles)} streams held, {'all distinct' if distinct else 'SOME SHARED'}; "
        f"live memory: least of trials 1-10 {early:.0f} MB, of trials "
        f"{K2_TRIALS - 9}-{K2_TRIALS} {late:.0f} MB (limit +{FLAT_MB} MB); reserved "
        f"{reserved[4]:.0f} MB after trial 5, {reserved[-1]:.0f} MB after trial {K2_TRIALS}, "
        f"at most {over:.0f} MB over live (limit {limit:.0f} + {FLAT_MB} MB); cache emptied "
        f"after {releases} of {K2_TRIALS} trials"
    )
    return ok, text + (f"; first error: {errors[0]}" if errors else "")


def _latency(device: torch.device) -> tuple[bool, str]:
    if device.type == "cuda":
        m, _ = gpu_latency_and_throughput(D2L_CHAPTER, device)
    else:
        m = cpu_latency(D2L_CHAPTER)
    noisy = (
        "; NOISY: other work on this machine? latencies closer than this spread are no ranking"
        if m.spread > NOISY_SPREAD
        else ""
    )
    return m.value > 0, (
        f"d2l chapter network: {m.value:.3f} {m.unit} median of {m.runs} runs, spread "
        f"{100 * m.spread:.1f}% (interquartile / median), fastest {m.fastest:.3f} {m.unit} "
        f"({m.device}){noisy}"
    )


def _graph_vs_eager(data: Dataset) -> tuple[bool, str]:
    b = replace(get_budget("short"), train_images=256 * 40, val_images=500)
    rates = {}
    for graph in (False, True):
        r = train_and_evaluate(D2L_CHAPTER, b, data.train, data.val, cuda_graph=graph)
        steady = r.train_seconds - r.warmup_seconds  # the steps after the warm-up's last
        rates[graph] = (r.steps - 1 - (WARMUP_STEPS if graph else 0)) * b.batch_size / steady
    return True, (
        f"d2l chapter network, batch {b.batch_size}, after warm-up: eager "
        f"{rates[False]:,.0f} images/s, CUDA graph {rates[True]:,.0f} images/s "
        f"(x{rates[True] / rates[False]:.2f})"
    )


def run_checks(
    device: torch.device, data_dir: str | None, report: Callable[[Check], None]
) -> list[Check]:
    """Run every check that applies to `device`; report(check) as each ends."""
    checks: list[Check] = []
    data: Dataset | None = None

    def check(name: str, fn: Callable[[], tuple[bool, str]], gpu_only: bool = False) -> None:
        if gpu_only and device.type != "cuda":
            result = Check(name, "SKIP", "needs a CUDA GPU", 0.0)
        else:
            t0 = time.perf_counter()
            try:
                ok, figure = fn()
            except Exception as e:  # noqa: BLE001 - a check that raises has failed
                ok, figure = False, error_line(e)
            result = Check(name, "PASS" if ok else "FAIL", figure, time.perf_counter() - t0)
        checks.append(result)
        report(result)

    def load() -> tuple[bool, str]:
        nonlocal data
        t0 = time.perf_counter()
        data = load_fashion_mnist(data_dir).to(device)
        return True, (
            f"Fashion-MNIST in {resolve_data_dir(data_dir)}: {len(data.train_x):,} train, "
            f"{len(data.val_x):,} val, {len(data.test_x):,} test images, on {device} in "
            f"{time.perf_counter() - t0:.1f} s"
        )

    def needs_data(fn: Callable[[Dataset], tuple[bool, str]]) -> Callable:
        def run() -> tuple[bool, str]:
            if data is None:
                return False, "no data (see the data check)"
            return fn(data)

        return run

    check("environment", lambda: _environment(device))
    check("data", load)
    check("SGD equals torch.optim.SGD (float64)", _sgd_exact)
    check("graph step equals eager step", needs_data(_graph_step), gpu_only=True)
    check("a run of 2 steps", needs_data(_two_steps))
    check(f"{K2_TRIALS} trials at K=2", needs_data(_trials_at_k2), gpu_only=True)
    check("latency", lambda: _latency(device))
    check("graph vs eager images/s", needs_data(_graph_vs_eager), gpu_only=True)
    if GRAPHS.off is not None:
        checks.append(Check("CUDA graphs still on", "FAIL", GRAPHS.off, 0.0))
        report(checks[-1])
    return checks


def _run(argv: list[str] | None) -> int:
    p = make_parser(
        "nas.doctor",
        "Check this machine for nas: environment, data, the training step (eager and as a "
        "CUDA graph), several trials at once, latency and speed. One line per check; exit "
        "status 0 only if every check that ran passed (1 if one failed).",
    )
    p.add_argument("--device", default="auto", help="auto (default), cuda or cpu")
    p.add_argument("--data-dir", help="Fashion-MNIST folder (default: $NAS_DATA_DIR or Debian's)")
    p.add_argument("--json", action="store_true", help="one JSON object at the end, for scripts")
    args = p.parse_args(argv)
    try:
        device = pick_device(args.device)
    except ValueError as e:
        from nas.errors import UsageError

        raise UsageError(str(e)) from None

    def report(c: Check) -> None:
        if not args.json:
            print(f"{c.status}  {c.name}: {c.figure}  ({c.seconds:.1f} s)", flush=True)

    checks = run_checks(device, args.data_dir, report)
    failed = [c for c in checks if c.status == "FAIL"]
    skipped = [c.name for c in checks if c.status == "SKIP"]
    if args.json:
        print(json.dumps({"device": str(device), "checks": [asdict(c) for c in checks]}))
    else:
        ran = len(checks) - len(skipped)
        print(
            f"{ran - len(failed)} of {ran} checks passed"
            + (f"; skipped (no GPU): {', '.join(skipped)}" if skipped else "")
        )
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("nas.doctor", _run, argv)


if __name__ == "__main__":
    sys.exit(main())
