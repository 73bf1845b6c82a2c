"""Pure operations on collated batches (dicts of tensors): rows, labels, padding, pooled positions.

No framework state here: the strategies call these on the batches the Trainer's loader yields.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

# Keys under which a collated batch may carry its labels, besides the Trainer's `label_names`.
LABEL_KEYS = ("labels", "label", "label_ids")


def find_labels(batch: Mapping[str, Any], label_names: list[str] | tuple[str, ...] = ()) -> torch.Tensor | None:
    """The label tensor of a batch: the first of `label_names`, then `LABEL_KEYS`, that holds a tensor."""
    for key in (*label_names, *LABEL_KEYS):
        value = batch.get(key)
        if isinstance(value, torch.Tensor):
            return value
    return None


def without_labels(batch: Mapping[str, Any], label_names: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The batch less every label key: what a label-free forward (scoring, ranking) sees."""
    dropped = set(label_names) | set(LABEL_KEYS)
    return {key: value for key, value in batch.items() if key not in dropped}


def batch_length(batch: Mapping[str, Any]) -> int:
    """Number of samples in a collated batch: the first dimension of its first non-scalar tensor."""
    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return value.shape[0]
    raise ValueError("selection: the collated batch holds no tensor to take the batch size from.")


def index_batch(batch: Mapping[str, Any], indices: torch.Tensor, size: int) -> dict[str, Any]:
    """Keep the rows `indices` of every per-sample entry (first dimension or length `size`) of a collated batch."""
    kept = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == size:
            kept[key] = value[indices.to(value.device)]
        elif isinstance(value, (list, tuple)) and len(value) == size:
            kept[key] = type(value)(value[i] for i in indices.tolist())
        else:
            kept[key] = value
    return kept


def trim_padding(batch: dict[str, Any], multiple: int | None = None) -> dict[str, Any]:
    """
    Drop the columns at either end where `attention_mask` is zero in every row, from each `[B, L, ...]` tensor
    of the batch: what padding the selected rows alone would have needed, rounded up to `multiple`.
    """
    mask = batch.get("attention_mask")
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2 or mask.shape[1] == 0:
        return batch
    used = (mask != 0).any(dim=0).nonzero()
    if used.numel() == 0:
        return batch
    length = mask.shape[1]
    first, last = int(used[0]), int(used[-1]) + 1
    if multiple:  # widen into the padding, on the side it sits
        missing = -(last - first) % multiple
        extra_right = min(missing, length - last)
        first, last = max(0, first - (missing - extra_right)), last + extra_right
    if (first, last) == (0, length):
        return batch
    return {
        key: value[:, first:last]
        if isinstance(value, torch.Tensor) and value.dim() >= 2 and value.shape[:2] == mask.shape
        else value
        for key, value in batch.items()
    }


def length_sorted_chunks(batch: dict[str, Any], size: int | None) -> list[tuple[torch.Tensor | None, dict[str, Any]]]:
    """
    The batch as `(rows, micro-batch)` pairs of at most `size` samples (one pair with `rows=None` when `size` is None
    or covers the batch); padded text (a 2-D `attention_mask`) is sorted by length first, so trimming each
    micro-batch's padding afterwards saves the compute spent on padding.
    """
    total = batch_length(batch)
    if size is None or size >= total:
        return [(None, batch)]
    mask = batch.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        order = torch.argsort((mask != 0).sum(1).cpu(), stable=True)
    else:
        order = torch.arange(total)
    return [(rows, index_batch(batch, rows, total)) for rows in order.split(size)]


def pooled_positions(input_ids: torch.Tensor, pad_token_id: int | None) -> torch.Tensor:
    """
    Position of the last non-padding token of each row, `[B]`: where a decoder language model's sequence
    classifier (`*ForSequenceClassification` of GPT-2, Llama, Qwen, Mistral...) reads its logits. Its head runs on
    every position; transformers pools the rightmost token that is not `pad_token_id` (the last position when there
    is no pad token), which is what this reproduces.
    """
    if pad_token_id is None:
        return torch.full(input_ids.shape[:1], input_ids.shape[1] - 1, dtype=torch.long, device=input_ids.device)
    non_pad = (input_ids != pad_token_id).long()
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    return (positions * non_pad).argmax(-1)
