"""What every recipe does after training: evaluate once more and write `metrics.json`."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from transformers import Trainer

_CRITERION_NAMES = {"mms": "MMS", "mms_cached": "MMS cached"}


def describe_settings(settings: Mapping[str, Any]) -> str:
    """
    What a run is, from its margin settings (a `metrics.json` record, or the fields of its arguments):
    `stock`, `MMS k=4`, `uniform k=2`, `MMS cached`, `margin pruning`, `MMR 1e-05->0.001` (a ramp),
    `MMS k=4 + MMR 0.001`.
    """
    selection = settings.get("selection") or "none"
    parts = []
    if selection != "none":
        name = _CRITERION_NAMES.get(selection, selection)
        k = settings.get("selection_oversample")
        parts.append(name if selection == "mms_cached" or k is None else f"{name} k={k:g}")
    pruning = settings.get("pruning") or "none"
    if pruning != "none":
        parts.append(f"{pruning} pruning")
    alpha, alpha_end = settings.get("mmr_alpha") or 0.0, settings.get("mmr_alpha_end")
    if alpha or alpha_end is not None:
        parts.append(f"MMR {alpha:g}" + (f"->{alpha_end:g}" if alpha_end is not None else ""))
    return " + ".join(parts) or "stock"


def margin_settings(args: Any) -> dict[str, Any]:
    """The margin fields of a `TrainingArguments` (a plain one has none: every feature off)."""
    return {
        "selection": getattr(args, "selection", "none"),
        "selection_oversample": getattr(args, "selection_oversample", None),
        "pruning": getattr(args, "pruning", "none"),
        "mmr_alpha": getattr(args, "mmr_alpha", 0.0),
        "mmr_alpha_end": getattr(args, "mmr_alpha_end", None),
    }


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
        **margin_settings(args),
        "seed": args.seed,
        "per_device_train_batch_size": args.per_device_train_batch_size,
    }
    trainer.save_state()
    if trainer.is_world_process_zero():
        os.makedirs(args.output_dir, exist_ok=True)
        with open(os.path.join(args.output_dir, "metrics.json"), "w") as f:
            json.dump(record, f, indent=2, sort_keys=True)
    return record
