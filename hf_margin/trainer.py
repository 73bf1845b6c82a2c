"""`MarginTrainer`: a `transformers.Trainer` with MMS selective sampling, epoch pruning and MMR regularization, and
`MarginTrainerMixin`, the same on top of any `Trainer` subclass.

Thin glue: each Trainer hook below hands its work to the selection strategy (`strategies/`), the MMR add-on
(`regularization.py`) and the head tap (`heads.py`); the math is in `margin.py`, `criteria.py` and `selection/`.
Strategies see the trainer only through `TrainerAdapter`, which, with the hooks of the mixin, is the one place that
follows the Trainer's private API. With every margin feature off, every hook is the host trainer's own.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import nn
from transformers import ProgressCallback, Trainer, TrainerCallback
from transformers.utils import logging

from .batch import LABEL_KEYS, find_labels
from .clock import TrainClock
from .config import PRUNING_CRITERIA, MarginSettings
from .criteria import get_criterion
from .heads import HeadTap, find_classifier, is_causal_lm, out_features, prediction_level
from .margin import minimal_margin_scores
from .ranking import RankedScores, score_dataset
from .regularization import MultiMarginRegularizer
from .selection import logs_after
from .strategies import MetricBuffer, NonFiniteWatch, build_strategy
from .strategies.base import check_labels, check_single_label, first_sample

logger = logging.get_logger(__name__)

# Model classes whose loss is a per-batch mean even though their forward accepts loss kwargs, and which give one
# prediction per sample: the ones margins apply to.
_SEQUENCE_LEVEL = ("ForSequenceClassification", "ForImageClassification", "ForAudioClassification")


class TrainerAdapter:
    """
    What the margin machinery asks of the Trainer (the `StrategyHost` that strategies see): its public state, a train
    loader built by the Trainer's own machinery, inputs prepared for the device, the head tap, the metrics buffer and
    the non-finite watch. The private Trainer members it needs are read here and nowhere else in the library.
    """

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.metrics = MetricBuffer()
        self.nonfinite = NonFiniteWatch()
        self.head_tap: HeadTap | None = None
        self.head_name: str | None = None
        self.causal_lm = False
        self._pad_token_id: int | None = None
        self._pooling_checked = False

    # ---- the trainer's public state, read through ----

    @property
    def args(self):
        return self.trainer.args

    @property
    def state(self):
        return self.trainer.state

    @property
    def model(self) -> nn.Module:
        return self.trainer.model

    @property
    def label_names(self) -> list[str]:
        return self.trainer.label_names

    @property
    def train_dataset(self) -> Any:
        return self.trainer.train_dataset

    @property
    def data_collator(self) -> Any:
        return self.trainer.data_collator

    # ---- what needs the Trainer's private members ----

    @property
    def train_batch_size(self) -> int:
        """The per-device train batch size in use (`auto_find_batch_size` lowers it)."""
        return self.trainer._train_batch_size

    def train_loader(
        self,
        dataset: Any,
        batch_size: int,
        sampler: torch.utils.data.Sampler | None = None,
        collate: Any = None,
        keep_columns: tuple[str, ...] = (),
    ) -> torch.utils.data.DataLoader:
        """
        A train dataloader made by the Trainer's own `_get_dataloader` (`seed_worker`, `drop_last`, workers, column
        removal, `accelerator.prepare`), with `sampler` (None: the Trainer's own), `collate` instead of the
        trainer's collator, and `keep_columns` kept by `remove_unused_columns`.
        """
        trainer = self.trainer
        if keep_columns:
            trainer._set_signature_columns_if_needed()
            trainer._signature_columns += [c for c in keep_columns if c not in trainer._signature_columns]
        user_collator = trainer.data_collator
        if collate is not None:
            trainer.data_collator = collate  # `_get_dataloader` reads the collator from the trainer
        try:
            return trainer._get_dataloader(
                dataset=dataset,
                description="Training",
                batch_size=batch_size,
                sampler_fn=trainer._get_train_sampler if sampler is None else (lambda _: sampler),
                is_training=True,
            )
        finally:
            trainer.data_collator = user_collator

    def prepare_inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        return self.trainer._prepare_inputs(batch)

    # ---- public Trainer machinery ----

    def forward_context(self):
        return self.trainer.compute_loss_context_manager()

    def autocast(self, dtype: str | None = None):
        if dtype is None:
            return self.trainer.accelerator.autocast()
        return torch.autocast(device_type=self.args.device.type, dtype=getattr(torch, dtype))

    def gather(self, tensors: Any) -> Any:
        return self.trainer.accelerator.gather(tensors)

    def logs_after_this_step(self) -> bool:
        """Whether a training log follows this optimizer step: per-step traces are read then only."""
        return logs_after(self.state.global_step, self.state.logging_steps, self.args.logging_strategy != "steps")

    def set_max_steps(self, max_steps: int) -> None:
        """The run's end, once known better than at the start: the Trainer's stop, final save and progress bar."""
        self.state.max_steps = max_steps
        for callback in self.trainer.callback_handler.callbacks:
            bar = getattr(callback, "training_bar", None) if isinstance(callback, ProgressCallback) else None
            if bar is not None and bar.total != max_steps:
                bar.total = max_steps
                bar.refresh()

    # ---- the last linear layer ----

    def bind_head(self, head: nn.Module | None, name: str | None, model: nn.Module) -> None:
        """Tap `head`, the last linear layer of the model `train()` trains (model_init builds a new one)."""
        self.head_name = name
        self.causal_lm = is_causal_lm(model)
        if self.head_tap is not None and self.head_tap.layer is not head:
            self.head_tap.remove()
            self.head_tap = None
        if head is not None and self.head_tap is None:
            # a language model's [vocabulary, hidden] head is read as a view, unless an engine shards it outside
            # its forward
            sharded = self.trainer.is_fsdp_enabled or self.trainer.is_deepspeed_enabled
            self.head_tap = HeadTap(head, copy_weight=sharded or not self.causal_lm)  # inert outside `watch_head`
        self._pooling_checked = False
        config = getattr(_base_model(model), "config", None)
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

    def logits_of(self, outputs: Any, tap: Any, field_name: str, required: bool = True) -> torch.Tensor | None:
        """
        The `[B, C]` classification logits of a model output, checked against what the head tap saw. `None` when they
        are not per-sample class scores and `required` is False; a `ValueError` naming `field_name` otherwise.
        """
        logits = outputs.get("logits") if isinstance(outputs, Mapping) else outputs[1] if len(outputs) > 1 else None
        ok = isinstance(logits, torch.Tensor) and logits.dim() == 2 and logits.shape[1] >= 2
        if ok and tap is not None and tap.per_position and not self._pooling_checked:
            # once per run (it waits for the device): the tap pools the position the model pools
            ok = self._pooling_checked = torch.equal(tap.logits.detach(), logits.detach())
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


class _StepHooks(TrainerCallback):
    """Tells the strategy each optimizer step has ended, before the Trainer logs, evaluates or saves."""

    def __init__(self, trainer: MarginTrainerMixin):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer.strategy.after_step(self.trainer.margin)


class MarginTrainerMixin:
    """
    The margin machinery as a mixin over the Trainer's hooks, configured by the [`MarginFields`] of the arguments:
    put it before any `Trainer` subclass, `class MarginSFTTrainer(MarginTrainerMixin, SFTTrainer)`, and give that
    trainer arguments that carry the fields (`class Config(MarginFields, SFTConfig)`). [`MarginTrainer`] is the
    mixin on `Trainer`. With every feature off (the defaults, or arguments without the fields) every hook is the
    host trainer's own.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.margin_settings = settings = MarginSettings.from_args(self.args)
        self.strategy = build_strategy(settings)
        self.mmr = MultiMarginRegularizer(settings.mmr_alpha, settings.mmr_alpha_end) if settings.mmr_on else None
        self.margin = TrainerAdapter(self)
        self._clock: TrainClock | None = None
        self._window_start = 0.0
        self._margin_state_loaded: str | None = None
        self._lr_wrapped = False
        if _loss_is_batch_mean(self.model):
            self.model_accepts_loss_kwargs = False  # exact gradient accumulation: see MarginTrainer's docstring
        if settings.is_stock:
            return
        if self.strategy.owns_loss and self.compute_loss_func is not None:
            raise ValueError(
                f"{self.strategy.setting} computes the (weighted) cross-entropy itself and cannot honour a "
                "compute_loss_func; drop one of them."
            )
        loss_type = getattr(self.args, "loss_type", None)  # a host trainer's own loss (TRL's SFTConfig: "nll", ...)
        if self.strategy.owns_loss and loss_type not in (None, "nll"):
            raise ValueError(
                f"{self.strategy.setting} computes the (weighted) cross-entropy itself and cannot honour "
                f"loss_type={loss_type!r}; use loss_type='nll' or drop {self.strategy.field}."
            )
        if self.strategy.variable_passes:
            self.add_callback(_StepHooks(self))
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

    @property
    def head_tap(self) -> HeadTap | None:
        return self.margin.head_tap

    @property
    def head_name(self) -> str | None:
        return self.margin.head_name

    # ---- set-up checks: fail before training, naming the field ----

    @property
    def _field(self) -> str:
        return self.strategy.setting if self.strategy.selects else "mmr_alpha"

    @property
    def _needs_margins(self) -> bool:
        return self.strategy.needs_head or self.mmr_on

    @property
    def _reads_classes(self) -> bool:
        return self.strategy.reads_classes or self.mmr_on

    def _check_model(self, model: nn.Module) -> None:
        if not self._reads_classes:
            return  # nothing here reads the classes
        base = _base_model(self.accelerator.unwrap_model(model))
        kind, level = type(base).__name__, prediction_level(base)
        if level == "causal_lm":
            self._check_causal_lm(kind)
            return
        if level == "token":
            raise ValueError(
                f"{self._field}: margins need one prediction per sample, but {kind} predicts per token or span; "
                "use selection='none', pruning='none' and mmr_alpha=0 with this model."
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

    def _check_causal_lm(self, kind: str) -> None:
        """A causal LM trains with epoch pruning by a criterion that scores its tokens at little cost, and nothing
        else: a pool's scoring forward costs a full forward, which the measurements show does not pay."""
        if self.mmr_on:
            raise ValueError(
                f"mmr_alpha: {kind} is a causal language model; MMR is defined for classifiers, not for next-token "
                "prediction over a vocabulary. Use mmr_alpha=0 with this model."
            )
        if not self.strategy.serves_causal_lm:
            raise ValueError(
                f"{self._field}: {kind} is a causal language model, and this mechanism needs one prediction per "
                "sample (pool selection would also pay a full scoring forward per step). Use pruning=... instead: it "
                "scores each sequence from the logits of its own training forward."
            )
        criterion = self.strategy.criterion
        if not criterion.vocab_lean:
            lean = [name for name in PRUNING_CRITERIA if name != "none" and get_criterion(name).vocab_lean]
            raise ValueError(
                f"{self._field}: scoring a causal LM's tokens by {criterion.name!r} needs a softmax over the "
                f"vocabulary, a tensor as large as the logits; use one of {lean}."
            )

    def _find_head(self, model: nn.Module) -> tuple[str | None, nn.Module | None]:
        """The last linear layer; a `ValueError` naming `classifier_name` when margins need it and it is unusable."""
        unwrapped = self.accelerator.unwrap_model(model)
        try:
            name, head = find_classifier(unwrapped, self.margin_settings.classifier_name)
        except ValueError:
            if self._needs_margins:
                raise
            return None, None  # only the mms_train_mean trace would use it
        if is_causal_lm(unwrapped):
            return name, head  # its output embeddings: a row per vocabulary entry
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

    def _bind_head(self, model: nn.Module) -> None:
        name, head = self._find_head(model)
        self.margin.bind_head(head, name, self.accelerator.unwrap_model(model))
        if self.strategy.owns_loss and not self.margin.causal_lm:
            # its loss is a weighted mean over the micro-batch: the Trainer divides it by the accumulation steps (a
            # causal LM's is normalised by the Trainer's token count, as the model's own loss)
            self.model_accepts_loss_kwargs = False

    def _check_train_dataset(self, dataset: Any) -> None:
        self.strategy.check_dataset(self.margin, dataset)
        if self.mmr_on:
            check_labels("mmr_alpha", "MMR", dataset, self.label_names)
        first = first_sample(dataset) if self._reads_classes else None
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
            self.strategy.start(self.margin)
            self.margin.metrics.clear()
            self._margin_state_loaded = None
            self._lr_wrapped = False
        self._clock = TrainClock()
        self._window_start = 0.0
        try:
            return super()._inner_training_loop(*args, **kwargs)
        finally:
            self._clock = None

    def get_train_dataloader(self):
        if self.margin_settings.is_stock:
            return super().get_train_dataloader()
        if self.train_dataset is None:
            raise ValueError("Trainer: training requires a train_dataset.")
        self._check_train_dataset(self.train_dataset)
        loader = self.strategy.train_dataloader(self.margin)
        return loader if loader is not None else super().get_train_dataloader()

    def set_initial_training_values(self, args, dataloader):
        values = super().set_initial_training_values(args, dataloader)
        if self.margin_settings.is_stock:
            return values
        *head, max_steps = values
        return (*head, self.strategy.planned_max_steps(self.margin, max_steps))

    def _init_training_state(self, max_steps, num_update_steps_per_epoch, num_train_epochs, resume, trial):
        epochs, steps = super()._init_training_state(
            max_steps, num_update_steps_per_epoch, num_train_epochs, resume, trial
        )
        if self.margin_settings.is_stock or resume is None or not self.strategy.variable_passes:
            return epochs, steps
        # epochs of different lengths: the strategy knows where the checkpoint's step falls
        self._load_margin_state(resume)
        epochs, update_steps = self.strategy.resume_point(self.margin, self.state.global_step)
        skipped = 0 if self.args.ignore_data_skip else update_steps * self.args.gradient_accumulation_steps
        return epochs, skipped

    def get_batch_samples(self, epoch_iterator: Iterator, num_batches: int, device: torch.device):
        if self._clock is not None:
            self._clock.start_once()
        if self.margin_settings.is_stock:
            return super().get_batch_samples(epoch_iterator, num_batches, device)
        if self.strategy.drives_lr and not self._lr_wrapped:
            self._drive_lr_by_progress()
        batches = self.strategy.draw_batches(self.margin, epoch_iterator, num_batches, device)
        if batches is None:
            batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        else:
            num_items = self._get_num_items_in_batch(batches, device)
        if not batches and self.strategy.variable_passes:
            self.control.should_epoch_stop = True  # a shortened pass ends before the Trainer's full-pass count
        return batches, num_items

    def _drive_lr_by_progress(self) -> None:
        """Make the LR schedule read the strategy's clock (the progress through the passes), not the step count."""
        scheduler = self.lr_scheduler
        if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
            raise ValueError(
                f"{self.strategy.setting} with pruning_rule={self.margin_settings.pruning_rule!r} runs the LR "
                f"schedule by the progress through the passes, which needs a LambdaLR schedule (every "
                f"lr_scheduler_type but 'reduce_lr_on_plateau'); got {type(scheduler).__name__}. Use "
                "pruning_rule='fixed' with this scheduler."
            )
        scheduler.lr_lambdas = [_on_clock(f, self.strategy.virtual_step) for f in scheduler.lr_lambdas]
        self._lr_wrapped = True

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
        margin = self.margin
        pooled = None if margin.causal_lm else inputs  # a causal LM's head is read at every position
        with margin.watch_head(pooled, labels if self.mmr_on else None) as tap:
            loss, outputs = self.strategy.forward_loss(margin, super().compute_loss, model, inputs, num_items_in_batch)
        if tap is not None and margin.causal_lm:
            tap.features = tap.logits = None  # release the graph
        elif tap is not None:
            logits = margin.logits_of(outputs, tap, self._field, required=self._needs_margins)
            step = self.state.global_step
            if logits is not None and margin.logs_after_this_step():
                with torch.no_grad():
                    margin.metrics.add("mms_train_mean", minimal_margin_scores(logits, tap.weight).mean())
            if self.mmr_on:
                alpha = self.mmr.alpha(step, self.state.max_steps)
                scaled = self.compute_loss_func is not None
                loss = loss + self.mmr.loss_term(tap.penalty, alpha, labels, num_items_in_batch, scaled).to(loss.dtype)
                margin.metrics.add("mmr_penalty", tap.penalty)
                margin.metrics.add("mmr_alpha", alpha)
            tap.features = tap.logits = tap.penalty = None  # release the graph
        return (loss, outputs) if return_outputs else loss

    def logits_of(self, outputs: Any, tap: Any, field_name: str, required: bool = True) -> torch.Tensor | None:
        return self.margin.logits_of(outputs, tap, field_name, required)

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
            margin = self.margin
            margin.nonfinite.raise_if_seen(margin.gather if self.args.world_size > 1 else None)
            logs.update(margin.metrics.flush(margin.gather, self.args.device))
            logs.update(self.strategy.log_metrics(margin, now - self._window_start if timed else None))
            self._window_start = now
        if "train_runtime" in logs and not settings.is_stock:
            self.margin.nonfinite.raise_if_seen()
            totals, verdict = self.strategy.end_of_run(self.margin, now)
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
        if checkpoint is not None and not self.margin_settings.is_stock:
            self._load_margin_state(checkpoint)

    def _load_margin_state(self, checkpoint: str) -> None:
        if self._margin_state_loaded == checkpoint:
            return
        self._margin_state_loaded = checkpoint
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


class MarginTrainer(MarginTrainerMixin, Trainer):
    """
    [`~transformers.Trainer`] with margin-based training, configured by [`MarginTrainingArguments`]:

    - **MMS selective sampling** (`selection="mms"`, and the baselines `uniform`, `entropy`, `loss`, ...): each
      micro-batch is the `batch` samples chosen from a pool of `round(k * batch)`, scored by one no-grad forward.
    - **Cached margins** (`selection="mms_cached"`): no pool and no scoring forward; each sample's MMS is kept from
      its training forward, and the sampler spends each epoch mostly on the samples with small or unknown MMS.
    - **Epoch pruning** (`pruning="margin"`, ...; `pruning_rule` `fixed`, `learned` or `infobatch`): each pass over
      the data trains on what its rule keeps, so the run has fewer optimizer steps.
    - **MMR regularization** (`mmr_alpha > 0`): `alpha * multi_margin_penalty(...)` added to the loss.

    With `selection="none"`, `pruning="none"` and `mmr_alpha=0` (or a plain `TrainingArguments`) every hook is the
    Trainer's own: no hooks on the model, no extra log keys. One difference on purpose, always on: sequence- and
    image-level classifiers (`*ForSequenceClassification`, `*ForImageClassification`, timm through
    `TimmWrapperForImageClassification`) accept loss kwargs but return a per-batch mean, which stock `Trainer` then
    fails to divide under gradient accumulation; they are not passed `num_items_in_batch`, so their accumulated
    training equals the large batch. Models that honour `num_items_in_batch` (causal LMs, token classifiers) keep the
    Trainer's own handling.

    Logged with the training loss when a feature is on (gathered over processes): `mms_train_mean` (mean MMS of the
    samples of the step before the log), `mms_pool_mean` / `mms_selected_mean` (pool selection),
    `mms_cached_known_share` / `mms_cached_easy_share` (cached margins), `pruning_pass` / `pruned_share` /
    `pruning_steps_saved` (pruning), `mmr_penalty`, `mmr_alpha`; with `log_timing=True` also `train_seconds` /
    `train_cpu_seconds` (wall and process CPU time of training, evaluation excluded), `scoring_time_share` and
    `break_even_step_ratio`, and the run's totals.

    Example:

    ```python
    from hf_margin import MarginTrainer, MarginTrainingArguments

    args = MarginTrainingArguments("out", selection="mms", selection_oversample=4, mmr_alpha=1e-4)
    trainer = MarginTrainer(model=model, args=args, train_dataset=train, eval_dataset=dev)
    trainer.train()
    ```
    """


def _on_clock(multiplier, clock):
    """An LR multiplier read at the strategy's clock instead of the optimizer step. A plain function, which
    `LambdaLR.state_dict` leaves out of checkpoints (the clock is rebuilt from the strategy's state on resume)."""

    def at_clock(step: int) -> float:
        return multiplier(clock(step))

    return at_clock


def _base_model(model: nn.Module) -> nn.Module:
    """The transformers model inside a PEFT wrapper (or the model itself)."""
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if callable(get_base_model) else model


def _loss_is_batch_mean(model: nn.Module | None) -> bool:
    return model is not None and type(_base_model(model)).__name__.endswith(_SEQUENCE_LEVEL)
