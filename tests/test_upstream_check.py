"""tests/upstream/check.py, the upstream Trainer tests check of `make test`: its reading of JUnit XML, its verdicts."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("upstream_check", Path(__file__).parent / "upstream" / "check.py")
check = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = check  # dataclasses look their module up there
_spec.loader.exec_module(check)

STEPS_TEST = "test_trainer::TrainerStepCountingTest::test_number_of_steps_in_training"


def _junit(path: Path, cases: dict[str, str]) -> Path:
    """A pytest-style JUnit file; `cases` maps `module::Class::test` (or `module::test`) to a status."""
    body = []
    for name, status in cases.items():
        *owner, test = name.split("::")
        classname = ".".join(["tests", "trainer", *owner])
        inner = {
            "passed": "",
            "failed": '<failure message="AssertionError: 12 != 24.0&#10;more">trace</failure>',
            "error": '<error message="fixture broke">trace</error>',
            "skipped": '<skipped message="needs 2 GPUs" />',
        }[status]
        body.append(f'<testcase classname="{classname}" name="{test}" time="0.1">{inner}</testcase>')
    path.write_text(
        f'<?xml version="1.0"?><testsuites><testsuite name="pytest">{"".join(body)}</testsuite></testsuites>'
    )
    return path


def test_load_results_names_and_statuses(tmp_path):
    xml = _junit(
        tmp_path / "a.xml",
        {STEPS_TEST: "failed", "test_zz_swap_check::test_trainer_class_in_use": "passed", "m::C::t": "skipped"},
    )
    results = check.load_results(xml)
    assert results[STEPS_TEST] == check.Result("failed", "AssertionError: 12 != 24.0")
    assert results["test_zz_swap_check::test_trainer_class_in_use"].status == "passed"
    assert check.counts(results) == {"passed": 1, "failed": 1, "skipped": 1}


def test_compare_splits_expected_unexpected_and_stale(tmp_path):
    k2 = next(s for s in check.SETTINGS if s.name == "uniform_k2")
    listed = set(check.EXPECTED_DIFFERENCES["uniform_k2"])
    assert STEPS_TEST in listed and all(check.EXPECTED_DIFFERENCES["uniform_k2"].values())  # every entry has a reason
    stock = {name: check.Result("passed") for name in [*listed, "m::C::other"]}
    swapped = {**{name: check.Result("failed") for name in listed}, "m::C::other": check.Result("passed")}
    assert check.compare(k2, stock, swapped).ok
    assert set(check.compare(k2, stock, swapped).expected) == listed

    swapped["m::C::other"] = check.Result("error", "boom")  # not listed: a failure of the check
    swapped[STEPS_TEST] = check.Result("passed")  # listed but no longer different: reported, so the list stays true
    comparison = check.compare(k2, stock, swapped)
    assert not comparison.ok
    assert set(comparison.unexpected) == {"m::C::other"} and set(comparison.stale) == {STEPS_TEST}

    # the same step-count difference with defaults is not excused
    defaults = next(s for s in check.SETTINGS if s.name == "defaults")
    assert set(check.compare(defaults, stock, swapped).unexpected) == listed - {STEPS_TEST} | {"m::C::other"}


def test_missing_upstream_folder_is_skipped_with_a_message(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HF_MARGIN_REQUIRE_SHARED", raising=False)
    assert check.main(["--upstream", str(tmp_path / "absent")]) == 0
    assert "not found" in capsys.readouterr().out


def test_missing_upstream_folder_fails_where_shared_is_required(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_MARGIN_REQUIRE_SHARED", "1")
    assert check.main(["--upstream", str(tmp_path / "absent")]) == 1
    assert "not found" in capsys.readouterr().err


def test_jobs_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="--jobs"):
        check.main(["--upstream", str(tmp_path), "--jobs", "0"])
