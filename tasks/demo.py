"""`make demo`: on CPU, offline, in under a minute, train a small timm model (the CIFAR ResNet-20 through
`TimmWrapperForImageClassification`) on scikit-learn's digits five ways: with the same number of optimizer
steps, stock training, MMS selective sampling (k=4) and MMR regularization (alpha ramped); then margin epoch
pruning over as many passes, which takes fewer steps, and its control, stock training for that many steps (the
schedule compressed to fit). Prints one line per evaluation while it trains, then a table, and writes a plot
(accuracy vs steps, vs seconds, and the mean-MMS trace).

    python -m tasks.demo [--output_dir runs/demo] [--max_steps 300]
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from tasks.bench.registry import PRUNING_LEVELS
from tasks.image import main as train_image
from tasks.image_data import load_digits_split
from tasks.plot import load_run, plot_runs

# run label -> (its output folder under --output_dir, its flags)
RUNS: dict[str, tuple[str, list[str]]] = {
    "stock": ("stock", ["--selection", "none"]),
    "MMS k=4": ("mms", ["--selection", "mms", "--selection_oversample", "4"]),
    "MMR ramp": ("mmr", ["--mmr_alpha", "1e-5", "--mmr_alpha_end", "1e-3"]),  # alpha 1e-5 -> 1e-3 over the run
}
# epoch pruning at the benchmarks' default level: a pruned pass keeps the hardest 20% and a quarter of the rest
HARD, RATIO = PRUNING_LEVELS[""]
PRUNED = ["--pruning", "margin", "--pruning_hard_fraction", str(HARD), "--pruning_ratio", str(RATIO)]
BATCH = 64


class EvalLines(TrainerCallback):
    """One line per evaluation (step, accuracy, wall seconds so far) instead of a progress bar or log dicts."""

    def __init__(self, label: str):
        self.label = label
        self.start = time.perf_counter()
        self.last_step = -1

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if not state.is_world_process_zero or state.global_step == self.last_step:
            return  # the recipe's final evaluation repeats the one at the last step
        self.last_step = state.global_step
        accuracy = (metrics or {}).get("eval_accuracy", float("nan"))
        print(
            f"  {self.label:<9} step {state.global_step:>4}/{state.max_steps}  eval_accuracy {accuracy:.4f}  "
            f"{time.perf_counter() - self.start:5.1f} s",
            flush=True,
        )


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", type=Path, default=Path("runs/demo"))
    parser.add_argument("--max_steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    # the Trainer pins memory by default, which means nothing on a CPU-only machine: keep the output to the runs
    warnings.filterwarnings("ignore", message="'pin_memory' argument is set as true but no accelerator")

    common = [
        "--dataset_name", "digits",  # 1,437 train / 360 eval 8x8 images, shipped with scikit-learn
        "--model_name_or_path", "cifar_resnet20",
        "--per_device_train_batch_size", str(BATCH),  # 300 steps x 64 = 13.4 passes over the 1,437 images
        "--optim", "sgd", "--optim_args", "momentum=0.9", "--learning_rate", "0.05", "--weight_decay", "1e-4",
        "--lr_scheduler_type", "cosine",
        "--eval_strategy", "steps", "--eval_steps", str(max(args.max_steps // 12, 1)),
        "--logging_steps", "10", "--save_strategy", "no", "--report_to", "none",
        "--seed", str(args.seed),
    ]  # fmt: skip
    # pruning plans whole passes: as many as the step-based runs make (at least 3, so that one pass is pruned)
    train_size = len(load_digits_split("train")[1])
    passes = max(round(args.max_steps * BATCH / train_size), 3)
    steps = ["--max_steps", str(args.max_steps)]
    plan = [(label, folder, [*flags, *steps]) for label, (folder, flags) in RUNS.items()]
    plan.append(("pruned", "pruned", [*PRUNED, "--num_train_epochs", str(passes)]))
    records, run_dirs = [], []

    def train(label: str, folder: str, flags: list[str]) -> None:
        out = args.output_dir / folder
        print(f"\n[{len(records) + 1}/{len(plan) + 1}] {label} ({' '.join(flags)}) -> {out}", flush=True)
        records.append((label, train_image([*common, *flags, "--output_dir", str(out)], progress=EvalLines(label))))
        run_dirs.append(out)

    start = time.perf_counter()
    for label, folder, flags in plan:
        train(label, folder, flags)
    train("short", "short", ["--max_steps", str(records[-1][1]["train_steps"])])  # stock, the pruned run's steps

    # "train s" is each record's train_seconds (training wall time, evaluation excluded), as in the lines above
    print(f"\n{'run':<10} {'eval accuracy':>13} {'steps':>6} {'train s':>8} {'scoring share':>14}")
    for label, record in records:
        share = record.get("selection_time_share")
        print(
            f"{label:<10} {record['eval_accuracy']:>13.4f} {record['train_steps']:>6} {record['train_seconds']:>8.1f} "
            f"{'-' if share is None else f'{100 * share:.1f}%':>14}"
        )
    pruned, short = records[-2][1], records[-1][1]
    print(
        f"\npruned: {pruned['train_steps']} optimizer steps for {passes} passes, where stock takes "
        f"{passes * math.ceil(train_size / BATCH)}; stock for the same {short['train_steps']} steps ends at "
        f"{short['eval_accuracy']:.4f}, pruned at {pruned['eval_accuracy']:.4f}"
    )
    png = plot_runs([load_run(d) for d in run_dirs], args.output_dir / "demo.png", title="digits, CIFAR ResNet-20")
    print(f"\nplot: {png} (demo took {time.perf_counter() - start:.0f} s)")
    return [record for _, record in records]


if __name__ == "__main__":
    main()
