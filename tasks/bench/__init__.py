"""The benchmarks as one package: `registry` (settings, variants, the suite, as data), `run` (the grids of recipe
runs), `overhead` and `scoring` (in-process micro-benchmarks), `results` (the raw JSON files), `report`
(BENCHMARKS.md); `python -m tasks.bench` is the command line. Imports flow one way: registry <- results <-
run / overhead / scoring; report reads registry and results."""
