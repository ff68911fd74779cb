"""Which engine settings are fastest on this device, and where its training loop waits:
`python -m experiments.gpu_probe [--out FILE] [--device cuda] [--quick]`.

1. The `cnn` experiment's population (its spec, 10 members): milliseconds per training step, the
   step's inputs made as in training, with one grouped convolution for all members or one dense
   convolution per member (stacked.CONV), each with cuDNN's autotuner off and on, or each layer as
   one batched matrix multiply over im2col columns ("unfold"). On CUDA each step is a CUDA graph
   captured under that setting, so the five are timed in alternating rounds.
2. Host syncs: 20 training steps and one evaluation of the first population of every experiment
   under torch.cuda.set_sync_debug_mode("warn"), counted by source line. A sync inside the step
   loop makes the CPU wait for the GPU before it can queue the next step.
3. Where a step's time goes, for the same populations: milliseconds, each timed to a device sync,
   to make one step's inputs (batch, augmentation, dropout masks) on the host, to run the step on
   ready inputs (a graph replay on CUDA) and both in a row.
4. What a step's kernels do, for each experiment's first population as the study trains it (all its
   seeds; 1 in --quick): milliseconds for the forward pass and loss, for those and the backward
   pass (with the penalties' gradients), and for the whole step with its inputs copied in (the
   difference, `update_ms`, is the optimizer update with the copy-in, the decay, the soft threshold
   and the metrics), each captured as its own CUDA graph; the step's matrix-multiply and
   convolution FLOPs (torch.utils.flop_counter) and the rate they reach; a step of 10 in a row as
   training runs them, with the inputs made on the host (`host_loop_ms`, stacked.INPUTS "host")
   and, on CUDA, inside the graph (`graph_loop_ms`, INPUTS "graph"). The one that takes less of
   the study's time is named, each experiment's step weighted by the steps its populations train
   in the study (`study_steps`). For fp32 populations on CUDA the whole step again, captured with
   TF32 matrix multiplies (stacked.MATMUL "tf32") and timed in the same rounds; TF32 is named when
   it takes at most TF32_GAIN of the fp32 steps' time, weighted alike (convolutions keep cuDNN's
   precision, TF32 by torch's default, either way). On CUDA also `capture_ms`: the first step,
   which captures it (warm-up included), as training pays at each (re)capture.
5. Profiles, last: each experiment's first population under torch.profiler (on CUDA its graphs
   captured before): PROFILED_STEPS training steps, whose kernels (on the CPU: operators) that
   took the most are listed; then one epoch of as many steps and the members' finish as training
   runs them: for each phase of StackedRun.train (its `fmreport.*` ranges: steps, evaluate, finish
   and finish's parts) the host's milliseconds and the device's, and the kernels and host
   operations that took the most. Why: at 46b833d a finished member took 15-44 ms on an H200,
   more than its evaluation's arithmetic explains, and a step 2-10x what its FLOPs and memory
   traffic do; a profile says which kernels or host calls it is.
The JSON is written after each section (sections 4 and 5 after each experiment), so a time limit
keeps what was measured.
The fastest settings are printed as the environment to run the study with (FMREPORT_CONV,
FMREPORT_CUDNN_BENCHMARK, FMREPORT_INPUTS, FMREPORT_MATMUL) and saved under `fastest`, which
`gpu_check --probe` applies (and then checks the study's accuracies against the CPU's); the JSON
has every figure.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import time
import warnings
from pathlib import Path

import torch

from . import data as data_mod
from . import results, stacked
from .bench import _interleaved_median_seconds
from .catalog import EXPERIMENTS
from .population import Member, populations

# cuDNN's autotuner off and on for its convolutions; "unfold" runs none (matrix multiplies)
SETTINGS = [(conv, bench) for conv in ("grouped", "split") for bench in (False, True)] + [("unfold", False)]


def conv_settings(data, device: torch.device, members_n: int, repeats: int) -> list[dict]:
    """Per setting of SETTINGS: the CNN population's milliseconds per training step."""
    spec = EXPERIMENTS["cnn"].specs()["conv 32-64, fc 256"]
    steps, saved = [], (stacked.CONV, torch.backends.cudnn.benchmark)
    try:
        for conv, bench in SETTINGS:
            stacked.CONV, torch.backends.cudnn.benchmark = conv, bench
            stack = stacked.StackedRun(data, [Member("cnn", spec, s) for s in range(members_n)], device, None,
                                       use_graphs=device.type == "cuda")
            orders = torch.stack([torch.randperm(len(data.train), device=device, generator=g)
                                  for g in stack.batch_gens])
            stack._run_step(*stack._batch(orders, 0))            # captures under this setting
            steps.append(lambda stack=stack, orders=orders: stack._run_step(*stack._batch(orders, 1)))
        seconds = _interleaved_median_seconds(steps, repeats, device)
    finally:
        stacked.CONV, torch.backends.cudnn.benchmark = saved
    return [{"conv": conv, "cudnn_benchmark": bench, "members": members_n, "step_ms": 1000 * s}
            for (conv, bench), s in zip(SETTINGS, seconds)]


