"""Pure batch selection: per-sample scores of a pool -> the indices to train on, and schedules.

No framework state here: the trainer turns its state into arguments and calls these.
"""

from __future__ import annotations

import torch

from .margin import entropy_scores, minimal_margin_scores, per_sample_losses

# criterion -> whether the samples to keep are those with the largest score
KEEP_LARGEST = {"mms": False, "entropy": True, "loss": True}


def pool_scores(
    criterion: str, logits: torch.Tensor, weight: torch.Tensor | None = None, labels: torch.Tensor | None = None
) -> torch.Tensor:
    """
    Score every sample of a pool for `criterion`.

    Args:
        criterion (`str`): `"mms"` (minimal margin score, needs `weight`), `"entropy"`, or `"loss"`
            (per-sample cross-entropy, needs `labels`).
        logits (`torch.Tensor` of shape `[P, C]`): the pool's logits.
        weight (`torch.Tensor` of shape `[C, D]`, *optional*): weight of the last linear layer.
        labels (`torch.LongTensor` of shape `[P]`, *optional*).

    Returns:
        `torch.Tensor` of shape `[P]`, float32.
    """
    if criterion == "mms":
        if weight is None:
            raise ValueError("selection='mms' needs the weight of the last linear layer.")
        return minimal_margin_scores(logits, weight)
    if criterion == "entropy":
        return entropy_scores(logits)
    if criterion == "loss":
        if labels is None:
            raise ValueError("selection='loss' (hard-negative mining) needs labels in the batch.")
        return per_sample_losses(logits, labels)
    raise ValueError(f"no score for selection criterion {criterion!r}; expected one of {sorted(KEEP_LARGEST)}.")


def select_by_score(scores: torch.Tensor, keep: int, largest: bool) -> torch.Tensor:
    """
    Indices of the `keep` smallest (or largest) scores, in ascending index order. Ties go to the
    earlier sample, so the choice is deterministic.

    Args:
        scores (`torch.Tensor` of shape `[P]`).
        keep (`int`): how many to keep, `1 <= keep`; more than `P` keeps all.
        largest (`bool`): keep the largest scores instead of the smallest.

    Returns:
        `torch.LongTensor` of shape `[min(keep, P)]`, sorted.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}.")
    order = torch.sort(scores, descending=largest, stable=True).indices
    return order[:keep].sort().values


def select_uniform(pool_size: int, keep: int, generator: torch.Generator) -> torch.Tensor:
    """
    `keep` distinct indices drawn uniformly from `range(pool_size)`, in ascending order: the control
    that trains on the same data volume as a scored selection, without scoring.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}.")
    return torch.randperm(pool_size, generator=generator)[:keep].sort().values


def linear_ramp(start: float, end: float | None, step: int, total_steps: int) -> float:
    """
    Value of a linear ramp from `start` at step 0 to `end` at `total_steps` (the MMR alpha schedule);
    constant `start` when `end` is None.
    """
    if end is None or total_steps <= 0:
        return start
    progress = min(max(step / total_steps, 0.0), 1.0)
    return start + (end - start) * progress
