"""Speed, measured in one run on one machine: `python -m experiments.bench [--quick] [--out PATH]`.

1. The engine against the usual tutorial loop (torchvision FashionMNIST + DataLoader + per-sample
   transforms): same 784-256-256-10 MLP, batch 256, Adam, one epoch over the 54k training images.
2. The fraction of the machine's fp32 matrix-multiply rate (a large torch.mm) that the training
   step of a wide MLP reaches, counting the forward and backward matrix multiplies.
3. Time to 89% test accuracy, airbench-style: one fixed recipe, no early stopping, several seeds;
   the claim holds only if the mean test accuracy of those seeds is at least 89%.
4. On CUDA, the population engine (experiments/population.py): milliseconds per member-epoch of the
   base MLP in a population of 32, time to 89% with the 5 seeds as one population, the fraction of
   the card's bf16 matrix-multiply rate a population step reaches, and the wall time of the whole
   study (every experiment `make all` runs, reference seeds, one process).
Medians over repeats, the first (warm-up) repeat excluded.  --quick checks the output's shape on
tiny sizes: its numbers are not speeds.  Where CUDA is available the default is the GPU bench,
written to results/bench-cuda.json (the CPU figures of results/bench.json come from the 2-core
reference machine, not from a GPU host's CPU).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from . import data as data_mod
from . import results
from .catalog import RunSpec
from .models import MLP
from .train import fit, make_optimizer

BATCH = 256
# The time-to-89% recipe: the study's base RunSpec (2 x 256, Adam 1e-3, cosine) at 15 epochs, fixed
# in advance, not tuned on the test set.
RECIPE_89 = RunSpec(epochs=15)
SEEDS_89 = 5


def engine_epoch_seconds(data, spec: RunSpec, device, epochs: int) -> list[float]:
    """Per-epoch seconds of the real training loop (its per-epoch evaluation shrunk to 256 images)."""
    small_eval = data_mod.FashionMNIST(data.train, data.val.head(256), data.test.head(256),
                                       data.mean, data.std, data.source)
    run = fit(small_eval, spec.with_overrides(epochs=epochs), seed=0, device=device)
    return [h["seconds"] for h in run["history"]][1:]


def tutorial_epoch_seconds(mean: float, std: float, augment: bool, workers: int, epochs: int,
                           max_batches: int | None, device: torch.device) -> list[float]:
    """The loop most tutorials show: a Dataset of PIL images, per-sample transforms, a DataLoader."""
    from torchvision import datasets, transforms
    steps = [transforms.RandomResizedCrop(28), transforms.RandomHorizontalFlip()] if augment else []
    tf = transforms.Compose(steps + [transforms.ToTensor(), transforms.Normalize((mean,), (std,))])
    ds = torch.utils.data.Subset(datasets.FashionMNIST(str(data_mod.DATA_ROOT), train=True, transform=tf),
                                 range(54000))                   # the engine's training-set size
    loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=workers)
    torch.manual_seed(0)
    model = MLP(depth=2, width=256).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        for b, (x, y) in enumerate(loader):
            x, y = x.to(device), y.to(device)
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if max_batches and b + 1 >= max_batches:
                break
        _sync(device)
        times.append(time.perf_counter() - start)
    return times[1:]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn, repeats: int, device: torch.device = torch.device("cpu")) -> float:
    return _interleaved_median_seconds([fn], repeats, device)[0]


def _interleaved_median_seconds(fns, repeats: int, device: torch.device) -> list[float]:
    """Median seconds of each fn, timed in alternating rounds so that all of them see the same
    moments of a machine whose speed drifts (on a shared 2-core VM, a step and a peak timed one after
    the other once gave a 'fraction of peak' of 160%)."""
    for fn in fns:
        fn()                                                    # warm-up
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, spent in zip(fns, times):
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            spent.append(time.perf_counter() - start)
    return [statistics.median(spent) for spent in times]


def matmul_work(n: int, device: torch.device, dtype=torch.float32):
    """(FLOPs, fn) of an n x n torch.mm: the machine's practical matrix-multiply limit."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n ** 3, lambda: a @ b


def mlp_step_flops(width: int, batch: int, depth: int = 2) -> int:
    """Matrix-multiply FLOPs of one training step of a 784-width^depth-10 MLP: forward 2BKN per
    layer, backward 2BKN for weight gradients and 2BKN for input gradients (none for the first)."""
    layers = [(784, width)] + [(width, width)] * (depth - 1) + [(width, 10)]
    return sum(2 * batch * k * n * (2 if i == 0 else 3) for i, (k, n) in enumerate(layers))


