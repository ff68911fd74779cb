"""Every experiment of the catalog runs in --quick mode on the real data, describes itself, and the
report stage draws its figures from the result file alone."""
import statistics
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from experiments import describe, results, runner
from experiments.catalog import EXPERIMENTS, RunSpec
from report import figures


@pytest.mark.slow
# transfer needs ImageNet weights: test_transfer.py runs it --quick with a random ResNet-18 instead
@pytest.mark.parametrize("name", [n for n in EXPERIMENTS if n != "transfer"])
def test_every_spec_runs_quick_and_summaries_are_exact(name, tmp_path):
    out = tmp_path / f"{name}.json"
    runner.run_experiment(EXPERIMENTS[name], out, ["run", name, "--quick"], seeds=2, quick=True,
                          device_name="cpu", log=lambda *a: None)
    result = results.load(out)
    assert [v["name"] for v in result["variants"]] == list(EXPERIMENTS[name].variants)
    for v in result["variants"]:
        finals = [r["final"] for r in v["runs"] if not r["final"]["diverged"]]
        for key in ("test_acc", "val_acc", "train_acc", "epochs"):
            values = [f[key] for f in finals]
            assert v["summary"][key]["n"] == len(values)
            assert v["summary"][key]["mean"] == pytest.approx(statistics.mean(values))
            assert v["summary"][key]["std"] == pytest.approx(statistics.stdev(values))
    control = EXPERIMENTS[name].control_variant
    assert result["control"] == control
    assert len(result["comparisons"]) == 2 * (len(result["variants"]) - 1)   # val and test per other variant
    assert result["base"] == RunSpec().as_dict() and result["data"] == describe.data_constants()
    if "confusion" in EXPERIMENTS[name].figures:   # the misclassified grid's pixels travel in the result
        shown = {str(i["index"]) for v in result["variants"] for r in v["runs"] for i in r["final"]["misclassified"]}
        assert shown and set(result["examples"]["images"]) == shown
    figures.draw(result, tmp_path / "figures", EXPERIMENTS[name].figures)
    drawn = sorted(p.name for p in (tmp_path / "figures").iterdir())
    assert f"{name}-curves.svg" in drawn
    # accuracy bars where there is more than one variant to compare (one variant's repeat its table row)
    assert (f"{name}-accuracy.svg" in drawn) == (len(result["variants"]) > 1)
    assert ("best-misclassified.svg" in drawn) == (name == "best")
    for p in (tmp_path / "figures").iterdir():
        root = ET.parse(p).getroot()                       # well-formed SVG with a real size
        assert root.tag.endswith("svg") and float(root.get("width").rstrip("pt")) > 100


def run(history_accs, diverged=False):
    return {"history": [{"val_acc": a} for a in history_accs], "final": {"diverged": diverged}}


def test_curve_band_is_the_95_interval_over_runs_that_reached_each_epoch():
    runs = [run([0.5, 0.6, 0.7]), run([0.7, 0.8]), run([0.1], diverged=True)]
    epochs, mean, half, n = figures._curve(runs, "val_acc")
    assert n == 2 and epochs.tolist() == [1, 2, 3]
    assert np.allclose(mean, [0.6, 0.7, 0.7])
    t1 = 12.706204736174705          # Student's t, 97.5% quantile, 1 degree of freedom
    assert np.allclose(half, [t1 * statistics.stdev([0.5, 0.7]) / 2 ** 0.5,
                              t1 * statistics.stdev([0.6, 0.8]) / 2 ** 0.5, 0.0])


@pytest.mark.slow
def test_figures_are_redrawn_only_when_their_result_changes_and_then_byte_identical(tmp_path):
    out = tmp_path / "depth.json"
    runner.run_experiment(EXPERIMENTS["depth"], out, ["run", "depth", "--quick"], seeds=1, epochs=1, quick=True,
                          device_name="cpu", log=lambda *a: None)

    class Section:   # what draw_stale reads of a report section
        name, path, result = "depth", out, results.load(out)

    folder = tmp_path / "figures"
    assert len(figures.draw_stale([Section], folder, log=lambda *a: None)) == 2
    first = (folder / "depth-curves.svg").read_bytes()
    assert figures.draw_stale([Section], folder, log=lambda *a: None) == []       # fresh: nothing drawn
    (folder / "depth-accuracy.svg").unlink()                                      # a figure file lost
    assert len(figures.draw_stale([Section], folder, log=lambda *a: None)) == 2
    results.write_atomic(out, {**Section.result, "description": "changed"})      # any byte of the result
    assert len(figures.draw_stale([Section], folder, log=lambda *a: None)) == 2
    assert (folder / "depth-curves.svg").read_bytes() == first                   # same curves, same bytes
