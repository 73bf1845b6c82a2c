"""
The official GLUE metric of each task, computed offline with scikit-learn and SciPy.

`evaluate.load("glue", ...)` fetches its script from the Hub and fails offline. A local `evaluate` module
loads offline, but it copies its script into the Hugging Face modules cache and writes Arrow cache files and
locks on every `compute`. The metrics themselves are one library call each, so they live here as plain
functions, with the key names of the Hub `glue` metric (`accuracy`, `f1`, `matthews_correlation`, `pearson`,
`spearmanr`), so that the Trainer reports them as `eval_accuracy`, `eval_f1`, ... exactly as `run_glue.py` does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef

# Metrics of Wang et al. (2019), "GLUE: A Multi-Task Benchmark and Analysis Platform for NLU", Table 1.
GLUE_METRIC_NAMES: dict[str, tuple[str, ...]] = {
    "cola": ("matthews_correlation",),
    "sst2": ("accuracy",),
    "mrpc": ("accuracy", "f1"),
    "qqp": ("accuracy", "f1"),
    "stsb": ("pearson", "spearmanr"),
    "mnli": ("accuracy",),
    "qnli": ("accuracy",),
    "rte": ("accuracy",),
    "wnli": ("accuracy",),
}

ArrayLike = Sequence[float] | np.ndarray


def accuracy(predictions: ArrayLike, references: ArrayLike) -> float:
    """Fraction of `predictions` equal to `references` (both `[N]` class ids)."""
    predictions, references = np.asarray(predictions), np.asarray(references)
    return float((predictions == references).mean())


def binary_f1(predictions: ArrayLike, references: ArrayLike) -> float:
    """F1 = 2PR / (P + R) of the positive class 1 (MRPC: equivalent, QQP: duplicate); 0 when undefined."""
    return float(f1_score(references, predictions, pos_label=1, average="binary", zero_division=0.0))


def matthews_correlation(predictions: ArrayLike, references: ArrayLike) -> float:
    """
    Matthews correlation coefficient (CoLA): (TP·TN − FP·FN) / √((TP+FP)(TP+FN)(TN+FP)(TN+FN)).

    0 when a factor of the denominator is 0 (e.g. a model that always predicts one class).
    """
    return float(matthews_corrcoef(references, predictions))


def pearson(predictions: ArrayLike, references: ArrayLike) -> float:
    """Pearson correlation of two `[N]` score vectors (STS-B); NaN if either is constant."""
    return float(pearsonr(np.asarray(predictions, float), np.asarray(references, float))[0])


def spearman(predictions: ArrayLike, references: ArrayLike) -> float:
    """Spearman rank correlation of two `[N]` score vectors (STS-B); NaN if either is constant."""
    return float(spearmanr(np.asarray(predictions, float), np.asarray(references, float))[0])


_METRIC_FUNCTIONS: dict[str, Callable[[ArrayLike, ArrayLike], float]] = {
    "accuracy": accuracy,
    "f1": binary_f1,
    "matthews_correlation": matthews_correlation,
    "pearson": pearson,
    "spearmanr": spearman,
}


def glue_metrics(task_name: str, predictions: ArrayLike, references: ArrayLike) -> dict[str, float]:
    """
    The official metrics of one GLUE task.

    Args:
        task_name (`str`):
            One of `GLUE_METRIC_NAMES` (`"cola"`, `"sst2"`, ..., lower case as on the Hub).
        predictions (`ArrayLike`):
            `[N]` predicted class ids, or `[N]` predicted scores for `"stsb"`.
        references (`ArrayLike`):
            `[N]` gold labels, same kind as `predictions`.

    Returns:
        `dict[str, float]`: e.g. `{"accuracy": 0.75, "f1": 0.8}` for MRPC.
    """
    if task_name not in GLUE_METRIC_NAMES:
        raise ValueError(f"task_name={task_name!r} is not a GLUE task; choose one of {sorted(GLUE_METRIC_NAMES)}.")
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references.")
    return {name: _METRIC_FUNCTIONS[name](predictions, references) for name in GLUE_METRIC_NAMES[task_name]}


def compute_metrics_from_logits(
    metrics: Callable[[np.ndarray, np.ndarray], dict[str, float]], is_regression: bool = False
) -> Callable[[Any], dict[str, float]]:
    """
    A `compute_metrics` for [`~transformers.Trainer`]: logits -> predictions -> `metrics(predictions, references)`.

    Classification logits `[N, C]` become class ids by argmax; with `is_regression`, a head's `[N, 1]` output
    (STS-B) is used as the score itself.
    """

    def compute_metrics(eval_prediction: Any) -> dict[str, float]:
        logits = eval_prediction.predictions
        if isinstance(logits, tuple):  # models that also return hidden states put the logits first
            logits = logits[0]
        logits = np.asarray(logits)
        predictions = logits.reshape(-1) if is_regression else logits.argmax(axis=-1)
        return metrics(predictions, np.asarray(eval_prediction.label_ids))

    return compute_metrics


def make_compute_metrics(task_name: str) -> Callable[[Any], dict[str, float]]:
    """A `compute_metrics` for [`~transformers.Trainer`] that reports `glue_metrics(task_name, ...)`."""
    is_regression = GLUE_METRIC_NAMES.get(task_name) == ("pearson", "spearmanr")
    return compute_metrics_from_logits(partial(glue_metrics, task_name), is_regression)
