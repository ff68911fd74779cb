"""Where the report's inputs live, its section order and titles, and the few numbers that do not
come from a result file (each with its source)."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

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
