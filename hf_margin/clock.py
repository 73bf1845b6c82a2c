"""Wall-clock accounting of a training run: training seconds without evaluation, and the seconds spent choosing
samples, for the live break-even estimate."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class TrainClock:
    """
    Wall seconds of training from the first batch drawn, evaluation excluded, continuing the count of a resumed run
    (`offset`).
    """

    def __init__(self, offset: float = 0.0):
        self.offset = offset
        self.start: float | None = None
        self.excluded = 0.0
        self.paused_at: float | None = None

    def start_once(self) -> None:
        if self.start is None:
            self.start = time.perf_counter()

    def seconds(self) -> float:
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


class Stopwatch:
    """
    Seconds spent on named kinds of work (`"scoring"`, `"loading"`), over the whole run and since the last
    `window()` call: one total and one window per kind, added together.
    """

    def __init__(self, totals: dict[str, float] | None = None):
        self.totals: dict[str, float] = dict(totals or {})
        self._window: dict[str, float] = {}

    @contextmanager
    def timing(self, kind: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(kind, time.perf_counter() - start)

    def add(self, kind: str, seconds: float) -> None:
        self.totals[kind] = self.totals.get(kind, 0.0) + seconds
        self._window[kind] = self._window.get(kind, 0.0) + seconds

    def total(self, kind: str) -> float:
        return self.totals.get(kind, 0.0)

    def window(self) -> dict[str, float]:
        """The seconds per kind since the last call, then a new window."""
        window, self._window = self._window, {}
        return window


def break_even(scoring: float, loading: float, seconds: float, oversample: float) -> tuple[float, float, float]:
    """
    Scoring and pool-loading shares of `seconds` of training, and the break-even step ratio: the share of the
    optimizer steps of training without selection that a run may take and still finish sooner. A step costs the
    step without selection plus the scoring and the extra `(k - 1) / k` of pool loading, so the ratio is
    `1 - score_share - load_share * (k - 1) / k`.
    """
    seconds = max(seconds, 1e-9)
    score_share, load_share = scoring / seconds, loading / seconds
    return score_share, load_share, max(1.0 - score_share - load_share * (oversample - 1) / oversample, 0.0)
