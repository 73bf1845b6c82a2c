"""Pure selection, one module per mechanism: `pool` (a scored pool -> the batch), `cached` (the score cache and the
cached-margin sampler), `pruning` (pruned passes, their rules and sampler), `common` (schedule predicates).

No framework state here: the strategies turn the trainer's state into arguments and call these.
"""

from .cached import (
    CachedMarginSampler,
    CachedPass,
    MarginCache,
    PassPlan,
    ScoreCache,
    check_cached_fractions,
    plan_cached_pass,
)
from .common import check_finite_logits, linear_ramp, logs_after, non_finite_error, selecting_at
from .pool import pool_scores, select_by_score, select_uniform
from .pruning import (
    PRUNING_RULES,
    PrunedEpochSampler,
    PruningSchedule,
    annealed_passes,
    check_pruning_fractions,
    draw_pass,
    full_pass,
    keep_probabilities_fixed,
    keep_probabilities_infobatch,
    keep_probabilities_learned,
    pass_is_pruned,
    plan_pruned_pass,
    pruning_schedule,
    steps_of_pass,
    whole_steps,
)

__all__ = [
    "PRUNING_RULES",
    "CachedMarginSampler",
    "CachedPass",
    "MarginCache",
    "PassPlan",
    "PrunedEpochSampler",
    "PruningSchedule",
    "ScoreCache",
    "annealed_passes",
    "check_cached_fractions",
    "check_finite_logits",
    "check_pruning_fractions",
    "draw_pass",
    "full_pass",
    "keep_probabilities_fixed",
    "keep_probabilities_infobatch",
    "keep_probabilities_learned",
    "linear_ramp",
    "logs_after",
    "non_finite_error",
    "pass_is_pruned",
    "plan_cached_pass",
    "plan_pruned_pass",
    "pool_scores",
    "pruning_schedule",
    "select_by_score",
    "select_uniform",
    "selecting_at",
    "steps_of_pass",
    "whole_steps",
]
