#!/usr/bin/env python3
"""Render the report from result files: results/*.json -> Jinja -> one markdown file -> HTML + PDF.

    python report/build.py [--results DIR] [--out DIR] [--strict] [--renderer pandoc|quarto] [--if-stale]

Stages (each writes a file the next one reads; the intermediates live in build/report/):
  1. load every result through experiments.results.load; a missing or invalid one becomes a
     visible box in its section (--strict: exit 1 instead); redraw the figures (report/figures.py,
     into <results>/figures/) of each result whose figure fingerprint changed;
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
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, this folder is on sys.path, where its modules (text, config, ...) would shadow
# top-level names; the project root takes its place, so `report` and `experiments` import as packages.
sys.path[:] = [p for p in sys.path if not p or Path(p).resolve() != ROOT / "report"]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The stages, one module each; their names are re-exported here for the tests and for readers.
from report.analysis import *  # noqa: E402,F401,F403
from report.config import *  # noqa: E402,F401,F403
from report.numbering import *  # noqa: E402,F401,F403
from report.render import *  # noqa: E402,F401,F403
from report.sections import *  # noqa: E402,F401,F403
from report.sources import *  # noqa: E402,F401,F403
from report.text import *  # noqa: E402,F401,F403
from report.config import REPORT_DIR, ReportError  # noqa: E402
from report.render import build  # noqa: E402


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
    except OSError as err:   # a full disk or no permission: the message names the file
        print(f"error: {err.strerror or err}: {err.filename or ''} (the previous report is unchanged)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
