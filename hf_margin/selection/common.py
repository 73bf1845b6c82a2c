"""Schedule predicates shared by the mechanisms: pure functions of the step and the run's length."""

from __future__ import annotations

import torch


def selecting_at(step: int, max_steps: int, until: float) -> bool:
    """Whether optimizer step `step` still selects: `until` (in (0, 1]) of `max_steps` not yet reached."""
    return until >= 1.0 or step < until * max_steps


def logs_after(step: int, logging_steps: int | float, every_step: bool = False) -> bool:
    """
    Whether a training log follows optimizer step `step` (0-based; the Trainer logs when `step + 1` is a multiple of
    `logging_steps`). Per-step traces are read on that step only, off the other steps' hot path. `every_step` (a
    logging strategy other than "steps") reads them on every step.
    """
    if every_step or not logging_steps:
        return True
    return (step + 1) % logging_steps == 0


def linear_ramp(start: float, end: float | None, step: int, total_steps: int) -> float:
    """
    Value of a linear ramp from `start` at step 0 to `end` at `total_steps` (the MMR alpha schedule);
    constant `start` when `end` is None.
    """
    if end is None or total_steps <= 0:
        return start
    progress = min(max(step / total_steps, 0.0), 1.0)
    return start + (end - start) * progress


def check_finite_logits(logits: torch.Tensor, field_name: str) -> None:
    """
    A `FloatingPointError` naming the field when scores would be computed from NaN or infinite logits. It reads the
    tensor on the host: for scores computed outside the training step (ranking); the step itself uses
    `NonFiniteWatch`, which waits for nothing.
    """
    bad = (~torch.isfinite(logits)).any(dim=-1)
    if bool(bad.any()):
        raise non_finite_error(field_name, int(bad.sum()), bad.numel())


def non_finite_error(field_name: str, bad: int | None = None, total: int | None = None) -> FloatingPointError:
    where = f"for {bad} of {total} samples" if bad is not None else "in a training step since the last log"
    return FloatingPointError(
        f"{field_name}: the model returned non-finite logits {where}, so they cannot be ranked (NaN would sort "
        "first for some criteria and last for others). The training has diverged or the inputs hold NaN: lower the "
        "learning rate, check the data, or use bf16 instead of fp16."
    )
