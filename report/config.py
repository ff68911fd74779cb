"""Where the report's inputs live, its top-level sections, and the few numbers that do not come from
a result file (each with its source). Experiment sections, their order and titles are the catalog's."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

REPORT_DIR = ROOT / "report"
TEMPLATES = ROOT / "templates"
ENGINE = ROOT / "experiments"
STYLE = REPORT_DIR / "style.css"                 # the HTML's only style sheet
TYPST_HEADER = REPORT_DIR / "typst-header.typ"   # page, table and code settings of the PDF
BOXES_FILTER = REPORT_DIR / "boxes.lua"          # colored boxes (missing results) in the PDF
BIBLIOGRAPHY = REPORT_DIR / "references.bib"
ESSAYS = ("essay-l1-l2.md", "essay-architectures.md")

TOP_SECTIONS = ("Summary", "Data and method", "Experiments", "Speed", "The regularization code",
                "References", "Appendix: provenance of the results")

# Numbers that do not come from a result file, each with its source. Templates print them through
# the same filters as measured values.
ORIGINAL_STUDY_TEST_ACC = 0.89     # the assignment this study extends [@assignment]: ~89.00% test, one run
# Published Fashion-MNIST test accuracies, checked against their sources (see ../shared/reference):
# the paper's scikit-learn benchmark (Table 3, mean of 5 runs) and the dataset repository's table.
BASELINES = (
    ("MLPClassifier (scikit-learn), best setting", 0.871, "xiao2017fashion"),
    ("SVC, RBF kernel, C = 10 (scikit-learn)", 0.897, "xiao2017fashion"),
    ("MLP 256-128-100, no preprocessing", 0.8833, "xiao2017repo"),
    ("2 conv + pooling (TensorFlow tutorial)", 0.916, "xiao2017repo"),
    ("2 conv + pooling + batch norm", 0.934, "xiao2017repo"),
    ("2 conv + 2 FC, horizontal flips", 0.939, "xiao2017repo"),
    ("ResNet-18 with augmentation", 0.949, "xiao2017repo"),
    ("WRN-28-10 with random erasing", 0.963, "xiao2017repo"),
    ("Human performance (crowd)", 0.835, "xiao2017repo"),
)
# The licenses the title block states (README's "License" section holds the MIT text).
LICENSES = (("the code", "MIT", "https://opensource.org/license/mit"),
            ("the text and figures", "CC BY 4.0", "https://creativecommons.org/licenses/by/4.0/"))
TARGET_VAL_ACC = 0.88              # batchnorm: epochs and seconds until validation accuracy >= this

# Page settings of the PDF: variables of pandoc's (and Quarto's) Typst template.
TYPST_PAGE = {"papersize": "a4", "margin": {"x": "2.2cm", "y": "2.3cm"}, "fontsize": "10.5pt",
              "page-numbering": "1"}

PANDOC_COMMON = ["--from", "markdown", "--standalone", "--toc", "--toc-depth=2", "--number-sections",
                 "--citeproc", "--bibliography", str(BIBLIOGRAPHY), "--metadata", "link-citations=true",
                 "--lua-filter", str(BOXES_FILTER)]


class ReportError(Exception):
    """A problem that stops the render (the message says what to do)."""
