"""Benchmarks of margin-based training, with the scoring pass counted: `python -m tasks.bench`.

    python -m tasks.bench overhead [--quick]              # step-time ratios, printed last and saved
    python -m tasks.bench scoring [--quick]               # the scoring forward: bf16, channels-last, compile
    python -m tasks.bench loader [--quick]                # the image recipe's train loader alone: images per second
    python -m tasks.bench lm_step [--quick]               # a causal LM's step: stock against scored, time and memory
    python -m tasks.bench tta --setting fmnist [--quick]  # time to accuracy: selection x k x seeds
    python -m tasks.bench mmr --setting mrpc [--quick]    # MMR accuracy: baseline, constant, ramp
    python -m tasks.bench early --setting fmnist_long     # early LR drop on a 0.4x run vs the full baseline
    python -m tasks.bench short --setting fmnist_long     # the whole schedule compressed to 0.6x
    python -m tasks.bench suite [--quick|--gpu] [--list]  # every line of a registered suite, then the report
    python -m tasks.bench report                          # BENCHMARKS.md from results/*.json

Settings, variants and the suite are data in `tasks/bench/registry.py`. Every grid run is a real recipe run
(`tasks.image` or `tasks.glue`) in `runs/bench/`; a run whose `metrics.json` exists is not run again, so an
interrupted benchmark or suite resumes where it stopped. Raw results go to `results/`.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from tasks.bench.registry import DEFAULT_KS, DEFAULT_SEEDS, KINDS, SETTINGS, SUITES
from tasks.paths import BENCH_RUNS, BENCHMARKS_MD, RESULTS

PROG = "python -m tasks.bench"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    over = sub.add_parser("overhead", help="step-time ratios: MarginTrainer off vs Trainer, MMR, scoring cost")
    over.add_argument("--quick", action="store_true")
    over.add_argument("--model_name_or_path", default=None, help="MiniLM directory (default: the package's)")
    scoring = sub.add_parser("scoring", help="the pool's scoring forward: fp32, bf16, channels-last, torch.compile")
    scoring.add_argument("--quick", action="store_true")
    scoring.add_argument("--model_name_or_path", default=None, help="MiniLM directory (default: the package's)")
    scoring.add_argument("--no_compile", action="store_true", help="skip the torch.compile variants")
    loader = sub.add_parser("loader", help="images per second from the image recipe's train loader, nothing else")
    loader.add_argument("--quick", action="store_true")
    loader.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="dataloader_num_workers to measure")
    lm_step = sub.add_parser("lm_step", help="a causal LM's step, stock against pruning's scored step: time, memory")
    lm_step.add_argument("--quick", action="store_true")
    helps = {
        "tta": "time to accuracy: the baseline against pool selection (criterion x k) and cheaper selections",
        "mmr": "MMR accuracy: baseline, constant alpha, ramped alpha",
        "early": "the early learning-rate drop on a 0.4x run against the full baseline",
        "short": "the whole schedule compressed (0.6x, 0.5x) against the full baseline",
        "prune": "epoch pruning (margin, mms, loss, random) and the equal-step compressed control vs the baseline",
    }
    for kind in KINDS:
        p = sub.add_parser(kind, help=helps[kind])
        p.add_argument("--setting", choices=sorted(SETTINGS), required=True)
        p.add_argument("--seeds", type=int, nargs="+", default=DEFAULT_SEEDS)
        p.add_argument("--quick", action="store_true", help="minutes: tiny subsets and a few steps")
        p.add_argument("--only", nargs="*", help="run only these variants (and the baseline)")
        p.add_argument("--model_name_or_path", default=None, help="override the setting's model")
        p.add_argument("--tag", default="", help="suffix of the result's name, to keep several grids apart")
        if kind == "tta":
            p.add_argument("--ks", type=float, nargs="+", default=DEFAULT_KS)
    suite = sub.add_parser("suite", help="run every line of a registered suite in order, then the report")
    which = suite.add_mutually_exclusive_group()
    which.add_argument("--quick", action="store_true", help="the minutes-long suite on tiny subsets (no report)")
    which.add_argument("--gpu", action="store_true", help="the lines measured on one GPU")
    suite.add_argument("--list", action="store_true", help="print the command lines instead of running them")
    sub.add_parser("report", help="render BENCHMARKS.md from results/")
    parser.add_argument("--results_dir", type=Path, default=RESULTS, help=argparse.SUPPRESS)
    parser.add_argument("--runs_dir", type=Path, default=BENCH_RUNS, help=argparse.SUPPRESS)
    parser.add_argument("--benchmarks_md", type=Path, default=BENCHMARKS_MD, help=argparse.SUPPRESS)
    return parser


def suite_commands(name: str = "cpu") -> list[list[str]]:
    """The argv of every line of the suite `name` (cpu, gpu, quick), in order."""
    return [line.argv() for line in SUITES[name]]


def run_suite(args: argparse.Namespace) -> None:
    commands = suite_commands("quick" if args.quick else "gpu" if args.gpu else "cpu")
    if args.list:
        for argv in [*commands, *([] if args.quick else [["report"]])]:
            print(f"{PROG} {shlex.join(argv)}")
        return
    shared = [] if args.results_dir == RESULTS else ["--results_dir", str(args.results_dir)]
    shared += [] if args.runs_dir == BENCH_RUNS else ["--runs_dir", str(args.runs_dir)]
    shared += [] if args.benchmarks_md == BENCHMARKS_MD else ["--benchmarks_md", str(args.benchmarks_md)]
    for argv in commands:
        main([*shared, *argv])
    if not args.quick:
        main([*shared, "report"])


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    if args.command == "overhead":
        from tasks.bench.overhead import run_overhead

        run_overhead(quick=args.quick, model_path=args.model_name_or_path, results_dir=args.results_dir)
    elif args.command == "scoring":
        from tasks.bench.scoring import run_scoring

        run_scoring(args.quick, args.model_name_or_path, not args.no_compile, args.results_dir)
    elif args.command == "loader":
        from tasks.bench.loader import run_loader

        run_loader(args.quick, tuple(args.workers), args.results_dir)
    elif args.command == "lm_step":
        from tasks.bench.lm_step import run_lm_step

        run_lm_step(args.quick, args.results_dir)
    elif args.command in KINDS:
        from tasks.bench.run import run_grid

        run_grid(
            args.command,
            args.setting,
            seeds=args.seeds,
            ks=getattr(args, "ks", None),
            only=args.only,
            quick=args.quick,
            tag=args.tag,
            model_name_or_path=args.model_name_or_path,
            command=f"{PROG} {' '.join(argv)}",
            runs_dir=args.runs_dir,
            results_dir=args.results_dir,
        )
    elif args.command == "suite":
        run_suite(args)
    else:
        from tasks.bench.report import render_report

        render_report(args.results_dir, args.benchmarks_md)


if __name__ == "__main__":
    start = time.time()
    main()
    print(f"[bench] done in {time.time() - start:.0f} s", file=sys.stderr)
