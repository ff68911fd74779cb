"""Loading the results: one Section per experiment, with its result or the error that replaces it,
and whether the result is current for this checkout."""
from __future__ import annotations

import json
import re
from pathlib import Path

from experiments import catalog, planning, results

from .config import ROOT


class Section:
    """One experiment section: its loaded result, or the error that replaces it."""

    def __init__(self, name: str, path: Path, result: dict | None, error: str | None):
        self.name, self.path, self.result, self.error = name, path, result, error
        exp = catalog.EXPERIMENTS.get(name)
        self.title = exp.heading if exp else name.replace("_", " ").capitalize()
        self.subject = exp.subject if exp else self.title   # in the abstract's lists
        self.optional = bool(exp and exp.optional)
        self.description = (result or {}).get("description") or (exp.description if exp else "")
        self.catalog_problems = exp.problems() if exp else []   # a broken entry: no result can be current
        self.stale = bool(result and exp and not current(result, exp))

    @property
    def skipped(self) -> bool:
        """An optional experiment (catalog: needs a GPU or a file) never run here: a note in its
        section, not a problem, so --strict accepts it. A broken file is still an error."""
        return self.optional and self.result is None and not self.path.exists()

    @property
    def variants(self) -> list[dict]:
        return self.result["variants"] if self.result else []


def current(result: dict, exp) -> bool:
    """Whether a result is what this checkout's catalog and engine code would make for its seeds
    (either backend): otherwise its section says it is stale and how to remake it."""
    try:
        accepted = planning.accepted_fingerprints(exp, len(result.get("seeds") or [0]), None,
                                                  bool(result.get("quick")), None, "auto")
    except ValueError:
        return False
    return result["fingerprint"] in accepted


def section_names() -> list[str]:
    """The catalog's experiments in its order, the optional ones (which may be absent) last."""
    return sorted(catalog.EXPERIMENTS, key=lambda n: catalog.EXPERIMENTS[n].optional)


def load_sections(results_dir: Path) -> list[Section]:
    sections = []
    for name in section_names():
        path = results_dir / f"{name}.json"
        try:
            result = results.load(path)
            if result["experiment"] != name:
                raise results.ResultError(f"{path}: holds experiment {result['experiment']!r}, not {name!r}")
            sections.append(Section(name, path, result, None))
        except results.ResultError as err:
            sections.append(Section(name, path, None, str(err)))
    return sections


BENCH_KEYS = ("engine_plain_epoch_s", "engine_augmented_epoch_s", "tutorial_plain_epoch_s",
              "tutorial_augmented_epoch_s", "speedup_plain", "speedup_augmented", "matmul_flops",
              "train_step_flops", "peak_fraction", "time_to_89", "time_to_89_seconds", "threads", "provenance",
              "devices")


GPU_BENCH_KEYS = ("study_seconds", "member_epoch_ms", "time_to_89", "time_to_89_population",
                  "bf16_peak_fraction", "population_members")


def load_bench(results_dir: Path, name: str = "bench.json") -> dict | None:
    """results/bench.json (from `make bench` on the CPU) or bench-cuda.json (on CUDA), or None when
    it is absent, a quick run or incomplete."""
    try:
        bench = json.loads((results_dir / name).read_text())
    except (OSError, ValueError):
        return None
    keys = BENCH_KEYS + (GPU_BENCH_KEYS if name == "bench-cuda.json" else ())
    ok = isinstance(bench, dict) and all(k in bench for k in keys) and not bench.get("quick")
    return bench if ok else None


def load_gpu_check(results_dir: Path) -> dict | None:
    """results/gpu-check.json (`make gpu-check` on a CUDA machine: the study there against the
    committed results, and what repeats), or None when it is absent, a quick run or incomplete."""
    try:
        check = json.loads((results_dir / "gpu-check.json").read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(check, dict) and not check.get("quick") and isinstance(check.get("agreement"), dict) \
        and isinstance(check.get("study_seconds"), (int, float))
    return check if ok else None


def make_command(results_dir: Path, name: str) -> str:
    """The command that (re)makes one result file."""
    try:
        rel = results_dir.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        rel = "results"
    quick = "QUICK=1 " if rel == "build/quick/results" else ""
    return f"make {quick}{rel if rel in ('results', 'build/quick/results') else 'results'}/{name}.json"


def display_path(path: Path) -> str:
    """A path relative to the project when it is inside it (as a command run there would name it)."""
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


def missing_message(section: Section, results_dir: Path) -> str:
    # load() ends a missing file's message with its own "; run `make PATH`": say it once, below
    error = re.sub(r"; run `make [^`]*`$", "", section.error)
    return f"Result missing or invalid: {error} — run `{make_command(results_dir, section.name)}`"
