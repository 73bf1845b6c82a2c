"""Dynamic epoch pruning: the pure rules and plans, the sampler, the trainer's passes and schedule, and bad input.

How pruning combines with the rest of the Trainer (resume, workers, model_init, ...) is in test_feature_matrix.py.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from hf_margin import MarginSettings, MarginTrainer
from hf_margin.margin import per_sample_losses, signed_margin_scores, true_class_logit_gaps
from hf_margin.selection import (
    PrunedEpochSampler,
    ScoreCache,
    draw_pass,
    full_pass,
    keep_probabilities_infobatch,
    keep_probabilities_learned,
    plan_pruned_pass,
    pruning_schedule,
    whole_steps,
)
from hf_margin.strategies import PrunedEpochs
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


def test_the_fixed_schedule_prunes_the_middle_passes_in_whole_steps():
    schedule = pruning_schedule(100, 8, hard_fraction=0.3, ratio=0.5, anneal=0.125, unit=8)
    assert schedule.keep_hard == 30 and schedule.lengths == [100] + [72] * 6 + [100]  # 30 + 35 = 65, up to 72
    assert schedule.pruned == [False] + [True] * 6 + [False]
    assert pruning_schedule(100, 3, 0.3, 0.5, 0.125).pruned == [False, True, False]  # at least one annealed pass
    assert pruning_schedule(100, 30, 0.3, 0.5, 0.125).pruned == [False] + [True] * 25 + [False] * 4
    assert pruning_schedule(100, 3, 0.3, 0.5, 0.0).pruned == [False, True, True]
    assert pruning_schedule(100, 4, 0.3, 0.5, 1.0).lengths == [100] * 4  # all annealed: no pruning
    assert whole_steps(97, 100, 8) == 100 and whole_steps(0, 100, 8) == 8  # a full pass; at least one step


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


def test_draw_pass_weighs_each_stratum_as_in_a_full_pass_and_ends_on_a_whole_step():
    probability = torch.cat([torch.ones(10), torch.full((40,), 0.5), torch.full((30,), 0.25), torch.zeros(3)])
    plan = draw_pass(probability, torch.Generator().manual_seed(0), unit=8)
    kept = plan.indices.tolist()
    assert len(kept) == len(set(kept)) and len(kept) % 8 == 0
    assert set(range(10)) <= set(kept) and not set(range(80, 83)) & set(kept)  # q = 1 always, q = 0 never
    weight = dict(zip(kept, plan.weights.tolist()))
    assert all(weight[i] == 1.0 for i in range(10))
    for members in (range(10, 50), range(50, 80)):
        drawn = [i for i in members if i in weight]
        assert sum(weight[i] for i in drawn) == pytest.approx(len(members))  # the stratum weighs its size
    assert 20 + 8 + 10 - 1 < len(kept) <= 20 + 8 + 10 + 7  # round(q n) per stratum, then up to a whole step
    unweighted = draw_pass(probability, torch.Generator().manual_seed(0), rescale=False, unit=8)
    assert torch.equal(unweighted.indices, plan.indices) and bool((unweighted.weights == 1).all())


def test_the_learned_rule_drops_only_samples_learned_on_their_last_visits():
    streak = torch.tensor([0, 1, 2, 3, 4, 9, 2])
    known = torch.tensor([True] * 6 + [False])
    q = keep_probabilities_learned(streak, known, visits=2, ratio=0.5, max_weight=4.0)
    # not yet learned twice in a row, or never scored: always kept; then halved per learned visit, down to 1 / 4
    torch.testing.assert_close(q, torch.tensor([1.0, 1.0, 0.5, 0.25, 0.25, 0.25, 1.0]))


def test_the_infobatch_rule_drops_samples_below_the_mean_loss_with_probability_r():
    losses = torch.tensor([0.1, 0.2, 3.0, float("nan"), 0.3])  # mean of the known: 0.9
    torch.testing.assert_close(
        keep_probabilities_infobatch(losses, "largest", 0.5), torch.tensor([0.5, 0.5, 1.0, 1.0, 0.5])
    )
    margins = torch.tensor([2.0, -1.0, 0.5])  # for a margin, the easy side of the mean (0.5) is above it
    torch.testing.assert_close(keep_probabilities_infobatch(margins, "smallest", 0.3), torch.tensor([0.7, 1.0, 1.0]))


def test_the_cache_counts_learned_visits_in_a_row():
    cache = ScoreCache(4)
    cache.update(torch.tensor([0, 1, 2]), torch.tensor([1.0, -1.0, 2.0]), learned=torch.tensor([True, False, True]))
    cache.update(torch.tensor([0, 2]), torch.tensor([1.5, -0.5]), learned=torch.tensor([True, False]))
    assert cache.streak.tolist() == [2, 0, 0, 0]
    restored = ScoreCache(4)
    restored.load_state_dict(cache.state_dict())
    assert restored.streak.tolist() == [2, 0, 0, 0] and torch.equal(restored.margins[:3], cache.margins[:3])


def test_the_sampler_trains_one_planned_pass_per_epoch_planned_when_it_starts():
    cache = ScoreCache(50)
    planned_from = []

    def plan(index, scores, streak, generator):
        planned_from.append(int((~scores.isnan()).sum()))
        if index == 0:
            return full_pass(50, generator)
        return plan_pruned_pass(scores, 20, 10, "smallest", generator)

    sampler = PrunedEpochSampler(cache, plan, seed=0)
    first = list(sampler)
    assert len(sampler) == 50 and sorted(i for i, _ in first) == list(range(50)) and all(w == 1 for _, w in first)
    cache.update(torch.arange(50), torch.linspace(0, 1, 50))  # pass 0 scored everything
    sampler.set_epoch(1)
    assert len(sampler) == 20 and planned_from == [0, 50]  # planned at the epoch's start, from the scores then
    second = list(sampler)
    assert set(range(10)) <= {i for i, _ in second}  # the 10 smallest margins are the hard ones
    assert list(sampler) == second and sampler.lengths == {0: 50, 1: 20}  # one plan per pass
    restored = PrunedEpochSampler(ScoreCache(50), plan, seed=0)
    restored.load_state_dict(sampler.state_dict())
    restored.set_epoch(1)
    assert list(restored) == second and planned_from == [0, 50]  # a checkpoint keeps the pass's plan


def test_the_strategy_is_built_and_plans_without_a_trainer():
    strategy = PrunedEpochs(MarginSettings(pruning="margin", pruning_rule="learned"))
    host = SimpleNamespace(
        args=SimpleNamespace(device=torch.device("cpu"), num_train_epochs=4, world_size=1, seed=0, data_seed=None,
                             gradient_accumulation_steps=1),
        train_dataset=list(range(40)),
        train_batch_size=4,
        data_collator=None,
        train_loader=lambda dataset, batch_size, sampler=None, collate=None, keep_columns=(): sampler,
    )  # fmt: skip
    sampler = strategy.train_dataloader(host)
    assert len(sampler) == 40  # pass 0: everything
    cache = strategy.keeper.cache
    cache.update(torch.arange(40), torch.ones(40), learned=torch.ones(40, dtype=torch.bool))
    cache.update(torch.arange(20), torch.ones(20), learned=torch.ones(20, dtype=torch.bool))
    sampler.set_epoch(1)
    kept = {i for i, _ in sampler}
    assert set(range(20, 40)) <= kept and len(kept) == 20 + 12  # learned twice: half of them kept, in whole steps
    assert strategy.planned_max_steps(host, 40) == 40  # an upper bound until the passes are planned


# ---- the trainer ----


def pruning_args(tmp_path, **overrides):
    defaults = dict(pruning="margin", num_train_epochs=6, max_steps=-1, logging_steps=2)
    return margin_args(tmp_path, **{**defaults, **overrides})


def _rows(data: TinyTextDataset) -> dict[tuple[int, ...], int]:
    return {tuple(r): i for i, r in enumerate(data.input_ids.tolist())}


@pytest.mark.parametrize("criterion", ["margin", "mms", "loss", "random"])
def test_fixed_quotas_shorten_each_pass_and_fit_the_lr_schedule_to_the_run(tmp_path, criterion):
    data = TinyTextDataset(n=64, num_labels=3)
    model = tiny_bert(num_labels=3, dropout=0.0)
    recorder = ForwardRecorder(model, "input_ids", model.classifier)
    trainer = MarginTrainer(model=model, args=pruning_args(tmp_path, pruning=criterion), train_dataset=data)
    trainer.train()
    lengths = trainer.strategy.sampler.lengths
    assert lengths == dict(enumerate([64] + [48] * 4 + [64]))  # 19 hard + 22 of the 45 easy, up to 6 steps of 8
    assert trainer.state.global_step == trainer.state.max_steps == 8 + 4 * 6 + 8 < 6 * 8
    lrs = [h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h]
    assert lrs[-1] < 0.1 * lrs[0]  # the linear decay reaches its end with the run, not halfway
    rows = _rows(data)
    seen = [rows[tuple(r)] for c in recorder.calls for r in c["inputs"].tolist()]
    assert sorted(seen[:64]) == list(range(64))  # pass 0 trains on every sample once
    assert len(set(seen[64 : 64 + 48])) == 48  # pass 1: 48 distinct samples
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert max(h["pruned_share"] for h in logs) == 0.25 and logs[-1]["pruning_steps_saved"] > 0
    assert [h["epoch"] for h in logs if h["epoch"] == int(h["epoch"])] == [1, 2, 3, 4, 5, 6]  # a pass is an epoch
    if criterion != "random":
        assert trainer.strategy.keeper.cache.known_share() == 1.0


def test_the_margin_criterion_keeps_the_smallest_signed_margins(tmp_path):
    data = TinyTextDataset(n=64, num_labels=3)
    model = tiny_bert(num_labels=3, dropout=0.0)
    recorder = ForwardRecorder(model, "input_ids", model.classifier)
    args = pruning_args(tmp_path, num_train_epochs=3, pruning_anneal=0.0, learning_rate=1e-9)  # a frozen model
    trainer = MarginTrainer(model=model, args=args, train_dataset=data)
    trainer.train()
    rows = _rows(data)
    margins = torch.empty(64)
    for call in recorder.calls[:8]:  # pass 0, 8 batches of 8
        idx = torch.tensor([rows[tuple(r)] for r in call["inputs"].tolist()])
        margins[idx] = signed_margin_scores(call["logits"], data.labels[idx], call["weight"])
    hardest = set(torch.argsort(margins)[: round(0.3 * 64)].tolist())
    pass1 = {rows[tuple(r)] for c in recorder.calls[8:14] for r in c["inputs"].tolist()}
    assert hardest <= pass1 and len(pass1) == 48  # every hard sample of pass 0's scores is in pass 1


def test_pruning_with_gradient_accumulation_and_a_timm_model(tmp_path):
    args = pruning_args(tmp_path, gradient_accumulation_steps=2, num_train_epochs=4, pruning="loss")
    trainer = MarginTrainer(model=tiny_timm(), args=args, train_dataset=TinyImageDataset(n=64))
    trainer.train()
    lengths = trainer.strategy.sampler.lengths
    assert all(n % 16 == 0 for n in lengths.values()) and lengths[1] < 64  # whole accumulated steps
    assert trainer.state.global_step == trainer.state.max_steps == sum(n // 16 for n in lengths.values())


def _learning_run(tmp_path, rule: str, criterion: str = "margin", epochs: int = 8, **overrides):
    data = TinyTextDataset(n=64, num_labels=3)
    model = tiny_bert(num_labels=3, dropout=0.0)
    recorder = ForwardRecorder(model, "input_ids", model.classifier)
    extra = {"pruning_learned_visits": 1, "pruning_threshold": 0.0} if rule == "learned" else {}  # learned: correct
    args = pruning_args(tmp_path, pruning=criterion, pruning_rule=rule, num_train_epochs=epochs,
                        learning_rate=5e-3, **{**extra, **overrides})  # fmt: skip
    trainer = MarginTrainer(model=model, args=args, train_dataset=data)
    trainer.train()
    return trainer, recorder, data


def test_the_learned_rule_drops_only_learned_samples_and_more_as_they_stay_learned(tmp_path):
    trainer, recorder, data = _learning_run(tmp_path, "learned")
    lengths = [trainer.strategy.sampler.lengths[p] for p in range(8)]
    assert lengths[0] == lengths[-1] == 64 and lengths[1] < 64  # full first and annealed last pass
    assert lengths[5] < lengths[1]  # more of the data is learned, and for longer, as the run goes on
    rows = _rows(data)
    visits = [[rows[tuple(r)] for r in c["inputs"].tolist()] for c in recorder.calls]
    gaps = {}  # each sample's true-class logit gap at its last visit, replayed from the forwards
    step = 0
    for p, length in enumerate(lengths[:-1]):
        batches = visits[step : step + length // 8]
        trained = {i for batch in batches for i in batch}
        if p >= 1:
            unlearned = {i for i, gap in gaps.items() if gap <= 0.0}
            assert unlearned <= trained, f"pass {p} dropped a sample that was not learned"
        for batch, call in zip(batches, recorder.calls[step : step + length // 8]):
            for i, gap in zip(batch, true_class_logit_gaps(call["logits"], data.labels[torch.tensor(batch)]).tolist()):
                gaps[i] = gap
        step += length // 8
    assert any(gap > 0.0 for gap in gaps.values())  # some were learned


@pytest.mark.parametrize("rule", ["learned", "infobatch"])
def test_adaptive_rules_run_the_lr_schedule_on_the_progress_through_the_passes(tmp_path, rule):
    criterion = "loss" if rule == "infobatch" else "margin"
    trainer, _, _ = _learning_run(tmp_path, rule, criterion=criterion, logging_steps=1)
    lengths = trainer.strategy.sampler.lengths
    steps = [n // 8 for n in lengths.values()]
    assert trainer.state.global_step == trainer.state.max_steps == sum(steps) < 8 * 8  # known exactly by the end
    # `learning_rate` is logged after the step it was used for. The linear decay over 8 full passes of 8 steps,
    # read at each step's progress through the passes: half-way at the first step of pass 4, whatever the lengths
    lrs = {h["step"]: h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h}
    assert lrs[sum(steps[:4]) + 1] == pytest.approx(5e-3 * (1 - 32 / 64), rel=1e-6)
    assert lrs[sum(steps)] == pytest.approx(5e-3 * (1 - 63 / 64), rel=1e-6)  # the last step of the last full pass
    logs = [h for h in trainer.state.log_history if "pruning_pass" in h]
    assert {h["pruning_pass"] for h in logs} == set(range(8)) and any(h["pruned_share"] > 0 for h in logs)


def test_the_infobatch_rule_keeps_every_sample_above_the_mean_loss(tmp_path):
    trainer, recorder, data = _learning_run(tmp_path, "infobatch", criterion="loss", epochs=3, pruning_anneal=0.0)
    rows = _rows(data)
    losses = torch.empty(64)
    for call in recorder.calls[:8]:
        idx = torch.tensor([rows[tuple(r)] for r in call["inputs"].tolist()])
        losses[idx] = per_sample_losses(call["logits"], data.labels[idx])
    pass1 = {rows[tuple(r)] for c in recorder.calls[8 : 8 + trainer.strategy.sampler.lengths[1] // 8] for r in
             c["inputs"].tolist()}  # fmt: skip
    above = set((losses >= losses.mean()).nonzero().flatten().tolist())
    assert above <= pass1 and len(pass1) < 64


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
        (dict(pruning="margin", pruning_rule="adaptive"), "pruning_rule='adaptive' is not a rule"),
        (dict(pruning="mms", pruning_rule="learned"), "pruning='mms' cannot"),
        (dict(pruning="random", pruning_rule="infobatch"), "pruning='random' has no score"),
        (dict(pruning="margin", pruning_rule="learned", pruning_learned_visits=0), "pruning_learned_visits"),
        (dict(pruning="margin", pruning_rule="learned", pruning_max_weight=0.5), "pruning_max_weight"),
        (dict(pruning="margin", pruning_rule="learned", pruning_hard_fraction=0.2), "applies to pruning_rule='fixed'"),
        (dict(pruning="margin", pruning_threshold=0.5), "applies to pruning_rule='learned'"),
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


class Pairs(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return torch.zeros(3), 0


def test_pruning_bad_input_fails_before_training_naming_what_was_set(tmp_path):
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
    with pytest.raises(ValueError, match="pruning='margin': margins need a classifier"):
        MarginTrainer(model=tiny_bert(num_labels=1), args=args, train_dataset=TinyTextDataset())
    with pytest.raises(ValueError, match="pruning='margin' needs samples that are dicts"):
        MarginTrainer(model=tiny_bert(), args=args, train_dataset=Pairs())
    with pytest.raises(ValueError, match="pruning='margin': its weighted loss needs labels"):
        MarginTrainer(model=tiny_bert(), args=args, train_dataset=TinyTextDataset(labels=False))


def test_every_strategy_is_built_and_plans_its_loader_without_a_trainer():
    from hf_margin.strategies import CachedSelection, PoolSelection, build_strategy

    def host(**args):
        return SimpleNamespace(
            args=SimpleNamespace(device=torch.device("cpu"), world_size=1, seed=0, data_seed=None, process_index=0,
                                 gradient_accumulation_steps=1, num_train_epochs=3, **args),
            train_dataset=list(range(40)), train_batch_size=4, data_collator=None, label_names=[],
            train_loader=lambda dataset, batch_size, sampler=None, **kwargs: (batch_size, sampler),
        )  # fmt: skip

    pool = build_strategy(MarginSettings(selection="mms", selection_oversample=2.5))
    assert isinstance(pool, PoolSelection) and pool.pool_size(host()) == 10
    assert pool.train_dataloader(host()) == (10, None)  # the Trainer's own sampler, pools of k x b
    cached = build_strategy(MarginSettings(selection="mms_cached"))
    assert isinstance(cached, CachedSelection)
    batch_size, sampler = cached.train_dataloader(host())
    assert batch_size == 4 and len(sampler) == 40 and sampler.cache is cached.keeper.cache
