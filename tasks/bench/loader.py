"""Loader benchmark: images per second from the image recipe's train dataloader alone, as the Trainer builds it.

A 10,000-image CIFAR-10 train split decoded as the recipe decodes it, and the dataloader that
`MarginTrainer.get_train_dataloader()` builds (sampler, workers, collator, `accelerator.prepare`), iterated with
nothing else running: no forward, no step. Per configuration (batch 128; stock, or pools of k = 4 x the batch as MMS
selection loads them; 0 or more workers), the median images per second over repeats, after a warm-up. It says
whether the input pipeline can feed a step: a GPU training step of ResNet-20 at batch 128 takes about 15 ms, so
about 8,500 images a second, k times that with pools.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from tasks.bench.results import save_result


def images_per_second(loader: Any, batches: int) -> float:
    iterator = iter(loader)
    next(iterator)  # warm-up: workers started, first batch decoded
    start, images = time.perf_counter(), 0
    for _ in range(batches):
        batch = next(iterator, None)
        if batch is None:
            iterator = iter(loader)
            batch = next(iterator)
        images += batch["pixel_values"].shape[0]
    return images / (time.perf_counter() - start)


def run_loader(quick: bool = False, workers: tuple[int, ...] = (0, 2), results_dir=None) -> dict[str, Any]:
    from hf_margin import MarginTrainer, MarginTrainingArguments
    from tasks.image import build_model
    from tasks.image_data import collate_images, load_image_splits

    splits = load_image_splits("cifar10", max_train_samples=2000 if quick else 10000, max_eval_samples=10)
    model = build_model("cifar_resnet20", splits.label_names)
    rows, repeats, batches = {}, 1 if quick else 3, 10 if quick else 40
    for k in (1, 4):
        for count in workers:
            args = MarginTrainingArguments(
                "runs/loader",
                per_device_train_batch_size=128,
                dataloader_num_workers=count,
                report_to="none",
                use_cpu=True,
                **({"selection": "uniform", "selection_oversample": k} if k > 1 else {}),
            )
            trainer = MarginTrainer(model=model, args=args, train_dataset=splits.train, data_collator=collate_images)
            rates = [images_per_second(trainer.get_train_dataloader(), batches) for _ in range(repeats)]
            name = f"{'stock' if k == 1 else f'pool_k{k}'}_w{count}"
            rows[name] = {"images_per_second": statistics.median(rates), "repeats": rates}
            print(f"[loader] {name}: {rows[name]['images_per_second']:.0f} images/s", flush=True)
    payload = {"rows": rows, "threads": torch.get_num_threads(), "batch": 128}
    if results_dir is not None:
        save_result("loader", "cifar10_quick" if quick else "cifar10", payload, "python -m tasks.bench loader",
                    results_dir)  # fmt: skip
    return payload
