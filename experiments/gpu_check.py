"""The prepared GPU check: `python -m experiments.gpu_check [--out DIR] [--quick] [--device cuda] [--probe FILE]`.

One command for a machine with a GPU but perhaps no package registry (it needs only torch,
torchvision, numpy, matplotlib, jinja2 and tqdm, not the project's virtualenv):
1. the whole study on the device with the population engine, into DIR/results (never results/);
2. each variant's mean test accuracy against the committed CPU result: a difference within two
   standard errors of the difference (sqrt(s1^2/n1 + s2^2/n2)) is called agreement;
3. the GPU bench (experiments.bench) into DIR/bench-cuda.json, right after the study whose wall
   time it reports;
4. one experiment run twice with the same seeds: which runs repeat bit for bit, and the largest
   difference where they do not (with --lanes N the study's run of it shared the card, so it is
   run alone twice and its study run compared with the first: `lanes_against_one_lane`); then
   twice more, each in its own process under
   torch.use_deterministic_algorithms(True) (`run --deterministic`): whether that repeats bit for
   bit, and its cost in wall time against the default;
5. last, on CUDA, that experiment again under caps on the process's share of the card's memory
   (torch.cuda.set_per_process_memory_fraction) at a half and a quarter of the memory its
   populations used: whether they split and still agree with the uncapped run, or the error that
   names a run too large to fit alone (issue 17's item 3 on a real card).
Everything lands in DIR/gpu-check.json, with the engine settings it ran under (`settings`: those
gpu_probe found fastest when --probe names its JSON); the exit code is 1 only when something failed
to run.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from . import results
from .catalog import EXPERIMENTS

REPEAT = "depth"     # the experiment run twice for the repeatability check
SETTINGS = ("FMREPORT_CONV", "FMREPORT_CUDNN_BENCHMARK", "FMREPORT_INPUTS", "FMREPORT_MATMUL")   # stacked.py's switches


def engine_settings(probe: Path | None) -> dict:
    """Set the engine switches gpu_probe found fastest (its JSON's `fastest`), for this process and
    the ones it starts, and return the settings in force and where they came from. A probe file
    that is absent or unreadable leaves the defaults and says why (the check still runs)."""
    from . import stacked
    source = "defaults (no --probe)"
    if probe is not None:
        try:
            fastest = json.loads(Path(probe).read_text())["fastest"]
            chosen = {k: str(fastest[k]) for k in SETTINGS if k in fastest}
            os.environ.update(chosen)
            source = f"gpu_probe's fastest ({probe})"
        except (OSError, ValueError, KeyError, TypeError) as err:
            source = f"defaults (the probe file {probe} could not be read: {type(err).__name__})"
            print(f"warning: {source}", file=sys.stderr)
    stacked.CONV = os.environ.get("FMREPORT_CONV", stacked.CONV)
    stacked.CUDNN_BENCHMARK = os.environ.get("FMREPORT_CUDNN_BENCHMARK", "1" if stacked.CUDNN_BENCHMARK else "0") == "1"
    stacked.INPUTS = os.environ.get("FMREPORT_INPUTS", stacked.INPUTS)
    stacked.MATMUL = os.environ.get("FMREPORT_MATMUL", stacked.MATMUL)
    stacked.check_settings()
    return {"FMREPORT_CONV": stacked.CONV, "FMREPORT_CUDNN_BENCHMARK": "1" if stacked.CUDNN_BENCHMARK else "0",
            "FMREPORT_INPUTS": stacked.INPUTS, "FMREPORT_MATMUL": stacked.MATMUL, "from": source}


def compare_to_committed(result: dict, committed: dict) -> list[dict]:
    """Per variant: both mean test accuracies, their difference and whether it is within 2 SE."""
    rows, theirs = [], {v["name"]: v["summary"]["test_acc"] for v in committed["variants"]}
    for v in result["variants"]:
        ours, ref = v["summary"]["test_acc"], theirs.get(v["name"])
        if ref is None or ours["mean"] is None or ref["mean"] is None:
            rows.append({"variant": v["name"], "agrees": None, "why": "no committed or no finished runs"})
            continue
        se = math.sqrt((ours["std"] or 0) ** 2 / max(ours["n"], 1) + (ref["std"] or 0) ** 2 / max(ref["n"], 1))
        diff = ours["mean"] - ref["mean"]
        rows.append({"variant": v["name"], "device_mean": ours["mean"], "cpu_mean": ref["mean"], "diff": diff,
                     "two_se": 2 * se, "agrees": abs(diff) <= 2 * se})
    return rows


def repeatability(first: dict, second: dict) -> dict:
    """How two runs of one experiment with the same seeds compare, run by run."""
    identical, worst = 0, 0.0
    pairs = [(a, b) for va, vb in zip(first["variants"], second["variants"]) for a, b in zip(va["runs"], vb["runs"])]
    for a, b in pairs:
        strip = lambda run: [{k: v for k, v in h.items() if k != "seconds"} for h in run["history"]]  # noqa: E731
        if strip(a) == strip(b) and a["final"]["test_acc"] == b["final"]["test_acc"]:
            identical += 1
        else:
            worst = max(worst, max(abs((x["train_loss"] or 0) - (y["train_loss"] or 0))
                                   for x, y in zip(a["history"], b["history"])))
    return {"experiment": first["experiment"], "runs": len(pairs), "bit_identical": identical,
            "largest_train_loss_difference": worst}


def deterministic_pair(out: Path, device: str, backend: str, quick: bool, seeds: int | None) -> dict:
    """REPEAT twice more, each in a fresh process under `run --deterministic` (cuBLAS's workspace
    setting must precede its first use): their repeatability and wall times, or the error that
    stopped them (e.g. an op without a deterministic kernel)."""
    made = []
    for i in (1, 2):
        path = out / "deterministic" / f"{REPEAT}-{i}.json"
        cmd = [sys.executable, "-m", "experiments", "run", REPEAT, "--out", str(path), "--fresh", "--deterministic",
               "--device", device, "--backend", backend, *(["--quick"] if quick else []),
               *(["--seeds", str(seeds)] if seeds else [])]
        done = subprocess.run(cmd, cwd=results.PROJECT_ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines()
            return {"error": f"exit {done.returncode}: {lines[-1] if lines else 'no output'}", "command": " ".join(cmd)}
        made.append(results.load(path))
    return {**repeatability(*made), "seconds": [m["provenance"]["wall_seconds"] for m in made]}


CAP_SHARES = (0.5, 0.25)   # of the memory REPEAT's populations used beyond what was held before


def memory_cap(args, uncapped: dict, peak_bytes: int | None, data=None) -> dict:
    """REPEAT under each cap of CAP_SHARES: the populations it trained in (a split shows as more,
    smaller ones), how its runs compare with the uncapped run's, or the error it stopped with.
    `error` marks a failure of the engine; `does_not_fit` the expected one-line refusal."""
    if not args.device.startswith("cuda") or peak_bytes is None:
        return {"skipped": "needs CUDA; on the CPU tests/test_population.py injects the out-of-memory error"}
    import gc
    import torch
    from . import population, runner
    device = torch.device(args.device)
    if device.index is None:   # the memory calls want an index: plain "cuda" is the current card
        device = torch.device("cuda", torch.cuda.current_device())
    total = torch.cuda.get_device_properties(device).total_memory
    gc.collect()
    torch.cuda.empty_cache()
    held = torch.cuda.memory_reserved(device)
    tries = []
    for share in CAP_SHARES:
        limit = held + share * max(peak_bytes - held, 0)
        entry = {"share": share, "limit_bytes": int(limit)}
        torch.cuda.set_per_process_memory_fraction(limit / total, device)
        try:
            capped = runner.run_experiment(EXPERIMENTS[REPEAT], args.out / "memory-cap" / f"{REPEAT}-{share}.json",
                                           ["gpu_check"], seeds=args.seeds, quick=args.quick, device_name=args.device,
                                           fresh=True, backend=args.backend, data=data)
            entry.update(populations=[size for p in capped["provenance"]["populations"]   # as trained, after splits
                                      for size in p.get("split_into", [p["size"]])],
                         against_uncapped=repeatability(uncapped, capped))
        except population.DeviceMemoryError as err:
            entry["does_not_fit"] = str(err)
        except Exception as err:   # recorded, and the check exits 1: the split itself failed
            entry["error"] = f"{type(err).__name__}: {err}"
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0, device)
            gc.collect()
            torch.cuda.empty_cache()
        tries.append(entry)
    return {"peak_bytes": peak_bytes, "held_bytes": held, "total_bytes": total, "tries": tries}


def save(out: Path, report: dict, t0: float) -> None:
    """Write the check's JSON as it stands, with the wall time so far in its provenance."""
    if "provenance" in report:
        report["provenance"]["wall_seconds"] = time.perf_counter() - t0
    results.write_atomic(out / "gpu-check.json", report)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=results.PROJECT_ROOT / "build" / "gpu-check",
                        help="scratch folder: results/, rerun/, bench-cuda.json and gpu-check.json go there")
    parser.add_argument("--device", default="cuda", help="cuda (default); cpu only to try the script")
    parser.add_argument("--quick", action="store_true", help="smoke mode: 2 epochs on 2,048 images")
    parser.add_argument("--backend", default="auto", choices=("auto", "loop", "batched"))
    parser.add_argument("--skip-bench", action="store_true")
    parser.add_argument("--skip-checks", action="store_true",
                        help="only the study, its agreement with the committed results and the bench")
    parser.add_argument("--seeds", type=int, help="seeds per variant for every experiment (default the catalog's; "
                                                  "fewer only to try the script)")
    parser.add_argument("--probe", type=Path, help="gpu_probe's JSON: run with the engine settings it found fastest")
    parser.add_argument("--lanes", type=int, default=1,
                        help="experiments of the study trained side by side, each in its own thread (on CUDA its own "
                             "stream; experiments/lanes.py), the longest first; 1 (default): one after another")
    args = parser.parse_args(argv)
    import torch
    from . import bench, lanes, population, runner, stacked
    from . import data as data_mod
    try:
        settings = engine_settings(args.probe)
    except ValueError as err:   # a switch the engine does not know, from the probe or the environment
        print(f"error: {err}", file=sys.stderr)
        return 2
    report = {"device": args.device, "quick": args.quick, "seeds": args.seeds, "backend": args.backend,
              "settings": settings, "experiments": {}, "agreement": {}}   # seeds None: each experiment's catalog seeds
    failed = False
    t_study, started = time.perf_counter(), results.now()
    try:
        device = runner.pick_device(args.device)
        data = data_mod.load(device)   # once, in the study's time: every run below shares it
    except (data_mod.DataError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    refused = f"--lanes {args.lanes}: give 1 or more" if args.lanes < 1 else \
        lanes.refusal(args.lanes, population.resolve_backend(args.backend, device), device)
    if refused:
        print(f"error: {refused}", file=sys.stderr)
        return 2
    report["provenance"] = prov = results.provenance(bench.device_name(device), [], started)   # the code and machine
    prov["command"] = " ".join(["python -m experiments.gpu_check", *(sys.argv[1:] if argv is None else argv)])
    study = [exp for exp in EXPERIMENTS.values() if not exp.optional]
    if args.lanes > 1:   # the longest first, by the last card run's times where it has them
        study = [EXPERIMENTS[n] for n in lanes.longest_first([e.name for e in study])]
    report["lanes"], report["order"] = args.lanes, [e.name for e in study]

    def job(exp):
        """The experiment into the scratch folder: (its result, its wall seconds)."""
        def train():
            t0 = time.perf_counter()
            log = print if args.lanes == 1 else lambda line: print(f"[{exp.name}] {line}")
            result = runner.run_experiment(exp, args.out / "results" / f"{exp.name}.json", ["gpu_check"],
                                           seeds=args.seeds, quick=args.quick, device_name=args.device,
                                           fresh=True, backend=args.backend, data=data, log=log)
            return result, time.perf_counter() - t0
        return exp.name, train

    # lanes share torch's process-wide TF32 switch: set once for all, so no lane's end puts it back
    with stacked.cuda_matmul(device):
        for name, done, err in lanes.run([job(exp) for exp in study], args.lanes, device):
            if err is not None:   # a check reports every failure and goes on
                failed = True
                report["experiments"][name] = {"error": f"{type(err).__name__}: {err}"}
                print(f"FAILED {name}: {err}", file=sys.stderr)
                continue
            result, seconds = done
            pops = result["provenance"]["populations"]
            phases = Counter()   # where the populations' time went (stacked.StackedRun.train), summed
            for pop in pops:
                phases.update(pop.get("seconds", {}))
            report["experiments"][name] = {"seconds": seconds, "backend": result["provenance"]["backend"],
                                           "populations": [p["size"] for p in pops], "phase_seconds": dict(phases)}
            committed = results.PROJECT_ROOT / "results" / f"{name}.json"
            if committed.exists() and not args.quick:
                report["agreement"][name] = compare_to_committed(result, results.load(committed))
            save(args.out, report, t_study)   # what is done survives a timeout
    report["study_seconds"] = time.perf_counter() - t_study
    for key in ("experiments", "agreement"):   # in the catalog's order, however the lanes ended
        report[key] = {n: report[key][n] for n in EXPERIMENTS if n in report[key]}
    save(args.out, report, t_study)
    if not args.skip_bench:   # before the checks below: the figures README and the report show
        try:
            bench.main([*(["--quick"] if args.quick else []), "--device", args.device.split(":")[0],
                        "--out", str(args.out / f"bench-{args.device.split(':')[0]}.json"),
                        "--study-seconds", str(report["study_seconds"]), "--study-lanes", str(args.lanes)])
        except Exception as err:   # reported; the checks below still run
            failed, report["bench_error"] = True, f"{type(err).__name__}: {err}"
            print(f"FAILED bench: {err}", file=sys.stderr)
            save(args.out, report, t_study)
    if REPEAT in report["experiments"] and "error" not in report["experiments"][REPEAT] and not args.skip_checks:
        again = args.out / "rerun" / f"{REPEAT}.json"
        cuda = args.device.startswith("cuda")
        if cuda:   # the peak of this rerun alone: what the study and the bench left cached is let go first
            import gc
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(args.device)
        first = results.load(args.out / "results" / f"{REPEAT}.json")
        if args.lanes > 1:   # the study's run shared the card with other lanes: the two compared here run alone
            in_lanes, first = first, runner.run_experiment(
                EXPERIMENTS[REPEAT], args.out / "rerun" / f"{REPEAT}-first.json", ["gpu_check"], seeds=args.seeds,
                quick=args.quick, device_name=args.device, fresh=True, backend=args.backend, data=data)
            report["lanes_against_one_lane"] = repeatability(in_lanes, first)
            if cuda:
                torch.cuda.reset_peak_memory_stats(args.device)
        second = runner.run_experiment(EXPERIMENTS[REPEAT], again, ["gpu_check"], seeds=args.seeds, quick=args.quick,
                                       device_name=args.device, fresh=True, backend=args.backend, data=data)
        peak = torch.cuda.max_memory_reserved(args.device) if cuda else None
        report["repeatability"] = {**repeatability(first, second),
                                   "seconds": [r["provenance"]["wall_seconds"] for r in (first, second)]}
        report["deterministic"] = deterministic_pair(args.out, args.device, args.backend, args.quick, args.seeds)
    save(args.out, report, t_study)   # kept if a later step takes the process down
    if "repeatability" in report:   # last: a failure while capturing under a cap could spoil the CUDA context
        report["memory_cap"] = memory_cap(args, first, peak, data)
        failed |= any("error" in t for t in report["memory_cap"].get("tries", []))
    save(args.out, report, t_study)
    disagree = [(e, r["variant"]) for e, rows in report["agreement"].items() for r in rows if r["agrees"] is False]
    print(f"study: {report['study_seconds']:.1f} s on {args.device}, {args.lanes} lane(s); "
          f"{sum(len(r) for r in report['agreement'].values()) - len(disagree)} variant(s) within 2 SE of the "
          f"committed CPU results, outside: {disagree or 'none'}")
    if "repeatability" in report:
        r = report["repeatability"]
        print(f"repeatability ({r['experiment']}): {r['bit_identical']} of {r['runs']} runs bit-identical; "
              f"largest train-loss difference {r['largest_train_loss_difference']:.3g}")
        if "lanes_against_one_lane" in report:
            r = report["lanes_against_one_lane"]
            print(f"in {args.lanes} lanes against one ({r['experiment']}): {r['bit_identical']} of {r['runs']} runs "
                  f"bit-identical; largest train-loss difference {r['largest_train_loss_difference']:.3g}")
            r = report["repeatability"]
        d = report["deterministic"]
        print(f"deterministic algorithms: {d['error']}" if "error" in d else
              f"deterministic algorithms: {d['bit_identical']} of {d['runs']} runs bit-identical; "
              f"{min(d['seconds']):.1f} s a run of {r['experiment']} against {min(r['seconds']):.1f} s by default")
        cap = report["memory_cap"]
        for t in cap["tries"] if "tries" in cap else [{"share": None, "skipped": cap["skipped"]}]:
            print(f"memory cap {t['share']}: " + (f"populations {t['populations']}, {t['against_uncapped']['bit_identical']} of "
                  f"{t['against_uncapped']['runs']} runs as uncapped" if "populations" in t else
                  next(t[k] for k in ("does_not_fit", "error", "skipped") if k in t)))
    print(f"wrote {args.out / 'gpu-check.json'}")
    print(json.dumps({k: v for k, v in report.items() if k != "agreement"}, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
