"""The committed results, as the report presents them: current, with their statistics, and with
issue 14's n of at least 10 seeds per variant."""
from __future__ import annotations

import pytest

from experiments import catalog, planning, results

RESULTS = results.PROJECT_ROOT / "results"
COMMITTED = [name for name in catalog.EXPERIMENTS if (RESULTS / f"{name}.json").exists()]


@pytest.mark.parametrize("name", COMMITTED)
def test_a_committed_result_is_current_and_carries_its_statistics(name):
    exp = catalog.EXPERIMENTS[name]
    result = results.load(RESULTS / f"{name}.json")
    assert planning.is_fresh(RESULTS / f"{name}.json",
                             planning.accepted_fingerprints(exp, None, None, False, None, "auto")), \
        f"results/{name}.json is stale: run make results/{name}.json"
    assert [v["name"] for v in result["variants"]] == list(exp.variants)
    for variant in result["variants"]:
        for metric in ("val_acc", "test_acc"):
            s = variant["summary"][metric]
            assert s["n"] == exp.seeds - variant["summary"]["diverged"]
            assert len(s["ci95"]) == 2 and s["ci95"][0] <= s["mean"] <= s["ci95"][1]
    others = [v for v in exp.variants if v != exp.control_variant]
    assert sorted({c["variant"] for c in result["comparisons"]}) == sorted(others)
    assert {c["control"] for c in result["comparisons"]} <= {exp.control_variant}


@pytest.mark.parametrize("name", COMMITTED)
def test_a_committed_results_figures_are_current(name, tmp_path, monkeypatch):
    """The fingerprint make all compares before it redraws, computed afresh (no digest cache, as in
    a fresh clone), is the committed one: make all there leaves results/figures as committed."""
    from report import figures
    monkeypatch.setattr(results, "DIGEST_CACHE", tmp_path / "digests.json")
    recorded = (RESULTS / "figures" / f"{name}.fingerprint").read_text().split()
    assert recorded[0] == figures.fingerprint(RESULTS / f"{name}.json", catalog.EXPERIMENTS[name].figures), \
        f"results/figures/{name}.fingerprint is stale: run make report and commit results/figures"


def test_every_experiment_asks_for_at_least_ten_seeds():
    assert {name: exp.seeds for name, exp in catalog.EXPERIMENTS.items() if exp.seeds < 10} == {}


@pytest.mark.parametrize("name", COMMITTED)
def test_every_variant_of_a_committed_result_has_at_least_ten_seeds(name):
    result = results.load(RESULTS / f"{name}.json")
    assert min(v["summary"]["val_acc"]["n"] for v in result["variants"]) >= 10
