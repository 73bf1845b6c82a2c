"""Recipes built on hf_margin (GLUE, images, plots) and the benchmarks (`tasks.bench`). Never imported by the
library."""
