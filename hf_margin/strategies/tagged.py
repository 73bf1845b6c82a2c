"""What cached selection and epoch pruning share: every sample tagged with its dataset index and loss weight on its
way through the train loader, its score kept from its own training forward, and the weighted loss."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, Sampler

from ..clock import Stopwatch
from ..criteria import Criterion
from ..margin import weighted_cross_entropy
from ..selection import ScoreCache
from .base import SelectionStrategy, StockLoss, StrategyHost, check_labels, first_sample, label_free

# The dataset index and loss weight of each sample, carried through the train loader.
INDEX_KEY, WEIGHT_KEY = "hf_margin_index", "hf_margin_weight"


class ScoreKeeper:
    """
    The shared machinery of the mechanisms that choose from scores kept on the training forward:

    - the train loader reads the dataset with `(index, weight)` keys from the mechanism's sampler and tags each sample
      with both (the user's collator never sees the tags; `remove_unused_columns` keeps them);
    - the training forward runs without labels; its logits give each trained sample's score by `criterion`, stored in
      a `ScoreCache` keyed by dataset index (under several processes every process stores every process's, so caches
      and samplers agree), with whether the score says the sample is learned (`threshold`);
    - the loss is the weighted cross-entropy, so kept samples that stand for dropped ones weigh what those would.

    Args:
        setting (`str`): how the user turned the mechanism on (`"pruning='margin'"`), named in every error.
        criterion ([`Criterion`]): what the cache keeps; without a score (random pruning) nothing is kept.
        threshold (`float`, *optional*): the learned threshold, for criteria that say when a sample is learned.
    """

    def __init__(self, setting: str, criterion: Criterion, threshold: float | None = None):
        self.setting, self.criterion, self.threshold = setting, criterion, threshold
        self.cache: ScoreCache | None = None
        self._packing_checked = False

    def reset(self) -> None:
        self.cache = None
        self._packing_checked = False

    def check_dataset(self, host: StrategyHost, dataset: Any) -> None:
        first = first_sample(dataset)
        if first is not None and not isinstance(first, Mapping):
            raise ValueError(
                f"{self.setting} needs samples that are dicts (it adds each sample's index to it); the train "
                f"dataset returns {type(first).__name__}."
            )
        if not host.causal_lm:  # a language model's labels usually come from its collator
            check_labels(self.setting, "its weighted loss", dataset, host.label_names)

    def loader(self, host: StrategyHost, sampler: Sampler):
        """The train loader over the tagged dataset, drawing from `sampler` (which reads `self.cache`)."""
        return host.train_loader(
            TaggedDataset(host.train_dataset),
            host.train_batch_size,
            sampler=sampler,
            collate=TaggedCollator(host.data_collator),
            keep_columns=(INDEX_KEY, WEIGHT_KEY),
        )

    def new_cache(self, host: StrategyHost) -> ScoreCache:
        if self.cache is None or len(self.cache) != len(host.train_dataset):
            self.cache = ScoreCache(len(host.train_dataset), host.args.device)
        return self.cache

    def forward_loss(
        self,
        host: StrategyHost,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        stopwatch: Stopwatch,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> tuple[torch.Tensor, Any]:
        inputs = dict(inputs)
        index, weight = inputs.pop(INDEX_KEY), inputs.pop(WEIGHT_KEY)
        shift_labels = inputs.pop("shift_labels", None)
        labels = host.pop_labels(inputs)  # the model computes no loss of its own
        if labels is None and shift_labels is None:
            raise ValueError(f"{self.setting} needs labels, and this training batch has none.")
        if host.causal_lm:
            return self._causal_lm_loss(host, model, inputs, index, weight, labels, shift_labels, stopwatch,
                                        num_items_in_batch)  # fmt: skip
        outputs = model(**inputs)  # inside the trainer's `watch_head`: the tap sees the head's forward
        logits = host.logits_of(label_free(outputs), host.head_tap, self.setting)
        host.nonfinite.record(logits, self.setting)
        if self.criterion.score is not None:
            with stopwatch.timing("scoring", host.args.device):
                tap = host.head_tap
                head = tap.weight if tap is not None else None
                scores = self.criterion.scores(logits, labels=labels, weight=head)
                learned = None
                if self.criterion.says_learned:
                    values = self.criterion.learned_values(scores, logits, labels=labels, weight=head)
                    learned = self.criterion.is_learned(values, self.threshold)
                self.update_cache(host, index, scores, learned)
        # the weights of the kept samples make this loss an unbiased estimate of the full data's
        loss = weighted_cross_entropy(logits, labels, weight, host.args.label_smoothing_factor)
        return loss, outputs

    def _causal_lm_loss(
        self,
        host: StrategyHost,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        index: torch.Tensor,
        weight: torch.Tensor,
        labels: torch.Tensor | None,
        shift_labels: torch.Tensor | None,
        stopwatch: Stopwatch,
        num_items_in_batch: torch.Tensor | int | None,
    ) -> tuple[torch.Tensor, Any]:
        """
        A causal LM's step: the next-token cross-entropy of every position, each sequence's tokens weighted by its
        weight and normalised as the Trainer normalises (by `num_items_in_batch`, the accumulated batch's target
        tokens over every process, when it counts them); each sequence's score is its criterion's mean over its target
        tokens (labels != -100), from the same logits. No `[batch, length, vocabulary]` tensor is made beyond the
        logits and the float32 cross-entropy the model's own loss would make.
        """
        if not self._packing_checked:
            check_not_packed(self.setting, inputs)  # once a run: it reads a tensor on the host
            self._packing_checked = True
        outputs = model(**inputs)
        logits = outputs["logits"] if isinstance(outputs, Mapping) else outputs[0]
        batch, length, vocabulary = logits.shape
        if shift_labels is None:  # as transformers' ForCausalLMLoss: position t predicts token t + 1
            shift_labels = nn.functional.pad(labels, (0, 1), value=-100)[..., 1:]
        targets = shift_labels.reshape(-1).to(logits.device)
        flat_logits = logits.reshape(-1, vocabulary)
        token_losses = nn.functional.cross_entropy(
            flat_logits.float(),
            targets,
            ignore_index=-100,
            reduction="none",
            label_smoothing=host.args.label_smoothing_factor,
        )
        host.nonfinite.record(token_losses, self.setting)  # non-finite logits give non-finite losses
        valid = (targets != -100).view(batch, length)
        token_weights = weight.to(token_losses.device, token_losses.dtype)[:, None].expand(batch, length)
        total = (token_losses.view(batch, length) * token_weights).sum()
        if num_items_in_batch is None:
            loss = total / valid.sum().clamp_min(1)
        else:
            loss = total / num_items_in_batch
            if host.args.average_tokens_across_devices and host.args.world_size > 1:
                loss = loss * host.args.world_size  # every process divides by the count over all of them
        if self.criterion.score is not None:
            with stopwatch.timing("scoring", host.args.device):
                tap = host.head_tap
                head = tap.weight if tap is not None else None
                token_scores = self.criterion.scores(flat_logits, labels=targets, weight=head, losses=token_losses)
                counted = valid.sum(dim=1)

                def per_sequence(values: torch.Tensor) -> torch.Tensor:  # the mean over target tokens; NaN: none
                    return torch.where(valid, values.view(batch, length), 0.0).sum(dim=1) / counted

                scores = per_sequence(token_scores)
                learned = None
                if self.criterion.says_learned:
                    values = self.criterion.learned_values(
                        token_scores, flat_logits, labels=targets, weight=head, losses=token_losses
                    )
                    learned = self.criterion.is_learned(per_sequence(values), self.threshold)
                self.update_cache(host, index, scores, learned)
        return loss, outputs

    def update_cache(
        self, host: StrategyHost, indices: torch.Tensor, scores: torch.Tensor, learned: torch.Tensor | None
    ) -> None:
        """Store the batch's scores; with several processes every one stores every process's, so caches agree."""
        indices = indices.to(scores.device)
        if host.args.world_size > 1:
            if learned is None:
                indices, scores = host.gather((indices, scores))
            else:
                indices, scores, learned = host.gather((indices, scores, learned.to(torch.uint8)))
                learned = learned.bool()
        self.cache.update(indices, scores, learned)

    def state_dict(self) -> dict[str, Any]:
        return {"margin_cache": self.cache.state_dict()} if self.cache is not None else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "margin_cache" not in state:
            return
        if self.cache is None:
            self.cache = ScoreCache(state["margin_cache"]["margins"].shape[0])
        self.cache.load_state_dict(state["margin_cache"])


class ScoreKeepingStrategy(SelectionStrategy):
    """
    The part of a mechanism that chooses from kept scores which does not depend on how it chooses: its
    `ScoreKeeper` (`self.keeper`, made by the subclass), its sampler (`self.sampler`, made with the loader), a clean
    start at every `train()`, the keeper's training forward, and both in checkpoints.
    """

    selects = needs_labels = reads_classes = owns_loss = True
    keeper: ScoreKeeper
    sampler: Any = None

    def check_dataset(self, host: StrategyHost, dataset: Any) -> None:
        super().check_dataset(host, dataset)
        self.keeper.check_dataset(host, dataset)

    def start(self, host: StrategyHost) -> None:
        super().start(host)
        self.keeper.reset()
        self.sampler = None

    def forward_loss(
        self, host: StrategyHost, stock_loss: StockLoss, model, inputs: dict[str, Any], num_items_in_batch
    ):
        return self.keeper.forward_loss(host, model, inputs, self.stopwatch, num_items_in_batch)

    def state_dict(self) -> dict[str, Any]:
        state = {**super().state_dict(), **self.keeper.state_dict()}
        if self.sampler is not None:
            state["sampler"] = self.sampler.state_dict()
        return state

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        self.keeper.load_state_dict(state)
        if "sampler" in state and self.sampler is not None:
            self.sampler.load_state_dict(state["sampler"])


# Keys of a batch that packs several sequences into one row (padding-free collators, flash-attention varlen).
_PACKING_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "seq_idx")


def check_not_packed(setting: str, inputs: Mapping[str, Any]) -> None:
    """A `ValueError` naming the setting for a batch whose rows hold several sequences: pruning scores whole rows."""
    position_ids = inputs.get("position_ids")
    restarts = isinstance(position_ids, torch.Tensor) and bool((position_ids[..., 1:] < position_ids[..., :-1]).any())
    if restarts or any(key in inputs for key in _PACKING_KEYS):
        raise ValueError(
            f"{setting} scores and weighs each row of the batch as one sample, and these rows pack several sequences "
            "(position_ids restart inside a row, or cu_seq_lens/seq_idx are given). Train without packing (e.g. "
            "TRL's packing=False, padding_free=False) so that each row is one dataset sample."
        )


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
            f"the train dataset returned a {type(sample).__name__} for sample {index}; the mechanism that tags "
            "samples with their index needs dicts."
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
