"""
Active-learning benchmark: acquisition criteria compared by accuracy per label, outside the test suite.

    python -m tasks.active_bench run fmnist --criteria mms,breaking_ties,entropy,least_confidence,random --seeds 0,1,2
    python -m tasks.active_bench report fmnist          # -> results/active/active_fmnist.json and .png

`run` calls `tasks.active` once per (seed, criterion), seeds outermost, so a grid cut short still holds
whole seeds; a run whose `active.json` exists is skipped, so an interrupted grid resumes. `report` gives,
per criterion, the learning curve (mean +- std over seeds), its area (the trapezoid mean of accuracy over
the label range) and the labels it needs to reach random's final mean accuracy (linear interpolation between
rounds on the mean curve; None when its curve never gets there).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np

from hf_margin import RANKING_CRITERIA
from tasks import paths

RESULTS = paths.RESULTS / "active"  # apart from the tasks.bench results that BENCHMARKS.md renders
RUNS = paths.RUNS / "active"

# Every setting: 100 random initial labels, +100 per round, 5 rounds, each round trained from the same
# initial weights; the rest are the recipes' own flags.
_LOOP = ["--initial_labels", "100", "--query_size", "100", "--rounds", "5", "--round_start", "initial"]
_QUIET = ["--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true", "--logging_steps", "1000"]
SETTINGS: dict[str, list[str]] = {
    # Fashion-MNIST, 10 classes: a 10,000-image pool, 5,000 eval images, a small CNN (cifar_cnn: 32/64 channels,
    # 128 hidden units), 30 sample epochs per round at batch 32 (ceil(100 / 32) x 30 = 120 AdamW steps with
    # 100 labels, 19 x 30 = 570 with 600).
    "fmnist": [
        "--recipe", "image", "--dataset_name", "fashion_mnist", "--max_train_samples", "10000",
        "--max_eval_samples", "5000", "--augmentation", "none", "--model_name_or_path", "cifar_cnn",
        "--train_sample_epochs", "30", "--per_device_train_batch_size", "32", "--per_device_eval_batch_size", "500",
        "--learning_rate", "3e-3", *_LOOP, *_QUIET,
    ],
    # SST-2, 2 classes, pretrained MiniLM with a new head. Smaller than the vision grid, because a MiniLM
    # forward costs far more than the small CNN's on this CPU: the first 1,000 train sentences as the pool,
    # the first 400 dev sentences for eval, 50 initial labels + 50 per round for 4 rounds, 3 epochs per
    # round at batch 8 (ceil(50 / 8) x 3 = 21 steps with 50 labels, 96 with 250).
    "sst2": [
        "--recipe", "glue", "--task_name", "sst2", "--data_dir", str(paths.SHARED_DATA / "glue"),
        "--max_train_samples", "1000", "--max_eval_samples", "400", "--max_seq_length", "64",
        "--num_train_epochs", "3", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "64",
        "--learning_rate", "1e-4", "--warmup_steps", "0.1",
        "--initial_labels", "50", "--query_size", "50", "--rounds", "4", "--round_start", "initial", *_QUIET,
    ],
    # MRPC, 2 classes: the same loop on sentence pairs (about four times the tokens of an SST-2 sentence).
    "mrpc": [
        "--recipe", "glue", "--task_name", "mrpc", "--data_dir", str(paths.SHARED_DATA / "glue"),
        "--max_train_samples", "1000", "--max_seq_length", "128", "--num_train_epochs", "3",
        "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "64", "--learning_rate", "1e-4",
        "--warmup_steps", "0.1",
        "--initial_labels", "50", "--query_size", "50", "--rounds", "4", "--round_start", "initial", *_QUIET,
    ],
}  # fmt: skip


def run_grid(setting: str, criteria: list[str], seeds: list[int], extra: list[str], threads: int = 1) -> None:
    """Each (seed, criterion) of the grid through `tasks.active.main`, skipping those already done."""
    import torch

    from tasks.active import main as active_main

    torch.set_num_threads(threads)
    for seed in seeds:
        for criterion in criteria:
            out = RUNS / setting / f"{criterion}_seed{seed}"
            if (out / "active.json").is_file():
                continue
            argv = [
                *SETTINGS[setting],
                *extra,
                "--criterion",
                criterion,
                "--seed",
                str(seed),
                "--output_dir",
                str(out),
            ]
            print(f"active_bench: {setting} {criterion} seed {seed}", flush=True)
            active_main(argv)


def labels_to_reach(labels: list[float], curve: list[float], target: float) -> float | None:
    """The label count at which `curve` first reaches `target`, interpolated linearly between rounds."""
    for i, value in enumerate(curve):
        if value >= target:
            if i == 0:
                return float(labels[0])
            x0, x1, y0, y1 = labels[i - 1], labels[i], curve[i - 1], curve[i]
            return float(x0 + (target - y0) * (x1 - x0) / (y1 - y0))
    return None


def area_under_curve(labels: list[float], curve: list[float]) -> float:
    """Trapezoid area under accuracy vs labels, divided by the label range: the curve's mean accuracy."""
    x, y = np.asarray(labels, dtype=float), np.asarray(curve, dtype=float)
    return float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)) / (x[-1] - x[0]))


