"""Scores kept from the training forward, and the cached-margin sampler that chooses from them instead of running a
scoring forward (`selection="mms_cached"`)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch.utils.data import Sampler


class ScoreCache:
    """
    The latest score of every training sample, keyed by dataset index: written from the logits of the training
    forward (free), read to decide what to train on next. Unknown samples hold NaN. It also counts, per sample, how
    many of its latest visits in a row found it learned (`streak`, for adaptive pruning).

    Args:
        num_samples (`int`): size of the training dataset.
        device (`torch.device`, *optional*): where the scores live (the training device: updates need no
            host synchronisation; a pass plan copies them to the CPU once).
    """

    def __init__(self, num_samples: int, device: torch.device | str | None = None):
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
        self.margins = torch.full((num_samples,), float("nan"), device=device)
        self.streak = torch.zeros(num_samples, dtype=torch.long, device=device)

    def __len__(self) -> int:
        return self.margins.shape[0]

    @property
    def scores(self) -> torch.Tensor:
        return self.margins

    def update(self, indices: torch.Tensor, scores: torch.Tensor, learned: torch.Tensor | None = None) -> None:
        """
        Store `scores[j]` as the score of sample `indices[j]`; with `learned` (bool `[B]`), lengthen the streak of
        the learned samples and end that of the others.
        """
        if indices.shape != scores.shape or indices.dim() != 1:
            raise ValueError(f"indices and scores must be [B]; got {list(indices.shape)} and {list(scores.shape)}.")
        indices = indices.to(self.margins.device, torch.long)
        self.margins[indices] = scores.detach().to(self.margins.device, torch.float32)
        if learned is not None:
            learned = learned.to(self.streak.device)
            self.streak[indices] = torch.where(learned, self.streak[indices] + 1, 0)

    def known_share(self) -> float:
        return self.margins.isnan().logical_not().float().mean().item()

    def snapshot(self, streak: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The scores (and streaks) on the CPU, as they are now: what a pass is planned from (one copy per pass)."""
        scores = self.margins.detach().float().cpu().clone()  # never a view of the cache
        return scores, self.streak.cpu().clone() if streak else None

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"margins": self.margins.cpu(), "streak": self.streak.cpu()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state["margins"].shape != self.margins.shape:
            raise ValueError(
                f"the saved score cache holds {state['margins'].shape[0]} samples but the train dataset has "
                f"{len(self)}; resume with the same train_dataset."
            )
        self.margins.copy_(state["margins"])
        if "streak" in state:
            self.streak.copy_(state["streak"])


MarginCache = ScoreCache  # the name it had when it kept margins only


class PassPlan(NamedTuple):
    """The samples of one planned pass, in training order."""

    indices: torch.Tensor  # LongTensor [M]: dataset indices
    weights: torch.Tensor  # float32 [M]: loss weights
    easy: torch.Tensor  # bool [M]: drawn as easy (kept by chance, and weighted)


CachedPass = PassPlan  # the name it had when only cached selection planned passes


def plan_cached_pass(
    margins: torch.Tensor, hard_fraction: float, easy_rate: float, generator: torch.Generator, rescale: bool = True
) -> PassPlan:
    """
    One pass over the data in random order, keeping what is worth a training step:

    - every sample whose margin is unknown (NaN): training it is what scores it;
    - every *hard* sample: a known margin at or below the `hard_fraction` quantile of the known margins;
    - each other (*easy*) sample with probability `easy_rate`, with loss weight `1 / easy_rate`, so the
      expected gradient of a pass is that of a plain pass over all the data (unbiased), and easy samples'
      margins are refreshed every `1 / easy_rate` passes on average. With `rescale=False` easy samples keep
      weight 1: a biased focus on hard samples, as in the papers' selection.

    Args:
        margins (`torch.Tensor` of shape `[N]`): cached scores, NaN where unknown.
        hard_fraction (`float`): in [0, 1]; 1 keeps every sample (a plain random pass).
        easy_rate (`float`): in (0, 1].
        generator (`torch.Generator`): CPU generator for the order and the coin flips.
        rescale (`bool`, *optional*, defaults to `True`): weight kept easy samples by `1 / easy_rate`.

    Returns:
        [`PassPlan`] `(indices, weights, easy)` of the `M <= N` samples kept, in training order.
    """
    check_cached_fractions(hard_fraction, easy_rate)
    margins = margins.detach().float()
    margins = margins if margins.device.type == "cpu" else margins.cpu()
    order = torch.randperm(margins.shape[0], generator=generator)
    coins = torch.rand(margins.shape[0], generator=generator)
    scores = margins[order]
    hard = scores.isnan()
    known = int(hard.logical_not().sum())
    if known:
        rank = max(1, math.ceil(hard_fraction * known))
        hard |= scores <= scores.nan_to_num(float("inf")).kthvalue(rank).values  # NaN (unknown) sorts last
    kept = (hard | (coins < easy_rate)).nonzero().flatten()
    weights = torch.where(hard, 1.0, 1.0 / easy_rate if rescale else 1.0)
    return PassPlan(order[kept], weights[kept], ~hard[kept])


