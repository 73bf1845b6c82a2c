"""Causal-LM step cost: what scoring each sequence from the training forward costs a step, in time and in memory.

The `lm_sst2` setting's decoder and data (a 5.0M-parameter Llama from scratch, MiniLM's 30,522-token vocabulary,
batch 32, sequences of up to 64 tokens), trained through `tasks.lm` as its benchmark runs do. Variants: stock
`Trainer`, `MarginTrainer` with every field at its default, pruning by mean token loss and by mean signed token
margin (the learned rule: in the first pass every step scores its whole batch), and the same two through TRL's
`SFTTrainer` (stock, and with `MarginTrainerMixin` pruning by margin). Each variant runs in its own process, so its
peak memory is its own: the peak resident memory during training above the resident memory just before it
(`ru_maxrss`; on a GPU, `torch.cuda.max_memory_allocated`), and the median step time after a warm-up. Repeats are
interleaved (A, B, ..., A, B, ...) so that a drift of the machine hits every variant alike.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from tasks.bench.results import save_result

# name -> (--trainer, stock class?, margin flags)
VARIANTS: dict[str, tuple[str, bool, list[str]]] = {
    "stock": ("trainer", True, []),
    "margin_off": ("trainer", False, []),
    "prune_loss": ("trainer", False, ["--pruning", "loss", "--pruning_rule", "learned"]),
    "prune_margin": ("trainer", False, ["--pruning", "margin", "--pruning_rule", "learned"]),
    "sft_stock": ("sft", True, []),
    "sft_prune_margin": ("sft", False, ["--pruning", "margin", "--pruning_rule", "learned"]),
}
MARK = "[lm_step] "


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def one_variant(name: str, steps: int, warmup: int) -> dict[str, Any]:
    """Train variant `name` for one pass of `warmup + steps + 1` steps in this process; its median step and its peak
    memory."""
    from transformers import Trainer
    from trl import SFTTrainer

    from tasks.bench.overhead import StepTimer
    from tasks.bench.registry import SETTINGS
    from tasks.lm import LMRecipe

    trainer_flag, stock, flags = VARIANTS[name]
    recipe = LMRecipe()
    if stock:
        recipe.trainer_classes = {"trainer": Trainer, "sft": SFTTrainer}
    with tempfile.TemporaryDirectory() as out:
        # one pass of warmup + steps + 1 batches (pruning plans whole passes; its first pass scores every batch)
        samples = str(32 * (warmup + steps + 1))
        argv = [*SETTINGS["lm_sst2"].argv, "--output_dir", out, "--max_train_samples", samples,
                "--num_train_epochs", "1", "--trainer", trainer_flag, "--report_to", "none", "--save_strategy", "no",
                "--eval_strategy", "no", "--logging_steps", "10000", "--disable_tqdm", "true", "--seed", "0",
                *flags]  # fmt: skip
        args, training_args = recipe.parse_args(argv)
        data = recipe.load_data(args, training_args)
        model = recipe.build_model(args, data)
        trainer = recipe.make_trainer(args, training_args, model, data, data.train)
        timer = StepTimer()
        timer.trainer = trainer
        trainer.add_callback(timer)
        gpu = torch.cuda.is_available()
        if gpu:
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        else:
            before = _resident_bytes()
        trainer.train()
        peak = torch.cuda.max_memory_allocated() if gpu else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "step_s": statistics.median(timer.step_seconds[warmup:]),
        "peak_mb": peak / 2**20,
        "training_peak_mb": (peak - before) / 2**20,
        "trainer": type(trainer).__name__,
        "pruning": getattr(trainer, "margin_settings", None) is not None and trainer.margin_settings.pruning,
    }


def run_lm_step(quick: bool = False, results_dir: Path | None = None, repeats: int = 2) -> dict[str, Any]:
    steps, warmup = (4, 2) if quick else (20, 5)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in VARIANTS}
    for _ in range(1 if quick else repeats):
        for name in VARIANTS:
            command = [sys.executable, "-m", "tasks.bench.lm_step", name, str(steps), str(warmup)]
            done = subprocess.run(command, capture_output=True, text=True)
            lines = [line for line in done.stdout.splitlines() if line.startswith(MARK)]
            if done.returncode != 0 or not lines:
                raise RuntimeError(f"lm_step {name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
            runs[name].append(json.loads(lines[-1].removeprefix(MARK)))
            print(f"[lm_step] {name}: {runs[name][-1]}", flush=True)
    rows = {}
    for name, measured in runs.items():
        rows[name] = {
            "step_s": statistics.median(r["step_s"] for r in measured),
            "peak_mb": max(r["peak_mb"] for r in measured),
            "training_peak_mb": max(r["training_peak_mb"] for r in measured),
            "repeats": measured,
        }
    for name, row in rows.items():  # against the stock step of the same trainer class
        base = rows["sft_stock" if name.startswith("sft") else "stock"]
        row["step_over_stock"] = row["step_s"] / base["step_s"]
        row["peak_over_stock"] = row["peak_mb"] / base["peak_mb"]
        row["training_peak_over_stock"] = row["training_peak_mb"] / base["training_peak_mb"]
    payload = {"rows": rows, "steps": steps, "warmup": warmup, "threads": torch.get_num_threads(), "batch": 32}
    if results_dir is not None:
        save_result("lm_step", "lm_sst2_quick" if quick else "lm_sst2", payload,
                    "python -m tasks.bench lm_step" + (" --quick" if quick else ""), results_dir)  # fmt: skip
    for name, row in rows.items():
        print(f"[lm_step] {name}: {1000 * row['step_s']:.1f} ms/step ({row['step_over_stock']:.3f}x stock), peak "
              f"{row['peak_mb']:.0f} MB ({row['peak_over_stock']:.3f}x), training peak {row['training_peak_mb']:.0f} "
              f"MB ({row['training_peak_over_stock']:.3f}x)")  # fmt: skip
    return payload


if __name__ == "__main__":
    print(MARK + json.dumps(one_variant(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))), flush=True)
