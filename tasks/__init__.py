"""Recipes built on hf_margin (GLUE, images, plots, benchmarks). Never imported by the library."""
