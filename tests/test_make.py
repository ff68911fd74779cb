"""make semantics on a copy of the project: a second run does nothing, an edited spec reruns only
its experiment, `make -j2` gives the same results as a serial run, `make report` never trains."""
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The project's sources in a temporary folder, sharing .venv and the verified data."""
    dest = tmp_path_factory.mktemp("project")
    for name in ("Makefile", "pyproject.toml", "requirements.lock"):
        shutil.copy2(ROOT / name, dest / name)
    for name in ("experiments", "templates", "report", "tests"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "report.html", "report.pdf"))
    (dest / ".venv").symlink_to(ROOT / ".venv")
    (dest / "data").symlink_to(ROOT / "data")
    return dest


def make(project, *targets, jobs=1):
    proc = subprocess.run(["make", f"-j{jobs}", "-o", ".venv/.installed", "QUICK=1", "SEEDS=1", *targets],
                          cwd=project, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def histories(path):
    """The per-run histories without wall-clock seconds (those differ between any two runs)."""
    result = json.loads(path.read_text())
    return [[{k: v for k, v in h.items() if k != "seconds"} for r in var["runs"] for h in r["history"]]
            for var in result["variants"]]


def test_second_make_does_nothing_and_edit_reruns_only_that_experiment(project):
    quick = project / "build" / "quick" / "results"
    make(project, "build/quick/results/depth.json", "build/quick/results/augmentation.json")
    before = {p.name: p.read_bytes() for p in quick.glob("*.json")}
    again = make(project, "build/quick/results/depth.json", "build/quick/results/augmentation.json")
    assert again.count("is up to date") == 2 and "wrote" not in again
    assert {p.name: p.read_bytes() for p in quick.glob("*.json")} == before
    said = make(project, "results/depth.json")   # README's path, under QUICK=1: the smoke result, said so
    assert "build/quick/results/depth.json is up to date" in said and \
        "QUICK=1: smoke result in build/quick/results/depth.json" in said
    assert not (project / "results" / "depth.json").exists()
    said = make(project, "results/depth.json", "LANES=2")   # nor does make then delete it as an intermediate
    assert "QUICK=1: smoke result in build/quick/results/depth.json" in said and (quick / "depth.json").exists()

    catalog = project / "experiments" / "catalog.py"
    text = catalog.read_text()
    catalog.write_text(text.replace('variants={f"{d} hidden": {"depth": d} for d in (1, 2, 3, 4)}',
                                    'variants={f"{d} hidden": {"depth": d, "width": 128} for d in (1, 2, 3, 4)}'))
    try:
        out = make(project, "build/quick/results/depth.json", "build/quick/results/augmentation.json")
    finally:
        catalog.write_text(text)
    assert "wrote build/quick/results/depth.json" in out
    assert "build/quick/results/augmentation.json is up to date" in out
    assert (quick / "augmentation.json").read_bytes() == before["augmentation.json"]


def test_parallel_make_equals_serial(project):
    quick = project / "build" / "quick" / "results"
    targets = ["build/quick/results/dropout.json", "build/quick/results/batchnorm.json"]
    make(project, *targets)
    serial = {t: histories(project / t) for t in targets}
    for t in targets:
        (project / t).unlink()
    make(project, *targets, jobs=2)
    assert {t: histories(project / t) for t in targets} == serial
    assert not list(quick.glob(".*.tmp*"))


def test_make_with_lanes_runs_the_stale_experiments_in_one_process_as_one_at_a_time_does(project):
    """`make experiments LANES=2` (batched backend, on the CPU here): one `run` command for every
    experiment, two at a time; a second make finds every result up to date; and an experiment made
    alone by its own pattern rule gives the same histories."""
    quick = project / "build" / "quick" / "results"
    flags = ("LANES=2", "BACKEND=batched", "DEVICE=cpu")
    out = make(project, "experiments", *flags)
    assert "--lanes 2" in out and "[cnn] wrote" in out
    again = make(project, "experiments", *flags)
    assert "wrote" not in again and again.count("is up to date") == len(list(quick.glob("*.json"))) >= 10
    in_lanes = {name: histories(quick / name) for name in ("dropout.json", "cnn.json")}
    for name in in_lanes:
        (quick / name).unlink()
    make(project, *(f"build/quick/results/{name}" for name in in_lanes), "BACKEND=batched", "DEVICE=cpu")
    assert {name: histories(quick / name) for name in in_lanes} == in_lanes


def test_where_a_gpu_driver_is_loaded_make_trains_every_stale_experiment_in_one_process(project):
    """On a machine with a GPU driver (GPU_DRIVER, from experiments/planning.py) `make experiments`
    is one `run` of every experiment, one at a time, as the GPU check's study is timed; elsewhere one
    process per result file; LANES=N takes precedence either way."""
    def planned(*flags):
        proc = subprocess.run(["make", "-n", "-o", ".venv/.installed", "experiments", *flags], cwd=project,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return [line for line in proc.stdout.splitlines() if "-m experiments run" in line]
    from experiments import catalog, planning
    names = " ".join(catalog.EXPERIMENTS)
    on_gpu = planned("GPU_DRIVER=1")
    assert len(on_gpu) == 1 and f"run {names} --lanes 1 --if-stale" in on_gpu[0]
    assert len(planned("GPU_DRIVER=")) == len(catalog.EXPERIMENTS)
    assert len(planned("GPU_DRIVER=", "LANES=3")) == 1 and "--lanes 3" in planned("GPU_DRIVER=1", "LANES=3")[0]
    assert len(planned()) == (1 if planning.gpu_driver_loaded() else len(catalog.EXPERIMENTS))   # found by itself


def test_report_never_trains(project):
    """With one quick result deleted, `make report` renders (exit 0) a report that says it is
    missing, and neither remakes it nor saves any training progress."""
    quick = project / "build" / "quick" / "results"
    make(project, "build/quick/results/depth.json")
    (quick / "depth.json").unlink()
    progress_dir = Path(os.environ["FMREPORT_PROGRESS_DIR"])   # conftest's scratch folder, inherited by make
    progress = {p.name for p in progress_dir.glob("*")}
    out = subprocess.run(["make", "-o", ".venv/.installed", "QUICK=1", "report"], cwd=project,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert not (quick / "depth.json").exists() and "experiments run" not in out.stdout
    assert {p.name for p in progress_dir.glob("*")} == progress
    html = (project / "build" / "quick" / "report" / "report.html").read_text()
    assert "make QUICK=1 build/quick/results/depth.json" in html   # its box names the command that makes it


def test_interrupted_make_leaves_no_half_target(project):
    target = project / "build" / "quick" / "results" / "early_stopping.json"
    target.unlink(missing_ok=True)
    proc = subprocess.Popen(["make", "-o", ".venv/.installed", "QUICK=1", "SEEDS=3", "EPOCHS=30",
                             "build/quick/results/early_stopping.json"], cwd=project,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as in a terminal
    time.sleep(6)                      # inside the training (startup takes a few seconds)
    assert proc.poll() is None, proc.communicate()
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
    proc.communicate(timeout=30)
    assert proc.returncode != 0
    assert not target.exists()
    assert not list(target.parent.glob(".*.tmp*"))


def test_make_with_other_seeds_keeps_a_current_result_and_says_how_to_go_on(project):
    """`make results/NAME.json SEEDS=2` over a current result made as the catalog asks: the run
    refuses (exit 2) before any work, and make (.DELETE_ON_ERROR) leaves the unmodified file."""
    target = project / "results" / "early_stopping.json"
    target.parent.mkdir(exist_ok=True)
    target.write_bytes((ROOT / "results" / "early_stopping.json").read_bytes())
    before = target.read_bytes()
    proc = subprocess.run(["make", "-o", ".venv/.installed", "SEEDS=2", "results/early_stopping.json"],
                          cwd=project, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and target.read_bytes() == before
    assert "holds early_stopping's current result" in proc.stderr and "--seeds 2 would replace it" in proc.stderr
