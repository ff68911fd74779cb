"""The prepared GPU check, tried on the CPU (its own --device cpu mode) on one small experiment:
it must run end to end and write the repeatability figures that issue 17's item 6 asks of a GPU."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from experiments import bench, catalog, gpu_check, lanes, stacked


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
    assert report["memory_cap"]["skipped"].startswith("needs CUDA")   # the CPU has no cap to hit
    made = json.loads((tmp_path / "deterministic" / f"{gpu_check.REPEAT}-1.json").read_text())
    assert "--deterministic" in made["provenance"]["command"]
    prov = report["provenance"]   # the check's own: its command, and a wall time that covers every step
    assert prov["command"].startswith("python -m experiments.gpu_check --device cpu") and prov["device"] == "cpu"
    assert prov["wall_seconds"] >= report["study_seconds"] + sum(report["repeatability"]["seconds"][1:])


def test_the_check_runs_with_the_settings_the_probe_found_fastest(tmp_path, monkeypatch):
    """`make gpu-check` hands the probe's JSON to the check: its `fastest` settings are set for this
    process (stacked's switches) and for the processes it starts (the environment), and recorded;
    an unreadable probe file leaves the defaults and says why."""
    from experiments import stacked
    for name in gpu_check.SETTINGS:
        monkeypatch.delenv(name, raising=False)        # restored after the test, as are the switches
    monkeypatch.setattr(stacked, "CONV", "split")
    monkeypatch.setattr(stacked, "CUDNN_BENCHMARK", False)
    monkeypatch.setattr(stacked, "INPUTS", "host")
    monkeypatch.setattr(stacked, "MATMUL", "ieee")
    probe = tmp_path / "gpu-probe.json"
    probe.write_text(json.dumps({"fastest": {"FMREPORT_CONV": "grouped", "FMREPORT_CUDNN_BENCHMARK": "1",
                                             "FMREPORT_INPUTS": "graph", "FMREPORT_MATMUL": "tf32"}}))
    settings = gpu_check.engine_settings(probe)
    assert (stacked.CONV, stacked.CUDNN_BENCHMARK, stacked.INPUTS, stacked.MATMUL) == ("grouped", True, "graph", "tf32")
    assert {k: settings[k] for k in gpu_check.SETTINGS} == {"FMREPORT_CONV": "grouped", "FMREPORT_CUDNN_BENCHMARK": "1",
                                                            "FMREPORT_INPUTS": "graph", "FMREPORT_MATMUL": "tf32"}
    assert settings["from"].startswith("gpu_probe's fastest") and __import__("os").environ["FMREPORT_INPUTS"] == "graph"
    for name in gpu_check.SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(stacked, "INPUTS", "host")
    monkeypatch.setattr(stacked, "MATMUL", "ieee")
    probe.write_text("{not json")
    settings = gpu_check.engine_settings(probe)
    assert settings["FMREPORT_INPUTS"] == "host" and settings["from"].startswith("defaults (the probe file")
    assert settings["FMREPORT_MATMUL"] == "ieee"
    probe.write_text(json.dumps({"fastest": {"FMREPORT_MATMUL": "fp16"}}))   # a value the engine does not know
    with pytest.raises(ValueError, match="FMREPORT_MATMUL='fp16' is not one of ieee, tf32"):
        gpu_check.engine_settings(probe)


def test_the_memory_cap_step_records_splits_refusals_and_failures(tmp_path, monkeypatch):
    """The step's bookkeeping, with CUDA's memory calls faked: the caps it sets (and lifts), a run
    that split, the one-line refusal of a run too large alone, and an engine failure (exit 1)."""
    import argparse
    import types

    import torch

    from experiments import population, runner
    fractions = []
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: types.SimpleNamespace(total_memory=1000))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 100)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)

    def set_fraction(f, device):   # as torch does: a device without an index is refused (it was, on an H200)
        if not isinstance(device, int) and torch.device(device).index is None:
            raise ValueError(f"Expected a torch.device with a specified index or an integer, but got:{device}")
        fractions.append(f)
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", set_fraction)

    def result(populations, acc):
        run = {"history": [{"train_loss": 0.5, "seconds": 1.0}], "final": {"test_acc": acc}}
        return {"experiment": gpu_check.REPEAT, "variants": [{"runs": [run]}],
                "provenance": {"populations": populations}}
    split_run = result([{"size": 2, "split_into": [1, 1]}, {"size": 1}], 0.9)   # as runner records a split
    outcomes = iter([split_run, population.DeviceMemoryError("one run alone (2 hidden, seed 0) does not fit")])

    def run_experiment(*args, **kwargs):   # the next outcome: a result, or the error it raises
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome
    monkeypatch.setattr(runner, "run_experiment", run_experiment)
    args = argparse.Namespace(device="cuda", out=tmp_path, seeds=1, quick=True, backend="batched")
    report = gpu_check.memory_cap(args, result([{"size": 2}], 0.9), peak_bytes=900)
    assert fractions == [0.5, 1.0, 0.3, 1.0]     # held 100 + 0.5 * 800 and + 0.25 * 800, of 1000; lifted after each
    split, refused = report["tries"]
    assert split["populations"] == [1, 1, 1] and split["against_uncapped"]["bit_identical"] == 1
    assert refused["does_not_fit"].startswith("one run alone") and "error" not in refused

    outcomes = iter([RuntimeError("operation not permitted when stream is capturing")] * 2)
    report = gpu_check.memory_cap(args, result([{"size": 2}], 0.9), peak_bytes=900)
    assert all(t["error"].startswith("RuntimeError: operation not permitted") for t in report["tries"])


@pytest.mark.slow
def test_the_gpu_probe_runs_on_the_cpu(tmp_path):
    """The probe that chooses the CNN's convolution setting on a GPU, tried on the CPU in quick mode:
    every setting timed, every experiment's syncs listed (none on the CPU), a fastest setting named."""
    from experiments import gpu_probe
    assert gpu_probe.main(["--device", "cpu", "--quick", "--out", str(tmp_path / "probe.json")]) == 0
    report = json.loads((tmp_path / "probe.json").read_text())
    assert {(r["conv"], r["cudnn_benchmark"]) for r in report["conv"]} == set(gpu_probe.SETTINGS)
    assert all(r["step_ms"] > 0 for r in report["conv"])
    assert set(report["host_syncs"]) == {e.name for e in catalog.EXPERIMENTS.values() if not e.optional}
    assert all(v["steps"] == {} and v["evaluation"] == {} for v in report["host_syncs"].values())
    assert set(report["step_ms"]) == set(report["host_syncs"])
    for ms in report["step_ms"].values():   # where a step's time goes, per experiment
        assert ms["members"] >= 1 and all(ms[k] > 0 for k in ("inputs", "step_on_ready_inputs", "inputs_and_step"))
    assert report["fastest"]["FMREPORT_CONV"] in ("grouped", "split", "unfold") and report["wall_seconds"] > 0
    parts = report["step_parts"]   # what a step's kernels do: its parts, FLOPs and their rate
    assert set(parts) == set(report["host_syncs"])
    assert all(r["forward_ms"] > 0 and r["forward_backward_ms"] > 0 and r["step_ms"] > 0 and r["host_loop_ms"] > 0
               for r in parts.values())
    assert not any("step_ms_tf32" in r or "graph_loop_ms" in r for r in parts.values())   # CUDA only
    assert report["fastest"]["FMREPORT_INPUTS"] == "host" and report["fastest"]["FMREPORT_MATMUL"] == "ieee"
    steps_per_epoch = 2048 // 256   # the quick subset's
    assert parts["depth"]["study_steps"] == 4 * 10 * steps_per_epoch                     # 4 depths, 10 epochs each
    assert parts["regularization_long"]["study_steps"] == 40 * steps_per_epoch          # one population, 40 epochs
    reg = parts["regularization"]   # one seed of each of the 10 variants, 2x256: the bench's count per member
    assert reg["members"] == 10 and reg["flops_per_step"] == 10 * bench.mlp_step_flops(256, 256, 2)
    assert reg["tflops_per_second"] == pytest.approx(reg["flops_per_step"] / reg["step_ms"] / 1e9)
    profiles = report["profiles"]   # each first population profiled through one epoch and its finish
    assert set(profiles) == set(report["host_syncs"])
    for prof in profiles.values():
        assert prof["steps"] == 2 and set(prof["phases"]) == set(stacked.PHASES) - {"steps.capture"}   # no graphs
        phases = prof["phases"]
        assert all(r["host_ms"] > 0 and r["device_ms"] == 0 for r in phases.values())   # the CPU: no device
        assert phases["finish.evaluate"]["host_ms"] < phases["finish"]["host_ms"]          # a part within its phase
        for listed in (prof["step_kernels"], prof["kernels"]):
            assert 0 < len(listed) <= gpu_probe.TOP and all(k["calls"] >= 1 and k["ms"] > 0 for k in listed)
        assert not any(k["name"] == "aten::histogram" for k in prof["step_kernels"])   # the steps' alone
        assert [k["ms"] for k in prof["host"]] == sorted((k["ms"] for k in prof["host"]), reverse=True)
        assert not any(k["name"].startswith("fmreport.") for k in prof["step_kernels"] + prof["kernels"] + prof["host"])
    assert any(k["name"] == "aten::histogram" for k in profiles["regularization"]["host"])   # run_record's, per member


def test_the_probe_names_graph_inputs_only_where_every_experiment_timed_them_faster():
    from experiments import gpu_probe
    fast = {"a": {"host_loop_ms": 2.0, "graph_loop_ms": 1.0}, "b": {"host_loop_ms": 1.0, "graph_loop_ms": 1.5}}
    assert gpu_probe.faster_inputs(fast) == "graph"                                     # 2.5 ms against 3.0
    assert gpu_probe.faster_inputs({**fast, "b": {"host_loop_ms": 1.0, "graph_loop_ms": 2.5}}) == "host"
    assert gpu_probe.faster_inputs({**fast, "c": {"error": "RuntimeError: ..."}}) == "host"   # one not timed
    assert gpu_probe.faster_inputs({**fast, "c": {"host_loop_ms": 9.0, "graph_loop_ms": 0.1,
                                                  "graph_error": "capture failed"}}) == "host"
    assert gpu_probe.faster_inputs({"a": {"host_loop_ms": 1.0}}) == "host"            # the CPU: no graphs
    # weighted by the steps each experiment trains in the study
    weighted = {"a": {**fast["a"], "study_steps": 4}, "b": {**fast["b"], "study_steps": 1}}
    assert gpu_probe.faster_inputs(weighted) == "graph"                       # 4 x 1.0 + 1.5 against 4 x 2.0 + 1.0
    weighted["b"]["study_steps"] = 20                                         # 4 + 20 x 1.5 against 8 + 20 x 1.0,
    assert gpu_probe.faster_inputs(weighted) == "host"                        # where unweighted 2.5 beat 3.0


def test_the_probe_names_tf32_only_for_a_clear_gain_timed_on_every_fp32_population():
    from experiments import gpu_probe
    parts = {"a": {"precision": "fp32", "step_ms": 3.0, "step_ms_tf32": 1.0},
             "b": {"precision": "fp32", "step_ms": 1.0, "step_ms_tf32": 1.0},
             "bf": {"precision": "bf16", "step_ms": 9.0}}                    # not an fp32 population: not counted
    assert gpu_probe.faster_matmul(parts) == "tf32"                          # 2.0 ms against 4.0
    assert gpu_probe.faster_matmul({**parts, "a": {**parts["a"], "step_ms_tf32": 2.7}}) == "ieee"   # 3.7 > 0.9 x 4.0
    assert gpu_probe.faster_matmul({**parts, "c": {"precision": "fp32", "step_ms": 1.0}}) == "ieee"  # one not timed
    assert gpu_probe.faster_matmul({**parts, "c": {"error": "RuntimeError: ..."}}) == "ieee"        # one not probed
    assert gpu_probe.faster_matmul({"bf": parts["bf"]}) == "ieee"            # nothing in fp32
    # b trains 10 times a's steps: TF32 2 + 10 x 1 = 12 against 0.9 x (3 + 10 x 1) = 11.7 (unweighted it
    # would be chosen: 3 against 0.9 x 4)
    heavy = {**parts, "a": {**parts["a"], "step_ms_tf32": 2.0}, "b": {**parts["b"], "study_steps": 10}}
    assert gpu_probe.faster_matmul(heavy) == "ieee"
    assert gpu_probe.faster_matmul({**heavy, "b": {**heavy["b"], "step_ms_tf32": 0.8}}) == "tf32"   # 10 <= 11.7


def test_a_failing_step_parts_probe_is_recorded_and_the_others_still_run(monkeypatch):
    """The device run has one try: a probe that fails for one experiment must not lose the others."""
    from experiments import gpu_probe

    def parts(exp, *args):
        if exp.name == "cnn":
            raise RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported")
        return {"host_loop_ms": 1.0}
    monkeypatch.setattr(gpu_probe, "_parts_of", parts)
    kept, saves = {}, []                  # each row saved as it is done: a time limit keeps the rows done
    found = gpu_probe.step_parts(None, None, True, 1, kept, lambda: saves.append(list(kept)))
    assert found is kept and saves == [list(kept)[:i] for i in range(1, len(kept) + 1)]
    assert found.pop("cnn") == {"error": "RuntimeError: CUDA error: out of memory"}
    assert found and all(row == {"host_loop_ms": 1.0} for row in found.values())


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the refusal where there is no CUDA")
def test_the_gpu_probe_without_cuda_exits_1_with_one_line(capsys):
    from experiments import gpu_probe
    assert gpu_probe.main(["--device", "cuda"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CUDA device is available here" in err[0]


def test_a_session_step_that_runs_out_of_time_is_interrupted_and_says_so(tmp_path):
    """gpu_session's steps: an exit code when a step ends in time; None, with SIGINT, when it does
    not (a cut-off check keeps what it saved), and the log says which. Also where this process
    ignores SIGINT, as one started in the background by a shell does (CI ran it so once)."""
    import signal
    from experiments import gpu_session
    ignored = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with open(tmp_path / "log", "w") as log:
            assert gpu_session.step("quick", ["timeit", "-n", "1", "-r", "1", "pass"], 60, log) == 0
            started = time.perf_counter()
            assert gpu_session.step("slow", ["timeit", "-n", "1", "-r", "1", "import time; time.sleep(60)"], 1,
                                    log) is None
            assert time.perf_counter() - started < gpu_session.GRACE     # SIGINT ended it; no kill was needed
    finally:
        signal.signal(signal.SIGINT, ignored)
    text = (tmp_path / "log").read_text()
    assert "===== quick: exit 0" in text and "===== slow: out of time" in text and "KeyboardInterrupt" in text


def test_a_session_summary_names_what_was_not_written(tmp_path):
    from experiments import gpu_session
    (tmp_path / "gpu-check.json").write_text(json.dumps(
        {"settings": {"FMREPORT_CONV": "split"}, "study_seconds": 51.5,
         "experiments": {"depth": {"seconds": 6.0, "phase_seconds": {"steps": 4.123}}, "cnn": {"error": "boom"}}}))
    lines = gpu_session.summary(tmp_path)
    assert lines[0] == "gpu-probe.json: not written" and "gpu-check.json study_seconds: 51.5" in lines
    (tmp_path / "gpu-probe.json").write_text(json.dumps(
        {"fastest": {"FMREPORT_CONV": "split"}, "profiles": {"cnn": {"error": "RuntimeError: boom"}, "depth": {
            "members": 10, "steps": 20, "phases": {"steps": {"host_ms": 12.4, "device_ms": 9.6}},
            "kernels": [{"name": "ampere_sgemm_128x64_nn", "calls": 60, "ms": 3.25}], "host": [],
            "step_kernels": [{"name": "fill", "calls": 40, "ms": 0.5}]}}}))
    lines = gpu_session.summary(tmp_path)
    assert "  cnn profile: RuntimeError: boom" in lines
    assert ("  depth profile (10 members, 20 steps): steps 12/10 ms (host/device); "
            "most: ampere_sgemm_128x64_nn 3.2 ms x60; of the steps alone: fill 0.5 ms x40") in lines
    assert '  depth: 6.0 s {"steps": 4.12}' in lines and "  cnn: boom" in lines


def test_lanes_run_jobs_side_by_side_and_yield_each_value_or_error():
    """lanes.run: with 2 lanes two jobs are under way at once (each waits at a barrier for the other);
    a job's exception is yielded, not raised, and the others still end; 1 lane runs them in order
    in this thread."""
    import threading
    from experiments import lanes
    cpu = __import__("torch").device("cpu")
    barrier = threading.Barrier(2, timeout=30)

    def fails():
        raise RuntimeError("boom")
    jobs = [("a", lambda: barrier.wait() is not None and "a"), ("b", lambda: barrier.wait() is not None and "b"),
            ("c", fails)]
    ended = {name: (value, err) for name, value, err in lanes.run(jobs, 2, cpu)}
    assert ended["a"] == ("a", None) and ended["b"] == ("b", None)
    assert ended["c"][0] is None and str(ended["c"][1]) == "boom"
    here = threading.get_ident()
    in_order = list(lanes.run([(n, lambda n=n: (n, threading.get_ident())) for n in "xyz"], 1, cpu))
    assert [(name, value) for name, value, _ in in_order] == [(n, (n, here)) for n in "xyz"]
    with pytest.raises(ValueError, match="lanes=0"):
        list(lanes.run(jobs, 0, cpu))
    assert lanes.longest_first(["p", "q", "r", "s"], {"q": 1.0, "s": 9.0}) == ["s", "q", "p", "r"]


@pytest.mark.slow
def test_the_study_on_three_lanes_gives_the_results_of_one_lane(tmp_path, monkeypatch):
    """gpu_check --lanes 3 on the CPU (batched backend, smoke size): the longest experiment first by
    the committed card run's times, the report in the catalog's order, and every result file as one
    lane makes it, bit for bit but for wall times; the repeatability check runs its experiment
    alone twice and compares the study's run in lanes with the first. The loop backend is refused
    in lanes."""
    names = (gpu_check.REPEAT, "batchnorm", "l1_proximal")
    monkeypatch.setattr(gpu_check, "EXPERIMENTS", {n: catalog.EXPERIMENTS[n] for n in names})
    monkeypatch.setattr(lanes, "expected_seconds", lambda: {"l1_proximal": 9.0, "batchnorm": 5.0})
    args = ["--device", "cpu", "--quick", "--seeds", "1", "--skip-bench"]
    assert gpu_check.main([*args, "--skip-checks", "--backend", "batched", "--lanes", "1", "--out", str(tmp_path / "1")]) == 0
    assert gpu_check.main([*args, "--backend", "batched", "--lanes", "3", "--out", str(tmp_path / "3")]) == 0
    report = json.loads((tmp_path / "3" / "gpu-check.json").read_text())
    assert report["lanes"] == 3 and report["order"] == ["l1_proximal", "batchnorm", gpu_check.REPEAT]
    assert list(report["experiments"]) == list(names)
    variants = len(catalog.EXPERIMENTS[gpu_check.REPEAT].variants)
    for key in ("lanes_against_one_lane", "repeatability"):   # the CPU repeats bit for bit, in lanes or not
        assert report[key]["runs"] == variants and report[key]["bit_identical"] == variants, report[key]
    assert (tmp_path / "3" / "rerun" / f"{gpu_check.REPEAT}-first.json").exists()

    def without_times(x):
        if isinstance(x, dict):
            return {k: without_times(v) for k, v in x.items() if k not in ("seconds", "provenance")}
        return [without_times(v) for v in x] if isinstance(x, list) else x
    for name in names:
        one, three = (json.loads((tmp_path / n / "results" / f"{name}.json").read_text()) for n in "13")
        assert without_times(one) == without_times(three), name
    assert gpu_check.main([*args, "--backend", "loop", "--lanes", "2", "--out", str(tmp_path / "loop")]) == 2


def test_lanes_refuse_unfold_convolutions_that_would_switch_the_shared_tf32_setting(monkeypatch):
    """FMREPORT_CONV=unfold switches torch's process-wide TF32 setting to cuDNN's precision for each
    convolution: in lanes only where FMREPORT_MATMUL already is that precision."""
    torch = __import__("torch")
    cuda = torch.device("cuda")   # a device object only: nothing runs
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    cpu = torch.device("cpu")
    for conv, matmul, shared in (("unfold", "ieee", False), ("unfold", "tf32", True), ("split", "ieee", True)):
        monkeypatch.setattr(stacked, "CONV", conv)
        monkeypatch.setattr(stacked, "MATMUL", matmul)
        refused = lanes.refusal(2, "batched", cuda)
        assert (refused is None) is shared, (conv, matmul)
        assert shared or "FMREPORT_CONV=unfold and FMREPORT_MATMUL=ieee" in refused
        assert lanes.refusal(2, "batched", cpu) is None and lanes.refusal(1, "batched", cuda) is None
    assert "needs the batched backend" in lanes.refusal(2, "loop", cpu) and lanes.refusal(1, "loop", cpu) is None


def test_lanes_start_no_job_once_their_caller_stops_and_never_hold_the_process():
    """An interrupted caller (the check at its deadline) closes lanes.run: the jobs under way end,
    no lane takes another, and the lanes are daemon threads, so the process need not wait for them."""
    import threading
    from experiments import lanes
    started, release = [], {n: threading.Event() for n in "abcdef"}

    def job(name):
        started.append(name)
        release[name].wait(10)
        return name
    runs = lanes.run([(n, lambda n=n: job(n)) for n in "abcdef"], 2, __import__("torch").device("cpu"))
    release["a"].set()                    # a ends; its lane may take c before the caller stops; b is under way
    assert next(runs) == ("a", "a", None)
    assert all(t.daemon for t in threading.enumerate() if t.name.startswith("lane-"))
    runs.close()                          # the caller stops
    for event in release.values():
        event.set()
    time.sleep(0.5)
    assert sorted(started) in (["a", "b"], ["a", "b", "c"]), started   # d, e and f never start


@pytest.mark.parametrize("outcome", ["lanes end", "lanes fail", "tests fail", "lanes tests fail", "late"])
def test_a_session_runs_the_study_in_lanes_then_in_one_or_the_check_again_in_one(tmp_path, monkeypatch, outcome):
    """gpu_session's steps after the CUDA-graph and lanes tests (each step stood in for): where both
    pass, the check's study runs in LANES lanes with the probe's choices, then the same study one
    experiment at a time (its JSON comes back as gpu-check-one-lane.json); where the study in lanes
    does not end, the whole check again in one lane (the failed one's JSON kept as
    gpu-check-lanes.json); where the CUDA-graph tests fail, one lane and no probe choices; where only
    the lanes tests fail, one lane with the probe's choices; where the check in lanes ends with less
    than FOLLOW_UP_LEAST seconds left, nothing after it. Each step is given the time left less the
    GRACE it may take to stop."""
    from types import SimpleNamespace
    from experiments import gpu_session
    scratch = tmp_path / "scratch"
    monkeypatch.setattr(gpu_session, "SCRATCH", scratch)
    clock = [1000.0]   # the session's clock: a step takes no time but where said
    monkeypatch.setattr(gpu_session, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    ran, given = [], {}

    def step(name, argv, seconds, log):
        ran.append((name, argv))
        given[name] = seconds
        if name == "check" and outcome == "late":
            clock[0] += seconds - gpu_session.FOLLOW_UP_LEAST + 1   # leaves 59 s for a next step
        if name == "probe":
            Path(argv[argv.index("--out") + 1]).write_text(json.dumps({"fastest": {}}))
        if name == "CUDA-graph tests":
            return 1 if outcome == "tests fail" else 0
        if name == "lanes tests":
            return 1 if outcome == "lanes tests fail" else 0
        if "experiments.gpu_check" in argv:
            out = Path(argv[argv.index("--out") + 1])
            out.mkdir(parents=True, exist_ok=True)
            lanes = int(argv[argv.index("--lanes") + 1])
            ended = not (outcome == "lanes fail" and lanes > 1)
            (out / "gpu-check.json").write_text(json.dumps({"lanes": lanes, "experiments": {},
                                                            **({"study_seconds": 50.0 + lanes} if ended else {})}))
            return 0 if ended else 1
        return 0
    monkeypatch.setattr(gpu_session, "step", step)
    (scratch / "one-lane").mkdir(parents=True)
    (scratch / "one-lane" / "gpu-check.json").write_text("{}")   # an earlier session's: never copied back
    gpu_session.main(["--copy-to", str(tmp_path / "out"), "--device", "cuda"])
    checks = [(name, argv[argv.index("--lanes") + 1], "--skip-bench" in argv) for name, argv in ran
              if "experiments.gpu_check" in argv]
    back = sorted(p.name for p in (tmp_path / "out").iterdir())
    limit = 560 - gpu_session.COPY_RESERVE - gpu_session.GRACE
    assert given["check"] == limit
    if outcome == "late":
        assert checks == [("check", str(gpu_session.LANES), False)]
        assert "no step after the check: 59 s left, under 60 s" in (scratch / "session.log").read_text()
    elif outcome == "lanes end":
        assert checks == [("check", str(gpu_session.LANES), False), ("study, one lane", "1", True)]
        assert given["study, one lane"] == limit
        assert json.loads((tmp_path / "out" / "gpu-check-one-lane.json").read_text())["study_seconds"] == 51.0
    elif outcome == "lanes fail":
        assert checks == [("check", str(gpu_session.LANES), False), ("check, one lane", "1", False)]
        assert json.loads((tmp_path / "out" / "gpu-check.json").read_text())["study_seconds"] == 51.0
        assert "study_seconds" not in json.loads((tmp_path / "out" / "gpu-check-lanes.json").read_text())
    elif outcome == "tests fail":
        assert checks == [("check", "1", False)] and "--probe" not in ran[-1][1]
    else:
        assert checks == [("check", "1", False)] and "--probe" in ran[-1][1]
    assert ("gpu-check-one-lane.json" in back) == (outcome == "lanes end")
    assert ("gpu-check-lanes.json" in back) == (outcome == "lanes fail")
