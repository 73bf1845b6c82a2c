"""Pure batch selection: per-sample scores of a pool -> the indices to train on, schedules, and the
cached-margin sampler that chooses from stored scores instead of a scoring forward.

No framework state here: the trainer turns its state into arguments and calls these.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch.utils.data import Sampler

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

    Raises:
        `FloatingPointError` when a logit is NaN or infinite: every criterion refuses alike.
    """
    check_finite_logits(logits, "selection")
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


def check_finite_logits(logits: torch.Tensor, field_name: str) -> None:
    """A `FloatingPointError` naming the field when scores would be computed from NaN or infinite logits."""
    bad = (~torch.isfinite(logits)).any(dim=-1)
    if bool(bad.any()):
        raise FloatingPointError(
            f"{field_name}: the model returned non-finite logits for {int(bad.sum())} of {bad.numel()} samples, so "
            "they cannot be ranked (NaN would sort first for some criteria and last for others). The training has "
            "diverged or the inputs hold NaN: lower the learning rate, check the data, or use bf16 instead of fp16."
        )


def linear_ramp(start: float, end: float | None, step: int, total_steps: int) -> float:
    """
    Value of a linear ramp from `start` at step 0 to `end` at `total_steps` (the MMR alpha schedule);
    constant `start` when `end` is None.
    """
    if end is None or total_steps <= 0:
        return start
    progress = min(max(step / total_steps, 0.0), 1.0)
    return start + (end - start) * progress


# ---- cached margins: choose from each sample's latest MMS, with no scoring forward ----


class MarginCache:
    """
    The latest minimal margin score of every training sample, keyed by dataset index: written from the
    logits of the training forward (free), read to decide what to train on next. Unknown samples hold NaN.

    Args:
        num_samples (`int`): size of the training dataset.
        device (`torch.device`, *optional*): where the scores live (the training device: updates need no
            host synchronisation; a pass plan copies them to the CPU once).
    """

    def __init__(self, num_samples: int, device: torch.device | str | None = None):
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
        self.margins = torch.full((num_samples,), float("nan"), device=device)
        self.updated_step = torch.full((num_samples,), -1, dtype=torch.long, device=device)

    def __len__(self) -> int:
        return self.margins.shape[0]

    def update(self, indices: torch.Tensor, margins: torch.Tensor, step: int) -> None:
        """Store `margins[j]` as the score of sample `indices[j]`, seen at optimizer step `step`."""
        if indices.shape != margins.shape or indices.dim() != 1:
            raise ValueError(f"indices and margins must be [B]; got {list(indices.shape)} and {list(margins.shape)}.")
        indices = indices.to(self.margins.device, torch.long)
        self.margins[indices] = margins.detach().to(self.margins.device, torch.float32)
        self.updated_step[indices] = step

    def known_share(self) -> float:
        return self.margins.isnan().logical_not().float().mean().item()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"margins": self.margins.cpu(), "updated_step": self.updated_step.cpu()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state["margins"].shape != self.margins.shape:
            raise ValueError(
                f"the saved margin cache holds {state['margins'].shape[0]} samples but the train dataset has "
                f"{len(self)}; resume with the same train_dataset."
            )
        self.margins.copy_(state["margins"])
        self.updated_step.copy_(state["updated_step"])


class CachedPass(NamedTuple):
    indices: torch.Tensor  # LongTensor [M]: dataset indices, in training order
    weights: torch.Tensor  # float32 [M]: loss weights
    easy: torch.Tensor  # bool [M]: drawn as easy (known margin above the hard quantile)


