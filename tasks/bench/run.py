"""The grid benchmarks: each variant x seed is a real recipe run (`tasks.image` or `tasks.glue`).

A run lives in `runs/bench/<setting>/<kind>/<variant>_s<seed>/`; a run whose `metrics.json` exists is not run
again, so an interrupted grid resumes where it stopped. The grid's summary (curves, final metric, steps and
seconds to the baseline's targets) goes to `results/<kind>_<setting>[_<tag>]_<device>.json`.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from tasks.bench.registry import SETTINGS, Setting, resolve_flags, select_variants
from tasks.bench.results import save_result
from tasks.paths import BENCH_RUNS, RESULTS
from tasks.plot import load_run


def run_one(setting: Setting, name: str, extra: list[str], seed: int, quick: bool, root: Path) -> Path:
    """Run one recipe run unless its `metrics.json` exists; return its output_dir."""
    out = root / f"{name}_s{seed}"
    if (out / "metrics.json").is_file():
        return out  # resumable: a finished run is not run again

    def steps_of(run: str) -> int:
        record = root / f"{run}_s{seed}" / "metrics.json"
        if not record.is_file():
            raise RuntimeError(f"{name} takes its steps from {run}, which has not run for seed {seed}; run it first.")
        return int(json.loads(record.read_text())["train_steps"])

    extra = resolve_flags(extra, steps_of)
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
    elif setting.recipe == "lm":
        from tasks.lm import main
    else:
        from tasks.glue import main
    print(f"[bench] {out}: {' '.join(extra) or '(baseline)'}", flush=True)
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
        "train_cpu_seconds": record.get("train_cpu_seconds"),
        "train_steps": record.get("train_steps"),
        "selection_time_share": record.get("selection_time_share") or 0.0,
        "mms_trace": [(step, run.mms_key, value) for step, value in zip(run.mms_steps, run.mms_values)],
        "pruned_by_pass": pruned_by_pass(run_dir),
        **ms_per_step(run_dir),
    }


def ms_per_step(run_dir: Path) -> dict[str, float | None]:
    """
    Training milliseconds per optimizer step (evaluation excluded) between consecutive training logs of the same
    pass, over the full passes and over the pruned ones (a run without pruning: all full).
    """
    history = [h for h in json.loads((run_dir / "trainer_state.json").read_text())["log_history"] if "loss" in h]
    spent = {"full": [0.0, 0], "pruned": [0.0, 0]}
    for before, after in zip(history, history[1:]):
        if "train_seconds" not in after or before.get("pruning_pass") != after.get("pruning_pass"):
            continue
        kind = "pruned" if after.get("pruned_share", 0) > 0 else "full"
        spent[kind][0] += after["train_seconds"] - before["train_seconds"]
        spent[kind][1] += after["step"] - before["step"]
    return {f"ms_per_step_{kind}": 1000 * s / n if n else None for kind, (s, n) in spent.items()}


def pruned_by_pass(run_dir: Path) -> list[float]:
    """The share of the data each pass of a pruned run dropped (from its training logs); empty for other runs."""
    history = json.loads((run_dir / "trainer_state.json").read_text())["log_history"]
    return next((h["pruned_share_by_pass"] for h in history if "pruned_share_by_pass" in h), [])


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.mean(known) if known else None


def first_reaching(
    curve: dict[str, Any], target: float, higher_is_better: bool = True
) -> tuple[int | None, float | None]:
    for step, seconds, value in zip(curve["steps"], curve["seconds"], curve["values"]):
        if (value >= target) if higher_is_better else (value <= target):
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
    slack = -0.005 if setting.higher_is_better else 0.005  # half a point worse than the baseline
    targets = {"baseline_minus_0.5pt": baseline_final + slack, "baseline_final": baseline_final}
    rows = {}
    for name, per_seed in curves.items():
        finals = [c["final"] for c in per_seed.values()]
        row = {
            "final_mean": statistics.mean(finals),
            "final_std": statistics.stdev(finals) if len(finals) > 1 else 0.0,
            "train_seconds_mean": statistics.mean(c["train_seconds"] for c in per_seed.values()),
            "train_seconds_std": statistics.stdev([c["train_seconds"] for c in per_seed.values()])
            if len(per_seed) > 1
            else 0.0,
            "train_cpu_seconds_mean": statistics.mean(c.get("train_cpu_seconds") or 0.0 for c in per_seed.values()),
            "train_steps_mean": statistics.mean(c.get("train_steps") or 0 for c in per_seed.values()),
            **{
                key: _mean([c.get(key) for c in per_seed.values()])
                for key in ("ms_per_step_full", "ms_per_step_pruned")
            },
            "pruned_by_pass_mean": [
                statistics.mean(shares) for shares in zip(*(c.get("pruned_by_pass") or [] for c in per_seed.values()))
            ],
            "selection_time_share_mean": statistics.mean(c["selection_time_share"] for c in per_seed.values()),
        }
        for target_name, target in targets.items():
            hits = [first_reaching(c, target, setting.higher_is_better) for c in per_seed.values()]
            reached = [h for h in hits if h[0] is not None]
            row[target_name] = {
                "reached": f"{len(reached)}/{len(hits)}",
                "steps_mean": statistics.mean(h[0] for h in reached) if reached else None,
                "seconds_mean": statistics.mean(h[1] for h in reached) if reached else None,
            }
        rows[name] = row
    return {"metric": setting.metric, "targets": targets, "rows": rows, "curves": curves}


def run_grid(
    kind: str,
    setting_name: str,
    *,
    seeds: list[int],
    ks: list[float] | None = None,
    only: list[str] | None = None,
    quick: bool = False,
    tag: str = "",
    model_name_or_path: str | None = None,
    command: str = "",
    runs_dir: Path = BENCH_RUNS,
    results_dir: Path = RESULTS,
) -> Path:
    """Run every variant x seed of a grid that has not run yet, then summarise it into a result file."""
    setting = SETTINGS[setting_name]
    variants = select_variants(kind, setting, ks, only)
    if model_name_or_path:
        setting = Setting(**{**vars(setting), "argv": [*setting.argv, "--model_name_or_path", model_name_or_path]})
    base_name = setting_name + ("_quick" if quick else "")
    name = base_name + (f"_{tag}" if tag else "")
    # shared by every tag, so a run is never repeated; the compressed-schedule variants share the tta folder and
    # so its full-length baseline
    root = runs_dir / base_name / ("tta" if kind == "short" else kind)
    for seed in seeds:
        for variant, extra in variants.items():
            run_one(setting, variant, extra, seed, quick, root)
    summary = summarize(setting_name, variants, seeds, root)
    payload = {"seeds": seeds, "variants": variants, **summary}
    path = save_result(kind, name, payload, command, results_dir)
    print_table(summary)
    return path


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