def train_step_work(width: int, batch: int, device: torch.device):
    """(FLOPs, fn) of a training step of a 784-width-width-10 MLP (Adam), counting the matrix
    multiplies only: forward 2BKN per layer, backward 2BKN for weight gradients and 2BKN for input
    gradients (none for the first layer, whose input needs no gradient). fp32, the engine's optimizer."""
    torch.manual_seed(0)
    model = MLP(depth=2, width=width).to(device)
    opt = make_optimizer(model, RunSpec())
    x, y = torch.randn(batch, 1, 28, 28, device=device), torch.randint(0, 10, (batch,), device=device)

    def step():
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return mlp_step_flops(width, batch), step


def time_to_89(data, device, seeds: int) -> dict:
    """Train RECIPE_89 with `seeds` seeds, one run at a time, as `experiments run` trains a run alone
    (a population of one: train.fit itself on the CPU, the CUDA-graphed batched backend on CUDA);
    its seconds include the engine's per-epoch evaluation."""
    from .population import Member, fit_population
    runs = [fit_population(data, [Member("t89", RECIPE_89, seed)], device)[0]["final"] for seed in range(seeds)]
    accs, secs = [r["test_acc"] for r in runs], [r["seconds"] for r in runs]
    return {"recipe": RECIPE_89.as_dict(), "seeds": seeds, "test_acc": accs, "seconds": secs,
            "mean_test_acc": statistics.mean(accs), "mean_seconds": statistics.mean(secs)}


def device_name(device: torch.device) -> str:
    """The card's name on CUDA, else the device type (what the bench and the GPU check record)."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def measure(data, device: torch.device, quick: bool) -> dict:
    """Every speed figure on one device."""
    epochs, max_batches, repeats = (2, 16, 2) if quick else (4, None, 10)
    spec = RunSpec(depth=2, width=256, schedule="constant")       # the engine's default precision (bf16)
    engine_plain = statistics.median(engine_epoch_seconds(data, spec, device, epochs))
    # the same in fp32, the tutorial loop's arithmetic: how much of the speed-up is not bf16's
    engine_fp32 = statistics.median(engine_epoch_seconds(data, spec.with_overrides(precision="fp32"), device, epochs))
    engine_aug = statistics.median(engine_epoch_seconds(data, spec.with_overrides(augment="crop+flip"), device, epochs))
    tutorial_plain = statistics.median(tutorial_epoch_seconds(data.mean, data.std, False, 0, epochs, max_batches, device))
    tutorial_aug = statistics.median(tutorial_epoch_seconds(data.mean, data.std, True, 2, epochs, max_batches, device))
    mm_flop, mm = matmul_work(256 if quick else (8192 if device.type == "cuda" else 2048), device)
    step_flop, step_fn = train_step_work(128 if quick else 1024, 256 if quick else 4096, device)
    mm_s, step_s = _interleaved_median_seconds([mm, step_fn], repeats, device)
    peak, step = mm_flop / mm_s, step_flop / step_s
    t89 = time_to_89(data, device, 1 if quick else SEEDS_89)
    return {"device_name": device_name(device),
            "engine_plain_epoch_s": engine_plain, "engine_augmented_epoch_s": engine_aug,
            "tutorial_plain_epoch_s": tutorial_plain, "tutorial_augmented_epoch_s": tutorial_aug,
            "speedup_plain": tutorial_plain / engine_plain, "speedup_augmented": tutorial_aug / engine_aug,
            "engine_plain_fp32_epoch_s": engine_fp32, "speedup_plain_fp32": tutorial_plain / engine_fp32,
            "engine_precision": spec.precision,
            "matmul_flops": peak, "train_step_flops": step, "peak_fraction": step / peak,
            "time_to_89": t89, "time_to_89_seconds": t89["mean_seconds"] if t89["mean_test_acc"] >= 0.89 else None}


def population_figures(data, device: torch.device, quick: bool, study: bool = True) -> dict:
    """The population engine on one device: member-epoch time, time to 89% as one population,
    fraction of the bf16 matrix-multiply rate, and the whole study's wall time."""
    from .population import Member, StackedRun, fit_population
    members_n, epochs, repeats = (4, 2, 3) if quick else (32, 4, 50)
    base = RunSpec(epochs=epochs)                               # the base 2 x 256 MLP, bf16
    pop = fit_population(data, [Member("base", base, s) for s in range(members_n)], device, "batched")
    epoch_s = statistics.median(h["seconds"] for h in pop[0]["history"][1:])   # epoch 1 captures the graphs
    # one training step of the population, timed alone (graph replay on CUDA), against bf16 torch.mm
    stack = StackedRun(data, [Member("base", base, s) for s in range(members_n)], device, None,
                       use_graphs=device.type == "cuda")
    orders = torch.stack([torch.randperm(len(data.train), device=device, generator=g) for g in stack.batch_gens])
    batch = stack._batch(orders, 0)
    mm_flop, mm = matmul_work(256 if quick else 8192, device, torch.bfloat16)
    mm_s, step_s = _interleaved_median_seconds([mm, lambda: stack._run_step(*batch)], repeats, device)
    step_flop = members_n * mlp_step_flops(base.width, base.batch_size)
    t0 = time.perf_counter()
    seeds = 1 if quick else SEEDS_89
    t89 = fit_population(data, [Member("t89", RECIPE_89, s) for s in range(seeds)], device, "batched")
    t89_wall = time.perf_counter() - t0
    accs = [r["final"]["test_acc"] for r in t89]
    return {"population_members": members_n,
            "member_epoch_ms": 1000 * epoch_s / members_n,
            "population_step_ms": 1000 * step_s, "bf16_matmul_flops": mm_flop / mm_s,
            "population_step_flops": step_flop / step_s, "bf16_peak_fraction": step_flop / step_s / (mm_flop / mm_s),
            "time_to_89_population": {"seeds": seeds, "test_acc": accs, "mean_test_acc": statistics.mean(accs),
                                      "wall_seconds": t89_wall},
            "study_seconds": study_seconds(device, quick) if study else None}


