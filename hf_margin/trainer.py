"""`MarginTrainer`: a `transformers.Trainer` with MMS selective sampling and MMR regularization.

Thin glue: the math lives in `margin.py`, the choice of samples in `selection.py`, the head lookup in
`heads.py`. This file turns Trainer state into their arguments.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, IterableDataset
from transformers import Trainer
from transformers.utils import logging

from .config import MarginTrainingArguments
from .heads import FeatureCapture, find_classifier
from .margin import minimal_margin_scores, multi_margin_penalty, weighted_cross_entropy
from .selection import (
    KEEP_LARGEST,
    CachedMarginSampler,
    MarginCache,
    linear_ramp,
    pool_scores,
    select_by_score,
    select_uniform,
)

logger = logging.get_logger(__name__)

_DEFAULTS = MarginTrainingArguments.__dataclass_fields__
_LABEL_KEYS = ("labels", "label", "label_ids")
# selection="mms_cached": the dataset index and loss weight of each sample, carried through the train loader
INDEX_KEY, WEIGHT_KEY = "hf_margin_index", "hf_margin_weight"


class MarginTrainer(Trainer):
    """
    [`~transformers.Trainer`] with margin-based training, configured by [`MarginTrainingArguments`]:

    - **MMS selective sampling** (`selection="mms"`, and the baselines `uniform`, `entropy`, `loss`):
      the train dataloader yields pools of `round(k * batch)` samples; before each optimizer step the
      pool is scored with one no-grad forward pass (eval mode by default, the training autocast) and
      the `batch` samples to keep are the only ones that reach the training forward and backward.
      One epoch scores every sample once, so it has `k` times fewer optimizer steps; `len()` of the
      train dataloader is the number of steps, and `max_steps`, epochs and the LR schedule follow.
    - **Cached margins** (`selection="mms_cached"`): no pool and no scoring forward. The MMS of every
      trained sample is computed from the logits of its training forward and kept, keyed by dataset
      index (across epochs and in checkpoints); the train sampler spends each epoch on the samples
      with unknown or small cached MMS and on a random `selection_easy_rate` share of the others,
      whose loss is weighted by `1 / selection_easy_rate` (see `selection.plan_cached_pass`).
    - **MMR regularization** (`mmr_alpha > 0`): `alpha * multi_margin_penalty(...)` is added to the
      loss in `compute_loss`, with the features read by a forward pre-hook on the last linear layer.

    With `selection="none"` and `mmr_alpha=0` it trains exactly like `Trainer`. One difference on
    purpose, always on: the model is not passed `num_items_in_batch`, and the per-batch mean loss is
    divided by the accumulation steps, so gradient accumulation matches the equivalent large batch
    (models such as BERT accept loss kwargs but return a plain mean, which stock `Trainer` then fails
    to divide). A `compute_loss_func` still receives `num_items_in_batch` as in `Trainer`.

    Logged with the training loss (gathered over processes): `mms_train_mean` (mean MMS of the samples of the
    step before the log, at their training forward, whenever the head is found), `mms_pool_mean` and
    `mms_selected_mean` (at scoring time), `mms_cached_known_share` and `mms_cached_easy_share` (cached
    selection: share of the dataset scored so far, share of the samples drawn since the last log that were easy),
    `scoring_time_share` (share of the wall time since the last log spent choosing samples, or keeping
    margins), `mmr_penalty`, `mmr_alpha`; on every log while training,
    `train_seconds` (wall time of training so far, evaluation excluded).

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
        # Exact gradient accumulation: a per-micro-batch mean, divided by the accumulation steps by
        # `training_step`; a user's `compute_loss_func` keeps normalising by `num_items_in_batch`.
        self.model_accepts_loss_kwargs = False
        self.loss_is_scaled_for_ga = self.compute_loss_func is not None

        self.selection = self._margin_arg("selection")
        if self.selection == "mms_cached" and self.compute_loss_func is not None:
            raise ValueError(
                "selection='mms_cached' computes the (weighted) cross-entropy itself and cannot honour a "
                "compute_loss_func; drop one of them."
            )
        self._cache: MarginCache | None = None  # selection="mms_cached": built with the train dataloader
        self._cached_sampler: CachedMarginSampler | None = None
        self._compiled_scorer: nn.Module | None = None  # torch.compile of the model, for the scoring pass only
        self.mmr_on = self._margin_arg("mmr_alpha") > 0 or bool(self._margin_arg("mmr_alpha_end"))
        self._check_model()
        self._head_name, self._head = self._find_head()
        self._capture = FeatureCapture(self._head) if self.mmr_on else None
        if self.train_dataset is not None:
            self._check_train_dataset(self.train_dataset)

        self._generator = torch.Generator().manual_seed(self.args.seed + self.args.process_index)
        self._buffered: dict[str, list[torch.Tensor | float]] = defaultdict(list)  # per-step values until logged
        # Seconds spent choosing samples (scoring forward included) and drawing the k-times larger pools,
        # over the whole run and since the last training log: the live break-even accounting.
        self._scoring_seconds = self._loading_seconds = 0.0
        self._scoring_seconds_window = self._loading_seconds_window = 0.0
        self._window_start: float | None = None  # training seconds at the last training log
        self._train_clock: _TrainClock | None = None

    # ---- set-up checks: fail before training, naming the field ----

    def _margin_arg(self, name: str) -> Any:
        # A plain `TrainingArguments` is accepted and means every margin feature off.
        return getattr(self.args, name, _DEFAULTS[name].default)

    def _check_model(self) -> None:
        if self.selection in ("none", "uniform") and not self.mmr_on:
            return  # nothing here reads the classes
        config = getattr(self.accelerator.unwrap_model(self.model), "config", None)
        field_name = "selection" if self.selection != "none" else "mmr_alpha"
        num_labels = getattr(config, "num_labels", None)
        problem_type = getattr(config, "problem_type", None)
        if problem_type == "regression" or num_labels == 1:
            raise ValueError(
                f"{field_name}: margins need a classifier with at least 2 classes; this model is a regression "
                f"head (num_labels={num_labels}, problem_type={problem_type!r})."
            )
        if problem_type == "multi_label_classification":
            raise ValueError(f"{field_name}: margins need single-label classification, not multi-label.")
        if num_labels is not None and num_labels < 2:
            raise ValueError(f"{field_name}: margins need at least 2 classes, the model has num_labels={num_labels}.")

    def _find_head(self) -> tuple[str | None, nn.Linear | None]:
        model = self.accelerator.unwrap_model(self.model)
        needed = self.selection in ("mms", "mms_cached") or self.mmr_on
        try:
            name, head = find_classifier(model, self._margin_arg("classifier_name"))
        except ValueError:
            if needed:
                raise
            return None, None  # only the mms_train_mean log needs it
        if head.out_features < 2:
            if needed:
                raise ValueError(
                    f"classifier_name: the last linear layer {name!r} has {head.out_features} output; "
                    "margins need at least 2 classes."
                )
            return None, None
        return name, head

    def _check_train_dataset(self, dataset: Any) -> None:
        if self.selection == "none" and not self.mmr_on:
            return
        if self.selection != "none":
            if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
                raise ValueError(
                    f"selection={self.selection!r} needs a map-style train_dataset with a length "
                    "(an IterableDataset has no pools to draw from); use selection='none' or a map-style dataset."
                )
            pool, world = self.selection_pool_size, self.args.world_size
            if self.selection != "mms_cached" and pool * world > len(dataset):
                raise ValueError(
                    f"selection_oversample: the scoring pool of {pool} samples per process x {world} process(es) "
                    f"is larger than the train dataset ({len(dataset)} samples); lower selection_oversample or "
                    "per_device_train_batch_size."
                )
        needs_labels = self.selection in ("loss", "mms_cached") or self.mmr_on
        if needs_labels and hasattr(dataset, "__getitem__") and _has_length(dataset):
            first = dataset[0]
            if self.selection == "mms_cached" and not isinstance(first, Mapping):
                raise ValueError(
                    "selection='mms_cached' needs samples that are dicts (it adds each sample's index to it); "
                    f"the train dataset returns {type(first).__name__}."
                )
            label_keys = set(_LABEL_KEYS) | set(self.label_names)
            if isinstance(first, Mapping) and not label_keys & set(first):
                field_name = "mmr_alpha" if self.selection not in ("loss", "mms_cached") else "selection"
                what = {"loss": "hard-negative mining", "mms_cached": "cached selection's weighted loss"}
                raise ValueError(
                    f"{field_name}: {what.get(self.selection, 'MMR')} needs labels, but the train dataset's "
                    f"samples have none of {sorted(label_keys)} (keys: {sorted(first)})."
                )

    # ---- selection: the dataloader yields pools, `get_batch_samples` keeps `batch` of each ----

    @property
    def selection_pool_size(self) -> int:
        """Samples per process scored for one micro-batch: round(k * train batch size)."""
        return max(round(self._margin_arg("selection_oversample") * self._train_batch_size), 1)

    def get_train_dataloader(self):
        """
        Without selection, `Trainer`'s loader. With selection, the same loader (sampler, `seed_worker`,
        `drop_last`, collator, `accelerator.prepare`) over pools of `selection_pool_size` samples: one
        pool per micro-batch, so its `len()` is the number of micro-batches the Trainer will run.
        """
        if self.selection == "none":
            return super().get_train_dataloader()
        if self.train_dataset is None:
            raise ValueError("Trainer: training requires a train_dataset.")
        self._check_train_dataset(self.train_dataset)
        if self.selection == "mms_cached":
            return self._get_cached_train_dataloader()
        return self._get_dataloader(
            dataset=self.train_dataset,
            description="Training",
            batch_size=self.selection_pool_size,
            sampler_fn=self._get_train_sampler,
            is_training=True,
        )

    def _get_cached_train_dataloader(self):
        """
        `Trainer`'s loader over the train dataset with each sample tagged by its index and loss weight, drawn
        by a `CachedMarginSampler` over the margin cache (kept if the dataset keeps its length).
        """
        dataset = self.train_dataset
        if self._cache is None or len(self._cache) != len(dataset):
            self._cache = MarginCache(len(dataset), self.args.device)
        # Keep the tags through `remove_unused_columns` and past the user's collator, which never sees them.
        self._set_signature_columns_if_needed()
        self._signature_columns += [key for key in (INDEX_KEY, WEIGHT_KEY) if key not in self._signature_columns]
        user_collator = self.data_collator
        self.data_collator = _TaggedCollator(user_collator)  # `_get_dataloader` reads the collator from here
        try:
            return self._get_dataloader(
                dataset=_TaggedDataset(dataset),
                description="Training",
                batch_size=self._train_batch_size,
                sampler_fn=self._get_train_sampler,
                is_training=True,
            )
        finally:
            self.data_collator = user_collator

    def _get_train_sampler(self, train_dataset: Dataset | None = None):
        if self.selection != "mms_cached":
            return super()._get_train_sampler(train_dataset)
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        self._cached_sampler = CachedMarginSampler(
            self._cache,
            self._margin_arg("selection_hard_fraction"),
            self._margin_arg("selection_easy_rate"),
            seed,
            rescale=self._margin_arg("selection_easy_rescale"),
        )
        return self._cached_sampler

    def get_batch_samples(
        self, epoch_iterator: Iterator, num_batches: int, device: torch.device
    ) -> tuple[list, torch.Tensor | int | None]:
        """Draw `num_batches` pools and keep the selected samples of each (the Trainer's prefetch hook)."""
        if self._train_clock is not None:
            self._train_clock.start_once()
        if self._cached_sampler is not None and not self._selecting_now():
            self._cached_sampler.hard_fraction = 1.0  # plain passes from the next pass on
        if self.selection in ("none", "mms_cached"):
            return super().get_batch_samples(epoch_iterator, num_batches, device)
        batch_samples = []
        for _ in range(num_batches):
            start = time.perf_counter()
            try:
                pool = next(epoch_iterator)
            except StopIteration:
                break
            loading = time.perf_counter() - start
            self._loading_seconds += loading
            self._loading_seconds_window += loading
            batch_samples.append(self._select_from_pool(pool))
        return batch_samples, self._get_num_items_in_batch(batch_samples, device)

    def _select_from_pool(self, pool: dict[str, Any]) -> dict[str, Any]:
        pool_size = _batch_length(pool)
        keep = min(self._train_batch_size, pool_size)
        if not self._selecting_now():  # the pool is a uniform draw, so its first `keep` samples are one too
            return self._trimmed(_index_batch(pool, torch.arange(keep), pool_size))
        start = time.perf_counter()
        pool = self._prepare_inputs(pool)
        if self.selection == "uniform":
            indices = select_uniform(pool_size, keep, self._generator)
        else:
            labels = _find_labels(pool, self.label_names)
            logits = self._score_pool(pool)
            weight = self._head.weight if self._head is not None else None
            scores = pool_scores(self.selection, logits, weight, labels)
            indices = select_by_score(scores, keep, largest=KEEP_LARGEST[self.selection]).to(scores.device)
            if weight is not None and self._traces_this_step():
                mms = scores if self.selection == "mms" else minimal_margin_scores(logits, weight)
                self._buffered["mms_pool_mean"].append(mms.mean())
                self._buffered["mms_selected_mean"].append(mms[indices].mean())
        batch = self._trimmed(_index_batch(pool, indices, pool_size))
        elapsed = time.perf_counter() - start
        self._scoring_seconds += elapsed
        self._scoring_seconds_window += elapsed
        return batch

    def _trimmed(self, batch: dict[str, Any]) -> dict[str, Any]:
        collator = self.data_collator
        if not self._margin_arg("selection_trim_padding") or getattr(collator, "padding", None) == "max_length":
            return batch  # a fixed padded length is what the collator would give the selected samples too
        return _trim_padding(batch, getattr(collator, "pad_to_multiple_of", None))

    def _selecting_now(self) -> bool:
        """Whether this optimizer step selects (`selection_until` of `max_steps` not yet reached)."""
        until = self._margin_arg("selection_until")
        return until >= 1.0 or self.state.global_step < until * self.state.max_steps

    def _scoring_autocast(self):
        dtype = self._margin_arg("selection_scoring_dtype")
        if dtype is None:
            return self.accelerator.autocast()
        return torch.autocast(device_type=self.args.device.type, dtype=getattr(torch, dtype))

    @torch.inference_mode()
    def _score_pool(self, pool: dict[str, Any]) -> torch.Tensor:
        """
        Logits `[P, C]` of a pool, without labels, from one forward (or one per scoring micro-batch), in eval mode
        unless configured not to.
        """
        model = self.model
        if self._margin_arg("selection_scoring_compile") and self._compiled_scorer is None:
            self._compiled_scorer = torch.compile(model)  # shares the parameters; the training forward stays eager
        forward = model if self._compiled_scorer is None else self._compiled_scorer  # a compiled module has no bool
        inputs = {k: v for k, v in pool.items() if k not in self.label_names and k not in _LABEL_KEYS}
        was_training = model.training
        model.train(not self._margin_arg("selection_eval_mode"))
        parts = []
        try:
            with self.compute_loss_context_manager(), self._scoring_autocast():
                for rows, chunk in self._scoring_chunks(inputs):
                    outputs = forward(**chunk)
                    parts.append((rows, outputs["logits"] if isinstance(outputs, Mapping) else outputs[0]))
        finally:
            model.train(was_training)
        for _, logits in parts:
            if logits.dim() != 2 or logits.shape[1] < 2:
                raise ValueError(
                    f"selection={self.selection!r} needs classification logits [batch, classes >= 2]; "
                    f"the model returned {list(logits.shape)}."
                )
        if len(parts) == 1:
            return parts[0][1].clone()  # a normal tensor, usable outside inference mode
        logits = torch.cat([part for _, part in parts])
        rows = torch.cat([rows for rows, _ in parts]).to(logits.device)
        return torch.empty_like(logits).index_copy_(0, rows, logits)  # back in pool order

    def _scoring_chunks(self, inputs: dict[str, Any]) -> list[tuple[torch.Tensor | None, dict[str, Any]]]:
        """
        The pool as one forward's inputs, or with `selection_scoring_batch_size` as micro-batches of that size,
        each with its pool rows: padded text is sorted by length first and each micro-batch cut to its own
        padding, so less of the scoring compute goes to padding.
        """
        size, pool_size = self._margin_arg("selection_scoring_batch_size"), _batch_length(inputs)
        if size is None or size >= pool_size:
            return [(None, inputs)]
        mask = inputs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 2:
            order = torch.argsort((mask != 0).sum(1).cpu(), stable=True)
        else:
            order = torch.arange(pool_size)
        chunks = []
        for start in range(0, pool_size, size):
            rows = order[start : start + size]
            chunks.append((rows, self._trimmed(_index_batch(inputs, rows, pool_size))))
        return chunks

    # ---- loss: MMR penalty and the MMS trace ----

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        tags = None
        if INDEX_KEY in inputs:  # a batch of the cached selection's train loader
            inputs = dict(inputs)
            tags = inputs.pop(INDEX_KEY), inputs.pop(WEIGHT_KEY)
        trace = self._head is not None and self._traces_this_step()
        if not model.training or (self._capture is None and not trace and tags is None):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = _find_labels(inputs, self.label_names)  # before `Trainer.compute_loss` pops them
        with self._capture.capture() if self._capture is not None else nullcontext():
            loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        logits = outputs["logits"] if isinstance(outputs, Mapping) else outputs[1]
        weight = self._head.weight
        mms = None
        if tags is not None:
            if labels is None:
                raise ValueError("selection='mms_cached' needs labels, and this training batch has none.")
            start = time.perf_counter()
            mms = minimal_margin_scores(logits, weight)
            self._update_cache(tags[0], mms)
            # the rescaled easy samples make this loss an unbiased estimate of the full data's
            loss = weighted_cross_entropy(logits, labels, tags[1], self.args.label_smoothing_factor)
            elapsed = time.perf_counter() - start
            self._scoring_seconds += elapsed
            self._scoring_seconds_window += elapsed
        if trace:
            with torch.no_grad():
                mms = minimal_margin_scores(logits, weight) if mms is None else mms
                self._buffered["mms_train_mean"].append(mms.mean())

        if self._capture is not None:
            if labels is None:
                raise ValueError("mmr_alpha: MMR needs labels, and this training batch has none.")
            alpha = self.current_mmr_alpha
            penalty = multi_margin_penalty(self._capture.pop(), logits, labels, weight)
            term = alpha * penalty
            if self.loss_is_scaled_for_ga and num_items_in_batch is not None:
                # the loss was normalised over the whole accumulated batch: weigh this micro-batch alike
                term = term * (labels != -100).sum() / num_items_in_batch
            loss = loss + term.to(loss.dtype)
            self._buffered["mmr_penalty"].append(penalty.detach())
            self._buffered["mmr_alpha"].append(alpha)
        return (loss, outputs) if return_outputs else loss

    def _update_cache(self, indices: torch.Tensor, mms: torch.Tensor) -> None:
        """Store the batch's MMS; with several processes every one stores every process's, so caches agree."""
        indices = indices.to(mms.device)
        if self.args.world_size > 1:
            indices, mms = self.accelerator.gather((indices, mms))
        self._cache.update(indices, mms, self.state.global_step)

    def _traces_this_step(self) -> bool:
        """The MMS trace is read on the optimizer step just before each training log, not on every step."""
        steps = self.state.logging_steps
        if self.args.logging_strategy != "steps" or not steps:
            return True
        return (self.state.global_step + 1) % steps == 0

    @property
    def current_mmr_alpha(self) -> float:
        """MMR weight at the current step: constant, or ramped linearly to `mmr_alpha_end`."""
        return linear_ramp(
            self._margin_arg("mmr_alpha"),
            self._margin_arg("mmr_alpha_end"),
            self.state.global_step,
            self.state.max_steps,
        )

    # ---- logging, timing, checkpoints ----

    def train(self, *args, **kwargs):
        self._train_clock = _TrainClock()
        self._window_start = None
        self._scoring_seconds_window = 0.0
        try:
            return super().train(*args, **kwargs)
        finally:
            self._train_clock = None

    def evaluate(self, *args, **kwargs):
        if self._train_clock is None:
            return super().evaluate(*args, **kwargs)
        with self._train_clock.paused():
            return super().evaluate(*args, **kwargs)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        now = None if self._train_clock is None else self._train_clock.seconds(self.state.log_history)
        if now is not None:
            logs["train_seconds"] = round(now, 3)
        if "loss" in logs:  # a training log: flush what the steps since the last one buffered
            device = self.args.device
            for key, values in self._buffered.items():
                if values:
                    # `gather`, not `gather_for_metrics`: the latter trims by the train loader's remainder
                    stacked = torch.stack([torch.as_tensor(v, dtype=torch.float32, device=device) for v in values])
                    logs[key] = self.accelerator.gather(stacked).mean().item()
            self._buffered.clear()
            if self._cache is not None:
                logs["mms_cached_known_share"] = round(self._cache.known_share(), 4)
                easy_share = self._cached_sampler.pop_easy_share() if self._cached_sampler is not None else None
                if easy_share is not None:
                    logs["mms_cached_easy_share"] = round(easy_share, 4)
            if self.selection != "none" and now is not None:
                if self._window_start is None:
                    self._window_start = self._train_clock.offset
                score_share, _, ratio = self._selection_shares(
                    self._scoring_seconds_window, self._loading_seconds_window, now - self._window_start
                )
                logs["scoring_time_share"] = round(score_share, 4)
                logs["break_even_step_ratio"] = round(ratio, 4)
                self._window_start = now
            self._scoring_seconds_window = self._loading_seconds_window = 0.0
        if "train_runtime" in logs and self.selection != "none":
            runtime = now if now is not None else logs["train_runtime"]  # evaluation excluded
            score_share, load_share, ratio = self._selection_shares(
                self._scoring_seconds, self._loading_seconds, runtime
            )
            logs["selection_seconds"] = round(self._scoring_seconds, 3)
            logs["selection_time_share"] = round(score_share, 4)
            logs["pool_loading_time_share"] = round(load_share, 4)
            logs["break_even_step_ratio"] = round(ratio, 4)
            if self.is_world_process_zero():
                if self.selection == "mms_cached":
                    spent = f"selection=mms_cached spent {100 * score_share:.1f}% of training time keeping margins"
                else:
                    spent = (
                        f"selection={self.selection} k={self._margin_arg('selection_oversample'):g} spent "
                        f"{100 * score_share:.1f}% of training time scoring pools and {100 * load_share:.1f}% "
                        "loading them"
                    )
                print(
                    f"hf_margin: {spent}; it saves wall-clock time only if it reaches its target in fewer than "
                    f"{100 * ratio:.0f}% of the optimizer steps that training without selection needs."
                )
        super().log(logs, start_time)

    def _selection_shares(self, scoring: float, loading: float, seconds: float) -> tuple[float, float, float]:
        """
        Scoring and pool-loading shares of `seconds` of training, and the break-even step ratio: the share of
        the optimizer steps of training without selection that this run may take and still finish sooner.
        A step costs the step without selection plus the scoring and the extra (k - 1) / k of pool loading,
        so the ratio is `1 - score_share - load_share * (k - 1) / k`.
        """
        seconds = max(seconds, 1e-9)
        k = 1.0 if self.selection == "mms_cached" else self._margin_arg("selection_oversample")  # no pool
        score_share, load_share = scoring / seconds, loading / seconds
        return score_share, load_share, max(1.0 - score_share - load_share * (k - 1) / k, 0.0)

    def _save_rng_state(self, output_dir: str) -> None:
        # Every process saves its own RNG state here, so this is where selection state goes too.
        super()._save_rng_state(output_dir)
        state = {
            "generator": self._generator.get_state(),
            "scoring_seconds": self._scoring_seconds,
            "loading_seconds": self._loading_seconds,
        }
        if self._cache is not None:
            state["margin_cache"] = self._cache.state_dict()
        torch.save(state, os.path.join(output_dir, f"margin_state_{self.args.process_index}.pt"))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        # Called once on every resume path before the first batch is drawn (RNG states load later).
        super()._load_optimizer_and_scheduler(checkpoint)
        path = None if checkpoint is None else os.path.join(checkpoint, f"margin_state_{self.args.process_index}.pt")
        if path is None or not os.path.isfile(path):
            if path is not None and self.selection == "uniform":
                logger.warning(f"No selection state in {checkpoint}: uniform selection restarts its generator.")
            return
        state = torch.load(path, weights_only=True)
        self._generator.set_state(state["generator"])
        self._scoring_seconds = float(state["scoring_seconds"])
        self._loading_seconds = float(state["loading_seconds"])
        if "margin_cache" in state and self.selection == "mms_cached":
            if self._cache is None:
                self._cache = MarginCache(state["margin_cache"]["margins"].shape[0], self.args.device)
            self._cache.load_state_dict(state["margin_cache"])


