"""fmreport's ML side: data, models, penalties, the one training loop, the catalog, result files."""
