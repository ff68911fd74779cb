"""Accept a change to the engine's code without retraining, once a retrained sample shows that it
changes no result.

A result's fingerprint hashes the engine's code (results.fingerprint), so a change that only tidies
or moves code still makes every result stale: hours of training on a small machine. `restamp`
checks such a change instead of trusting it:

1. The result must be current for the code committed at `rev` (default HEAD): the change under
   test is the difference between that commit and the checkout.
2. The first `check_seeds` seeds of every variant are trained again with the checkout's code, on
   the CPU at the result's thread count and torch version, as the runner trains them.
3. Every retrained run's history and final metrics must equal the stored ones bit for bit (only
   wall-clock seconds may differ). One differing number refuses the change; the file is untouched.

Only then does the result get the checkout's fingerprint, with a `restamps` entry in its
provenance that says what was compared; the report's provenance appendix lists it.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

from . import data as data_mod
from . import locks, planning, results
from .planning import QUICK_EVAL, QUICK_TRAIN
from .train import fit

CHECK_SEEDS = 1   # one run of every variant: each variant exercises its own code paths


def measured(run: dict) -> dict:
    """A run's history and final metrics as JSON stores them, without wall-clock seconds."""
    run = json.loads(json.dumps({"history": run["history"], "final": run["final"]}))
    run["final"].pop("seconds", None)
    for epoch in run["history"]:
        epoch.pop("seconds", None)
    return run


def first_difference(stored, again, where: str = "") -> str | None:
    """Where two JSON values first differ, e.g. "final.test_acc: 0.8866 != 0.8867"; None if equal."""
    if isinstance(stored, dict) and isinstance(again, dict) and stored.keys() == again.keys():
        return next((d for k in stored if (d := first_difference(stored[k], again[k], f"{where}.{k}"))), None)
    if isinstance(stored, list) and isinstance(again, list) and len(stored) == len(again):
        return next((d for i, (a, b) in enumerate(zip(stored, again))
                     if (d := first_difference(a, b, f"{where}[{i}]"))), None)
    return None if stored == again else f"{where.lstrip('.') or 'run'}: stored {stored!r}, now {again!r}"


def is_experiment_result(path) -> bool:
    """Whether `path` holds an experiment's result (an experiment and its variants), as opposed to the
    benches' and the GPU check's files beside them in results/; an unreadable file counts as one, so
    that restamp says what is wrong with it."""
    try:
        obj = results.read(path)
    except results.ResultError:
        return True
    return "experiment" in obj or "variants" in obj


def _refuse_early(result: dict, path: Path) -> None:
    """Results whose runs this check cannot repeat bit for bit here, refused before any training."""
    prov, target = result["provenance"], results.make_target(path)
    retrain = f"retrain it instead: make {target}"
    if (prov.get("backend") or "loop") != "loop":
        raise results.ResultError(f"{path} was trained by the {prov['backend']} backend (stacked kernels); "
                                  f"restamp repeats loop-backend runs only; {retrain}")
    if prov.get("device") != "cpu":
        raise results.ResultError(f"{path} was trained on {prov.get('device')!r}; restamp repeats runs on the CPU "
                                  f"only; {retrain} (or on that device)")
    if any(v["params"].get("model") == "transfer" for v in result["variants"]):
        raise results.ResultError(f"{path} holds transfer-model runs, which need their backbone's features; "
                                  f"{retrain}")
    trained_with = (prov.get("packages") or {}).get("torch")
    if trained_with and trained_with.split("+")[0] != torch.__version__.split("+")[0]:
        raise results.ResultError(f"{path} was trained with torch {trained_with}, this checkout runs "
                                  f"{torch.__version__}: its kernels round differently; {retrain}")


