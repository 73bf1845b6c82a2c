"""Recipes built on hf_margin (text, GLUE, images, active learning, plots; `tasks.recipe` is their shared skeleton)
and the benchmarks (`tasks.bench`). Never imported by the library."""
