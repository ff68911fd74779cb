"""`--executor ray`: the same sweep as one Ray task per (variant, seed) on a local Ray instance
gives the same result file as the serial run, also when a worker or the driver is killed midway;
without Ray, or with a dead cluster address, the flag fails in one line."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import ROOT, run_cli
from experiments import executors

ARGS = ["run", "depth", "--quick", "--seeds", "2", "--epochs", "1", "--threads", "1"]   # 8 runs


def histories(path):
    """Every run's per-epoch history without wall-clock seconds, and its final metrics."""
    result = json.loads(path.read_text())
    return [(v["name"], r["seed"], [{k: x for k, x in h.items() if k != "seconds"} for h in r["history"]],
             {k: x for k, x in r["final"].items() if k != "seconds"}) for v in result["variants"] for r in v["runs"]]


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    """The serial run's result file, which every Ray run must equal."""
    out = tmp_path_factory.mktemp("serial") / "serial.json"
    done = run_cli(*ARGS, "--out", str(out))
    assert done.returncode == 0, done.stderr
    return out


def session_processes(sid: int) -> list[int]:
    """The live processes of session `sid`: Ray's stay in the session of the command that started
    them, also after it died, and no other process is in it."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _ppid, _pgrp, session = stat.read_text().rsplit(")", 1)[1].split()[:4]
        except OSError:   # it has just ended
            continue
        if int(session) == sid and state != "Z":
            found.append(int(stat.parent.name))
    return found


def wait_for(condition, proc, timeout=300):
    """Poll `condition` until it is true (returns its value) while `proc` still runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if value := condition():
            return value
        time.sleep(0.05)
    pytest.fail(f"gave up waiting (exit {proc.poll()}):\n{proc.output()}")


