"""Overhead benchmark: what margin training costs per step, measured in one process as ratios.

1. `MarginTrainer` with everything off vs stock `Trainer`: median step time ratio (should be ~1).
2. MMR on vs off: median step time ratio.
3. The scoring forward's cost per sample vs a training step's cost per sample (selection="mms"), and
   what it implies: a step that scores a pool of k x batch costs `1 + k * ratio` baseline steps, so
   selection must save that factor in steps to break even in wall-clock time.

Runs are interleaved (A, B, A, B) and each reports the median of its steps after a warm-up.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from hf_margin import MarginTrainer, MarginTrainingArguments
from tasks.bench.results import device_label, save_result
from tasks.paths import RESULTS, SHARED_DATA


class StepTimer(TrainerCallback):
    """Wall time between consecutive step ends (so the next step's selection is counted), and the
    selection seconds the trainer spent in each step."""

    def __init__(self):
        self.trainer: Trainer | None = None
        self.step_seconds: list[float] = []
        self.scoring_seconds: list[float] = []
        self._last: float | None = None
        self._last_scoring = 0.0

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        now = time.perf_counter()
        strategy = getattr(self.trainer, "strategy", None)
        scoring = strategy.stopwatch.total("scoring") if strategy is not None else 0.0
        if self._last is not None:
            self.step_seconds.append(now - self._last)
            self.scoring_seconds.append(scoring - self._last_scoring)
        self._last, self._last_scoring = now, scoring


@dataclass
class Workload:
    name: str
    make_model: Any
    dataset: Any
    batch: int
    collator: Any = None


def timed_run(work: Workload, steps: int, warmup: int, trainer_cls=MarginTrainer, **margin) -> dict[str, float]:
    """Median step time (and scoring time) of `steps` steps after `warmup` steps."""
    args_cls = TrainingArguments if trainer_cls is Trainer else MarginTrainingArguments
    args = args_cls(
        output_dir="/tmp/hf_margin_overhead",
        per_device_train_batch_size=work.batch,
        max_steps=steps + warmup + 1,
        logging_steps=10_000,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        learning_rate=1e-4,
        bf16=torch.cuda.is_available(),
        **margin,
    )
    timer = StepTimer()
    trainer = trainer_cls(
        model=work.make_model(), args=args, train_dataset=work.dataset, data_collator=work.collator, callbacks=[timer]
    )
    timer.trainer = trainer
    trainer.train()
    return {
        "step_s": statistics.median(timer.step_seconds[warmup:]),
        "scoring_s": statistics.median(timer.scoring_seconds[warmup:]),
    }


def measure(work: Workload, steps: int, warmup: int, k: float = 4.0, repeats: int = 2) -> dict[str, Any]:
    runs: dict[str, list[float]] = {"stock": [], "off": [], "mmr": []}
    for _ in range(repeats):  # interleaved, so drifts of the machine hit every variant alike
        runs["stock"].append(timed_run(work, steps, warmup, Trainer)["step_s"])
        runs["off"].append(timed_run(work, steps, warmup)["step_s"])
        runs["mmr"].append(timed_run(work, steps, warmup, mmr_alpha=1e-4)["step_s"])
    stock, off, mmr = (statistics.median(runs[key]) for key in ("stock", "off", "mmr"))
    mms = timed_run(work, steps, warmup, selection="mms", selection_oversample=k)
    train_per_sample = (mms["step_s"] - mms["scoring_s"]) / work.batch
    score_per_sample = mms["scoring_s"] / round(k * work.batch)
    ratio = score_per_sample / train_per_sample
    return {
        "setting": work.name,
        "batch": work.batch,
        "k": k,
        "stock_step_s": stock,
        "margin_off_step_s": off,
        "margin_off_over_stock": off / stock,
        "mmr_on_step_s": mmr,
        "mmr_on_over_off": mmr / off,
        "mms_step_s": mms["step_s"],
        "mms_scoring_s": mms["scoring_s"],
        "scoring_per_sample_over_train_per_sample": ratio,
        "break_even_step_saving_at_k": {f"{kk:g}": 1 + kk * ratio for kk in (2, 4, 10)},
    }


def image_workload(quick: bool, batch: int) -> Workload:
    """CIFAR ResNet-20 on CIFAR-10 images (32x32)."""
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    import tasks.cifar_models  # noqa: F401  (registers cifar_resnet20 in timm)
    from tasks.image_data import load_image_splits

    splits = load_image_splits("cifar10", max_train_samples=1024 if quick else 8192, max_eval_samples=16)

    def make_model():
        torch.manual_seed(0)
        return TimmWrapperForImageClassification(TimmWrapperConfig(architecture="cifar_resnet20", num_labels=10))

    return Workload("cifar_resnet20, CIFAR-10 32x32", make_model, splits.train, batch)


def text_workload(quick: bool, model_path: str | None) -> Workload:
    """Pretrained MiniLM on SST-2 sentences padded to 64 tokens, through the GLUE recipe's loading code."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

    from tasks.glue import GLUE_TASKS, GlueTaskArguments, load_glue
    from tasks.text import tokenize_text

    task_args = GlueTaskArguments(
        task_name="sst2",
        data_dir=str(SHARED_DATA / "glue"),
        model_name_or_path=model_path,
        max_train_samples=512 if quick else 8192,
    )
    task = GLUE_TASKS["sst2"]
    tokenizer = AutoTokenizer.from_pretrained(task_args.model_name_or_path)
    data = tokenize_text(load_glue(task, task_args)["train"], task.text_columns, tokenizer, max_seq_length=64)

    def make_model():
        torch.manual_seed(0)
        return AutoModelForSequenceClassification.from_pretrained(task_args.model_name_or_path, num_labels=2)

    collator = DataCollatorWithPadding(tokenizer, padding="max_length", max_length=64)
    return Workload("MiniLM-L6, SST-2 seq 64", make_model, data, 32, collator)


def run_overhead(quick: bool = False, model_path: str | None = None, results_dir: Path = RESULTS) -> dict[str, Any]:
    gpu = torch.cuda.is_available()
    steps, warmup = (6, 2) if quick else ((60, 10) if gpu else (12, 3))
    results = [measure(image_workload(quick, batch=128 if gpu else 64), steps, warmup)]
    try:
        text = text_workload(quick, model_path)
    except (ImportError, OSError) as err:  # no MiniLM on this machine
        print(f"[overhead] text workload skipped: {err}")
    else:
        results.append(measure(text, steps if gpu else max(steps // 2, 4), warmup))
    name = "quick" if quick else "full"
    command = "python -m tasks.bench overhead" + (" --quick" if quick else "")
    save_result("overhead", name, {"results": results}, command, results_dir)
    print(f"device: {device_label()}")
    for r in results:
        print(
            f"{r['setting']}: MarginTrainer(off)/Trainer = {r['margin_off_over_stock']:.3f}; "
            f"MMR on/off = {r['mmr_on_over_off']:.3f}; scoring per sample / train step per sample = "
            f"{r['scoring_per_sample_over_train_per_sample']:.3f} (break-even step saving at k=10: "
            f"{r['break_even_step_saving_at_k']['10']:.2f}x)"
        )
    return {"results": results}
