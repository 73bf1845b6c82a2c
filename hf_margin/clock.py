"""Wall-clock accounting of a training run: training seconds without evaluation, and the seconds spent choosing
samples, for the live break-even estimate."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class TrainClock:
    """
    Wall seconds of training from the first batch drawn, evaluation excluded, continuing the count of a resumed run
    (`offset`); and the same span in CPU seconds of this process (all its threads), which a busy, shared machine
    disturbs less than wall time. Read at log time, after the Trainer has waited for the device to report the loss.
    """

    def __init__(self, offset: float = 0.0, cpu_offset: float = 0.0):
        self.offset, self.cpu_offset = offset, cpu_offset
        self.start: tuple[float, float] | None = None
        self.excluded = [0.0, 0.0]
        self.paused_at: tuple[float, float] | None = None

    @staticmethod
    def _now() -> tuple[float, float]:
        return time.perf_counter(), time.process_time()

    def start_once(self) -> None:
        if self.start is None:
            self.start = self._now()

    def _elapsed(self, which: int) -> float:
        if self.start is None:
            return 0.0
        now = self.paused_at if self.paused_at is not None else self._now()
        return now[which] - self.start[which] - self.excluded[which]

    def seconds(self) -> float:
        return self.offset + self._elapsed(0)

    def cpu_seconds(self) -> float:
        return self.cpu_offset + self._elapsed(1)

    @contextmanager
    def paused(self) -> Iterator[None]:
        self.paused_at = self._now()
        try:
            yield
        finally:
            now = self._now()
            self.excluded = [self.excluded[i] + now[i] - self.paused_at[i] for i in (0, 1)]
            self.paused_at = None


class Stopwatch:
    """
    Seconds spent on named kinds of work (`"scoring"`, `"loading"`), over the whole run and since the last
    `window()` call: one total and one window per kind, added together.

    Work queued on a CUDA device (`timing(kind, device=...)`) is timed with CUDA events: the host does not wait for
    the device in the step, and the events are read when the totals are (at log time, after the Trainer has waited
    for the loss), so the figures are the device's time, not the time taken to launch the kernels. Other work (and
    everything on the CPU, where work is done when it returns) is timed with `time.perf_counter`.
    """

    def __init__(self, totals: dict[str, float] | None = None):
        self.totals: dict[str, float] = dict(totals or {})
        self._window: dict[str, float] = {}
        self._pending: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []

    @contextmanager
    def timing(self, kind: str, device: torch.device | None = None) -> Iterator[None]:
        if device is not None and device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            try:
                yield
            finally:
                end.record()
                self._pending.append((kind, start, end))
            return
        began = time.perf_counter()
        try:
            yield
        finally:
            self.add(kind, time.perf_counter() - began)

    def add(self, kind: str, seconds: float) -> None:
        self.totals[kind] = self.totals.get(kind, 0.0) + seconds
        self._window[kind] = self._window.get(kind, 0.0) + seconds

    def _collect(self) -> None:
        """Add the device-timed work queued so far (waits for the last of it: call at log time only)."""
        if not self._pending:
            return
        self._pending[-1][2].synchronize()
        pending, self._pending = self._pending, []
        for kind, start, end in pending:
            self.add(kind, start.elapsed_time(end) / 1000.0)

    def total(self, kind: str) -> float:
        self._collect()
        return self.totals.get(kind, 0.0)

    def window(self) -> dict[str, float]:
        """The seconds per kind since the last call, then a new window."""
        self._collect()
        window, self._window = self._window, {}
        return window

    def state_dict(self) -> dict[str, float]:
        self._collect()
        return dict(self.totals)


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
