"""The result file: schema, fingerprint, provenance, summaries, atomic write, validating load.

A result file is the only thing an experiment leaves behind, and it describes itself (describe.py).
The report reads the result files, the catalog (titles, order, controls, figures), the code it
quotes, its own prose and settings (report/), and hashes the engine's code to mark stale results.
This module imports no torch (the Makefile's staleness check and the report use it).
"""
from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import platform
import subprocess
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from . import stats

SCHEMA_VERSION = 1
ENGINE_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = ENGINE_DIR.parent
# The code a result depends on besides its spec. The catalog is not here: each experiment's own
# resolved specs are hashed instead, so editing one spec reruns only that experiment.
ENGINE_SOURCES = ("data.py", "models.py", "penalties.py", "train.py")
MODEL_SOURCES = {"transfer": ("transfer.py",)}   # extra code only the results of these models depend on
# The batched population backend (population.py) trains with other kernels than train.fit: its
# results are other results, so its code and name join the fingerprint; the loop backend's don't.
BACKEND_SOURCES = {"loop": (), "batched": ("population.py", "stacked.py")}
# --quick: 8 batches of 256 training images, 1000 validation and test images, 2 epochs. They shape a
# quick result, so a quick result's fingerprint includes them.
QUICK_TRAIN, QUICK_EVAL, QUICK_EPOCHS = 2048, 1000, 2
FINAL_KEYS = ("train_acc", "val_acc", "test_acc", "train_loss", "val_loss", "test_loss",
              "epochs", "seconds", "diverged")
SUMMARY_KEYS = ("train_acc", "val_acc", "test_acc", "train_loss", "val_loss", "test_loss", "epochs", "seconds")


class ResultError(Exception):
    """A result file that cannot be used; the message names the file and what is wrong."""


# Digests of the engine's files by (path, mtime, size), kept between processes: `make all` asks
# for them once per experiment, and parsing the files costs more than the rest of the check.
DIGEST_CACHE = Path(os.environ.get("FMREPORT_DIGEST_CACHE") or PROJECT_ROOT / "build" / "code-digests.json")


def _code_digest(path: Path) -> str:
    """Hash of a module's syntax tree without docstrings: comments and wording don't invalidate results."""
    path = Path(path).resolve()
    stat = path.stat()
    made_by = _digest_code()
    key = f"{made_by} {path}"
    seen = [stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size]
    cache = _digest_cache()
    entry = cache.get(key)
    if isinstance(entry, list) and len(entry) == 4 and entry[:3] == seen:
        return str(entry[3])
    digest = _tree_digest(str(path), stat.st_mtime_ns, stat.st_size)
    cache = {k: e for k, e in cache.items()                      # other digest code and files gone are forgotten
             if k.startswith(f"{made_by} ") and Path(k.partition(" ")[2]).exists()}
    cache[key] = [*seen, digest]
    try:
        write_atomic(DIGEST_CACHE, json.dumps(cache))
    except OSError:
        pass                                               # a read-only checkout still works, only slower
    return digest


def _digest_code() -> str:
    """This module's mtime, ctime and size, in each cache key: source_digest lives here, so after any
    change to it the cache serves no digest that the code would no longer give."""
    stat = Path(__file__).stat()
    return f"{stat.st_mtime_ns}:{stat.st_ctime_ns}:{stat.st_size}"


def _digest_cache() -> dict:
    """DIGEST_CACHE's entries, "_digest_code() path" -> [mtime_ns, ctime_ns, size, digest]; empty when
    absent or damaged."""
    try:
        cache = json.loads(DIGEST_CACHE.read_text())
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


@functools.lru_cache(maxsize=64)
def _tree_digest(path: str, mtime_ns: int, size: int) -> str:
    """_code_digest, once per version of a file in a process (the report asks it for every result)."""
    return source_digest(Path(path).read_text())


def source_digest(text: str) -> str:
    """Hash of Python source's syntax tree without docstrings (what a fingerprint holds per file),
    the same on every Python from 3.10 (see syntax_dump)."""
    tree = ast.parse(text)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return hashlib.sha256(syntax_dump(tree).encode()).hexdigest()


_MISSING = object()


def syntax_dump(node) -> str:
    """ast.dump(node) as Python 3.11 writes it, on any Python from 3.10, but for one thing: a
    constant is written with ascii(), not repr(), whose escapes follow each version's Unicode
    tables (the two agree on ASCII text, which is all the engine's strings hold). Why: ast.dump's
    text changes between versions (3.12 adds type_params to every function and class, 3.13 leaves
    out empty fields), so hashing it made every committed result look stale to another Python, and
    `make all` there would have trained the whole study again."""
    if isinstance(node, list):
        return f"[{', '.join(syntax_dump(v) for v in node)}]"
    if not isinstance(node, ast.AST):
        return ascii(node)
    fields = []
    for name in node._fields:
        value = getattr(node, name, _MISSING)
        if value is _MISSING or value is None and getattr(type(node), name, ...) is None:   # unset, or optional
            continue
        if name == "type_params" and not value:                           # 3.12+ (PEP 695) only
            continue
        if isinstance(node, ast.JoinedStr):                               # 3.12 ends some format specs
            value = [v for v in value if not (isinstance(v, ast.Constant) and v.value == "")]   # with ''
        fields.append(f"{name}={syntax_dump(value)}")
    return f"{type(node).__name__}({', '.join(fields)})"


