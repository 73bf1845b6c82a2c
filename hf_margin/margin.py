"""Pure tensor math of margin-based training: per-sample scores and the MMR penalty.

Everything here takes plain tensors and returns plain tensors; nothing imports `transformers`.
Notation: a batch of B samples, C classes, D features at the input of the last linear layer,
`logits = features @ weight.T + bias`.

References:
    B. Weinstein, S. Fine, Y. Hel-Or. "Selective sampling for accelerating training of deep neural
    networks" (2019, arXiv:1911.06996): the minimal margin score (MMS).
    B. Weinstein, S. Fine, Y. Hel-Or. "Margin-Based Regularization and Selective Sampling in Deep
    Neural Networks" (2020, arXiv:2009.06011): multi-margin regularization (MMR).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Smallest ||w_i1 - w_i2|| we divide by: identical weight rows give a huge finite score, never inf/nan.
_MIN_ROW_DISTANCE = 1e-12


def minimal_margin_scores(logits: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """
    Minimal margin score (MMS) of each sample: its distance, in the feature space of the last linear
    layer, to the decision boundary between its two highest-scoring classes.

        d = (s_i1 - s_i2) / ||w_i1 - w_i2||

    where `s_i1 >= s_i2` are the two largest logits of the row (bias included) and `w_i1`, `w_i2` the
    matching rows of the last layer's weight. It is label-free, and small `d` means the prediction
    flips with a small change of the features. Computed in float32 whatever the input dtype.

    Args:
        logits (`torch.Tensor` of shape `[B, C]`): scores of the last linear layer, `C >= 2`.
        weight (`torch.Tensor` of shape `[C, D]`): that layer's weight.

    Returns:
        `torch.Tensor` of shape `[B]` (float32, >= 0). Where the two weight rows are identical the
        boundary does not exist in feature space; the score is then `(s_i1 - s_i2) / 1e-12`: finite,
        0 for an exact tie, huge otherwise, so such samples rank as far from any boundary.
    """
    _check_logits_weight(logits, weight)
    top2 = logits.detach().topk(2, dim=1)  # in the logits' dtype: no float copy of a [B, C] with a vocabulary's C
    values = top2.values.float()
    gap = values[:, 0] - values[:, 1]
    row_distance = (weight[top2.indices[:, 0]].float() - weight[top2.indices[:, 1]].float()).norm(dim=1)
    return gap / row_distance.clamp_min(_MIN_ROW_DISTANCE)


def signed_margin_scores(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """
    Signed, label-aware margin of each sample: its distance, in the feature space of the last linear layer, to the
    decision boundary between its true class and the strongest other class,

        d_i = (s_{y_i} - s_{m_i}) / ||w_{y_i} - w_{m_i}||,    m_i = argmax_{j != y_i} s_j,

    the margin MMR widens. Positive when the sample is classified correctly, negative when it is not, so a
    confidently wrong sample counts as hard, where the label-free MMS would call it easy. Computed in float32.

    Args:
        logits (`torch.Tensor` of shape `[B, C]`), `C >= 2`.
        labels (`torch.LongTensor` of shape `[B]`): class indices; rows labelled -100 score NaN (unknown).
        weight (`torch.Tensor` of shape `[C, D]`): the last layer's weight.

    Returns:
        `torch.Tensor` of shape `[B]` (float32).
    """
    _check_logits_weight(logits, weight)
    if labels.shape != logits.shape[:1]:
        raise ValueError(f"labels must be [B] = [{logits.shape[0]}], got {list(labels.shape)}.")
    kept = labels != -100
    labels = labels.long().where(kept, 0)
    logits, weight = logits.detach(), weight.detach()
    # the strongest other class from the top two, in the logits' dtype: no copy of the [B, C] logits
    top2 = logits.topk(2, dim=1)
    first_is_true = top2.indices[:, 0] == labels
    runner_up = torch.where(first_is_true, top2.indices[:, 1], top2.indices[:, 0])
    runner_up_score = torch.where(first_is_true, top2.values[:, 1], top2.values[:, 0]).float()
    gap = logits.gather(1, labels[:, None]).squeeze(1).float() - runner_up_score
    row_distance = (weight[labels].float() - weight[runner_up].float()).norm(dim=1)
    return (gap / row_distance.clamp_min(_MIN_ROW_DISTANCE)).where(kept, float("nan"))


def true_class_logit_gaps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """
    How far the true class's logit is above the strongest other class's, `s_{y_i} - max_{j != y_i} s_j`: the signed
    margin before it is divided by the row distance, in the units the softmax reads (a gap of `ln 9` makes the
    true class nine times as likely as the runner-up). Computed from the top two logits, without a copy of the
    `[B, C]` logits, in float32.

    Args:
        logits (`torch.Tensor` of shape `[B, C]`), `C >= 2`.
        labels (`torch.LongTensor` of shape `[B]`): class indices; rows labelled -100 give NaN.

    Returns:
        `torch.Tensor` of shape `[B]` (float32).
    """
    _check_logits(logits)
    kept = labels != -100
    labels = labels.long().where(kept, 0)
    logits = logits.detach()
    top2 = logits.topk(2, dim=1)
    runner_up = torch.where(top2.indices[:, 0] == labels, top2.values[:, 1], top2.values[:, 0]).float()
    gap = logits.gather(1, labels[:, None]).squeeze(1).float() - runner_up
    return gap.where(kept, float("nan"))


def entropy_scores(logits: torch.Tensor) -> torch.Tensor:
    """
    Entropy of the softmax of each row, `H = -sum_c p_c log p_c`, in float32. The entropy selection
    baseline keeps the largest. Near its maximum H is flat (two classes: `ln 2 - d^2 / 8` for a logit gap
    `d`), so in float32 it ties gaps below about 1e-3, as a fresh classification head gives; MMS does not.

    Args:
        logits (`torch.Tensor` of shape `[B, C]`).

    Returns:
        `torch.Tensor` of shape `[B]`.
    """
    log_p = F.log_softmax(logits.detach().float(), dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


def per_sample_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """
    Cross-entropy of each sample, in float32. Hard-negative mining keeps the largest.

    Args:
        logits (`torch.Tensor` of shape `[B, C]`).
        labels (`torch.LongTensor` of shape `[B]`): class indices; -100 (ignored) scores 0.

    Returns:
        `torch.Tensor` of shape `[B]`.
    """
    return F.cross_entropy(logits.detach().float(), labels.long(), reduction="none", ignore_index=-100)


def weighted_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """
    Mean cross-entropy of a batch with a weight per sample, differentiable, in float32:

        L = sum_i w_i * CE(logits_i, y_i) / #{i : y_i != -100}

    The denominator counts samples, not weights, so with every `w_i = 1` this is the usual mean loss,
    and weights `1 / p` on samples kept with probability `p` make its expectation the loss of the
    full data (the rescaling of the cached-margin selection).

    Args:
        logits (`torch.Tensor` of shape `[B, C]`).
        labels (`torch.LongTensor` of shape `[B]`): class indices; -100 is ignored.
        weights (`torch.Tensor` of shape `[B]`): per-sample weights, >= 0.
        label_smoothing (`float`, *optional*, defaults to 0): as in `torch.nn.functional.cross_entropy`.

    Returns:
        A scalar `torch.Tensor` in float32.
    """
    if labels.shape != logits.shape[:1] or weights.shape != logits.shape[:1]:
        raise ValueError(
            f"labels and weights must be [B] = [{logits.shape[0]}]; got {list(labels.shape)} and "
            f"{list(weights.shape)}."
        )
    losses = F.cross_entropy(
        logits.float(), labels.long(), reduction="none", ignore_index=-100, label_smoothing=label_smoothing
    )
    counted = (labels != -100).sum().clamp_min(1)
    return (losses * weights.to(losses.dtype)).sum() / counted


def multi_margin_penalty(
    features: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """
    Multi-margin regularization (MMR) penalty of a batch:

        R = mean_i ||w_{y_i} - w_{m_i}||^2 * max_i ||phi_i||^2

    with `y_i` the label of sample i, `m_i` the highest-scoring class other than `y_i`, and `phi_i`
    the input of the last linear layer. Minimising `R` with the loss widens the margin
    `(s_y - s_m) / ||w_y - w_m||` relative to the radius `max_i ||phi_i||` of the data (the SVM-style
    radius-margin argument of the MMR paper). Gradients flow into `weight` and `features` (through
    the largest-norm sample only); the choice of `m_i` is not differentiated.

    Relation to the papers' sum form: the thesis writes the term as a sum over the samples of the
    batch, `sum_i ||w_{y_i} - w_{m_i}||^2 * ||phi_max||^2`. We use the mean, so `alpha` does not change
    meaning with the batch size (sum-form alpha = this alpha / B) and the penalty composes with
    gradient accumulation like a mean loss. The authors' released code was not available to check
    here; this function follows the formula as the papers state it.

    Args:
        features (`torch.Tensor` of shape `[B, D]`): input of the last linear layer.
        logits (`torch.Tensor` of shape `[B, C]`): its output, `C >= 2`.
        labels (`torch.LongTensor` of shape `[B]`): class indices; rows labelled -100 are ignored.
        weight (`torch.Tensor` of shape `[C, D]`): the last layer's weight.

    Returns:
        A scalar `torch.Tensor` in float32 (0 when no row has a label).
    """
    _check_logits_weight(logits, weight)
    if features.dim() != 2 or features.shape[0] != logits.shape[0] or features.shape[1] != weight.shape[1]:
        raise ValueError(
            f"features must be [B, D] = [{logits.shape[0]}, {weight.shape[1]}], got {list(features.shape)}."
        )
    if labels.shape != logits.shape[:1]:
        raise ValueError(f"labels must be [B] = [{logits.shape[0]}], got {list(labels.shape)}.")
    # Masks rather than boolean indexing: no host-device synchronisation inside the training step.
    kept = labels != -100
    labels = labels.long().where(kept, 0)
    logits, weight = logits.detach().float(), weight.float()
    wrong = logits.scatter(1, labels[:, None], float("-inf"))
    runner_up = wrong.argmax(dim=1)
    row_distance_sq = (weight[labels] - weight[runner_up]).pow(2).sum(dim=1)
    mean_row_distance_sq = (row_distance_sq * kept).sum() / kept.sum().clamp_min(1)
    radius_sq = (features.float().pow(2).sum(dim=1) * kept).max()
    return mean_row_distance_sq * radius_sq


def _check_logits_weight(logits: torch.Tensor, weight: torch.Tensor) -> None:
    if logits.dim() != 2 or weight.dim() != 2:
        raise ValueError(
            f"logits must be [B, C] and weight [C, D]; got {list(logits.shape)} and {list(weight.shape)}."
        )
    if logits.shape[1] < 2:
        raise ValueError(f"margins need at least 2 classes; logits have {logits.shape[1]}.")
    if weight.shape[0] != logits.shape[1]:
        raise ValueError(f"weight has {weight.shape[0]} rows but logits have {logits.shape[1]} classes.")


def least_confidence_scores(logits: torch.Tensor) -> torch.Tensor:
    """
    Least confidence of each sample, `1 - p_1`, with `p_1` the largest softmax probability of its row, in
    float32. Uncertainty sampling keeps the largest (Lewis & Gale 1994; Settles 2009, "Active Learning
    Literature Survey", section 3.1).

    Args:
        logits (`torch.Tensor` of shape `[B, C]`): `C >= 2`.

    Returns:
        `torch.Tensor` of shape `[B]`, in `[0, 1 - 1/C]`.
    """
    _check_logits(logits)
    return 1.0 - F.softmax(logits.detach().float(), dim=1).amax(dim=1)


def breaking_ties_scores(logits: torch.Tensor) -> torch.Tensor:
    """
    Probability margin of each sample, `p_1 - p_2`, the gap between its two largest softmax probabilities,
    in float32. Breaking ties keeps the smallest (Scheffer, Decomain, Wrobel 2001; Luo et al. 2005). It is the
    probability-space counterpart of the minimal margin score, which divides the logit gap by
    `||w_1 - w_2||` instead of passing it through the softmax.

    Args:
        logits (`torch.Tensor` of shape `[B, C]`): `C >= 2`.

    Returns:
        `torch.Tensor` of shape `[B]`, in `[0, 1]`.
    """
    _check_logits(logits)
    top2 = F.softmax(logits.detach().float(), dim=1).topk(2, dim=1).values
    return top2[:, 0] - top2[:, 1]


def _check_logits(logits: torch.Tensor) -> None:
    if logits.dim() != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must be [B, C] with C >= 2 classes; got {list(logits.shape)}.")
