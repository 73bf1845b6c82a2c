"""The plot command, the demo, and the benchmark code in quick mode (not the benchmarks themselves)."""

from __future__ import annotations

import json

import pytest
import torch

from tasks import demo, plot
from tasks.bench import registry
from tasks.bench.__main__ import main as bench
from tasks.bench.overhead import Workload, measure
from tasks.bench.report import render_report, scoring_section
from tests.conftest import TinyTextDataset, bench_dirs, tiny_bert


def test_demo_shows_progress_labels_runs_and_plots(tmp_path, capsys):
    records = demo.main(["--output_dir", str(tmp_path / "demo"), "--max_steps", "12"])
    assert [r["train_steps"] for r in records[:3]] == [12, 12, 12]
    pruned, short = records[3:]  # 3 passes (one pruned): fewer steps than the 3 x 23 of an unpruned run
    assert (pruned["pruning"], short["pruning"]) == ("margin", "none")
    assert short["train_steps"] == pruned["train_steps"] < 69
    assert records[1]["selection"] == "mms" and 0 < records[1]["selection_time_share"] < 1
    assert records[2]["selection"] == "none" and records[2]["mmr_alpha_end"] == pytest.approx(1e-3)
    out = capsys.readouterr().out
    assert "{'loss'" not in out and "'eval_accuracy':" not in out  # no raw log dicts
    # one line per evaluation (every 12 // 12 = 1 step), labelled by what the run is
    for label in ("stock", "MMS k=4", "MMR ramp"):
        assert sum(line.startswith(f"  {label} ") for line in out.splitlines()) == 12
    assert "stock: eval_accuracy=" in out and "MMS k=4: eval_accuracy=" in out
    assert "MMR 1e-05->0.001: eval_accuracy=" in out and "selection=none" not in out
    assert f"pruned: {pruned['train_steps']} optimizer steps for 3 passes, where stock takes 69;" in out
    # the per-run line and the table give the same training seconds
    table = out[out.index("scoring share") :].splitlines()[1:6]
    for (label, record), row in zip(zip(("stock", "MMS k=4", "MMR ramp", "pruned", "short"), records), table):
        seconds = f"{record['train_seconds']:.1f}"
        assert row.startswith(label) and row.split()[-2] == seconds
        assert f"{seconds} s training (evaluation excluded)" in out
    runs = [tmp_path / "demo" / name for name in ("stock", "mms")]
    out = plot.main([*map(str, runs), "--out", str(tmp_path / "cmp.png")])
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    curves = plot.load_run(runs[1])
    assert curves.label == "mms: MMS k=4, seed 0" and curves.steps[-1] == 12 and len(curves.mms_values) > 0
    assert plot.load_run(runs[0]).label == "stock, seed 0"  # the folder name says what the settings say
    assert curves.seconds == sorted(curves.seconds)


def _fake_run(run_dir, steps, logging_steps, seed, log_every):
    """A run folder as the recipes write it: metrics.json and a log history with MMS every `log_every` steps."""
    run_dir.mkdir(parents=True)
    history = [{"step": s, "eval_accuracy": s / steps} for s in range(1, steps + 1)]
    history += [{"step": s, "loss": 1.0, "mms_train_mean": 0.1 * s} for s in range(log_every, steps + 1, log_every)]
    state = {"log_history": history, "global_step": steps, "logging_steps": logging_steps}
    (run_dir / "trainer_state.json").write_text(json.dumps(state))
    settings = {"selection": "mms", "selection_oversample": 2.0, "mmr_alpha": 0.0, "mmr_alpha_end": None}
    (run_dir / "metrics.json").write_text(json.dumps({**settings, "seed": seed}))
    return run_dir


def _plotted_figure(monkeypatch, runs, out):
    figures = []
    monkeypatch.setattr(plot.plt, "close", figures.append)
    plot.plot_runs(runs, out)
    return figures[0]


def test_plot_tells_runs_with_the_same_settings_apart(tmp_path, monkeypatch):
    runs = [plot.load_run(_fake_run(tmp_path / name, 20, 5, seed, 5)) for name, seed in (("a", 0), ("b", 1))]
    assert [r.label for r in runs] == ["a: MMS k=2, seed 0", "b: MMS k=2, seed 1"]
    figure = _plotted_figure(monkeypatch, runs, tmp_path / "x.png")
    for ax in figure.axes:
        assert [t.get_text() for t in ax.get_legend().get_texts()] == [r.label for r in runs]
    assert len(figure.axes[2].texts) == 0  # both traces drawn, nothing to explain


def test_plot_says_why_the_mms_panel_is_empty_for_a_short_run(tmp_path, monkeypatch):
    short = plot.load_run(_fake_run(tmp_path / "short", 8, 10, 0, 10))  # 8 steps, logging every 10: no MMS
    full = plot.load_run(_fake_run(tmp_path / "full", 20, 5, 0, 5))
    assert short.mms_values == [] and len(full.mms_values) == 4
    figure = _plotted_figure(monkeypatch, [short, full], tmp_path / "x.png")
    notes = " ".join(t.get_text() for t in figure.axes[2].texts)
    assert "short: MMS k=2, seed 0: 8 steps, fewer than logging_steps=10" in notes
    assert "full:" not in notes
    assert [line.get_label() for line in figure.axes[2].get_lines()] == [full.label]


