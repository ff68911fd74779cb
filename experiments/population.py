"""Population training: the (variant, seed) members of one experiment whose networks share shapes,
trained as one stacked network that takes one step for all of them (stacked.py).

Why: on a GPU a training step of these MLPs is microseconds of arithmetic behind ~2 ms of kernel
launches and Python (../shared/gpu.md). Stacking k members into the same kernels (batched matrix
multiplies; batch norm over a [B, k*C] view) and replaying the whole step as one CUDA graph makes a
member-epoch far cheaper. The 2-core CPU is already compute-bound, so there the `loop` backend
trains each member with train.fit: bit for bit the serial run.

A member of the `batched` backend is built exactly as its serial run (same seed, models.build) and
keeps its own generators: batch order and augmentation draw from the serial run's generator,
dropout masks from a copy of the global stream the serial run draws them from. Its learning-rate
schedule, weight decay, penalties, label smoothing and dropout rate are per-member tensors; the
objective is a sum of per-member terms, so no gradient, statistic or NaN crosses members. Early
stopping, divergence and the end of training are decided per member at the end of an epoch, as in
train.fit; the members that stop in one epoch get their final evaluation together, then each is
finished like a serial run, and the population shrinks. The result schema is the serial one.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from . import stacked
from .catalog import RunSpec
from .data import FashionMNIST
from .planning import batchable
from .stacked import StackedRun
from .train import fit

BACKENDS = ("auto", "loop", "batched")


@dataclass(frozen=True)
class Member:
    """One (variant, seed) run of an experiment."""
    name: str
    spec: RunSpec
    seed: int


def shape_key(spec: RunSpec) -> tuple:
    """What must be equal for members to share one stacked network and optimizer family."""
    return (spec.model, spec.depth, spec.width, spec.batchnorm, tuple(spec.channels), spec.dropout > 0,
            spec.input_dropout > 0, "sgd" if spec.optimizer == "sgd" else "adam", spec.batch_size, spec.precision)


def resolve_backend(backend: str, device: torch.device) -> str:
    """auto: batched on CUDA (launch-bound, so stacking pays), loop elsewhere (exact, and the CPU is
    compute-bound already)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "batched" if device.type == "cuda" else "loop"
    return backend


def populations(members: list[Member], backend: str) -> list[list[Member]]:
    """Members grouped into populations, in catalog order: one per shape key under `batched` (a
    model it cannot stack runs alone), one per member under `loop`."""
    if backend == "loop":
        return [[m] for m in members]
    groups: dict = {}
    for m in members:
        key = shape_key(m.spec) if batchable(m.spec) else ("alone", m.name, m.seed)
        groups.setdefault(key, []).append(m)
    return list(groups.values())


class DeviceMemoryError(Exception):
    """One member alone does not fit in the device's memory; the message says what it needed."""


def fit_population(data: FashionMNIST, members: list[Member], device: torch.device, backend: str = "auto",
                   max_batches: int | None = None, on_finish=None, cuda_graphs: bool | None = None,
                   log=print, trained_as: list | None = None, notes: list | None = None,
                   phases: dict | None = None) -> list[dict]:
    """Train `members` (one population) and return their runs in order; `on_finish([(member, run),
    ...])` is called with the members that finish together (in one epoch of a stacked population,
    or one serial run), so a caller can save them, in one write, before the others are done.

    A population that runs out of device memory is split in two and its unfinished members start
    again (from their seeds: a restarted member repeats its draws exactly); finished members are
    kept. `trained_as` receives the size of each population that trained, `notes` what the
    provenance should say besides (a CUDA graph capture that failed, so the steps ran eagerly),
    `phases` the seconds spent building the stacked network, in training steps, in per-epoch
    evaluation and in finishing members (added up over the populations that trained)."""
    backend = resolve_backend(backend, device)
    runs: dict[int, dict] = {}

    def finished(done: list[tuple[int, dict]]):
        runs.update(done)
        if on_finish:
            on_finish([(members[j], run) for j, run in done])

    if backend == "loop" or not all(batchable(m.spec) for m in members):
        for j, m in enumerate(members):
            finished([(j, fit(data, m.spec, m.seed, device, max_batches=max_batches,
                              desc=f"{m.name} | seed {m.seed}"))])
            if trained_as is not None:
                trained_as.append(1)
        return [runs[j] for j in range(len(members))]
    if len({shape_key(m.spec) for m in members}) > 1:
        raise ValueError("members of one population must share their shapes (population.shape_key)")
    use_graphs = device.type == "cuda" if cuda_graphs is None else cuda_graphs
    pending = [list(range(len(members)))]
    while pending:
        rows, stack = pending.pop(0), None
        try:
            built = time.perf_counter()
            stack = StackedRun(data, [members[j] for j in rows], device, max_batches, use_graphs)
            built = time.perf_counter() - built
            stack.train(lambda done, rows=rows: finished([(rows[r], run) for r, run in done]))
        except BaseException as err:
            if stack is not None:   # its graphs let go holding SHARED (torch 2.11 unregisters them unlocked),
                stack._drop_graphs()    # not whenever the collector frees them, maybe in another lane's capture
            if not isinstance(err, torch.cuda.OutOfMemoryError):
                raise
            left = [j for j in rows if j not in runs]
            if device.type == "cuda":
                with stacked.SHARED:   # torch's allocator asserts that no other lane is capturing
                    torch.cuda.empty_cache()
            if len(left) == 1:
                m = members[left[0]]
                raise DeviceMemoryError(f"one run alone ({m.name}, seed {m.seed}) does not fit in the memory of "
                                        f"{device}: {str(err).splitlines()[0]} Use a smaller batch size or "
                                        "width, or a device with more memory.") from None
            half = (len(left) + 1) // 2
            log(f"  out of memory on {device} with {len(rows)} member(s) ({len(left)} unfinished): "
                f"split into populations of {half} and {len(left) - half}, unfinished members restart")
            pending[:0] = [left[:half], left[half:]]
            continue
        if trained_as is not None:
            trained_as.append(len(rows))
        if phases is not None:
            for name, seconds in {"build": built, **stack.phase_seconds}.items():
                phases[name] = phases.get(name, 0.0) + seconds
        if device.type == "cuda" and members[0].spec.model == "cnn" and notes is not None:
            notes.append(f"convolutions {stacked.CONV}, cuDNN autotuning {'on' if stacked.CUDNN_BENCHMARK else 'off'}")
        if stack.inputs_in_graph and notes is not None:
            notes.append("each step's inputs (rows, augmentation, dropout masks) made inside its CUDA graph")
        if stack.inputs_error and notes is not None:
            notes.append(f"CUDA graph capture with the step's inputs inside failed ({stack.inputs_error}): "
                         f"{len(rows)} member(s) had them made on the host")
        if stack.graph_error and notes is not None:
            notes.append(f"CUDA graph capture failed ({stack.graph_error}): {len(rows)} member(s) trained eagerly")
    return [runs[j] for j in range(len(members))]
