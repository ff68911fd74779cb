"""Run every (variant, seed) of one experiment and write its result file.

Resumable: each finished run is saved at once in build/progress/<name>-<fingerprint>.json, and
the result file at --out is replaced (atomically) only when every run is done, so a killed run
loses at most the run in flight and never damages the previous result.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from . import data as data_mod
from . import describe, locks, population, results, stacked
from .planning import QUICK_EVAL, QUICK_TRAIN, plan
from .catalog import Experiment
from .train import fit  # importing train sets the denormal flush before torch starts its threads

# $FMREPORT_PROGRESS_DIR moves it (the tests point it at a temporary folder)
PROGRESS_DIR = Path(os.environ.get("FMREPORT_PROGRESS_DIR") or results.PROJECT_ROOT / "build" / "progress")
# What this process has saved for resuming: progress file -> finished runs in it (an interrupt says so)
SAVED: dict[Path, int] = {}


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is available here; use --device cpu or auto")
    return device


def run_experiment(exp: Experiment, out: Path, argv: list[str], seeds: int | None = None,
                   epochs: int | None = None, quick: bool = False, device_name: str = "auto",
                   fresh: bool = False, log=print, sets: dict | None = None, weights: Path | None = None,
                   executor: str = "local", threads: int | None = None, backend: str = "auto",
                   data: data_mod.FashionMNIST | None = None) -> dict:
    """`data`: the data set already loaded on the device, for a caller that runs many experiments
    in one process (the GPU check, the bench's study): loading and verifying it takes seconds."""
    device = pick_device(device_name)
    specs, seed_list, fp, backend = plan(exp, seeds, epochs, quick, sets,
                                         population.resolve_backend(backend, device), executor)
    matmul = stacked.MATMUL if device.type == "cuda" else None   # CUDA's fp32 matrix multiplies: ieee or tf32
    # runs made under TF32 never share a progress file with true-fp32 ones
    progress_path = PROGRESS_DIR / f"{exp.name}{'-quick' if quick else ''}{'-tf32' if matmul == 'tf32' else ''}-{fp[:16]}.json"
    # one writer per progress file, even across --out paths; TF32 or not for this experiment only
    threads = threads or torch.get_num_threads()
    with locks.exclusive(progress_path, log), stacked.cuda_matmul(device, matmul):
        # on the CPU float sums depend on the thread count: a result's runs share one
        done = {} if fresh else read_progress(progress_path, fp, specs, log, threads if device.type == "cpu" else None)
        if done:
            SAVED[progress_path] = sum(map(len, done.values()))
        started, t0 = results.now(), time.perf_counter()
        data = data if data is not None else data_mod.load(device)
        log(f"{exp.name}: data from {data.source}; device {device}; "
            f"{len(specs)} variant(s) x {len(seed_list)} seed(s); {backend} backend")
        if quick:
            data = data.subset(QUICK_TRAIN, QUICK_EVAL)
        torch.set_num_threads(threads)   # float sums depend on it: same threads, bit-identical runs

        def record(name, seed, run, save=True):
            """Log a finished run and save it to the progress file at once, so a killed run resumes."""
            f = run["final"]
            status = "DIVERGED" if f["diverged"] else \
                f"val {f['val_acc']:.2%}  test {f['test_acc']:.2%}  train {f['train_acc']:.2%}"
            log(f"  {name:>22} seed {seed}: {status}  ({f['epochs']} epochs, {f['seconds']:.1f} s)")
            done.setdefault(name, {})[str(seed)] = {"seed": seed, **run}
            if save:   # compact, through json's C encoder (the indenting encoder is pure Python)
                results.write_atomic(progress_path, json.dumps({"fingerprint": fp, "torch_threads": threads, "runs": done},
                                                               allow_nan=False))
                SAVED[progress_path] = sum(map(len, done.values()))

        def record_together(finished):
            """The members of a population that finished in one epoch, saved in one write: a write
            per member re-encodes every run saved so far (100 members: 4 s against 0.05 s)."""
            for i, (m, run) in enumerate(finished):
                record(m.name, m.seed, run, save=i == len(finished) - 1)

        pops = []               # what trained together in this process, for the provenance
        if executor == "ray":   # one Ray task per run; the loop below then only does what Ray left
            from . import executors
            todo = [(name, spec, seed) for name, spec in specs.items() for seed in seed_list
                    if str(seed) not in done.get(name, {}) and spec.model != "transfer"]  # transfer: prepared here
            for name, seed, run in executors.run_on_ray(todo, device, threads, quick, (specs, seed_list, quick, fp), log,
                                                        matmul):
                pops.append({"size": 1, "members": [f"{name} / seed {seed}"]})
                record(name, seed, run)

        if backend == "batched":   # populations of the members still to train; a model it cannot stack runs below
            todo = [population.Member(name, spec, seed) for name, spec in specs.items() for seed in seed_list
                    if str(seed) not in done.get(name, {}) and population.batchable(spec)]
            for members in population.populations(todo, backend):
                log(f"  population of {len(members)}: {', '.join(sorted({m.name for m in members}))}")
                sizes, notes, phases = [], [], {}
                population.fit_population(data, members, device, backend, log=log, trained_as=sizes, notes=notes,
                                          phases=phases, on_finish=record_together)
                pops.append({"size": len(members), "members": [f"{m.name} / seed {m.seed}" for m in members],
                             "seconds": phases,
                             **({"split_into": sizes} if sizes != [len(members)] else {}),
                             **({"notes": notes} if notes else {})})

        for name, spec in specs.items():
            variant_data = data
            for seed in seed_list:
                if str(seed) in done.get(name, {}):
                    continue
                if spec.model == "transfer" and variant_data is data:   # once per variant, only when it runs
                    from . import transfer
                    variant_data = transfer.prepare(spec, data, device, weights)
                pops.append({"size": 1, "members": [f"{name} / seed {seed}"]})
                record(name, seed, fit(variant_data, spec, seed, device, desc=f"{exp.name} | {name} | seed {seed}"))

        prov = results.provenance(str(device), argv, started)
        prov["wall_seconds"] = time.perf_counter() - t0
        prov["data_source"] = data.source
        prov["executor"], prov["torch_threads"] = executor, threads
        prov["backend"], prov["populations"] = backend, pops   # the runs trained by this process
        if matmul:
            prov["cuda_matmul"] = matmul
        variants = []
        for name, spec in specs.items():
            runs = [done[name][str(s)] for s in seed_list]
            variants.append({"name": name, "params": spec.as_dict(), "runs": runs, "summary": results.summarize(runs)})
        result = {"schema_version": results.SCHEMA_VERSION, "experiment": exp.name, "description": exp.description,
                  "fingerprint": fp, "quick": quick, "seeds": seed_list, "provenance": prov, "variants": variants,
                  "control": exp.control_variant, "comparisons": results.comparisons(variants, exp.control_variant)}
        results.write_atomic(out, results.validate(describe.describe(result, exp), out))
        progress_path.unlink(missing_ok=True)
        SAVED.pop(progress_path, None)
        log(f"wrote {out} ({prov['wall_seconds']:.0f} s)")
        return result


def _set_aside(path: Path, err: Exception, log) -> dict:
    """Rename a damaged or foreign progress file to *.bad-<time> beside it, saying why; no runs kept."""
    aside = path.with_name(f"{path.name}.bad-{results.now().strftime('%Y%m%dT%H%M%S')}")
    os.replace(path, aside)
    log(f"warning: progress file {path} set aside as {aside.name} "
        f"({str(err).splitlines()[0][:200]}); its runs train again")
    return {}


def read_progress(path: Path, fingerprint: str, specs: dict, log=print, threads: int | None = None) -> dict:
    """The finished runs saved in a progress file, variant -> seed -> run. A file that cannot be
    read, belongs to another plan or holds a damaged run is reported and set aside (renamed to
    *.bad-<time>), and the runs it held train again: a bad partial run never reaches a result.
    `threads` (on the CPU): runs saved with another torch thread count are a ResultError naming
    both counts, and the file is left as it is (a result's runs must share one count to repeat)."""
    if not path.exists():
        return {}
    try:
        saved = json.loads(path.read_text())
    except ValueError as err:
        return _set_aside(path, err, log)
    saved_threads = saved.get("torch_threads") if isinstance(saved, dict) else None
    if threads is not None and saved_threads is not None and saved_threads != threads:
        raise results.ResultError(
            f"{path} holds finished runs made with {saved_threads} torch thread(s), and this run would use "
            f"{threads}: on the CPU the numbers depend on it, and a result's runs must share one count. "
            f"Resume with --threads {saved_threads} (make THREADS={saved_threads}), or delete that file to train "
            f"them again with {threads}")
    try:
        if not isinstance(saved, dict) or saved.get("fingerprint") != fingerprint:
            raise results.ResultError("it belongs to other specs or engine code")
        done = saved["runs"]
        for name, runs in done.items():
            if name not in specs:
                raise results.ResultError(f"variant {name!r} is not part of this plan")
            for seed, run in runs.items():
                results.validate_run(run, path, f"{name} seed {seed}")
                if str(run["seed"]) != seed:
                    raise results.ResultError(f"run {name!r} seed {seed} says seed {run['seed']}")
    except (ValueError, KeyError, TypeError, AttributeError, results.ResultError) as err:
        return _set_aside(path, err, log)
    log(f"resuming: {sum(map(len, done.values()))} finished run(s) kept from {path}")
    return done
