"""Command line: `python -m experiments list | data | run NAME [...]`.

Exit codes: 0 done, 1 a data or result problem the message explains, 2 bad arguments,
130 interrupted (Ctrl-C), 143 terminated (SIGTERM).  torch is imported only when training.
"""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from .catalog import EXPERIMENTS

DEVICES = "auto, cpu, cuda, cuda:N or mps"


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line on stderr (exit 2), not a usage dump."""

    def error(self, message):
        self.exit(2, f"error: {message} (see `python -m experiments {self.prog.split()[-1]} --help`)\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; give an integer >= 1") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is too small; give an integer >= 1")
    return value


def device_name(text: str) -> str:
    head, _, index = text.partition(":")
    if head in ("auto", "cpu", "mps") and not index or head == "cuda" and (not index or index.isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"unknown device {text!r}; use one of {DEVICES}")


def experiment_name(text: str) -> str:
    if text not in EXPERIMENTS:
        raise argparse.ArgumentTypeError(f"unknown experiment {text!r}; known: {', '.join(EXPERIMENTS)}")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m experiments", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    sub.add_parser("list", help="print every experiment: name, then what it asks")
    sub.add_parser("data", help="find, verify and copy Fashion-MNIST into data/ (see experiments/data.py)")
    run = sub.add_parser("run", help="train every variant and seed of one experiment, write its result JSON")
    run.add_argument("name", type=experiment_name, help="experiment name (see `list`)")
    run.add_argument("--seeds", type=positive_int, help="number of seeds (default: the experiment's)")
    run.add_argument("--epochs", type=positive_int, help="override the maximum epochs of every variant")
    run.add_argument("--quick", action="store_true",
                     help="smoke mode: 2048 training images, 2 epochs; writes under build/quick/")
    run.add_argument("--device", type=device_name, default="auto", help=f"{DEVICES} (default auto)")
    run.add_argument("--out", type=Path, help="result file (default results/NAME.json)")
    run.add_argument("--fresh", action="store_true", help="ignore saved progress of an interrupted run")
    run.add_argument("--if-stale", action="store_true",
                     help="do nothing when --out already holds a result of this exact spec and engine code")
    run.add_argument("--since", metavar="ISO_TIME",
                     help="with --if-stale: also rerun a result started before this time (make reproduce)")
    return parser


class Terminated(Exception):
    pass


def _on_sigterm(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if args.command == "list":
        for exp in EXPERIMENTS.values():
            print(f"{exp.name:<16} {exp.description}")
        return 0

    from . import data, results, runner   # torch from here on
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        if args.command == "data":
            print(f"Fashion-MNIST verified in {data.RAW_DIR} (from {data.ensure_data()})")
            return 0
        exp = EXPERIMENTS[args.name]
        out = args.out or runner.default_out(exp.name, args.quick)
        if args.quick and out.resolve().parent == (results.PROJECT_ROOT / "results").resolve():
            print(f"error: --quick never writes into results/ (the reference results); drop --out or "
                  f"point it elsewhere", file=sys.stderr)
            return 2
        try:   # check the whole request before any work: a bad spec or device is exit 2
            _, _, fp = runner.plan(exp, args.seeds, args.epochs, args.quick)
            runner.pick_device(args.device)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        if args.if_stale and runner.is_fresh(out, fp, args.since):
            if not runner.figures_fresh(out):
                runner.draw_figures(out)
            print(f"{out} is up to date (same spec, seeds and engine code)")
            return 0
        runner.run_experiment(exp, out, argv, seeds=args.seeds, epochs=args.epochs, quick=args.quick,
                              device_name=args.device, fresh=args.fresh)
        return 0
    except (data.DataError, results.ResultError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished runs are kept in {runner.PROGRESS_DIR}; "
              "run the same command again to resume", file=sys.stderr)
        return 130
    except Terminated:
        print(f"\nterminated: finished runs are kept in {runner.PROGRESS_DIR}; "
              "run the same command again to resume", file=sys.stderr)
        return 143


if __name__ == "__main__":
    sys.exit(main())
