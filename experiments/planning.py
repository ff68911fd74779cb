"""What `experiments run` would do, decided without torch: the resolved specs, seeds, backend and
fingerprint of a request, and whether a result file already holds exactly that. The Makefile asks
this for every experiment on every `make all`, so it must not import torch: about 70 ms an
experiment here (mostly reading its result file), against seconds for a torch import.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from . import results
from .catalog import Experiment, RunSpec
from .results import QUICK_EPOCHS, QUICK_EVAL, QUICK_TRAIN  # noqa: F401 (the runner and executors use them)


def batchable(spec: RunSpec) -> bool:
    """The batched population backend stacks MLPs and CNNs; the transfer model trains run by run."""
    return spec.model in ("mlp", "cnn")


def effective_backend(specs: dict, backend: str, executor: str = "local") -> str:
    """The backend the runs of `specs` actually use: `batched` only where it can stack a model
    (and not on Ray, whose tasks are single runs); `auto` must be resolved first."""
    if backend == "batched" and executor == "local" and any(batchable(s) for s in specs.values()):
        return "batched"
    return "loop"


def plan(exp: Experiment, seeds: int | None, epochs: int | None, quick: bool, sets: dict | None = None,
         backend: str = "loop", executor: str = "local"):
    """Resolved specs, seed list, fingerprint and backend of what would run; `sets` (--set)
    overrides RunSpec fields of every variant; `backend` is loop or batched (auto resolved)."""
    overrides = dict(sets or {})
    if epochs is not None:
        overrides["epochs"] = epochs
    elif quick:
        overrides.setdefault("epochs", QUICK_EPOCHS)
    specs = exp.specs(**overrides)
    seed_list = list(range(seeds if seeds is not None else exp.seeds))
    backend = effective_backend(specs, backend, executor)
    return specs, seed_list, results.fingerprint(specs, seed_list, quick, backend), backend


def accepted_fingerprints(exp: Experiment, seeds, epochs, quick: bool, sets: dict | None, backend: str,
                          executor: str = "local") -> set[str]:
    """Fingerprints of results that satisfy this request. Under `--backend auto` a result of either
    backend is current (the same specs, seeds and engine code; the device only decides how a missing
    result is made); an explicit backend asks for a result of that backend."""
    backends = ("loop", "batched") if backend == "auto" else (backend,)
    return {plan(exp, seeds, epochs, quick, sets, b, executor)[2] for b in backends}


def is_fresh(out: Path, fingerprints, since: str | None = None) -> bool:
    """True when `out` is a valid result whose fingerprint is one of `fingerprints` (a string or a
    set), started at or after `since` (an ISO time) when that is given."""
    accepted = {fingerprints} if isinstance(fingerprints, str) else set(fingerprints)
    try:
        result = results.load(out)
    except results.ResultError:
        return False
    return result["fingerprint"] in accepted and (since is None or result["provenance"]["started"] >= since)


def recorded_specs(result: dict) -> dict:
    """variant name -> the RunSpec a result's runs used, as the result itself records it."""
    return {v["name"]: RunSpec(**{k: tuple(x) if isinstance(x, list) else x for k, x in v["params"].items()})
            for v in result["variants"]}


def recorded_fingerprint(result: dict, digest=None) -> str:
    """The fingerprint of the specs, seeds, quick mode and backend a result records, with this
    checkout's engine code (or the code `digest` hashes: results.fingerprint)."""
    backend = result["provenance"].get("backend") or "loop"
    return results.fingerprint(recorded_specs(result), result["seeds"], bool(result.get("quick")), backend, digest)


def made_by_this_engine(result: dict) -> bool:
    """Whether a result's fingerprint is what this checkout's engine code gives the specs, seeds and
    backend the result itself records (a --quick, --epochs or --set result included)."""
    try:
        return recorded_fingerprint(result) == result["fingerprint"]
    except (KeyError, TypeError, ValueError):
        return False


