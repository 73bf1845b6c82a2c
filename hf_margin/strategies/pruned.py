"""Pruned epochs: each pass over the data trains on the samples its rule keeps and a weighted share of the others,
scored on their last training forward, so the run has fewer optimizer steps."""

from __future__ import annotations

import torch

from ..criteria import get_criterion
from ..selection import (
    PassPlan,
    PrunedEpochSampler,
    draw_pass,
    full_pass,
    keep_probabilities_infobatch,
    keep_probabilities_learned,
    pass_is_pruned,
    plan_pruned_pass,
    pruning_schedule,
    steps_of_pass,
)
from .base import StrategyHost
from .tagged import ScoreKeeper, ScoreKeepingStrategy


class PrunedEpochs(ScoreKeepingStrategy):
    """
    `pruning` = a criterion (`margin`, `mms`, `loss`, `random`, ...) and `pruning_rule` = `fixed`, `learned` or
    `infobatch`: a `ScoreKeeper` (samples tagged with index and weight, scores kept from the training forward,
    weighted loss) with a `PrunedEpochSampler`, so one Trainer epoch is one planned pass over the data, planned
    when it starts from the scores the previous passes left.

    - `fixed`: the pass lengths are known before training, so `max_steps`, the warm-up and the LR decay are those of
      the shortened run.
    - `learned` and `infobatch`: a pass's length is known when it starts. `max_steps` starts as the unpruned run's
      and is brought down to the run's true end as passes are planned (exact from the start of the last pass);
      the LR schedule follows the progress through the planned passes, so a shortened pass moves it as far as a full
      pass moves an unpruned run's. Training ends with the last planned pass.
    """

    field = "pruning"
    variable_passes = serves_causal_lm = True

    def __init__(self, settings):
        super().__init__(settings)
        self.name, self.rule = settings.pruning, settings.pruning_rule
        self.criterion = get_criterion(self.name)
        self.needs_head = self.criterion.needs_head
        self.drives_lr = self.rule != "fixed"
        self.keeper = ScoreKeeper(self.setting, self.criterion, settings.pruning_threshold)
        self.sampler: PrunedEpochSampler | None = None
        self._size = self._passes = self._unit = self._batch_draws = self._accumulation = 0
        self._lengths: list[int] | None = None  # the fixed rule's pass lengths
        self._keep_hard = 0  # the fixed rule's hard samples a pruned pass always keeps
        self._pass = -1  # the pass the last step was in

    # ---- the run's passes ----

    def start(self, host: StrategyHost) -> None:
        super().start(host)
        self._pass = -1

    def train_dataloader(self, host: StrategyHost):
        args, s = host.args, self.settings
        cache = self.keeper.new_cache(host)
        self._size, self._passes = len(cache), int(args.num_train_epochs)
        self._batch_draws = host.train_batch_size * args.world_size
        self._accumulation = args.gradient_accumulation_steps
        self._unit = self._batch_draws * self._accumulation
        if self.rule == "fixed":
            schedule = pruning_schedule(
                self._size, self._passes, s.pruning_hard_fraction, s.pruning_ratio, s.pruning_anneal, self._unit
            )
            self._lengths, self._keep_hard = schedule.lengths, schedule.keep_hard
        seed = args.data_seed if args.data_seed is not None else args.seed
        self.sampler = PrunedEpochSampler(cache, self.plan_pass, seed)
        return self.keeper.loader(host, self.sampler)

    def plan_pass(
        self, index: int, scores: torch.Tensor, streak: torch.Tensor, generator: torch.Generator
    ) -> PassPlan:
        """Pass `index` of the run, from the cache's scores and learned streaks as the previous passes left them."""
        s = self.settings
        if not pass_is_pruned(index, self._passes, s.pruning_anneal):
            return full_pass(self._size, generator)
        if self.rule == "fixed":
            keep = self._lengths[index]
            if self.criterion.score is None:  # a random subset of the same size (RS2), unweighted
                return draw_pass(torch.full((self._size,), keep / self._size), generator, False, self._unit)
            hardest = self.criterion.hardest
            return plan_pruned_pass(scores, keep, self._keep_hard, hardest, generator, s.pruning_rescale, self._unit)
        if self.rule == "infobatch":
            probability = keep_probabilities_infobatch(scores, self.criterion.hardest, s.pruning_ratio)
        else:
            known = ~scores.isnan()
            probability = keep_probabilities_learned(
                streak, known, s.pruning_learned_visits, s.pruning_ratio, s.pruning_max_weight
            )
        return draw_pass(probability, generator, s.pruning_rescale, self._unit)

    def _steps(self, length: int) -> int:
        return steps_of_pass(length, self._batch_draws, self._accumulation)

    def _pass_lengths(self) -> list[int]:
        """Draws of every pass known so far: all of them for fixed quotas, the planned ones otherwise."""
        if self._lengths is not None:
            return self._lengths
        lengths = self.sampler.lengths
        return [lengths[p] for p in range(len(lengths)) if p in lengths]

    def planned_max_steps(self, host: StrategyHost, max_steps: int) -> int:
        if self._lengths is not None:
            return sum(self._steps(length) for length in self._lengths)
        return self._passes * self._steps(self._size)  # an upper bound, lowered as passes are planned

    def pass_start_step(self, index: int) -> int:
        return sum(self._steps(length) for length in self._pass_lengths()[:index])

    def resume_point(self, host: StrategyHost, global_step: int) -> tuple[int, int]:
        start = 0
        for index, length in enumerate(self._pass_lengths()):
            steps = self._steps(length)
            if global_step < start + steps:
                return index, global_step - start
            start += steps
        return len(self._pass_lengths()), global_step - start

    def draw_batches(self, host, epoch_iterator, num_batches, device):
        index = self.sampler.epoch
        if index != self._pass:  # the first step of a pass: it is planned now, if the loader has not yet
            self._pass = index
            self.sampler.planned()
            if self.drives_lr:
                full, lengths = self._steps(self._size), self._pass_lengths()
                later = self._passes - len(lengths)  # passes not planned yet: at most full ones
                host.set_max_steps(sum(self._steps(length) for length in lengths) + later * full)
        return None  # the sampler already chose

    def virtual_step(self, step: float) -> float:
        """Where optimizer step `step` of this run stands in an unpruned run's steps: the LR schedule's clock."""
        full, start = self._steps(self._size), 0
        for index, length in enumerate(self._pass_lengths()):
            steps = self._steps(length)
            if step < start + steps:
                return full * (index + (step - start) / steps)
            start += steps
        return full * len(self._pass_lengths()) + (step - start)

    def after_step(self, host: StrategyHost) -> None:
        # the Trainer counts an epoch as a full pass's steps; a shortened pass is a whole epoch all the same
        index = self.sampler.epoch
        start, steps = self.pass_start_step(index), self._steps(self.sampler.lengths[index])
        host.state.epoch = index + min((host.state.global_step - start) / steps, 1.0)

    # ---- logs and checkpoints ----

    def log_metrics(self, host: StrategyHost, window_seconds: float | None) -> dict[str, float]:
        self.stopwatch.window()
        if self.sampler is None or self.sampler.epoch not in self.sampler.lengths:
            return {}
        draws, easy = self.sampler.pop_counts()
        index = self.sampler.epoch
        step = host.state.global_step
        logs = {
            "pruning_pass": index,
            "pruned_share": round(1 - self.sampler.lengths[index] / self._size, 4),
            "pruning_steps_saved": round(self.virtual_step(step) - step, 1),
        }
        if draws:
            logs["pruning_easy_share"] = round(easy / draws, 4)
        return logs

    def end_of_run(self, host: StrategyHost, seconds: float) -> tuple[dict[str, float], str | None]:
        if self.sampler is None:
            return {}, None
        lengths = self._pass_lengths()
        full, drawn = self._size * self._passes, sum(lengths) + self._size * (self._passes - len(lengths))
        shares = ", ".join(f"{1 - n / self._size:.2f}" for n in lengths)
        verdict = (
            f"{self.setting} (rule {self.rule!r}) trained on {drawn} sample visits instead of {full} "
            f"({100 * (1 - drawn / full):.1f}% fewer; {host.state.global_step} optimizer steps); share dropped per "
            f"pass: {shares}; score keeping took {100 * self.stopwatch.total('scoring') / max(seconds, 1e-9):.1f}% of "
            "training time."
        )
        by_pass = [round(1 - n / self._size, 4) for n in lengths]
        return {"pruning_visits_saved_share": round(1 - drawn / full, 4), "pruned_share_by_pass": by_pass}, verdict
