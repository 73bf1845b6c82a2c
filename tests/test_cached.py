"""Cached-margin selection (`selection="mms_cached"`): the pure pass planner and sampler, and real training runs."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F

from hf_margin import MarginTrainer, minimal_margin_scores
from hf_margin.margin import weighted_cross_entropy
from hf_margin.selection import CachedMarginSampler, MarginCache, plan_cached_pass
from hf_margin.strategies.tagged import INDEX_KEY, WEIGHT_KEY
from tests.conftest import ForwardRecorder, TinyImageDataset, TinyTextDataset, margin_args, tiny_bert, tiny_timm

# ---- the pure parts ----


def test_weighted_cross_entropy_is_the_mean_loss_with_unit_weights_and_a_weighted_sum_otherwise():
    logits = torch.randn(6, 4, requires_grad=True)
    labels = torch.tensor([0, 3, 1, -100, 2, 2])
    ones = torch.ones(6)
    torch.testing.assert_close(weighted_cross_entropy(logits, labels, ones), F.cross_entropy(logits, labels))
    weights = torch.tensor([1.0, 4.0, 1.0, 4.0, 0.5, 1.0])
    naive = sum(float(weights[i]) * -float(logits[i].detach().log_softmax(0)[labels[i]]) for i in (0, 1, 2, 4, 5)) / 5
    loss = weighted_cross_entropy(logits, labels, weights)
    assert loss.item() == pytest.approx(naive, rel=1e-5)
    loss.backward()
    assert logits.grad[3].abs().sum() == 0 and logits.grad[1].abs().sum() > 0
    smoothed = weighted_cross_entropy(logits, labels, ones, label_smoothing=0.1)
    torch.testing.assert_close(smoothed, F.cross_entropy(logits, labels, label_smoothing=0.1))
    with pytest.raises(ValueError, match="weights"):
        weighted_cross_entropy(logits, labels, torch.ones(5))


def test_a_pass_over_an_empty_cache_is_a_plain_random_pass():
    indices, weights, easy = plan_cached_pass(torch.full((50,), float("nan")), 0.3, 0.2, torch.Generator())
    assert sorted(indices.tolist()) == list(range(50)) and indices.tolist() != list(range(50))
    assert torch.equal(weights, torch.ones(50)) and not easy.any()


def test_a_pass_keeps_unknown_and_hard_samples_and_a_rescaled_share_of_the_easy_ones():
    n = 4000
    margins = torch.arange(n, dtype=torch.float32)
    margins[::10] = float("nan")  # 400 unknown; 3600 known, the hard half is margins <= 1999 among them
    indices, weights, easy = plan_cached_pass(margins, 0.5, 0.25, torch.Generator().manual_seed(0))
    assert len(set(indices.tolist())) == len(indices)
    assert torch.equal(easy, weights == 4.0)
    kept = dict(zip(indices.tolist(), weights.tolist()))
    known = margins[~margins.isnan()]
    threshold = known.sort().values[math.ceil(0.5 * len(known)) - 1].item()
    for i in range(n):
        if math.isnan(margins[i]) or margins[i] <= threshold:
            assert kept.get(i) == 1.0, f"sample {i} must be kept with weight 1"
    easy = [i for i in range(n) if not math.isnan(margins[i]) and margins[i] > threshold]
    easy_kept = [i for i in easy if i in kept]
    assert all(kept[i] == 4.0 for i in easy_kept)
    assert len(easy_kept) / len(easy) == pytest.approx(0.25, abs=0.03)


def test_a_pass_is_unbiased_each_sample_weighs_one_on_average():
    margins = torch.rand(100)
    totals = torch.zeros(100)
    generator = torch.Generator().manual_seed(1)
    for _ in range(2000):
        indices, weights, _ = plan_cached_pass(margins, 0.3, 0.2, generator)
        totals.index_add_(0, indices, weights)
    torch.testing.assert_close(totals / 2000, torch.ones(100), atol=0.15, rtol=0)


def test_a_pass_without_rescaling_keeps_the_same_samples_with_unit_weights():
    margins = torch.rand(500)
    unbiased = plan_cached_pass(margins, 0.3, 0.2, torch.Generator().manual_seed(4))
    biased = plan_cached_pass(margins, 0.3, 0.2, torch.Generator().manual_seed(4), rescale=False)
    assert torch.equal(unbiased.indices, biased.indices) and torch.equal(unbiased.easy, biased.easy)
    assert torch.equal(biased.weights, torch.ones(len(biased.weights))) and (unbiased.weights == 5.0).any()


@pytest.mark.parametrize(("hard_fraction", "easy_rate"), [(1.0, 0.1), (0.0, 1.0)])
def test_a_pass_with_everything_kept_is_a_plain_pass(hard_fraction, easy_rate):
    indices, weights, _ = plan_cached_pass(torch.rand(30), hard_fraction, easy_rate, torch.Generator())
    assert sorted(indices.tolist()) == list(range(30)) and torch.equal(weights, torch.ones(30))


@pytest.mark.parametrize(
    ("hard_fraction", "easy_rate", "match"), [(1.5, 0.5, "hard_fraction"), (0.5, 0.0, "easy_rate")]
)
def test_bad_pass_arguments(hard_fraction, easy_rate, match):
    with pytest.raises(ValueError, match=match):
        plan_cached_pass(torch.rand(4), hard_fraction, easy_rate, torch.Generator())
    with pytest.raises(ValueError, match=match):
        CachedMarginSampler(MarginCache(4), hard_fraction, easy_rate)


def test_the_sampler_keeps_the_epoch_length_and_spends_it_on_hard_samples():
    cache = MarginCache(40)
    sampler = CachedMarginSampler(cache, hard_fraction=0.25, easy_rate=0.1, seed=3)
    first = list(sampler)
    assert len(first) == len(sampler) == 40
    assert sorted(i for i, _ in first) == list(range(40)) and all(w == 1.0 for _, w in first)
    assert list(sampler) == first  # the same seed, epoch and cache: the same stream
    cache.update(torch.arange(40), torch.arange(40, dtype=torch.float32))
    sampler.set_epoch(1)
    second = list(sampler)
    assert len(second) == 40
    hard_draws = sum(1 for i, _ in second if i < 10)
    assert hard_draws > 20  # the 10 hardest samples take most of the epoch (about 10 of every 13 draws)
    assert all(w == 10.0 for i, w in second if i >= 10)
    assert sampler.pop_easy_share() == pytest.approx(sum(1 for i, _ in second if i >= 10) / 120)  # 3 x 40 draws
    assert sampler.pop_easy_share() is None


def test_the_cache_stores_round_trips_and_refuses_another_dataset_size():
    cache = MarginCache(5)
    assert cache.known_share() == 0.0
    cache.update(torch.tensor([4, 1]), torch.tensor([0.5, 2.0], dtype=torch.float16))
    assert cache.known_share() == pytest.approx(0.4)
    assert cache.margins[4].item() == 0.5 and cache.margins[[0, 2, 3]].isnan().all()
    restored = MarginCache(5)
    restored.load_state_dict(cache.state_dict())
    assert torch.equal(restored.margins.nan_to_num(-1), cache.margins.nan_to_num(-1))
    with pytest.raises(ValueError, match="same train_dataset"):
        MarginCache(6).load_state_dict(cache.state_dict())


# ---- in MarginTrainer ----


def cached_args(tmp_path, **overrides):
    return margin_args(tmp_path, selection="mms_cached", **overrides)


def _row_index(data: TinyTextDataset) -> dict[tuple[int, ...], int]:
    rows = {tuple(r): i for i, r in enumerate(data.input_ids.tolist())}
    assert len(rows) == len(data), "test rows must be unique"
    return rows


def test_cached_selection_scores_with_the_training_forward_only(tmp_path):
    data = TinyTextDataset(n=64)
    model = tiny_bert(dropout=0.0)
    recorder = ForwardRecorder(model, "input_ids", model.classifier)
    args = cached_args(tmp_path, num_train_epochs=3, max_steps=-1, selection_hard_fraction=0.25, log_timing=True)
    trainer = MarginTrainer(model=model, args=args, train_dataset=data)
    trainer.train()
    assert trainer.state.global_step == 24  # 3 epochs of 64 / 8: the epoch keeps its length
    assert not any(c["scoring"] for c in recorder.calls), "no scoring forward"
    rows = _row_index(data)
    last_mms = {}
    per_epoch = [[], [], []]
    for step, call in enumerate(recorder.calls):
        indices = [rows[tuple(r)] for r in call["inputs"].tolist()]
        per_epoch[step // 8].extend(indices)
        for index, mms in zip(indices, minimal_margin_scores(call["logits"], call["weight"]).tolist()):
            last_mms[index] = mms
    assert sorted(per_epoch[0]) == list(range(64))  # the first epoch trains on (and so scores) every sample once
    assert len(set(per_epoch[1])) < 64  # later epochs repeat hard samples and skip some easy ones
    cached = trainer.strategy.keeper.cache.margins
    assert trainer.strategy.keeper.cache.known_share() == 1.0
    torch.testing.assert_close(cached, torch.tensor([last_mms[i] for i in range(64)]), rtol=1e-5, atol=1e-6)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    # counted as drawn: the loader draws one batch ahead, so the log of step 8 may count the second epoch's first
    assert all(h.get("mms_cached_easy_share", 0) == 0 for h in logs[:7])
    assert any(h.get("mms_cached_easy_share", 0) > 0 for h in logs[8:])
    assert logs[-1]["mms_cached_known_share"] == 1.0 and "break_even_step_ratio" in logs[-1]


def test_cached_loss_is_the_weighted_cross_entropy_and_updates_the_cache(tmp_path):
    data = TinyTextDataset(n=32)
    trainer = MarginTrainer(model=tiny_bert(dropout=0.0), args=cached_args(tmp_path), train_dataset=data)
    trainer.get_train_dataloader()  # builds the cache
    batch = {
        "input_ids": data.input_ids[:4],
        "attention_mask": torch.ones_like(data.input_ids[:4]),
        "labels": data.labels[:4],
        INDEX_KEY: torch.tensor([7, 3, 9, 1]),
        WEIGHT_KEY: torch.tensor([1.0, 4.0, 1.0, 4.0]),
    }
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, dict(batch))
    logits = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(loss, weighted_cross_entropy(logits, batch["labels"], batch[WEIGHT_KEY]))
    mms = minimal_margin_scores(logits, trainer.model.classifier.weight)
    torch.testing.assert_close(trainer.strategy.keeper.cache.margins[[7, 3, 9, 1]], mms)
    assert trainer.strategy.keeper.cache.margins.isnan().sum() == 28


def test_cached_selection_with_everything_kept_trains_on_each_sample_once_per_epoch(tmp_path):
    data = TinyTextDataset(n=32)
    model = tiny_bert(dropout=0.0)
    recorder = ForwardRecorder(model, "input_ids", model.classifier)
    args = cached_args(tmp_path, num_train_epochs=2, max_steps=-1, selection_hard_fraction=1.0)
    MarginTrainer(model=model, args=args, train_dataset=data).train()
    rows = _row_index(data)
    seen = [rows[tuple(r)] for c in recorder.calls for r in c["inputs"].tolist()]
    assert sorted(seen[:32]) == sorted(seen[32:]) == list(range(32))
    assert seen[:32] != seen[32:]  # a new order each epoch


def test_cached_selection_drives_a_timm_model_with_gradient_accumulation(tmp_path):
    data = TinyImageDataset(n=48)
    args = cached_args(tmp_path, num_train_epochs=2, max_steps=-1, gradient_accumulation_steps=2)
    trainer = MarginTrainer(model=tiny_timm(), args=args, train_dataset=data)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    assert trainer.state.global_step == 6 and trainer.strategy.keeper.cache.known_share() == 1.0
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))


def test_the_margin_cache_is_saved_with_checkpoints_and_restored_on_resume(tmp_path):
    data = TinyTextDataset(n=64)
    args = cached_args(tmp_path, max_steps=12, save_strategy="steps", save_steps=10)
    first = MarginTrainer(model=tiny_bert(), args=args, train_dataset=data)
    first.train()
    checkpoint = os.path.join(args.output_dir, "checkpoint-10")
    saved = torch.load(os.path.join(checkpoint, "margin_state_0.pt"), weights_only=True)["strategy"]
    assert (~saved["margin_cache"]["margins"].isnan()).sum() == 64  # 8 steps of 8 covered the first epoch
    args = cached_args(tmp_path, max_steps=12, output_dir=str(tmp_path / "resumed"))
    resumed = MarginTrainer(model=tiny_bert(), args=args, train_dataset=data)
    resumed.train(resume_from_checkpoint=checkpoint)
    assert resumed.state.global_step == 12
    # the saved cache and epoch snapshot make the rest of the run the uninterrupted one's
    assert torch.equal(resumed.strategy.keeper.cache.margins, first.strategy.keeper.cache.margins)


def test_cached_selection_bad_input(tmp_path):
    with pytest.raises(ValueError, match="selection_hard_fraction"):
        cached_args(tmp_path, selection_hard_fraction=-0.1)
    with pytest.raises(ValueError, match="selection_easy_rate"):
        cached_args(tmp_path, selection_easy_rate=0.0)
    with pytest.raises(ValueError, match="train_sampling_strategy"):
        cached_args(tmp_path, train_sampling_strategy="group_by_length")
    with pytest.raises(ValueError, match="compute_loss_func"):
        MarginTrainer(
            model=tiny_bert(),
            args=cached_args(tmp_path),
            train_dataset=TinyTextDataset(),
            compute_loss_func=lambda outputs, labels, num_items_in_batch=None: outputs.logits.sum(),
        )
    with pytest.raises(ValueError, match="selection.*labels"):
        MarginTrainer(model=tiny_bert(), args=cached_args(tmp_path), train_dataset=TinyTextDataset(labels=False))

    class Pairs(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return torch.zeros(3), 0

    with pytest.raises(ValueError, match="dicts"):
        MarginTrainer(model=tiny_bert(), args=cached_args(tmp_path), train_dataset=Pairs())
