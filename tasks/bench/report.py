"""Render BENCHMARKS.md: the hand-written text of `results/BENCHMARKS.in.md` with each result's tables and
plots, generated from the raw JSON in `results/` (plots drawn by `tasks.plot` from the stored curves).

In the template, a line `<!-- result: STEM -->` stands for the generated section of `results/STEM.json`; a
result that the template does not place is appended at the end, so nothing measured is left out.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tasks.bench.registry import TOOLS, plotted
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
    "prune": "Epoch pruning",
    "loader": "The train loader alone",
    "lm_step": "A causal LM's step, stock against scored",
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
    if kind in TOOLS:  # one result per device, not per setting
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


def loader_section(result: dict[str, Any]) -> list[str]:
    lines = [_title(result), "", *_header(result)]
    lines += [
        f"Batch {result['batch']}, {result['threads']} torch threads; median of the repeats.",
        "",
        "| loader | images per second | repeats |",
        "|---|---|---|",
    ]
    for name, row in result["rows"].items():
        repeats = ", ".join(f"{rate:,.0f}" for rate in row["repeats"])
        lines.append(f"| {name} | {row['images_per_second']:,.0f} | {repeats} |")
    return [*lines, ""]


def lm_step_section(result: dict[str, Any]) -> list[str]:
    lines = [_title(result), "", *_header(result)]
    lines += [
        f"Batch {result['batch']}, {result['threads']} torch threads; median step of {result['steps']} after "
        f"{result['warmup']} warm-up steps, median over {len(next(iter(result['rows'].values()))['repeats'])} "
        "interleaved repeats, each in its own process; memory: the highest peak of the repeats. Ratios against the "
        "stock step of the same trainer class (`Trainer`, or TRL's `SFTTrainer` for the sft rows).",
        "",
        "| variant | ms per step | / stock | peak memory MB | / stock | training's peak above start MB | / stock |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in result["rows"].items():
        lines.append(
            f"| {name} | {1000 * row['step_s']:.1f} | {row['step_over_stock']:.3f} | {row['peak_mb']:.0f} | "
            f"{row['peak_over_stock']:.3f} | {row['training_peak_mb']:.0f} | {row['training_peak_over_stock']:.3f} |"
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


def _plot(result: dict[str, Any], path: Path, plots: bool) -> list[str]:
    """The first seed's curves drawn beside the result file, and the markdown line that shows them."""
    seed = str(result["seeds"][0])
    runs = _curves_to_runs(result, seed)
    if not runs:
        return []
    png = path.with_suffix(".png")
    if plots:
        plot_runs(runs, png, title=f"{result['setting']} on {result['device']} (seed {seed})")
    shown = png.relative_to(ROOT) if png.is_relative_to(ROOT) else png
    return ["", f"![{result['setting']}]({shown})"]


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
    return [*lines, *_plot(result, path, plots), ""]


def prune_section(result: dict[str, Any], path: Path, plots: bool = True) -> list[str]:
    """Pruned runs against the baseline and the equal-step control: cost ratios, accuracy, time to the target."""
    lines = [_title(result), "", *_header(result)]
    rows, target = result["rows"], result["targets"]["baseline_final"]
    base = rows["baseline"]
    base_hit = base["baseline_final"]["seconds_mean"]
    lines += [
        f"Seeds {result['seeds']}. Metric `{result['metric']}`; target: the baseline's mean final value "
        f"{target:.4f}. `x baseline` divides a run's training time (wall, and process CPU, evaluation excluded) by "
        "the baseline's, same session. `s to target`: mean over the seeds that reached it (reached/seeds); "
        "`x own` divides it by the baseline's own time to the same target. `ms/step` over the full passes and over "
        "the pruned ones (between training logs of one pass).",
        "",
        "| run | steps | final (mean +- std) | train s (mean +- std) | x baseline | CPU x baseline | s to target | "
        "x own | ms/step full | ms/step pruned |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        hit = row["baseline_final"]
        own = None if hit["seconds_mean"] is None or not base_hit else hit["seconds_mean"] / base_hit
        cpu = row.get("train_cpu_seconds_mean") or 0.0
        cpu_ratio = cpu / base["train_cpu_seconds_mean"] if cpu and base.get("train_cpu_seconds_mean") else None
        lines.append(
            f"| {name} | {row.get('train_steps_mean', 0):.0f} | {row['final_mean']:.4f} +- {row['final_std']:.4f} | "
            f"{row['train_seconds_mean']:.1f} +- {row.get('train_seconds_std', 0.0):.1f} | "
            f"{row['train_seconds_mean'] / base['train_seconds_mean']:.2f} | {_fmt(cpu_ratio, '.2f')} | "
            f"{_fmt(hit['seconds_mean'])} ({hit['reached']}) | {_fmt(own, '.2f')} | "
            f"{_fmt(row.get('ms_per_step_full'))} | {_fmt(row.get('ms_per_step_pruned'))} |"
        )
    return [*lines, *_plot(result, path, plots), *_dropped_plot(result, path, plots), ""]


def _dropped_plot(result: dict[str, Any], path: Path, plots: bool) -> list[str]:
    """The share of the data each pass dropped, the mean over the seeds, one line per pruned run."""
    rows = result["rows"].items()
    shares = {name: row["pruned_by_pass_mean"] for name, row in rows if row.get("pruned_by_pass_mean")}
    if not shares:
        return []
    png = path.with_name(path.stem + "_dropped.png")
    if plots:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        for name, values in shares.items():
            ax.plot(range(len(values)), values, marker=".", label=name)
        ax.set_xlabel("pass")
        ax.set_ylabel("share of the data dropped")
        ax.set_ylim(0, 1)
        ax.set_title(f"{result['setting']}: dropped per pass (mean of {len(result['seeds'])} seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(png, dpi=110)
        plt.close(fig)
    shown = png.relative_to(ROOT) if png.is_relative_to(ROOT) else png
    return ["", f"![{result['setting']}: dropped per pass]({shown})"]


def result_section(result: dict[str, Any], path: Path, plots: bool = True) -> list[str]:
    """The generated block of one result file, delimited so that a reader knows not to edit it by hand."""
    kind = result["benchmark"]
    if kind == "overhead":
        body = overhead_section(result)
    elif kind == "scoring":
        body = scoring_section(result)
    elif kind == "loader":
        body = loader_section(result)
    elif kind == "lm_step":
        body = lm_step_section(result)
    elif kind == "prune":
        body = prune_section(result, path, plots)
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
