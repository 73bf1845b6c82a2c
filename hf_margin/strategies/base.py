"""The interface every selection mechanism implements, what it may ask of the trainer (`StrategyHost`), and the
mechanism that selects nothing."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, Sampler

from ..batch import LABEL_KEYS
from ..clock import Stopwatch
from ..config import MarginSettings
from ..heads import HeadTap
from ..selection import non_finite_error

StockLoss = Callable[..., tuple[torch.Tensor, Any]]


class MetricBuffer:
    """Per-step values kept on their device until the next training log, then averaged over steps and processes."""

    def __init__(self):
        self._values: dict[str, list[torch.Tensor | float]] = defaultdict(list)

    def add(self, key: str, value: torch.Tensor | float) -> None:
        self._values[key].append(value.detach() if isinstance(value, torch.Tensor) else value)

    def flush(self, gather: Callable[[torch.Tensor], torch.Tensor], device: torch.device) -> dict[str, float]:
        logs = {}
        for key, values in self._values.items():
            stacked = torch.stack([torch.as_tensor(v, dtype=torch.float32, device=device) for v in values])
            logs[key] = gather(stacked).mean().item()
        self._values.clear()
        return logs

    def clear(self) -> None:
        self._values.clear()


class NonFiniteWatch:
    """
    Whether any logits of the training steps since the last check were NaN or infinite, kept as a flag on the device:
    recording waits for nothing, and the check (`raise_if_seen`, at log time, when the Trainer has waited for the
    loss anyway) raises a `FloatingPointError` naming the field that needed finite scores.
    """

    def __init__(self):
        self._flag: torch.Tensor | None = None
        self.field: str | None = None

    def record(self, logits: torch.Tensor, field_name: str) -> None:
        bad = ~torch.isfinite(logits.detach()).all()
        self._flag = bad if self._flag is None else self._flag | bad
        self.field = field_name

    def raise_if_seen(self, gather: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        if self._flag is None:
            return
        flag, self._flag = self._flag, None
        if gather is not None:
            flag = gather(flag.reshape(1).float()).max() > 0  # every process stops, not only the one that saw it
        if bool(flag):
            raise non_finite_error(self.field)


class StrategyHost(Protocol):
    """
    What a strategy may ask of the trainer that runs it. `MarginTrainer`'s `TrainerAdapter` is the real one (the
    one place that follows the Trainer's private API); strategy tests can pass a small stand-in.
    """

    args: Any  # the TrainingArguments (public fields only)
    state: Any  # the TrainerState
    model: nn.Module
    label_names: list[str]
    train_dataset: Any
    data_collator: Any
    metrics: MetricBuffer
    nonfinite: NonFiniteWatch
    head_tap: HeadTap | None
    causal_lm: bool  # the model is a causal language model: one next-token prediction per position

    @property
    def train_batch_size(self) -> int: ...

    def train_loader(
        self, dataset: Any, batch_size: int, sampler: Sampler | None = None, collate: Any = None,
        keep_columns: tuple[str, ...] = (),
    ) -> DataLoader: ...  # fmt: skip

    def prepare_inputs(self, batch: dict[str, Any]) -> dict[str, Any]: ...

    def forward_context(self) -> AbstractContextManager: ...

    def autocast(self, dtype: str | None = None) -> AbstractContextManager: ...

    def watch_head(
        self, inputs: Mapping[str, Any] | None = None, labels: torch.Tensor | None = None
    ) -> AbstractContextManager: ...

    def logits_of(self, outputs: Any, tap: Any, field_name: str, required: bool = True) -> torch.Tensor | None: ...

    def pop_labels(self, inputs: dict[str, Any]) -> torch.Tensor | None: ...

    def logs_after_this_step(self) -> bool: ...

    def gather(self, tensors: Any) -> Any: ...


class SelectionStrategy:
    """
    One selection mechanism: what the train loader yields, which samples reach the training step, what is done with
    the training forward's logits, how the run's passes and steps are counted, what is logged and what a checkpoint
    keeps. Each hook receives the `StrategyHost`; the math stays in `margin.py`, `criteria.py` and `selection/`.

    This base class is the mechanism `selection="none"`: the Trainer's own loader and batches, untouched.
    """

    name = "none"
    field = "selection"  # the argument that chose this mechanism, named in its errors
    selects = False  # chooses the samples a step trains on (needs a map-style dataset)
    needs_head = False  # scores with the last linear layer's weight: set-up fails without one
    needs_labels = False  # its loss or scores read labels: set-up fails without them
    reads_classes = False  # its scores mean something only for single-label classifiers
    owns_loss = False  # computes the training loss itself (a weighted cross-entropy): no compute_loss_func
    variable_passes = False  # Trainer epochs of different lengths (one planned pass each)
    serves_causal_lm = False  # can train a causal language model (scores per sequence from its token logits)
    drives_lr = False  # the LR schedule reads `virtual_step`, not the optimizer step

    def __init__(self, settings: MarginSettings):
        self.settings = settings
        self.stopwatch = Stopwatch()

    @property
    def setting(self) -> str:
        """How the user turned this mechanism on, for error messages: `selection='mms'`."""
        return f"{self.field}={self.name!r}"

    # ---- set-up ----

    def check_dataset(self, host: StrategyHost, dataset: Any) -> None:
        """Raise a `ValueError` naming the field when the train dataset cannot serve this mechanism."""
        if not self.selects:
            return
        if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
            raise ValueError(
                f"{self.setting} needs a map-style train_dataset with a length (an IterableDataset has no pools to "
                f"draw from and no stable indices); use {self.field}='none' or a map-style dataset."
            )

    def start(self, host: StrategyHost) -> None:
        """Called at the start of every `train()`: forget what an earlier `train()` learned (a resume restores it)."""
        self.stopwatch = Stopwatch()

    # ---- the train loader, the run's length and the batches of a step ----

    def train_dataloader(self, host: StrategyHost) -> DataLoader | None:
        """The train dataloader, or None for the Trainer's own."""
        return None

    def planned_max_steps(self, host: StrategyHost, max_steps: int) -> int:
        """The run's optimizer steps, given the Trainer's count from the first epoch's length."""
        return max_steps

    def resume_point(self, host: StrategyHost, global_step: int) -> tuple[int, int] | None:
        """`(epoch, optimizer steps done in it)` of a run resumed at `global_step`; None: the Trainer's own count."""
        return None

    def draw_batches(
        self, host: StrategyHost, epoch_iterator: Iterator, num_batches: int, device: torch.device
    ) -> list | None:
        """The micro-batches of one optimizer step, or None for the Trainer's own `get_batch_samples`."""
        return None

    def after_step(self, host: StrategyHost) -> None:
        """Called after each optimizer step, before the Trainer logs, evaluates or saves."""

    def virtual_step(self, step: float) -> float:
        """Where optimizer step `step` stands on the LR schedule's clock (with `drives_lr`; else the step itself)."""
        return step

    # ---- the training forward ----

    def forward_loss(
        self,
        host: StrategyHost,
        stock_loss: StockLoss,
        model: nn.Module,
        inputs: dict[str, Any],
        num_items_in_batch: torch.Tensor | int | None,
    ) -> tuple[torch.Tensor, Any]:
        """The training forward and its loss: by default the Trainer's `compute_loss`."""
        return stock_loss(model, inputs, True, num_items_in_batch)

    # ---- logs and checkpoints ----

    def log_metrics(self, host: StrategyHost, window_seconds: float | None) -> dict[str, float]:
        """Metrics added to each training log; `window_seconds` of training since the last one, when timed."""
        self.stopwatch.window()
        return {}

    def end_of_run(self, host: StrategyHost, seconds: float) -> tuple[dict[str, float], str | None]:
        """Totals for the final log (when timed) and a one-line verdict for the library's logger."""
        return {}, None

    def state_dict(self) -> dict[str, Any]:
        return {"stopwatch": self.stopwatch.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.stopwatch = Stopwatch(state.get("stopwatch", {}))


def first_sample(dataset: Any) -> Any | None:
    """The first sample of a map-style dataset with a length, or None."""
    try:
        return dataset[0] if len(dataset) > 0 else None
    except (TypeError, KeyError, IndexError):
        return None


def check_labels(setting: str, what: str, dataset: Any, label_names: list[str]) -> None:
    """A `ValueError` naming the setting when the dataset's samples carry no labels, or multi-label ones."""
    first = first_sample(dataset)
    if not isinstance(first, Mapping):
        return
    label_keys = set(LABEL_KEYS) | set(label_names)
    present = label_keys & set(first)
    if not present:
        raise ValueError(
            f"{setting}: {what} needs labels, but the train dataset's samples have none of "
            f"{sorted(label_keys)} (keys: {sorted(first)})."
        )
    check_single_label(setting, first[sorted(present)[0]])


def check_single_label(setting: str, label: Any) -> None:
    """A `ValueError` naming the setting for a multi-label target (a float vector per sample)."""
    label = torch.as_tensor(label)
    if label.is_floating_point() and label.dim() >= 1 and label.shape[-1] > 1:
        raise ValueError(
            f"{setting}: margins need single-label classification (one class index per sample); these labels "
            f"are float vectors of {label.shape[-1]} (multi-label), for which the top-2 margin means nothing."
        )


def label_free(outputs: Any) -> Any:
    """The output of a forward run without labels, with its logits under "logits" (a tuple holds them first)."""
    return outputs if isinstance(outputs, Mapping) else {"logits": outputs[0]}