def replaces_current(exp: Experiment, out: Path, seeds, epochs, sets: dict) -> bool:
    """Whether a run with these seeds, epochs and --set settings would replace a result at `out`
    that is current as the catalog asks it with other runs: hours of work, for some experiments,
    lost to a trial. Another backend or executor (how the runs train, not what) does not count."""
    as_catalog_asks = accepted_fingerprints(exp, None, None, False, None, "auto")
    return out.exists() and is_fresh(out, as_catalog_asks) and \
        not is_fresh(out, accepted_fingerprints(exp, seeds, epochs, False, sets, "auto"))


class Status(NamedTuple):
    """What `make all` would do about one result file: `state` (current, stale, missing or invalid),
    `why` (the line `experiments status` prints) and, for a stale one, `cause` alone."""
    state: str
    why: str
    cause: str | None = None


def status(exp: Experiment, path: Path) -> Status:
    """One experiment's result file as `make all` would see it, without torch. A stale one says
    whether its specs or the engine's code changed, with the engine files changed since the commit
    that made it, where git knows that commit."""
    target = results.make_target(path)
    problems = exp.problems()
    if problems:
        return Status("invalid", f"its catalog entry: {problems[0]}")
    if not path.exists():
        return Status("missing", f"optional (needs a GPU or other files): `make {target}` where it can run"
                      if exp.optional else f"`make {target}` trains it")
    try:
        result = results.load(path)
    except results.ResultError as err:
        return Status("invalid", str(err).splitlines()[0])
    seeds = f"{len(result['seeds'])} seeds"
    if result["fingerprint"] in accepted_fingerprints(exp, None, None, bool(result.get("quick")), None, "auto"):
        return Status("current", seeds)
    if made_by_this_engine(result):
        cause = "its specs or seeds are not the catalog entry's now"
        return Status("stale", f"{seeds}; {cause}: `make {target}` retrains it", cause)
    cause = f"the engine's code changed{_changed_since(result, path)}"
    prov = result["provenance"]
    restamp = f", or `python -m experiments restamp {target}` after a refactor" \
        if (prov.get("backend") or "loop") == "loop" and prov.get("device") == "cpu" else ""   # what it can repeat
    return Status("stale", f"{seeds}; {cause}: `make {target}` retrains it{restamp}", cause)


def _changed_since(result: dict, path: Path) -> str:
    """" (train.py since <commit>)": the engine files changed since the code that made the result's
    fingerprint, most likely that of the commit that last committed the file (a result is committed
    with its code, a restamped one too), else of the commit it was trained at; "" where neither is."""
    prov = result["provenance"]
    for rev in filter(None, [results.git_log_last(path), prov.get("git_commit")]):
        try:
            at = results.digests_at(rev)
            if recorded_fingerprint(result, at) == result["fingerprint"]:
                changed = [n for n in results.engine_sources(recorded_specs(result), prov.get("backend") or "loop")
                           if at(n) != results.code_digest(n)]
                return f" ({', '.join(changed)} since {rev[:10]})" if changed else ""
        except (results.ResultError, KeyError, TypeError, ValueError):
            continue
    return ""


def default_out(name: str, quick: bool) -> Path:
    base = results.PROJECT_ROOT / ("build/quick/results" if quick else "results")
    return base / f"{name}.json"


def needs_cuda_note(name: str) -> str:
    """Why `make all` skips an experiment that needs CUDA (the catalog's needs_cuda) on a machine without it."""
    return (f"{name} is meant for a GPU (its catalog entry says needs_cuda): run it where CUDA is available, "
            "or pass --device cpu to run it on the CPU anyway")


def gpu_driver_loaded() -> bool:
    """Whether a GPU driver that torch could use is loaded (NVIDIA's, as /proc or its device nodes
    show it, Jetson's, AMD's ROCm, or WSL's GPU paravirtualization). Where none is,
    torch.cuda.is_available() is False, and this answers without importing torch."""
    return any(Path(p).exists() for p in ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/nvhost-ctrl-gpu",
                                          "/dev/kfd", "/dev/dxg"))