def test_plot_refuses_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="trainer_state.json"):
        plot.load_run(tmp_path)


def test_benchmark_grid_and_report_in_quick_mode(tmp_path):
    common = bench_dirs(tmp_path)
    bench([*common, "tta", "--setting", "digits", "--quick", "--seeds", "0", "--ks", "2", "--only", "mms_k2"])
    result = json.loads(next((tmp_path / "results").glob("tta_digits_quick_*.json")).read_text())
    assert set(result["rows"]) == {"baseline", "mms_k2"}
    base = result["rows"]["baseline"]
    assert 0.0 <= base["final_mean"] <= 1.0 and base["baseline_final"]["reached"] == "1/1"
    assert result["curves"]["mms_k2"]["0"]["steps"][-1] == 6
    assert result["rows"]["mms_k2"]["selection_time_share_mean"] > 0
    # resumable: a second call finds the finished runs and only summarises them again
    before = (tmp_path / "runs" / "digits_quick" / "tta" / "baseline_s0" / "metrics.json").stat().st_mtime
    bench([*common, "tta", "--setting", "digits", "--quick", "--seeds", "0", "--ks", "2", "--only", "mms_k2"])
    assert (tmp_path / "runs" / "digits_quick" / "tta" / "baseline_s0" / "metrics.json").stat().st_mtime == before

    report = render_report(tmp_path / "results", tmp_path / "BENCHMARKS.md").read_text()
    assert "Time to accuracy: digits_quick" in report and "| mms_k2 |" in report
    assert (tmp_path / "results" / next((tmp_path / "results").glob("*.json")).with_suffix(".png").name).is_file()


def test_benchmark_early_drop_and_cached_variants_in_quick_mode(tmp_path):
    common = bench_dirs(tmp_path)
    bench([*common, "early", "--setting", "digits", "--quick", "--seeds", "0"])
    bench([*common, "tta", "--setting", "digits", "--quick", "--seeds", "0", "--only", "mms_cached"])
    early = json.loads(next((tmp_path / "results").glob("early_digits_quick_*.json")).read_text())
    assert set(early["rows"]) == set(registry.EARLY_DROP_VARIANTS)
    assert early["rows"]["mms_k4_bf16_early_0.4x"]["selection_time_share_mean"] > 0
    cached = json.loads(next((tmp_path / "results").glob("tta_digits_quick_*.json")).read_text())
    assert set(cached["rows"]) == {"baseline", "mms_cached"}
    run = tmp_path / "runs" / "digits_quick" / "tta" / "mms_cached_s0" / "metrics.json"
    assert json.loads(run.read_text())["selection"] == "mms_cached"

    report = render_report(tmp_path / "results", tmp_path / "BENCHMARKS.md").read_text()
    assert "Early learning-rate drop: digits_quick" in report and "| mms_cached |" in report


