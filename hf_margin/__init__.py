"""hf_margin: margin-based training (MMS selective sampling, epoch pruning, MMR regularization) and label-free
ranking of unlabeled data, for the Hugging Face Trainer."""

from .config import PRUNING_CRITERIA, SELECTION_CRITERIA, MarginFields, MarginSettings, MarginTrainingArguments
from .criteria import Criterion, get_criterion, register_criterion, unregister_criterion
from .heads import HeadTap, effective_weight, find_classifier
from .margin import (
    breaking_ties_scores,
    entropy_scores,
    least_confidence_scores,
    minimal_margin_scores,
    multi_margin_penalty,
    per_sample_losses,
    signed_margin_scores,
)
from .ranking import RANKING_CRITERIA, RankedScores, score_dataset, select_for_labelling
from .selection import linear_ramp, pool_scores, select_by_score, select_uniform
from .trainer import MarginTrainer, MarginTrainerMixin

__all__ = [
    "PRUNING_CRITERIA",
    "RANKING_CRITERIA",
    "SELECTION_CRITERIA",
    "Criterion",
    "HeadTap",
    "MarginFields",
    "MarginSettings",
    "MarginTrainer",
    "MarginTrainerMixin",
    "MarginTrainingArguments",
    "RankedScores",
    "breaking_ties_scores",
    "effective_weight",
    "entropy_scores",
    "find_classifier",
    "get_criterion",
    "least_confidence_scores",
    "linear_ramp",
    "minimal_margin_scores",
    "multi_margin_penalty",
    "per_sample_losses",
    "pool_scores",
    "register_criterion",
    "score_dataset",
    "select_by_score",
    "select_for_labelling",
    "select_uniform",
    "signed_margin_scores",
    "unregister_criterion",
]
__version__ = "0.1.0"