def engine_sources(specs: dict, backend: str = "loop") -> tuple[str, ...]:
    """The engine files (names in experiments/) whose code the runs of `specs` depend on."""
    return ENGINE_SOURCES + BACKEND_SOURCES[backend] + \
        tuple(sorted({f for spec in specs.values() for f in MODEL_SOURCES.get(spec.model, ())}))


def fingerprint(specs: dict, seeds: list[int], quick: bool, backend: str = "loop", digest=None) -> str:
    """Identity of a result: resolved specs, seeds, quick mode, the engine's code and, for the
    batched population backend, that backend. `digest(name)` hashes an engine file's code: by
    default the checkout's; `digests_at(rev)` gives a commit's (what `restamp` compares with)."""
    digest = digest or code_digest
    payload = {"specs": {k: v.as_dict() for k, v in specs.items()}, "seeds": seeds, "quick": quick,
               "engine": {name: digest(name) for name in engine_sources(specs, backend)}}
    if backend != "loop":   # keeps the loop backend's fingerprints, and the committed results, as they were
        payload["backend"] = backend
    if quick:               # (quick results are never committed)
        payload["quick_sizes"] = [QUICK_TRAIN, QUICK_EVAL, QUICK_EPOCHS]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def code_digest(name: str) -> str:
    """source_digest of the checkout's engine file `name` (e.g. "train.py")."""
    return _code_digest(ENGINE_DIR / name)


def digests_at(rev: str):
    """name -> source_digest of engine file `name` as committed at git revision `rev`; a
    ResultError names a revision or file that git cannot show."""
    where = ENGINE_DIR.relative_to(PROJECT_ROOT).as_posix()

    @functools.lru_cache(maxsize=None)
    def digest(name: str) -> str:
        text = _git("show", f"{rev}:{where}/{name}")
        if text is None:
            raise ResultError(f"git cannot show {where}/{name} at {rev!r}; give a commit of this repository "
                              f"whose engine code made the result (see `git log -- {where}`)")
        return source_digest(text)
    return digest


def git_revision(rev: str) -> str | None:
    """The full commit id git gives `rev` (None outside a git checkout)."""
    return _git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")


def git_log_last(path: Path) -> str | None:
    """The commit that last changed `path` (None outside git, or where it was never committed)."""
    return _git("log", "-1", "--format=%H", "--", str(path)) or None


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(device: str, argv: list[str], started: datetime) -> dict:
    """Where and how a result was made. Outputs (results/, report/report.*) don't make the tree dirty."""
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".",
                  ":(exclude)results", ":(exclude)report/report.html", ":(exclude)report/report.pdf")
    packages = {}
    for name in ("torch", "torchvision", "numpy", "tqdm"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    return {"git_commit": _git("rev-parse", "HEAD"), "git_dirty": None if status is None else bool(status),
            "packages": packages, "python": platform.python_version(), "platform": platform.platform(),
            "device": device, "cpu_count": os.cpu_count(), "cpu": cpu_identity(),
            "started": started.isoformat(timespec="seconds"),
            "wall_seconds": None, "command": " ".join(["python -m experiments", *argv])}


def cpu_identity() -> dict:
    """This machine's CPU as its kernels see it: name, family, model, stepping and the vector
    extensions (AVX*, AMX*, FMA) by which MKL and oneDNN choose their code paths (Linux's
    /proc/cpuinfo; elsewhere what `platform` says). Why: a CPU rerun repeats a run bit for bit only
    where the same kernels run; on another CPU it may round differently (README: Changing the engine's code)."""
    try:
        first = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    except OSError:
        return {"name": platform.processor() or platform.machine()}
    fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in first.splitlines())}
    flags = sorted(f for f in fields.get("flags", "").split() if f.startswith(("avx", "amx", "fma")))
    return {"name": fields.get("model name"), "family": fields.get("cpu family"), "model": fields.get("model"),
            "stepping": fields.get("stepping"), "vector_extensions": " ".join(flags)}


def now() -> datetime:
    return datetime.now(timezone.utc)


def summarize(runs: list[dict]) -> dict:
    """Per final metric over the runs that did not diverge: mean, sample std, n and the 95%
    Student's t interval of the mean (stats.interval)."""
    ok = [r["final"] for r in runs if not r["final"]["diverged"]]
    out = {key: stats.interval([f[key] for f in ok if f.get(key) is not None]) for key in SUMMARY_KEYS}
    out["diverged"] = len(runs) - len(ok)
    return out