def study_seconds(device: torch.device, quick: bool) -> float:
    """Wall time of every experiment `make all` runs (reference seeds), one after another in this
    process, into a scratch folder: the committed results are not touched."""
    from . import runner
    from .catalog import EXPERIMENTS
    start = time.perf_counter()
    data = data_mod.load(device)                                 # once, as the GPU check does
    with tempfile.TemporaryDirectory() as tmp:
        for exp in EXPERIMENTS.values():
            if exp.optional:
                continue                                         # `make all` skips it without weights
            runner.run_experiment(exp, Path(tmp) / f"{exp.name}.json", ["bench"], quick=quick,
                                  device_name=device.type, fresh=True, log=lambda *a: None, data=data)
    return time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the output, not the speed")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu: results/bench.json; cuda (the default where available): results/bench-cuda.json")
    parser.add_argument("--out", type=Path, help="default results/bench.json, or results/bench-cuda.json on CUDA")
    parser.add_argument("--study-seconds", type=float, metavar="S",
                        help="CUDA: the study's wall time measured already (make gpu-check), instead of running it again")
    parser.add_argument("--study-lanes", type=int, default=1, metavar="N",
                        help="with --study-seconds: how many experiments that study trained side by side (gpu_check --lanes)")
    args = parser.parse_args(argv)
    quick, device = args.quick, torch.device(args.device)
    args.out = args.out or results.PROJECT_ROOT / "results" / ("bench-cuda.json" if device.type == "cuda" else "bench.json")
    started, t0 = results.now(), time.perf_counter()
    data = data_mod.load(device)
    if quick:
        data = data.subset(4096, 256)
    figures = measure(data, device, quick)
    if device.type == "cuda":
        figures.update(population_figures(data, device, quick, study=args.study_seconds is None))
        if args.study_seconds is not None:
            figures["study_seconds"] = args.study_seconds
        figures["study_lanes"] = args.study_lanes if args.study_seconds is not None else 1
    per_device = {device.type: figures}
    # Top level: this device's figures; `devices` holds them by device type (one schema for both files).
    out = {"schema_version": 2, "quick": quick, **figures, "devices": per_device,
           "threads": torch.get_num_threads(),
           "provenance": results.provenance(", ".join(d["device_name"] for d in per_device.values()),
                                            ["bench", *(["--quick"] if quick else [])], started)}
    out["provenance"]["command"] = " ".join(["python -m experiments.bench", *(sys.argv[1:] if argv is None else argv)])
    out["provenance"]["wall_seconds"] = time.perf_counter() - t0
    results.write_atomic(args.out, out)
    for key, value in out.items():
        if isinstance(value, float):
            print(f"{key:>28}: {value:.4g}")
    for name, figures in per_device.items():
        t89 = figures["time_to_89"]
        print(f"{name}: time to 89%: mean test accuracy {t89['mean_test_acc']:.2%} over {t89['seeds']} seed(s), "
              f"mean {t89['mean_seconds']:.1f} s")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
