"""One strategy object per selection mechanism; `build_strategy` picks it from the settings."""

from __future__ import annotations

from ..config import MarginSettings
from .base import MetricBuffer, NonFiniteWatch, SelectionStrategy, StrategyHost
from .cached import CachedSelection
from .pool import PoolSelection
from .pruned import PrunedEpochs
from .tagged import ScoreKeeper


def build_strategy(settings: MarginSettings) -> SelectionStrategy:
    """The mechanism the settings ask for: none, a scored pool, cached margins, or pruned epochs."""
    if settings.pruning != "none":
        return PrunedEpochs(settings)
    if settings.selection == "none":
        return SelectionStrategy(settings)
    if settings.selection == "mms_cached":
        return CachedSelection(settings)
    return PoolSelection(settings)


__all__ = [
    "CachedSelection",
    "MetricBuffer",
    "NonFiniteWatch",
    "PoolSelection",
    "PrunedEpochs",
    "ScoreKeeper",
    "SelectionStrategy",
    "StrategyHost",
    "build_strategy",
]
