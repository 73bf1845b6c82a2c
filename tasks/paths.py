"""Where the recipes and benchmarks find their data and put their output: one place for every path."""

from __future__ import annotations

from pathlib import Path

# the repository's root (this file is tasks/paths.py)
ROOT = Path(__file__).resolve().parents[1]
# the shared data sets (GLUE TSV files, CIFAR-10 Parquet, Fashion-MNIST IDX), checked out beside the repository
SHARED_DATA = ROOT.parent / "shared" / "data"
# training runs (output_dir of each recipe run); never committed
RUNS = ROOT / "runs"
BENCH_RUNS = RUNS / "bench"
# the benchmarks' raw results (JSON) and plots (PNG), committed; BENCHMARKS.md is rendered from them
RESULTS = ROOT / "results"
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