def by_seed(variant: dict, metric: str) -> dict:
    """seed -> final[metric] of a variant's runs that did not diverge (what seed-pairing pairs)."""
    return {r["seed"]: r["final"][metric] for r in variant["runs"]
            if not r["final"]["diverged"] and r["final"].get(metric) is not None}


def comparisons(variants: list[dict], control: str) -> list[dict]:
    """Every variant against the control, seed-paired, on validation and test accuracy:
    {variant, control, metric, diff_mean, ci95, n} (diverged runs leave their seed out)."""
    ctl = next((v for v in variants if v["name"] == control), None)
    if ctl is None:
        return []
    return [{"variant": v["name"], "control": control, "metric": metric,
             **stats.paired_difference(by_seed(v, metric), by_seed(ctl, metric))}
            for v in variants if v is not ctl for metric in ("val_acc", "test_acc")]


def restat(result: dict, control: str) -> dict:
    """`result` with its summaries and comparisons computed afresh from its runs (what the runs
    measured is untouched, so the fingerprint stays)."""
    for v in result["variants"]:
        v["summary"] = summarize(v["runs"])
    result["control"], result["comparisons"] = control, comparisons(result["variants"], control)
    return result


def make_target(path) -> str:
    """`path` as the Makefile names it: relative to the project root where it lies inside (make
    knows `results/depth.json`, not `/home/me/fmreport/results/depth.json`)."""
    try:
        return str(Path(path).resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)


@contextmanager
def replacing(path):
    """A temporary path beside `path` that is renamed over it when the block ends without error, and
    removed otherwise: readers see the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}-{threading.get_ident()}")   # lanes: threads of one process
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: Path, obj) -> None:
    """Write `obj` as JSON (or `str` as text, `bytes` as they are), fsynced, through `replacing`:
    the one way this project writes a file that something else reads."""
    with replacing(path) as tmp, open(tmp, "wb" if isinstance(obj, bytes) else "w") as f:
        if isinstance(obj, (str, bytes)):
            f.write(obj)
        else:
            json.dump(obj, f, indent=1, allow_nan=False)
            f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _require(cond: bool, path: Path, what: str) -> None:
    if not cond:
        raise ResultError(f"{path}: {what}")


def validate(obj, path: Path) -> dict:
    _require(isinstance(obj, dict), path, "top level is not a JSON object")
    _require(obj.get("schema_version") == SCHEMA_VERSION, path,
             f"schema_version is {obj.get('schema_version')!r}, this code reads {SCHEMA_VERSION}; "
             f"remake it with `make {make_target(path)}` (or `make reproduce` for the whole study)")
    for key, kind in (("experiment", str), ("fingerprint", str), ("provenance", dict), ("variants", list),
                      ("comparisons", list), ("base", dict), ("data", dict)):
        hint = f"; `python -m experiments restat {path}` adds it without retraining" \
            if key in ("comparisons", "base", "data") else ""
        _require(isinstance(obj.get(key), kind), path, f"field {key!r} is missing or not a {kind.__name__}{hint}")
    restamps = obj["provenance"].get("restamps", [])
    _require(isinstance(restamps, list) and all(isinstance(r, dict) and isinstance(r.get("checked_runs"), list)
                                                and r["checked_runs"] for r in restamps),
             path, "provenance.restamps must list what each restamp retrained (checked_runs); "
                   f"remake it with `make {make_target(path)}`")
    for i, v in enumerate(obj["variants"]):
        where = f"variants[{i}]"
        _require(isinstance(v, dict) and isinstance(v.get("name"), str), path, f"{where} has no name")
        for key, kind in (("params", dict), ("runs", list), ("summary", dict)):
            _require(isinstance(v.get(key), kind), path, f"{where} ({v['name']}) lacks {key!r}")
        for j, run in enumerate(v["runs"]):
            validate_run(run, path, f"{where}.runs[{j}]")
        for key in ("val_acc", "test_acc"):
            _require("ci95" in v["summary"].get(key, {}), path,
                     f"{where} ({v['name']}) has no 95% interval in summary.{key}; "
                     f"`python -m experiments restat {path}` adds it without retraining")
    return obj


def validate_run(run, path: Path, where: str) -> None:
    """One run as fit writes it: seed, history and final metrics."""
    _require(isinstance(run, dict) and isinstance(run.get("history"), list)
             and isinstance(run.get("final"), dict) and isinstance(run.get("seed"), int),
             path, f"{where} lacks seed/history/final")
    missing = [k for k in FINAL_KEYS if k not in run["final"]]
    _require(not missing, path, f"{where}.final lacks {', '.join(missing)}")


def load(path) -> dict:
    """The one way to read a result file: parsed and validated, or a ResultError that says why."""
    return validate(read(path), Path(path))


def read(path) -> dict:
    """A result file parsed but not validated (for `restat`, which upgrades older files)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ResultError(f"{path}: no such file; run `make {make_target(path)}`") from None
    except OSError as err:
        raise ResultError(f"{path}: cannot read ({err.strerror})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise ResultError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}); "
                          f"delete it and rerun the experiment") from None
    return obj
