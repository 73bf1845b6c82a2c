"""Pure epoch pruning: which passes are pruned, how much of each sample a pruned pass keeps, and the sampler that
trains one planned pass per Trainer epoch.

Three rules decide how likely each sample is to be kept in a pruned pass (`keep_probabilities_*`), all drawn the
same way (`draw_pass`):

- `fixed` quotas: the hardest `keep_hard` samples (and every unscored one), then a fixed number of the rest;
- `learned` (adaptive): only samples the scores show are learned may be dropped, and the longer a sample has stayed
  learned, the more likely it is to be skipped;
- `infobatch`: each sample on the easy side of the mean score is dropped with probability `ratio` (InfoBatch,
  Qin et al. 2024, with the loss as score).

Kept samples that stand for dropped ones are weighted so that a pass's expected gradient is a full pass's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch
from torch.utils.data import Sampler

from .cached import PassPlan, ScoreCache, _rows

PRUNING_RULES = ("fixed", "learned", "infobatch")


def annealed_passes(passes: int, anneal: float) -> int:
    """Passes at the end of the run that train on all the data: `ceil(anneal * passes)` (at least one if > 0)."""
    return math.ceil(anneal * passes - 1e-9)


def pass_is_pruned(index: int, passes: int, anneal: float) -> bool:
    """Pass 0 trains on everything (nothing is scored yet), and so do the annealed last passes."""
    return 1 <= index < passes - annealed_passes(passes, anneal)


def whole_steps(length: int, num_samples: int, unit: int) -> int:
    """
    `length` draws rounded up to whole optimizer steps (`unit` = batch x processes x accumulation draws), or the
    full pass when that reaches `num_samples`: a shortened pass must end on an optimizer step, a full pass ends as
    a stock epoch does.
    """
    rounded = math.ceil(max(length, 1) / unit) * unit
    return num_samples if rounded >= num_samples else rounded


def steps_of_pass(length: int, batch_draws: int, accumulation: int) -> int:
    """Optimizer steps of a pass of `length` draws: batches of `batch_draws` (batch x processes), `accumulation`
    batches a step, the last step possibly shorter (the Trainer's own count for an epoch)."""
    batches = math.ceil(length / batch_draws)
    return max(math.ceil(batches / accumulation), 1)


class PruningSchedule(NamedTuple):
    lengths: list[int]  # samples drawn in each pass, in order
    pruned: list[bool]  # whether each pass is pruned
    keep_hard: int  # samples of a pruned pass that are always kept (the hardest, and any not scored yet)


def pruning_schedule(
    num_samples: int, passes: int, hard_fraction: float, ratio: float, anneal: float, unit: int = 1
) -> PruningSchedule:
    """
    The passes of a run pruned by fixed quotas, known before training starts (InfoBatch's protocol with fixed
    quotas): pass 0 draws every sample; the passes between keep `round(hard_fraction * N)` hard samples and
    `round((1 - ratio) * (N - hard))` of the others, rounded up to whole optimizer steps (`unit` draws); the last
    `annealed_passes(passes, anneal)` draw everything again.

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
    keep = whole_steps(keep_hard + round((1.0 - ratio) * (num_samples - keep_hard)), num_samples, unit)
    pruned = [pass_is_pruned(p, passes, anneal) for p in range(passes)]
    lengths = [keep if is_pruned else num_samples for is_pruned in pruned]
    return PruningSchedule(lengths, pruned, keep_hard)


# ---- how likely each sample is to be kept in a pruned pass, by rule ----


def keep_probabilities_fixed(scores: torch.Tensor, hardest: str, keep_hard: int, keep: int) -> torch.Tensor:
    """
    Fixed quotas: `keep` places; the samples not scored yet (NaN) and the hardest known ones fill `keep_hard` of
    them (more if more are unknown) with probability 1, and the others share the remaining places equally. When
    more samples are unknown than there are places, the unknown share them and the known are dropped. `[N]` float32.
    """
    total = scores.shape[0]
    if not 1 <= keep <= total:
        raise ValueError(f"keep must be in [1, {total}], got {keep}.")
    unknown = scores.isnan()
    n_unknown = int(unknown.sum())
    if n_unknown >= keep:
        return torch.where(unknown, keep / n_unknown, 0.0)
    key = (-scores if hardest == "largest" else scores).masked_fill(unknown, float("-inf"))
    by_hardness = torch.sort(key, stable=True).indices  # unknown first, then hardest
    n_hard = min(max(keep_hard, n_unknown), keep)
    probability = torch.full((total,), (keep - n_hard) / max(total - n_hard, 1))
    probability[by_hardness[:n_hard]] = 1.0
    return probability


def keep_probabilities_infobatch(scores: torch.Tensor, hardest: str, ratio: float) -> torch.Tensor:
    """
    InfoBatch's rule: each known sample on the easy side of the mean score (below the mean loss) is kept with
    probability `1 - ratio`; the others, and every sample not scored yet, always. `[N]` float32.
    """
    known = ~scores.isnan()
    mean = scores[known].mean() if bool(known.any()) else torch.tensor(0.0)
    easy = known & ((scores < mean) if hardest == "largest" else (scores > mean))
    return torch.where(easy, 1.0 - ratio, 1.0)


def keep_probabilities_learned(
    streak: torch.Tensor, known: torch.Tensor, visits: int, ratio: float, max_weight: float
) -> torch.Tensor:
    """
    The adaptive rule: a sample may be dropped only once its last `visits` visits in a row found it learned
    (`streak >= visits`); it is then kept with probability `(1 - ratio) ** level`, `level = streak - visits + 1`,
    and never less than `1 / max_weight`. Each further visit that finds it still learned raises its level, one that
    finds it unlearned sends it back to every pass: learned samples are reviewed at growing intervals (a Leitner
    schedule), the others trained on every pass. `[N]` float32.
    """
    level = (streak - visits + 1).clamp_min(0).float()
    probability = ((1.0 - ratio) ** level).clamp_min(1.0 / max_weight)
    return torch.where(known & (streak >= visits), probability, 1.0)


def draw_pass(
    keep_probability: torch.Tensor, generator: torch.Generator, rescale: bool = True, unit: int = 1
) -> PassPlan:
    """
    One pruned pass in random order. The samples sharing a keep probability `0 < q < 1` form a stratum of `n`, of
    which `max(1, round(q n))` are drawn uniformly, each weighted `n / kept` so the stratum weighs what it would in a
    full pass (`rescale=False`: weight 1); samples with `q = 1` are kept with weight 1, those with `q = 0` dropped.
    The pass is then completed to whole optimizer steps (a multiple of `unit` draws, or all the data) with more
    samples of the strata closest to being kept, their weights recomputed.

    Args:
        keep_probability (`torch.Tensor` of shape `[N]`): in [0, 1].
        generator (`torch.Generator`): CPU generator for the order and the draws.
        rescale (`bool`): weight the kept samples of a stratum up.
        unit (`int`): draws per optimizer step over all processes.

    Returns:
        [`PassPlan`]: `easy` marks the samples drawn from a stratum.
    """
    q = keep_probability.detach().float().cpu()
    total = q.shape[0]
    if not bool(((q >= 0) & (q <= 1)).all()):
        raise ValueError("keep probabilities must be in [0, 1].")
    order = torch.randperm(total, generator=generator)
    shuffled = q[order]
    # the strata: positions grouped by keep probability, in ascending order (one sort, one copy to Python)
    by_value = torch.sort(shuffled, stable=True)
    values, sizes = torch.unique_consecutive(by_value.values, return_counts=True)
    strata, start, always, never = [], 0, 0, 0
    for value, size in zip(values.tolist(), sizes.tolist()):
        members = by_value.indices[start : start + size]
        start += size
        if value >= 1:
            always = size
        elif value <= 0:
            never = size
        else:
            strata.append((value, members))
    counts = [min(max(1, round(value * len(members))), len(members)) for value, members in strata]
    kept = always + sum(counts)
    extra = whole_steps(kept, total, unit) - kept
    for s in reversed(range(len(strata))):  # the strata most likely to be kept take the extra places first
        add = min(extra, len(strata[s][1]) - counts[s])
        counts[s], extra = counts[s] + add, extra - add
    keep = shuffled >= 1
    if extra:  # every stratum full: the dropped samples (q = 0) complete the last step, with weight 1
        keep[by_value.indices[: min(extra, never)]] = True
    weights = torch.ones(total)
    easy = torch.zeros(total, dtype=torch.bool)
    for (_, members), count in zip(strata, counts):
        chosen = members[torch.randperm(len(members), generator=generator)[:count]]
        keep[chosen], easy[chosen] = True, True
        if rescale:
            weights[chosen] = len(members) / count
    kept = keep.nonzero().flatten()
    return PassPlan(order[kept], weights[kept], easy[kept])


def full_pass(num_samples: int, generator: torch.Generator) -> PassPlan:
    """Every sample once, in random order, with weight 1."""
    return PassPlan(
        torch.randperm(num_samples, generator=generator),
        torch.ones(num_samples),
        torch.zeros(num_samples, dtype=torch.bool),
    )


def plan_pruned_pass(
    scores: torch.Tensor,
    keep: int,
    keep_hard: int,
    hardest: str,
    generator: torch.Generator,
    rescale: bool = True,
    unit: int = 1,
) -> PassPlan:
    """
    One pass pruned by fixed quotas (`keep_probabilities_fixed` drawn by `draw_pass`): every sample not scored yet
    and the hardest known ones, `keep_hard` in all (more if more are unknown), then the rest drawn uniformly from the
    easy ones, weighted `(easy samples) / (drawn)`. With every score NaN this is a uniform random subset (RS2) with
    weight 1.

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
    probability = keep_probabilities_fixed(scores, hardest, keep_hard, keep)
    return draw_pass(probability, generator, rescale and not bool(scores.isnan().all()), unit)


class PrunedEpochSampler(Sampler[tuple[int, float]]):
    """
    Yields `(dataset index, loss weight)` pairs: one pass over the data per Trainer epoch, planned by `plan(pass,
    scores, streak, generator)` from a snapshot of the score cache taken when the epoch's iteration starts (or its
    length is first asked for). By then the Trainer has trained every batch of the previous pass, so the plan does
    not depend on how far ahead the loader's workers read. The order depends only on `seed`, the pass and the cache,
    so processes with the same cache draw the same stream; a checkpoint keeps the current pass's plan, so a resumed
    run trains the rest of the pass the uninterrupted run trained.

    Args:
        cache (`ScoreCache`): the scores, written by the training forward.
        plan (`Callable`): `(pass index, scores [N] (CPU), streak [N] (CPU), generator) -> PassPlan`.
        seed (`int`).
    """

    def __init__(
        self,
        cache: ScoreCache,
        plan: Callable[[int, torch.Tensor, torch.Tensor, torch.Generator], PassPlan],
        seed: int = 0,
    ):
        self.cache, self.plan, self.seed = cache, plan, seed
        self.epoch = 0
        self._plan: tuple[int, PassPlan] | None = None
        self.lengths: dict[int, int] = {}  # pass -> draws, for every pass planned so far
        self.draws = self.easy_draws = 0  # since the last `pop_counts`

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def planned(self) -> PassPlan:
        """The plan of the current pass (`set_epoch`), made from the cache when first needed."""
        if self._plan is None or self._plan[0] != self.epoch:
            scores, streak = self.cache.snapshot()
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            self._plan = (self.epoch, self.plan(self.epoch, scores, streak, generator))
            self.lengths[self.epoch] = len(self._plan[1].indices)
        return self._plan[1]

    def __len__(self) -> int:
        return len(self.planned().indices)

    def __iter__(self) -> Iterator[tuple[int, float]]:
        for index, weight, easy in _rows(self.planned()):
            self.draws += 1
            self.easy_draws += easy
            yield index, weight

    def pop_counts(self) -> tuple[int, int]:
        """Draws and easy draws since the last call."""
        counts = (self.draws, self.easy_draws)
        self.draws = self.easy_draws = 0
        return counts

    def state_dict(self) -> dict:
        state = {"lengths": torch.tensor(sorted(self.lengths.items()), dtype=torch.long).reshape(-1, 2)}
        if self._plan is not None:
            epoch, plan = self._plan
            state.update(epoch=epoch, indices=plan.indices, weights=plan.weights, easy=plan.easy)
        return state

    def load_state_dict(self, state: dict) -> None:
        self.lengths = {int(p): int(n) for p, n in state["lengths"].tolist()}
        if "indices" in state:
            plan = PassPlan(state["indices"], state["weights"], state["easy"])
            self._plan = (int(state["epoch"]), plan)


def check_pruning_fractions(hard_fraction: float, ratio: float, anneal: float) -> None:
    """The ranges of `pruning_hard_fraction`, `pruning_ratio` and `pruning_anneal`, as a `ValueError`."""
    if not 0.0 <= hard_fraction <= 1.0:
        raise ValueError(f"pruning_hard_fraction must be in [0, 1], got {hard_fraction}.")
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"pruning_ratio must be in [0, 1), got {ratio}.")
    if not 0.0 <= anneal <= 1.0:
        raise ValueError(f"pruning_anneal must be in [0, 1], got {anneal}.")
