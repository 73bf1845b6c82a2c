"""`make demo`: on CPU, offline, in a few minutes, train a small timm model (the CIFAR ResNet-20 through
`TimmWrapperForImageClassification`) on scikit-learn's digits three ways with the same number of
optimizer steps: stock training (uniform sampling), MMS selective sampling, and MMR regularization.
Prints a table and writes a plot (accuracy vs steps, vs seconds, and the mean-MMS trace).

    python -m tasks.demo [--output_dir runs/demo] [--max_steps 300]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tasks.image import main as train_image
from tasks.plot import load_run, plot_runs

RUNS = {
    "uniform (stock)": ["--selection", "none"],
    "MMS k=4": ["--selection", "mms", "--selection_oversample", "4"],
    "MMR 1e-5->1e-3": ["--mmr_alpha", "1e-5", "--mmr_alpha_end", "1e-3"],
}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", type=Path, default=Path("runs/demo"))
    parser.add_argument("--max_steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    common = [
        "--dataset_name", "digits",  # 1,437 train / 360 eval 8x8 images, shipped with scikit-learn
        "--model_name_or_path", "cifar_resnet20",
        "--per_device_train_batch_size", "64",  # 300 steps x 64 = 13.4 passes over the 1,437 images
        "--max_steps", str(args.max_steps),
        "--optim", "sgd", "--optim_args", "momentum=0.9", "--learning_rate", "0.05", "--weight_decay", "1e-4",
        "--lr_scheduler_type", "cosine",
        "--eval_strategy", "steps", "--eval_steps", str(max(args.max_steps // 12, 1)),
        "--logging_steps", "10", "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true",
        "--seed", str(args.seed),
    ]  # fmt: skip
    records, run_dirs = [], []
    for name, flags in RUNS.items():
        out = args.output_dir / name.split()[0].lower()
        print(f"\n=== {name} -> {out}", flush=True)
        records.append((name, train_image([*common, *flags, "--output_dir", str(out)])))
        run_dirs.append(out)

    print(f"\n{'run':<18} {'eval accuracy':>13} {'steps':>6} {'train s':>8} {'scoring share':>14}")
    for name, record in records:
        share = record.get("selection_time_share")
        print(
            f"{name:<18} {record['eval_accuracy']:>13.4f} {record['train_steps']:>6} {record['train_seconds']:>8.1f} "
            f"{'-' if share is None else f'{100 * share:.1f}%':>14}"
        )
    png = plot_runs([load_run(d) for d in run_dirs], args.output_dir / "demo.png", title="digits, CIFAR ResNet-20")
    print(f"\nplot: {png}")
    return [record for _, record in records]


if __name__ == "__main__":
    main()
