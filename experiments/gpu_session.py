"""`make gpu-check` within a time limit, for a GPU machine lent a few minutes at a time:
`python -m experiments.gpu_session --copy-to DIR [--limit SECONDS] [--device cuda] [--quick]`.

The steps of `make gpu-check` (the probe, the CUDA-graph tests, the lanes tests, the CUDA exactness
tests, which gate nothing, and the check: with the probe's choices where the CUDA-graph tests
pass, its study in LANES lanes where the lanes tests pass too), each in its own process under a
share of the limit. Then, where the study ran in lanes, the study again one experiment at a time
with the same settings in the time left (what the lanes gain: each experiment's seconds are saved
as it ends), or, where the study in lanes did not end, the whole check again in one lane. A step
is interrupted with SIGINT at the deadline: the check has saved what it measured after each
experiment. Then
the JSON files, one log of every step and a tarball of the scratch folder are copied to DIR (a
lent machine may return files only from one folder, and few of them), and the figures that matter
are printed last, where a truncated output keeps them.
"""
from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from . import results

SCRATCH = results.PROJECT_ROOT / "build" / "gpu-check"
# Shares of the limit, each at most: a step that ends sooner leaves its time to the check, which gets
# the rest. The probe names its input placement and TF32 choices only once every experiment's step
# parts are timed (then come its profiles, which a cut-off keeps as far as they got), so it gets
# 40%. The lanes tests get 10% (pytest's start, CUDA's and the data's before two short trainings: 5%,
# 28 s, left little room). The check then has at least 560 - 224 - 15 - 20 = 301 s less the tests'
# time (20: the GRACE it may take to stop); its timed parts on an
# H200 at 46b833d came to 141 s (the study 114 s, two reruns 11 s, two deterministic ones 16 s;
# results/gpu-check.json) and its bench 82 s (results/bench-cuda.json's provenance), before its
# memory caps and process starts, which were not timed. Where the check's study ran in lanes, the
# same study in one lane gets the time left after it, where that is at least FOLLOW_UP_LEAST.
PROBE_SHARE, TESTS_SHARE, LANES_TESTS_SHARE, EXACT_SHARE = 0.4, 0.15, 0.1, 0.05
GRACE = 20                             # seconds the check gets to exit after SIGINT
FOLLOW_UP_LEAST = 60                   # seconds a step after the check needs to be worth starting
LANES = 4                              # experiments the check's study trains side by side (lanes.py)
COPY_RESERVE = 15                      # seconds kept for copying the files


