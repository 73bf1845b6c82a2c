"""Cached-margin selection: no pool and no scoring forward; each sample's MMS is kept from its own training forward
and the sampler plans passes from the cache."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Dataset

from ..clock import break_even
from ..margin import minimal_margin_scores, weighted_cross_entropy
from ..selection import CachedMarginSampler, MarginCache, check_finite_logits, selecting_at
from .base import SelectionStrategy, StockLoss, check_labels, first_sample, label_free

if TYPE_CHECKING:
    from ..trainer import MarginTrainer

# The dataset index and loss weight of each sample, carried through the train loader.
INDEX_KEY, WEIGHT_KEY = "hf_margin_index", "hf_margin_weight"


class CachedSelection(SelectionStrategy):
    """
    `selection="mms_cached"`: the train loader draws single batches from a `CachedMarginSampler` over a
    `MarginCache` keyed by dataset index. Each sample carries its index and loss weight through the loader (the
    user's collator never sees them); the training forward's logits give the MMS of the samples it trains on, stored
    in the cache (under DDP every process stores every process's, so caches and samplers agree); the loss is the
    weighted cross-entropy, so kept easy samples stand in for the skipped ones. An epoch keeps `len(dataset)` draws.
    """

    name = "mms_cached"
    needs_head = True
    needs_labels = True
    owns_loss = True

    def __init__(self, settings):
        super().__init__(settings)
        self.cache: MarginCache | None = None
        self.sampler: CachedMarginSampler | None = None

    def check_dataset(self, trainer: MarginTrainer, dataset: Any) -> None:
        super().check_dataset(trainer, dataset)
        first = first_sample(dataset)
        if first is not None and not isinstance(first, Mapping):
            raise ValueError(
                "selection='mms_cached' needs samples that are dicts (it adds each sample's index to it); "
                f"the train dataset returns {type(first).__name__}."
            )
        check_labels("selection", "cached selection's weighted loss", dataset, trainer.label_names)

    def start(self, trainer: MarginTrainer) -> None:
        # The cache's own loss replaces the model's: the model gets no `num_items_in_batch`, and the Trainer divides
        # this per-micro-batch mean by the accumulation steps.
        trainer.model_accepts_loss_kwargs = False

    def train_dataloader(self, trainer: MarginTrainer):
        dataset = trainer.train_dataset
        if self.cache is None or len(self.cache) != len(dataset):
            self.cache = MarginCache(len(dataset), trainer.args.device)
        # Keep the tags through `remove_unused_columns` and past the user's collator, which never sees them.
        trainer._set_signature_columns_if_needed()
        trainer._signature_columns += [k for k in (INDEX_KEY, WEIGHT_KEY) if k not in trainer._signature_columns]
        user_collator = trainer.data_collator
        trainer.data_collator = TaggedCollator(user_collator)  # `_get_dataloader` reads the collator from here
        try:
            return trainer._get_dataloader(
                dataset=TaggedDataset(dataset),
                description="Training",
                batch_size=trainer._train_batch_size,
                sampler_fn=trainer._get_train_sampler,
                is_training=True,
            )
        finally:
            trainer.data_collator = user_collator

    def train_sampler(self, trainer: MarginTrainer, dataset: Any):
        seed = trainer.args.data_seed if trainer.args.data_seed is not None else trainer.args.seed
        s = self.settings
        self.sampler = CachedMarginSampler(
            self.cache, s.selection_hard_fraction, s.selection_easy_rate, seed, rescale=s.selection_easy_rescale
        )
        return self.sampler

    def draw_batches(self, trainer, epoch_iterator, num_batches, device):
        if self.sampler is not None and not selecting_at(
            trainer.state.global_step, trainer.state.max_steps, self.settings.selection_until
        ):
            self.sampler.hard_fraction = 1.0  # plain passes from the next pass on
        return None

    def forward_loss(
        self,
        trainer: MarginTrainer,
        stock_loss: StockLoss,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        num_items_in_batch: torch.Tensor | int | None,
    ) -> tuple[torch.Tensor, Any]:
        inputs = dict(inputs)
        index, weight = inputs.pop(INDEX_KEY), inputs.pop(WEIGHT_KEY)
        labels = trainer.pop_labels(inputs)  # the model computes no loss of its own
        if labels is None:
            raise ValueError(f"{self.field}={self.name!r} needs labels, and this training batch has none.")
        outputs = model(**inputs)  # inside the trainer's `watch_head`: the tap sees the head's forward
        logits = trainer.logits_of(label_free(outputs), trainer.head_tap, self.field)
        check_finite_logits(logits, self.field)
        with self.stopwatch.timing("scoring"):
            scores = self.sample_scores(trainer, logits, labels)
            if scores is not None:
                self.update_cache(trainer, index, scores)
        # the rescaled easy samples make this loss an unbiased estimate of the full data's
        loss = weighted_cross_entropy(logits, labels, weight, trainer.args.label_smoothing_factor)
        return loss, outputs

    def sample_scores(self, trainer: MarginTrainer, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
        """What the cache keeps of each trained sample: its MMS at this training forward."""
        return minimal_margin_scores(logits, trainer.head_tap.weight)

    def update_cache(self, trainer: MarginTrainer, indices: torch.Tensor, mms: torch.Tensor) -> None:
        """Store the batch's MMS; with several processes every one stores every process's, so caches agree."""
        indices = indices.to(mms.device)
        if trainer.args.world_size > 1:
            indices, mms = trainer.accelerator.gather((indices, mms))
        self.cache.update(indices, mms, trainer.state.global_step)

    def log_metrics(self, trainer: MarginTrainer, window_seconds: float | None) -> dict[str, float]:
        logs = {}
        if self.cache is not None:
            logs["mms_cached_known_share"] = round(self.cache.known_share(), 4)
        easy_share = self.sampler.pop_easy_share() if self.sampler is not None else None
        if easy_share is not None:
            logs["mms_cached_easy_share"] = round(easy_share, 4)
        window = self.stopwatch.window()
        if window_seconds is not None:
            share, _, ratio = break_even(window.get("scoring", 0.0), 0.0, window_seconds, 1.0)  # no pool to load
            logs["scoring_time_share"], logs["break_even_step_ratio"] = round(share, 4), round(ratio, 4)
        return logs

    def end_of_run(self, trainer: MarginTrainer, seconds: float) -> tuple[dict[str, float], str | None]:
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

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.cache is not None:
            state["margin_cache"] = self.cache.state_dict()
        return state

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        if "margin_cache" in state:
            if self.cache is None:
                self.cache = MarginCache(state["margin_cache"]["margins"].shape[0])
            self.cache.load_state_dict(state["margin_cache"])


class TaggedDataset(Dataset):
    """The train dataset read with `(index, weight)` keys from a sampler, each sample tagged with both."""

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
            f"selection: cached and pruned selection need samples that are dicts; the train dataset returned "
            f"{type(sample).__name__}."
        )
    return {**sample, INDEX_KEY: index, WEIGHT_KEY: weight}


class TaggedCollator:
    """Collates the samples without their tags with the user's collator, then adds the tags as tensors."""

    def __init__(self, collate: Any):
        self.collate = collate

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        index = torch.tensor([f[INDEX_KEY] for f in features], dtype=torch.long)
        weight = torch.tensor([f[WEIGHT_KEY] for f in features], dtype=torch.float32)
        batch = self.collate([{k: v for k, v in f.items() if k not in (INDEX_KEY, WEIGHT_KEY)} for f in features])
        batch[INDEX_KEY], batch[WEIGHT_KEY] = index, weight
        return batch