class _TrainClock:
    """
    Wall seconds of training from the first batch drawn, evaluation excluded, continuing the count
    of a resumed run.
    """

    def __init__(self):
        self.start: float | None = None
        self.excluded = 0.0
        self.paused_at: float | None = None
        self.offset: float | None = None

    def start_once(self) -> None:
        if self.start is None:
            self.start = time.perf_counter()

    def seconds(self, log_history: list[dict]) -> float:
        if self.offset is None:  # a resumed run continues from its last logged count
            self.offset = next((h["train_seconds"] for h in reversed(log_history) if "train_seconds" in h), 0.0)
        if self.start is None:
            return self.offset
        now = self.paused_at if self.paused_at is not None else time.perf_counter()
        return self.offset + now - self.start - self.excluded

    @contextmanager
    def paused(self) -> Iterator[None]:
        self.paused_at = time.perf_counter()
        try:
            yield
        finally:
            self.excluded += time.perf_counter() - self.paused_at
            self.paused_at = None


def _has_length(dataset: Any) -> bool:
    try:
        return len(dataset) > 0
    except TypeError:
        return False


def _find_labels(batch: Mapping[str, Any], label_names: list[str]) -> torch.Tensor | None:
    for key in (*label_names, *_LABEL_KEYS):
        value = batch.get(key)
        if isinstance(value, torch.Tensor):
            return value
    return None


