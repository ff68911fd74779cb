#!/usr/bin/env python3
"""Render the report from result files: results/*.json -> Jinja -> one markdown file -> HTML + PDF.

    python report/build.py [--results DIR] [--out DIR] [--strict] [--renderer pandoc|quarto] [--if-stale]

Stages (each writes a file the next one reads; the intermediates live in build/report/):
  1. load every result through experiments.results.load; a missing or invalid one becomes a
     visible box in its section (--strict: exit 1 instead);
  2. render templates/report.md.j2 into build/report/report.md. The Jinja step numbers figures,
     tables and sections itself and renders twice so that forward references resolve; HTML and
     PDF then show the same numbers. Every string from a result file is escaped for Markdown;
     printing a number without a filter is an error;
  3. pandoc -> report/report.html (one self-contained file, MathML, no request to any host);
  4. pandoc -> build/report/report.typ -> typst -> report/report.pdf (fixed timestamp).
--renderer quarto writes build/report/report.qmd and runs the `quarto` CLI instead of 3 and 4.
--if-stale does nothing when the fingerprint of everything the output depends on (the rendered
markdown, the figures, style and filters, tool versions) equals the one stored in report.html.

Exit codes: 0 rendered (or up to date), 1 a missing/invalid result with --strict, a failing
pandoc/typst/quarto, or Quarto not installed; 2 bad arguments.
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:          # run as a script: make the `experiments` package importable
    sys.path.insert(0, str(ROOT))

import jinja2  # noqa: E402
from markupsafe import Markup  # noqa: E402

from experiments import catalog, planning, results, stats  # noqa: E402  (none imports torch)

REPORT_DIR = ROOT / "report"
TEMPLATES = ROOT / "templates"
ENGINE = ROOT / "experiments"
STYLE = REPORT_DIR / "style.css"                 # the HTML's only style sheet
TYPST_HEADER = REPORT_DIR / "typst-header.typ"   # page, table and code settings of the PDF
BOXES_FILTER = REPORT_DIR / "boxes.lua"          # coloured boxes (missing results) in the PDF
BIBLIOGRAPHY = REPORT_DIR / "references.bib"
ESSAYS = ("essay-l1-l2.md", "essay-architectures.md")

# Sections, in report order. `best` is the headline configuration; an optional experiment without
# a result file gets a note saying how to run it. Catalog experiments not listed here come before it.
ORDER = ("depth", "dropout", "early_stopping", "batchnorm", "regularization", "augmentation", "best", "cnn")
OPTIONAL = ("transfer",)
TITLES = {"depth": "Depth", "dropout": "Dropout", "early_stopping": "Early stopping",
          "batchnorm": "Batch normalization", "regularization": "L1, L2 and weight decay",
          "augmentation": "Data augmentation", "best": "The headline model",
          "transfer": "Transfer learning", "cnn": "A convolutional network"}
TOP_SECTIONS = ("Summary", "Data and method", "Experiments", "Speed", "The regularization code",
                "References", "Appendix: provenance of the results")

# Numbers that do not come from a result file, each with its source. Templates print them through
# the same filters as measured values.
ORIGINAL_STUDY_TEST_ACC = 0.89     # test accuracy reported by the original study (~89.00%)
TARGET_VAL_ACC = 0.88              # batchnorm: epochs and seconds until validation accuracy >= this
FASHION_MNIST = {"train": 60_000, "test": 10_000, "height": 28, "width": 28}  # Xiao et al. 2017

# Page settings of the PDF: variables of pandoc's (and Quarto's) Typst template.
TYPST_PAGE = {"papersize": "a4", "margin": {"x": "2.2cm", "y": "2.3cm"}, "fontsize": "10.5pt",
              "page-numbering": "1"}

PANDOC_COMMON = ["--from", "markdown", "--standalone", "--toc", "--toc-depth=2", "--number-sections",
                 "--citeproc", "--bibliography", str(BIBLIOGRAPHY), "--metadata", "link-citations=true",
                 "--lua-filter", str(BOXES_FILTER)]


class ReportError(Exception):
    """A problem that stops the render (the message says what to do)."""


# ---------------------------------------------------------------------------------------------
# Markdown safety: every string printed by a template is escaped unless it is Markup, i.e. made
# by a helper or filter below, or rendered by a template (whose own prints were escaped).

_MD_SPECIAL = re.compile(r"""([\\`*_{}\[\]()#+\-.!|<>&~^$@:"'=%])""")


def md_escape(text: str) -> str:
    """Literal text in pandoc Markdown: backslash before every special character, one line."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def md(text) -> Markup:
    """Caption/label text given to a helper: Markup stays, a plain string is escaped."""
    return text if isinstance(text, Markup) else Markup(md_escape(text))


def finalize(value):
    if isinstance(value, Markup):
        return value
    if isinstance(value, str):
        return Markup(md_escape(value))
    raise TypeError(f"template printed {value!r} ({type(value).__name__}) without a filter: numbers go "
                    f"through pct/pm/num/sec/..., structures through a helper")


# ---------------------------------------------------------------------------------------------
# Number filters. Each returns Markup; None (a diverged run, a missing value) prints as "n/a".

def _na(x) -> bool:
    return x is None or (isinstance(x, float) and not math.isfinite(x))


NBSP = "\u00a0"   # keeps "89.12 ± 0.15%", "1.2 pp" and "12.3 s" on one line


def _minus(text: str) -> Markup:
    """A typographic minus sign (U+2212) instead of the hyphen in negative numbers."""
    return Markup(re.sub(r"-(?=\d)", "−", text))


def pct(x, digits: int = 2) -> Markup:
    """0.89123 -> 89.12%"""
    return Markup("n/a") if _na(x) else _minus(f"{100 * x:.{digits}f}%")


def pm(s: dict, digits: int = 2, scale: float = 100, unit: str = "%") -> Markup:
    """{mean, std, n} of a fraction -> "89.12 ± 0.15%" (sample std over n seeds)."""
    if not isinstance(s, dict) or _na(s.get("mean")):
        return Markup("n/a")
    std = s.get("std") or 0.0
    return _minus(f"{scale * s['mean']:.{digits}f}{NBSP}±{NBSP}{scale * std:.{digits}f}{unit.replace(' ', NBSP)}")


def ci(s: dict, digits: int = 2, scale: float = 100, unit: str = "%") -> Markup:
    """{mean, ci95} of a fraction -> "89.12% [88.95, 89.29]" (the 95% Student's t interval over
    seeds; just the mean where one seed gives no interval)."""
    if not isinstance(s, dict) or _na(s.get("mean")):
        return Markup("n/a")
    text = f"{scale * s['mean']:.{digits}f}{unit.replace(' ', NBSP)}"
    if s.get("ci95"):
        low, high = (scale * x for x in s["ci95"])
        text += f"{NBSP}[{low:.{digits}f}, {high:.{digits}f}]"
    return _minus(text)


def ci_pp(d: dict, digits: int = 2) -> Markup:
    """A paired difference {diff_mean, ci95} of fractions -> "+0.12 pp [−0.05, +0.29]"."""
    if not isinstance(d, dict) or _na(d.get("diff_mean")):
        return Markup("n/a")
    text = f"{100 * d['diff_mean']:+.{digits}f}{NBSP}pp"
    if d.get("ci95"):
        low, high = (100 * x for x in d["ci95"])
        text += f"{NBSP}[{low:+.{digits}f}, {high:+.{digits}f}]"
    return _minus(text)


def pmn(s: dict, digits: int = 1, unit: str = "") -> Markup:
    """{mean, std, n} of a plain quantity (epochs, seconds) -> "12.3 ± 0.4"."""
    return pm(s, digits, 1, unit)


def pp(x, digits: int = 2, sign: bool = False) -> Markup:
    """Difference of two fractions in percentage points: 0.0123 -> "1.23 pp" ("+1.23 pp" with sign)."""
    if _na(x):
        return Markup("n/a")
    return _minus(f"{100 * x:{'+' if sign else ''}.{digits}f}{NBSP}pp")


def num(x, digits: int = 0) -> Markup:
    """54000 -> "54,000"; 0.5 with digits=1 -> "0.5"."""
    return Markup("n/a") if _na(x) else _minus(f"{x:,.{digits}f}")


def g(x) -> Markup:
    """Compact general format for coefficients and learning rates: 1e-05, 0.001, 0.5."""
    return Markup("n/a" if _na(x) else md_escape(f"{x:g}"))


def sec(x, digits: int = 1) -> Markup:
    """seconds -> "12.3 s"."""
    return Markup("n/a" if _na(x) else f"{x:.{digits}f}{NBSP}s")


def duration(x) -> Markup:
    """Wall time: 75 -> "1 min 15 s", 3900 -> "1 h 05 min"."""
    if _na(x):
        return Markup("n/a")
    s = round(x)
    if s < 60:
        return Markup(f"{x:.1f}{NBSP}s")
    if s < 3600:
        return Markup(f"{s // 60}{NBSP}min {s % 60:02d}{NBSP}s")
    return Markup(f"{s // 3600}{NBSP}h {s % 3600 // 60:02d}{NBSP}min")


def code(text) -> Markup:
    """Inline code whose content is shown verbatim (the fence is longer than any backtick run)."""
    text = " ".join(str(text).split())
    fence = "`" * (max((len(r) for r in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return Markup(f"{fence}{pad}{text}{pad}{fence}")


def yesno(x) -> Markup:
    return Markup("n/a" if x is None else ("yes" if x else "no"))


def upfirst(text: str) -> str:
    """First letter upper case, the rest untouched ("dropout rates" -> "Dropout rates", "AdamW" stays)."""
    return text[:1].upper() + text[1:]


def and_list(items) -> Markup:
    """["a", "b", "c"] -> "a, b and c" (plain strings escaped, Markup kept)."""
    items = [md(i) for i in items]
    return Markup(", ".join(items[:-1]) + " and " + items[-1] if len(items) > 1 else "".join(items))


FILTERS = {"pct": pct, "pm": pm, "ci": ci, "ci_pp": ci_pp, "pmn": pmn, "pp": pp, "num": num, "g": g, "sec": sec,
           "duration": duration, "code": code, "yesno": yesno, "upfirst": upfirst, "and_list": and_list,
           # only for text a template rendered itself ({% set x | md %}...{% endset %}): its
           # prints were escaped already, so it must not be escaped again
           "md": lambda text: Markup(text)}


# ---------------------------------------------------------------------------------------------
# Analysis helpers: numbers the discussions need, computed from result dicts (never printed raw).

def summary(values) -> dict:
    """{mean, std, n, ci95} of the non-missing values: the rule experiments.results.summarize uses."""
    return stats.interval([v for v in values if not _na(v)])


def ok_runs(variant: dict) -> list[dict]:
    return [r for r in variant["runs"] if not r["final"]["diverged"]]


def best_variant(result: dict, key: str = "val_acc") -> dict | None:
    """The variant with the highest mean `key` (validation accuracy: the test set chooses nothing)."""
    scored = [v for v in result["variants"] if not _na(v["summary"].get(key, {}).get("mean"))]
    return max(scored, key=lambda v: v["summary"][key]["mean"]) if scored else None


def by_seed(variant: dict, key: str) -> dict:
    """seed -> final[key] of the runs that did not diverge."""
    return {r["seed"]: r["final"][key] for r in ok_runs(variant) if not _na(r["final"].get(key))}


def verdict(result: dict, key: str = "val_acc") -> dict | None:
    """What validation can say about an experiment's variants. `top` has the highest mean; it is
    the `winner` only when its seed-paired difference against the runner-up has a 95% interval
    that excludes zero. `tied`: the top and every variant whose paired difference against it
    includes zero. `diff`: the top's paired difference against the runner-up."""
    scored = sorted((v for v in result["variants"] if not _na(v["summary"].get(key, {}).get("mean"))),
                    key=lambda v: -v["summary"][key]["mean"])
    if not scored:
        return None
    top, rest = scored[0], scored[1:]
    against = [stats.paired_difference(by_seed(top, key), by_seed(v, key)) for v in rest]
    tied = [top] + [v for v, d in zip(rest, against) if not stats.excludes_zero(d["ci95"])]
    winner = top if not rest or stats.excludes_zero(against[0]["ci95"]) else None
    return {"top": top, "winner": winner, "tied": tied, "runner_up": rest[0] if rest else None,
            "diff": against[0] if rest else None, "n": top["summary"][key]["n"]}


def comparison(result: dict, variant: str, key: str = "val_acc") -> dict | None:
    """The result file's seed-paired comparison of `variant` against the control on `key`."""
    return next((c for c in result.get("comparisons", []) if c["variant"] == variant and c["metric"] == key), None)


def against_control(result: dict, key: str = "val_acc") -> dict | None:
    """The result file's seed-paired comparisons on `key`, split into the variants whose 95%
    interval excludes zero (`differ`) and those within seed noise of the control (`same`)."""
    rows = [c for c in result.get("comparisons", []) if c["metric"] == key and c["n"]]
    if not rows:
        return None
    return {"control": rows[0]["control"], "n": min(c["n"] for c in rows),
            "differ": [c for c in rows if stats.excludes_zero(c["ci95"])],
            "same": [c for c in rows if not stats.excludes_zero(c["ci95"])]}


def gap(variant: dict, a: str = "train_acc", b: str = "val_acc") -> dict:
    """Per-seed a - b (generalization gap), summarized."""
    return summary(r["final"][a] - r["final"][b] for r in ok_runs(variant))


def weight_count(variant: dict) -> int | None:
    """Number of weights (matrices and conv kernels, biases and norms left out) of the first run."""
    runs = ok_runs(variant)
    return sum(layer["size"] for layer in runs[0]["final"]["weights"]["layers"]) if runs else None


def diff(x: dict, y: dict) -> float | None:
    """Difference of two summary means (x - y)."""
    if not isinstance(x, dict) or not isinstance(y, dict) or _na(x.get("mean")) or _na(y.get("mean")):
        return None
    return x["mean"] - y["mean"]


def reach(variant: dict, target: float, key: str = "val_acc") -> dict:
    """First epoch with history[key] >= target, and the training seconds spent until then."""
    epochs, seconds = [], []
    for run in ok_runs(variant):
        spent = 0.0
        for h in run["history"]:
            spent += h["seconds"] or 0.0
            if not _na(h.get(key)) and h[key] >= target:
                epochs.append(h["epoch"])
                seconds.append(spent)
                break
    return {"reached": len(epochs), "runs": len(variant["runs"]), "epochs": summary(epochs),
            "seconds": summary(seconds), "target": target}


def last_epoch(variant: dict, key: str) -> dict:
    """history[-1][key] over seeds: the plain single-view number of the last epoch's weights. It
    differs from the final one only where that uses test-time shifts or restored early-stopping weights."""
    return summary(r["history"][-1].get(key) for r in ok_runs(variant) if r["history"])


def stopping(variant: dict) -> dict:
    """Epochs trained and epoch of the lowest validation loss, over seeds."""
    runs = ok_runs(variant)
    return {"epochs": summary(r["final"]["epochs"] for r in runs),
            "best_epoch": summary(r["final"].get("best_epoch") for r in runs),
            "max_epochs": variant["params"].get("epochs"), "patience": variant["params"].get("patience")}


def first_layer(variant: dict) -> dict:
    """Fraction of first-layer weights with |w| < threshold (and exactly 0), over seeds."""
    runs = [r for r in ok_runs(variant) if r["final"].get("weights", {}).get("layers")]
    layers = [r["final"]["weights"]["layers"][0] for r in runs]
    thresholds = {r["final"]["weights"]["zero_threshold"] for r in runs}
    return {"threshold": thresholds.pop() if len(thresholds) == 1 else None,
            "near_zero": summary(l["frac_near_zero"] for l in layers),
            "exact_zero": summary(l["frac_exact_zero"] for l in layers),
            "name": layers[0]["name"] if layers else None, "size": layers[0]["size"] if layers else None}


def method_of(params: dict) -> tuple[str, float | None]:
    """Which weight regularizer a variant uses, and its strength (from its params, not its name)."""
    if params.get("l1"):
        return ("L1 proximal step" if params.get("l1_proximal") else "L1 penalty in the loss"), params["l1"]
    if params.get("l2"):
        return "L2 penalty in the loss", params["l2"]
    if params.get("weight_decay"):
        return f"decoupled weight decay ({params.get('optimizer', '')})", params["weight_decay"]
    return "none", None


def methods(result: dict) -> list[dict]:
    """Per regularization method (first-seen order): its variants and the best strength on validation."""
    groups: dict[str, list] = {}
    for v in result["variants"]:
        groups.setdefault(method_of(v["params"])[0], []).append(v)
    out = []
    for name, variants in groups.items():
        best = best_variant({"variants": variants})
        out.append({"method": name, "variants": variants, "best": best,
                    "strength": method_of(best["params"])[1] if best else None})
    return out


def per_class(variant: dict) -> list[dict]:
    """Test accuracy per class over seeds, from the confusion matrices; classes from data.py."""
    names = source_constant(ENGINE / "data.py", "CLASSES")
    mats = [r["final"]["confusion"] for r in ok_runs(variant) if r["final"].get("confusion")]
    return [{"name": name, "acc": summary(m[i][i] / sum(m[i]) for m in mats if sum(m[i]))}
            for i, name in enumerate(names)]


def param_changes(result: dict) -> list[tuple[str, str]]:
    """(parameter, value) where a variant differs from the RunSpec defaults (shared by all variants)."""
    default = catalog.RunSpec().as_dict()
    params = [v["params"] for v in result["variants"]]
    shared = {k: params[0][k] for k in params[0] if all(p.get(k) == params[0][k] for p in params)}
    return [(k, v) for k, v in shared.items() if k in default and default[k] != v]


def distinct(sections: list, *path: str) -> list:
    """Sorted distinct values of result[path...] (e.g. provenance, packages, torch) over the loaded results."""
    out = set()
    for s in sections:
        if s.result:
            node = s.result
            for part in path:
                node = node.get(part) if isinstance(node, dict) else None
            if node is not None:
                out.add(node if isinstance(node, (str, int, float, bool)) else json.dumps(node))
    return sorted(out, key=str)


def measure(variants: list[dict], fn) -> list[dict]:
    """[{variant, value: fn(variant)}] for each variant, e.g. measure(sec.variants, gap)."""
    return [{"variant": v, "value": fn(v)} for v in variants]


def order(items: list[dict], key: str = "value", reverse: bool = False) -> list[dict]:
    """Items sorted by the mean of the summary at the dotted path `key` (missing means last)."""
    def mean(item):
        for part in key.split("."):
            item = item.get(part) if isinstance(item, dict) else None
        return None if not isinstance(item, dict) or _na(item.get("mean")) else item["mean"]
    have = [i for i in items if mean(i) is not None]
    return sorted(have, key=mean, reverse=reverse) + [i for i in items if mean(i) is None]


HELPERS = {"summary": summary, "best_variant": best_variant, "gap": gap, "diff": diff, "reach": reach,
           "stopping": stopping, "last_epoch": last_epoch, "first_layer": first_layer, "methods": methods,
           "method_of": method_of, "per_class": per_class, "param_changes": param_changes, "ok_runs": ok_runs,
           "order": order, "measure": measure, "weight_count": weight_count, "verdict": verdict, "against_control": against_control,
           "comparison": comparison, "binomial_se": stats.binomial_se}


# ---------------------------------------------------------------------------------------------
# Source code: quoted by name from the real modules at render time, never copied.

def source_constant(path: Path, name: str):
    """The literal value of a module-level `NAME = ...` in a source file (no import, no torch)."""
    for node in ast.parse(path.read_text()).body:
        targets = node.targets if isinstance(node, ast.Assign) else \
            [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return ast.literal_eval(node.value)
    raise ReportError(f"{path.relative_to(ROOT)} has no constant {name}; the report reads it from there")


def _code_block(lines: list[str]) -> str:
    text = textwrap.dedent("\n".join(lines)).rstrip()
    fence = "`" * max(3, max((len(r) + 1 for r in re.findall(r"`{3,}", text)), default=3))
    return f"{fence}python\n{text}\n{fence}"


def _where(path: Path, first: int, last: int, function: str = "") -> str:
    lines = f"line {first}" if first == last else f"lines {first}–{last}"
    inside = f" in {code(function + '()')}" if function else ""
    return f"{code(path.relative_to(ROOT).as_posix())}{inside}, {lines}"


def quote_functions(module: str, *names: str) -> Markup:
    """The source of top-level functions (with decorators) of experiments/<module>, by name."""
    path = ENGINE / module
    lines = path.read_text().splitlines()
    defs = {n.name: n for n in ast.parse("\n".join(lines)).body
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    parts = []
    for name in names:
        if name not in defs:
            raise ReportError(f"{path.relative_to(ROOT)} has no function {name}(); update the report's "
                              f"code section (templates/report.md.j2)")
        node = defs[name]
        first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
        parts.append(f"{_where(path, first, node.end_lineno)}:\n\n{_code_block(lines[first - 1:node.end_lineno])}")
    return Markup("\n\n".join(parts))


def quote_uses(module: str, function: str, attribute: str = "penalties", also: tuple = ("objective",)) -> Markup:
    """The statements of `function` that use `attribute`.X (or assign a name in `also`), as
    contiguous spans of the innermost statement lists that hold them (an `if` is kept whole)."""
    path = ENGINE / module
    lines = path.read_text().splitlines()
    fn = next((n for n in ast.walk(ast.parse("\n".join(lines))) if isinstance(n, ast.FunctionDef)
               and n.name == function), None)
    if fn is None:
        raise ReportError(f"{path.relative_to(ROOT)} has no function {function}()")

    def mentions(node) -> bool:
        return any(isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == attribute
                   or isinstance(n, ast.Name) and n.id in also and isinstance(n.ctx, ast.Store)
                   for n in ast.walk(node))

    spans = []

    def visit(body: list) -> None:
        marked = []
        for stmt in body:
            if not mentions(stmt):
                continue
            inner = [b for f in ("body", "orelse", "finalbody") for b in [getattr(stmt, f, None)] if b]
            if isinstance(stmt, (ast.For, ast.While, ast.With, ast.Try)) and inner:
                for b in inner:
                    visit(b)
            else:
                marked.append(stmt)
        if marked:
            spans.append((marked[0].lineno, marked[-1].end_lineno))

    visit(fn.body)
    if not spans:
        raise ReportError(f"{path.relative_to(ROOT)}: {function}() no longer uses {attribute}.*")
    spans.sort()
    parts = [f"{_where(path, a, b, function)}:\n\n{_code_block(lines[a - 1:b])}" for a, b in spans]
    return Markup("\n\n".join(parts))


# ---------------------------------------------------------------------------------------------
# Results

def title_of(name: str) -> str:
    """The heading of an experiment's section."""
    return TITLES.get(name, name.replace("_", " ").capitalize())


class Section:
    """One experiment section: its loaded result, or the error that replaces it."""

    def __init__(self, name: str, path: Path, result: dict | None, error: str | None):
        self.name, self.path, self.result, self.error = name, path, result, error
        self.title = title_of(name)
        exp = catalog.EXPERIMENTS.get(name)
        self.description = (result or {}).get("description") or (exp.description if exp else "")
        self.stale = bool(result and exp and not current(result, exp))

    @property
    def skipped(self) -> bool:
        """An optional experiment never run here (transfer without ImageNet weights or a GPU): a
        note in its section, not a problem, so --strict accepts it. A broken file is still an error."""
        return self.name in OPTIONAL and self.result is None and not self.path.exists()

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


def section_names(results_dir: Path) -> list[str]:
    names = [n for n in ORDER if n in catalog.EXPERIMENTS or n == "best"]
    names += [n for n in catalog.EXPERIMENTS if n not in names and n not in OPTIONAL]
    names += [n for n in OPTIONAL if n in catalog.EXPERIMENTS]
    return names


def load_sections(results_dir: Path) -> list[Section]:
    sections = []
    for name in section_names(results_dir):
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
              "devices", "report_seconds")


def load_bench(results_dir: Path) -> dict | None:
    """results/bench.json (from `make bench`), or None when it is absent, a quick run or incomplete."""
    try:
        bench = json.loads((results_dir / "bench.json").read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(bench, dict) and all(k in bench for k in BENCH_KEYS) and not bench.get("quick")
    return bench if ok else None


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


# ---------------------------------------------------------------------------------------------
# The Jinja step: numbering registry, two passes.

_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*(?:\{([^}]*)\})?\s*$")
_FENCE = re.compile(r"^(`{3,}|~{3,})")


def scan_headings(markdown: str) -> dict[str, str]:
    """Heading id -> "Section 3.2" as pandoc's --number-sections will number it (unnumbered
    headings keep their title). Skips fenced code."""
    counters, out, fence = [0] * 6, {}, None
    for line in markdown.splitlines():
        m = _FENCE.match(line)
        if m:
            fence = None if fence and m.group(1).startswith(fence) else (fence or m.group(1))
            continue
        if fence:
            continue
        h = _HEADING.match(line)
        if not h:
            continue
        level, title, attrs = len(h.group(1)), h.group(2), (h.group(3) or "").split()
        ident = next((a[1:] for a in attrs if a.startswith("#")), None)
        if ".unnumbered" in attrs or "-" in attrs:
            label = title.replace("\\", "")
        else:
            counters[level - 1] += 1
            counters[level:] = [0] * (6 - level)
            label = "Section " + ".".join(str(c) for c in counters[:level])
        if ident:
            out[ident] = label
    return out


class Document:
    """Figure/table/section registry and the template helpers that use it."""

    KINDS = {"fig": "Figure", "tbl": "Table"}

    def __init__(self, sections: list[Section], results_dir: Path):
        self.sections, self.results_dir = sections, results_dir
        self.known: dict[str, str] = {}     # id -> "Figure 3" / "Section 3.2", from the previous pass
        self.start_pass()

    def start_pass(self) -> None:
        self.labels: dict[str, str] = {}
        self.counts: Counter = Counter()
        self.figures: dict[str, Path] = {}  # figure file name -> source path
        self.problems: list[str] = []
        self.unresolved: set[str] = set()

    def _number(self, kind: str, name: str) -> tuple[str, str]:
        ident = f"{kind}-{name}"
        if ident in self.labels:
            raise ReportError(f"{ident} is defined twice in the templates")
        self.counts[kind] += 1
        self.labels[ident] = f"{self.KINDS[kind]} {self.counts[kind]}"
        return ident, self.labels[ident]

    def figure(self, name: str, caption, width: str = "100%") -> Markup:
        """An SVG from <results>/figures/<name>.svg as "Figure N: caption", id fig-<name>, `width`
        of the text width."""
        ident, label = self._number("fig", name)
        src = self.results_dir / "figures" / f"{name}.svg"
        if not src.is_file():
            owner = next((x.path for x in sorted(self.sections, key=lambda x: -len(x.name))
                          if name.startswith(x.name + "-")), self.results_dir / "NAME.json")
            command = f"python -m experiments.figures {display_path(owner)}"
            self.problems.append(f"Figure missing: {src} — run `{command}`")
            return Markup(f"\n::: {{.missing #{ident}}}\n**{label}:** figure missing: {md_escape(str(src))} — "
                          f"run {code(command)}\n:::\n")
        self.figures[f"{name}.svg"] = src
        return Markup(f"\n![{label}: {md(caption)}](figures/{name}.svg){{#{ident} width={width}}}\n")

    def table(self, name: str, caption) -> Markup:
        """The caption line of a pipe table as "Table N: caption", id tbl-<name>."""
        ident, label = self._number("tbl", name)
        return Markup(f": {label}: {md(caption)} {{#{ident}}}")

    def ref(self, ident: str, text=None) -> Markup:
        """A link "Figure N" / "Table N" / "Section N" to an id defined anywhere in the document."""
        label = self.known.get(ident)
        if label is None:
            self.unresolved.add(ident)
            label = "??"
        return Markup(f"[{md(text) if text is not None else label}](#{ident})")

    def heading(self, level: int, title, ident: str, *classes: str) -> Markup:
        attrs = " ".join([f"#{ident}", *(f".{c}" for c in classes)])
        return Markup(f"{'#' * level} {md(title)} {{{attrs}}}")

    def missing(self, section: Section) -> Markup:
        message = missing_message(section, self.results_dir)
        if message not in self.problems:
            self.problems.append(message)
        head, _, cmd = message.rpartition(" — run ")
        return Markup(f"\n::: {{.missing}}\n{md_escape(head)} — run {code(cmd.strip('`'))}\n:::\n")

    def essay(self, filename: str) -> Markup:
        """An essay from report/, one heading level up (it is written with ## as its top), its
        table captions numbered like ours, and @sec-/@fig-/@tbl- references made into links."""
        text = (REPORT_DIR / filename).read_text()
        out, fence = [], None
        for line in text.splitlines():
            m = _FENCE.match(line)
            if m:
                fence = None if fence and m.group(1).startswith(fence) else (fence or m.group(1))
            elif not fence:
                if re.match(r"^#{2,6}\s", line):
                    line = line[1:]
                cap = re.match(r"^:\s+(.*?)\s*\{#tbl-([\w-]+)\}\s*$", line)
                if cap:
                    line = str(self.table(cap.group(2), Markup(cap.group(1))))
                line = re.sub(r"\[@((?:sec|fig|tbl)-[\w-]+)\]|(?<![\w@])@((?:sec|fig|tbl)-[\w-]*\w)",
                              lambda m: str(self.ref(m.group(1) or m.group(2))), line)
            out.append(line)
        return Markup("\n".join(out) + "\n")


def make_env(doc: Document) -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
                             autoescape=True, finalize=finalize, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True)
    env.filters.update(FILTERS)
    env.globals.update(HELPERS)
    env.globals.update(figure=doc.figure, table=doc.table, ref=doc.ref, heading=doc.heading,
                       missing=doc.missing, essay=doc.essay, quote_functions=quote_functions,
                       quote_uses=quote_uses, make_command=lambda name: make_command(doc.results_dir, name),
                       base=catalog.RunSpec().as_dict(),   # the settings every experiment starts from
                       distinct=lambda *path: distinct(doc.sections, *path))
    return env


def base_accuracy(sections: list[Section]) -> dict | None:
    """Mean validation and test accuracy of the base MLP (the depth experiment's control), the
    accuracy at which the Method section states the binomial standard error of one evaluation."""
    depth = next((s for s in sections if s.name == "depth" and s.result), None)
    control = next((v for v in depth.result["variants"] if v["name"] == depth.result.get("control")), None) \
        if depth else None
    if not control or _na(control["summary"]["val_acc"]["mean"]):
        return None
    return {"val": control["summary"]["val_acc"]["mean"], "test": control["summary"]["test_acc"]["mean"]}


def render_markdown(sections: list[Section], results_dir: Path) -> tuple[str, Document]:
    doc = Document(sections, results_dir)
    data = source_constant(ENGINE / "data.py", "VAL_PER_CLASS"), source_constant(ENGINE / "data.py", "CLASSES")
    context = {
        "sections": sections, "by_name": {s.name: s for s in sections},
        "experiments": [s for s in sections if s.name != "best"],
        "best": next((s for s in sections if s.name == "best"), None),
        "essays": ESSAYS, "original_test_acc": ORIGINAL_STUDY_TEST_ACC, "target_val_acc": TARGET_VAL_ACC,
        "dataset": {**FASHION_MNIST, "classes": len(data[1]), "val": data[0] * len(data[1]),
                    "fit": FASHION_MNIST["train"] - data[0] * len(data[1]),
                    "split_seed": source_constant(ENGINE / "data.py", "SPLIT_SEED")},
        "quick": [s for s in sections if s.result and s.result.get("quick")],
        "bench": load_bench(results_dir),
        "loaded": [s for s in sections if s.result],
        "base_acc": base_accuracy(sections),
    }
    env = make_env(doc)
    text = ""
    for _ in range(4):          # labels settle after two passes; more means numbering depends on itself
        doc.start_pass()
        text = env.get_template("report.md.j2").render(context)
        labels = {**doc.labels, **scan_headings(text)}
        if labels == doc.known and not doc.unresolved:
            return re.sub(r"\n{3,}", "\n\n", text), doc
        doc.known = labels
    missing = ", ".join(sorted(doc.unresolved)) or "labels keep changing between passes"
    raise ReportError(f"unresolved cross-references in the templates: {missing}")


# ---------------------------------------------------------------------------------------------
# Output

def pandoc_path() -> str:
    import pypandoc
    return pypandoc.get_pandoc_path()


def run_tool(cmd: list[str], cwd: Path) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.stderr.strip():
        print(proc.stderr.strip(), file=sys.stderr)
    if proc.returncode:
        raise ReportError(f"{Path(cmd[0]).name} failed (exit {proc.returncode}): {' '.join(cmd)}")


def pdf_timestamp(sections: list[Section]) -> int:
    """SOURCE_DATE_EPOCH if set, else the latest start time among the results (else 0): the PDF's
    creation date depends on the inputs only."""
    if os.environ.get("SOURCE_DATE_EPOCH", "").isdigit():
        return int(os.environ["SOURCE_DATE_EPOCH"])
    starts = [datetime.fromisoformat(s.result["provenance"]["started"]).timestamp() for s in sections
              if s.result and s.result["provenance"].get("started")]
    return int(max(starts, default=0))


def fingerprint(markdown: str, figures: dict[str, Path], renderer: str) -> str:
    import typst
    h = hashlib.sha256()
    h.update(markdown.encode())
    for name in sorted(figures):
        h.update(name.encode() + hashlib.sha256(figures[name].read_bytes()).digest())
    for path in (Path(__file__), STYLE, TYPST_HEADER, BOXES_FILTER, BIBLIOGRAPHY):
        h.update(path.read_bytes())
    h.update(f"{renderer}|typst {getattr(typst, '__version__', '')}".encode())   # no paths: same on every clone
    h.update(subprocess.run([pandoc_path(), "--version"], capture_output=True, text=True).stdout.encode())
    return h.hexdigest()


def stored_fingerprint(html: Path) -> str | None:
    try:
        m = re.search(r'<meta name="fmreport-fingerprint" content="([0-9a-f]+)"', html.read_text())
    except OSError:
        return None
    return m.group(1) if m else None


def render_pandoc(work: Path, out: Path, sections: list[Section], digest: str) -> None:
    import typst
    pandoc = pandoc_path()
    meta = work / "fingerprint.html"
    meta.write_text(f'<meta name="fmreport-fingerprint" content="{digest}" />\n')
    html_tmp = out / ".report.html.tmp"
    run_tool([pandoc, "report.md", *PANDOC_COMMON, "--to", "html5", "--embed-resources", "--mathml",
              "--css", str(STYLE), "--include-in-header", str(meta), "--resource-path", str(work),
              "--output", str(html_tmp)], work)
    (work / "typst-page.json").write_text(json.dumps(TYPST_PAGE))
    run_tool([pandoc, "report.md", *PANDOC_COMMON, "--to", "typst", "--metadata-file", "typst-page.json",
              "--include-in-header", str(TYPST_HEADER), "--output", "report.typ"], work)
    pdf_tmp = out / ".report.pdf.tmp"
    try:
        typst.compile(str(work / "report.typ"), output=str(pdf_tmp), root=str(work), format="pdf",
                      timestamp=pdf_timestamp(sections), ignore_system_fonts=True, font_paths=[])
    except Exception as err:      # typst raises its own error type with the compiler's message
        html_tmp.unlink(missing_ok=True)
        raise ReportError(f"typst could not compile {work / 'report.typ'}: {err}") from None
    os.replace(pdf_tmp, out / "report.pdf")
    os.replace(html_tmp, out / "report.html")     # last: its fingerprint says both are current


def render_quarto(work: Path, out: Path, markdown: str) -> None:
    quarto = shutil.which("quarto")
    if quarto is None:
        raise ReportError("--renderer quarto: the `quarto` command is not on PATH; install Quarto "
                          "(https://quarto.org, or `pip install .[quarto]`) or use the default --renderer pandoc")
    # Quarto numbers #fig-/#tbl- ids itself; ours are numbered already, so rename them.
    body = markdown.split("\n---\n", 1)[1] if markdown.startswith("---\n") else markdown
    body = re.sub(r"#(fig|tbl)-", lambda m: "#" + {"fig": "figure-", "tbl": "table-"}[m.group(1)], body)
    title = re.search(r"^title: (.*)$", markdown, re.M)
    header = {
        "title": json.loads(title.group(1)) if title else "Report", "bibliography": str(BIBLIOGRAPHY),
        "link-citations": True, "number-sections": True, "toc": True, "toc-depth": 2,
        "filters": [str(BOXES_FILTER)],
        "format": {"html": {"embed-resources": True, "html-math-method": "mathml", "css": str(STYLE)},
                   "typst": {"include-in-header": str(TYPST_HEADER), **TYPST_PAGE}},
    }
    qmd = work / "report.qmd"
    qmd.write_text("---\n" + json.dumps(header, indent=1) + "\n---\n" + body)   # JSON is valid YAML
    subprocess.run([quarto, "render", qmd.name], cwd=work, check=True)
    for name in ("report.html", "report.pdf"):
        shutil.copyfile(work / name, out / name)


def build(results_dir: Path, out: Path, work: Path, strict: bool = False, renderer: str = "pandoc",
          if_stale: bool = False, log=print) -> int:
    started = time.perf_counter()
    sections = load_sections(results_dir)
    markdown, doc = render_markdown(sections, results_dir)
    if strict and doc.problems:
        for problem in doc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 1
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work / "figures", ignore_errors=True)
    (work / "figures").mkdir()
    for name, src in doc.figures.items():
        shutil.copyfile(src, work / "figures" / name)
    (work / "report.md").write_text(markdown)
    if renderer == "quarto":
        render_quarto(work, out, markdown)
    else:
        digest = fingerprint(markdown, doc.figures, renderer)
        if if_stale and stored_fingerprint(out / "report.html") == digest and (out / "report.pdf").exists():
            log(f"{out / 'report.html'} and report.pdf are up to date (same inputs)")
            return 0
        render_pandoc(work, out, sections, digest)
    for problem in doc.problems:
        print(f"warning: {problem}", file=sys.stderr)
    log(f"wrote {out / 'report.html'} and {out / 'report.pdf'} from {results_dir} "
        f"in {time.perf_counter() - started:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="report/build.py", description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=ROOT / "results", help="result files (default results/)")
    parser.add_argument("--out", type=Path, default=REPORT_DIR, help="where report.html/.pdf go (default report/)")
    parser.add_argument("--work", type=Path, help="intermediate files (default build/report, or OUT/build "
                        "when --out is not report/)")
    parser.add_argument("--strict", action="store_true", help="a missing or invalid result is an error (exit 1)")
    parser.add_argument("--renderer", choices=("pandoc", "quarto"), default="pandoc")
    parser.add_argument("--if-stale", action="store_true", help="do nothing when report.html records the same inputs")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    work = args.work or (ROOT / "build" / "report" if out == REPORT_DIR.resolve() else out / "build")
    try:
        return build(args.results, out, work.resolve(), args.strict, args.renderer, args.if_stale)
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
