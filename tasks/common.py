"""What every recipe does after training: evaluate once more and write `metrics.json`."""

from __future__ import annotations

import json
import os
from typing import Any

from transformers import Trainer


def write_run_metrics(trainer: Trainer, train_metrics: dict[str, Any], eval_metrics: dict[str, Any]) -> dict:
    """
    Write `<output_dir>/metrics.json` (final eval metrics, train wall time and steps, margin settings)
    and `<output_dir>/trainer_state.json` (the log history that `tasks.plot` reads).
    """
    args = trainer.args

    def last_logged(key: str) -> Any:
        return next((h[key] for h in reversed(trainer.state.log_history) if key in h), None)

    record = {
        **eval_metrics,
        "train_runtime": train_metrics.get("train_runtime"),
        "train_seconds": last_logged("train_seconds") or train_metrics.get("train_runtime"),
        "train_cpu_seconds": last_logged("train_cpu_seconds"),
        "selection_time_share": last_logged("selection_time_share"),
        "train_steps": trainer.state.global_step,
        "train_loss": train_metrics.get("train_loss"),
        "selection": getattr(args, "selection", "none"),
        "selection_oversample": getattr(args, "selection_oversample", None),
        "pruning": getattr(args, "pruning", "none"),
        "mmr_alpha": getattr(args, "mmr_alpha", 0.0),
        "mmr_alpha_end": getattr(args, "mmr_alpha_end", None),
        "seed": args.seed,
        "per_device_train_batch_size": args.per_device_train_batch_size,
    }
    trainer.save_state()
    if trainer.is_world_process_zero():
        os.makedirs(args.output_dir, exist_ok=True)
        with open(os.path.join(args.output_dir, "metrics.json"), "w") as f:
            json.dump(record, f, indent=2, sort_keys=True)
    return record
