"""hf_margin: margin-based training (MMS selective sampling, MMR regularization) for Hugging Face Trainer."""

from .config import SELECTION_CRITERIA, MarginSettings, MarginTrainingArguments
from .heads import HeadTap, effective_weight, find_classifier
from .margin import entropy_scores, minimal_margin_scores, multi_margin_penalty, per_sample_losses
from .selection import linear_ramp, pool_scores, select_by_score, select_uniform
from .trainer import MarginTrainer

__all__ = [
    "SELECTION_CRITERIA",
    "HeadTap",
    "MarginTrainer",
    "MarginSettings",
    "MarginTrainingArguments",
    "effective_weight",
    "entropy_scores",
    "find_classifier",
    "linear_ramp",
    "minimal_margin_scores",
    "multi_margin_penalty",
    "per_sample_losses",
    "pool_scores",
    "select_by_score",
    "select_uniform",
]
__version__ = "0.1.0"
