"""Render BENCHMARKS.md from the raw results in tasks/results/*.json (and the hand-written
tasks/results/analysis.md), with plots drawn by `tasks.plot` from the stored curves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tasks.plot import RunCurves, plot_runs

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "tasks" / "results"
PLOTTED = (
    "baseline",
    "uniform_k2",
    "uniform_k4",
    "uniform_k10",
    "mms_k2",
    "mms_k4",
    "mms_k10",
    "loss_k4",
    "entropy_k4",
    "mmr_const",
    "mmr_ramp",
    "mms_k2_bf16",
    "mms_k4_bf16",
    "mms_k2_bf16_until50",
    "mms_k2_bf16_notrim",
    "mms_k2_bf16_chunk32",
    "loss_k2_bf16_chunk32",
    "entropy_k2_bf16_chunk32",
    "mms_k4_bf16_chunk32",
    "loss_k4_bf16_chunk32",
    "mms_k10_bf16_chunk32",
    "loss_k10_bf16_chunk32",
    "entropy_k10_bf16_chunk32",
    "mms_k2_bf16_compile",
    "mms_k2_bf16_chunk32_compile",
    "mms_cached",
    "mms_cached_h25_r10",
    "baseline_early_0.4x",
    "baseline_0.6x",
    "mms_cached_0.6x",
    "mms_cached_biased_0.6x",
    "baseline_0.5x",
    "mms_k2_bf16_0.5x",
    "mms_k4_bf16_early_0.4x",
)


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def _header(result: dict[str, Any]) -> list[str]:
    sw = result["software"]
    return [
        f"Device: **{result['device']}**; date {result['date']}; torch {sw['torch']}, transformers "
        f"{sw['transformers']}, timm {sw['timm']}, Python {sw['python']}.",
        f"Command: `{result['command']}`",
        "",
    ]


def overhead_section(result: dict[str, Any]) -> list[str]:
    lines = [f"### Overhead on {result['device']}", "", *_header(result)]
    lines += [
        "| setting | batch | Trainer step (s) | MarginTrainer off / Trainer | MMR on / off | scoring per sample / "
        "train step per sample | break-even step saving k=2 / 4 / 10 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["results"]:
        be = r["break_even_step_saving_at_k"]
        lines.append(
            f"| {r['setting']} | {r['batch']} | {r['stock_step_s']:.4f} | {r['margin_off_over_stock']:.3f} | "
            f"{r['mmr_on_over_off']:.3f} | {r['scoring_per_sample_over_train_per_sample']:.3f} | "
            f"{be['2']:.2f}x / {be['4']:.2f}x / {be['10']:.2f}x |"
        )
    return [*lines, ""]


def scoring_section(result: dict[str, Any]) -> list[str]:
    lines = [f"### The scoring forward on {result['device']}", "", *_header(result)]
    lines += [
        "| pool | variant | ms per pool forward | speed-up vs fp32 eager | first call (compile) s |",
        "|---|---|---|---|---|",
    ]
    for r in result["results"]:
        for variant, row in r["variants"].items():
            lines.append(
                f"| {r['setting']} | {variant} | {1000 * row['seconds']:.1f} | {row['speedup_vs_fp32_eager']:.2f}x | "
                f"{_fmt(row.get('compile_seconds'))} |"
            )
    return [*lines, ""]


def _curves_to_runs(result: dict[str, Any], seed: str) -> list[RunCurves]:
    runs = []
    for name in PLOTTED:
        per_seed = result["curves"].get(name)
        if not per_seed or seed not in per_seed:
            continue
        curve = per_seed[seed]
        run = RunCurves(label=name, metric=result["metric"], steps=curve["steps"], seconds=curve["seconds"])
        run.values = curve["values"]
        run.mms_steps = [step for step, _, _ in curve["mms_trace"]]
        run.mms_values = [value for _, _, value in curve["mms_trace"]]
        run.mms_key = curve["mms_trace"][0][1] if curve["mms_trace"] else run.mms_key
        runs.append(run)
    return runs


def grid_section(result: dict[str, Any], path: Path) -> list[str]:
    kind = result["benchmark"]
    title = {
        "tta": "Time to accuracy",
        "mmr": "MMR accuracy",
        "early": "Early learning-rate drop",
        "short": "Compressed schedule",
    }[kind]
    lines = [f"### {title}: {result['setting']} on {result['device']}", "", *_header(result)]
    if result.get("note"):
        lines += [result["note"], ""]
    targets = result["targets"]
    lines += [
        f"Seeds {result['seeds']}. Metric `{result['metric']}`. Targets from the baseline's mean final value "
        f"{targets['baseline_final']:.4f}: that value, and 0.5 point below it "
        f"({targets['baseline_minus_0.5pt']:.4f}). "
        "Steps and seconds to a target: mean over the seeds that reached it (reached/seeds). Seconds are training "
        "wall-clock with the scoring pass included and evaluation excluded. `s vs baseline` at -0.5pt divides by the "
        "baseline's own seconds to that target; at final, by the baseline's mean training seconds (the time it "
        "takes to deliver its final accuracy): the ratio issue 5's goal is stated in.",
        "",
        "| run | final (mean +- std) | train s | scoring share | steps to -0.5pt | s to -0.5pt | s vs baseline | "
        "steps to final | s to final | s vs baseline |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = result["rows"]["baseline"]
    base_near, base_total = base["baseline_minus_0.5pt"]["seconds_mean"], base["train_seconds_mean"]
    for name, row in result["rows"].items():
        near, final = row["baseline_minus_0.5pt"], row["baseline_final"]
        near_ratio = None if near["seconds_mean"] is None or not base_near else near["seconds_mean"] / base_near
        final_ratio = None if final["seconds_mean"] is None else final["seconds_mean"] / base_total
        lines.append(
            f"| {name} | {row['final_mean']:.4f} +- {row['final_std']:.4f} | {row['train_seconds_mean']:.1f} | "
            f"{100 * row['selection_time_share_mean']:.1f}% | {_fmt(near['steps_mean'], '.0f')} ({near['reached']}) | "
            f"{_fmt(near['seconds_mean'])} | {_fmt(near_ratio, '.2f')} | {_fmt(final['steps_mean'], '.0f')} "
            f"({final['reached']}) | {_fmt(final['seconds_mean'])} | {_fmt(final_ratio, '.2f')} |"
        )
    seed = str(result["seeds"][0])
    runs = _curves_to_runs(result, seed)
    if runs:
        png = path.with_suffix(".png")
        plot_runs(runs, png, title=f"{result['setting']} on {result['device']} (seed {seed})")
        lines += ["", f"![{result['setting']}]({png.relative_to(ROOT) if png.is_relative_to(ROOT) else png})"]
    return [*lines, ""]


def render_report(results: Path = RESULTS, out: Path = ROOT / "BENCHMARKS.md") -> Path:
    sections = {"overhead": [], "scoring": [], "tta": [], "short": [], "early": [], "mmr": []}
    for path in sorted(results.glob("*.json")):
        result = json.loads(path.read_text())
        kind = result["benchmark"]
        if kind == "overhead":
            sections[kind] += overhead_section(result)
        elif kind == "scoring":
            sections[kind] += scoring_section(result)
        else:
            sections[kind] += grid_section(result, path)
    analysis = results / "analysis.md"
    lines = [
        "# Benchmarks",
        "",
        "Every figure below was measured by `python -m tasks.benchmark` (see its `--help`) and is rendered from "
        "the raw JSON in `tasks/results/` by `python -m tasks.benchmark report`. CPU figures come from this "
        "project's 2-core development machine at a small scale, compared as ratios within one run; GPU figures "
        "name their device.",
        "",
    ]
    if analysis.is_file():
        lines += [analysis.read_text().strip(), ""]
    titles = {
        "overhead": "## 1. Overhead",
        "scoring": "## 1b. Cheaper scoring: the pool forward alone (issue 5)",
        "tta": "## 2. Time to accuracy (and 4. the mean-MMS trace)",
        "short": "## 2b. Cheaper selection on a compressed schedule (issue 5)",
        "early": "## 2c. The seeds' early learning-rate drop",
        "mmr": "## 3. MMR accuracy",
    }
    for kind, body in sections.items():
        lines += [titles[kind], ""] + (body or ["Not measured yet.", ""])
    out.write_text("\n".join(lines))
    print(f"wrote {out}")
    return out
