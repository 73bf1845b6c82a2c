"""hf_margin: margin-based training (MMS selective sampling, MMR regularization) for Hugging Face Trainer."""

from .config import SELECTION_CRITERIA, MarginTrainingArguments
from .heads import FeatureCapture, find_classifier
from .margin import (
    breaking_ties_scores,
    entropy_scores,
    least_confidence_scores,
    minimal_margin_scores,
    multi_margin_penalty,
    per_sample_losses,
)
from .ranking import RANKING_CRITERIA, RankedScores, score_dataset, select_for_labelling
from .selection import linear_ramp, pool_scores, select_by_score, select_uniform
from .trainer import MarginTrainer

__all__ = [
    "RANKING_CRITERIA",
    "SELECTION_CRITERIA",
    "FeatureCapture",
    "MarginTrainer",
    "MarginTrainingArguments",
    "RankedScores",
    "breaking_ties_scores",
    "entropy_scores",
    "find_classifier",
    "least_confidence_scores",
    "linear_ramp",
    "minimal_margin_scores",
    "multi_margin_penalty",
    "per_sample_losses",
    "pool_scores",
    "score_dataset",
    "select_by_score",
    "select_for_labelling",
    "select_uniform",
]
__version__ = "0.1.0"
