"""The interface every selection mechanism implements, and the mechanism that selects nothing."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import IterableDataset

from ..batch import LABEL_KEYS
from ..clock import Stopwatch
from ..config import MarginSettings

if TYPE_CHECKING:
    from ..heads import HeadTap
    from ..trainer import MarginTrainer

StockLoss = Callable[..., tuple[torch.Tensor, Any]]


class MetricBuffer:
    """Per-step values kept on their device until the next training log, then averaged over steps and processes."""

    def __init__(self):
        self._values: dict[str, list[torch.Tensor | float]] = defaultdict(list)

    def add(self, key: str, value: torch.Tensor | float) -> None:
        self._values[key].append(value.detach() if isinstance(value, torch.Tensor) else value)

    def flush(self, accelerator, device: torch.device) -> dict[str, float]:
        logs = {}
        for key, values in self._values.items():
            stacked = torch.stack([torch.as_tensor(v, dtype=torch.float32, device=device) for v in values])
            # `gather`, not `gather_for_metrics`: the latter trims by the train loader's remainder
            logs[key] = accelerator.gather(stacked).mean().item()
        self._values.clear()
        return logs


class SelectionStrategy:
    """
    One selection mechanism: what the train loader yields, which samples reach the training step, what is done with
    the training forward's logits, what is logged and what a checkpoint keeps. Each hook receives the trainer and
    reads its state; the math stays in `margin.py` and `selection.py`.

    This base class is the mechanism `selection="none"`: the Trainer's own loader and batches, untouched.
    """

    name = "none"
    field = "selection"  # the argument that chose this mechanism, named in its errors
    needs_head = False  # scores with the last linear layer's weight: set-up fails without one
    needs_labels = False  # its loss or scores read labels: set-up fails without them
    owns_loss = False  # computes the training loss itself (a weighted cross-entropy): no compute_loss_func

    def __init__(self, settings: MarginSettings):
        self.settings = settings
        self.stopwatch = Stopwatch()

    # ---- set-up ----

    def check_dataset(self, trainer: MarginTrainer, dataset: Any) -> None:
        """Raise a `ValueError` naming the field when the train dataset cannot serve this mechanism."""
        if self.name == "none":
            return
        if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
            raise ValueError(
                f"{self.field}={self.name!r} needs a map-style train_dataset with a length (an IterableDataset has no "
                f"pools to draw from and no stable indices); use {self.field}='none' or a map-style dataset."
            )

    def start(self, trainer: MarginTrainer) -> None:
        """Called at the start of every `train()`, after the Trainer built the model it trains."""

    # ---- the train loader and the batches of a step ----

    def train_dataloader(self, trainer: MarginTrainer):
        """The train dataloader, or None for the Trainer's own."""
        return None

    def train_sampler(self, trainer: MarginTrainer, dataset: Any):
        """The train sampler, or None for the Trainer's own."""
        return None

    def draw_batches(
        self, trainer: MarginTrainer, epoch_iterator: Iterator, num_batches: int, device: torch.device
    ) -> list | None:
        """The micro-batches of one optimizer step, or None for the Trainer's own `get_batch_samples`."""
        return None

    # ---- the training forward ----

    def forward_loss(
        self,
        trainer: MarginTrainer,
        stock_loss: StockLoss,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        num_items_in_batch: torch.Tensor | int | None,
    ) -> tuple[torch.Tensor, Any]:
        """The training forward and its loss: by default the Trainer's `compute_loss`."""
        return stock_loss(model, inputs, True, num_items_in_batch)

    def after_forward(
        self, trainer: MarginTrainer, logits: torch.Tensor, tap: HeadTap | None, labels: torch.Tensor | None
    ) -> None:
        """What the mechanism keeps from the training forward's logits `[B, C]` (e.g. cached margins)."""

    # ---- logs and checkpoints ----

    def log_metrics(self, trainer: MarginTrainer, window_seconds: float | None) -> dict[str, float]:
        """Metrics added to each training log; `window_seconds` of training since the last one, when timed."""
        return {}

    def end_of_run(self, trainer: MarginTrainer, seconds: float) -> tuple[dict[str, float], str | None]:
        """Totals for the final log (when timed) and a one-line verdict for the library's logger."""
        return {}, None

    def state_dict(self) -> dict[str, Any]:
        return {"stopwatch": dict(self.stopwatch.totals)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.stopwatch = Stopwatch(state.get("stopwatch", {}))


def first_sample(dataset: Any) -> Any | None:
    """The first sample of a map-style dataset with a length, or None."""
    try:
        return dataset[0] if len(dataset) > 0 else None
    except (TypeError, KeyError, IndexError):
        return None


def check_labels(strategy_field: str, what: str, dataset: Any, label_names: list[str]) -> None:
    """A `ValueError` naming the field when the dataset's samples carry no labels, or multi-label ones."""
    first = first_sample(dataset)
    if not isinstance(first, Mapping):
        return
    label_keys = set(LABEL_KEYS) | set(label_names)
    present = label_keys & set(first)
    if not present:
        raise ValueError(
            f"{strategy_field}: {what} needs labels, but the train dataset's samples have none of "
            f"{sorted(label_keys)} (keys: {sorted(first)})."
        )
    check_single_label(strategy_field, first[sorted(present)[0]])


def check_single_label(field_name: str, label: Any) -> None:
    """A `ValueError` naming the field for a multi-label target (a float vector per sample)."""
    label = torch.as_tensor(label)
    if label.is_floating_point() and label.dim() >= 1 and label.shape[-1] > 1:
        raise ValueError(
            f"{field_name}: margins need single-label classification (one class index per sample); these labels "
            f"are float vectors of {label.shape[-1]} (multi-label), for which the top-2 margin means nothing."
        )


def label_free(outputs: Any) -> Any:
    """The output of a forward run without labels, with its logits under "logits" (a tuple holds them first)."""
    return outputs if isinstance(outputs, Mapping) else {"logits": outputs[0]}
