"""The Jinja step: figure, table and section numbering, cross-references, and the two passes that
let forward references resolve."""
from __future__ import annotations

import hashlib
import os
import re
import statistics
from collections import Counter
from pathlib import Path

import jinja2
from markupsafe import Markup

from experiments import catalog

from .analysis import HELPERS, by_precision, concurrent, distinct, elapsed_seconds, holm_family, restamp_changes
from .config import (BASELINES, ESSAYS, LICENSES, ORIGINAL_STUDY_TEST_ACC, REPORT_DIR, ROOT, TARGET_VAL_ACC, TEMPLATES,
                     ReportError)
from .sections import Section, display_path, load_bench, load_gpu_check, make_command, missing_message
from .sources import quote_functions, quote_uses
from .text import FILTERS, _na, code, finalize, md, md_escape

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
        if not src.is_file():   # report/figures.py draws what the catalog entry asks for, when the result has it
            why = (f"figure missing: {display_path(src)} (drawn from the result file by report/figures.py "
                   f"when its catalog entry lists the figure)")
            self.problems.append(why[0].upper() + why[1:])
            return Markup(f"\n::: {{.missing #{ident}}}\n**{label}:** {md_escape(why)}\n:::\n")
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


def bytecode_cache() -> jinja2.FileSystemBytecodeCache | None:
    """Compiled templates kept in build/jinja-cache: compiling them is most of the time `make all`
    takes to find the report up to date. Jinja keys each by its template's source; the folder is
    named after what else a compiled template depends on (this module's environment settings, the
    filters in text.py, Jinja's version). None where build/ cannot be written."""
    code = hashlib.sha256(jinja2.__version__.encode())
    for module in ("numbering.py", "text.py"):
        code.update((Path(__file__).parent / module).read_bytes())
    folder = ROOT / "build" / "jinja-cache" / code.hexdigest()[:16]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return jinja2.FileSystemBytecodeCache(str(folder)) if os.access(folder, os.W_OK) else None


def make_env(doc: Document) -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
                             autoescape=True, finalize=finalize, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True, bytecode_cache=bytecode_cache())
    env.filters.update(FILTERS)
    env.globals.update(HELPERS)
    env.globals.update(figure=doc.figure, table=doc.table, ref=doc.ref, heading=doc.heading,
                       missing=doc.missing, essay=doc.essay, quote_functions=quote_functions,
                       quote_uses=quote_uses, make_command=lambda name: make_command(doc.results_dir, name),
                       distinct=lambda *path: distinct(doc.sections, *path),
                       restamp_changes=lambda: restamp_changes(doc.sections),
                       by_precision=lambda: by_precision(doc.sections),
                       concurrent=lambda section: concurrent(section, doc.sections))
    return env


def base_variant(sections: list[Section]) -> tuple[dict | None, dict | None]:
    """The depth experiment's result and its control variant, the base MLP (None where absent)."""
    depth = next((s.result for s in sections if s.name == "depth" and s.result), None)
    control = next((v for v in depth["variants"] if v["name"] == depth.get("control")), None) if depth else None
    return depth, control


def base_accuracy(sections: list[Section]) -> dict | None:
    """Mean validation and test accuracy of the base MLP (the depth experiment's control), the
    accuracy at which the Method section states the binomial standard error of one evaluation."""
    _, control = base_variant(sections)
    if not control or _na(control["summary"]["val_acc"]["mean"]):
        return None
    return {"val": control["summary"]["val_acc"]["mean"], "test": control["summary"]["test_acc"]["mean"]}


def base_epoch(sections: list[Section]) -> dict | None:
    """The median wall time of an epoch (its evaluation included) of the base MLP, the depth
    experiment's control, over its runs' histories, with the machine and threads that ran it: what
    an epoch cost where the results were made, beside the bench's figures from its own machine."""
    depth, control = base_variant(sections)
    seconds = [h["seconds"] for r in (control or {}).get("runs", []) for h in r["history"]
               if isinstance(h.get("seconds"), (int, float))]
    if not seconds:
        return None
    p = depth["provenance"]
    return {"seconds": statistics.median(seconds), "epochs": len(seconds), "variant": control["name"],
            "precision": control["params"].get("precision"), "platform": p.get("platform"),
            "threads": p.get("torch_threads"), "cpu_count": p.get("cpu_count")}


def described(sections: list[Section]) -> dict | None:
    """The base RunSpec and the data set's constants as the results record them (every current
    result holds the same; the first in report order is taken)."""
    return next((s.result for s in sections if s.result and not s.result.get("quick")),
                next((s.result for s in sections if s.result), None))


