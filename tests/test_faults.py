"""Fault injection: kill -9, Ctrl-C, SIGTERM, bad data, bad configuration, divergence, bad result
files, a read-only output folder.  Each test injects the fault for real (subprocesses, signals,
corrupted files) and checks that nothing computed is lost and the message says what to do."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, run_cli
from experiments import results, runner
from experiments.catalog import EXPERIMENTS

SLOW_QUICK = ["run", "depth", "--quick", "--epochs", "10", "--seeds", "3"]   # ~0.5 s per run


def interruptible():
    """Ctrl-C as in a terminal: a shell that runs pytest in the background (`make test &`) makes
    its children ignore SIGINT, and a run started from there would rightly ignore it too."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(args, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "experiments", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=interruptible)


def progress_files():
    return set(runner.PROGRESS_DIR.glob("depth-quick-*.json")) if runner.PROGRESS_DIR.exists() else set()


def wait_for_progress(proc, before, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if progress_files() - before:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("no run finished in time")


@pytest.fixture
def previous_result(tmp_path):
    """A valid earlier result at --out, whose bytes must survive every fault."""
    out = tmp_path / "depth.json"
    results.write_atomic(out, {"schema_version": results.SCHEMA_VERSION, "experiment": "depth", "fingerprint": "old",
                               "provenance": {}, "variants": []})
    return out, out.read_bytes()


@pytest.mark.slow
def test_kill_9_keeps_previous_result_and_rerun_resumes(tmp_path, previous_result):
    out, before = previous_result
    for p in progress_files():
        p.unlink()
    proc = start([*SLOW_QUICK, "--threads", "1", "--out", str(out)], tmp_path)
    wait_for_progress(proc, set())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["depth.json"]     # no half-written temp file
    progress = next(iter(progress_files()))
    kept = json.loads(progress.read_text())["runs"]
    finished = sum(map(len, kept.values()))
    assert finished >= 1
    saved = progress.read_bytes()   # resumed with another thread count: refused, nothing lost or mixed
    other = run_cli(*SLOW_QUICK, "--threads", "2", "--out", str(out))
    assert other.returncode == 1 and progress.read_bytes() == saved and out.read_bytes() == before
    assert "made with 1 torch thread(s), and this run would use 2" in other.stderr and "--threads 1" in other.stderr
    again = run_cli(*SLOW_QUICK, "--threads", "1", "--out", str(out))
    assert again.returncode == 0, again.stderr
    assert f"{finished} finished run(s) kept" in again.stdout
    trained = again.stdout.count(" seed ")          # one line per run trained now
    assert trained == 12 - finished
    assert results.load(out)["fingerprint"] != "old" and not progress_files()


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_exits_fast_with_one_line_and_keeps_work(tmp_path, previous_result, sig, code):
    out, before = previous_result
    for p in progress_files():
        p.unlink()
    proc = start([*SLOW_QUICK, "--out", str(out)], tmp_path)
    wait_for_progress(proc, set())
    sent = time.time()
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=10)
    assert proc.returncode == code and time.time() - sent < 3
    assert "Traceback" not in stderr and "run the same command again to resume" in stderr
    said = re.search(r"(\d+) finished run\(s\) kept in ", stderr)   # how many: those saved when the signal came
    assert said and int(said.group(1)) >= 1, stderr
    assert out.read_bytes() == before and progress_files()
    for p in progress_files():
        p.unlink()


@pytest.mark.slow
def test_divergence_is_kept_and_excluded_from_summaries(tmp_path, fmnist, monkeypatch):
    from experiments.catalog import Experiment
    exp = Experiment(name="diverge", description="one sane and one exploding learning rate",
                     base={"optimizer": "sgd", "schedule": "constant", "epochs": 2},
                     variants={"sane": {"lr": 0.05}, "exploding": {"lr": 1e6}}, seeds=2)
    out = tmp_path / "diverge.json"
    runner.run_experiment(exp, out, ["test"], quick=True, device_name="cpu", log=lambda *a: None)
    result = results.load(out)
    sane, exploding = result["variants"]
    assert sane["summary"]["diverged"] == 0 and sane["summary"]["test_acc"]["n"] == 2
    assert exploding["summary"]["diverged"] == 2 and exploding["summary"]["test_acc"]["n"] == 0
    assert all(r["final"]["diverged"] and r["final"]["diverged_epoch"] == 1 for r in exploding["runs"])


def test_read_only_output_folder_is_a_clear_error_and_keeps_the_old_file(tmp_path, previous_result):
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions; covered by the injected EACCES test")
    out, before = previous_result
    tmp_path.chmod(0o500)
    try:
        proc = run_cli("run", "depth", "--quick", "--seeds", "1", "--epochs", "1", "--out", str(out))
    finally:
        tmp_path.chmod(0o700)
    assert proc.returncode == 1 and "Permission denied" in proc.stderr and out.read_bytes() == before


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), PermissionError(13, "Permission denied"),
                                   None])
