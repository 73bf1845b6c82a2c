"""MMR multi-margin regularization as an add-on to any mechanism's loss."""

from __future__ import annotations

import torch

from .selection.common import linear_ramp


class MultiMarginRegularizer:
    """
    Adds `alpha * multi_margin_penalty(...)` to the training loss, with alpha constant or ramped linearly from
    `alpha` at step 0 to `alpha_end` at the last step. The penalty itself is computed inside the head's forward
    (`heads.HeadTap`), from the features, logits and weight of that forward.
    """

    def __init__(self, alpha: float, alpha_end: float | None):
        self.alpha_start, self.alpha_end = alpha, alpha_end

    def alpha(self, step: int, max_steps: int) -> float:
        """MMR weight at optimizer step `step` of `max_steps`."""
        return linear_ramp(self.alpha_start, self.alpha_end, step, max_steps)

    def loss_term(
        self,
        penalty: torch.Tensor,
        alpha: float,
        labels: torch.Tensor,
        num_items_in_batch: torch.Tensor | int | None,
        loss_is_normalised_over_accumulation: bool,
    ) -> torch.Tensor:
        """
        `alpha * penalty`, weighed like the loss it is added to: when that loss was normalised over the whole
        accumulated batch (a `compute_loss_func` given `num_items_in_batch`), by this micro-batch's share of its items.
        """
        term = alpha * penalty
        if loss_is_normalised_over_accumulation and num_items_in_batch is not None:
            term = term * (labels != -100).sum() / num_items_in_batch
        return term
