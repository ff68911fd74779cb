"""The command line as a user meets it: exit codes, one-line errors, a real --quick run."""
import hashlib
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, run_cli
from experiments import results


@pytest.mark.parametrize("args, fragment", [
    (["run", "nosuch"], "unknown experiment 'nosuch'"),
    (["run", "depth", "--epochs", "-1"], "integer >= 1"),
    (["run", "depth", "--epochs", "abc"], "not a whole number"),
    (["run", "depth", "--seeds", "0"], "integer >= 1"),
    (["run", "depth", "--device", "tpu"], "unknown device 'tpu'"),
    (["frobnicate"], "invalid choice"),
    (["frobnicate"], "(see `python -m experiments --help`)"),
    (["run", "depth", "--seeds", "0"], "(see `python -m experiments run --help`)"),
])
def test_bad_arguments_exit_2_with_one_line(args, fragment):
    proc = run_cli(*args)
    assert proc.returncode == 2
    assert fragment in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("request_, env, code", [(["--device", "cuda"], {}, 2),
                                                  (["--executor", "ray"], {"RAY_ADDRESS": "127.0.0.1:1"}, 1)])
def test_impossible_requests_are_refused_before_torch_is_imported(tmp_path, request_, env, code):
    """No GPU driver, or no Ray cluster at $RAY_ADDRESS: a one-line error in a fraction of a second,
    not after the seconds it takes to import torch."""
    from experiments import planning
    if "cuda" in request_ and planning.gpu_driver_loaded():
        pytest.skip("this machine has a GPU driver")
    script = ("import sys; from experiments.__main__ import main; "
              f"rc = main(['run', 'depth', '--quick', *{request_!r}, '--out', {str(tmp_path / 'x.json')!r}]); "
              "print(rc, 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=60)
    assert proc.stdout.split() == [str(code), "False"], proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.json").exists()
    assert ("no CUDA device" if code == 2 else "no Ray cluster answers") in proc.stderr


def test_list_names_every_experiment_first():
    from experiments.catalog import EXPERIMENTS
    proc = run_cli("list")
    assert proc.returncode == 0
    assert [line.split()[0] for line in proc.stdout.splitlines()] == list(EXPERIMENTS)


def test_list_exits_2_naming_each_broken_catalog_entry(monkeypatch, capsys):
    """A typo in the catalog is found by `experiments list` (and by the report, and by any run of
    that experiment), while the other entries still list and run."""
    from experiments import __main__ as cli
    from experiments.catalog import EXPERIMENTS, Experiment
    broken = Experiment(name="smoothing", description="label smoothing", control="none",
                        variants={"none": {}, "0.1": {"label_smothing": 0.1}})
    monkeypatch.setitem(EXPERIMENTS, "smoothing", broken)
    assert cli.main(["list"]) == 2
    out, err = capsys.readouterr()
    assert [line.split()[0] for line in out.splitlines()] == list(EXPERIMENTS)
    assert err.splitlines() == ["error: experiments/catalog.py: experiment 'smoothing', variant '0.1': unknown "
                                "RunSpec field(s) label_smothing (did you mean label_smoothing?)"]
    assert cli.main(["run", "smoothing", "--quick"]) == 2
    assert "variant '0.1'" in capsys.readouterr().err


@pytest.mark.parametrize("request_", [["--seeds", "3"], ["--epochs", "2"], ["--set", "lr=0.01"]])
def test_other_seeds_epochs_settings_or_backend_never_replace_a_current_result(tmp_path, request_):
    """make results/NAME.json SEEDS=3 once overwrote a current 10-seed result: now it exits 2 before
    any work, saying how to go on, and the file is unchanged. The catalog's own request still runs."""
    out = tmp_path / "early_stopping.json"
    out.write_bytes((ROOT / "results" / "early_stopping.json").read_bytes())
    before = out.read_bytes()
    proc = run_cli("run", "early_stopping", *request_, "--out", str(out), "--if-stale")
    assert proc.returncode == 2 and out.read_bytes() == before
    assert f"{out} holds early_stopping's current result, as the catalog asks it; " in proc.stderr
    assert " ".join(request_) in proc.stderr and "QUICK=1" in proc.stderr
    same = run_cli("run", "early_stopping", "--out", str(out), "--if-stale")
    assert same.returncode == 0 and "is up to date" in same.stdout
    from experiments import planning
    if not planning.gpu_driver_loaded():   # another backend (how, not what) passes; here CUDA's refusal follows
        how = run_cli("run", "early_stopping", "--backend", "batched", "--device", "cuda", "--out", str(out), "--if-stale")
        assert how.returncode == 2 and "no CUDA device" in how.stderr and "current result" not in how.stderr


def test_quick_refuses_to_write_into_results():
    proc = run_cli("run", "depth", "--quick", "--out", str(ROOT / "results" / "depth.json"))
    assert proc.returncode == 2 and "never writes into results/" in proc.stderr


@pytest.mark.slow
def test_corrupted_data_exits_1_naming_file_and_digests(tmp_path):
    from experiments import data
    for name in data.SHA256:
        (tmp_path / name).symlink_to(data.RAW_DIR / name)
    bad = tmp_path / "t10k-labels-idx1-ubyte"
    bad.unlink()
    bad.write_bytes((data.RAW_DIR / "t10k-labels-idx1-ubyte").read_bytes()[:-10])
    env = {**os.environ, data.ENV_VAR: str(tmp_path)}
    proc = run_cli("run", "depth", "--quick", "--out", str(tmp_path / "r.json"), env=env)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    actual = hashlib.sha256(bad.read_bytes()).hexdigest()
    assert str(bad) in proc.stderr and data.SHA256["t10k-labels-idx1-ubyte"] in proc.stderr and actual in proc.stderr
    assert not (tmp_path / "r.json").exists()


@pytest.mark.slow
def test_quick_depth_run_writes_a_valid_result_and_is_then_fresh(tmp_path):
    out = tmp_path / "depth.json"
    proc = run_cli("run", "depth", "--quick", "--seeds", "2", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    result = results.load(out)
    assert [v["name"] for v in result["variants"]] == ["1 hidden", "2 hidden", "3 hidden", "4 hidden"]
    for v in result["variants"]:
        assert [r["seed"] for r in v["runs"]] == [0, 1] and v["summary"]["test_acc"]["n"] == 2
        assert v["summary"]["test_acc"]["mean"] > 0.5            # real data: far above chance (0.1)
    prov = result["provenance"]
    assert prov["device"] == "cpu" and prov["packages"]["torch"] and prov["wall_seconds"] > 0
    before = out.read_bytes()
    again = run_cli("run", "depth", "--quick", "--seeds", "2", "--out", str(out), "--if-stale")
    assert again.returncode == 0 and "up to date" in again.stdout and out.read_bytes() == before


@pytest.mark.parametrize("args, fragment", [
    (["depth", "dropout", "--out", "x.json"], "--out names one result file: give one experiment, or drop --out"),
    (["depth", "dropout", "--lanes", "2", "--executor", "ray"], "--lanes and --executor ray"),
    (["depth", "dropout", "--lanes", "2", "--device", "cpu", "--quick"], "--lanes 2 needs the batched backend"),
    (["depth", "--lanes", "0"], "integer >= 1"),
])
def test_several_experiments_and_lanes_refuse_what_cannot_be_done_in_one_line(args, fragment, tmp_path):
    proc = run_cli("run", *(str(tmp_path / a) if a == "x.json" else a for a in args))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert fragment in proc.stderr and not (tmp_path / "x.json").exists()


def test_an_engine_switch_the_engine_does_not_know_exits_2_before_any_work(tmp_path):
    """FMREPORT_CONV, FMREPORT_INPUTS, FMREPORT_MATMUL and FMREPORT_CUDNN_BENCHMARK come from the
    environment: a typo there is named in one line, not silently taken as another setting."""
    proc = run_cli("run", "depth", "--quick", "--device", "cpu", "--out", str(tmp_path / "x.json"),
                   env={**os.environ, "FMREPORT_MATMUL": "fp16", "FMREPORT_CONV": "Split",
                        "FMREPORT_CUDNN_BENCHMARK": "yes"})
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "FMREPORT_CONV='Split' is not one of split, grouped, unfold" in proc.stderr
    assert "FMREPORT_MATMUL='fp16' is not one of ieee, tf32" in proc.stderr
    assert "FMREPORT_CUDNN_BENCHMARK='yes' is not one of 0, 1" in proc.stderr
    assert not (tmp_path / "x.json").exists()


def test_a_driver_without_a_usable_cuda_device_is_still_refused(monkeypatch):
    """Where a GPU driver is loaded but torch finds no device, the refusal comes from torch's answer."""
    import torch
    from experiments import runner
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="no CUDA device is available here"):
        runner.pick_device("cuda")
    assert runner.pick_device("auto").type == "cpu"


@pytest.mark.slow
def test_in_lanes_a_failure_names_its_experiment_and_what_cannot_be_stacked_trains_alone_after(tmp_path, monkeypatch,
                                                                                              capsys):
    """`run A B C --lanes 2`: the stackable experiments train in lane threads, one the batched
    backend cannot stack (here batchnorm, made unstackable) alone in this thread after them; one
    that fails is named, the others still finish, and the exit code is 1."""
    import threading
    from experiments import __main__ as cli
    from experiments import data, lanes, planning, population, runner
    monkeypatch.setattr(planning, "default_out", lambda name, quick: tmp_path / f"{name}.json")
    monkeypatch.setattr(lanes, "expected_seconds", lambda: {})
    monkeypatch.setattr(population, "batchable", lambda spec: spec.optimizer != "sgd")   # batchnorm's runs use SGD
    ran, real = [], runner.run_experiment

    def run_experiment(exp, *args, **kwargs):
        ran.append((exp.name, threading.current_thread().name))
        if exp.name == "l1_proximal":
            raise data.DataError("l1_proximal's data went missing")
        return real(exp, *args, **kwargs)
    monkeypatch.setattr(runner, "run_experiment", run_experiment)
    code = cli.main(["run", "early_stopping", "batchnorm", "l1_proximal", "--quick", "--seeds", "1", "--device", "cpu",
                     "--backend", "batched", "--lanes", "2"])
    assert code == 1
    assert "error: l1_proximal: l1_proximal's data went missing" in capsys.readouterr().err
    assert ran[-1] == ("batchnorm", threading.current_thread().name)          # alone, after the lanes
    assert sorted(name for name, thread in ran[:-1] if thread.startswith("lane-")) == ["early_stopping", "l1_proximal"]
    assert results.load(tmp_path / "early_stopping.json") and results.load(tmp_path / "batchnorm.json")
    assert not (tmp_path / "l1_proximal.json").exists()


def test_status_says_what_make_all_would_do_about_each_result_and_why(tmp_path, monkeypatch):
    """`experiments status`: current, stale with why (the catalog entry's specs, or which engine files
    changed since the commit that last committed the result), missing, or invalid; without torch."""
    import dataclasses
    from experiments import planning
    from experiments.catalog import EXPERIMENTS
    proc = run_cli("status")
    assert proc.returncode == 0
    lines = {line.split()[0]: line.split(None, 2)[1:] for line in proc.stdout.splitlines()}
    assert list(lines) == list(EXPERIMENTS) and lines["transfer"][0] == "missing"
    (tmp_path / "depth.json").write_text("{")
    assert planning.status(EXPERIMENTS["depth"], tmp_path / "depth.json")[0] == "invalid"
    assert planning.status(EXPERIMENTS["depth"], ROOT / "results" / "none.json")[:2] == \
        ("missing", "`make results/none.json` trains it")
    if any(state != "current" for name, (state, *_) in lines.items() if name != "transfer"):
        pytest.skip("a committed result is stale in this checkout (tests/test_committed.py says so)")
    assert lines["depth"] == ["current", "10 seeds"]
    depth = ROOT / "results" / "depth.json"
    fewer_epochs = dataclasses.replace(EXPERIMENTS["depth"], base={**EXPERIMENTS["depth"].base, "epochs": 3})
    state, why, _ = planning.status(fewer_epochs, depth)
    assert state == "stale" and "its specs or seeds are not the catalog entry's now" in why
    real = results.code_digest
    monkeypatch.setattr(results, "code_digest", lambda name: "changed" if name == "train.py" else real(name))
    state, why, _ = planning.status(EXPERIMENTS["depth"], depth)
    assert state == "stale" and f"(train.py since {results.git_log_last(depth)[:10]})" in why
    assert "restamp results/depth.json" in why


def test_a_run_says_why_it_trains_a_stale_result_again(tmp_path, monkeypatch, capsys):
    from experiments import __main__ as cli
    stale = json.loads((ROOT / "results" / "early_stopping.json").read_text())
    stale["fingerprint"] = "f" * 64                    # made by other engine code
    (tmp_path / "es.json").write_text(json.dumps(stale))
    trained = []
    monkeypatch.setattr(cli, "_run", lambda args, argv, todo: trained.extend(todo) or 0)   # no training here
    assert cli.main(["run", "early_stopping", "--out", str(tmp_path / "es.json"), "--if-stale"]) == 0
    assert f"{tmp_path / 'es.json'} is stale: the engine's code changed; training it again" in capsys.readouterr().out
    assert [exp.name for exp, _, _ in trained] == ["early_stopping"]
