"""
The Trainer features users combine with the mechanisms that keep scores across steps (epoch pruning by each rule,
cached margins), each checked the way stock `Trainer` behaves with it: what is invariant for stock (resuming,
the number of loader workers, a second `train()`) is invariant here too, bit for bit; what cannot apply is refused
with an error naming it. Stock `Trainer` runs beside each check, so a check that stock itself would fail is caught.

Also: the host synchronisations a feature adds to the training step, counted over a whole `train()`.
"""

from __future__ import annotations

import os
import traceback
from collections import Counter

import pytest
import torch
from torch.overrides import TorchFunctionMode
from transformers import EarlyStoppingCallback, Trainer, TrainerCallback, TrainingArguments

from hf_margin import MarginTrainer, score_dataset
from tests.conftest import TinyTextDataset, margin_args, tiny_bert

N, BATCH, PASSES = 48, 8, 5  # 6 steps a full pass
MECHANISMS = {
    "stock": None,
    "fixed": dict(pruning="margin", pruning_hard_fraction=0.25),
    "learned": dict(pruning="margin", pruning_rule="learned", pruning_learned_visits=1, pruning_threshold=0.0),
    "infobatch": dict(pruning="loss", pruning_rule="infobatch"),
    "cached": dict(selection="mms_cached", selection_hard_fraction=0.25),
}
PRUNING = [m for m in MECHANISMS if m not in ("stock", "cached")]


def data() -> TinyTextDataset:
    return TinyTextDataset(n=N, num_labels=3)


def run_args(tmp_path, mechanism: str, name: str, **overrides):
    features = MECHANISMS[mechanism]
    common = dict(
        output_dir=str(tmp_path / name),
        per_device_train_batch_size=BATCH,
        learning_rate=5e-3,
        logging_steps=1,
        save_strategy="no",
        max_steps=-1,
        num_train_epochs=PASSES,
    )
    if features is None:
        return margin_args(tmp_path, cls=TrainingArguments, **{**common, **overrides})
    return margin_args(tmp_path, **{**common, **features, **overrides})


def trainer_for(
    tmp_path, mechanism: str, name: str, model_init=None, dataset=None, dropout: float = 0.1, eval_dataset=None,
    **overrides,
) -> Trainer:  # fmt: skip
    args = run_args(tmp_path, mechanism, name, **overrides)
    cls = Trainer if MECHANISMS[mechanism] is None else MarginTrainer
    model = None if model_init else tiny_bert(num_labels=3, dropout=dropout)
    train = dataset if dataset is not None else data()
    return cls(model=model, model_init=model_init, args=args, train_dataset=train, eval_dataset=eval_dataset)


def weights(trainer: Trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in trainer.model.parameters()]


def assert_same_weights(a: list[torch.Tensor], b: list[torch.Tensor], what: str) -> None:
    worst = max(float((x - y).abs().max()) for x, y in zip(a, b))
    assert worst == 0.0, f"{what}: final weights differ by up to {worst:.2e}"


def train_losses(trainer: Trainer) -> list[float]:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


_reference_cache: dict[str, tuple[list[torch.Tensor], list[float]]] = {}


def reference(tmp_path, mechanism: str) -> tuple[list[torch.Tensor], list[float]]:
    """The uninterrupted run of a mechanism: its final weights and losses (computed once per test session)."""
    if mechanism not in _reference_cache:
        trainer = trainer_for(tmp_path, mechanism, f"ref_{mechanism}")
        trainer.train()
        if mechanism in PRUNING:  # the checks below must see passes that were pruned, not full ones only
            assert min(trainer.strategy.sampler.lengths.values()) < N, f"{mechanism} pruned nothing"
        _reference_cache[mechanism] = (weights(trainer), train_losses(trainer))
    return _reference_cache[mechanism]


# ---- resume: at a pass boundary, mid-pass, in a pruned pass ----