def _batch_length(batch: Mapping[str, Any]) -> int:
    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return value.shape[0]
    raise ValueError("selection: the collated batch holds no tensor to take the batch size from.")


def _index_batch(batch: Mapping[str, Any], indices: torch.Tensor, pool_size: int) -> dict[str, Any]:
    """Keep the rows `indices` of every per-sample entry of a collated batch."""
    kept = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == pool_size:
            kept[key] = value[indices.to(value.device)]
        elif isinstance(value, (list, tuple)) and len(value) == pool_size:
            kept[key] = type(value)(value[i] for i in indices.tolist())
        else:
            kept[key] = value
    return kept


def _trim_padding(batch: dict[str, Any], multiple: int | None = None) -> dict[str, Any]:
    """
    Drop the columns at either end where `attention_mask` is zero in every row, from each `[B, L, ...]` tensor
    of the batch: what padding the selected rows alone would have needed, rounded up to `multiple`.
    """
    mask = batch.get("attention_mask")
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2 or mask.shape[1] == 0:
        return batch
    used = (mask != 0).any(dim=0).nonzero()
    if used.numel() == 0:
        return batch
    length = mask.shape[1]
    first, last = int(used[0]), int(used[-1]) + 1
    if multiple:  # widen into the padding, on the side it sits
        missing = -(last - first) % multiple
        extra_right = min(missing, length - last)
        first, last = max(0, first - (missing - extra_right)), last + extra_right
    if (first, last) == (0, length):
        return batch
    return {
        key: value[:, first:last]
        if isinstance(value, torch.Tensor) and value.dim() >= 2 and value.shape[:2] == mask.shape
        else value
        for key, value in batch.items()
    }


