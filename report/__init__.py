"""The report stage: result files -> Jinja -> Markdown -> HTML + PDF (`python report/build.py`)."""
