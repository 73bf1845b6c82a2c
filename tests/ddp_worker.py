"""Run by tests/test_distributed.py under `torchrun --nproc_per_node 2` (CPU, gloo); not a test module."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hf_margin import MarginTrainer, MarginTrainingArguments, minimal_margin_scores, score_dataset  # noqa: E402
from tests.conftest import TinyTextDataset, shut_down_process_group, tiny_bert  # noqa: E402


def worker_args(out_dir: str, **overrides) -> MarginTrainingArguments:
    """Batch 4 per process, a log every step, CPU, no checkpoints; `overrides` set the rest."""
    common = dict(per_device_train_batch_size=4, logging_steps=1, report_to="none", use_cpu=True)
    return MarginTrainingArguments(output_dir=out_dir, save_strategy="no", disable_tqdm=True, **common, **overrides)


def main(out_dir: str, mode: str = "mms") -> None:
    if mode == "mms_cached":
        return cached(out_dir)
    if mode == "pruning":
        return pruned(out_dir)
    if mode == "rank":
        return rank(out_dir)
    model = tiny_bert()
    calls = []

    def record(module, args, kwargs, output):
        calls.append({"scoring": not torch.is_grad_enabled(), "rows": kwargs["input_ids"].tolist()})

    model.register_forward_hook(record, with_kwargs=True)
    args = worker_args(out_dir, selection="mms", selection_oversample=3, max_steps=3, mmr_alpha=1e-3)
    trainer = MarginTrainer(model=model, args=args, train_dataset=TinyTextDataset(n=96))
    trainer.train()
    result = {
        "rank": args.process_index,
        "world_size": args.world_size,
        "global_step": trainer.state.global_step,
        "calls": calls,
        "logs": trainer.state.log_history,
    }
    Path(out_dir, f"rank{args.process_index}.json").write_text(json.dumps(result))


def cached(out_dir: str) -> None:
    """Cached selection: 12 steps of 2 x 4 cover the 96 samples once; every process must hold the same cache."""
    args = worker_args(out_dir, selection="mms_cached", max_steps=14)
    trainer = MarginTrainer(model=tiny_bert(), args=args, train_dataset=TinyTextDataset(n=96))
    trainer.train()
    result = {
        "rank": args.process_index,
        "global_step": trainer.state.global_step,
        "margins": trainer.strategy.keeper.cache.margins.tolist(),
    }
    Path(out_dir, f"rank{args.process_index}.json").write_text(json.dumps(result))


def pruned(out_dir: str) -> None:
    """Margin pruning over 4 passes of 96 samples: every process must plan the same passes from the same scores."""
    model = tiny_bert(num_labels=3)
    rows = []
    model.register_forward_hook(lambda m, a, kw, out: rows.append(kw["input_ids"][:, :3].tolist()), with_kwargs=True)
    args = worker_args(out_dir, pruning="margin", num_train_epochs=4, pruning_anneal=0.25)
    trainer = MarginTrainer(model=model, args=args, train_dataset=TinyTextDataset(n=96, num_labels=3))
    trainer.train()
    result = {
        "rank": args.process_index,
        "global_step": trainer.state.global_step,
        "max_steps": trainer.state.max_steps,
        "lengths": [trainer.strategy.sampler.lengths[p] for p in range(4)],
        "margins": trainer.strategy.keeper.cache.margins.tolist(),
        "rows": rows,
    }
    Path(out_dir, f"rank{args.process_index}.json").write_text(json.dumps(result))


def rank(out_dir: str) -> None:
    """Ranking 23 samples in eval batches of 4 per process: 3 batches on one process, 3 on the other (one short)."""
    model = tiny_bert(num_labels=3, dropout=0.0)
    data = TinyTextDataset(n=23, num_labels=3)
    args = worker_args(out_dir, per_device_eval_batch_size=4)
    ranked = score_dataset(MarginTrainer(model=model, args=args), data, criterion="mms")
    model.eval()
    with torch.no_grad():  # this process alone, every sample, dataset order
        logits = model(input_ids=data.input_ids, attention_mask=torch.ones_like(data.input_ids)).logits
    result = {
        "rank": args.process_index,
        "world_size": args.world_size,
        "scores": ranked.scores.tolist(),
        "indices": ranked.indices.tolist(),
        "reference": minimal_margin_scores(logits, model.classifier.weight).tolist(),
    }
    Path(out_dir, f"rank{args.process_index}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:])
    shut_down_process_group()
