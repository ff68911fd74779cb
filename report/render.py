"""Markdown -> HTML and PDF with pandoc and Typst (or Quarto), and the fingerprint that lets an
up-to-date report be left alone."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from experiments import locks, results

from .config import (BIBLIOGRAPHY, BOXES_FILTER, PANDOC_COMMON, STYLE, TYPST_HEADER, TYPST_PAGE,
                     ReportError)
from .figures import draw_stale
from .numbering import render_markdown
from .sections import Section, display_path, load_sections, make_command

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
    code = sorted(Path(__file__).parent.glob("*.py"))   # every module of the report stage
    for path in (*code, STYLE, TYPST_HEADER, BOXES_FILTER, BIBLIOGRAPHY):
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


def compile_pdf(typ: Path, pdf: Path, root: Path, timestamp) -> None:
    """Typst source -> PDF. A layout that did not converge is an error, not a warning: its page
    numbers, links and float positions are those of an unfinished attempt (a show rule that depends
    on the page it lands on can make that happen)."""
    import typst
    compile_ = getattr(typst, "compile_with_warnings", None) or typst.compile   # older typst-py: no warnings
    try:
        made = compile_(str(typ), output=str(pdf), root=str(root), format="pdf", timestamp=timestamp,
                        ignore_system_fonts=True, font_paths=[])
    except Exception as err:      # typst raises its own error type with the compiler's message
        raise ReportError(f"typst could not compile {typ}: {err}") from None
    unstable = [str(w) for w in (made[1] if isinstance(made, tuple) else [])
                if "did not converge" in str(w) or "did not stabilize" in str(w)]
    if unstable:
        pdf.unlink(missing_ok=True)
        raise ReportError(f"typst's layout of {typ} did not converge ({'; '.join(unstable[:3])}): a show rule in "
                          f"{TYPST_HEADER.name} whose output depends on where it lands can cause that")


def render_pandoc(work: Path, out: Path, sections: list[Section], digest: str) -> None:
    pandoc = pandoc_path()
    meta = work / "fingerprint.html"
    meta.write_text(f'<meta name="fmreport-fingerprint" content="{digest}" />\n')
    html_tmp, pdf_tmp = out / f".report.html.tmp{os.getpid()}", out / f".report.pdf.tmp{os.getpid()}"
    try:   # both are written beside the published files and renamed over them only when both exist
        run_tool([pandoc, "report.md", *PANDOC_COMMON, "--to", "html5", "--embed-resources", "--mathml",
                  "--css", str(STYLE), "--include-in-header", str(meta), "--resource-path", str(work),
                  "--output", str(html_tmp)], work)
        (work / "typst-page.json").write_text(json.dumps(TYPST_PAGE))
        run_tool([pandoc, "report.md", *PANDOC_COMMON, "--to", "typst", "--metadata-file", "typst-page.json",
                  "--include-in-header", str(TYPST_HEADER), "--output", "report.typ"], work)
        compile_pdf(work / "report.typ", pdf_tmp, work, pdf_timestamp(sections))
        os.replace(pdf_tmp, out / "report.pdf")
        os.replace(html_tmp, out / "report.html")     # last: its fingerprint says both are current
    finally:
        html_tmp.unlink(missing_ok=True)
        pdf_tmp.unlink(missing_ok=True)


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
        with results.replacing(out / name) as tmp:
            shutil.copyfile(work / name, tmp)


def build(results_dir: Path, out: Path, work: Path, strict: bool = False, renderer: str = "pandoc",
          if_stale: bool = False, log=print) -> int:
    """Render the report from `results_dir` into `out`, one process at a time: a second build of
    the same `out` (two `make all`) waits for the first, so neither removes the other's files."""
    with locks.exclusive(out / "report.html", log):
        return _build(results_dir, out, work, strict, renderer, if_stale, log)


def _build(results_dir: Path, out: Path, work: Path, strict: bool, renderer: str, if_stale: bool, log) -> int:
    started = time.perf_counter()
    sections = load_sections(results_dir)
    draw_stale(sections, results_dir / "figures", log)   # only the figures whose result or code changed
    markdown, doc = render_markdown(sections, results_dir)
    problems = [f"experiments/catalog.py: {p}" for s in sections for p in s.catalog_problems] + doc.problems
    if strict and problems:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        return 1
    for sec in sections:   # shown in a box in their sections; said here too, where a terminal shows it
        if sec.stale and not sec.catalog_problems:
            print(f"warning: {display_path(sec.path)} is stale (made by other specs or engine code than this "
                  f"checkout's): remake it with `{make_command(results_dir, sec.name)}`, or restamp it after a "
                  f"refactor (README: Changing the engine's code)", file=sys.stderr)
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
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    log(f"wrote {out / 'report.html'} and {out / 'report.pdf'} from {results_dir} "
        f"in {time.perf_counter() - started:.1f} s")
    return 0