class _TaggedDataset(Dataset):
    """The train dataset read with `(index, weight)` keys from `CachedMarginSampler`, each sample tagged with both."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, float]) -> dict[str, Any]:
        return _tag(self.dataset[key[0]], *key)

    def __getitems__(self, keys: list[tuple[int, float]]) -> list[dict[str, Any]]:
        indices = [index for index, _ in keys]
        getitems = getattr(self.dataset, "__getitems__", None)  # a batched read, when the dataset has one
        samples = getitems(indices) if getitems is not None else [self.dataset[i] for i in indices]
        return [_tag(sample, *key) for sample, key in zip(samples, keys)]


def _tag(sample: Any, index: int, weight: float) -> dict[str, Any]:
    if not isinstance(sample, Mapping):
        raise ValueError(
            f"selection='mms_cached' needs samples that are dicts; the train dataset returned {type(sample).__name__}."
        )
    return {**sample, INDEX_KEY: index, WEIGHT_KEY: weight}


class _TaggedCollator:
    """Collates the samples without their tags with the user's collator, then adds the tags as tensors."""

    def __init__(self, collate: Any):
        self.collate = collate

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        index = torch.tensor([f[INDEX_KEY] for f in features], dtype=torch.long)
        weight = torch.tensor([f[WEIGHT_KEY] for f in features], dtype=torch.float32)
        batch = self.collate([{k: v for k, v in f.items() if k not in (INDEX_KEY, WEIGHT_KEY)} for f in features])
        batch[INDEX_KEY], batch[WEIGHT_KEY] = index, weight
        return batch
