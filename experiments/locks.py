"""One writer per result: an advisory file lock (flock) per result file and per progress file.

The kernel releases a flock when its holder exits in any way, kill -9 included, so a lock is never
left behind. A second writer waits for the first and says whom it waits for (pid and command, read
from the lock file); the caller then checks again whether the result it wanted is now current.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import sys
import time
from pathlib import Path

from .results import PROJECT_ROOT

LOCK_DIR = Path(os.environ.get("FMREPORT_LOCK_DIR") or PROJECT_ROOT / "build" / "locks")   # tests: a temp folder


def lock_path(target: Path) -> Path:
    """The lock file of `target` (any path: a result or a progress file), under build/locks."""
    resolved = str(Path(target).resolve())
    return LOCK_DIR / f"{Path(target).name}-{hashlib.sha256(resolved.encode()).hexdigest()[:12]}.lock"


@contextlib.contextmanager
def exclusive(target: Path, log=print, poll_seconds: float = 0.5):
    """Hold the lock of `target` for the body; wait (saying for whom) while another process holds it."""
    path = lock_path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            log(f"waiting: {target} is being written by {holder} (lock {path}); "
                "this run goes on when that one ends")
            while True:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    time.sleep(poll_seconds)
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} ({' '.join(['python', *sys.argv])})\n")
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()
            fcntl.flock(f, fcntl.LOCK_UN)
