"""Finding the last linear layer of a classifier and reading its input features."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

# Attribute paths of Hugging Face classification heads, tried in order.
_HF_HEAD_PATHS = ("classifier", "classifier.out_proj", "score")


def find_classifier(model: nn.Module, classifier_name: str | None = None) -> tuple[str, nn.Linear]:
    """
    Find the last linear layer of a classification model, whose rows are the class weights `w_c`.

    Looked up, in order: `classifier_name` (a dotted module path); a submodule's `get_classifier()`
    (timm models, also inside `TimmWrapperForImageClassification`); the Hugging Face heads
    `classifier`, `classifier.out_proj`, `score`; the last `nn.Linear` with `config.num_labels` outputs.

    Args:
        model (`nn.Module`): the unwrapped model.
        classifier_name (`str`, *optional*): dotted path, e.g. `"classifier"` or `"timm_model.fc"`.

    Returns:
        `(name, layer)`: its dotted path in `model` and the `nn.Linear` itself.

    Raises:
        `ValueError` when `classifier_name` is not an `nn.Linear` of the model, or no head is found.
    """
    names = {module: name for name, module in model.named_modules()}
    if classifier_name is not None:
        try:
            layer = model.get_submodule(classifier_name)
        except AttributeError as err:
            raise ValueError(f"classifier_name={classifier_name!r} is not a submodule of the model.") from err
        if not isinstance(layer, nn.Linear):
            raise ValueError(
                f"classifier_name={classifier_name!r} is a {type(layer).__name__}, not an nn.Linear; "
                "margins need the last linear layer."
            )
        return classifier_name, layer

    for module in model.modules():
        get_classifier = getattr(module, "get_classifier", None)
        if callable(get_classifier):
            layer = get_classifier()
            if isinstance(layer, nn.Linear) and layer in names:
                return names[layer], layer

    for path in _HF_HEAD_PATHS:
        try:
            layer = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(layer, nn.Linear):
            return path, layer

    num_labels = getattr(getattr(model, "config", None), "num_labels", None)
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features == num_labels]
    if num_labels is not None and linears:
        return linears[-1]
    raise ValueError(
        f"Could not find the last linear layer of {type(model).__name__} (tried get_classifier(), "
        f"{', '.join(_HF_HEAD_PATHS)}, and an nn.Linear with num_labels={num_labels} outputs). "
        "Set `classifier_name` to its dotted module path."
    )


class FeatureCapture:
    """
    Records the input of a linear layer on every forward pass through a forward pre-hook, so the
    MMR penalty reads the features of the training forward without a second forward.
    """

    def __init__(self, layer: nn.Linear):
        self.layer = layer
        self.features: torch.Tensor | None = None
        self._active = False
        self._handle = layer.register_forward_pre_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple) -> None:
        if self._active:
            self.features = args[0]

    @contextmanager
    def capture(self) -> Iterator[FeatureCapture]:
        """Keep the features of the forward passes run inside this block (flattened to `[B, D]`)."""
        self._active, self.features = True, None
        try:
            yield self
        finally:
            self._active = False

    def pop(self) -> torch.Tensor:
        """The captured features as `[B, D]`, then forget them."""
        if self.features is None:
            raise RuntimeError("No features were captured: the last linear layer was not called in the forward.")
        features, self.features = self.features, None
        return features.reshape(-1, features.shape[-1])

    def remove(self) -> None:
        self._handle.remove()