@pytest.fixture
def ray_cli(tmp_path):
    """Start `python -m experiments ARGS` in a session of its own, on a private local Ray instance
    (its own temp dir, $RAY_ADDRESS unset) and with its own progress files. Afterwards, kill
    whatever of it is left: a driver killed with -9 leaves Ray's agents running."""
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")   # short: Ray's socket paths must fit 107 bytes
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=ray_tmp, FMREPORT_PROGRESS_DIR=str(tmp_path / "progress"))
    started = []

    def start(*args):
        log = tmp_path / f"log-{len(started)}.txt"   # a file: a pipe would stay open in Ray's survivors
        with log.open("w") as out:
            proc = subprocess.Popen([sys.executable, "-m", "experiments", *args], cwd=ROOT, env=env,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        proc.output = log.read_text
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in session_processes(proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    shutil.rmtree(ray_tmp, ignore_errors=True)


def finish(proc):
    """Wait for a Ray run that should succeed, and check that it left no Ray process behind."""
    assert proc.wait(timeout=600) == 0, proc.output()
    deadline = time.monotonic() + 30
    while session_processes(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not session_processes(proc.pid), "Ray processes outlived the run"
    return proc.output()


def task_worker(sid: int) -> int | None:
    """A Ray worker of session `sid` that is running a task now (Ray titles it ray::train_one)."""
    for pid in session_processes(sid):
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::train_one"):
                return pid
        except OSError:
            pass
    return None


@pytest.mark.slow
def test_ray_sweep_equals_the_serial_run_also_when_a_worker_is_killed_mid_task(tmp_path, serial, ray_cli):
    pytest.importorskip("ray")
    proc = ray_cli(*ARGS, "--executor", "ray", "--out", str(tmp_path / "ray.json"))
    os.kill(wait_for(lambda: task_worker(proc.pid), proc), signal.SIGKILL)
    log = finish(proc)
    assert "ray: 8 task(s) of 1 CPU(s) each" in log
    assert "will be retried" in log   # Ray's own line, from the task's max_retries
    assert histories(tmp_path / "ray.json") == histories(serial)
    result = json.loads((tmp_path / "ray.json").read_text())
    assert result["provenance"]["executor"] == "ray" and result["provenance"]["torch_threads"] == 1


@pytest.mark.slow
def test_a_ray_driver_killed_mid_sweep_resumes_from_its_finished_runs(tmp_path, serial, ray_cli):
    pytest.importorskip("ray")
    command = [*ARGS, "--executor", "ray", "--out", str(tmp_path / "ray.json")]

    def finished_runs():
        saved = list((tmp_path / "progress").glob("depth-quick-*.json"))   # written atomically
        return saved and sum(map(len, json.loads(saved[0].read_text())["runs"].values()))

    for _ in range(3):   # the kill races the sweep: one that lands after its last save is tried again
        killed = ray_cli(*command)
        wait_for(finished_runs, killed)
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait()
        if finished_runs() < 8:
            break
        shutil.rmtree(tmp_path / "progress")
    log = finish(ray_cli(*command))
    kept = int(re.search(r"resuming: (\d+) finished run\(s\)", log)[1])
    assert 1 <= kept < 8, log
    assert f"ray: {8 - kept} task(s)" in log   # only the rest trains again
    assert histories(tmp_path / "ray.json") == histories(serial)


def test_an_unreachable_ray_address_is_a_one_line_error(tmp_path):
    pytest.importorskip("ray")
    started = time.monotonic()
    done = run_cli(*ARGS, "--executor", "ray", "--out", str(tmp_path / "ray.json"),
                   env={**os.environ, "RAY_ADDRESS": "127.0.0.1:1"}, timeout=120)
    assert time.monotonic() - started < 30   # ray.init alone would retry for minutes
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "RAY_ADDRESS=127.0.0.1:1" in done.stderr and "`ray start --head`" in done.stderr
    assert not (tmp_path / "ray.json").exists()
    with pytest.raises(executors.RayError, match=r"RAY_ADDRESS=ray://127\.0\.0\.1:1 .*unset RAY_ADDRESS"):
        executors.check_reachable("ray://127.0.0.1:1")   # the Ray Client form, checked the same way
    executors.check_reachable("auto")                     # forms without a port are Ray's to resolve


def test_without_ray_the_flag_is_a_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)          # import ray -> ImportError
    with pytest.raises(ValueError, match=r"pip install -e '\.\[cluster\]'"):
        executors.require_ray()


class FakeRay:
    """Just enough of the ray module for run_on_ray to meet a failure without starting Ray."""

    def __init__(self, init_error=None, task_error=None):
        self.init_error, self.task_error = init_error, task_error

    def is_initialized(self):
        return False

    def init(self, **kwargs):
        if self.init_error:
            raise self.init_error

    def nodes(self):
        return [{"Alive": True, "Resources": {"CPU": 2}}]

    def cluster_resources(self):
        return {"CPU": 2}

    def remote(self, fn):
        class Task:
            def options(self, **kwargs):
                return self

            def remote(self, *args):
                return object()
        return Task()

    def wait(self, refs, num_returns):
        return refs[:1], refs[1:]

    def get(self, ref):
        raise self.task_error


@pytest.mark.parametrize("fake, message", [
    (FakeRay(init_error=ConnectionError("Failed to connect to GCS\nlong trace")), "Ray could not start or connect"),
    (FakeRay(task_error=RuntimeError("WorkerCrashedError: the worker died\nmore")),
     "depth seed 0 failed on Ray (RuntimeError: WorkerCrashedError: the worker died); the runs finished so far"),
])
def test_ray_failures_beyond_retries_are_one_line_errors(monkeypatch, fake, message):
    """ray.init failing (e.g. a ray:// address without ray[client]) and a task that fails more often
    than it is retried end as one RayError line (the CLI's exit 1), not a traceback."""
    import torch
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(executors.RayError, match=re.escape(message)) as err:
        list(executors.run_on_ray([("depth", None, 0)], torch.device("cpu"), 1, True, (None,), log=lambda *a: None))
    assert "\n" not in str(err.value)