def summarize(setting: str) -> dict[str, Any]:
    """Mean +- std curves, areas and labels-to-random's-final per criterion, from the runs of `setting`."""
    runs: dict[str, list[dict]] = {}
    for path in sorted((RUNS / setting).glob("*/active.json")):
        record = json.loads(path.read_text())
        runs.setdefault(record["criterion"], []).append(record)
    if not runs:
        raise FileNotFoundError(f"no runs under {RUNS / setting}; run `python -m tasks.active_bench run {setting}`.")
    summary: dict[str, Any] = {"setting": setting, "command": SETTINGS[setting], "criteria": {}}
    for criterion in [c for c in RANKING_CRITERIA if c in runs]:
        records = sorted(runs[criterion], key=lambda r: r["seed"])
        curves = np.array([r["accuracy"] for r in records])
        areas = [area_under_curve(r["labels"], r["accuracy"]) for r in records]
        summary["criteria"][criterion] = {
            "seeds": [r["seed"] for r in records],
            "labels": records[0]["labels"],
            "mean": curves.mean(0).tolist(),
            "std": curves.std(0, ddof=1).tolist() if len(records) > 1 else [0.0] * curves.shape[1],
            "per_seed": curves.tolist(),
            "area_mean": float(np.mean(areas)),
            "area_std": float(np.std(areas, ddof=1)) if len(areas) > 1 else 0.0,
        }
    _paired_differences(summary)
    random = summary["criteria"].get("random")
    if random is not None:
        target = random["mean"][-1]
        summary["random_final_mean"] = target
        for stats in summary["criteria"].values():
            stats["labels_to_random_final"] = labels_to_reach(stats["labels"], stats["mean"], target)
    return summary


def _paired_differences(summary: dict[str, Any]) -> None:
    """Each criterion's final accuracy and area minus random's and breaking_ties', seed by seed (same initial set)."""
    criteria = summary["criteria"]
    for baseline in ("random", "breaking_ties"):
        if baseline not in criteria:
            continue
        base = dict(zip(criteria[baseline]["seeds"], criteria[baseline]["per_seed"], strict=True))
        for stats in criteria.values():
            pairs = [
                (curve, base[seed])
                for seed, curve in zip(stats["seeds"], stats["per_seed"], strict=True)
                if seed in base
            ]
            if not pairs:
                continue
            labels = stats["labels"]
            final = [c[-1] - b[-1] for c, b in pairs]
            area = [area_under_curve(labels, c) - area_under_curve(labels, b) for c, b in pairs]
            stats[f"vs_{baseline}"] = {
                "seeds": len(pairs),
                "final_mean": float(np.mean(final)),
                "final_std": float(np.std(final, ddof=1)) if len(pairs) > 1 else 0.0,
                "area_mean": float(np.mean(area)),
                "area_std": float(np.std(area, ddof=1)) if len(pairs) > 1 else 0.0,
            }


def markdown_table(summary: dict[str, Any]) -> str:
    """The summary as a markdown table: accuracy per label count (mean +- std), area, labels to random's final."""
    criteria = summary["criteria"]
    labels = next(iter(criteria.values()))["labels"]
    header = ["criterion", "seeds", *(f"{n} labels" for n in labels), "area (mean acc.)", "labels to random's final"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, stats in criteria.items():
        cells = [f"{100 * m:.1f} +- {100 * s:.1f}" for m, s in zip(stats["mean"], stats["std"], strict=True)]
        reach = stats.get("labels_to_random_final")
        reach_text = (
            "-" if "labels_to_random_final" not in stats else ("not reached" if reach is None else f"{reach:.0f}")
        )
        area = f"{100 * stats['area_mean']:.1f} +- {100 * stats['area_std']:.1f}"
        lines.append(f"| {name} | {len(stats['seeds'])} | " + " | ".join(cells) + f" | {area} | {reach_text} |")
    lines += ["", "Paired by seed (same initial labels), in accuracy points: criterion minus baseline.", ""]
    lines += ["| criterion | final vs random | area vs random | final vs breaking_ties | area vs breaking_ties |"]
    lines += ["|---|---|---|---|---|"]
    for name, stats in criteria.items():
        cells = []
        for baseline in ("random", "breaking_ties"):
            diff = stats.get(f"vs_{baseline}")
            for key in ("final", "area"):
                cells.append(
                    "-" if diff is None else f"{100 * diff[key + '_mean']:+.1f} +- {100 * diff[key + '_std']:.1f}"
                )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(setting: str) -> dict[str, Any]:
    """Write `results/active/active_<setting>.json` and `.png`; print the markdown table."""
    from tasks.active import plot_learning_curves

    summary = summarize(setting)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"active_{setting}.json").write_text(json.dumps(summary, indent=1))
    curves = {
        f"{name} (n={len(s['seeds'])})": (s["labels"], s["mean"], s["std"]) for name, s in summary["criteria"].items()
    }
    title = f"active learning, {setting}: accuracy vs labels (mean +- std)"
    plot_learning_curves(curves, RESULTS / f"active_{setting}.png", title)
    print(markdown_table(summary))
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tasks.active_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["run", "report"])
    parser.add_argument("setting", choices=list(SETTINGS))
    parser.add_argument("--criteria", default=",".join(RANKING_CRITERIA), help="Comma-separated criteria to run.")
    parser.add_argument("--seeds", default="0,1,2", help="Comma-separated seeds (--seed of each run).")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads. On a CPU shared with other jobs one thread avoids the spin-waits of an oversubscribed "
        "thread pool, which made small-model steps several times slower.",
    )
    args, extra = parser.parse_known_args(argv)
    if args.command == "report":
        report(args.setting)
        return
    criteria = [c for c in args.criteria.split(",") if c]
    unknown = [c for c in criteria if c not in RANKING_CRITERIA]
    if unknown:
        raise ValueError(f"--criteria: {unknown} are not ranking criteria; choose from {RANKING_CRITERIA}.")
    run_grid(args.setting, criteria, [int(s) for s in args.seeds.split(",")], extra, args.threads)


if __name__ == "__main__":
    main()
