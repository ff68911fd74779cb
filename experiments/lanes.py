"""Experiments side by side in one process: each lane a thread with, on CUDA, its own stream.

Why: at 46b833d an H200 trained the study's populations one after another, and most of them kept it
far from busy: a training step of `depth`'s 10 members took 0.49 ms, one of `regularization`'s 100
members 3.4 ms (results/gpu-check.json: steps seconds over steps). Kernels queued on different
streams of one process can run at the same time (different processes take turns on a card without
MPS), and while one lane's host evaluates or saves finished members, the others keep the card busy.

Only the batched backend runs in lanes: each of its members draws from its own generators, while a
serial run (train.fit) draws dropout masks from torch's global generator, which lanes would share.
What the batched backend does share, the global generator while a member is built and CUDA graph
capture, is taken by one lane at a time (stacked.SHARED). Each experiment writes its own files.
"""
from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Iterator

import torch

from . import results


def run(jobs: list[tuple[str, Callable[[], object]]], lanes: int, device: torch.device
        ) -> Iterator[tuple[str, object, BaseException | None]]:
    """Run each job, (name, fn), and yield (name, its value, None) or (name, None, its exception)
    as it ends. lanes 1: one after another in this thread, as given. More: `lanes` threads take the
    jobs in the order given (longest first evens out the lanes' ends); on CUDA each thread queues
    its work on its own stream, which first waits for what this thread queued (the data set's copy
    to the card), and its job ends when its stream has done its work. When the caller stops (an
    interrupt), no lane starts another job."""
    if lanes < 1:
        raise ValueError(f"lanes={lanes}: give 1 (one experiment at a time) or more")
    if lanes == 1:
        for name, fn in jobs:
            try:
                yield name, fn(), None
            except Exception as err:   # the caller reports it and goes on with the others
                yield name, None, err
        return
    cuda = device.type == "cuda"
    origin = torch.cuda.current_stream(device) if cuda else None
    todo, ended, stop = queue.SimpleQueue(), queue.SimpleQueue(), threading.Event()
    for job in jobs:
        todo.put(job)

    def lane() -> None:
        stream = torch.cuda.Stream(device) if cuda else None   # the lane's own, for all its jobs
        while not stop.is_set():
            try:
                name, fn = todo.get_nowait()
            except queue.Empty:
                return
            try:
                ended.put((name, in_stream(stream, fn), None))
            except BaseException as err:   # reported by the caller; the lane takes the next job
                ended.put((name, None, err))

    def in_stream(stream, fn):
        if stream is None:
            return fn()
        stream.wait_stream(origin)
        with torch.cuda.stream(stream):
            try:
                return fn()
            finally:
                stream.synchronize()

    # Daemon threads: an interrupted caller (the check at its deadline) exits without waiting for
    # the jobs under way, which have saved what they finished (resumable, atomic writes).
    for i in range(min(lanes, len(jobs))):
        threading.Thread(target=lane, name=f"lane-{i}", daemon=True).start()
    try:
        for _ in jobs:
            while True:
                try:
                    yield ended.get(timeout=1.0)   # a timeout, so a signal reaches this thread at once
                    break
                except queue.Empty:
                    continue
    finally:
        stop.set()   # no lane starts another job


def longest_first(names: list[str], expected: dict[str, float] | None = None) -> list[str]:
    """`names` ordered by expected seconds (default expected_seconds(): the last card run's),
    longest first, those without an expectation last in the order given: lanes that take the long
    jobs first end closer together."""
    expected = expected_seconds() if expected is None else expected
    known = sorted((n for n in names if n in expected), key=lambda n: -expected[n])
    return known + [n for n in names if n not in expected]


def expected_seconds() -> dict[str, float]:
    """Each experiment's seconds in the committed results/gpu-check.json (the last card run), which
    orders the lanes; empty where it is absent or unreadable."""
    try:
        saved = json.loads((results.PROJECT_ROOT / "results" / "gpu-check.json").read_text())["experiments"]
        return {name: float(e["seconds"]) for name, e in saved.items() if "seconds" in e}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def refusal(lanes: int, backend: str, device: torch.device) -> str | None:
    """Why `lanes` lanes cannot train with this (resolved) backend on this device, or None. The
    loop backend's serial runs draw dropout masks from torch's global generator, which lanes would
    share. FMREPORT_CONV=unfold runs the CNN's convolutions as matrix multiplies at cuDNN's
    precision, switching torch's process-wide TF32 setting for each (stacked._ConvMatmul): in lanes
    only where FMREPORT_MATMUL already is that precision, so the switch is a no-op."""
    from . import stacked
    if lanes < 2:
        return None
    if backend != "batched":
        return (f"--lanes {lanes} needs the batched backend (--backend batched; auto is batched on CUDA): the loop "
                "backend's serial runs draw dropout masks from torch's global generator, which lanes would share")
    if device.type == "cuda" and stacked.CONV == "unfold" and \
            (stacked.MATMUL == "tf32") != torch.backends.cudnn.allow_tf32:
        return (f"--lanes {lanes} with FMREPORT_CONV=unfold and FMREPORT_MATMUL={stacked.MATMUL}: the CNN's "
                "convolutions would switch torch's process-wide TF32 setting to cuDNN's "
                f"({'tf32' if torch.backends.cudnn.allow_tf32 else 'ieee'}) while other lanes run their matrix "
                "multiplies; use --lanes 1, or another FMREPORT_CONV")
    return None
