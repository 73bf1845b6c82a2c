"""Pruned epochs: each pass over the data trains on the hard samples and a weighted share of the easy ones, scored
on their last training forward, so the run has fewer optimizer steps."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ..margin import minimal_margin_scores, per_sample_losses, signed_margin_scores
from ..selection import PrunedEpochSampler, pruning_schedule
from .cached import CachedSelection

if TYPE_CHECKING:
    from ..trainer import MarginTrainer

# criterion -> which end of its score is hard (None: no score, a random subset)
HARDEST = {"margin": "smallest", "mms": "smallest", "loss": "largest", "random": None}


class PrunedEpochs(CachedSelection):
    """
    `pruning` in `margin`, `mms`, `loss`, `random`: the cached-margin machinery (each sample tagged with its index
    and loss weight, its score kept from its training forward, under DDP gathered by every process, saved in
    checkpoints) with a sampler that shortens the passes (`selection.pruning_schedule`, `PrunedEpochSampler`).
    The run's passes are planned before training, so the Trainer's `max_steps`, LR schedule and progress bar are
    those of the shortened run; a Trainer epoch is the run's draws divided evenly, not one pass.
    """

    field = "pruning"

    def __init__(self, settings):
        super().__init__(settings)
        self.name = settings.pruning
        self.needs_head = self.name in ("margin", "mms")
        self.schedule = None

    def unit(self, trainer: MarginTrainer) -> int:
        """Draws per optimizer step over all processes."""
        args = trainer.args
        return trainer._train_batch_size * args.world_size * args.gradient_accumulation_steps

    def train_sampler(self, trainer: MarginTrainer, dataset: Any):
        s, args = self.settings, trainer.args
        self.schedule = pruning_schedule(
            len(self.cache),
            int(args.num_train_epochs),
            s.pruning_hard_fraction,
            s.pruning_ratio,
            s.pruning_anneal,
            self.unit(trainer),
        )
        seed = args.data_seed if args.data_seed is not None else args.seed
        self.sampler = PrunedEpochSampler(self.cache, self.schedule, HARDEST[self.name], seed, s.pruning_rescale)
        return self.sampler

    def draw_batches(self, trainer, epoch_iterator, num_batches, device):
        return None  # the sampler already chose; `selection_until` does not apply

    def sample_scores(self, trainer: MarginTrainer, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
        if self.name == "margin":
            return signed_margin_scores(logits, labels, trainer.head_tap.weight)
        if self.name == "mms":
            return minimal_margin_scores(logits, trainer.head_tap.weight)
        if self.name == "loss":
            return per_sample_losses(logits, labels)
        return None

    def steps_saved(self, trainer: MarginTrainer) -> float:
        """Optimizer steps an unpruned run takes to get as far through the passes, less the ones taken."""
        sampler = self.sampler
        return (sampler.equivalent_full_draws(sampler.position) - sampler.position) / self.unit(trainer)

    def log_metrics(self, trainer: MarginTrainer, window_seconds: float | None) -> dict[str, float]:
        self.stopwatch.window()
        if self.sampler is None:
            return {}
        draws, easy = self.sampler.pop_counts()
        index = self.sampler.current_pass
        logs = {
            "pruning_pass": index,
            "pruned_share": round(1 - self.sampler.pass_length(index) / len(self.cache), 4),
            "pruning_steps_saved": round(self.steps_saved(trainer), 1),
        }
        if draws:
            logs["pruning_easy_share"] = round(easy / draws, 4)
        return logs

    def end_of_run(self, trainer: MarginTrainer, seconds: float) -> tuple[dict[str, float], str | None]:
        if self.schedule is None:
            return {}, None
        full = len(self.cache) * len(self.schedule.lengths)
        drawn = self.schedule.per_epoch * len(self.schedule.lengths)
        verdict = (
            f"pruning={self.name} trained on {drawn} sample visits instead of {full} ({100 * (1 - drawn / full):.1f}% "
            f"fewer; {trainer.state.global_step} optimizer steps); score keeping took "
            f"{100 * self.stopwatch.total('scoring') / max(seconds, 1e-9):.1f}% of training time."
        )
        return {"pruning_visits_saved_share": round(1 - drawn / full, 4)}, verdict
