"""Speed of the engine against the usual tutorial loop: `python -m experiments.bench [--quick] [--out PATH]`.

Same model (784-256-256-10 MLP), batch 256, Adam, one epoch over the 54k training images; the
tutorial loop is torchvision's FashionMNIST + DataLoader + per-sample transforms.  Medians over
repeats, the first (warm-up) epoch excluded.  Also the fraction of the machine's fp32
matrix-multiply rate that a wide MLP's training step reaches.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from . import data as data_mod
from . import results
from .catalog import RunSpec
from .train import fit

BATCH = 256


def engine_epoch_seconds(data, spec: RunSpec, device, epochs: int) -> list[float]:
    """Per-epoch seconds of the real training loop (evaluation made negligible: 256 images)."""
    small_eval = data_mod.FashionMNIST(data.train, data.val.head(256), data.test.head(256),
                                       data.mean, data.std, data.source)
    run = fit(small_eval, spec.with_overrides(epochs=epochs), seed=0, device=device)
    return [h["seconds"] for h in run["history"]][1:]


def tutorial_epoch_seconds(augment: bool, workers: int, epochs: int, max_batches: int | None) -> list[float]:
    """The loop most tutorials show: a Dataset of PIL images, per-sample transforms, a DataLoader."""
    from torchvision import datasets, transforms
    steps = [transforms.RandomResizedCrop(28), transforms.RandomHorizontalFlip()] if augment else []
    tf = transforms.Compose(steps + [transforms.ToTensor(), transforms.Normalize((0.2860,), (0.3530,))])
    ds = datasets.FashionMNIST(str(data_mod.DATA_ROOT), train=True, transform=tf)
    ds = torch.utils.data.Subset(ds, range(54000))                       # the engine's training size
    loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=workers)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                          nn.Linear(256, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        for b, (x, y) in enumerate(loader):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if max_batches and b + 1 >= max_batches:
                break
        times.append(time.perf_counter() - start)
    return times[1:]


def matmul_flops(n: int = 2048, repeats: int = 10) -> float:
    """fp32 FLOP/s of a large square torch.mm: the machine's practical matrix-multiply limit."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / statistics.median(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny repeats: checks the output, not the speed")
    args = parser.parse_args(argv)
    device = torch.device("cpu")
    data = data_mod.load(device)
    epochs = 2 if args.quick else 4
    spec = RunSpec(depth=2, width=256, schedule="constant")
    if args.quick:
        data = data.subset(4096, 256)
    max_batches = 16 if args.quick else None
    engine_plain = statistics.median(engine_epoch_seconds(data, spec, device, epochs))
    engine_aug = statistics.median(engine_epoch_seconds(data, spec.with_overrides(augment="crop+flip"), device, epochs))
    tut_plain = statistics.median(tutorial_epoch_seconds(False, 0, epochs, max_batches))
    tut_aug = statistics.median(tutorial_epoch_seconds(True, 2, epochs, max_batches))
    out = {"engine_plain_s": engine_plain, "engine_augmented_s": engine_aug,
           "tutorial_plain_s": tut_plain, "tutorial_augmented_s": tut_aug,
           "speedup_plain": tut_plain / engine_plain, "speedup_augmented": tut_aug / engine_aug,
           "matmul_flops": matmul_flops(512 if args.quick else 2048), "quick": args.quick,
           "threads": torch.get_num_threads(), "cpu_count": results.os.cpu_count()}
    for k, v in out.items():
        print(f"{k:>22}: {v:.3f}" if isinstance(v, float) else f"{k:>22}: {v}")


if __name__ == "__main__":
    main()
