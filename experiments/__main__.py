"""Command line: `python -m experiments list | data | run NAME... [--lanes N] | restat FILE... | restamp FILE...`.

Exit codes: 0 done, 1 a data or result problem the message explains, 2 bad arguments,
130 interrupted (Ctrl-C), 143 terminated (SIGTERM).  torch is imported only when training.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import signal
import sys
import traceback
from pathlib import Path

from .catalog import EXPERIMENTS

DEVICES = "auto, cpu, cuda, cuda:N or mps"


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line on stderr (exit 2), not a usage dump."""

    def error(self, message):
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")   # prog: `python -m experiments [command]`


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; give an integer >= 1") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is too small; give an integer >= 1")
    return value


def device_name(text: str) -> str:
    head, _, index = text.partition(":")
    if head in ("auto", "cpu", "mps") and not index or head == "cuda" and (not index or index.isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"unknown device {text!r}; use one of {DEVICES}")


def experiment_name(text: str) -> str:
    if text not in EXPERIMENTS:
        raise argparse.ArgumentTypeError(f"unknown experiment {text!r}; known: {', '.join(EXPERIMENTS)}")
    return text


def spec_setting(text: str) -> tuple[str, object]:
    """--set KEY=VALUE: VALUE parsed as the type of RunSpec's KEY (tuples as comma lists, bools as true/false)."""
    from dataclasses import fields
    from .catalog import RunSpec
    key, sep, value = text.partition("=")
    known = [f.name for f in fields(RunSpec)]
    if not sep or key not in known:
        raise argparse.ArgumentTypeError(f"{text!r}: give KEY=VALUE with KEY one of {', '.join(known)}")
    default = getattr(RunSpec(), key)
    bools = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
    try:
        if isinstance(default, bool):
            return key, bools[value.lower()]
        if isinstance(default, tuple):
            return key, tuple(type(default[0])(v) for v in value.split(","))
        return key, type(default)(value)
    except (KeyError, ValueError):
        kind = "true/false" if isinstance(default, bool) else \
            f"comma list of {type(default[0]).__name__}" if isinstance(default, tuple) else type(default).__name__
        raise argparse.ArgumentTypeError(f"--set {key}={value!r}: expected {kind}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m experiments", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    sub.add_parser("list", help="print every experiment: name, then what it asks (exit 2 naming each broken catalog entry)")
    sub.add_parser("status", help="each experiment's result file: current, stale (and why), missing or invalid, "
                                  "as make all would see it")
    sub.add_parser("data", help="find, verify and copy Fashion-MNIST into data/ (see experiments/data.py)")
    restat = sub.add_parser("restat", help="recompute the summaries (95%% intervals), seed-paired comparisons and "
                                           "self-description (base spec, data constants, example pixels) of result "
                                           "files of this engine, in place; nothing is retrained")
    restat.add_argument("paths", type=Path, nargs="+", help="result files, e.g. results/*.json")
    restamp = sub.add_parser("restamp", help="accept a change to the engine's code for result files without "
                                             "retraining them all: retrains one seed of every variant with the "
                                             "checkout's code and restamps only if each repeats bit for bit")
    restamp.add_argument("paths", type=Path, nargs="+", help="result files, e.g. results/depth.json")
    restamp.add_argument("--from", dest="rev", default="HEAD", metavar="REV",
                         help="the commit whose engine code made the results (default HEAD: the change under "
                              "test is the checkout's uncommitted one)")
    restamp.add_argument("--check-seeds", type=positive_int, metavar="K",
                         help="retrain the first K seeds of every variant (default: restamp.CHECK_SEEDS, 1)")
    restamp.add_argument("--verify", action="store_true",
                         help="only retrain the sample and compare it, current or not, writing nothing: whether "
                              "this machine with this code repeats the result bit for bit")
    run = sub.add_parser("run", help="train every variant and seed of one experiment (or several), write its "
                                     "result JSON")
    run.add_argument("names", type=experiment_name, nargs="+", metavar="name",
                     help="experiment name (see `list`); several run one after another, or --lanes at a time")
    run.add_argument("--seeds", type=positive_int, help="number of seeds (default: the experiment's)")
    run.add_argument("--epochs", type=positive_int, help="override the maximum epochs of every variant")
    run.add_argument("--quick", action="store_true",
                     help="smoke mode: 2048 training images, 2 epochs; writes under build/quick/")
    run.add_argument("--device", type=device_name, default="auto", help=f"{DEVICES} (default auto)")
    run.add_argument("--out", type=Path, help="result file (default results/NAME.json)")
    run.add_argument("--fresh", action="store_true", help="ignore saved progress of an interrupted run")
    run.add_argument("--executor", choices=("local", "ray"), default="local",
                     help="local: one run after another here; ray: one Ray task per run, on $RAY_ADDRESS or a "
                          "local Ray instance (needs pip install -e '.[cluster]')")
    run.add_argument("--backend", choices=("auto", "loop", "batched"), default="auto",
                     help="loop: each run with its own kernels (exact; the default on the CPU); batched: the "
                          "runs of one shape as one stacked population, CUDA graphs on CUDA (the default there)")
    run.add_argument("--threads", type=positive_int,
                     help="torch threads per run (= CPUs per Ray task; default torch's, the physical cores here); "
                          "results are bit-identical only at equal thread counts")
    run.add_argument("--deterministic", action="store_true",
                     help="torch.use_deterministic_algorithms(True), with CUBLAS_WORKSPACE_CONFIG=:4096:8 on CUDA: "
                          "what the GPU check's repeatability test measures (slower there; the CPU kernels "
                          "here are deterministic anyway)")
    run.add_argument("--if-stale", action="store_true",
                     help="do nothing when --out already holds a result of this exact spec and engine code")
    run.add_argument("--since", metavar="ISO_TIME",
                     help="with --if-stale: also rerun a result started before this time (make reproduce)")
    run.add_argument("--set", type=spec_setting, action="append", default=[], metavar="KEY=VALUE",
                     help="override a RunSpec field of every variant, e.g. --set backbone=resnet18 (repeatable)")
    run.add_argument("--weights", type=Path, metavar="PATH",
                     help="transfer: the ImageNet weight file (default: torchvision's cache, see transfer.py)")
    run.add_argument("--skip-unavailable", action="store_true",
                     help="exit 0 with a note when the run needs what is not here (ImageNet weights, CUDA)")
    run.add_argument("--lanes", type=positive_int, default=1, metavar="N",
                     help="several experiments: N at a time in this process, each in its own thread and CUDA "
                          "stream (experiments/lanes.py; batched backend only; `make all LANES=N`)")
    return parser


class Terminated(Exception):
    pass


def _run(args, argv: list[str], todo: list[tuple]) -> int:
    """`run`'s work once the request passed the checks that need no torch: each experiment of
    `todo`, (experiment, result file, accepted fingerprints), checked against this machine before
    any trains, then trained under its result's lock, --lanes at a time. A failure is raised (main
    says what it was) at once in one lane; in several, each is said as it comes and the others go on."""
    from . import data, executors, lanes, planning, runner
    try:   # check the whole request before any work: a bad device is exit 2
        device = runner.pick_device(args.device)
        runner.stacked.check_settings()
        planned = [(exp, out, current, runner.plan(exp, args.seeds, args.epochs, args.quick, dict(args.set),
                                                   runner.population.resolve_backend(args.backend, device),
                                                   args.executor)[0])
                   for exp, out, current in todo]
        if args.executor == "ray":
            executors.require_ray()
        refused = lanes.refusal(args.lanes, runner.population.resolve_backend(args.backend, device), device)
        if refused:
            raise ValueError(refused)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    ready = []
    for exp, out, current, specs in planned:   # checked before any work: nothing is written when one is missing
        missing = []
        if exp.needs_cuda and device.type == "cpu" and not args.quick and args.device != "cpu":
            missing.append(planning.needs_cuda_note(exp.name))
        if exp.check:   # the experiment's own hook (transfer: its ImageNet weights)
            missing += importlib.import_module(f".{exp.check}", __package__).unavailable(specs, args.weights)
        if missing and not args.skip_unavailable:
            raise data.DataError("\n".join(missing))
        if missing:
            print(f"note: skipped {exp.name}, nothing written:", *missing, sep="\n  ")
            continue
        ready.append((exp, out, current, specs))
    if args.lanes == 1:   # one after another, each loading the data itself; the first failure stops the rest
        for r in ready:
            _job(args, argv, *r[:3])[1]()
        return 0

    # In lanes: the data loaded once for all; the experiments the batched backend stacks, longest
    # first by the last card run; then, alone, any it cannot stack (transfer: its serial runs draw
    # from torch's global generator). A failure is reported as it comes, naming its experiment (with
    # its traceback where it is not one of the errors main explains), and the others go on; exit 1.
    if not ready:
        return 0
    loaded = data.load(device)
    stackable = [r for r in ready if all(runner.population.batchable(s) for s in r[3].values())]
    order = lanes.longest_first([r[0].name for r in stackable])
    stackable.sort(key=lambda r: order.index(r[0].name))
    alone = [r for r in ready if r not in stackable]
    failures = []
    # lanes share torch's process-wide TF32 switch: set once for all, so no lane's end puts it back
    with runner.stacked.cuda_matmul(device):
        for group, n in ((stackable, args.lanes), (alone, 1)):
            for name, _, err in lanes.run([_job(args, argv, *r[:3], loaded) for r in group], n, device):
                if err is None:
                    continue
                if not isinstance(err, Exception):   # KeyboardInterrupt, SystemExit: at once
                    raise err
                if not isinstance(err, (data.DataError, runner.results.ResultError, executors.RayError,
                                        runner.population.DeviceMemoryError, OSError)):
                    traceback.print_exception(err)
                print(f"error: {name}: {err}", file=sys.stderr)
                failures.append(name)
    return 1 if failures else 0


def _job(args, argv: list[str], exp, out, current, loaded=None) -> tuple:
    """(name, fn): train `exp` into `out` under its result's lock, unless a run that held the lock
    before made it current meanwhile; in lanes its log lines carry its name."""
    from . import locks, planning, runner
    log = print if args.lanes == 1 else lambda line: print(f"[{exp.name}] {line}")

    def train():
        with locks.exclusive(out, lambda line: print(line, file=sys.stderr)):   # one writer per result
            if args.if_stale and planning.is_fresh(out, current, args.since):   # made while this one waited
                log(f"{out} is up to date (same spec, seeds and engine code)")
                return
            runner.run_experiment(exp, out, argv, seeds=args.seeds, epochs=args.epochs, quick=args.quick,
                                  device_name=args.device, fresh=args.fresh, sets=dict(args.set),
                                  weights=args.weights, executor=args.executor, threads=args.threads,
                                  backend=args.backend, log=log, data=loaded)
    return exp.name, train


def _on_sigterm(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if args.command == "list":   # and every problem of the catalog's entries, each on its own line
        found = [problem for exp in EXPERIMENTS.values() for problem in exp.problems()]
        for exp in EXPERIMENTS.values():
            print(f"{exp.name:<16} {exp.description}")
        for problem in found:
            print(f"error: experiments/catalog.py: {problem}", file=sys.stderr)
        return 2 if found else 0

    if args.command == "status":   # plain Python: no torch
        from . import planning
        for exp in EXPERIMENTS.values():
            state, why, _ = planning.status(exp, planning.default_out(exp.name, False))
            print(f"{exp.name:<20} {state:<8} {why}")
        return 0

    if args.command == "restat":   # plain Python: no torch
        from . import describe, planning, results
        try:
            for path in args.paths:
                result = results.read(path)   # not load: a file without statistics fails validation
                exp = EXPERIMENTS.get(result.get("experiment"))
                if exp is None:
                    raise results.ResultError(f"{path}: experiment {result.get('experiment')!r} is not in the catalog")
                if not planning.made_by_this_engine(result):   # its self-description would be this code's
                    raise results.ResultError(f"{path} was made by other engine code or specs than this checkout's; "
                                              f"remake it with `make {path}` (nothing was changed)")
                result = describe.describe(results.restat(result, exp.control_variant), exp)
                results.write_atomic(path, results.validate(result, path))
                print(f"{path}: summaries, {len(result['comparisons'])} comparison(s) against "
                      f"{exp.control_variant!r} and its description (base spec, data) written")
        except results.ResultError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        return 0

    if args.command == "run":
        from . import planning, results   # no torch: `make all` asks this of every experiment
        if len(args.names) > 1 and args.out:
            print("error: --out names one result file: give one experiment, or drop --out (each then goes to "
                  "its default file)", file=sys.stderr)
            return 2
        if args.lanes > 1 and args.executor == "ray":
            print("error: --lanes and --executor ray: Ray already spreads the runs; give one of them", file=sys.stderr)
            return 2
        todo = []   # (experiment, its result file, the fingerprints a current result may have)
        for name in dict.fromkeys(args.names):   # a name given twice runs once
            exp = EXPERIMENTS[name]
            out = args.out or planning.default_out(exp.name, args.quick)
            if args.quick and out.resolve().parent == (results.PROJECT_ROOT / "results").resolve():
                print(f"error: --quick never writes into results/ (the reference results); drop --out or "
                      f"point it elsewhere", file=sys.stderr)
                return 2
            try:
                current = planning.accepted_fingerprints(exp, args.seeds, args.epochs, args.quick, dict(args.set),
                                                         args.backend, args.executor)
            except ValueError as err:   # a bad spec is exit 2, before any work
                print(f"error: {err}", file=sys.stderr)
                return 2
            if args.if_stale and planning.is_fresh(out, current, args.since):
                print(f"{out} is up to date (same spec, seeds and engine code)")
                continue
            if not args.quick and args.since is None and \
                    planning.replaces_current(exp, out, args.seeds, args.epochs, dict(args.set)):
                asked = [f"--seeds {args.seeds}" if args.seeds else "", f"--epochs {args.epochs}" if args.epochs else "",
                         *(f"--set {k}={v}" for k, v in args.set)]
                print(f"error: {out} holds {exp.name}'s current result, as the catalog asks it; "
                      f"{' '.join(a for a in asked if a)} would replace it with other runs. Give --out another file "
                      f"(make: QUICK=1 for a trial), change the entry in experiments/catalog.py, or delete {out} first",
                      file=sys.stderr)
                return 2
            # requests that cannot be met, answered before torch is imported (seconds on a small machine)
            if args.device.startswith("cuda") and not planning.gpu_driver_loaded():
                print(f"error: --device {args.device}: no CUDA device is available here (no GPU driver is loaded); "
                      "use --device cpu or auto", file=sys.stderr)
                return 2
            if args.executor == "ray" and importlib.util.find_spec("ray"):   # without Ray: the install hint below
                from . import executors
                try:
                    executors.check_reachable(os.environ.get("RAY_ADDRESS"))
                except executors.RayError as err:
                    print(f"error: {err}", file=sys.stderr)
                    return 1
            if args.skip_unavailable and args.device == "auto" and not args.quick and exp.needs_cuda \
                    and not planning.gpu_driver_loaded():
                # the same note as below, without importing torch to find out (a `make all` on a CPU)
                print(f"note: skipped {exp.name}, nothing written:", planning.needs_cuda_note(exp.name), sep="\n  ")
                continue
            if out.exists() and not (args.seeds or args.epochs or args.set or args.quick):   # why it trains again
                cause = planning.status(exp, out).cause
                if cause:
                    print(f"{out} is stale: {cause}; training it again")
            todo.append((exp, out, current))
        if not todo:
            return 0

    deterministic = getattr(args, "deterministic", False)   # `run` only
    if deterministic:   # cuBLAS reads this when it starts: before torch's first use
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    from . import data, executors, results, runner   # torch from here on
    if deterministic:
        import torch
        torch.use_deterministic_algorithms(True)   # an op without a deterministic kernel raises, naming itself
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        if args.command == "data":
            print(f"Fashion-MNIST verified in {data.RAW_DIR} (from {data.ensure_data()})")
            return 0
        if args.command == "restamp":   # every file is tried; one that is refused stays as it was
            from . import restamp
            counts = dict.fromkeys(("restamped", "current", "verified", "refused", "skipped"), 0)
            for path in args.paths:
                try:
                    if not restamp.is_experiment_result(path):   # results/*.json holds the benches' files too
                        print(f"{path}: not an experiment's result (a bench or GPU-check file); skipped")
                        counts["skipped"] += 1
                        continue
                    done = restamp.restamp(path, argv, args.rev, args.check_seeds or restamp.CHECK_SEEDS,
                                           verify=args.verify)
                    counts["verified" if args.verify else "restamped" if done else "current"] += 1
                except results.ResultError as err:
                    print(f"error: {err}", file=sys.stderr)
                    counts["refused"] += 1
            if len(args.paths) > 1:
                print("restamp: " + ", ".join(f"{n} {what}" for what, n in counts.items() if n)
                      + (" (nothing written)" if args.verify else ""))
            return 1 if counts["refused"] else 0
        return _run(args, argv, todo)
    except (data.DataError, results.ResultError, executors.RayError, runner.population.DeviceMemoryError,
            OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Terminated) as stop:
        what = "interrupted" if isinstance(stop, KeyboardInterrupt) else "terminated"
        if args.command == "restamp":
            print(f"\n{what}: the result being checked is unchanged; run the same command again", file=sys.stderr)
        else:
            kept = sum(runner.SAVED.values())
            print(f"\n{what}: {kept} finished run(s) kept in {runner.PROGRESS_DIR}; run the same command again "
                  f"to resume" if kept else f"\n{what} before any run finished: nothing to keep; run the same "
                  f"command again to start over", file=sys.stderr)
        return 130 if isinstance(stop, KeyboardInterrupt) else 143


if __name__ == "__main__":
    sys.exit(main())