class SaveAt(TrainerCallback):
    """A checkpoint at each of `steps` (and at the end of the run)."""

    def __init__(self, steps):
        self.steps = set(steps)

    def on_step_end(self, args, state, control, **kwargs):
        control.should_save = control.should_save or state.global_step in self.steps


@pytest.mark.parametrize("mechanism", list(MECHANISMS))
def test_resume_at_several_points_gives_the_uninterrupted_run(tmp_path, mechanism):
    points = (3, 6, 8, 13)  # mid pass 0, its end, inside pass 1 (pruned), inside a later pass
    full = trainer_for(tmp_path, mechanism, "full", save_strategy="steps", save_steps=10_000)
    full.add_callback(SaveAt(points))
    full.train()
    expected = weights(full)
    assert_same_weights(expected, reference(tmp_path, mechanism)[0], "saving checkpoints changed the run")
    steps = full.state.global_step
    for step in points:
        checkpoint = os.path.join(full.args.output_dir, f"checkpoint-{step}")
        resumed = trainer_for(tmp_path, mechanism, f"resumed_{step}")
        resumed.train(resume_from_checkpoint=checkpoint)
        assert resumed.state.global_step == steps
        assert train_losses(resumed)[step:] == train_losses(full)[step:], f"losses after resuming at step {step}"
        assert_same_weights(weights(resumed), expected, f"resumed at step {step}")


# ---- dataloader workers and prefetch: speed knobs, not what is trained ----


@pytest.mark.slow
@pytest.mark.parametrize("mechanism", list(MECHANISMS))
def test_loader_workers_and_prefetch_do_not_change_the_run(tmp_path, mechanism):
    expected = reference(tmp_path, mechanism)[0]
    for workers, prefetch in ((1, None), (2, 1), (2, 4)):
        trainer = trainer_for(
            tmp_path,
            mechanism,
            f"w{workers}p{prefetch}",
            dataloader_num_workers=workers,
            dataloader_prefetch_factor=prefetch,
        )
        trainer.train()
        assert_same_weights(weights(trainer), expected, f"{workers} workers, prefetch {prefetch}")


# ---- model_init, a second train(), hyperparameter search: each run starts clean ----


@pytest.mark.parametrize("mechanism", list(MECHANISMS))
def test_a_second_train_with_model_init_repeats_the_first(tmp_path, mechanism):
    trainer = trainer_for(tmp_path, mechanism, "init", model_init=lambda: tiny_bert(num_labels=3))
    trainer.train()
    first = weights(trainer)
    trainer.train()
    assert_same_weights(weights(trainer), first, "the second train() was steered by the first")


@pytest.mark.slow
@pytest.mark.parametrize("mechanism", ["stock", "learned", "cached"])
def test_hyperparameter_search_trials_with_the_same_parameters_agree(tmp_path, mechanism):
    pytest.importorskip("optuna")
    trainer = trainer_for(tmp_path, mechanism, "hp", model_init=lambda trial: tiny_bert(num_labels=3),
                          eval_dataset=data())  # fmt: skip
    objectives = []

    def objective(metrics):
        objectives.append(metrics["eval_loss"])
        return metrics["eval_loss"]

    trainer.hyperparameter_search(
        hp_space=lambda trial: {"learning_rate": trial.suggest_categorical("learning_rate", [5e-3])},
        compute_objective=objective,
        n_trials=2,
        direction="minimize",
        backend="optuna",
    )
    assert len(objectives) == 2 and objectives[0] == objectives[1]


def test_ranking_twice_and_after_training_again_gives_the_same_ranking(tmp_path):
    trainer = trainer_for(tmp_path, "learned", "rank", model_init=lambda: tiny_bert(num_labels=3))
    trainer.train()
    first = {c: score_dataset(trainer, data(), c).indices for c in ("mms", "random")}
    assert all(torch.equal(score_dataset(trainer, data(), c).indices, first[c]) for c in first)
    trainer.train()
    assert all(torch.equal(score_dataset(trainer, data(), c).indices, first[c]) for c in first)


