"""Shared fixtures: the real data set, loaded once per test session on the CPU."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def fmnist():
    from experiments import data
    return data.load("cpu")


def run_cli(*args, env=None, timeout=300):
    """Run `python -m experiments ARGS` in a subprocess, as a user would."""
    return subprocess.run([sys.executable, "-m", "experiments", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