def experiment_probes(data, device: torch.device, steps: int) -> dict:
    """Per experiment, its first population (2 seeds per variant): the source lines that
    synchronised with the GPU, and how often, in `steps` training steps and one evaluation (after a
    warm-up step), under "host_syncs"; and under "step_ms" the milliseconds to make a step's
    inputs, to run the step on ready inputs, and both (medians over `steps` alternating rounds)."""
    found = {"host_syncs": {}, "step_ms": {}}
    for exp in EXPERIMENTS.values():
        if exp.optional:
            continue
        members = [Member(name, spec, seed) for name, spec in exp.specs().items() for seed in range(2)]
        first = populations(members, "batched")[0]
        stack = stacked.StackedRun(data, first, device, None, use_graphs=device.type == "cuda")
        stack.start_epoch()
        orders = stack.orders
        stack._run_step(*stack._batch(orders, 0))                # captures, as the first step of training does
        found["host_syncs"][exp.name] = {
            "steps": _syncs(lambda: [stack._run_step(*stack._batch(orders, b)) for b in range(1, steps + 1)], device),
            "evaluation": _syncs(lambda: stack._evaluate(data.val), device)}
        ready = stack._batch(orders, 1)
        inputs_s, step_s, both_s = _interleaved_median_seconds(
            [lambda: stack._batch(orders, 2), lambda: stack._run_step(*ready),
             lambda: stack._run_step(*stack._batch(orders, 3))], steps, device)
        found["step_ms"][exp.name] = {"members": len(first), "inputs": 1000 * inputs_s, "step_on_ready_inputs":
                                      1000 * step_s, "inputs_and_step": 1000 * both_s}
    return found


def step_parts(data, device: torch.device, quick: bool, repeats: int, found: dict | None = None,
               saved=lambda: None) -> dict:
    """Per experiment (section 4 of the module's docstring): milliseconds of the step's parts, its
    FLOPs and their rate, a step of several in a row with the inputs made on the host and (CUDA)
    inside the graph, and on CUDA for fp32 populations the step under TF32. An experiment whose
    probe fails records its error; the others still run. Each experiment's row goes into `found`
    as it is done, then saved() is called (a time limit keeps the rows done)."""
    return for_each_experiment("step_parts", lambda exp: _parts_of(exp, data, device, quick, repeats), found, saved)


def for_each_experiment(label: str, probe, found: dict | None = None, saved=lambda: None) -> dict:
    """found[name] = probe(experiment) for each experiment of the study, saved() after each; an
    experiment whose probe fails records its error, and the others still run (the device run has
    one try)."""
    found = {} if found is None else found
    for exp in EXPERIMENTS.values():
        if exp.optional:
            continue
        try:
            found[exp.name] = probe(exp)
        except Exception as err:   # a probe reports and goes on: the study still wants the others
            found[exp.name] = {"error": _error(err)}
            print(f"{label} {exp.name}: {found[exp.name]['error']}", file=sys.stderr)
        saved()
    return found


PROFILED_STEPS = 20   # training steps in a profiled epoch (then every member finishes)
TOP = 15              # kernels and host operations listed per profile


