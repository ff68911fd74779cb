"""The prepared GPU check, tried on the CPU (its own --device cpu mode) on one small experiment:
it must run end to end and write the repeatability figures that issue 17's item 6 asks of a GPU."""
from __future__ import annotations

import json

import pytest

from experiments import catalog, gpu_check


@pytest.mark.slow
def test_the_gpu_check_runs_on_the_cpu_and_measures_repeatability(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "EXPERIMENTS", {gpu_check.REPEAT: catalog.EXPERIMENTS[gpu_check.REPEAT]})
    assert gpu_check.main(["--device", "cpu", "--quick", "--seeds", "1", "--backend", "loop", "--skip-bench",
                           "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    variants = len(catalog.EXPERIMENTS[gpu_check.REPEAT].variants)
    assert report["experiments"][gpu_check.REPEAT]["backend"] == "loop"
    # the CPU's loop backend repeats bit for bit, with and without deterministic algorithms
    for key in ("repeatability", "deterministic"):
        assert report[key]["runs"] == variants and report[key]["bit_identical"] == variants, report[key]
        assert len(report[key]["seconds"]) == 2 and all(s > 0 for s in report[key]["seconds"])
    made = json.loads((tmp_path / "deterministic" / f"{gpu_check.REPEAT}-1.json").read_text())
    assert "--deterministic" in made["provenance"]["command"]