def test_a_failing_write_keeps_the_old_file(tmp_path, previous_result, monkeypatch, error):
    """A full disk, no permission, or an object JSON cannot hold (NaN): the previous result is
    byte-identical and no temporary file is left."""
    out, before = previous_result
    obj = {"x": float("nan")} if error is None else {"x": 1}

    def failing_dump(obj, f, **kwargs):
        f.write('{"half": ')
        raise error
    if error is not None:
        monkeypatch.setattr(results.json, "dump", failing_dump)
    with pytest.raises(ValueError if error is None else OSError):
        results.write_atomic(out, obj)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["depth.json"]


def test_unknown_variant_override_in_a_spec_is_refused():
    from experiments.catalog import Experiment
    with pytest.raises(ValueError, match=r"experiment 'x', variant 'v': unknown RunSpec field\(s\) widht "
                                         r"\(did you mean width\?\)$"):
        Experiment(name="x", description="", variants={"v": {"widht": 3}}).specs()
    assert all(e.specs() for e in EXPERIMENTS.values())


@pytest.mark.parametrize("override, said", [
    ({"epochs": -3}, "epochs=-3: must be an integer >= 1"),
    ({"epochs": 2.5}, "epochs=2.5: must be an integer >= 1"),
    ({"epochs": "3"}, "epochs='3': must be an integer >= 1"),
    ({"lr": -0.001}, "lr=-0.001: must be a number > 0"),
    ({"lr": float("nan")}, "lr=nan: must be a number > 0"),
    ({"label_smoothing": 1.5}, "label_smoothing=1.5: must be a number in [0, 1]"),
    ({"dropout": 1.5}, "dropout=1.5: must be a number in [0, 1)"),
    ({"l2": -1}, "l2=-1: must be a number >= 0"),
    ({"patience": -2}, "patience=-2: must be an integer >= 0"),
    ({"batchnorm": "yes"}, "batchnorm='yes': must be True or False"),
    ({"optimizer": "rmsprop"}, "optimizer='rmsprop': not one of sgd, adam, adamw"),
    ({"crop_scale": (0.5, 0.1)}, "crop_scale=(0.5, 0.1): must be two numbers (lo, hi) with 0 < lo <= hi <= 1"),
    ({"channels": (32, 0)}, "channels=(32, 0): must be one or more integers >= 1, e.g. (32, 64)"),
])
def test_a_value_the_engine_cannot_train_with_is_named_with_its_experiment_and_variant(override, said):
    """A catalog entry's bad value is refused before any work, naming the experiment, the variant,
    the field, its value and what it may be; --quick's own epoch count does not hide it."""
    from experiments.catalog import Experiment
    exp = Experiment(name="x", description="", variants={"control": {}, "v": override})
    for cli in ({}, {"epochs": 2}):
        with pytest.raises(ValueError) as err:
            exp.specs(**cli)
        assert str(err.value) == f"experiment 'x', variant 'v': {said}"


def test_every_runspec_field_has_a_rule_and_the_defaults_and_committed_specs_pass_it():
    from dataclasses import fields
    from experiments import catalog, planning
    assert sorted(f.name for f in fields(catalog.RunSpec)) == sorted([*catalog.CHOICES, *catalog.LIMITS])
    assert catalog.field_problems(catalog.RunSpec()) == []
    for path in sorted((ROOT / "results").glob("*.json")):
        result = results.read(path)
        if "variants" in result:
            assert all(planning.recorded_specs(result).values())      # each built, so each passed


def test_an_entry_s_control_figures_and_seeds_are_checked_when_used_not_on_import():
    from experiments.catalog import Experiment
    exp = Experiment(name="x", description="", variants={"none": {}, "L1": {"l1": 1e-4}}, control="nnoe",
                     figures=("curve",), seeds=0)    # made without an error: one broken entry stops no other
    assert exp.problems() == [
        "experiment 'x': control 'nnoe' is not one of its variants ('none', 'L1'); did you mean 'none'?",
        "experiment 'x': unknown figure kind(s) curve; known: accuracy, confusion, curves, weights",
        "experiment 'x': seeds=0: must be an integer >= 1 (the study's experiments run 10)"]
    with pytest.raises(ValueError, match="control 'nnoe'"):
        exp.specs()
    assert all(not e.problems() for e in EXPERIMENTS.values())


def test_unreadable_idx_file_is_named(tmp_path, monkeypatch):
    from pathlib import Path
    from experiments import data
    for name in data.SHA256:
        (tmp_path / name).symlink_to(data.RAW_DIR / name)
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path))
    monkeypatch.setattr(data, "RAW_DIR", tmp_path / "copy")
    real = Path.read_bytes

    def deny(self):
        if self.name == "train-labels-idx1-ubyte":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)
    monkeypatch.setattr(Path, "read_bytes", deny)
    with pytest.raises(data.DataError, match="cannot read .*train-labels-idx1-ubyte.*Permission denied"):
        data.ensure_data()


@pytest.mark.slow
def test_empty_fashion_mnist_dir_names_every_missing_file(tmp_path, monkeypatch):
    from experiments import data
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path))
    proc = run_cli("run", "depth", "--quick", "--out", str(tmp_path / "r.json"),
                   env={**os.environ, data.ENV_VAR: str(tmp_path)})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert all(name in proc.stderr for name in data.SHA256)
