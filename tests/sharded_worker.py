"""
Run by tests/test_sharded.py under `torchrun --nproc_per_node 2` (CPU, gloo); not a test module.

One launch per engine (`ddp`, `fsdp1_orig`, `fsdp1_flat`, `fsdp2_root`, `fsdp2_own`, `zero2`, `zero3`), set up
through the Trainer's own `fsdp` / `fsdp_config` / `deepspeed` arguments; inside it, every configuration of
`CONFIGS` trains in turn. Each process writes `<out>/<engine>/rank<r>.json`: per configuration the wrapper, the
logs, what each forward saw (the rows, and for the last linear layer its output and its full weight, read inside
its own forward by a test hook) and, on rank 0, the final classifier weight gathered by accelerate.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers import Trainer, TrainingArguments  # noqa: E402

# Lets accelerate put FSDP / DeepSpeed on CPU processes; must run before any TrainingArguments is built.
import tests.accelerate_cpu_sharding  # noqa: E402, F401
from hf_margin import MarginTrainer, MarginTrainingArguments  # noqa: E402
from tests.conftest import TinyTextDataset, shut_down_process_group, tiny_bert  # noqa: E402

NUM_LABELS = 4  # >= 3: with 2 classes the MMS ranking does not depend on the weight
POOL_DATA, CACHED_DATA = 48, 32  # pool runs: 3 steps of 2 x 8 per epoch; cached runs: 4 steps of 2 x 4


def engine_args(engine: str) -> dict:
    """The TrainingArguments fields that put the model under `engine`."""
    if engine == "ddp":
        return {}
    if engine.startswith("fsdp1"):
        # sync_module_states needs an accelerator device; every process builds the same model from one seed anyway
        config = {"version": 1, "use_orig_params": engine == "fsdp1_orig", "sync_module_states": False}
        return {"fsdp": True, "fsdp_config": config}
    if engine.startswith("fsdp2"):
        # fsdp2_root: each BertLayer a unit, the head in the root one. Not the default (the model's
        # _no_split_modules): accelerate (1.15, 1.16) wraps BertEmbeddings, then shards its word embeddings again as
        # the input embeddings. fsdp2_own: every nn.Linear a unit too, the head among them.
        layers = ["BertLayer"] if engine == "fsdp2_root" else ["BertLayer", "Linear"]
        return {"fsdp": True, "fsdp_config": {"version": 2, "transformer_layer_cls_to_wrap": layers}}
    if engine in ("zero2", "zero3"):
        zero = {"stage": int(engine[-1])}
        if engine == "zero3":
            # 0: shard every parameter, the tiny head too (by default small ones stay whole on every process)
            zero.update(stage3_param_persistence_threshold=0, stage3_gather_16bit_weights_on_model_save=True)
        config = {
            "zero_optimization": zero,
            "train_micro_batch_size_per_gpu": "auto",
            "train_batch_size": "auto",
            "gradient_accumulation_steps": "auto",
            "gradient_clipping": "auto",
        }
        return {"deepspeed": config}
    raise ValueError(f"unknown engine {engine!r}")


# name: (trainer class, dataset size, TrainingArguments overrides); every run batch 4 per process, a log per step
CONFIGS: dict[str, tuple[type[Trainer], int, dict]] = {
    # stock Trainer multiplies a loss-kwargs model's plain mean by the world size (average_tokens_across_devices);
    # MarginTrainer never does, so the stock reference turns that off
    "stock": (Trainer, POOL_DATA, {"max_steps": 3, "average_tokens_across_devices": False}),
    "off": (MarginTrainer, POOL_DATA, {"max_steps": 3}),
    "uniform": (MarginTrainer, POOL_DATA, {"max_steps": 3, "selection": "uniform", "selection_oversample": 2}),
    "entropy": (MarginTrainer, POOL_DATA, {"max_steps": 3, "selection": "entropy", "selection_oversample": 2}),
    "loss": (MarginTrainer, POOL_DATA, {"max_steps": 3, "selection": "loss", "selection_oversample": 2}),
    "mmr": (MarginTrainer, POOL_DATA, {"max_steps": 3, "mmr_alpha": 0.1}),
    # each pool of 8 scored in two forwards of 4: every process must run the same number of engine forwards
    "chunked": (
        MarginTrainer,
        POOL_DATA,
        {"max_steps": 3, "selection": "mms", "selection_oversample": 2, "selection_scoring_batch_size": 4},
    ),
    # MMS and MMR together, checkpointed mid-epoch at step 2: "resume" continues from there
    "mms": (
        MarginTrainer,
        POOL_DATA,
        {"max_steps": 4, "selection": "mms", "selection_oversample": 2, "mmr_alpha": 0.1, "save_steps": 2},
    ),
    "resume": (
        MarginTrainer,
        POOL_DATA,
        {"max_steps": 4, "selection": "mms", "selection_oversample": 2, "mmr_alpha": 0.1, "save_steps": 2},
    ),
    "accumulation": (
        MarginTrainer,
        POOL_DATA,
        {
            "max_steps": 2,
            "selection": "mms",
            "selection_oversample": 2,
            "mmr_alpha": 0.1,
            "gradient_accumulation_steps": 2,
        },
    ),
    # pruned passes train on the hard and a share of the easy samples by the margins of the pass before
    "pruned": (MarginTrainer, CACHED_DATA, {"num_train_epochs": 3, "pruning": "margin"}),
    # 6 steps: the second epoch plans its pass from the cache of the first
    "cached": (MarginTrainer, CACHED_DATA, {"max_steps": 6, "selection": "mms_cached", "selection_easy_rate": 0.5}),
}


def run(engine: str, name: str, out_dir: Path) -> dict:
    trainer_cls, n, overrides = CONFIGS[name]
    overrides = dict(overrides)
    model = tiny_bert(num_labels=NUM_LABELS, dropout=0.0)
    forwards: list[dict] = []

    def record_rows(module, args, kwargs):
        forwards.append({"grad": torch.is_grad_enabled(), "rows": kwargs["input_ids"].tolist()})

    def record_head(module, args, output):
        # runs inside the head's forward, where every engine holds its full weight
        forwards[-1]["logits"] = output.detach().float().tolist()
        forwards[-1]["weight"] = module.weight.detach().float().tolist()

    model.register_forward_pre_hook(record_rows, with_kwargs=True)
    model.classifier.register_forward_hook(record_head)
    run_dir = out_dir / name
    resume = None
    if name == "resume":
        run_dir = out_dir / "mms"
        resume = str(run_dir / "checkpoint-2")
    save = {"save_strategy": "steps"} if "save_steps" in overrides else {"save_strategy": "no"}
    args_cls = TrainingArguments if trainer_cls is Trainer else MarginTrainingArguments
    args = args_cls(
        output_dir=str(run_dir),
        per_device_train_batch_size=4,
        logging_steps=1,
        report_to="none",
        disable_tqdm=True,
        max_grad_norm=0.0,  # no clipping: the weights of every engine compare without it
        use_cpu=not engine.startswith("zero"),  # DeepSpeed refuses cpu=True; the patch finds gloo without it
        seed=0,
        **save,
        **engine_args(engine),
        **overrides,
    )
    trainer = trainer_cls(model=model, args=args, train_dataset=TinyTextDataset(n=n, num_labels=NUM_LABELS))
    trainer.train(resume_from_checkpoint=resume)
    classifier = full_classifier_weight(trainer)
    return {
        "wrapper": describe_wrapper(trainer),
        "world_size": args.world_size,
        "global_step": trainer.state.global_step,
        "logs": trainer.state.log_history,
        "forwards": forwards,
        "classifier": classifier.float().tolist(),
    }


def full_classifier_weight(trainer: Trainer) -> torch.Tensor:
    """The head's whole weight after training, gathered by each engine's own means (on every process)."""
    wrapped = trainer.model_wrapped
    head = trainer.accelerator.unwrap_model(wrapped).classifier
    from torch.distributed.fsdp import FullyShardedDataParallel

    if isinstance(wrapped, FullyShardedDataParallel):
        with FullyShardedDataParallel.summon_full_params(wrapped):
            return head.weight.detach().clone()
    if type(head.weight).__name__ == "DTensor":
        return head.weight.detach().full_tensor()
    if type(wrapped).__name__ == "DeepSpeedEngine" and wrapped.zero_optimization_stage() == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters([head.weight]):
            return head.weight.detach().clone()
    return head.weight.detach().clone()


def describe_wrapper(trainer: Trainer) -> dict:
    """What the engine did to the model: wrapper types, and the head's weight outside its forward."""
    wrapped = trainer.model_wrapped
    info = {"model_wrapped": type(wrapped).__name__, "model": type(trainer.model).__name__}
    try:
        from torch.distributed.fsdp import FSDPModule

        modules = dict(trainer.accelerator.unwrap_model(wrapped).named_modules())
        info["fsdp2_units"] = sorted(name for name, m in modules.items() if isinstance(m, FSDPModule))
    except ImportError:
        pass
    from torch.distributed.fsdp import FullyShardedDataParallel

    if isinstance(wrapped, FullyShardedDataParallel):
        info["fsdp1_use_orig_params"] = wrapped._use_orig_params
        flat = wrapped._handle.flat_param  # the root unit's, which holds the head
        info["fsdp1_root_flat_param"] = {"local": flat.numel(), "unsharded": flat._unpadded_unsharded_size.numel()}
    if type(wrapped).__name__ == "DeepSpeedEngine":
        info["zero_stage"] = wrapped.zero_optimization_stage()
    head = trainer.accelerator.unwrap_model(wrapped).classifier.weight
    info["head_weight"] = {"type": type(head).__name__, "shape": list(head.shape), "numel": head.numel()}
    return info


def main(out_dir: str, engine: str, *names: str) -> None:
    torch.set_num_threads(1)
    out = Path(out_dir, engine)
    results = {}
    for name in names or CONFIGS:
        results[name] = run(engine, name, out)
    rank = int(os.environ.get("RANK", 0))
    Path(out, f"rank{rank}.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main(*sys.argv[1:])
    shut_down_process_group()
