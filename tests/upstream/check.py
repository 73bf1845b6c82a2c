"""
transformers' own Trainer tests as a check of hf_margin: `MarginTrainer` must be a drop-in `Trainer`.

    python tests/upstream/check.py [--upstream DIR] [--out_dir DIR] [--settings defaults uniform_k1 uniform_k2]

The upstream test files are not part of this repository: they live in `../shared/upstream-trainer-tests` (a
folder beside the clone, with its own `run.sh` and a pytest plugin that swaps `transformers.Trainer`, and with
`SWAP_ARGS=1` `transformers.TrainingArguments`, for hf_margin's classes before collection). This script runs them
once per setting, reads the JUnit XMLs and compares every swapped setting with stock `Trainer`:

- `defaults` (margin features off) and `uniform k=1` (a pool of b, b kept: the selection machinery on, the data
  the same as stock) must pass every test that stock passes: any difference fails the check;
- `uniform k=2` may differ from stock only in the tests of `EXPECTED_DIFFERENCES`, each with its reason, and in
  all of them (a listed test that no longer differs is reported too, so the list stays true);
- the folder's `repro_*.py` scripts (small cases of past differences) must behave as stock with `MarginTrainer`.

It prints one table (stock passed/failed vs swapped passed/failed per setting), then every difference, and exits
non-zero on an unexpected one. Without the upstream folder it says so and exits 0, or 1 where
HF_MARGIN_REQUIRE_SHARED=1 (CI, which checks ../shared out beside the clone). Not collected by pytest
(its name does not start with `test_`); `make test` runs it after the project's own tests.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_UPSTREAM = REPO.parent / "shared" / "upstream-trainer-tests"

# With selection a Trainer epoch scores every sample once in pools of k*b: it has k times fewer optimizer steps
# (len(train dataloader) = ceil(N / (k*b))). Upstream tests that derive step numbers from N / b see half the steps.
_STEPS = "with k=2 an epoch of 64 samples at batch 8 has 4 optimizer steps, not 8, so "

# Tests that differ from stock at k=2, and why. Keys are `module::Class::test` as in `load_results`.
EXPECTED_DIFFERENCES: dict[str, dict[str, str]] = {
    "uniform_k2": {
        "test_trainer::TrainerStepCountingTest::test_number_of_steps_in_training": _STEPS
        + "3 epochs end at global_step 12, and the test expects n_epochs * 64 / batch_size = 24.",
        "test_trainer::TrainerStepCountingTest::test_training_loss": _STEPS
        + "logging_steps=64/8 no longer divides the run (12 steps, one log at step 8): the mean of the logged "
        "losses leaves out the last 4 steps and differs from train_loss.",
        "test_trainer_callback::TrainerCallbackTest::test_event_flow": _STEPS
        + "the expected event list, built from 8 steps per epoch (len of the eval loader), has twice the "
        "on_step_begin/.../on_step_end events that the run makes.",
        "test_trainer_checkpointing::TrainerCheckpointSaveTest::test_save_checkpoints": _STEPS
        + "no checkpoint-15 or checkpoint-20: the test expects saves every 5 steps up to n_epochs * 64 / 8 = 24, "
        "the run ends at step 12.",
        "test_trainer_checkpointing::TrainerBestModelTest::test_load_best_model_at_end": _STEPS
        + "check_saved_checkpoints looks for checkpoints up to step 24 of a run that ends at 12.",
        "test_trainer_checkpointing::TrainerBestModelTest::test_load_best_model_from_safetensors": _STEPS
        + "check_saved_checkpoints looks for checkpoints up to step 24 of a run that ends at 12.",
        "test_trainer_checkpointing::TrainerBestModelTest::test_save_best_checkpoint": _STEPS
        + "check_saved_checkpoints looks for checkpoints up to step 24 of a run that ends at 12.",
        "test_trainer_checkpointing::TrainerInterruptedTrainingTest::test_resume_from_interrupted_training": (
            "with k=2 the epoch of 100 samples at batch 2 x accumulation 3 has ceil(ceil(100 / 4) / 3) = 9 "
            "optimizer steps; the test expects ceil(100 / 6) = 17 and a checkpoint-17."
        ),
        "test_trainer::TrainerGradientAccumulationTest::test_gradient_accumulation": (
            "selection is per micro-batch (a pool of k * per_device_train_batch_size each): batch 4 x accumulation "
            "2 keeps a random 4 of each 8-sample pool, batch 8 a random 8 of one 16-sample pool, so the two runs "
            "train on different samples and end with different weights (same number of steps: 12)."
        ),
    },
}


@dataclass(frozen=True)
class Setting:
    """One run of the upstream tests: `mode` is run.sh's `stock` or `swap`, `env` the plugin's switches."""

    name: str
    label: str
    mode: str
    env: dict[str, str] = field(default_factory=dict)


SETTINGS = (
    Setting("stock", "stock Trainer", "stock"),
    Setting("defaults", "MarginTrainer, defaults", "swap", {"SWAP_ARGS": "1"}),
    Setting(
        "uniform_k1",
        "uniform k=1",
        "swap",
        {"SWAP_ARGS": "1", "MARGIN_ON": "selection=uniform,selection_oversample=1"},
    ),
    Setting(
        "uniform_k2",
        "uniform k=2",
        "swap",
        {"SWAP_ARGS": "1", "MARGIN_ON": "selection=uniform,selection_oversample=2"},
    ),
)


@dataclass(frozen=True)
class Result:
    status: str  # passed, failed, error, skipped
    message: str = ""


def load_results(xml_path: Path) -> dict[str, Result]:
    """`{"module::Class::test": Result}` from a pytest JUnit XML file."""
    results = {}
    for case in ET.parse(xml_path).getroot().iter("testcase"):
        parts = (case.get("classname") or "").split(".")
        # classname is `tests.trainer.test_trainer.TrainerTest` for a method, `tests.trainer.test_x` for a function
        module, cls = (parts[-2], parts[-1]) if parts[-1][:1].isupper() else (parts[-1], "")
        name = "::".join(p for p in (module, cls, case.get("name", "")) if p)
        result = Result("passed")
        for tag, status in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
            element = case.find(tag)
            if element is not None:
                lines = (element.get("message") or "").splitlines()
                result = Result(status, lines[0][:200] if lines else "")
                break
        results[name] = result
    return results


def counts(results: dict[str, Result]) -> dict[str, int]:
    out = {"passed": 0, "failed": 0, "skipped": 0}
    for result in results.values():
        key = "failed" if result.status == "error" else result.status
        out[key] = out.get(key, 0) + 1
    return out


def run_setting(
    setting: Setting, upstream: Path, out_dir: Path, pytest_args: list[str], jobs: int = 1
) -> tuple[dict[str, Result], float, str]:
    """Run the upstream tests once through run.sh; the results, the wall time and the last line of pytest's log."""
    env = {**os.environ, **setting.env, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    if jobs > 1:  # runs side by side share the cores: one torch thread each rather than oversubscribing them
        env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    for key in ("SWAP_ARGS", "MARGIN_ON"):  # a setting's switches only, never the caller's
        if key not in setting.env:
            env.pop(key, None)
    run_dir = out_dir / setting.name
    xml_path = run_dir / f"{setting.mode}.xml"
    xml_path.unlink(missing_ok=True)
    start = time.perf_counter()
    # run.sh exits non-zero when any test fails; the XML says which, so its status is not an error here
    proc = subprocess.run(
        ["bash", str(upstream / "run.sh"), sys.executable, str(run_dir), setting.mode, *pytest_args],
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    log_path = run_dir / f"{setting.mode}.log"
    if not xml_path.is_file():
        tail = log_path.read_text()[-3000:] if log_path.is_file() else proc.stdout + proc.stderr
        raise RuntimeError(f"{setting.name}: the upstream run wrote no {xml_path}; its output ends with:\n{tail}")
    log = log_path.read_text()
    if setting.mode == "swap" and "whose Trainer is NOT MarginTrainer: none" not in log:
        raise RuntimeError(f"{setting.name}: some upstream test modules kept the stock Trainer (see {log_path}).")
    return load_results(xml_path), seconds, proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""


@dataclass
class Comparison:
    setting: Setting
    unexpected: dict[str, tuple[Result, Result]] = field(default_factory=dict)
    expected: dict[str, tuple[Result, Result, str]] = field(default_factory=dict)
    stale: dict[str, str] = field(default_factory=dict)  # listed as expected, but the same as stock

    @property
    def ok(self) -> bool:
        return not self.unexpected and not self.stale


def compare(setting: Setting, stock: dict[str, Result], swapped: dict[str, Result]) -> Comparison:
    """Every test whose status differs from stock's, split into expected (listed, with reason) and unexpected."""
    expected = EXPECTED_DIFFERENCES.get(setting.name, {})
    comparison = Comparison(setting)
    absent = Result("absent")
    for name in sorted(set(stock) | set(swapped)):
        before, after = stock.get(name, absent), swapped.get(name, absent)
        if before.status == after.status:
            if name in expected:
                comparison.stale[name] = expected[name]
        elif name in expected:
            comparison.expected[name] = (before, after, expected[name])
        else:
            comparison.unexpected[name] = (before, after)
    return comparison


def run_repros(upstream: Path) -> list[str]:
    """
    The upstream folder's `repro_*.py` scripts: small standalone cases of differences from stock `Trainer` seen
    before. Each exits 0 when the class it is given behaves like stock; with `trainer` it must (else the script
    itself is broken), with `margin` it must too. The names of the failing ones.
    """
    failed = []
    scripts = sorted(upstream.glob("repro_*.py"))
    if scripts:
        print(f"\n{'repro script':<34} {'stock Trainer':>14} {'MarginTrainer':>14}")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    for script in scripts:
        status = {}
        for mode in ("trainer", "margin"):
            proc = subprocess.run([sys.executable, script.name, mode], cwd=upstream, env=env, capture_output=True)
            status[mode] = "as stock" if proc.returncode == 0 else f"differs ({proc.returncode})"
        print(f"{script.name:<34} {status['trainer']:>14} {status['margin']:>14}")
        if status["trainer"] != "as stock" or status["margin"] != "as stock":
            failed.append(script.name)
    return failed


def print_table(rows: list[tuple[Setting, dict[str, int], dict[str, int], float]]) -> None:
    header = f"{'setting':<26} {'stock passed/failed':>20} {'swapped passed/failed':>22} {'skipped':>8} {'time':>7}"
    print(header)
    print("-" * len(header))
    for setting, stock_counts, swapped_counts, seconds in rows:
        print(
            f"{setting.label:<26} {stock_counts['passed']:>11}/{stock_counts['failed']:<8} "
            f"{swapped_counts['passed']:>13}/{swapped_counts['failed']:<8} {swapped_counts['skipped']:>8} "
            f"{seconds:>6.0f}s"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1].strip())
    parser.add_argument("--upstream", type=Path, default=DEFAULT_UPSTREAM, help="folder with run.sh and tests/")
    parser.add_argument("--out_dir", type=Path, default=REPO / "runs" / "upstream-trainer-tests")
    parser.add_argument(
        "--settings",
        nargs="+",
        choices=[s.name for s in SETTINGS[1:]],
        default=[s.name for s in SETTINGS[1:]],
        help="swapped settings to run (stock always runs)",
    )
    parser.add_argument(
        "--pytest_args",
        default="",
        help="extra arguments for every pytest run, e.g. '-k Resume' or '-p a_plugin' (shell-style quoting)",
    )
    parser.add_argument(
        "--jobs", type=int, default=2, help="settings run side by side (each pytest run is mostly one core)"
    )
    parser.add_argument("--no_repros", action="store_true", help="skip the upstream folder's repro_*.py scripts")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}.")

    if not (args.upstream / "run.sh").is_file():
        missing = f"upstream Trainer tests: {args.upstream} not found (it is ../shared/upstream-trainer-tests beside"
        if os.environ.get("HF_MARGIN_REQUIRE_SHARED") == "1":
            print(missing + " the repository, required where HF_MARGIN_REQUIRE_SHARED=1).", file=sys.stderr)
            return 1
        print(missing + " the repository in CI); skipping this check.")
        return 0
    settings = [SETTINGS[0], *(s for s in SETTINGS[1:] if s.name in args.settings)]
    print(f"upstream Trainer tests from {args.upstream}, {len(settings)} runs, results in {args.out_dir}", flush=True)
    results, seconds = {}, {}
    start = time.perf_counter()
    # each setting writes only under its own out_dir/<name> and pytest's temporary folders: safe side by side
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {
            pool.submit(
                run_setting, setting, args.upstream, args.out_dir, shlex.split(args.pytest_args), args.jobs
            ): setting
            for setting in settings
        }
        for future in as_completed(futures):
            setting = futures[future]
            results[setting.name], seconds[setting.name], summary = future.result()
            print(f"  {setting.label:<24} {summary} ({seconds[setting.name]:.0f} s)", flush=True)
    stock = results["stock"]
    if counts(stock)["passed"] == 0:
        print("upstream Trainer tests: nothing passed with stock Trainer, so there is nothing to compare.")
        return 1

    stock_counts = counts(stock)
    rows = [(s, stock_counts, counts(results[s.name]), seconds[s.name]) for s in settings[1:]]
    print()
    print_table(rows)
    comparisons = [compare(s, stock, results[s.name]) for s in settings[1:]]
    for comparison in comparisons:
        label = comparison.setting.label
        for name, (before, after, reason) in comparison.expected.items():
            print(f"\n[{label}] expected: {name}: {before.status} -> {after.status}\n    why: {reason}")
        for name, (before, after) in comparison.unexpected.items():
            print(f"\n[{label}] UNEXPECTED: {name}: {before.status} -> {after.status}\n    {after.message}")
        for name, reason in comparison.stale.items():
            print(
                f"\n[{label}] LISTED BUT NOT DIFFERENT: {name} has the same status as with stock Trainer; "
                f"remove it from EXPECTED_DIFFERENCES if that is right (listed because: {reason})"
            )
    failed = [c.setting.label for c in comparisons if not c.ok]
    if not args.no_repros:
        failed += run_repros(args.upstream)
    total = time.perf_counter() - start
    if failed:
        print(f"\nupstream Trainer tests: unexpected differences from stock Trainer in {failed} ({total:.0f} s)")
        return 1
    print(
        f"\nupstream Trainer tests: every setting matches stock Trainer up to the listed differences ({total:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