def restamp(path: Path, argv: list[str], rev: str = "HEAD", check_seeds: int = CHECK_SEEDS, log=print,
            verify: bool = False) -> bool:
    """Give the result at `path` the checkout's fingerprint if retraining a sample of its runs with
    the checkout's code repeats them bit for bit; True if it was restamped, False if it was current.
    A ResultError says why not (the file is then unchanged). `verify`: retrain and compare the
    sample whether or not the result is current, and write nothing: whether this machine, with this
    code, repeats the result (False, or a ResultError)."""
    path = Path(path)
    with locks.exclusive(path, log):   # one writer per result, as for `run`
        result = results.load(path)
        if verify:
            _refuse_early(result, path)
            checked, _, _ = _retrain_sample(result, path, check_seeds, log, planning.made_by_this_engine(result))
            log(f"{path}: {len(checked)} retrained run(s) repeat the stored ones bit for bit on this machine "
                f"({describe_cpu(results.cpu_identity())}); nothing written")
            return False
        if planning.made_by_this_engine(result):
            log(f"{path}: already current for this checkout's engine code; nothing to do")
            return False
        old_digest = results.digests_at(rev)
        try:
            old = planning.recorded_fingerprint(result, old_digest)
        except (KeyError, TypeError, ValueError) as err:
            raise results.ResultError(f"{path}: its variants do not describe valid specs ({err}); "
                                      f"retrain it: make {results.make_target(path)}") from None
        if old != result["fingerprint"]:
            raise results.ResultError(
                f"{path} is not a result of the engine code at {rev!r} either, so what changed since it was "
                f"made is unknown; give with --from a commit at which it was current (with the change "
                f"committed already, the commit before it: --from HEAD~1), or retrain it: "
                f"make {results.make_target(path)}")
        _refuse_early(result, path)
        new = planning.recorded_fingerprint(result)   # of the code the check runs (the code imported now)
        specs, prov = planning.recorded_specs(result), result["provenance"]
        changed = [n for n in results.engine_sources(specs) if old_digest(n) != results.code_digest(n)]
        log(f"{path}: current at {rev}; the checkout changed {', '.join(changed)}; retraining "
            f"{check_seeds} seed(s) of each of its {len(specs)} variant(s) to compare")
        started = results.now()
        checked, (threads, seconds), here = _retrain_sample(result, path, check_seeds, log, rev=rev)
        if planning.recorded_fingerprint(result) != new:
            raise results.ResultError(f"{path}: the engine's code changed while its runs were checked; run the "
                                      f"restamp again (the file is unchanged)")
        entry = results.provenance("cpu", argv, started)
        entry["wall_seconds"] = seconds
        entry["torch_threads"] = threads
        entry.update(from_commit=results.git_revision(rev), from_fingerprint=old, changed_files=changed,
                     checked_runs=checked, runs_in_result=sum(len(v["runs"]) for v in result["variants"]))
        if here:   # runs this CPU does not repeat as stored: matched with the code at rev trained here instead
            entry["compared_with_code_here"] = here
        result["fingerprint"] = entry["to_fingerprint"] = new
        prov.setdefault("restamps", []).append(entry)
        results.write_atomic(path, results.validate(result, path))
        matched = []
        if len(here) < len(checked):
            matched.append(f"{len(checked) - len(here)} retrained run(s) repeat the stored ones bit for bit")
        if here:
            matched.append(f"{len(here)} match, bit for bit, the runs the code at {rev} gives on this machine, "
                           f"which does not repeat them as stored")
        log(f"{path}: restamped; {'; '.join(matched)} ({entry['wall_seconds']:.0f} s)")
        return True


def _retrain_sample(result: dict, path: Path, check_seeds: int, log, same_code: bool = False,
                    rev: str | None = None) -> tuple[list[str], tuple[int, float], list[str]]:
    """Train the first `check_seeds` seeds of every variant again with the checkout's code, on the
    CPU at the result's thread count, and compare each with its stored run; (the runs checked,
    (threads, wall seconds), the runs compared with the code at `rev` instead), or a ResultError
    naming the first difference and its likely cause (`same_code`: the checkout's engine code is the
    one that made the result).

    A run that differs from the stored one on a CPU that neither made nor checked the result (its
    kernels may round otherwise) is trained once more here by the code committed at `rev`: where the
    two codes agree bit for bit on this CPU, the difference is this CPU's, not the change's, and the
    run counts as checked against that code; where they do not, the change alters results."""
    t0, prov = time.perf_counter(), result["provenance"]
    threads = prov.get("torch_threads") or torch.get_num_threads()
    torch.set_num_threads(threads)   # float sums depend on it
    data = data_mod.load("cpu")
    if result.get("quick"):
        data = data.subset(QUICK_TRAIN, QUICK_EVAL)
    specs, checked, here = planning.recorded_specs(result), [], []
    other_cpu = results.cpu_identity() not in known_cpus(prov)
    for variant in result["variants"]:
        for run in variant["runs"][:check_seeds]:
            name, seed = variant["name"], run["seed"]
            again = fit(data, specs[name], seed, torch.device("cpu"),
                        desc=f"restamp {result['experiment']} | {name} | seed {seed}")
            diff, against = first_difference(measured(run), measured(again)), "stored run"
            if diff and rev is not None and other_cpu and not same_code:
                log(f"  {name:>22} seed {seed}: this CPU does not repeat the stored run ({diff}); training it "
                    f"with the code at {rev} here to compare")
                code_diff = first_difference(measured(train_at(rev, path, name, seed, threads)), measured(again))
                if code_diff:
                    raise results.ResultError(
                        f"{path}: {name} seed {seed}: the code at {rev} and the checkout's, both trained on this "
                        f"machine, give different runs ({code_diff.replace('stored', f'at {rev}')}): the change "
                        f"alters results, so retrain them: make {results.make_target(path)} (the file is unchanged)")
                here.append(f"{name} / seed {seed}")
                diff, against = None, f"code at {rev} here"
            if diff:
                raise results.ResultError(
                    f"{path}: {name} seed {seed} trained again differs from the stored run ({diff}); "
                    f"{difference_cause(prov, same_code)}: make {results.make_target(path)} (the file is unchanged)")
            checked.append(f"{name} / seed {seed}")
            log(f"  {name:>22} seed {seed}: identical to the {against} ({again['final']['epochs']} epochs, "
                f"{again['final']['seconds']:.1f} s)")
    return checked, (threads, time.perf_counter() - t0), here