def step(name: str, argv: list[str], seconds: float, log) -> int | None:
    """Run argv (python -m ...) for at most `seconds`, its output into `log`; its exit code, or None
    when it ran out of time (SIGINT, then SIGKILL after GRACE seconds)."""
    log.write(f"\n===== {name}: {' '.join(argv)} (at most {seconds:.0f} s)\n")
    log.flush()
    started = time.perf_counter()
    # SIGINT back to its default in the child: a shell that runs this in the background ignores it,
    # the child would inherit that, and Python then never raises KeyboardInterrupt at the deadline
    proc = subprocess.Popen([sys.executable, "-m", *argv], stdout=log, stderr=subprocess.STDOUT,
                            cwd=results.PROJECT_ROOT, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        code = proc.wait(timeout=max(seconds, 1))
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=GRACE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        code = None
    log.write(f"===== {name}: {'out of time' if code is None else f'exit {code}'} after "
              f"{time.perf_counter() - started:.0f} s\n")
    log.flush()
    return code


def summary(scratch: Path) -> list[str]:
    """The lines worth reading first: the probe's choices and profiles, the study's time and where
    it went."""
    lines = []
    for name, keys in (("gpu-probe.json", ("fastest",)), ("gpu-check.json", ("settings", "lanes", "study_seconds")),
                       ("one-lane/gpu-check.json", ("lanes", "study_seconds"))):
        if name.startswith("one-lane") and not (scratch / name).exists():
            continue
        try:
            saved = json.loads((scratch / name).read_text())
        except (OSError, ValueError):
            lines.append(f"{name}: not written")
            continue
        lines += [f"{name} {k}: {json.dumps(saved.get(k))}" for k in keys]
        if saved.get("profiles"):
            from .gpu_probe import profile_line
            lines += [f"  {profile_line(exp, prof)}" for exp, prof in saved["profiles"].items()]
        for exp, e in saved.get("experiments", {}).items():
            phases = {k: round(v, 2) for k, v in e.get("phase_seconds", {}).items()}
            lines.append(f"  {exp}: {e['seconds']:.1f} s {json.dumps(phases)}" if "seconds" in e else
                         f"  {exp}: {e.get('error')}")
    return lines


def study_seconds(path: Path) -> float | None:
    """The study's wall time a check's JSON records, or None where the study did not end (or no
    file was written)."""
    try:
        return float(json.loads(path.read_text())["study_seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copy-to", type=Path, required=True, help="folder that receives the files (e.g. $OUT)")
    parser.add_argument("--limit", type=float, default=560, help="seconds for all three steps and the copy")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="smoke mode of each step (to try it on a CPU)")
    args = parser.parse_args(argv)
    if args.limit < 60:
        parser.error(f"--limit {args.limit:g}: give the steps at least 60 seconds")
    deadline = time.perf_counter() + args.limit - COPY_RESERVE
    SCRATCH.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(SCRATCH / "one-lane", ignore_errors=True)        # no earlier session's files are copied back
    for stale in ("gpu-check.json", "gpu-check-lanes.json"):           # nor taken for this one's
        (SCRATCH / stale).unlink(missing_ok=True)
    quick = ["--quick"] if args.quick else []
    probe = SCRATCH / "gpu-probe.json"
    with open(SCRATCH / "session.log", "w") as log:
        probed = step("probe", ["experiments.gpu_probe", "--out", str(probe), "--device", args.device, *quick],
                      PROBE_SHARE * args.limit, log)
        tested = step("CUDA-graph tests", ["pytest", "-q", "-p", "no:cacheprovider", "tests/test_population.py",
                                           "-k", "cuda_graphs"], TESTS_SHARE * args.limit, log)
        choices = ["--probe", str(probe)] if tested == 0 and probe.exists() else []   # else the defaults
        laned = step("lanes tests", ["pytest", "-q", "-p", "no:cacheprovider", "tests/test_population.py",
                                     "-k", "lanes_cuda"], LANES_TESTS_SHARE * args.limit, log)
        lanes = LANES if tested == 0 and laned == 0 and args.device.startswith("cuda") else 1   # else one at a time
        # bit-for-bit agreement with the serial optimizers on this card: recorded, not a gate
        exact = step("CUDA exactness tests", ["pytest", "-q", "-p", "no:cacheprovider", "tests/test_population.py",
                                              "-k", "on_cuda"], EXACT_SHARE * args.limit, log)
        check = ["experiments.gpu_check", "--device", args.device, *quick, *choices]

        def left() -> float:   # for a step that may take GRACE seconds to exit once interrupted
            return deadline - time.perf_counter() - GRACE
        checked = step("check", [*check, "--out", str(SCRATCH), "--lanes", str(lanes)], left(), log)
        follow_up = left() >= FOLLOW_UP_LEAST
        if lanes > 1 and study_seconds(SCRATCH / "gpu-check.json") is None and follow_up:   # lanes did not end
            if (SCRATCH / "gpu-check.json").exists():
                (SCRATCH / "gpu-check.json").replace(SCRATCH / "gpu-check-lanes.json")
            lanes = 1
            checked = step("check, one lane", [*check, "--out", str(SCRATCH), "--lanes", "1"], left(), log)
        elif lanes > 1 and follow_up:   # what the lanes gain: the same study one experiment at a time, in the time left
            step("study, one lane", [*check, "--out", str(SCRATCH / "one-lane"), "--lanes", "1", "--skip-bench",
                                     "--skip-checks"], left(), log)
        elif lanes > 1:
            log.write(f"\n===== no step after the check: {max(left(), 0):.0f} s left, under {FOLLOW_UP_LEAST} s\n")
    args.copy_to.mkdir(parents=True, exist_ok=True)
    if (SCRATCH / "one-lane" / "gpu-check.json").exists():
        shutil.copy2(SCRATCH / "one-lane" / "gpu-check.json", args.copy_to / "gpu-check-one-lane.json")
    for name in ("gpu-probe.json", "gpu-check.json", "gpu-check-lanes.json", f"bench-{args.device.split(':')[0]}.json",
                 "session.log"):
        if (SCRATCH / name).exists():
            shutil.copy2(SCRATCH / name, args.copy_to / name)
    with tarfile.open(args.copy_to / "gpu-check.tgz", "w:gz") as tar:
        tar.add(SCRATCH, arcname="gpu-check")
    print("\n".join([f"probe {probed}, tests {tested}, lanes tests {laned}, exactness tests {exact}, "
                     f"check {checked} (exit codes; None: out of time); "
                     f"{'with' if choices else 'without'} the probe's choices, {lanes} lane(s)", *summary(SCRATCH)]))
    return 0 if (probed, tested, checked) == (0, 0, 0) else 1


if __name__ == "__main__":
    sys.exit(main())