def _profile(exp, data, device: torch.device, quick: bool) -> dict:
    """Section 5 for one experiment: its first population (all seeds; 1 in --quick) under
    torch.profiler, twice: PROFILED_STEPS training steps as the loop runs them (`step_kernels`),
    then one epoch of as many steps and the members' finish as train() runs them: each phase's
    host and device milliseconds (the profiler's own cost included: compare phases with each
    other, not with the study's wall times) and the TOP kernels and host operations by their own
    time."""
    from torch.profiler import ProfilerActivity, profile
    cuda = device.type == "cuda"
    members = [Member(name, spec.with_overrides(epochs=1), seed) for name, spec in exp.specs().items()
               for seed in range(1 if quick else exp.seeds)]
    first = populations(members, "batched")[0]
    steps = 2 if quick else PROFILED_STEPS
    stack = stacked.StackedRun(data, first, device, steps, use_graphs=cuda)
    stack.start_epoch()
    stack._step(0)                                     # on CUDA it captures, outside the traces (a profiled capture may fail)
    stack.step.zero_()                                 # each run below stays within the learning-rate table
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as stepping:
        stack.start_epoch()
        for b in range(steps):
            stack._step(b)
        stack.loss_sum.tolist()                        # the loop's sync at the end of an epoch
    stack.step.zero_()
    with profile(activities=activities) as training:
        stack.train(lambda done: None)
    events = training.key_averages()
    phases: dict = {}
    for e in events:            # a range may come twice: as the host's op and as its span on the device
        if e.key.startswith("fmreport."):
            row = phases.setdefault(e.key.removeprefix("fmreport."), {"host_ms": 0.0, "device_ms": 0.0})
            row["host_ms"] = max(row["host_ms"], e.cpu_time_total / 1000)
            row["device_ms"] = max(row["device_ms"], _us(e, "device_time_total", "cuda_time_total") / 1000)
    step_kernels, _ = _top(stepping.key_averages(), cuda)
    kernels, host = _top(events, cuda)
    return {"members": len(first), "steps": steps, "phase_seconds": dict(stack.phase_seconds),
            "phases": {name: phases[name] for name in stacked.PHASES if name in phases},
            "step_kernels": step_kernels, "kernels": kernels, "host": host}


def _top(events, cuda: bool) -> tuple[list[dict], list[dict]]:
    """The TOP kernels by their own device time (on the CPU: operators by their own host time)
    and the TOP host operations by their own host time, of a profile's key averages."""
    ops = [e for e in events if not e.key.startswith("fmreport.")]
    own_device = lambda e: _us(e, "self_device_time_total", "self_cuda_time_total")   # noqa: E731
    own_host = lambda e: e.self_cpu_time_total                                          # noqa: E731
    rows = lambda found, ms: [{"name": e.key[:200], "calls": e.count, "ms": ms(e) / 1000}   # noqa: E731
                              for e in sorted(found, key=ms, reverse=True)[:TOP]]
    return (rows([e for e in ops if own_device(e) > 0], own_device) if cuda else rows(ops, own_host),
            rows(ops, own_host))


def _us(event, *names: str) -> float:
    """The first of the event's attributes `names` that this torch has (the profiler renamed
    cuda_* to device_* between releases), in microseconds; 0 where it has none."""
    for name in names:
        if hasattr(event, name):
            return getattr(event, name)
    return 0.0