class CachedMarginSampler(Sampler[tuple[int, float]]):
    """
    Yields `(dataset index, loss weight)` pairs, `len(cache)` of them per epoch, from consecutive `plan_cached_pass`
    passes, all planned from the cache as it is when the epoch's iteration starts. Planning from that snapshot, not
    from the cache as the loader reaches each pass, makes the stream independent of how far ahead the loader's
    workers read: `dataloader_num_workers` and `dataloader_prefetch_factor` do not change what is trained. An epoch
    keeps its usual length (so the Trainer's steps, epochs and schedule are unchanged) and spends it mostly on hard
    samples. The order depends only on `seed`, the epoch and the snapshot, so processes with the same cache draw the
    same stream, and a resumed run (which restores the epoch's snapshot) draws what the uninterrupted run drew.
    A pass that starts at or after draw `plain_from` of the run (`selection_until`) is a plain random pass.
    """

    def __init__(self, cache: ScoreCache, hard_fraction: float, easy_rate: float, seed: int = 0, rescale: bool = True):
        check_cached_fractions(hard_fraction, easy_rate)
        self.cache, self.hard_fraction, self.easy_rate, self.seed = cache, hard_fraction, easy_rate, seed
        self.rescale = rescale
        self.epoch = 0
        self.plain_from: int | None = None  # the draw (counted from the run's start) from which passes are plain
        self.snapshot: tuple[int, torch.Tensor] | None = None  # (epoch, scores) the epoch is planned from
        self.draws = self.easy_draws = 0  # counted as drawn (the loader may draw a batch ahead of training)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.cache)

    def _scores(self) -> torch.Tensor:
        if self.snapshot is None or self.snapshot[0] != self.epoch:
            self.snapshot = (self.epoch, self.cache.snapshot(streak=False)[0])
        return self.snapshot[1]

    def __iter__(self) -> Iterator[tuple[int, float]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        scores, size = self._scores(), len(self.cache)
        remaining = size
        while remaining > 0:
            position = (self.epoch + 1) * size - remaining  # this pass's first draw, counted from the run's start
            plain = self.plain_from is not None and position >= self.plain_from
            hard_fraction = 1.0 if plain else self.hard_fraction
            planned = plan_cached_pass(scores, hard_fraction, self.easy_rate, generator, self.rescale)
            for index, weight, easy in _rows(planned, remaining):
                self.draws += 1
                self.easy_draws += easy
                yield index, weight
            remaining -= min(len(planned.indices), remaining)

    def pop_easy_share(self) -> float | None:
        """Share of the draws since the last call that were easy samples (None if none were drawn)."""
        share = self.easy_draws / self.draws if self.draws else None
        self.draws = self.easy_draws = 0
        return share

    def state_dict(self) -> dict:
        return {"snapshot_epoch": self.snapshot[0], "snapshot": self.snapshot[1]} if self.snapshot else {}

    def load_state_dict(self, state: dict) -> None:
        if "snapshot" in state:
            self.snapshot = (int(state["snapshot_epoch"]), state["snapshot"])


def _rows(plan: PassPlan, limit: int | None = None) -> list[tuple[int, float, bool]]:
    """The first `limit` `(index, weight, easy)` rows of a plan as Python numbers, in one copy."""
    table = torch.stack([plan.indices.double(), plan.weights.double(), plan.easy.double()], dim=1)[:limit]
    return [(int(i), w, bool(e)) for i, w, e in table.tolist()]


def check_cached_fractions(hard_fraction: float, easy_rate: float) -> None:
    """The ranges of `selection_hard_fraction` ([0, 1]) and `selection_easy_rate` ((0, 1]), as a `ValueError`."""
    if not 0.0 <= hard_fraction <= 1.0:
        raise ValueError(f"selection_hard_fraction must be in [0, 1], got {hard_fraction}.")
    if not 0.0 < easy_rate <= 1.0:
        raise ValueError(f"selection_easy_rate must be in (0, 1], got {easy_rate}.")
