"""Benchmarks of margin-based training, with the scoring pass counted: `python -m tasks.benchmark`.

    python -m tasks.benchmark overhead [--quick]              # step-time ratios, printed last and saved
    python -m tasks.benchmark scoring [--quick]               # the scoring forward: bf16, channels-last, compile
    python -m tasks.benchmark tta --setting fmnist [--quick]  # time to accuracy: selection x k x seeds
    python -m tasks.benchmark mmr --setting mrpc [--quick]    # MMR accuracy: baseline, constant, ramp
    python -m tasks.benchmark early --setting fmnist_long     # early LR drop on a 0.4x run vs the full baseline
    python -m tasks.benchmark short --setting fmnist_long     # the whole schedule compressed to 0.6x
    python -m tasks.benchmark report                          # BENCHMARKS.md from tasks/results/*.json

Every run is a real recipe run (`tasks.image` or `tasks.glue`) in `runs/bench/<setting>/<run>/`; a run
whose `metrics.json` exists is not run again, so an interrupted benchmark resumes where it stopped.
Raw results go to `tasks/results/<benchmark>_<setting>_<device>.json`; `report` renders the tables and
plots (made by `tasks.plot`) into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tasks.plot import load_run

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "tasks" / "results"
RUNS = ROOT / "runs" / "bench"
SHARED = ROOT.parent / "shared" / "data"


@dataclass
class Setting:
    """One benchmark problem: a recipe and its flags, the same for every variant."""

    recipe: str  # "image" or "glue"
    argv: list[str]
    metric: str = "eval_accuracy"
    quick_argv: list[str] = field(default_factory=list)  # appended in --quick mode
    note: str = ""


def _image(dataset: str, model: str, flags: str, quick: str, note: str) -> Setting:
    argv = ["--dataset_name", dataset, "--model_name_or_path", model, *shlex.split(flags)]
    return Setting("image", argv, quick_argv=shlex.split(quick), note=note)


def _glue(task: str, flags: str, quick: str, note: str, metric: str = "eval_accuracy") -> Setting:
    argv = ["--task_name", task, "--data_dir", str(SHARED / "glue"), *shlex.split(flags)]
    return Setting("glue", argv, metric=metric, quick_argv=shlex.split(quick), note=note)


_SGD = "--optim sgd --optim_args momentum=0.9 --weight_decay 1e-4"
# the trained-to-a-plateau recipe on a 10k-image subset (fmnist_long, cifar10_cpu); the settings add --max_steps
_SUBSET_10K = (
    "--max_train_samples 10000 --max_eval_samples 2000 --per_device_train_batch_size 64 --eval_steps 100 "
    "--learning_rate 0.1 --warmup_steps 40 --lr_scheduler_type cosine --optim sgd --optim_args momentum=0.9 "
    "--weight_decay 5e-4"
)
_QUICK_IMAGE = "--max_train_samples 2000 --max_eval_samples 500 --max_steps 40 --eval_steps 20 --bf16 false"
_QUICK_GLUE = "--max_train_samples 256 --max_eval_samples 64 --max_steps 4 --eval_steps 2 --max_seq_length 64"
SETTINGS: dict[str, Setting] = {
    # CPU scale: 400 steps of batch 64 = 2.56 passes over a 10k-image Fashion-MNIST subset
    "fmnist": _image(
        "fashion_mnist",
        "cifar_resnet20",
        f"--max_train_samples 10000 --max_eval_samples 2000 --per_device_train_batch_size 64 --max_steps 400 "
        f"--eval_steps 50 --learning_rate 0.05 --lr_scheduler_type cosine {_SGD}",
        _QUICK_IMAGE,
        "Fashion-MNIST, 10,000-image train subset, 2,000 test images; CIFAR ResNet-20 (1 channel), batch 64, "
        "SGD lr 0.05 cosine, 400 steps.",
    ),
    # CPU scale, trained to a plateau: 1,200 steps of batch 64 = 7.7 passes over the same 10k subset (~2.5 min)
    "fmnist_long": _image(
        "fashion_mnist",
        "cifar_resnet20",
        f"{_SUBSET_10K} --max_steps 1200",
        _QUICK_IMAGE,
        "Fashion-MNIST, 10,000-image train subset, 2,000 test images; CIFAR ResNet-20 (1 channel), batch 64, "
        "SGD lr 0.1 (40 warm-up steps) cosine, weight decay 5e-4, 1,200 steps (7.7 passes).",
    ),
    # CPU scale, CIFAR-10: the fmnist_long recipe on a 10k-image CIFAR-10 subset, 800 steps (5.1 passes, ~2 min)
    "cifar10_cpu": _image(
        "cifar10",
        "cifar_resnet20",
        f"{_SUBSET_10K} --max_steps 800",
        _QUICK_IMAGE,
        "CIFAR-10, 10,000-image train subset, 2,000 test images; CIFAR ResNet-20, batch 64, SGD lr 0.1 (40 warm-up "
        "steps) cosine, weight decay 5e-4, 800 steps (5.1 passes).",
    ),
    # seconds-scale: scikit-learn's digits (used by the tests of this module)
    "digits": _image(
        "digits",
        "cifar_resnet20",
        f"--per_device_train_batch_size 32 --max_steps 60 --eval_steps 20 --learning_rate 0.05 {_SGD}",
        "--max_steps 6 --eval_steps 3",
        "scikit-learn digits (1,437 train / 360 eval 8x8), CIFAR ResNet-20, batch 32, SGD lr 0.05, 60 steps.",
    ),
    # GPU scale: full CIFAR-10, ResNet-20, 10 sample epochs of batch 128 = 3,910 steps
    "cifar10": _image(
        "cifar10",
        "cifar_resnet20",
        f"--per_device_train_batch_size 128 --max_steps 3910 --eval_steps 391 --learning_rate 0.1 "
        f"--lr_scheduler_type cosine {_SGD} --dataloader_num_workers 4 --bf16 true",
        _QUICK_IMAGE,
        "CIFAR-10 (50,000 train / 10,000 test), CIFAR ResNet-20, batch 128, SGD lr 0.1 cosine, 3,910 steps "
        "(10 sample epochs), bf16 autocast.",
    ),
    # CPU scale, text: pretrained MiniLM, batch 32 x seq 128, 120 steps (~1 pass over MRPC)
    "mrpc": _glue(
        "mrpc",
        "--per_device_train_batch_size 32 --max_seq_length 128 --max_steps 120 --eval_steps 20 "
        "--learning_rate 5e-5 --warmup_steps 12",
        _QUICK_GLUE,
        "GLUE MRPC (3,668 train / 408 dev), pretrained all-MiniLM-L6-v2, batch 32, seq 128, AdamW 5e-5, 120 steps.",
    ),
    # the usual GLUE fine-tuning length: 3 epochs of MRPC (345 steps, ~9 min on 2 CPU threads)
    "mrpc_3ep": _glue(
        "mrpc",
        "--per_device_train_batch_size 32 --max_seq_length 128 --max_steps 345 --eval_steps 23 "
        "--learning_rate 5e-5 --warmup_steps 35",
        _QUICK_GLUE,
        "GLUE MRPC (3,668 train / 408 dev), pretrained all-MiniLM-L6-v2, batch 32, seq 128, AdamW 5e-5, "
        "345 steps (3 epochs).",
    ),
    "rte": _glue(
        "rte",
        "--per_device_train_batch_size 32 --max_seq_length 128 --max_steps 120 --eval_steps 20 "
        "--learning_rate 5e-5 --warmup_steps 12",
        _QUICK_GLUE,
        "GLUE RTE (2,490 train / 277 dev), pretrained all-MiniLM-L6-v2, batch 32, seq 128, AdamW 5e-5, 120 steps.",
    ),
    # CPU scale, SST-2: 300 steps x 32 = 9,600 of the 67k training sentences (one seventh of a pass)
    "sst2_cpu": _glue(
        "sst2",
        "--per_device_train_batch_size 32 --max_seq_length 64 --max_steps 300 --eval_steps 50 "
        "--learning_rate 5e-5 --warmup_steps 30",
        _QUICK_GLUE,
        "GLUE SST-2 (67,349 train / 872 dev), pretrained all-MiniLM-L6-v2, batch 32, seq 64, AdamW 5e-5, "
        "300 steps (a seventh of a pass).",
    ),
    # GPU scale, text: 2,000 steps x 32 = ~1 pass over SST-2
    "sst2": _glue(
        "sst2",
        "--per_device_train_batch_size 32 --max_seq_length 64 --max_steps 2000 --eval_steps 200 "
        "--learning_rate 5e-5 --warmup_steps 100 --bf16 true",
        _QUICK_GLUE + " --bf16 false",
        "GLUE SST-2 (67,349 train / 872 dev), pretrained all-MiniLM-L6-v2, batch 32, seq 64, AdamW 5e-5, bf16, "
        "2,000 steps.",
    ),
}


_BF16 = ["--selection_scoring_dtype", "bfloat16"]
_CHUNK32 = ["--selection_scoring_batch_size", "32"]


def pool(criterion: str, k: float, *extra: str) -> list[str]:
    """Flags for choosing b of a pool of k*b by `criterion`."""
    return ["--selection", criterion, "--selection_oversample", f"{k:g}", *extra]


# name -> extra flags. The baseline trains on every sample; the others choose b of a pool of k*b. The scored
# criteria come in three scoring set-ups: fp32 (the seeds' scheme), `_bf16` (the pool scored under bf16
# autocast) and `_bf16_chunk32` (also in length-sorted micro-batches of 32, each cut to its own padding).
def tta_variants(ks: list[float]) -> dict[str, list[str]]:
    variants = {"baseline": ["--selection", "none"]}
    for k in ks:
        variants[f"uniform_k{k:g}"] = pool("uniform", k)
        for criterion in ("mms", "loss", "entropy"):
            variants[f"{criterion}_k{k:g}"] = pool(criterion, k)
            variants[f"{criterion}_k{k:g}_bf16"] = pool(criterion, k, *_BF16)
            variants[f"{criterion}_k{k:g}_bf16_chunk32"] = pool(criterion, k, *_BF16, *_CHUNK32)
    variants.update(CHEAP_VARIANTS)
    return variants


# Issue 5's other cheaper selections (run with --only). Cached margins (no pool, no scoring forward): the hard
# share h is always trained, easy samples at rate r with loss x 1/r; a pass costs h + (1 - h) r of a full pass:
# 0.625 for the defaults, 0.325 for h25_r10. `_until50` selects for the first half of the steps only;
# `_notrim` keeps the pool's padding in the selected text batch; `_compile` compiles the scoring forward.
CHEAP_VARIANTS = {
    "mms_cached": ["--selection", "mms_cached"],
    "mms_cached_h25_r10": [
        "--selection", "mms_cached", "--selection_hard_fraction", "0.25", "--selection_easy_rate", "0.1"
    ],
    # text only: the selected batch keeps the pool's padded length (the behaviour before selection_trim_padding)
    "mms_k2_bf16_notrim": pool("mms", 2, *_BF16, "--selection_trim_padding", "false"),
    "mms_k2_bf16_compile": pool("mms", 2, *_BF16, "--selection_scoring_compile", "true"),
    "mms_k2_bf16_chunk32_compile": pool("mms", 2, *_BF16, *_CHUNK32, "--selection_scoring_compile", "true"),
    "mms_k2_bf16_until50": pool("mms", 2, *_BF16, "--selection_until", "0.5"),
}  # fmt: skip


def short_variants(setting: Setting, share: float = 0.6) -> dict[str, list[str]]:
    """
    A run with a decaying schedule gains most of its accuracy as the learning rate decays, at its end, so at equal
    length no variant can reach the baseline's final accuracy much sooner. These compress the whole schedule to
    `share` of the setting's steps: the baseline so compressed is the control; cached selection costs what a
    plain step costs, so it meets issue 5's 0.7x goal if its compressed run reaches the full baseline's accuracy.
    """
    full = int(setting.argv[setting.argv.index("--max_steps") + 1])
    steps, tag = str(round(share * full)), f"{share:g}x"
    cached = CHEAP_VARIANTS["mms_cached"]
    # a pool step costs more than a plain one (1.26x for k=2 with bf16 scoring on the CPU): a shorter run, 0.5x
    pool_steps = str(round(0.5 * full))
    return {
        "baseline": [],
        f"baseline_{tag}": ["--max_steps", steps],
        f"mms_cached_{tag}": [*cached, "--max_steps", steps],
        f"mms_cached_biased_{tag}": [*cached, "--selection_easy_rescale", "false", "--max_steps", steps],
        "baseline_0.5x": ["--max_steps", pool_steps],
        "mms_k2_bf16_0.5x": pool("mms", 2, *_BF16, "--max_steps", pool_steps),
    }


# The seeds' early learning-rate drop (drops at 80/87.5/95% of the run, as the ResNet-44 preset's 32/35/38
# of 40 epochs) on a run 0.4x as long, against the baseline's full run with drops at 50/75%.
_FULL_DROPS = ["--lr_scheduler_type", "constant", "--lr_drop_unit", "fraction", "--lr_drops", "0.5,0.75"]
_EARLY_DROPS = ["--lr_scheduler_type", "constant", "--lr_drop_unit", "fraction", "--lr_drops", "0.8,0.875,0.95"]
EARLY_DROP_VARIANTS = {
    "baseline": _FULL_DROPS,
    "baseline_early_0.4x": [*_EARLY_DROPS, "--max_steps", "480"],
    "mms_k4_bf16_early_0.4x": pool("mms", 4, *_BF16, *_EARLY_DROPS, "--max_steps", "480"),
}


MMR_VARIANTS = {
    "baseline": [],
    "mmr_const": ["--mmr_alpha", "1e-4"],
    "mmr_ramp": ["--mmr_alpha", "1e-5", "--mmr_alpha_end", "1e-3"],
}


def device_label() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0).replace(" ", "-")
    return f"cpu-{torch.get_num_threads()}threads"


def software() -> dict[str, str]:
    import timm
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "timm": timm.__version__,
        "platform": platform.platform(),
    }


def run_one(setting: Setting, name: str, extra: list[str], seed: int, quick: bool, root: Path) -> Path:
    """Run one recipe run unless its `metrics.json` exists; return its output_dir."""
    out = root / f"{name}_s{seed}"
    if (out / "metrics.json").is_file():
        return out  # resumable: a finished run is not run again
    argv = [
        *setting.argv,
        *extra,
        *(setting.quick_argv if quick else []),
        "--seed",
        str(seed),
        "--output_dir",
        str(out),
        "--eval_strategy",
        "steps",
        "--logging_steps",
        "10",
        "--save_strategy",
        "no",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
    ]
    if setting.recipe == "image":
        from tasks.image import main
    else:
        from tasks.glue import main
    print(f"[benchmark] {out}: {' '.join(extra) or '(baseline)'}", flush=True)
    main(argv)
    return out


def load_curve(run_dir: Path, metric: str) -> dict[str, Any]:
    """Eval metric against steps and training seconds (the clock pauses during evaluation), as JSON-ready lists."""
    run = load_run(run_dir, metric)  # the same reading of the log history as the plots
    record = json.loads((run_dir / "metrics.json").read_text())
    return {
        "steps": run.steps,
        "seconds": run.seconds,
        "values": run.values,
        "final": record.get(metric),
        "train_seconds": record.get("train_seconds"),
        "train_steps": record.get("train_steps"),
        "selection_time_share": record.get("selection_time_share") or 0.0,
        "mms_trace": [(step, run.mms_key, value) for step, value in zip(run.mms_steps, run.mms_values)],
    }


def first_reaching(curve: dict[str, Any], target: float) -> tuple[int | None, float | None]:
    for step, seconds, value in zip(curve["steps"], curve["seconds"], curve["values"]):
        if value >= target:
            return step, seconds
    return None, None


def summarize(setting_name: str, variants: dict[str, list[str]], seeds: list[int], root: Path) -> dict[str, Any]:
    """Per run: curves, final metric, steps and seconds to the targets set by the baseline."""
    setting = SETTINGS[setting_name]
    curves = {
        name: {seed: load_curve(root / f"{name}_s{seed}", setting.metric) for seed in seeds}
        for name in variants
        if all((root / f"{name}_s{seed}" / "metrics.json").is_file() for seed in seeds)
    }
    if "baseline" not in curves:
        raise RuntimeError(f"{setting_name}: the baseline runs are missing; run the benchmark first.")
    baseline_final = statistics.mean(c["final"] for c in curves["baseline"].values())
    targets = {"baseline_minus_0.5pt": baseline_final - 0.005, "baseline_final": baseline_final}
    rows = {}
    for name, per_seed in curves.items():
        finals = [c["final"] for c in per_seed.values()]
        row = {
            "final_mean": statistics.mean(finals),
            "final_std": statistics.stdev(finals) if len(finals) > 1 else 0.0,
            "train_seconds_mean": statistics.mean(c["train_seconds"] for c in per_seed.values()),
            "selection_time_share_mean": statistics.mean(c["selection_time_share"] for c in per_seed.values()),
        }
        for target_name, target in targets.items():
            hits = [first_reaching(c, target) for c in per_seed.values()]
            reached = [h for h in hits if h[0] is not None]
            row[target_name] = {
                "reached": f"{len(reached)}/{len(hits)}",
                "steps_mean": statistics.mean(h[0] for h in reached) if reached else None,
                "seconds_mean": statistics.mean(h[1] for h in reached) if reached else None,
            }
        rows[name] = row
    return {"metric": setting.metric, "targets": targets, "rows": rows, "curves": curves}


def save_result(kind: str, setting_name: str, payload: dict[str, Any], command: str, results: Path = RESULTS) -> Path:
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"{kind}_{setting_name}_{device_label()}.json"
    meta = {
        "benchmark": kind,
        "setting": setting_name,
        "device": device_label(),
        "date": dt.date.today().isoformat(),
        "command": command,
        "software": software(),
        "note": SETTINGS[setting_name].note if setting_name in SETTINGS else "",
    }
    path.write_text(json.dumps({**meta, **payload}, indent=1, default=str))
    print(f"[benchmark] wrote {path}")
    return path


def cmd_grid(kind: str, args: argparse.Namespace) -> None:
    setting = SETTINGS[args.setting]
    variants = {
        "tta": lambda: tta_variants(args.ks),
        "mmr": lambda: MMR_VARIANTS,
        "early": lambda: EARLY_DROP_VARIANTS,
        "short": lambda: short_variants(setting),
    }[kind]()
    if args.only:
        unknown = sorted(set(args.only) - set(variants))
        if unknown:
            hint = f" with --ks {' '.join(f'{k:g}' for k in args.ks)}" if kind == "tta" else ""
            raise ValueError(f"--only names no {kind} variant{hint}: {unknown}; they are: {', '.join(variants)}.")
        variants = {k: v for k, v in variants.items() if k in set(args.only) | {"baseline"}}
    if args.model_name_or_path:
        setting = Setting(
            **{**vars(setting), "argv": [*setting.argv, "--model_name_or_path", args.model_name_or_path]}
        )
    base_name = args.setting + ("_quick" if args.quick else "")
    name = base_name + (f"_{args.tag}" if args.tag else "")
    # shared by every tag, so a run is never repeated; the compressed-schedule variants share the tta folder and
    # so its full-length baseline
    root = args.runs_dir / base_name / ("tta" if kind == "short" else kind)
    for seed in args.seeds:
        for variant, extra in variants.items():
            run_one(setting, variant, extra, seed, args.quick, root)
    summary = summarize(args.setting, variants, args.seeds, root)
    command = "python -m tasks.benchmark " + " ".join(args.argv)
    payload = {"seeds": args.seeds, "variants": variants, **summary}
    save_result(kind, name, payload, command, args.results_dir)
    print_table(summary)


def print_table(summary: dict[str, Any]) -> None:
    print(f"{'run':<16} {'final':>14} {'seconds':>9} {'score%':>7} {'steps->-0.5pt':>14} {'s->-0.5pt':>10}")
    for name, row in summary["rows"].items():
        hit = row["baseline_minus_0.5pt"]
        steps = "-" if hit["steps_mean"] is None else f"{hit['steps_mean']:.0f} ({hit['reached']})"
        secs = "-" if hit["seconds_mean"] is None else f"{hit['seconds_mean']:.1f}"
        print(
            f"{name:<16} {row['final_mean']:.4f}+-{row['final_std']:.4f} {row['train_seconds_mean']:>9.1f} "
            f"{100 * row['selection_time_share_mean']:>6.1f}% {steps:>14} {secs:>10}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    over = sub.add_parser("overhead", help="step-time ratios: MarginTrainer off vs Trainer, MMR, scoring cost")
    over.add_argument("--quick", action="store_true")
    over.add_argument("--model_name_or_path", default=None, help="MiniLM directory (default: the package's)")
    scoring = sub.add_parser("scoring", help="the pool's scoring forward: fp32, bf16, channels-last, torch.compile")
    scoring.add_argument("--quick", action="store_true")
    scoring.add_argument("--model_name_or_path", default=None, help="MiniLM directory (default: the package's)")
    scoring.add_argument("--no_compile", action="store_true", help="skip the torch.compile variants")
    for kind in ("tta", "mmr", "early", "short"):
        p = sub.add_parser(kind)
        p.add_argument("--setting", choices=sorted(SETTINGS), required=True)
        p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
        p.add_argument("--quick", action="store_true", help="minutes: tiny subsets and a few steps")
        p.add_argument("--only", nargs="*", help="run only these variants (and the baseline)")
        p.add_argument("--model_name_or_path", default=None, help="override the setting's model")
        p.add_argument("--tag", default="", help="suffix of the result's name, to keep several grids apart")
        if kind == "tta":
            p.add_argument("--ks", type=float, nargs="+", default=[2.0, 4.0, 10.0])
    sub.add_parser("report", help="render BENCHMARKS.md from tasks/results")
    parser.add_argument("--results_dir", type=Path, default=RESULTS, help=argparse.SUPPRESS)
    parser.add_argument("--runs_dir", type=Path, default=RUNS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.command == "overhead":
        from tasks.bench_overhead import run_overhead

        run_overhead(quick=args.quick, model_path=args.model_name_or_path)
    elif args.command == "scoring":
        from tasks.bench_scoring import run_scoring

        run_scoring(quick=args.quick, model_path=args.model_name_or_path, compile_=not args.no_compile)
    elif args.command in ("tta", "mmr", "early", "short"):
        cmd_grid(args.command, args)
    else:
        from tasks.bench_report import render_report

        render_report(args.results_dir)


if __name__ == "__main__":
    start = time.time()
    main()
    print(f"[benchmark] done in {time.time() - start:.0f} s")