def plan_cached_pass(
    margins: torch.Tensor, hard_fraction: float, easy_rate: float, generator: torch.Generator, rescale: bool = True
) -> CachedPass:
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
        [`CachedPass`] `(indices, weights, easy)` of the `M <= N` samples kept, in training order.
    """
    check_cached_fractions(hard_fraction, easy_rate)
    margins = margins.detach().float().cpu()
    order = torch.randperm(margins.shape[0], generator=generator)
    coins = torch.rand(margins.shape[0], generator=generator)
    scores = margins[order]
    known = scores[~scores.isnan()]
    hard = scores.isnan()
    if known.numel():
        rank = max(1, math.ceil(hard_fraction * known.numel()))
        hard |= scores <= known.kthvalue(rank).values
    kept = hard | (coins < easy_rate)
    weights = torch.where(hard, 1.0, 1.0 / easy_rate if rescale else 1.0)
    return CachedPass(order[kept], weights[kept], ~hard[kept])


class CachedMarginSampler(Sampler[tuple[int, float]]):
    """
    Yields `(dataset index, loss weight)` pairs, `len(cache)` of them per epoch, from consecutive
    `plan_cached_pass` passes planned from the cache as it is when each pass starts. An epoch keeps its
    usual length (so the Trainer's steps, epochs and schedule are unchanged) and spends it mostly on hard
    samples. The order depends only on `seed`, the epoch and the cache, so processes with the same cache
    draw the same stream.
    """

    def __init__(
        self, cache: MarginCache, hard_fraction: float, easy_rate: float, seed: int = 0, rescale: bool = True
    ):
        check_cached_fractions(hard_fraction, easy_rate)
        self.cache, self.hard_fraction, self.easy_rate, self.seed = cache, hard_fraction, easy_rate, seed
        self.rescale = rescale
        self.epoch = 0
        self.draws = self.easy_draws = 0  # counted as drawn (the loader may draw a batch ahead of training)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.cache)

    def __iter__(self) -> Iterator[tuple[int, float]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        remaining = len(self.cache)
        while remaining > 0:
            planned = plan_cached_pass(self.cache.margins, self.hard_fraction, self.easy_rate, generator, self.rescale)
            kept = planned.indices[:remaining].tolist(), planned.weights[:remaining].tolist()
            for index, weight, easy in zip(*kept, planned.easy[:remaining].tolist()):
                self.draws += 1
                self.easy_draws += easy
                yield index, weight
            remaining -= len(kept[0])

    def pop_easy_share(self) -> float | None:
        """Share of the draws since the last call that were easy samples (None if none were drawn)."""
        share = self.easy_draws / self.draws if self.draws else None
        self.draws = self.easy_draws = 0
        return share


def check_cached_fractions(hard_fraction: float, easy_rate: float) -> None:
    """The ranges of `selection_hard_fraction` ([0, 1]) and `selection_easy_rate` ((0, 1]), as a `ValueError`."""
    if not 0.0 <= hard_fraction <= 1.0:
        raise ValueError(f"selection_hard_fraction must be in [0, 1], got {hard_fraction}.")
    if not 0.0 < easy_rate <= 1.0:
        raise ValueError(f"selection_easy_rate must be in (0, 1], got {easy_rate}.")


# ---- pruned epochs: each pass keeps the hard samples and a weighted share of the easy ones ----


class PruningSchedule(NamedTuple):
    lengths: list[int]  # samples drawn in each pass, in order
    pruned: list[bool]  # whether each pass is pruned
    keep_hard: int  # samples of a pruned pass that are always kept (the hardest, and any not scored yet)
    per_epoch: int  # draws per Trainer epoch: the run's draws spread evenly, whole accumulated batches


def pruning_schedule(
    num_samples: int, passes: int, hard_fraction: float, ratio: float, anneal: float, unit: int = 1
) -> PruningSchedule:
    """
    The passes of a pruned run, planned up front so that the number of optimizer steps, and so the LR schedule,
    is known before training starts (InfoBatch's protocol with fixed quotas):

    - pass 0 draws every sample (none is scored yet);
    - the passes between are pruned: each keeps `round(hard_fraction * N)` hard samples and
      `round((1 - ratio) * (N - hard))` of the easy ones, weighted up so its expected gradient is a full pass's;
    - the last `ceil(anneal * passes)` passes (InfoBatch anneals the last 12.5%; at least one when `anneal > 0`)
      draw all the data again, with weight 1.

    The run's draws are spread over `passes` Trainer epochs of `per_epoch` draws each, rounded up to a multiple of
    `unit` (batch size x processes x accumulation steps), so every epoch ends on an optimizer step; the few extra
    draws start a further full pass.

    Args:
        num_samples (`int`): N, the training set's size.
        passes (`int`): passes an unpruned run makes (its `num_train_epochs`), >= 1.
        hard_fraction (`float`): in [0, 1].
        ratio (`float`): share of the easy samples dropped from a pruned pass, in [0, 1).
        anneal (`float`): share of the passes, at the end, that use all the data, in [0, 1].
        unit (`int`, *optional*): draws per optimizer step over all processes.
    """
    check_pruning_fractions(hard_fraction, ratio, anneal)
    if num_samples < 1 or passes < 1 or unit < 1:
        raise ValueError(f"num_samples, passes and unit must be >= 1; got {num_samples}, {passes}, {unit}.")
    keep_hard = min(round(hard_fraction * num_samples), num_samples)
    keep = max(keep_hard + round((1.0 - ratio) * (num_samples - keep_hard)), 1)
    annealed = math.ceil(anneal * passes - 1e-9)  # at least one pass when anneal > 0
    pruned = [1 <= p < passes - annealed for p in range(passes)]
    lengths = [keep if is_pruned else num_samples for is_pruned in pruned]
    per_epoch = math.ceil(sum(lengths) / (passes * unit)) * unit
    return PruningSchedule(lengths, pruned, keep_hard, per_epoch)


def plan_pruned_pass(
    scores: torch.Tensor,
    keep: int,
    keep_hard: int,
    hardest: str,
    generator: torch.Generator,
    rescale: bool = True,
) -> CachedPass:
    """
    One pruned pass of exactly `keep` samples, in random order: every sample not scored yet (NaN) and the hardest
    known ones, `keep_hard` in all (more if more are unknown), then the rest drawn uniformly from the easy ones, each
    weighted `(number of easy samples) / (number drawn)` so the pass's expected gradient is a full pass's
    (`rescale=False`: weight 1). With every score NaN this is a uniform random subset (RS2) with weight 1.

    Args:
        scores (`torch.Tensor` of shape `[N]`): cached scores, NaN where unknown.
        keep (`int`): samples in the pass, 1 <= keep <= N.
        keep_hard (`int`): hard samples always kept.
        hardest (`str`): `"smallest"` (margins: small is hard) or `"largest"` (loss: large is hard).
        generator (`torch.Generator`): CPU generator for the order and the draw.
    """
    if hardest not in ("smallest", "largest"):
        raise ValueError(f"hardest must be 'smallest' or 'largest', got {hardest!r}.")
    scores = scores.detach().float().cpu()
    total = scores.shape[0]
    if not 1 <= keep <= total:
        raise ValueError(f"keep must be in [1, {total}], got {keep}.")
    order = torch.randperm(total, generator=generator)
    shuffled = scores[order]
    unknown = shuffled.isnan()
    key = (-shuffled if hardest == "largest" else shuffled).masked_fill(unknown, float("-inf"))
    by_hardness = torch.sort(key, stable=True).indices  # positions in `order`, unknown first, then hardest
    n_hard = min(max(keep_hard, int(unknown.sum())), keep)
    easy = by_hardness[n_hard:]
    n_easy = keep - n_hard
    drawn = easy[torch.randperm(easy.numel(), generator=generator)[:n_easy]]
    positions = torch.cat([by_hardness[:n_hard], drawn])
    is_easy = torch.cat([torch.zeros(n_hard, dtype=torch.bool), torch.ones(n_easy, dtype=torch.bool)])
    easy_weight = easy.numel() / n_easy if rescale and n_easy and not bool(unknown.all()) else 1.0
    weights = torch.where(is_easy, easy_weight, 1.0).float()
    in_order = torch.argsort(positions)  # back to the random order of the pass
    return CachedPass(order[positions[in_order]], weights[in_order], is_easy[in_order])


class PrunedEpochSampler(Sampler[tuple[int, float]]):
    """
    Yields `(dataset index, loss weight)` pairs: the run's passes (`pruning_schedule`) as one stream, `per_epoch` of
    them per Trainer epoch. Each pass is planned from the score cache when the stream reaches it (pruned passes by
    `plan_pruned_pass`, the others as plain random passes), so it uses scores at most a pass old. The order depends
    only on `seed`, the pass and the cache, so processes with the same cache draw the same stream.

    Args:
        cache (`MarginCache`): the scores, written by the training forward.
        schedule (`PruningSchedule`).
        hardest (`str`): `"smallest"` or `"largest"` (see `plan_pruned_pass`); `None` prunes at random (no scores).
        seed (`int`).
        rescale (`bool`): weight the kept easy samples up.
    """

    def __init__(
        self, cache: MarginCache, schedule: PruningSchedule, hardest: str | None, seed: int = 0, rescale: bool = True
    ):
        self.cache, self.schedule, self.hardest, self.seed, self.rescale = cache, schedule, hardest, seed, rescale
        self.epoch = 0
        self._plan: tuple[int, CachedPass] | None = None
        self.current_pass = 0
        self.position = 0  # draws from the start of the stream, as far as the loader has read
        self.draws = self.easy_draws = 0  # since the last `pop_counts`

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.schedule.per_epoch

    def pass_length(self, index: int) -> int:
        lengths = self.schedule.lengths
        return lengths[index] if index < len(lengths) else len(self.cache)

    def pass_is_pruned(self, index: int) -> bool:
        return index < len(self.schedule.pruned) and self.schedule.pruned[index]

    def _pass_at(self, position: int) -> tuple[int, int]:
        """The pass that holds stream position `position`, and the position where that pass starts."""
        index, start = 0, 0
        while start + self.pass_length(index) <= position:
            start += self.pass_length(index)
            index += 1
        return index, start

    def _planned(self, index: int) -> CachedPass:
        if self._plan is None or self._plan[0] != index:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + index)
            size = len(self.cache)
            if self.pass_is_pruned(index):
                scores = self.cache.margins if self.hardest else torch.full((size,), float("nan"))
                plan = plan_pruned_pass(
                    scores,
                    self.pass_length(index),
                    self.schedule.keep_hard,
                    self.hardest or "smallest",
                    generator,
                    self.rescale,
                )
            else:
                plan = CachedPass(
                    torch.randperm(size, generator=generator), torch.ones(size), torch.zeros(size, dtype=torch.bool)
                )
            self._plan = (index, plan)
        return self._plan[1]

    def __iter__(self) -> Iterator[tuple[int, float]]:
        position, end = self.epoch * self.schedule.per_epoch, (self.epoch + 1) * self.schedule.per_epoch
        index, start = self._pass_at(position)
        while position < end:
            plan, offset = self._planned(index), position - start
            take = min(self.pass_length(index) - offset, end - position)
            self.current_pass = index
            for i, w, easy in zip(*(t[offset : offset + take].tolist() for t in plan)):
                self.draws += 1
                self.easy_draws += easy
                position += 1
                self.position = position
                yield i, w
            if position - start == self.pass_length(index):
                start, index = position, index + 1

    def equivalent_full_draws(self, position: int) -> float:
        """Draws an unpruned run makes to get as far through the passes as `position` draws of this stream."""
        index, start = self._pass_at(position)
        return index * len(self.cache) + (position - start) * len(self.cache) / self.pass_length(index)

    def pop_counts(self) -> tuple[int, int]:
        """Draws and easy draws since the last call."""
        counts = (self.draws, self.easy_draws)
        self.draws = self.easy_draws = 0
        return counts


def check_pruning_fractions(hard_fraction: float, ratio: float, anneal: float) -> None:
    """The ranges of `pruning_hard_fraction`, `pruning_ratio` and `pruning_anneal`, as a `ValueError`."""
    if not 0.0 <= hard_fraction <= 1.0:
        raise ValueError(f"pruning_hard_fraction must be in [0, 1], got {hard_fraction}.")
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"pruning_ratio must be in [0, 1), got {ratio}.")
    if not 0.0 <= anneal <= 1.0:
        raise ValueError(f"pruning_anneal must be in [0, 1], got {anneal}.")