def _parts_of(exp, data, device: torch.device, quick: bool, repeats: int) -> dict:
    """step_parts for one experiment's first population as the study trains it (1 seed in --quick)."""
    from torch.utils.flop_counter import FlopCounterMode
    cuda = device.type == "cuda"
    members = [Member(name, spec, seed) for name, spec in exp.specs().items()
               for seed in range(1 if quick else exp.seeds)]
    first = populations(members, "batched")[0]
    stack = stacked.StackedRun(data, first, device, None, use_graphs=cuda)
    stack.start_epoch()
    orders, run = stack.orders, 2 if quick else 10
    x, y, masks = stack._batch(orders, 0)

    def forward():
        with torch.no_grad():
            stack.objective(x, y, masks)
    with FlopCounterMode(display=False) as counter:
        stack.gradients(x, y, masks)
    flops = counter.get_total_flops()

    def host_loop():                                   # as training runs steps: the inputs made on the host
        for b in range(run):
            stack._run_step(*stack._batch(orders, b))
    capture_s = None
    if cuda:                                           # what training pays at each (re)capture of its step
        started = time.perf_counter()
        stack._run_step(x, y, masks)                   # the first call captures (warm-up included) and replays
        torch.cuda.synchronize(device)
        capture_s = time.perf_counter() - started
    graphed = (lambda fn: stack._graph_of(fn).replay) if cuda else (lambda fn: fn)   # kernels without launches
    timed = [graphed(forward), graphed(lambda: stack.gradients(x, y, masks)),
             lambda: stack._run_step(x, y, masks), host_loop]
    tf32, tf32_error = cuda and first[0].spec.precision == "fp32", None
    if tf32:                                           # the whole step with TF32 matrix multiplies
        try:
            with stacked.cuda_matmul(device, "tf32"):  # (read at capture: its replays keep them)
                replay_tf32 = stack._capture(x, y, masks)
        except RuntimeError as err:                    # recorded; faster_matmul then keeps true fp32
            tf32, tf32_error = False, _error(err)
    if tf32:                                           # as _run_step: the inputs copied in, a replay
        timed.append(lambda: replay_tf32(x, y, masks))
    if cuda:                                           # and made inside the graph (stacked.INPUTS "graph")
        stack.inputs_in_graph = True
        stack._step(0)

        def graph_loop():
            stack.batch_index.zero_()                  # every round within the epoch
            for b in range(run):
                stack._step(b)
        timed.append(graph_loop)
    seconds = _interleaved_median_seconds(timed, repeats, device)
    fwd_s, grad_s, step_s = seconds[:3]
    row = {"members": len(first), "precision": first[0].spec.precision, "forward_ms": 1000 * fwd_s,
           "forward_backward_ms": 1000 * grad_s, "step_ms": 1000 * step_s, "update_ms": 1000 * (step_s - grad_s),
           "flops_per_step": flops, "tflops_per_second": flops / step_s / 1e12,
           "host_loop_ms": 1000 * seconds[3] / run,
           "study_steps": sum(max(m.spec.epochs for m in pop) * stack.steps_per_epoch
                              for pop in populations(members, "batched"))}
    if tf32:
        row["step_ms_tf32"] = 1000 * seconds[4]
    if tf32_error:
        row["tf32_error"] = tf32_error
    if cuda:
        row["capture_ms"] = 1000 * capture_s
        row["graph_loop_ms"] = 1000 * seconds[-1] / run
        if stack.inputs_error:                         # the capture with the inputs failed: they were made on the host
            row["graph_error"] = stack.inputs_error
    return row


def _error(err: Exception) -> str:
    """An exception as one line for the JSON: its type and the first line of its message."""
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


