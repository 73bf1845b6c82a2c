"""One table of the criteria that rank samples: each criterion is defined once, here.

A criterion says how hard (or informative) each sample of a batch is, from that batch's logits. Pool selection
(`selection=...`), epoch pruning (`pruning=...`), ranking for labelling (`score_dataset(criterion=...)`) and the
arguments' `choices` all read this table, so a criterion added with `register_criterion` is usable by every
mechanism whose needs it meets:

| mechanism | takes a criterion that |
| --- | --- |
| pool selection (`selection`) | has a score |
| epoch pruning (`pruning`) | has a score, or none (a random subset) |
| adaptive pruning (`pruning_rule="learned"`) | also says when a sample is learned (`learned_above`, `learned_below`) |
| ranking unlabeled data | does not read labels |
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from .margin import (
    breaking_ties_scores,
    entropy_scores,
    least_confidence_scores,
    minimal_margin_scores,
    per_sample_losses,
    signed_margin_scores,
    true_class_logit_gaps,
)

# score(logits [B, C], labels=[B] | None, weight=[C, D] | None, losses=[B] | None) -> [B]; `losses` are the per-row
# cross-entropies when the caller has them already (the training forward computes them for its loss)
ScoreFunction = Callable[..., torch.Tensor]
HARDEST = ("smallest", "largest")


@dataclass(frozen=True)
class Criterion:
    """
    One way of ranking samples.

    Attributes:
        name (`str`): what users write (`selection="mms"`, `pruning="margin"`, `criterion="entropy"`).
        score (`Callable`, *optional*): `score(logits, labels=..., weight=...) -> [B]` float32, computed without
            gradients from the `[B, C]` logits, the `[B]` labels (when `needs_labels`) and the last linear layer's
            `[C, D]` weight (when `needs_head`). None for the random criterion, which ranks nothing.
        hardest (`str`): `"smallest"` or `"largest"`: which end of the score is hard (kept by pool selection and
            pruning, ranked first for labelling).
        needs_head (`bool`): reads the last linear layer's weight.
        needs_labels (`bool`): reads the labels, so it cannot rank unlabeled data.
        learned_above / learned_below (`float`, *optional*): the default threshold past which a sample counts as
            learned (at most one of them), for adaptive pruning; neither: the criterion cannot say.
        learned_measure (`Callable`, *optional*): what that threshold is compared with, a function like `score`;
            None: the score itself.
        vocab_lean (`bool`): computed from `[B, C]` logits without a temporary of their size, so it scores a language
            model's tokens (`C` = the vocabulary) at little cost; a softmax over the classes is not.
        description (`str`): one line for help texts.
    """

    name: str
    score: ScoreFunction | None
    hardest: str
    needs_head: bool = False
    needs_labels: bool = False
    learned_above: float | None = None
    learned_below: float | None = None
    learned_measure: ScoreFunction | None = None
    vocab_lean: bool = False
    description: str = ""

    def __post_init__(self):
        if self.hardest not in HARDEST:
            raise ValueError(f"Criterion {self.name!r}: hardest must be one of {HARDEST}, got {self.hardest!r}.")
        if self.learned_above is not None and self.learned_below is not None:
            raise ValueError(f"Criterion {self.name!r}: give learned_above or learned_below, not both.")
        if self.score is None and (self.needs_head or self.needs_labels or self.says_learned):
            raise ValueError(f"Criterion {self.name!r} has no score, so it can need nothing and say nothing.")

    @property
    def label_free(self) -> bool:
        return not self.needs_labels

    @property
    def says_learned(self) -> bool:
        return self.learned_above is not None or self.learned_below is not None

    def scores(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor | None = None,
        weight: torch.Tensor | None = None,
        losses: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        The `[B]` float32 scores of `[B, C]` logits, with what this criterion needs (a `ValueError` naming it);
        `losses`, the rows' cross-entropies if the caller has them, spare a criterion computing them again.
        """
        if self.score is None:
            raise ValueError(f"criterion {self.name!r} has no score: it draws at random.")
        if self.needs_labels and labels is None:
            raise ValueError(f"criterion {self.name!r} needs labels, and none were given.")
        if self.needs_head and weight is None:
            raise ValueError(f"criterion {self.name!r} needs the weight of the last linear layer.")
        with torch.no_grad():
            if losses is None:
                return self.score(logits, labels=labels, weight=weight).float()
            return self.score(logits, labels=labels, weight=weight, losses=losses.detach()).float()

    def hardness(self, scores: torch.Tensor) -> torch.Tensor:
        """Scores turned so that larger is harder, whatever the criterion's end (NaN stays NaN)."""
        return scores if self.hardest == "largest" else -scores

    def learned_values(
        self,
        scores: torch.Tensor,
        logits: torch.Tensor,
        labels: torch.Tensor | None = None,
        weight: torch.Tensor | None = None,
        losses: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The `[B]` values the learned threshold is compared with: `learned_measure`'s, or the scores themselves."""
        if self.learned_measure is None:
            return scores
        with torch.no_grad():
            return self.learned_measure(logits, labels=labels, weight=weight, losses=losses).float()

    def is_learned(self, values: torch.Tensor, threshold: float | None = None) -> torch.Tensor:
        """Bool `[B]`: the samples whose `learned_values` are past the threshold (the default unless `threshold`)."""
        if not self.says_learned:
            raise ValueError(f"criterion {self.name!r} cannot say when a sample is learned.")
        if self.learned_above is not None:
            return values > (self.learned_above if threshold is None else threshold)
        return values < (self.learned_below if threshold is None else threshold)

    @property
    def default_threshold(self) -> float | None:
        return self.learned_above if self.learned_above is not None else self.learned_below


_REGISTRY: dict[str, Criterion] = {}


def register_criterion(criterion: Criterion) -> Criterion:
    """Add `criterion` to the table (a `ValueError` if its name is taken); returns it."""
    if criterion.name in _REGISTRY:
        raise ValueError(f"a criterion named {criterion.name!r} is already registered.")
    _REGISTRY[criterion.name] = criterion
    return criterion


def unregister_criterion(name: str) -> None:
    """Remove a criterion added at run time (tests, experiments)."""
    _REGISTRY.pop(name, None)


def get_criterion(name: str) -> Criterion:
    """The criterion called `name` (a `KeyError` if there is none; the mechanisms check names first)."""
    return _REGISTRY[name]


def criterion_names(where: str) -> tuple[str, ...]:
    """The criteria a mechanism accepts, in table order: `where` in `selection`, `pruning`, `learned`, `ranking`."""
    accepts = _ACCEPTS[where]
    return tuple(name for name, c in _REGISTRY.items() if accepts(c))


_ACCEPTS: dict[str, Callable[[Criterion], bool]] = {
    "selection": lambda c: c.score is not None,
    "pruning": lambda c: True,
    "learned": lambda c: c.says_learned,
    "ranking": lambda c: c.label_free,
}


class CriterionChoices(Sequence[str]):
    """
    The names a field accepts, read from the table whenever asked, so `HfArgumentParser`'s `choices`, the arguments'
    checks and the public `*_CRITERIA` constants include criteria registered after import. `extra` are the
    mechanism's own names (`"none"`, `"uniform"`, `"mms_cached"`).
    """

    def __init__(self, where: str, extra: Sequence[str] = ()):
        if where not in _ACCEPTS:
            raise ValueError(f"where must be one of {sorted(_ACCEPTS)}, got {where!r}.")
        self.where, self.extra = where, tuple(extra)

    def _names(self) -> tuple[str, ...]:
        return (*self.extra, *(n for n in criterion_names(self.where) if n not in self.extra))

    def __getitem__(self, index):
        return self._names()[index]

    def __len__(self) -> int:
        return len(self._names())

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __eq__(self, other: object) -> bool:
        return tuple(self) == tuple(other) if isinstance(other, Sequence) else NotImplemented

    def __hash__(self) -> int:
        return hash((self.where, self.extra))

    def __repr__(self) -> str:
        return repr(self._names())


def _mms(logits, labels=None, weight=None, losses=None):
    return minimal_margin_scores(logits, weight)


def _margin(logits, labels=None, weight=None, losses=None):
    return signed_margin_scores(logits, labels, weight)


def _loss(logits, labels=None, weight=None, losses=None):
    return per_sample_losses(logits, labels) if losses is None else losses


def _logit_gap(logits, labels=None, weight=None, losses=None):
    return true_class_logit_gaps(logits, labels)


def _label_free(function: Callable[[torch.Tensor], torch.Tensor]) -> ScoreFunction:
    def score(logits, labels=None, weight=None, losses=None):
        return function(logits)

    return score


for _criterion in (
    Criterion(
        "mms",
        _mms,
        "smallest",
        needs_head=True,
        vocab_lean=True,
        description="the label-free minimal margin score (s_1 - s_2) / ||w_1 - w_2||, smallest first",
    ),
    Criterion(
        "margin",
        _margin,
        "smallest",
        needs_head=True,
        needs_labels=True,
        # learned: the true class's logit at least ln 9 above the runner-up's (nine times as likely)
        learned_above=math.log(9.0),
        learned_measure=_logit_gap,
        vocab_lean=True,
        description="the signed margin (s_y - max_{j!=y} s_j) / ||w_y - w_j||, negative when misclassified, "
        "smallest first",
    ),
    Criterion(
        "loss",
        _loss,
        "largest",
        needs_labels=True,
        learned_below=0.1,  # p_y above 0.9
        vocab_lean=True,  # from the training forward's own cross-entropies
        description="the per-sample cross-entropy (hard-negative mining, InfoBatch's score), largest first",
    ),
    Criterion("breaking_ties", _label_free(breaking_ties_scores), "smallest", description="p_1 - p_2, smallest first"),
    Criterion(
        "least_confidence", _label_free(least_confidence_scores), "largest", description="1 - p_1, largest first"
    ),
    Criterion("entropy", _label_free(entropy_scores), "largest", description="the softmax entropy, largest first"),
    Criterion(
        "random", None, "smallest", vocab_lean=True, description="a seeded random choice, no scores (the control)"
    ),
):
    register_criterion(_criterion)


def describe(where: str) -> str:
    """`'name' (description), ...` of the criteria a mechanism accepts, for help texts."""
    return ", ".join(f"'{name}' ({_REGISTRY[name].description})" for name in criterion_names(where))
