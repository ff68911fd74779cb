"""Faults that come with more users: two writers of one result, damaged progress files."""
import json
import os
import select
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from experiments import locks, results, runner
from experiments.catalog import EXPERIMENTS


def read_until(stream, text: str, timeout: float) -> str:
    """What a subprocess wrote to `stream` until `text` appeared (or the timeout passed)."""
    seen, end = "", time.time() + timeout
    while text not in seen and time.time() < end:
        if select.select([stream], [], [], 0.2)[0]:
            line = stream.readline()
            if not line:
                break
            seen += line
    return seen


@pytest.mark.slow
def test_a_second_writer_waits_for_the_first_and_a_kill_9_releases_the_lock(tmp_path):
    out = tmp_path / "depth.json"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from experiments import locks\n"
                               f"with locks.exclusive(Path({str(out)!r})):\n    print('held', flush=True); time.sleep(600)"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert "held" in read_until(holder.stdout, "held", 30)
    second = subprocess.Popen([sys.executable, "-m", "experiments", "run", "depth", "--quick", "--seeds", "1",
                               "--epochs", "1", "--out", str(out)], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        waiting = read_until(second.stderr, "waiting", 60)
        assert f"is being written by pid {holder.pid}" in waiting     # names the holder
        time.sleep(1)
        assert second.poll() is None and not out.exists()             # it waits; nothing interleaved
        holder.send_signal(signal.SIGKILL)                            # the kernel drops the lock
        _, err = second.communicate(timeout=300)
        assert second.returncode == 0, err
        assert results.load(out)["variants"][0]["runs"][0]["seed"] == 0
    finally:
        for proc in (holder, second):
            if proc.poll() is None:
                proc.kill()


def test_the_lock_is_free_again_after_its_holder_leaves(tmp_path):
    target = tmp_path / "r.json"
    with locks.exclusive(target):
        assert "pid" in locks.lock_path(target).read_text()
    with locks.exclusive(target, log=lambda line: pytest.fail(f"waited: {line}")):
        pass


@pytest.fixture
def progress_dir(tmp_path, monkeypatch):
    folder = tmp_path / "progress"
    monkeypatch.setattr(runner, "PROGRESS_DIR", folder)
    return folder


def quick_depth(out, log):
    return runner.run_experiment(EXPERIMENTS["depth"], out, ["run", "depth", "--quick"], seeds=1, epochs=1,
                                 quick=True, device_name="cpu", log=log)


def progress_file(progress_dir):
    _, _, fp, _ = runner.plan(EXPERIMENTS["depth"], 1, 1, True)
    return progress_dir / f"depth-quick-{fp[:16]}.json", fp


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "damaged run", "other plan"])
def test_damaged_progress_is_reported_set_aside_and_retrained(tmp_path, progress_dir, damage):
    path, fp = progress_file(progress_dir)
    path.parent.mkdir(parents=True)
    good = {"seed": 0, "history": [], "final": {k: 0.99 for k in results.FINAL_KEYS}}
    good["final"]["diverged"] = False
    text = {"truncated": '{"fingerprint": "' + fp[:10],
            "damaged run": json.dumps({"fingerprint": fp, "runs": {"1 hidden": {"0": {"seed": 0, "final": {}}}}}),
            "other plan": json.dumps({"fingerprint": "f" * 64, "runs": {"1 hidden": {"0": good}}})}[damage]
    path.write_text(text)
    lines = []
    result = quick_depth(tmp_path / "depth.json", lines.append)
    warning = next(line for line in lines if "set aside" in line)
    assert str(path) in warning and "train again" in warning
    aside = [p for p in progress_dir.iterdir() if ".bad-" in p.name]
    assert len(aside) == 1 and aside[0].read_text() == text             # kept for a look, not reused
    assert not path.exists()                                             # the finished run removed it
    first = result["variants"][0]["runs"][0]["final"]
    assert first["test_acc"] != 0.99 and results.load(tmp_path / "depth.json")   # retrained, valid


@pytest.mark.slow
def test_a_good_progress_file_is_resumed(tmp_path, progress_dir, monkeypatch):
    lines = []
    first = quick_depth(tmp_path / "a.json", lines.append)
    path, fp = progress_file(progress_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    runs = {v["name"]: {"0": v["runs"][0]} for v in first["variants"]}
    path.write_text(json.dumps({"fingerprint": fp, "runs": runs}))
    monkeypatch.setattr(runner, "fit", lambda *a, **k: pytest.fail("retrained a saved run"))
    lines.clear()
    again = quick_depth(tmp_path / "b.json", lines.append)
    assert any("4 finished run(s) kept" in line for line in lines)
    assert [v["runs"] for v in again["variants"]] == [v["runs"] for v in first["variants"]]


@pytest.mark.slow
def test_a_caller_that_shares_its_loaded_data_gets_the_same_result(tmp_path, progress_dir, monkeypatch, fmnist):
    """The GPU check and the bench's study load the data once and pass it to every experiment."""
    alone = quick_depth(tmp_path / "a.json", lambda line: None)
    monkeypatch.setattr(runner.data_mod, "load", lambda device: pytest.fail("loaded the data again"))
    shared = runner.run_experiment(EXPERIMENTS["depth"], tmp_path / "b.json", ["run", "depth", "--quick"], seeds=1,
                                   epochs=1, quick=True, device_name="cpu", log=lambda line: None, data=fmnist)
    strip = lambda r: [{k: v for k, v in run["final"].items() if k != "seconds"}  # noqa: E731
                       for v in r["variants"] for run in v["runs"]]
    assert strip(shared) == strip(alone) and shared["fingerprint"] == alone["fingerprint"]
