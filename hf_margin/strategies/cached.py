"""Cached-margin selection: no pool and no scoring forward; each sample's MMS is kept from its own training forward
and the sampler plans each epoch from the cache."""

from __future__ import annotations

from ..clock import break_even
from ..criteria import get_criterion
from ..selection import CachedMarginSampler
from .base import StrategyHost
from .tagged import ScoreKeeper, ScoreKeepingStrategy


class CachedSelection(ScoreKeepingStrategy):
    """
    `selection="mms_cached"`: the train loader draws single batches from a `CachedMarginSampler` over the score cache
    of a `ScoreKeeper` (samples tagged with index and weight, MMS kept from the training forward, weighted loss). An
    epoch keeps `len(dataset)` draws, planned from the cache as it is when the epoch starts.
    """

    name = "mms_cached"
    needs_head = True

    def __init__(self, settings):
        super().__init__(settings)
        self.keeper = ScoreKeeper(self.setting, get_criterion("mms"))
        self.sampler: CachedMarginSampler | None = None

    def train_dataloader(self, host: StrategyHost):
        cache = self.keeper.new_cache(host)
        s, args = self.settings, host.args
        seed = args.data_seed if args.data_seed is not None else args.seed
        self.sampler = CachedMarginSampler(
            cache, s.selection_hard_fraction, s.selection_easy_rate, seed, rescale=s.selection_easy_rescale
        )
        return self.keeper.loader(host, self.sampler)

    def planned_max_steps(self, host: StrategyHost, max_steps: int) -> int:
        if self.sampler is not None and self.settings.selection_until < 1.0:
            # plain passes from the draw where selection ends: a pass's plan must not depend on the loader's lead
            unit = host.train_batch_size * host.args.world_size * host.args.gradient_accumulation_steps
            self.sampler.plain_from = round(self.settings.selection_until * max_steps) * unit
        return max_steps

    def log_metrics(self, host: StrategyHost, window_seconds: float | None) -> dict[str, float]:
        logs = {}
        if self.keeper.cache is not None:
            logs["mms_cached_known_share"] = round(self.keeper.cache.known_share(), 4)
        easy_share = self.sampler.pop_easy_share() if self.sampler is not None else None
        if easy_share is not None:
            logs["mms_cached_easy_share"] = round(easy_share, 4)
        window = self.stopwatch.window()
        if window_seconds is not None:
            share, _, ratio = break_even(window.get("scoring", 0.0), 0.0, window_seconds, 1.0)  # no pool to load
            logs["scoring_time_share"], logs["break_even_step_ratio"] = round(share, 4), round(ratio, 4)
        return logs

    def end_of_run(self, host: StrategyHost, seconds: float) -> tuple[dict[str, float], str | None]:
        scoring = self.stopwatch.total("scoring")
        share, _, ratio = break_even(scoring, 0.0, seconds, 1.0)
        verdict = (
            f"selection=mms_cached spent {100 * share:.1f}% of training time keeping margins; it saves wall-clock "
            f"time only if it reaches its target in fewer than {100 * ratio:.0f}% of the optimizer steps that "
            "training without selection needs."
        )
        totals = {
            "selection_seconds": round(scoring, 3),
            "selection_time_share": round(share, 4),
            "break_even_step_ratio": round(ratio, 4),
        }
        return totals, verdict