# ---- the rest of the matrix ----


@pytest.mark.parametrize("mechanism", ["stock", "fixed", "learned"])
def test_early_stopping_with_the_best_model_loaded_at_the_end(tmp_path, mechanism):
    trainer = trainer_for(
        tmp_path,
        mechanism,
        "early",
        num_train_epochs=12,
        learning_rate=5e-2,
        eval_strategy="epoch",
        save_strategy="epoch",
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        eval_dataset=data(),
    )
    trainer.add_callback(EarlyStoppingCallback(early_stopping_patience=1))
    trainer.train()
    evals = [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h]
    assert len(evals) < 12, "early stopping did not stop the run"
    best = trainer.state.best_model_checkpoint
    assert best is not None and min(evals) == trainer.state.best_metric
    assert trainer.evaluate()["eval_loss"] == pytest.approx(trainer.state.best_metric)  # the best model is loaded


@pytest.mark.parametrize("mechanism", ["fixed", "cached"])
def test_gradient_accumulation_equals_the_large_batch(tmp_path, mechanism):
    # Stock Trainer is left out: it divides a BERT classifier's batch-mean loss wrongly under accumulation (see
    # test_trainer.py; MarginTrainer does not). So are the rules that drop samples by a threshold on their scores: a
    # score at the threshold can fall either side of it in the last bit, and batching in halves moves the last bit.
    big = trainer_for(tmp_path, mechanism, "big", dropout=0.0)
    big.train()
    accumulated = trainer_for(
        tmp_path, mechanism, "acc", dropout=0.0, per_device_train_batch_size=BATCH // 2, gradient_accumulation_steps=2
    )
    accumulated.train()
    assert accumulated.state.global_step == big.state.global_step
    if mechanism == "fixed":  # the same passes, batched by halves
        assert accumulated.strategy.sampler.lengths == big.strategy.sampler.lengths
    for a, b in zip(weights(accumulated), weights(big)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mechanism", list(MECHANISMS))
def test_auto_find_batch_size_runs_the_same_training(tmp_path, mechanism):
    trainer = trainer_for(tmp_path, mechanism, "auto", auto_find_batch_size=True)
    trainer.train()
    assert_same_weights(weights(trainer), reference(tmp_path, mechanism)[0], "auto_find_batch_size")


@pytest.mark.parametrize("mechanism", [m for m in MECHANISMS if m != "stock"])
def test_label_smoothing_is_the_trainers_on_unit_weights(tmp_path, mechanism):
    from transformers.trainer_pt_utils import LabelSmoother

    from hf_margin.strategies.tagged import INDEX_KEY, WEIGHT_KEY

    trainer = trainer_for(tmp_path, mechanism, "smooth", dropout=0.0, label_smoothing_factor=0.1)
    trainer.get_train_dataloader()  # builds the cache
    samples = data()
    batch = {
        "input_ids": samples.input_ids[:8],
        "attention_mask": torch.ones_like(samples.input_ids[:8]),
        "labels": samples.labels[:8],
        INDEX_KEY: torch.arange(8),
        WEIGHT_KEY: torch.ones(8),
    }
    trainer.model.train()
    ours = trainer.compute_loss(trainer.model, dict(batch))
    outputs = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    stock = LabelSmoother(epsilon=0.1)(outputs, batch["labels"])
    torch.testing.assert_close(ours, stock)


@pytest.mark.parametrize("mechanism", ["stock", "fixed", "learned", "cached"])
def test_remove_unused_columns_false_keeps_the_columns_and_the_run(tmp_path, mechanism):
    datasets = pytest.importorskip("datasets")
    samples = data()
    table = datasets.Dataset.from_dict(
        {
            "input_ids": samples.input_ids.tolist(),
            "attention_mask": torch.ones_like(samples.input_ids).tolist(),
            "labels": samples.labels.tolist(),
        }
    ).with_format("torch")
    runs = []
    for remove in (True, False):
        trainer = trainer_for(tmp_path, mechanism, f"cols{remove}", dataset=table, remove_unused_columns=remove)
        trainer.train()
        runs.append(weights(trainer))
    assert_same_weights(runs[0], runs[1], "remove_unused_columns")


@pytest.mark.parametrize("mechanism", [m for m in MECHANISMS if m != "stock"])
def test_torch_compile_trains_as_eager(tmp_path, mechanism):
    eager = trainer_for(tmp_path, mechanism, "eager", num_train_epochs=2)
    eager.train()
    compiled = trainer_for(tmp_path, mechanism, "compiled", num_train_epochs=2, torch_compile=True,
                           torch_compile_backend="eager")  # fmt: skip
    compiled.train()
    assert train_losses(compiled) == pytest.approx(train_losses(eager), rel=1e-4)


@pytest.mark.parametrize("mechanism", [m for m in MECHANISMS if m != "stock"])
def test_what_cannot_apply_is_refused_naming_it(tmp_path, mechanism):
    with pytest.raises(ValueError, match="train_sampling_strategy='group_by_length'"):
        run_args(tmp_path, mechanism, "sampling", train_sampling_strategy="group_by_length")

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(data())

    with pytest.raises(ValueError, match="IterableDataset|does not implement __len__"):
        trainer_for(tmp_path, mechanism, "stream", dataset=Stream(), **({} if mechanism == "cached" else {}))
    if mechanism != "cached":
        with pytest.raises(ValueError, match="max_steps"):
            run_args(tmp_path, mechanism, "steps", max_steps=10)


# ---- host synchronisations in the training step ----

# What makes the host wait for the device (on a GPU): reading a value, copying to the CPU, data-dependent shapes.
_SYNCS = {"__bool__", "item", "tolist", "cpu", "__int__", "__float__", "nonzero", "masked_select", "unique"}


class SyncCounter(TorchFunctionMode):
    """Counts the calls that would wait for the device, apart for those made while planning a pass (`selection/`,
    on the host's copy of the scores: waits for nothing once that copy is made)."""

    def __init__(self):
        super().__init__()
        self.step, self.planning = Counter(), Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        masked = name == "__getitem__" and any(isinstance(a, torch.Tensor) and a.dtype == torch.bool for a in args[1:])
        if name in _SYNCS or masked:
            planning = any("hf_margin/selection/" in frame.filename for frame in traceback.extract_stack())
            (self.planning if planning else self.step)[name] += 1
        return func(*args, **(kwargs or {}))


def count_syncs(trainer: Trainer) -> SyncCounter:
    with SyncCounter() as counter:
        trainer.train()
    return counter


@pytest.mark.parametrize("features", [MECHANISMS[m] for m in PRUNING + ["cached"]] + [dict(mmr_alpha=1e-2)])
def test_a_feature_adds_no_host_sync_to_the_step_and_a_few_per_pass(tmp_path, features):
    # logging far apart: a log waits for the device anyway, and per-log reads are allowed
    common = dict(num_train_epochs=PASSES, logging_steps=1000, save_strategy="no", max_steps=-1)
    stock = Trainer(model=tiny_bert(num_labels=3), args=margin_args(tmp_path, cls=TrainingArguments, **common),
                    train_dataset=data())  # fmt: skip
    ours = MarginTrainer(model=tiny_bert(num_labels=3), args=margin_args(tmp_path, **common, **features),
                         train_dataset=data())  # fmt: skip
    stock_syncs, our_syncs = count_syncs(stock), count_syncs(ours)
    assert not stock_syncs.planning
    in_step = sum(our_syncs.step.values()) - sum(stock_syncs.step.values())
    assert in_step <= 1, f"{features}: {dict(our_syncs.step)} in the steps against stock's {dict(stock_syncs.step)}"
    planning = sum(our_syncs.planning.values()) / PASSES
    assert planning <= 12, f"{features}: {planning} syncs a pass to plan it: {dict(our_syncs.planning)}"
