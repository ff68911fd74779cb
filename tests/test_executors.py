"""`--executor ray`: the same sweep as one Ray task per (variant, seed) on a local Ray instance
gives the same result file as the serial run, and without Ray the flag fails in one line."""
import json
import sys

import pytest

from conftest import run_cli
from experiments import executors


def histories(path):
    """Every run's per-epoch history without wall-clock seconds, and its final metrics."""
    result = json.loads(path.read_text())
    return [(v["name"], r["seed"], [{k: x for k, x in h.items() if k != "seconds"} for h in r["history"]],
             {k: x for k, x in r["final"].items() if k != "seconds"}) for v in result["variants"] for r in v["runs"]]


@pytest.mark.slow
def test_ray_sweep_equals_the_serial_run(tmp_path):
    pytest.importorskip("ray")
    args = ["run", "depth", "--quick", "--seeds", "2", "--epochs", "1", "--threads", "1"]
    serial = run_cli(*args, "--out", str(tmp_path / "serial.json"))
    assert serial.returncode == 0, serial.stderr
    ray = run_cli(*args, "--executor", "ray", "--out", str(tmp_path / "ray.json"), timeout=600)
    assert ray.returncode == 0, ray.stderr
    assert "ray: 8 task(s) of 1 CPU(s) each" in ray.stdout
    assert histories(tmp_path / "ray.json") == histories(tmp_path / "serial.json")
    result = json.loads((tmp_path / "ray.json").read_text())
    assert result["provenance"]["executor"] == "ray" and result["provenance"]["torch_threads"] == 1


def test_without_ray_the_flag_is_a_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)          # import ray -> ImportError
    with pytest.raises(ValueError, match=r"pip install -e '\.\[cluster\]'"):
        executors.require_ray()
