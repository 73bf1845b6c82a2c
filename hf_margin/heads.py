"""Finding the last linear layer of a classifier, and reading it inside its own forward.

Under FSDP and DeepSpeed ZeRO-3 a parameter is whole only while its module runs: outside the forward the weight is a
flat view, a `DTensor` shard or an empty tensor. So nothing here reads `head.weight` from outside: `HeadTap` is a
forward hook, run before the engines' own post-forward hooks, that keeps a detached copy of the weight and computes
the MMR penalty from the live weight, whose gradient then takes the engine's own route.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .batch import pooled_positions
from .margin import multi_margin_penalty

# Attribute paths of Hugging Face classification heads, tried in order.
_HF_HEAD_PATHS = ("classifier", "classifier.out_proj", "score")


def _active_module(module: nn.Module) -> nn.Module:
    """The module that computes `module`'s output: PEFT's `ModulesToSaveWrapper` runs its trained copy."""
    copies = getattr(module, "modules_to_save", None)
    if isinstance(copies, nn.ModuleDict) and hasattr(module, "original_module"):
        if getattr(module, "disable_adapters", False):
            return _active_module(module.original_module)
        adapter = getattr(module, "active_adapter", None)
        adapter = adapter[0] if isinstance(adapter, (list, tuple)) else adapter
        if adapter in copies:
            return _active_module(copies[adapter])
        return _active_module(module.original_module)
    return module


def _is_lora_linear(module: nn.Module) -> bool:
    """A PEFT LoRA layer around an `nn.Linear` (its `lora_A`/`lora_B` add a low-rank update to the base weight)."""
    base = getattr(module, "base_layer", None)
    has_delta = callable(getattr(module, "get_delta_weight", None))
    return isinstance(base, nn.Linear) and hasattr(module, "lora_A") and has_delta


def _is_classifier(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or _is_lora_linear(module)


def out_features(layer: nn.Module) -> int:
    """Number of classes a classifier layer (an `nn.Linear` or a LoRA layer around one) outputs."""
    return (layer.base_layer if _is_lora_linear(layer) else layer).out_features


def effective_weight(layer: nn.Module) -> torch.Tensor:
    """
    The `[C, D]` weight that maps the layer's input to its output: `layer.weight` for an `nn.Linear`; for a PEFT LoRA
    layer, the base weight plus the low-rank update of every active, unmerged adapter (differentiable in both).
    Read it inside the layer's forward (see `HeadTap`).
    """
    if not _is_lora_linear(layer):
        return layer.weight
    weight = layer.base_layer.weight
    if getattr(layer, "disable_adapters", False) or getattr(layer, "merged", False):
        return weight
    for adapter in getattr(layer, "active_adapters", []):
        if adapter in layer.lora_A:
            weight = weight + layer.get_delta_weight(adapter).to(weight.dtype)
    return weight


def find_classifier(model: nn.Module, classifier_name: str | None = None) -> tuple[str, nn.Module]:
    """
    Find the last linear layer of a classification model, whose rows are the class weights `w_c`.

    Looked up, in order: `classifier_name` (a dotted module path); a submodule's `get_classifier()` (timm models, also
    inside `TimmWrapperForImageClassification`); the Hugging Face heads `classifier`, `classifier.out_proj`, `score`;
    the last linear layer with `config.num_labels` outputs. PEFT is understood: a head in `modules_to_save`
    (`task_type=SEQ_CLS`) resolves to its trained copy, and a head with LoRA on it to the LoRA layer, whose weight is
    the base weight plus the adapter's update (`effective_weight`); the adapter's own small matrices never count as
    the head.

    Args:
        model (`nn.Module`): the unwrapped model.
        classifier_name (`str`, *optional*): dotted path, e.g. `"classifier"` or `"timm_model.fc"`.

    Returns:
        `(name, layer)`: its dotted path in `model` and the layer, an `nn.Linear` or a PEFT LoRA layer around one.

    Raises:
        `ValueError` when `classifier_name` is not a linear layer of the model, or no head is found.
    """
    names = {module: name for name, module in model.named_modules()}

    def resolved(name: str, module: nn.Module) -> tuple[str, nn.Module] | None:
        active = _active_module(module)
        if getattr(active, "lora_magnitude_vector", None):  # DoRA rescales rows: not one linear map of the features
            raise ValueError(
                f"classifier_name: the head {name!r} carries a DoRA adapter, whose output is not a fixed linear map "
                "of its input; margins need a plain or LoRA linear head."
            )
        return (names.get(active, name), active) if _is_classifier(active) else None

    if classifier_name is not None:
        try:
            layer = model.get_submodule(classifier_name)
        except AttributeError as err:
            raise ValueError(f"classifier_name={classifier_name!r} is not a submodule of the model.") from err
        found = resolved(classifier_name, layer)
        if found is None:
            raise ValueError(
                f"classifier_name={classifier_name!r} is a {type(layer).__name__}, not an nn.Linear; "
                "margins need the last linear layer."
            )
        return found

    if is_causal_lm(model):  # a language model's head: its output embeddings (tied to the input ones or not)
        get_output_embeddings = getattr(_unwrapped_peft(model), "get_output_embeddings", None)
        layer = get_output_embeddings() if callable(get_output_embeddings) else None
        if isinstance(layer, nn.Module) and layer in names and (found := resolved(names[layer], layer)):
            return found

    for module in model.modules():
        get_classifier = getattr(module, "get_classifier", None)
        if callable(get_classifier):
            layer = get_classifier()
            if isinstance(layer, nn.Module) and layer in names and (found := resolved(names[layer], layer)):
                return found

    for path in _HF_HEAD_PATHS:
        for prefix in ("", "base_model.model."):  # a PeftModel keeps the model under base_model.model
            try:
                layer = model.get_submodule(prefix + path)
            except AttributeError:
                continue
            if found := resolved(prefix + path, layer):
                return found

    num_labels = getattr(getattr(model, "config", None), "num_labels", None)
    inside_adapter = set()  # the adapters' own linear layers (lora_A, lora_B, the original of a saved copy)
    for module in model.modules():
        if _is_lora_linear(module) or hasattr(module, "modules_to_save"):
            inside_adapter.update(m for m in module.modules() if m is not module)
    linears = [
        (name, module)
        for name, module in model.named_modules()
        if module not in inside_adapter and _is_classifier(module) and out_features(module) == num_labels
    ]
    if num_labels is not None and linears:
        return linears[-1]
    raise ValueError(
        f"Could not find the last linear layer of {type(model).__name__} (tried get_classifier(), "
        f"{', '.join(_HF_HEAD_PATHS)}, and an nn.Linear with num_labels={num_labels} outputs). "
        "Set `classifier_name` to its dotted module path."
    )


# Model classes with one prediction per token or span that margins do not score: no per-sample margin.
_TOKEN_LEVEL = ("ForTokenClassification", "ForQuestionAnswering", "ForPreTraining", "ForMaskedLM")


def _unwrapped_peft(model: nn.Module) -> nn.Module:
    """The transformers model inside a PEFT wrapper (or the model itself)."""
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if callable(get_base_model) else model


def is_causal_lm(model: nn.Module) -> bool:
    """A decoder language model (`*ForCausalLM`, inside PEFT too): one next-token prediction per position."""
    return type(_unwrapped_peft(model)).__name__.endswith("ForCausalLM")


def prediction_level(model: nn.Module) -> str:
    """`"causal_lm"` (a next-token prediction per position), `"token"` (one per token or span, other than a causal
    LM's), or `"sample"` (one per sample: sequence, image and audio classifiers, and any other model)."""
    if is_causal_lm(model):
        return "causal_lm"
    name = type(_unwrapped_peft(model)).__name__
    return "token" if name.endswith(_TOKEN_LEVEL) else "sample"


class HeadTap:
    """
    A forward hook on the last linear layer (registered first, so it runs while FSDP or DeepSpeed still hold the
    weight whole) that, inside `watching()`, keeps what the margins need from that forward:

    - `weight`: a detached copy of the layer's effective `[C, D]` weight (a view with `copy_weight=False`, for a
      language model's head that no engine shards outside its forward: its `[V, D]` is large);
    - `features` / `logits`: the layer's input `[B, D]` and output `[B, C]`; for a head that runs on every position
      of a sequence (`[B, L, D]`, the sequence classifiers of decoder language models) the rows at the positions the
      model pools (`pooled_positions` of the `input_ids` given to `watching`);
    - `penalty`: with `labels` given, the MMR penalty `multi_margin_penalty(features, logits, labels, weight)` from
      the live weight, so its gradient reaches the weight through the engine's own backward.
    """

    def __init__(self, layer: nn.Module, copy_weight: bool = True):
        self.layer = layer
        self.copy_weight = copy_weight  # False: keep a view (a language model's head, not sharded outside its forward)
        self._watching = False
        self._labels: torch.Tensor | None = None
        self._input_ids: torch.Tensor | None = None
        self._pad_token_id: int | None = None
        self._clear()
        self._handle = layer.register_forward_hook(self._hook, prepend=True)

    def _clear(self) -> None:
        self.weight: torch.Tensor | None = None
        self.features: torch.Tensor | None = None
        self.logits: torch.Tensor | None = None
        self.penalty: torch.Tensor | None = None
        self.per_position = False

    def _hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if not self._watching or not args:
            return
        features, logits = args[0], output
        if features.dim() == 3 and logits.dim() == 3 and self._input_ids is not None:
            rows = torch.arange(features.shape[0], device=features.device)
            positions = pooled_positions(self._input_ids, self._pad_token_id).to(features.device)
            features, logits, self.per_position = features[rows, positions], logits[rows, positions], True
        weight = effective_weight(module)
        self.weight = weight.detach().clone() if self.copy_weight else weight.detach()
        self.features, self.logits = features, logits
        if self._labels is not None:
            self.penalty = multi_margin_penalty(features, logits, self._labels, weight)

    @contextmanager
    def watching(
        self,
        labels: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        pad_token_id: int | None = None,
    ) -> Iterator[HeadTap]:
        """Record the head's forward inside this block; with `labels`, also compute the MMR penalty there."""
        self._clear()
        self._watching, self._labels, self._input_ids, self._pad_token_id = True, labels, input_ids, pad_token_id
        try:
            yield self
        finally:
            self._watching, self._labels, self._input_ids = False, None, None

    def remove(self) -> None:
        self._handle.remove()