def _syncs(fn, device: torch.device) -> dict:
    """Source line -> how many host syncs fn made there (CUDA's sync debug mode warns at each)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode(0)
    return dict(collections.Counter(f"{Path(w.filename).name}:{w.lineno}" for w in caught))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=results.PROJECT_ROOT / "build" / "gpu-probe.json")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="2 members, few repeats, a data subset")
    args = parser.parse_args(argv)
    from .runner import pick_device
    try:
        device = pick_device(args.device)
        data = data_mod.load(device)
    except (data_mod.DataError, ValueError) as err:   # no CUDA here, or no data: one line, as the CLI says it
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.quick:
        data = data.subset(2048, 256)
    started = time.perf_counter()
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "quick": args.quick,
              "conv": conv_settings(data, device, 2 if args.quick else 10, 3 if args.quick else 30)}
    best = min(report["conv"], key=lambda r: r["step_ms"])
    report["fastest"] = {"FMREPORT_CONV": best["conv"], "FMREPORT_CUDNN_BENCHMARK": str(int(best["cudnn_benchmark"])),
                         "FMREPORT_INPUTS": "host", "FMREPORT_MATMUL": "ieee"}   # until step_parts has timed both
    save = lambda: results.write_atomic(args.out, {**report, "wall_seconds": time.perf_counter() - started})  # noqa: E731
    save()                                            # each section is kept as it is done
    report.update(experiment_probes(data, device, 3 if args.quick else 20))
    save()
    report["step_parts"] = {}                         # filled and saved experiment by experiment
    step_parts(data, device, args.quick, 3 if args.quick else 20, report["step_parts"], save)
    report["fastest"]["FMREPORT_INPUTS"] = faster_inputs(report["step_parts"])
    report["fastest"]["FMREPORT_MATMUL"] = faster_matmul(report["step_parts"])
    save()
    report["profiles"] = {}                           # last: the choices above are saved first
    for_each_experiment("profile", lambda exp: _profile(exp, data, device, args.quick), report["profiles"], save)
    report["wall_seconds"] = time.perf_counter() - started   # after loading the data
    results.write_atomic(args.out, report)
    for row in report["conv"]:
        print(f"cnn x{row['members']}: {row['conv']:>7} convolutions, cuDNN autotuning "
              f"{'on ' if row['cudnn_benchmark'] else 'off'}: {row['step_ms']:.2f} ms a step")
    for name, found in report["host_syncs"].items():
        ms = report["step_ms"][name]
        print(f"{name} ({ms['members']} members): inputs {ms['inputs']:.2f} ms, step on ready inputs "
              f"{ms['step_on_ready_inputs']:.2f} ms, both {ms['inputs_and_step']:.2f} ms; host syncs: "
              f"steps {found['steps'] or 'none'}, evaluation {found['evaluation'] or 'none'}")
    for name, row in report["step_parts"].items():
        print(f"{name}: {row['error']}" if "error" in row else
              f"{name} ({row['members']} members, {row['precision']}): forward {row['forward_ms']:.2f} ms, "
              f"+ backward {row['forward_backward_ms']:.2f} ms, whole step {row['step_ms']:.2f} ms "
              f"({row['tflops_per_second']:.3g} TFLOP/s)"
              + (f", with TF32 {row['step_ms_tf32']:.2f} ms" if "step_ms_tf32" in row else "")
              + f"; in a row {row['host_loop_ms']:.2f} ms a step with host inputs"
              + (f", {row['graph_loop_ms']:.2f} ms with inputs in the graph" if "graph_loop_ms" in row else ""))
    for name, prof in report["profiles"].items():
        print(profile_line(name, prof))
    print(" ".join(f"{k}={v}" for k, v in report["fastest"].items()))
    return 0


def profile_line(name: str, prof: dict) -> str:
    """One experiment's profile (section 5) as one line: each phase's host and device time, and
    the kernel (on the CPU: operator) that took the most, in all and in the steps alone."""
    if "error" in prof:
        return f"{name} profile: {prof['error']}"
    most = lambda rows: f"{rows[0]['name'][:60]} {rows[0]['ms']:.1f} ms x{rows[0]['calls']}" if rows else "none"  # noqa: E731
    return (f"{name} profile ({prof['members']} members, {prof['steps']} steps): "
            + ", ".join(f"{phase} {r['host_ms']:.0f}/{r['device_ms']:.0f} ms" for phase, r in prof["phases"].items())
            + f" (host/device); most: {most(prof['kernels'])}; of the steps alone: {most(prof.get('step_kernels', []))}")


def faster_inputs(parts: dict) -> str:
    """"graph" where every experiment timed its steps with the inputs inside the graph without a
    failure and they take less of the study's time than the host-made inputs' (study_time), else
    "host"."""
    rows = parts.values()
    timed = all("graph_loop_ms" in r and "graph_error" not in r for r in rows)
    return "graph" if timed and study_time(rows, "graph_loop_ms") < study_time(rows, "host_loop_ms") else "host"


def study_time(rows, key: str) -> float:
    """The milliseconds `key` of each experiment's step, times the steps its populations take in the
    study (`study_steps`; 1 where a row lacks it): what that choice costs the study, summed. Why:
    `best` and `regularization_long` train 8,440 steps a population, `regularization` 2,110."""
    return sum(r[key] * r.get("study_steps", 1) for r in rows)


TF32_GAIN = 0.9   # TF32 rounds every fp32 matrix multiply's inputs: taken only for a clear gain


def faster_matmul(parts: dict) -> str:
    """"tf32" where every experiment was probed and its fp32 populations' steps take at most
    TF32_GAIN of their true-fp32 share of the study's time (study_time) with TF32 matrix
    multiplies, else "ieee"."""
    rows = [r for r in parts.values() if r.get("precision") == "fp32"]
    if not rows or any("error" in r for r in parts.values()) or not all("step_ms_tf32" in r for r in rows):
        return "ieee"
    return "tf32" if study_time(rows, "step_ms_tf32") <= TF32_GAIN * study_time(rows, "step_ms") else "ieee"


if __name__ == "__main__":
    sys.exit(main())
