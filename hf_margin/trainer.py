"""`MarginTrainer`: a `transformers.Trainer` with MMS selective sampling and MMR regularization.

Thin glue: each Trainer hook below hands its work to the selection strategy (`strategies/`), the MMR add-on
(`regularization.py`) and the head tap (`heads.py`); the math is in `margin.py` and `selection.py`. With every margin
feature off, every hook is the Trainer's own.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import nn
from transformers import Trainer
from transformers.utils import logging

from .batch import LABEL_KEYS, find_labels
from .clock import TrainClock
from .config import MarginSettings
from .heads import HeadTap, find_classifier, out_features
from .margin import minimal_margin_scores
from .ranking import RankedScores, score_dataset
from .regularization import MultiMarginRegularizer
from .selection import logs_after
from .strategies import MetricBuffer, build_strategy
from .strategies.base import check_labels, check_single_label, first_sample

logger = logging.get_logger(__name__)

# Model classes whose loss is a per-batch mean even though their forward accepts loss kwargs, and which give one
# prediction per sample: the ones margins apply to.
_SEQUENCE_LEVEL = ("ForSequenceClassification", "ForImageClassification", "ForAudioClassification")
# Model classes with one prediction per token or span: no per-sample margin.
_TOKEN_LEVEL = ("ForTokenClassification", "ForQuestionAnswering", "ForPreTraining", "ForMaskedLM", "ForCausalLM")


class MarginTrainer(Trainer):
    """
    [`~transformers.Trainer`] with margin-based training, configured by [`MarginTrainingArguments`]:

    - **MMS selective sampling** (`selection="mms"`, and the baselines `uniform`, `entropy`, `loss`): each
      micro-batch is the `batch` samples chosen from a pool of `round(k * batch)`, scored by one no-grad forward.
    - **Cached margins** (`selection="mms_cached"`): no pool and no scoring forward; each sample's MMS is kept from
      its training forward, and the sampler spends each epoch mostly on the samples with small or unknown MMS.
    - **MMR regularization** (`mmr_alpha > 0`): `alpha * multi_margin_penalty(...)` added to the loss.

    With `selection="none"` and `mmr_alpha=0` (or a plain `TrainingArguments`) every hook is the Trainer's own: no
    hooks on the model, no extra log keys. One difference on purpose, always on: sequence- and image-level
    classifiers (`*ForSequenceClassification`, `*ForImageClassification`, timm through
    `TimmWrapperForImageClassification`) accept loss kwargs but return a per-batch mean, which stock `Trainer` then
    fails to divide under gradient accumulation; they are not passed `num_items_in_batch`, so their accumulated
    training equals the large batch. Models that honour `num_items_in_batch` (causal LMs, token classifiers) keep the
    Trainer's own handling.

    Logged with the training loss when a feature is on (gathered over processes): `mms_train_mean` (mean MMS of the
    samples of the step before the log), `mms_pool_mean` / `mms_selected_mean` (pool selection),
    `mms_cached_known_share` / `mms_cached_easy_share` (cached margins), `mmr_penalty`, `mmr_alpha`; with
    `log_timing=True` also `train_seconds` / `train_cpu_seconds` (wall and process CPU time of training, evaluation
    excluded), `scoring_time_share` and `break_even_step_ratio`, and the run's totals.

    Example:

    ```python
    from hf_margin import MarginTrainer, MarginTrainingArguments

    args = MarginTrainingArguments("out", selection="mms", selection_oversample=4, mmr_alpha=1e-4)
    trainer = MarginTrainer(model=model, args=args, train_dataset=train, eval_dataset=dev)
    trainer.train()
    ```
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.margin_settings = settings = MarginSettings.from_args(self.args)
        self.strategy = build_strategy(settings)
        self.mmr = MultiMarginRegularizer(settings.mmr_alpha, settings.mmr_alpha_end) if settings.mmr_on else None
        self.margin_metrics = MetricBuffer()
        self.head_name: str | None = None
        self.head_tap: HeadTap | None = None
        self._clock: TrainClock | None = None
        self._window_start = 0.0
        if _loss_is_batch_mean(self.model):
            self.model_accepts_loss_kwargs = False  # exact gradient accumulation: see the class docstring
        if settings.is_stock:
            return
        if self.strategy.owns_loss and self.compute_loss_func is not None:
            raise ValueError(
                f"{self.strategy.field}={self.strategy.name!r} computes the (weighted) cross-entropy itself and "
                "cannot honour a compute_loss_func; drop one of them."
            )
        self._check_model(self.model)
        self._bind_head(self.model)
        if self.train_dataset is not None:
            self._check_train_dataset(self.train_dataset)

    @property
    def selection(self) -> str:
        return self.margin_settings.selection

    @property
    def mmr_on(self) -> bool:
        return self.mmr is not None

    # ---- set-up checks: fail before training, naming the field ----

    @property
    def _field(self) -> str:
        return self.strategy.field if self.strategy.name != "none" else "mmr_alpha"

    @property
    def _needs_margins(self) -> bool:
        return self.strategy.needs_head or self.mmr_on

    def _check_model(self, model: nn.Module) -> None:
        if not self._needs_margins and self.strategy.name == "uniform":
            return  # nothing here reads the classes
        base = _base_model(self.accelerator.unwrap_model(model))
        kind = type(base).__name__
        if any(kind.endswith(suffix) for suffix in _TOKEN_LEVEL):
            raise ValueError(
                f"{self._field}: margins need one prediction per sample, but {kind} predicts per token or span; "
                "use selection='none' and mmr_alpha=0 with this model."
            )
        config = getattr(base, "config", None)
        num_labels, problem_type = getattr(config, "num_labels", None), getattr(config, "problem_type", None)
        if problem_type == "regression" or num_labels == 1:
            raise ValueError(
                f"{self._field}: margins need a classifier with at least 2 classes; this model is a regression head "
                f"(num_labels={num_labels}, problem_type={problem_type!r})."
            )
        if problem_type == "multi_label_classification":
            raise ValueError(f"{self._field}: margins need single-label classification, not multi-label.")
        if num_labels is not None and num_labels < 2:
            raise ValueError(f"{self._field}: margins need at least 2 classes, the model has num_labels={num_labels}.")

    def _find_head(self, model: nn.Module) -> tuple[str | None, nn.Module | None]:
        """The last linear layer; a `ValueError` naming `classifier_name` when margins need it and it is unusable."""
        unwrapped = self.accelerator.unwrap_model(model)
        try:
            name, head = find_classifier(unwrapped, self.margin_settings.classifier_name)
        except ValueError:
            if self._needs_margins:
                raise
            return None, None  # only the mms_train_mean trace would use it
        num_labels = getattr(getattr(_base_model(unwrapped), "config", None), "num_labels", None)
        width = out_features(head)
        problem = (
            f"has {width} output(s); margins need at least 2 classes"
            if width < 2
            else f"has {width} outputs but the model has num_labels={num_labels}"
            if num_labels is not None and self.margin_settings.classifier_name and width != num_labels
            else None
        )
        if problem:
            if self._needs_margins:
                raise ValueError(f"classifier_name: the last linear layer {name!r} {problem}.")
            return None, None
        return name, head

    def _check_train_dataset(self, dataset: Any) -> None:
        self.strategy.check_dataset(self, dataset)
        if self.mmr_on:
            check_labels("mmr_alpha", "MMR", dataset, self.label_names)
        first = first_sample(dataset) if self.strategy.name != "uniform" else None
        labels = find_labels(first, self.label_names) if isinstance(first, Mapping) else None
        if labels is not None:
            check_single_label(self._field, labels)  # even label-free criteria: a top-2 margin means nothing there

    # ---- training: bind to the model `train()` trains (model_init builds a new one) ----

    def _inner_training_loop(self, *args, **kwargs):
        if self.margin_settings.is_stock and not self.margin_settings.log_timing:
            return super()._inner_training_loop(*args, **kwargs)
        if not self.margin_settings.is_stock:
            self._check_model(self.model)
            self._bind_head(self.model)
            self.strategy.start(self)
        self._clock = TrainClock()
        self._window_start = 0.0
        try:
            return super()._inner_training_loop(*args, **kwargs)
        finally:
            self._clock = None

    def _bind_head(self, model: nn.Module) -> None:
        """Tap the last linear layer of `model`, the one `train()` trains (model_init builds a new model)."""
        self.head_name, head = self._find_head(model)
        if self.head_tap is not None and self.head_tap.layer is not head:
            self.head_tap.remove()
            self.head_tap = None
        if head is not None and self.head_tap is None:
            self.head_tap = HeadTap(head)  # inert outside `watch_head`
        config = getattr(_base_model(self.accelerator.unwrap_model(model)), "config", None)
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        self._pad_token_id = getattr(text_config, "pad_token_id", None)

    @contextmanager
    def watch_head(self, inputs: Mapping[str, Any] | None = None, labels: torch.Tensor | None = None) -> Iterator:
        """The head tap recording the forwards run inside this block (None when no head is tapped)."""
        if self.head_tap is None:
            with nullcontext(None) as none:
                yield none
            return
        input_ids = inputs.get("input_ids") if inputs is not None else None
        with self.head_tap.watching(labels, input_ids, self._pad_token_id) as tap:
            yield tap

    def get_train_dataloader(self):
        if self.margin_settings.is_stock:
            return super().get_train_dataloader()
        if self.train_dataset is None:
            raise ValueError("Trainer: training requires a train_dataset.")
        self._check_train_dataset(self.train_dataset)
        loader = self.strategy.train_dataloader(self)
        return loader if loader is not None else super().get_train_dataloader()

    def _get_train_sampler(self, train_dataset=None):
        sampler = None if self.margin_settings.is_stock else self.strategy.train_sampler(self, train_dataset)
        return sampler if sampler is not None else super()._get_train_sampler(train_dataset)

    def get_batch_samples(self, epoch_iterator: Iterator, num_batches: int, device: torch.device):
        if self._clock is not None:
            self._clock.start_once()
        if self.margin_settings.is_stock:
            return super().get_batch_samples(epoch_iterator, num_batches, device)
        batches = self.strategy.draw_batches(self, epoch_iterator, num_batches, device)
        if batches is None:
            return super().get_batch_samples(epoch_iterator, num_batches, device)
        return batches, self._get_num_items_in_batch(batches, device)

    # ---- the training forward: the strategy's loss, the MMS trace, MMR ----

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        if self.margin_settings.is_stock or not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = find_labels(inputs, self.label_names)  # before `Trainer.compute_loss` pops them
        if labels is not None and labels.is_floating_point() and labels.dim() > 1:
            raise ValueError(
                f"{self._field}: margins need single-label classification, but the batch's labels are "
                f"{list(labels.shape)} floats (multi-label)."
            )
        if self.mmr_on and labels is None:
            raise ValueError("mmr_alpha: MMR needs labels, and this training batch has none.")
        with self.watch_head(inputs, labels if self.mmr_on else None) as tap:
            loss, outputs = self.strategy.forward_loss(self, super().compute_loss, model, inputs, num_items_in_batch)
        if tap is not None:
            logits = self.logits_of(outputs, tap, self._field, required=self._needs_margins)
            step = self.state.global_step
            if logits is not None and self.logs_after_this_step():
                with torch.no_grad():
                    self.margin_metrics.add("mms_train_mean", minimal_margin_scores(logits, tap.weight).mean())
            if self.mmr_on:
                alpha = self.mmr.alpha(step, self.state.max_steps)
                scaled = self.compute_loss_func is not None
                loss = loss + self.mmr.loss_term(tap.penalty, alpha, labels, num_items_in_batch, scaled).to(loss.dtype)
                self.margin_metrics.add("mmr_penalty", tap.penalty)
                self.margin_metrics.add("mmr_alpha", alpha)
            tap.features = tap.logits = tap.penalty = None  # release the graph
        return (loss, outputs) if return_outputs else loss

    def logs_after_this_step(self) -> bool:
        """Whether a training log follows this optimizer step: per-step traces are read then only."""
        return logs_after(self.state.global_step, self.state.logging_steps, self.args.logging_strategy != "steps")

    def logits_of(self, outputs: Any, tap: Any, field_name: str, required: bool = True) -> torch.Tensor | None:
        """
        The `[B, C]` classification logits of a model output, checked against what the head tap saw. `None` when they
        are not per-sample class scores and `required` is False; a `ValueError` naming `field_name` otherwise.
        """
        logits = outputs.get("logits") if isinstance(outputs, Mapping) else outputs[1] if len(outputs) > 1 else None
        ok = isinstance(logits, torch.Tensor) and logits.dim() == 2 and logits.shape[1] >= 2
        if ok and tap is not None and tap.per_position and not torch.equal(tap.logits.detach(), logits.detach()):
            ok = False
        if not ok:
            if not required:
                return None
            shape = list(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ValueError(
                f"{field_name}: margins need classification logits [batch, classes >= 2] that the last linear layer "
                f"{self.head_name!r} produces (at the last non-padding token for a decoder's sequence classifier); "
                f"the model returned {shape}. Set classifier_name if another layer is the head."
            )
        return logits

    def pop_labels(self, inputs: dict[str, Any]) -> torch.Tensor | None:
        """Remove and return the labels of a batch (every label key goes)."""
        labels = find_labels(inputs, self.label_names)
        for key in (*self.label_names, *LABEL_KEYS):
            inputs.pop(key, None)
        return labels

    # ---- ranking unlabeled data ----

    def score_dataset(self, dataset: Any, criterion: str = "mms", seed: int | None = None) -> RankedScores:
        """Rank `dataset` for labelling with this trainer's model: see `hf_margin.ranking.score_dataset`."""
        return score_dataset(self, dataset, criterion, seed)

    # ---- logging, timing, checkpoints ----

    def evaluate(self, *args, **kwargs):
        with self._clock.paused() if self._clock is not None else nullcontext():
            return super().evaluate(*args, **kwargs)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        settings = self.margin_settings
        if self._clock is None:
            return super().log(logs, start_time)
        now = self._clock.seconds()
        timed = settings.log_timing
        if timed:
            logs["train_seconds"] = round(now, 3)
            logs["train_cpu_seconds"] = round(self._clock.cpu_seconds(), 3)
        if "loss" in logs and not settings.is_stock:  # a training log: flush what the steps since the last buffered
            logs.update(self.margin_metrics.flush(self.accelerator, self.args.device))
            logs.update(self.strategy.log_metrics(self, now - self._window_start if timed else None))
            self._window_start = now
        if "train_runtime" in logs and not settings.is_stock:
            totals, verdict = self.strategy.end_of_run(self, now)
            if timed:
                logs.update(totals)
            if verdict and self.is_world_process_zero():
                logger.info(f"hf_margin: {verdict}")
        super().log(logs, start_time)

    def _margin_state_path(self, directory: str) -> str:
        return os.path.join(directory, f"margin_state_{self.args.process_index}.pt")

    def _save_rng_state(self, output_dir: str) -> None:
        # Every process saves its own RNG state here, so this is where the strategy's state goes too.
        super()._save_rng_state(output_dir)
        if self.margin_settings.is_stock:
            return
        state = {"strategy": self.strategy.state_dict()}
        if self._clock is not None:
            state["train_seconds"], state["train_cpu_seconds"] = self._clock.seconds(), self._clock.cpu_seconds()
        torch.save(state, self._margin_state_path(output_dir))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        # Called once on every resume path before the first batch is drawn (RNG states load later).
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None or self.margin_settings.is_stock:
            return
        path = self._margin_state_path(checkpoint)
        if not os.path.isfile(path):
            logger.warning(f"No margin state in {checkpoint}: selection restarts its generator and statistics.")
            return
        state = torch.load(path, weights_only=True)
        self.strategy.load_state_dict(state["strategy"])
        if self._clock is not None:
            self._clock.offset = float(state.get("train_seconds", 0.0))
            self._clock.cpu_offset = float(state.get("train_cpu_seconds", 0.0))
            self._window_start = self._clock.offset


def _base_model(model: nn.Module) -> nn.Module:
    """The transformers model inside a PEFT wrapper (or the model itself)."""
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if callable(get_base_model) else model


def _loss_is_batch_mean(model: nn.Module | None) -> bool:
    return model is not None and type(_base_model(model)).__name__.endswith(_SEQUENCE_LEVEL)
