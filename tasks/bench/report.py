"""Render BENCHMARKS.md: the hand-written text of `results/BENCHMARKS.in.md` with each result's tables and
plots, generated from the raw JSON in `results/` (plots drawn by `tasks.plot` from the stored curves).

In the template, a line `<!-- result: STEM -->` stands for the generated section of `results/STEM.json`; a
result that the template does not place is appended at the end, so nothing measured is left out.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tasks.bench.registry import plotted
from tasks.bench.results import load_results
from tasks.paths import BENCHMARKS_MD, RESULTS, ROOT
from tasks.plot import RunCurves, plot_runs

TEMPLATE_NAME = "BENCHMARKS.in.md"
PLACEHOLDER = re.compile(r"^<!-- result: (\S+) -->$")
TITLES = {
    "overhead": "Overhead",
    "scoring": "The scoring forward",
    "tta": "Time to accuracy",
    "mmr": "MMR accuracy",
    "early": "Early learning-rate drop",
    "short": "Compressed schedule",
}


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


def _title(result: dict[str, Any]) -> str:
    kind = result["benchmark"]
    if kind in ("overhead", "scoring"):
        return f"#### {TITLES[kind]} on {result['device']}"
    return f"#### {TITLES[kind]}: {result['setting']} on {result['device']}"


def overhead_section(result: dict[str, Any]) -> list[str]:
    lines = [_title(result), "", *_header(result)]
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
    lines = [_title(result), "", *_header(result)]
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
    for name, per_seed in result["curves"].items():
        if not plotted(name) or seed not in per_seed:
            continue
        curve = per_seed[seed]
        run = RunCurves(label=name, metric=result["metric"], steps=curve["steps"], seconds=curve["seconds"])
        run.values = curve["values"]
        run.mms_steps = [step for step, _, _ in curve["mms_trace"]]
        run.mms_values = [value for _, _, value in curve["mms_trace"]]
        run.mms_key = curve["mms_trace"][0][1] if curve["mms_trace"] else run.mms_key
        runs.append(run)
    return runs


def grid_section(result: dict[str, Any], path: Path, plots: bool = True) -> list[str]:
    lines = [_title(result), "", *_header(result)]
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
        "takes to deliver its final accuracy).",
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
        if plots:
            plot_runs(runs, png, title=f"{result['setting']} on {result['device']} (seed {seed})")
        shown = png.relative_to(ROOT) if png.is_relative_to(ROOT) else png
        lines += ["", f"![{result['setting']}]({shown})"]
    return [*lines, ""]


def result_section(result: dict[str, Any], path: Path, plots: bool = True) -> list[str]:
    """The generated block of one result file, delimited so that a reader knows not to edit it by hand."""
    kind = result["benchmark"]
    if kind == "overhead":
        body = overhead_section(result)
    elif kind == "scoring":
        body = scoring_section(result)
    else:
        body = grid_section(result, path, plots)
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    return [f"<!-- generated from {shown} by `python -m tasks.bench report` -->", *body, "<!-- end generated -->"]


def render_report(
    results: Path = RESULTS, out: Path = BENCHMARKS_MD, template: Path | None = None, plots: bool = True
) -> Path:
    """
    Write `out` from `template` (default: `results/BENCHMARKS.in.md`; without one, a bare list of every result),
    replacing each `<!-- result: STEM -->` line by the generated section of `results/STEM.json`. With `plots`
    off, the plots already in `results` are linked but not drawn again.
    """
    template = results / TEMPLATE_NAME if template is None else template
    found = load_results(results)
    text = template.read_text() if template.is_file() else "# Benchmarks\n"
    lines, placed = [], []
    for line in text.rstrip("\n").split("\n"):
        match = PLACEHOLDER.match(line.strip())
        if not match:
            lines.append(line)
            continue
        stem = match.group(1)
        if stem not in found:
            raise ValueError(f"{template}: `<!-- result: {stem} -->` names no file {stem}.json in {results}.")
        lines += result_section(found[stem], results / f"{stem}.json", plots)
        placed.append(stem)
    rest = [stem for stem in found if stem not in placed]
    if rest:
        lines += ["", "## Other results", "", "Results that the text above does not discuss yet.", ""]
        for stem in rest:
            lines += [*result_section(found[stem], results / f"{stem}.json", plots), ""]
    out.write_text("\n".join(lines).rstrip("\n") + "\n")
    print(f"wrote {out}")
    return out