# One run trained by another commit's engine code, in a fresh process whose `experiments` package is
# that commit's: its history and final metrics, on stdout's last line.
_TRAIN_ONE = """
import json, sys, torch
from experiments import data, planning
from experiments.train import fit
path, name, seed, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
result = json.load(open(path))
torch.set_num_threads(threads)
d = data.load("cpu")
if result.get("quick"):
    d = d.subset(planning.QUICK_TRAIN, planning.QUICK_EVAL)
run = fit(d, planning.recorded_specs(result)[name], seed, torch.device("cpu"))
print("RUN " + json.dumps({"history": run["history"], "final": run["final"]}))
"""


def train_at(rev: str, path: Path, name: str, seed: int, threads: int) -> dict:
    """The run (`name`, `seed`) of the result at `path` as the engine code committed at `rev` trains
    it on this machine: that commit's experiments/ unpacked into a scratch folder (sharing this
    checkout's verified data) and run there in a fresh process at `threads` torch threads."""
    try:
        archive = subprocess.run(["git", "archive", rev, "experiments"], cwd=results.PROJECT_ROOT,
                                 capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise results.ResultError(f"git cannot archive experiments/ at {rev!r} ({err}); the file is unchanged") from None
    if archive.returncode:
        raise results.ResultError(f"git cannot archive experiments/ at {rev!r}: {archive.stderr.decode().strip()}")
    with tempfile.TemporaryDirectory(prefix="restamp-") as scratch:
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:   # git's own archive of a commit
            tar.extractall(scratch, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        (Path(scratch) / "data").symlink_to(results.PROJECT_ROOT / "data")
        env = {**os.environ, "PYTHONPATH": scratch}
        proc = subprocess.run([sys.executable, "-c", _TRAIN_ONE, str(Path(path).resolve()), name, str(seed), str(threads)],
                              cwd=scratch, env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RUN ")]
    if proc.returncode or not lines:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise results.ResultError(f"the code at {rev!r} could not train {name} seed {seed} here ({last}); "
                                  f"the file is unchanged")
    return json.loads(lines[-1][4:])


def known_cpus(prov: dict) -> list[dict]:
    """The CPUs whose kernels repeat a result's runs as stored: the one that made it and those of
    restamps that repeated its stored runs (not of one that matched them with the code before the
    change instead, on a CPU that rounds otherwise)."""
    return [c for c in [prov.get("cpu"), *(r.get("cpu") for r in prov.get("restamps", [])
                                            if not r.get("compared_with_code_here"))] if c]


def difference_cause(prov: dict, same_code: bool = False) -> str:
    """What a retrained run that differs from its stored one is to be blamed on, given the CPUs on
    which the result was made and restamped (their provenance's `cpu`): the change, where this
    machine's CPU is one of them; else perhaps the CPU, whose kernels may round differently (on
    one of this project's 2-core machines the committed code itself retrained `depth`'s first run
    0.1 point of test accuracy apart: README, Changing the engine's code)."""
    here, known = results.cpu_identity(), known_cpus(prov)
    where = (f"it was made and checked on {'; '.join(sorted({describe_cpu(c) for c in known}))}" if known
             else "it does not record the CPU that made it")
    if same_code:
        return (f"the code is the one that made it, so this machine's CPU ({describe_cpu(here)}) rounds "
                f"differently from the one that did ({where}); runs trained here differ from the stored ones by "
                f"rounding. Restamp on such a machine, or retrain the result here")
    if here in known:
        return "the change alters results (this CPU made or checked the result), so retrain them"
    return (f"this machine's CPU ({describe_cpu(here)}) may explain it rather than the change: {where}, and "
            f"another CPU's kernels may round differently. `restamp --verify` with the change stashed (git stash) "
            f"says whether this machine repeats the result unchanged; if it does not, restamp on the machine "
            f"that made it, or retrain")


def describe_cpu(cpu: dict) -> str:
    """A CPU identity (results.cpu_identity) in a few words."""
    parts = [cpu.get("name") or "unknown CPU"]
    if cpu.get("family") is not None:
        parts.append(f"family {cpu['family']} model {cpu.get('model')} stepping {cpu.get('stepping')}")
    return ", ".join(parts)
