"""Pure pool selection: the scores of a pool -> the indices of the samples to train on."""

from __future__ import annotations

import torch

from ..criteria import criterion_names, get_criterion


def pool_scores(
    criterion: str, logits: torch.Tensor, weight: torch.Tensor | None = None, labels: torch.Tensor | None = None
) -> torch.Tensor:
    """
    Score every sample of a pool by a criterion of `hf_margin.criteria`.

    Args:
        criterion (`str`): a criterion with a score, e.g. `"mms"` (needs `weight`), `"entropy"`, or `"loss"`
            (needs `labels`).
        logits (`torch.Tensor` of shape `[P, C]`): the pool's logits.
        weight (`torch.Tensor` of shape `[C, D]`, *optional*): weight of the last linear layer.
        labels (`torch.LongTensor` of shape `[P]`, *optional*).

    Returns:
        `torch.Tensor` of shape `[P]`, float32.
    """
    names = criterion_names("selection")
    if criterion not in names:
        raise ValueError(f"no score for selection criterion {criterion!r}; expected one of {list(names)}.")
    return get_criterion(criterion).scores(logits, labels=labels, weight=weight)


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
