"""The benchmark registry is the one source of the suite, the Makefile's grid and the report; the committed
results and BENCHMARKS.md derive from it. No benchmark is run here except one seconds-long quick grid."""

from __future__ import annotations

import ast
import json
import shlex

import pytest

from tasks.bench import registry
from tasks.bench.__main__ import build_parser, suite_commands
from tasks.bench.__main__ import main as bench
from tasks.bench.report import PLACEHOLDER, TEMPLATE_NAME, render_report
from tasks.paths import BENCHMARKS_MD, RESULTS, ROOT
from tests.conftest import bench_dirs


def _grid_key(argv: list[str]) -> tuple:
    """What decides a grid's runs and its result file: kind, setting, tag, seeds, pool factors, variants."""
    args = build_parser().parse_args(argv)
    if args.command in registry.TOOLS:
        return (args.command, args.quick)
    only = tuple(sorted(args.only or ()))
    return (args.command, args.setting, args.tag, tuple(args.seeds), tuple(getattr(args, "ks", ())), only)


@pytest.mark.parametrize("name", sorted(registry.SUITES))
def test_every_suite_line_parses_and_names_only_registered_variants(name):
    lines = registry.SUITES[name]
    assert [line.argv() for line in lines] == suite_commands(name)
    for line in lines:
        args = build_parser().parse_args(line.argv())
        assert args.command == line.kind and args.quick == (name == "quick")
        if line.kind in registry.KINDS:
            setting = registry.SETTINGS[line.setting]
            chosen = registry.select_variants(line.kind, setting, getattr(args, "ks", None), args.only)
            assert "baseline" in chosen and set(line.only) <= set(chosen)


def test_every_committed_result_comes_from_a_line_of_the_suite():
    suite = {_grid_key(line.argv()) for line in [*registry.SUITE, *registry.GPU_SUITE]}
    results = sorted(RESULTS.glob("*.json"))
    assert len(results) >= 27
    for path in results:
        result = json.loads(path.read_text())
        prefix = "python -m tasks.bench "
        assert result["command"].startswith(prefix), path.name
        argv = shlex.split(result["command"][len(prefix) :])
        assert _grid_key(argv) in suite, f"{path.name}: `{result['command']}` is no line of a suite"
        if result["benchmark"] in registry.KINDS:
            args = build_parser().parse_args(argv)
            setting = registry.SETTINGS[args.setting]
            names = registry.select_variants(args.command, setting, getattr(args, "ks", None), args.only)
            assert set(result["rows"]) == set(names), path.name


def test_the_makefile_runs_the_suite_instead_of_listing_grids():
    makefile = (ROOT / "Makefile").read_text()
    bench_target = makefile.split("\nbench:")[1].split("\n\n")[0]
    quick_target = makefile.split("\nbench-quick:")[1].split("\n\n")[0]
    assert "-m tasks.bench suite" in bench_target and "--setting" not in bench_target
    assert "-m tasks.bench suite --quick" in quick_target and "--setting" not in quick_target


def test_suite_list_prints_every_line_then_the_report(capsys):
    bench(["suite", "--list"])
    printed = capsys.readouterr().out.strip().split("\n")
    assert printed[-1] == "python -m tasks.bench report"
    assert printed[:-1] == [f"python -m tasks.bench {shlex.join(argv)}" for argv in suite_commands()]
    assert len(printed) == len(registry.SUITE) + 1


def test_only_refuses_a_name_that_is_no_variant_of_the_kind(tmp_path):
    with pytest.raises(ValueError, match=r"--only names no mmr variant: \['mms_k2'\]"):
        bench([*bench_dirs(tmp_path), "mmr", "--setting", "digits", "--only", "mms_k2"])
    with pytest.raises(ValueError, match=r"--only names no tta variant with --ks 2 4 10: \['nonsense'\]"):
        bench([*bench_dirs(tmp_path), "tta", "--setting", "digits", "--only", "nonsense"])
    assert not (tmp_path / "runs").exists()  # refused before any run


