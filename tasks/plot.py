"""Plot runs side by side: eval metric against optimizer steps and against training wall-clock seconds
(scoring included, evaluation excluded), and the mean-MMS trace (`mms_train_mean`: the mean minimal margin
score of the samples each step trained on, measured in their training forward, the same quantity for every run).

    python -m tasks.plot RUN_DIR [RUN_DIR ...] --out FILE.png [--metric eval_accuracy]

Each RUN_DIR is an `output_dir` of `tasks.glue` or `tasks.image`: it holds `trainer_state.json` (the log
history) and `metrics.json` (the settings used for the label).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

from tasks.common import describe_settings

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# Preferred eval metric per task family, first one present wins.
METRIC_PREFERENCE = ("eval_accuracy", "eval_matthews_correlation", "eval_f1", "eval_pearson")


@dataclass
class RunCurves:
    label: str
    metric: str
    steps: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    mms_steps: list[int] = field(default_factory=list)
    mms_values: list[float] = field(default_factory=list)
    mms_key: str = "mms_train_mean"
    total_steps: int | None = None  # optimizer steps of the run, and its logging interval: a run shorter than
    logging_steps: int | float | None = None  # logging_steps logs no MMS, and the plot says why


def run_label(run_dir: Path, settings: dict) -> str:
    """
    What the run is and which one: `mms: MMS k=4, seed 0`, `r2: MMR 1e-05->0.001, seed 1`, `stock, seed 0`
    (the folder's name first unless it says the same, so two runs with the same settings can be told apart).
    """
    if not settings:
        return run_dir.name
    described = describe_settings(settings)
    label = described if run_dir.name.lower() == described.lower() else f"{run_dir.name}: {described}"
    return label + (f", seed {settings['seed']}" if "seed" in settings else "")


def load_run(run_dir: Path, metric: str | None = None) -> RunCurves:
    state_file = run_dir / "trainer_state.json"
    if not state_file.is_file():
        raise FileNotFoundError(f"{run_dir} has no trainer_state.json: is it the output_dir of a finished run?")
    state = json.loads(state_file.read_text())
    history = state["log_history"]
    metrics_file = run_dir / "metrics.json"
    settings = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    if metric is None:
        present = {k for h in history for k in h}
        metric = next((m for m in METRIC_PREFERENCE if m in present), None)
        if metric is None:
            raise ValueError(f"{run_dir}: no eval metric among {METRIC_PREFERENCE} in the log history.")
    curves = RunCurves(label=run_label(run_dir, settings), metric=metric)
    curves.total_steps = state.get("global_step")
    curves.logging_steps = state.get("logging_steps")
    if not any(curves.mms_key in h for h in history):  # runs without a head found have no trace
        curves.mms_key = "mms_pool_mean"
    last_seconds = 0.0
    for entry in history:
        last_seconds = entry.get("train_seconds", last_seconds)
        if metric in entry:
            curves.steps.append(entry["step"])
            curves.seconds.append(last_seconds)
            curves.values.append(entry[metric])
        if curves.mms_key in entry:
            curves.mms_steps.append(entry["step"])
            curves.mms_values.append(entry[curves.mms_key])
    return curves


def missing_trace_reason(run: RunCurves) -> str:
    """Why a run has no mean-MMS values in its log history."""
    steps, every = run.total_steps, run.logging_steps
    if steps is not None and every and steps < every:
        return f"{steps} steps, fewer than logging_steps={every} (MMS is logged with the training loss)"
    return "no head found, or the run logged no training loss"


def plot_runs(runs: list[RunCurves], out: Path, title: str | None = None) -> Path:
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    no_trace = []
    for run in runs:
        axes[0].plot(run.steps, run.values, marker="o", ms=3, label=run.label)
        axes[1].plot(run.seconds, run.values, marker="o", ms=3, label=run.label)
        if run.mms_values:
            axes[2].plot(
                run.mms_steps, run.mms_values, marker="o" if len(run.mms_values) == 1 else "", label=run.label
            )
        else:
            no_trace.append(f"{run.label}: {missing_trace_reason(run)}")
    if no_trace:  # say why the panel is (partly) empty rather than leave it blank
        axes[2].text(0.02, 0.98, "no MMS logged for\n" + "\n".join(no_trace), transform=axes[2].transAxes,
                     va="top", fontsize=7, wrap=True)  # fmt: skip
    metric = runs[0].metric if runs else ""
    axes[0].set(xlabel="optimizer steps", ylabel=metric, title=f"{metric} vs steps")
    axes[1].set(xlabel="training wall-clock seconds (scoring included)", ylabel=metric, title=f"{metric} vs time")
    axes[2].set(xlabel="optimizer steps", ylabel="mean MMS of the trained samples", title="mean-MMS trace")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, help="output_dir of each run to compare")
    parser.add_argument("--out", type=Path, required=True, help="PNG file to write")
    parser.add_argument("--metric", default=None, help=f"eval metric to plot (default: first of {METRIC_PREFERENCE})")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    runs = [load_run(d, args.metric) for d in args.run_dirs]
    out = plot_runs(runs, args.out, args.title)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
