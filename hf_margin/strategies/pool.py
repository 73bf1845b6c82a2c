"""Scored-pool selection (MMS selective sampling and its baselines): each micro-batch is chosen from a k-times larger
pool, scored with one no-grad forward."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ..batch import batch_length, find_labels, index_batch, length_sorted_chunks, trim_padding, without_labels
from ..clock import break_even
from ..criteria import Criterion, get_criterion
from ..margin import minimal_margin_scores
from ..selection import select_by_score, select_uniform, selecting_at
from .base import SelectionStrategy, StrategyHost, check_labels, label_free


class PoolSelection(SelectionStrategy):
    """
    `selection` = `uniform` or a criterion with a score (`mms`, `entropy`, `loss`, ...): the train loader yields pools
    of `round(k * batch)` samples (the Trainer's own loader machinery: sampler, `seed_worker`, `drop_last`, collator,
    `accelerator.prepare`), one per micro-batch, so its `len()` is the number of micro-batches and `max_steps`, epochs
    and the LR schedule follow. Just before each micro-batch the pool is scored and cut to the batch on the device;
    `uniform` draws from it without scoring.
    """

    selects = True

    def __init__(self, settings):
        super().__init__(settings)
        self.name = settings.selection
        self.criterion: Criterion | None = None if self.name == "uniform" else get_criterion(self.name)
        scored = self.criterion is not None
        self.needs_head = scored and self.criterion.needs_head
        self.needs_labels = scored and self.criterion.needs_labels
        self.reads_classes = scored
        self.generator = torch.Generator()
        self._compiled: nn.Module | None = None

    def pool_size(self, host: StrategyHost) -> int:
        """Samples per process scored for one micro-batch: round(k * train batch size)."""
        return max(round(self.settings.selection_oversample * host.train_batch_size), 1)

    def check_dataset(self, host: StrategyHost, dataset: Any) -> None:
        super().check_dataset(host, dataset)
        pool, world = self.pool_size(host), host.args.world_size
        if pool * world > len(dataset):
            raise ValueError(
                f"selection_oversample: the scoring pool of {pool} samples per process x {world} process(es) is "
                f"larger than the train dataset ({len(dataset)} samples); lower selection_oversample or "
                "per_device_train_batch_size."
            )
        if self.needs_labels:
            check_labels(self.setting, "its criterion", dataset, host.label_names)

    def start(self, host: StrategyHost) -> None:
        super().start(host)
        # Seeded at every train(), so a second run (model_init, hyperparameter search) draws what a first one would.
        self.generator.manual_seed(host.args.seed + host.args.process_index)
        self._compiled = None

    def train_dataloader(self, host: StrategyHost):
        return host.train_loader(host.train_dataset, self.pool_size(host))  # the Trainer's own sampler

    def draw_batches(
        self, host: StrategyHost, epoch_iterator: Iterator, num_batches: int, device: torch.device
    ) -> list:
        batches = []
        for _ in range(num_batches):
            with self.stopwatch.timing("loading"):
                pool = next(epoch_iterator, None)
            if pool is None:
                break
            with self.stopwatch.timing("scoring", host.args.device):
                batches.append(self.select(host, pool))
        return batches

    def select(self, host: StrategyHost, pool: dict[str, Any]) -> dict[str, Any]:
        """The micro-batch kept from a pool: the samples the criterion chooses, cut to their own padding."""
        size = batch_length(pool)
        keep = min(host.train_batch_size, size)
        if not selecting_at(host.state.global_step, host.state.max_steps, self.settings.selection_until):
            # the pool is a uniform draw, so its first `keep` samples are one too
            return self.trimmed(host, index_batch(pool, torch.arange(keep), size))
        pool = host.prepare_inputs(pool)
        if self.criterion is None:
            indices = select_uniform(size, keep, self.generator)
        else:
            logits, weight = self.score(host, pool)
            host.nonfinite.record(logits, self.setting)
            scores = self.criterion.scores(logits, labels=find_labels(pool, host.label_names), weight=weight)
            indices = select_by_score(scores, keep, largest=self.criterion.hardest == "largest")
            if weight is not None and host.logs_after_this_step():
                mms = scores if self.name == "mms" else minimal_margin_scores(logits, weight)
                host.metrics.add("mms_pool_mean", mms.mean())
                host.metrics.add("mms_selected_mean", mms[indices].mean())
        return self.trimmed(host, index_batch(pool, indices, size))

    def trimmed(self, host: StrategyHost, batch: dict[str, Any]) -> dict[str, Any]:
        collator = host.data_collator
        if not self.settings.selection_trim_padding or getattr(collator, "padding", None) == "max_length":
            return batch  # a fixed padded length is what the collator would give the selected samples too
        return trim_padding(batch, getattr(collator, "pad_to_multiple_of", None))

    @torch.no_grad()
    def score(self, host: StrategyHost, pool: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """
        Logits `[P, C]` of a pool from one label-free forward (or one per scoring micro-batch), in eval mode unless
        configured not to, and the head's weight as that forward saw it (None when no head is tapped).
        `no_grad`, not `inference_mode`: sharding engines keep the unsharded parameters they gather here for the
        training forward, and inference tensors would break it.
        """
        model = host.model
        if self.settings.selection_scoring_compile and self._compiled is None:
            self._compiled = torch.compile(model)  # shares the parameters; the training forward stays eager
        forward = model if self._compiled is None else self._compiled  # a compiled module has no bool
        inputs = without_labels(pool, host.label_names)
        chunks = [
            (rows, chunk if rows is None else self.trimmed(host, chunk))
            for rows, chunk in length_sorted_chunks(inputs, self.settings.selection_scoring_batch_size)
        ]
        was_training = model.training
        model.train(not self.settings.selection_eval_mode)
        parts, weight = [], None
        try:
            with (
                host.forward_context(),
                host.autocast(self.settings.selection_scoring_dtype),
                host.watch_head() as tap,
            ):
                for rows, chunk in chunks:
                    outputs = forward(**chunk)
                    parts.append((rows, host.logits_of(label_free(outputs), tap, "selection")))
                    weight = tap.weight if tap is not None else None
        finally:
            model.train(was_training)
        if len(parts) == 1:
            return parts[0][1], weight
        logits = torch.cat([part for _, part in parts])
        rows = torch.cat([rows for rows, _ in parts]).to(logits.device)
        return torch.empty_like(logits).index_copy_(0, rows, logits), weight  # back in pool order

    def log_metrics(self, host: StrategyHost, window_seconds: float | None) -> dict[str, float]:
        window = self.stopwatch.window()
        if window_seconds is None:
            return {}
        score_share, _, ratio = break_even(
            window.get("scoring", 0.0), window.get("loading", 0.0), window_seconds, self.settings.selection_oversample
        )
        return {"scoring_time_share": round(score_share, 4), "break_even_step_ratio": round(ratio, 4)}

    def end_of_run(self, host: StrategyHost, seconds: float) -> tuple[dict[str, float], str | None]:
        k = self.settings.selection_oversample
        scoring, loading = self.stopwatch.total("scoring"), self.stopwatch.total("loading")
        score_share, load_share, ratio = break_even(scoring, loading, seconds, k)
        verdict = (
            f"selection={self.name} k={k:g} spent {100 * score_share:.1f}% of training time scoring pools and "
            f"{100 * load_share:.1f}% loading them; it saves wall-clock time only if it reaches its target in fewer "
            f"than {100 * ratio:.0f}% of the optimizer steps that training without selection needs."
        )
        totals = {
            "selection_seconds": round(scoring, 3),
            "selection_time_share": round(score_share, 4),
            "pool_loading_time_share": round(load_share, 4),
            "break_even_step_ratio": round(ratio, 4),
        }
        return totals, verdict

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        if "generator" in state:
            self.generator.set_state(state["generator"])