def front_matter(sections: list[Section]) -> dict | None:
    """Title-block facts from the result files: their dates, the commits they were made at (files
    per commit, whether made from a modified tree), the newest result's date and commit, the study's time (the sum of
    the results' wall times, and the time during which at least one of them ran), their torch thread counts,
    the machines they ran on, and the data's digests."""
    loaded = [s.result for s in sections if s.result and not s.result.get("quick")]
    if not loaded:
        return None
    newest = max(loaded, key=lambda r: r["provenance"].get("started") or "")
    commits: dict[str, list] = {}   # commit -> [files, any made from a modified tree]
    for r in loaded:
        entry = commits.setdefault((r["provenance"].get("git_commit") or "unknown")[:12], [0, False])
        entry[0] += 1
        entry[1] = entry[1] or bool(r["provenance"].get("git_dirty"))
    starts = sorted((r["provenance"].get("started") or "")[:10] for r in loaded)
    wall = sum(r["provenance"].get("wall_seconds") or 0 for r in loaded)
    elapsed = elapsed_seconds([r["provenance"] for r in loaded])
    return {"date": (newest["provenance"].get("started") or "")[:10], "first_date": starts[0],
            "commit": (newest["provenance"].get("git_commit") or "unknown")[:12],
            "commits": [{"commit": c, "files": n, "dirty": d}
                        for c, (n, d) in sorted(commits.items(), key=lambda kv: -kv[1][0])],
            "dirty": any(r["provenance"].get("git_dirty") for r in loaded),
            "study_seconds": wall, "elapsed_seconds": elapsed,
            "side_by_side": wall - elapsed > 60,   # more than a minute of the sum ran beside other commands
            "threads": sorted({r["provenance"]["torch_threads"] for r in loaded
                               if r["provenance"].get("torch_threads")}),
            "devices": sorted({r["provenance"].get("device") or "?" for r in loaded}),
            "cpu_counts": sorted({r["provenance"].get("cpu_count") or 0 for r in loaded}),
            "digests": loaded[0]["data"]["sha256"]}


def dataset(result: dict | None) -> dict | None:
    """The data set's sizes and split as a result records them."""
    if result is None:
        return None
    d = result["data"]
    val = d["val_per_class"] * len(d["classes"])
    return {"train": d["train_images"], "test": d["test_images"], "height": d["image_size"][0],
            "width": d["image_size"][1], "classes": len(d["classes"]), "val": val,
            "fit": d["train_images"] - val, "split_seed": d["split_seed"]}


def bibtex(front: dict) -> Markup:
    """A BibTeX entry for this report, as a fenced code block (its text is shown verbatim)."""
    year = front["date"][:4]
    entry = (f"@misc{{fmreport{year},\n"
             f"  title  = {{Regularization in neural networks on Fashion-MNIST: a reproducible study}},\n"
             f"  author = {{{{fmreport contributors}}}},\n  year   = {{{year}}},\n"
             f"  note   = {{commit {front['commit']}, results of {front['date']}}}\n}}")
    return Markup(f"```bibtex\n{entry}\n```\n")


def render_markdown(sections: list[Section], results_dir: Path) -> tuple[str, Document]:
    doc = Document(sections, results_dir)
    first = described(sections)
    context = {
        "sections": sections, "by_name": {s.name: s for s in sections},
        "experiments": [s for s in sections if s.name != "best"],
        "best": next((s for s in sections if s.name == "best"), None),
        "essays": ESSAYS, "licenses": LICENSES, "original_test_acc": ORIGINAL_STUDY_TEST_ACC, "baselines": BASELINES, "target_val_acc": TARGET_VAL_ACC,
        "dataset": dataset(first), "base": first["base"] if first else None,
        "quick": [s for s in sections if s.result and s.result.get("quick")],
        "bench": load_bench(results_dir), "gpu_bench": load_bench(results_dir, "bench-cuda.json"),
        "gpu_check": load_gpu_check(results_dir),
        "loaded": [s for s in sections if s.result],
        "base_acc": base_accuracy(sections),
        "base_epoch": base_epoch(sections),
        "front": front_matter(sections), "bibtex": bibtex,
        "headline_trials": getattr(catalog.EXPERIMENTS.get("best"), "trials", 0),
    }
    holm = context["holm"] = holm_family([s.result for s in sections if s.name != "best" and s.result])
    subject = {s.name: s.subject for s in sections}
    # the abstract's lists: what the compared experiments vary, and where no variant beat training
    # without regularizers (a subject two experiments share, as the weight penalties, in neither)
    beaten = {subject[n] for n in holm["beaten"]}
    context["subjects"] = {"compared": list(dict.fromkeys(subject[n] for n in holm["compared"])),
                           "unbeaten": list(dict.fromkeys(subject[n] for n in holm["unbeaten"] if subject[n] not in beaten))}
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