def test_a_new_variant_is_one_edit_of_the_registry(monkeypatch):
    monkeypatch.setitem(
        registry.CHEAP_VARIANTS, "mms_k3_bf16", registry.pool("mms", 3, "--selection_scoring_dtype", "bfloat16")
    )
    setting = registry.SETTINGS["digits"]
    chosen = registry.select_variants("tta", setting, None, ["mms_k3_bf16"])
    assert chosen["mms_k3_bf16"][:4] == ["--selection", "mms", "--selection_oversample", "3"]
    assert registry.plotted("mms_k3_bf16") and not registry.plotted("loss_k10")


def test_suite_runs_its_lines_in_order_resumes_and_renders_the_report(tmp_path, monkeypatch):
    import tasks.bench.__main__ as cli

    line = registry.GridLine("tta", "digits", (0,), (2,), ("mms_k2",), quick=True)
    monkeypatch.setitem(cli.SUITES, "cpu", [line])
    common = [*bench_dirs(tmp_path), "--benchmarks_md", str(tmp_path / "BENCHMARKS.md")]
    bench([*common, "suite"])
    result = json.loads(next((tmp_path / "results").glob("tta_digits_quick_*.json")).read_text())
    assert set(result["rows"]) == {"baseline", "mms_k2"}
    assert "#### Time to accuracy: digits_quick" in (tmp_path / "BENCHMARKS.md").read_text()
    finished = tmp_path / "runs" / "digits_quick" / "tta" / "mms_k2_s0" / "metrics.json"
    before = finished.stat().st_mtime
    bench([*common, "suite"])
    assert finished.stat().st_mtime == before


def test_the_committed_report_renders_from_the_committed_json_and_matches_benchmarks_md(tmp_path):
    template = (RESULTS / TEMPLATE_NAME).read_text()
    placed = [m.group(1) for line in template.split("\n") if (m := PLACEHOLDER.match(line.strip()))]
    assert len(placed) == len(set(placed)), "a result is placed twice"
    assert sorted(placed) == sorted(p.stem for p in RESULTS.glob("*.json")), "every result has its place"
    out = render_report(RESULTS, tmp_path / "BENCHMARKS.md", plots=False).read_text()
    assert "## Other results" not in out and "<!-- result:" not in out
    for stem in placed:
        assert f"<!-- generated from results/{stem}.json" in out
    assert out == BENCHMARKS_MD.read_text(), "BENCHMARKS.md is stale: run `python -m tasks.bench report`"


def test_a_template_naming_a_missing_result_is_refused(tmp_path):
    (tmp_path / "results").mkdir()
    template = tmp_path / "t.md"
    template.write_text("# B\n<!-- result: tta_nothing_cpu -->\n")
    with pytest.raises(ValueError, match="tta_nothing_cpu"):
        render_report(tmp_path / "results", tmp_path / "B.md", template)


def test_the_bench_modules_import_one_way():
    """No import cycle inside tasks.bench: registry <- results <- run/overhead/scoring, report; __main__ last."""
    package = ROOT / "tasks" / "bench"
    graph: dict[str, set[str]] = {}
    for path in package.glob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tasks.bench."):
                names.add(node.module.removeprefix("tasks.bench."))
            elif isinstance(node, ast.Import):
                names |= {a.name.removeprefix("tasks.bench.") for a in node.names if a.name.startswith("tasks.bench.")}
        graph[path.stem] = names
    assert graph["registry"] == set() and graph["results"] == {"registry"}
    order: list[str] = []
    while len(order) < len(graph):
        ready = sorted(m for m, deps in graph.items() if m not in order and deps <= set(order))
        assert ready, f"import cycle among {sorted(set(graph) - set(order))}"
        order += ready
    assert order[-1] == "__main__"