def test_every_benchmark_variant_parses_into_the_flags_its_name_promises(tmp_path):
    from tasks.image import parse_args

    setting = registry.SETTINGS["cifar10_cpu"]
    variants = {kind: registry.variants_of(kind, setting, [2, 4, 10]) for kind in registry.KINDS if kind != "prune"}
    variants = {name: flags for per_kind in variants.values() for name, flags in per_kind.items()}
    pruning = registry.SETTINGS["fmnist_prune"]  # pruning plans whole passes: settings in epochs, not steps
    pruned = {
        name: parse_args(
            [*pruning.argv, *registry.resolve_flags(extra, lambda run: 123), "--output_dir", str(tmp_path)]
        )[1]
        for name, extra in registry.variants_of("prune", pruning).items()
    }
    # the adaptive rules at their defaults, InfoBatch's own rule, and the shorter schedule at adaptive margin's steps
    assert (pruned["prune_margin_learned"].pruning, pruned["prune_margin_learned"].pruning_rule) == (
        "margin",
        "learned",
    )
    assert (pruned["prune_loss_infobatch"].pruning_rule, pruned["prune_loss_infobatch"].pruning_ratio) == (
        "infobatch",
        0.5,
    )
    assert pruned["baseline_short_learned"].max_steps == 123 and pruned["baseline_short_learned"].pruning == "none"
    assert not {"prune_margin_learned", "baseline_short_learned"} & set(
        registry.select_variants("prune", pruning, None, None)
    )
    assert (pruned["prune_margin"].pruning, pruned["prune_margin"].pruning_ratio) == ("margin", 0.75)
    assert pruned["prune_random"].pruning == "random" and pruned["baseline"].pruning == "none"
    assert 0 < pruned["baseline_short"].num_train_epochs < pruned["baseline"].num_train_epochs == 20
    # the harsher and the gentler level: their ratios, controls on either side, and run only when named
    assert pruned["prune_loss_keep28"].pruning_ratio == 0.9 and pruned["prune_margin_keep50"].pruning_ratio == 0.625
    short = {suffix: pruned[f"baseline_short{suffix}"].num_train_epochs for suffix in ("_keep28", "", "_keep50")}
    assert short["_keep28"] < short[""] < short["_keep50"] < 20
    default = registry.select_variants("prune", pruning, None, None)
    assert "prune_margin" in default and not any(name.endswith(("_keep28", "_keep50")) for name in default)
    unweighted = pruned["prune_loss_unweighted"]
    assert unweighted.pruning_rescale is False and pruned["prune_loss"].pruning_rescale is True
    assert (unweighted.pruning_ratio, "prune_loss_unweighted" in default) == (0.75, False)
    assert set(registry.select_variants("prune", pruning, None, ["prune_loss_keep28"])) == {
        "baseline",
        "prune_loss_keep28",
    }
    parsed = {
        name: parse_args([*setting.argv, *extra, "--output_dir", str(tmp_path)])[1] for name, extra in variants.items()
    }
    grid = parsed["entropy_k10_bf16_chunk32"]
    assert (grid.selection, grid.selection_oversample) == ("entropy", 10.0)
    assert (grid.selection_scoring_dtype, grid.selection_scoring_batch_size) == ("bfloat16", 32)
    assert parsed["loss_k4_bf16"].selection_scoring_batch_size is None
    assert parsed["mms_k2"].selection_scoring_dtype is None
    assert parsed["uniform_k2"].selection == "uniform" and parsed["baseline"].selection == "none"
    assert parsed["mms_k2_bf16_until50"].selection_until == 0.5
    assert parsed["mms_k2_bf16_0.5x"].max_steps == 400 and parsed["baseline_0.6x"].max_steps == 480
    assert parsed["mmr_ramp"].mmr_alpha_end == 1e-3
    # a name that is not a variant (here: k=4 was not asked for) is refused, not silently skipped
    with pytest.raises(ValueError, match=r"--only names no tta variant with --ks 2: \['mms_k4'\]"):
        bench(["--runs_dir", str(tmp_path), "tta", "--setting", "digits", "--ks", "2", "--only", "mms_k4"])


def test_overhead_measure_gives_ratios():
    work = Workload("tiny bert", lambda: tiny_bert(), TinyTextDataset(n=128), batch=8)
    result = measure(work, steps=3, warmup=1, k=2.0, repeats=1)
    assert 0.3 < result["margin_off_over_stock"] < 3.0
    assert result["mms_scoring_s"] > 0 and result["scoring_per_sample_over_train_per_sample"] > 0
    assert result["break_even_step_saving_at_k"]["10"] > result["break_even_step_saving_at_k"]["2"] > 1.0


def test_scoring_benchmark_times_each_variant_of_the_pool_forward():
    from tasks.bench.scoring import measure_variants, pool_forward
    from tests.conftest import tiny_timm

    images = {"pixel_values": torch.randn(4, 3, 16, 16)}
    model = tiny_timm()
    assert pool_forward(model, torch.bfloat16)(images).dtype == torch.bfloat16
    vision = measure_variants(model, images, image=True, repeats=2, warmup=1, compile_=False)
    assert list(vision) == ["fp32 eager", "bf16 autocast", "bf16 channels-last"]
    assert vision["fp32 eager"]["speedup_vs_fp32_eager"] == 1.0 and all(r["seconds"] > 0 for r in vision.values())
    ids = torch.randint(5, 100, (4, 8))
    text = measure_variants(tiny_bert(), {"input_ids": ids}, image=False, repeats=2, warmup=1, compile_=False)
    assert list(text) == ["fp32 eager", "bf16 autocast"]
    result = {
        "benchmark": "scoring",
        "device": "cpu",
        "date": "today",
        "command": "python -m tasks.bench scoring",
        "software": {"torch": "t", "transformers": "x", "timm": "y", "python": "3"},
        "results": [{"setting": "tiny", "variants": vision}],
    }
    table = "\n".join(scoring_section(result))
    assert "| tiny | bf16 channels-last |" in table and table.count("| tiny |") == 3


@pytest.mark.parametrize(
    ("variant", "trainer", "pruning"),
    [
        ("stock", "Trainer", False),
        ("prune_margin", "MarginTrainer", "margin"),
        ("sft_prune_margin", "MarginSFTTrainer", "margin"),
    ],
)
def test_lm_step_times_each_variant_through_its_own_trainer_class(variant, trainer, pruning):
    from tasks.bench.lm_step import one_variant

    measured = one_variant(variant, steps=2, warmup=1)
    assert (measured["trainer"], measured["pruning"]) == (trainer, pruning)
    assert measured["step_s"] > 0 and measured["peak_mb"] >= measured["training_peak_mb"] > 0
