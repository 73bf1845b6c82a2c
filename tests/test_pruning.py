"""Dynamic epoch pruning: the pure plan, the trainer's shortened schedule, resume, and bad input."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from transformers import TrainerCallback

from hf_margin import MarginTrainer, MarginTrainingArguments
from hf_margin.margin import per_sample_losses, signed_margin_scores
from hf_margin.selection import MarginCache, PrunedEpochSampler, plan_pruned_pass, pruning_schedule
from tests.conftest import ForwardRecorder, TinyImageDataset, TinyTextDataset, margin_args, tiny_bert, tiny_timm

# ---- the pure parts ----


def test_signed_margin_is_the_distance_to_the_true_class_boundary_and_negative_when_wrong():
    logits = torch.tensor([[3.0, 1.0, 0.0], [3.0, 1.0, 0.0], [0.0, 0.0, 5.0]])
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    labels = torch.tensor([0, 1, -100])
    margins = signed_margin_scores(logits, labels, weight)
    torch.testing.assert_close(margins[0], torch.tensor(2.0 / math.sqrt(2.0)))  # true 0, runner-up 1
    torch.testing.assert_close(margins[1], torch.tensor(-2.0 / math.sqrt(2.0)))  # true 1 lost to 0: negative
    assert margins[2].isnan()  # ignored label: unknown


def test_on_two_classes_signed_margin_and_loss_keep_the_same_hard_samples():
    # one boundary, one row distance: the signed margin is a decreasing function of the cross-entropy, so on a binary
    # task the two criteria differ only in which easy samples a pass draws
    generator = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(60, 2, generator=generator), torch.randint(0, 2, (60,), generator=generator)
    margins = signed_margin_scores(logits, labels, torch.randn(2, 8, generator=generator))
    hard = {
        name: set(plan.indices[~plan.easy].tolist())
        for name, plan in (
            ("margin", plan_pruned_pass(margins, 30, 15, "smallest", torch.Generator().manual_seed(1))),
            ("loss", plan_pruned_pass(per_sample_losses(logits, labels), 30, 15, "largest", torch.Generator())),
        )
    }
    assert hard["margin"] == hard["loss"] and len(hard["margin"]) == 15
    assert set(margins.argsort()[:15].tolist()) == hard["margin"]


def test_the_schedule_prunes_the_middle_passes_and_fits_whole_steps():
    schedule = pruning_schedule(100, 8, hard_fraction=0.3, ratio=0.5, anneal=0.125, unit=8)
    assert schedule.keep_hard == 30 and schedule.lengths == [100] + [65] * 6 + [100]
    assert schedule.pruned == [False] + [True] * 6 + [False]
    assert schedule.per_epoch % 8 == 0 and 0 <= schedule.per_epoch * 8 - sum(schedule.lengths) < 8 * 8
    assert pruning_schedule(100, 3, 0.3, 0.5, 0.125).pruned == [False, True, False]  # at least one annealed pass
    assert pruning_schedule(100, 30, 0.3, 0.5, 0.125).pruned == [False] + [True] * 25 + [False] * 4
    assert pruning_schedule(100, 3, 0.3, 0.5, 0.0).pruned == [False, True, True]
    assert pruning_schedule(100, 4, 0.3, 0.5, 1.0).lengths == [100] * 4  # all annealed: no pruning


def test_a_pruned_pass_keeps_unknown_and_hardest_then_weighted_easy_samples():
    scores = torch.tensor([0.5, float("nan"), 0.1, 2.0, 0.3, 1.5, 0.9, 3.0, 0.2, 1.0])
    plan = plan_pruned_pass(
        scores, keep=6, keep_hard=3, hardest="smallest", generator=torch.Generator().manual_seed(0)
    )
    kept = set(plan.indices.tolist())
    assert len(plan.indices) == 6 == len(kept)
    assert {1, 2, 8} <= kept  # the unknown one and the two smallest known margins fill the 3 hard places
    easy = plan.easy.tolist()
    assert sum(easy) == 3 and all(plan.weights[i] == 1.0 for i, e in enumerate(easy) if not e)
    torch.testing.assert_close(plan.weights[plan.easy], torch.full((3,), 7 / 3))  # 7 easy candidates, 3 drawn
    loss_plan = plan_pruned_pass(scores, 4, 2, "largest", torch.Generator().manual_seed(0))
    assert {1, 7} <= set(loss_plan.indices.tolist())  # largest known loss (3.0) plus the unknown sample


def test_a_pruned_pass_is_unbiased_and_an_unscored_one_is_a_uniform_subset():
    scores = torch.rand(20)
    generator = torch.Generator().manual_seed(1)
    total = torch.zeros(20)
    for _ in range(3000):
        plan = plan_pruned_pass(scores, 10, 4, "smallest", generator)
        total.index_add_(0, plan.indices, plan.weights)
    torch.testing.assert_close(total / 3000, torch.ones(20), atol=0.08, rtol=0)  # each sample weighs 1 on average
    random_plan = plan_pruned_pass(torch.full((20,), float("nan")), 7, 4, "smallest", generator)
    assert len(set(random_plan.indices.tolist())) == 7 and bool((random_plan.weights == 1).all())


def test_the_sampler_streams_the_passes_over_equal_trainer_epochs():
    cache = MarginCache(50)
    schedule = pruning_schedule(50, 4, 0.2, 0.5, 0.25, unit=4)
    sampler = PrunedEpochSampler(cache, schedule, "smallest", seed=0)
    stream = []
    for epoch in range(4):
        sampler.set_epoch(epoch)
        drawn = list(sampler)
        assert len(drawn) == len(sampler) == schedule.per_epoch
        if epoch == 0:
            cache.update(torch.arange(50), torch.linspace(0, 1, 50), step=0)  # pass 0 scored everything
        stream += drawn
    first = [i for i, _ in stream[:50]]
    assert sorted(first) == list(range(50))  # pass 0: every sample once, weight 1
    pruned = stream[50 : 50 + schedule.lengths[1]]
    assert len({i for i, _ in pruned}) == schedule.lengths[1] == 10 + round(0.5 * 40)
    assert set(range(10)) <= {i for i, _ in pruned}  # the 10 smallest margins are the hard ones
    last = stream[sum(schedule.lengths[:3]) : sum(schedule.lengths)]
    assert sorted(i for i, _ in last) == list(range(50)) and all(w == 1.0 for _, w in last)  # annealed


# ---- the trainer ----


def pruning_args(tmp_path, **overrides) -> MarginTrainingArguments:
    defaults = dict(pruning="margin", num_train_epochs=6, max_steps=-1, logging_steps=2)
    return margin_args(tmp_path, **{**defaults, **overrides})


@pytest.mark.parametrize("criterion", ["margin", "mms", "loss", "random"])
def test_pruning_shortens_the_run_and_fits_the_lr_schedule_to_it(tmp_path, criterion):
    data = TinyTextDataset(n=64, num_labels=3)
    model = tiny_bert(num_labels=3, dropout=0.0)
    recorder = ForwardRecorder(model, "input_ids", model.classifier)
    trainer = MarginTrainer(model=model, args=pruning_args(tmp_path, pruning=criterion), train_dataset=data)
    trainer.train()
    schedule = trainer.strategy.schedule
    assert schedule.lengths == [64] + [41] * 4 + [64]  # 19 hard + 22 of the 45 easy
    assert trainer.state.global_step == trainer.state.max_steps == 6 * schedule.per_epoch // 8 < 6 * 64 // 8
    lrs = [h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h]
    assert lrs[-1] < 0.1 * lrs[0]  # the linear decay reaches its end with the run, not halfway
    rows = {tuple(r): i for i, r in enumerate(data.input_ids.tolist())}
    seen = [rows[tuple(r)] for c in recorder.calls for r in c["inputs"].tolist()]
    assert sorted(seen[:64]) == list(range(64))  # pass 0 trains on every sample once
    assert len(set(seen[64 : 64 + 41])) == 41 < 64  # a pruned pass: 41 distinct samples
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert max(h["pruned_share"] for h in logs) == pytest.approx(1 - 41 / 64, abs=1e-4)
    assert logs[-1]["pruning_steps_saved"] > 0
    if criterion != "random":
        assert trainer.strategy.cache.known_share() == 1.0


def test_the_margin_criterion_keeps_the_smallest_signed_margins(tmp_path):
    data = TinyTextDataset(n=64, num_labels=3)
    model = tiny_bert(num_labels=3, dropout=0.0)
    recorder = ForwardRecorder(model, "input_ids", model.classifier)
    args = pruning_args(tmp_path, num_train_epochs=3, pruning_anneal=0.0, learning_rate=1e-9)  # a frozen model
    trainer = MarginTrainer(model=model, args=args, train_dataset=data)
    trainer.train()
    first = recorder.calls[:8]  # pass 0, 8 batches of 8
    rows = {tuple(r): i for i, r in enumerate(data.input_ids.tolist())}
    margins = torch.empty(64)
    for call in first:
        idx = torch.tensor([rows[tuple(r)] for r in call["inputs"].tolist()])
        margins[idx] = signed_margin_scores(call["logits"], data.labels[idx], call["weight"])
    hardest = set(torch.argsort(margins)[: trainer.strategy.schedule.keep_hard].tolist())
    second = {rows[tuple(r)] for c in recorder.calls[8 : 8 + 41 // 8] for r in c["inputs"].tolist()}
    pass1 = {rows[tuple(r)] for c in recorder.calls[8:] for r in c["inputs"].tolist()}
    assert hardest <= pass1 and second  # every hard sample of pass 0's scores is in pass 1


def test_pruning_with_gradient_accumulation_and_a_timm_model(tmp_path):
    args = pruning_args(tmp_path, gradient_accumulation_steps=2, num_train_epochs=4, pruning="loss")
    trainer = MarginTrainer(model=tiny_timm(), args=args, train_dataset=TinyImageDataset(n=64))
    trainer.train()
    assert trainer.strategy.schedule.per_epoch % 16 == 0
    assert trainer.state.global_step == trainer.state.max_steps == 4 * trainer.strategy.schedule.per_epoch // 16


def test_pruning_resumes_with_its_scores(tmp_path):
    data = TinyTextDataset(n=64, num_labels=3)
    args = pruning_args(tmp_path, save_strategy="steps", save_steps=12)
    first = MarginTrainer(model=tiny_bert(num_labels=3), args=args, train_dataset=data)
    first.train()
    checkpoint = f"{args.output_dir}/checkpoint-12"
    saved = torch.load(f"{checkpoint}/margin_state_0.pt", weights_only=True)["strategy"]["margin_cache"]
    assert not saved["margins"].isnan().any()  # pass 0 (steps 0-7) scored every sample

    class Snapshot(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.margins = resumed.strategy.cache.margins.clone()

    snapshot = Snapshot()
    resumed_args = pruning_args(tmp_path, output_dir=str(tmp_path / "resumed"))
    resumed = MarginTrainer(model=tiny_bert(num_labels=3), args=resumed_args, train_dataset=data, callbacks=[snapshot])
    resumed.train(resume_from_checkpoint=checkpoint)
    torch.testing.assert_close(snapshot.margins, saved["margins"])  # training resumed from the saved scores
    assert resumed.state.global_step == first.state.global_step == first.state.max_steps


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (dict(pruning="hardest"), "pruning="),
        (dict(pruning="margin", selection="mms"), "two selection mechanisms"),
        (dict(pruning="margin", max_steps=10), "max_steps"),
        (dict(pruning="margin", num_train_epochs=2.5), "whole number"),
        (dict(pruning="margin", pruning_ratio=1.0), "pruning_ratio"),
        (dict(pruning="margin", pruning_hard_fraction=-0.1), "pruning_hard_fraction"),
        (dict(pruning="margin", pruning_anneal=1.5), "pruning_anneal"),
        (dict(pruning_ratio=0.3), "pruning_ratio=0.3 applies to pruning only"),
        (dict(pruning="margin", selection_oversample=4), "selection_oversample=4 applies to pool selection"),
        (dict(selection="mms_cached", selection_trim_padding=False), "selection_trim_padding"),
    ],
)
def test_bad_pruning_arguments_name_the_field(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        margin_args(tmp_path, **{"max_steps": -1, "num_train_epochs": 2, **overrides})


class Stream(torch.utils.data.IterableDataset):
    def __iter__(self):
        return iter(TinyTextDataset())


def test_pruning_bad_input_fails_before_training(tmp_path):
    args = pruning_args(tmp_path)
    with pytest.raises(ValueError, match="train_dataset does not implement __len__"):  # the Trainer refuses first
        MarginTrainer(model=tiny_bert(), args=args, train_dataset=Stream())
    with pytest.raises(ValueError, match="pruning='margin' computes the"):
        MarginTrainer(
            model=tiny_bert(),
            args=args,
            train_dataset=TinyTextDataset(),
            compute_loss_func=nn.functional.cross_entropy,
        )
    with pytest.raises(ValueError, match="pruning: margins need a classifier"):
        MarginTrainer(model=tiny_bert(num_labels=1), args=args, train_dataset=TinyTextDataset())
