"""`make bench` in --quick mode: the JSON has every figure, each measured (no speed thresholds), and
the FLOP count its peak fractions rest on is the hand count."""
import json
import subprocess
import sys

import pytest
import torch

from conftest import ROOT


@pytest.mark.slow
def test_quick_bench_writes_consistent_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "experiments.bench", "--quick", "--device", "cpu", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    b = json.loads(out.read_text())
    assert b["quick"] is True
    for key in ("engine_plain_epoch_s", "engine_augmented_epoch_s", "tutorial_plain_epoch_s",
                "tutorial_augmented_epoch_s", "matmul_flops", "train_step_flops"):
        assert b[key] > 0, key                        # every measurement was made
    assert 0 < b["peak_fraction"] <= 1.5              # a step cannot run far above the matmul rate it is held to
    t89 = b["time_to_89"]
    assert len(t89["test_acc"]) == t89["seeds"] == 1 and 0 < t89["mean_test_acc"] <= 1
    # the claim exists only when the accuracy bar is met
    assert (b["time_to_89_seconds"] is None) == (t89["mean_test_acc"] < 0.89)
    assert b["provenance"]["command"].startswith("python -m experiments.bench --quick --device cpu")
    assert set(b["devices"]) == {"cpu"} and b["devices"]["cpu"]["engine_plain_epoch_s"] == b["engine_plain_epoch_s"]


def test_the_step_flop_count_is_the_hand_count():
    """mlp_step_flops, the numerator of every peak fraction, against a count done by hand for a
    784-256-256-10 MLP at batch 256: forward 2*B*K*N per layer; backward 2*B*K*N for the weight
    gradient of every layer and 2*B*K*N for the input gradient of all but the first."""
    from experiments import bench
    forward = 2 * 256 * (784 * 256 + 256 * 256 + 256 * 10)
    weight_grads = forward
    input_grads = 2 * 256 * (256 * 256 + 256 * 10)
    assert bench.mlp_step_flops(256, 256) == forward + weight_grads + input_grads == 310_116_352


@pytest.mark.slow
def test_population_figures_are_consistent(fmnist):
    """The GPU bench's population figures, computed on the CPU on a slice: every one measured."""
    from experiments import bench
    b = bench.population_figures(fmnist.subset(1024, 256), torch.device("cpu"), quick=True, study=False)
    assert b["population_members"] == 4 and b["member_epoch_ms"] > 0
    assert b["bf16_peak_fraction"] > 0 and b["population_step_ms"] > 0   # (a CPU without bf16 units can exceed 1)
    t89 = b["time_to_89_population"]
    assert t89["seeds"] == len(t89["test_acc"]) == 1 and t89["wall_seconds"] > 0
