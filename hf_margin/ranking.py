"""
Ranking unlabeled data by margin, for active learning: which samples of a pool should be labelled next.

`score_dataset` runs a trained model over a dataset with the Trainer's own prediction loop
(`Trainer.evaluation_loop`: its eval dataloader, collator, `per_device_eval_batch_size`, accelerator,
mixed precision, gathering across processes and progress bar), turns the logits into one score per sample
and ranks the samples, most informative first. `select_for_labelling` returns the first `n` of that ranking.
Labels are never read: every label key is removed from the samples before the dataloader sees them, so a
labelled dataset gets exactly the scores of its unlabeled copy.

Criteria (`RANKING_CRITERIA`): every label-free criterion of `hf_margin.criteria`, ranked from its hard end:
`mms` (smallest minimal margin score first), `breaking_ties` (smallest `p_1 - p_2`), `least_confidence` (largest
`1 - p_1`), `entropy` (largest softmax entropy), and `random` (uniform noise from a seeded generator, the control; no
forward pass).

With two classes the four model-based criteria are monotone in the logit gap `s_1 - s_2`, so they rank
alike; they differ with three or more classes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import Trainer
from transformers.utils import logging

from .batch import LABEL_KEYS
from .criteria import CriterionChoices, get_criterion
from .heads import HeadTap, find_classifier

logger = logging.get_logger(__name__)

# The label-free criteria of `hf_margin.criteria`, read from its table when asked.
RANKING_CRITERIA = CriterionChoices("ranking")


@dataclass(frozen=True)
class RankedScores:
    """
    A dataset ranked by an acquisition criterion.

    Attributes:
        indices (`torch.LongTensor` of shape `[N]`): dataset indices, most informative first (ties keep
            dataset order).
        scores (`torch.Tensor` of shape `[N]`): the score of every sample, in dataset order
            (`scores[i]` belongs to `dataset[i]`; `scores[indices]` is sorted).
        criterion (`str`): the criterion that produced them.
    """

    indices: torch.Tensor
    scores: torch.Tensor
    criterion: str

    def top(self, n: int) -> torch.Tensor:
        """The `n` most informative dataset indices, as a `torch.LongTensor` of shape `[n]`."""
        _check_count(n, len(self.indices))
        return self.indices[:n].clone()


def score_dataset(
    trainer: Trainer,
    dataset: Any,
    criterion: str = "mms",
    seed: int | None = None,
) -> RankedScores:
    """
    Score every sample of `dataset` with the trainer's model and rank them for labelling.

    The logits come from `trainer.evaluation_loop` on `trainer.get_test_dataloader(...)`, the machinery
    of `Trainer.predict`, so the eval batch size, collator, mixed precision, devices and processes are the
    trainer's; under DDP every process gets every sample's score, in dataset order. For `mms` the last
    linear layer (`hf_margin.find_classifier`, `classifier_name` honoured) is read inside its own forward,
    so its weight is the full one even when parameters are sharded outside the forward (FSDP, DeepSpeed).

    Args:
        trainer ([`~transformers.Trainer`]): any Trainer (a [`MarginTrainer`] too) holding the model.
        dataset (`torch.utils.data.Dataset` or `datasets.Dataset`): the pool, with a length; samples are
            mappings of model inputs. Label keys (`labels`, `label`, `label_ids`, `trainer.label_names`)
            are removed before batching, so they are optional and never read.
        criterion (`str`, *optional*, defaults to `"mms"`): one of `RANKING_CRITERIA`.
        seed (`int`, *optional*): seed of the `random` criterion; `trainer.args.seed` when None.

    Returns:
        [`RankedScores`]: the ranking (`indices`) and each sample's score (`scores`, dataset order).

    Raises:
        `ValueError` for an unknown criterion, an empty or length-less dataset, a regression model, a model
        without a linear head when `mms` is asked, or logits that are not `[N, C >= 2]`.
    """
    _check_criterion(criterion)
    size = _pool_size(dataset)
    ranking = get_criterion(criterion)
    if ranking.score is None:
        generator = torch.Generator().manual_seed(trainer.args.seed if seed is None else seed)
        return _rank(torch.rand(size, generator=generator), criterion)

    model = trainer.model
    _check_classifier(model)
    # the head's weight is read inside its forward, where FSDP / ZeRO-3 hold it whole (LoRA update included)
    tap = (
        HeadTap(find_classifier(model, getattr(trainer.args, "classifier_name", None))[1])
        if ranking.needs_head
        else None
    )
    try:
        with tap.watching() if tap is not None else nullcontext():
            logits = _predict_logits(trainer, _without_labels(dataset, _label_keys(trainer)))
    finally:
        if tap is not None:
            tap.remove()
    if logits.dim() != 2 or logits.shape[1] < 2 or logits.shape[0] != size:
        raise ValueError(
            f"ranking needs logits of shape [N, C >= 2] = [{size}, C]; the model gave {list(logits.shape)}."
        )
    weight = None
    if tap is not None:
        if tap.weight is None:
            raise ValueError(
                f"{criterion}: the last linear layer was not called in the forward, so its weight is unknown."
            )
        weight = tap.weight.float().cpu()
    return _rank(ranking.scores(logits, weight=weight), criterion)


def select_for_labelling(
    trainer: Trainer,
    dataset: Any,
    n: int,
    criterion: str = "mms",
    seed: int | None = None,
) -> torch.Tensor:
    """
    The `n` samples of `dataset` to label next: the first `n` of [`score_dataset`]'s ranking.

    Args:
        trainer ([`~transformers.Trainer`]): any Trainer holding the current model.
        dataset: the unlabeled pool (see [`score_dataset`]).
        n (`int`): how many to choose, `1 <= n <= len(dataset)`.
        criterion (`str`, *optional*, defaults to `"mms"`): one of `RANKING_CRITERIA`.
        seed (`int`, *optional*): seed of the `random` criterion; `trainer.args.seed` when None.

    Returns:
        `torch.LongTensor` of shape `[n]`: indices into `dataset`, most informative first.
    """
    _check_criterion(criterion)
    _check_count(n, _pool_size(dataset))
    return score_dataset(trainer, dataset, criterion=criterion, seed=seed).top(n)


def _check_criterion(criterion: str) -> None:
    if criterion not in RANKING_CRITERIA:
        raise ValueError(
            f"criterion={criterion!r} is not a ranking criterion (a label-free one); choose one of "
            f"{list(RANKING_CRITERIA)}."
        )


def _rank(scores: torch.Tensor, criterion: str) -> RankedScores:
    # A stable sort: equal scores keep dataset order, so a ranking is reproducible.
    largest_first = get_criterion(criterion).hardest == "largest"
    indices = torch.sort(scores, descending=largest_first, stable=True).indices
    return RankedScores(indices=indices, scores=scores, criterion=criterion)


def _pool_size(dataset: Any) -> int:
    try:
        size = len(dataset)
    except TypeError as err:
        raise ValueError(
            f"dataset must have a length (a map-style dataset); got {type(dataset).__name__}, which has none."
        ) from err
    if size == 0:
        raise ValueError("dataset is empty: there is nothing to rank.")
    return size


def _check_count(n: int, size: int) -> None:
    if not 1 <= n <= size:
        raise ValueError(f"n must be in [1, {size}] (the size of the pool), got {n}.")


def _check_classifier(model: nn.Module) -> None:
    config = getattr(model, "config", None)
    problem_type = getattr(config, "problem_type", None)
    num_labels = getattr(config, "num_labels", None)
    if problem_type == "regression" or num_labels == 1:
        raise ValueError(
            f"the model is a regression head (problem_type={problem_type!r}, num_labels={num_labels}): ranking "
            "needs class logits with at least 2 classes."
        )


def _label_keys(trainer: Trainer) -> tuple[str, ...]:
    return tuple(dict.fromkeys((*LABEL_KEYS, *(getattr(trainer, "label_names", None) or ()))))


class _WithoutLabels(torch.utils.data.Dataset):
    """A view of a map-style dataset whose samples lose their label keys before the collator sees them."""

    def __init__(self, dataset: Any, label_keys: Iterable[str]):
        self.dataset = dataset
        self.label_keys = frozenset(label_keys)

    def __len__(self) -> int:
        return len(self.dataset)

    def _strip(self, sample: Any) -> dict[str, Any]:
        if not isinstance(sample, Mapping):
            raise ValueError(
                f"dataset samples must be mappings of model inputs (dicts) to rank them; got {type(sample).__name__}."
            )
        return {key: value for key, value in sample.items() if key not in self.label_keys}

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._strip(self.dataset[index])

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        # Datasets that fetch a whole batch at once (decoded tensors, batched transforms) keep doing so.
        getitems = getattr(self.dataset, "__getitems__", None)
        samples = getitems(list(indices)) if callable(getitems) else [self.dataset[i] for i in indices]
        return [self._strip(sample) for sample in samples]


def _without_labels(dataset: Any, label_keys: Sequence[str]) -> Any:
    """The dataset without its label keys: columns dropped from a `datasets.Dataset`, else a view."""
    column_names = getattr(dataset, "column_names", None)
    if isinstance(column_names, list) and callable(getattr(dataset, "remove_columns", None)):
        # A `datasets.Dataset` stays one, so the Trainer still drops the columns the model does not accept.
        return dataset.remove_columns([key for key in label_keys if key in column_names])
    return _WithoutLabels(dataset, label_keys)


def _predict_logits(trainer: Trainer, dataset: Any) -> torch.Tensor:
    """Logits `[N, C]` of every sample in dataset order, from the Trainer's prediction loop."""
    model_config = getattr(trainer.model, "config", None)
    ignore_keys = getattr(model_config, "keys_to_ignore_at_inference", None)
    dataloader = trainer.get_test_dataloader(dataset)
    output = trainer.evaluation_loop(
        dataloader,
        description="Ranking",
        prediction_loss_only=False,
        ignore_keys=ignore_keys,
        metric_key_prefix="rank",
    )
    predictions = output.predictions
    if isinstance(predictions, (tuple, list)):
        # A model returning more than logits gives a tuple whose first entry is the logits; with
        # `eval_do_concat_batches=False` a list of per-batch arrays.
        if trainer.args.eval_do_concat_batches:
            predictions = predictions[0]
        else:
            predictions = np.concatenate([p[0] if isinstance(p, (tuple, list)) else p for p in predictions])
    if predictions is None:
        raise ValueError("the prediction loop returned no logits.")
    return torch.as_tensor(np.asarray(predictions)).float()
