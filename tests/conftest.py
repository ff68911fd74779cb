"""Shared fixtures: the real data set, loaded once per test session on the CPU."""
import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Progress files and locks of the runs the tests start (in this process and in every subprocess,
# which inherit the environment) go to a temporary folder, never the real build/progress.
_SCRATCH = Path(tempfile.mkdtemp(prefix="fmreport-tests-"))
atexit.register(shutil.rmtree, _SCRATCH, ignore_errors=True)
os.environ["FMREPORT_PROGRESS_DIR"] = str(_SCRATCH / "progress")
os.environ["FMREPORT_DIGEST_CACHE"] = str(_SCRATCH / "code-digests.json")
os.environ["FMREPORT_LOCK_DIR"] = str(_SCRATCH / "locks")


@pytest.fixture(scope="session")
def fmnist():
    from experiments import data
    return data.load("cpu")


def run_cli(*args, env=None, timeout=300):
    """Run `python -m experiments ARGS` in a subprocess, as a user would."""
    return subprocess.run([sys.executable, "-m", "experiments", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
