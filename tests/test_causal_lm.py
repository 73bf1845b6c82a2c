"""Epoch pruning of causal-LM training: per-sequence scores from the training forward's token logits, the token-level
loss normalised as the Trainer normalises, no extra vocabulary-sized tensor, and the clear refusals."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

from hf_margin import MarginTrainer
from hf_margin.strategies.tagged import INDEX_KEY, WEIGHT_KEY
from tests.conftest import margin_args

VOCAB = 64


class LMData(torch.utils.data.Dataset):
    """Token sequences of uneven length, right-padded; padding ignored in the labels (-100)."""

    def __init__(self, n: int = 48, length: int = 16):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(3, VOCAB, (n, length), generator=g)
        self.lengths = torch.randint(5, length + 1, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        kept = torch.arange(self.ids.shape[1]) < self.lengths[i]
        labels = self.ids[i].masked_fill(~kept, -100)
        return {"input_ids": self.ids[i].masked_fill(~kept, 0), "attention_mask": kept.long(), "labels": labels}


def tiny_llama(seed: int = 0, tie: bool = False) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
        pad_token_id=0,
        tie_word_embeddings=tie,
    )
    return LlamaForCausalLM(config)


def lm_args(tmp_path, **overrides):
    defaults = dict(pruning="margin", num_train_epochs=4, max_steps=-1, learning_rate=1e-2, logging_steps=2)
    return margin_args(tmp_path, **{**defaults, **overrides})


def tagged(batch: dict[str, torch.Tensor], weights: torch.Tensor) -> dict[str, torch.Tensor]:
    return {**batch, INDEX_KEY: torch.arange(len(weights)), WEIGHT_KEY: weights}


def batch_of(data: LMData, rows: range) -> dict[str, torch.Tensor]:
    samples = [data[i] for i in rows]
    return {key: torch.stack([s[key] for s in samples]) for key in samples[0]}


def reference_token_losses(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token next-token cross-entropy `[B, L - 1]` and the mask of the target tokens, by hand."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets = batch["labels"][:, 1:]
    zero = logits.new_zeros(())
    losses = torch.stack(
        [
            torch.stack([F.cross_entropy(logits[b, t], targets[b, t]) if targets[b, t] != -100 else zero
                         for t in range(targets.shape[1])])
            for b in range(targets.shape[0])
        ]
    )  # fmt: skip
    return losses, targets != -100


def test_the_weighted_token_loss_is_normalised_by_the_trainers_token_count(tmp_path):
    data = LMData()
    model = tiny_llama()
    model.eval()  # no dropout in a Llama; eval keeps both forwards identical anyway
    trainer = MarginTrainer(model=model, args=lm_args(tmp_path), train_dataset=data)
    trainer.get_train_dataloader()  # builds the cache
    batch = batch_of(data, range(4))
    weights = torch.tensor([1.0, 3.0, 0.5, 2.0])
    model.train()
    num_items = torch.tensor(37)  # the accumulated batch's target tokens, as the Trainer counts them
    ours = trainer.compute_loss(model, tagged(batch, weights), num_items_in_batch=num_items)
    losses, valid = reference_token_losses(model, batch)
    expected = (losses * weights[:, None]).sum() / 37
    torch.testing.assert_close(ours, expected)
    # with unit weights and no count: the model's own mean token loss
    plain = trainer.compute_loss(model, tagged(batch, torch.ones(4)))
    torch.testing.assert_close(plain, model(**batch).loss)
    # each sequence's score: its mean signed token margin against the lm_head rows
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    head = model.lm_head.weight
    scores = trainer.strategy.keeper.cache.margins[:4]
    for b in range(4):
        margins = []
        for t in range(valid.shape[1]):
            y = int(batch["labels"][b, t + 1])
            if y == -100:
                continue
            row = logits[b, t].detach()
            other = max((c for c in range(VOCAB) if c != y), key=lambda c, row=row: float(row[c]))
            margins.append(float((row[y] - row[other]) / (head[y] - head[other]).norm()))
        assert scores[b].item() == pytest.approx(sum(margins) / len(margins), rel=1e-4)


@pytest.mark.parametrize("criterion", ["loss", "mms"])
def test_the_other_token_scores_are_means_over_target_tokens(tmp_path, criterion):
    data = LMData()
    model = tiny_llama()
    trainer = MarginTrainer(model=model, args=lm_args(tmp_path, pruning=criterion), train_dataset=data)
    trainer.get_train_dataloader()
    batch = batch_of(data, range(4))
    model.train()
    trainer.compute_loss(model, tagged(batch, torch.ones(4)))
    losses, valid = reference_token_losses(model, batch)
    if criterion == "loss":
        expected = (losses * valid).sum(1) / valid.sum(1)
    else:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        top = logits.topk(2, dim=-1)
        head = model.lm_head.weight
        mms = (top.values[..., 0] - top.values[..., 1]) / (head[top.indices[..., 0]] - head[top.indices[..., 1]]).norm(
            dim=-1
        )
        expected = (mms * valid).sum(1) / valid.sum(1)
    torch.testing.assert_close(trainer.strategy.keeper.cache.margins[:4], expected.detach(), rtol=1e-4, atol=1e-5)


def test_gradient_accumulation_gives_the_large_batch_for_a_token_level_loss(tmp_path):
    runs = []
    for batch, accumulation in ((8, 1), (4, 2)):
        args = lm_args(tmp_path, per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
                       output_dir=str(tmp_path / f"b{batch}"))  # fmt: skip
        trainer = MarginTrainer(model=tiny_llama(), args=args, train_dataset=LMData())
        trainer.train()
        runs.append(trainer)
    assert runs[0].strategy.sampler.lengths == runs[1].strategy.sampler.lengths
    assert runs[0].state.global_step == runs[1].state.global_step
    for a, b in zip(runs[0].model.parameters(), runs[1].model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("tie", [False, True])
def test_pruning_a_causal_lm_shortens_the_passes_and_keeps_the_hard_sequences(tmp_path, tie):
    data = LMData()
    trainer = MarginTrainer(model=tiny_llama(tie=tie), args=lm_args(tmp_path), train_dataset=data)
    trainer.train()
    lengths = trainer.strategy.sampler.lengths
    assert lengths[0] == lengths[3] == 48 and lengths[1] < 48
    assert trainer.head_tap.layer is trainer.model.lm_head
    assert trainer.strategy.keeper.cache.known_share() == 1.0
    assert trainer.state.global_step == trainer.state.max_steps == sum(math.ceil(n / 8) for n in lengths.values())


class BigTensors(TorchDispatchMode):
    """Counts the new tensors as large as a batch's logits that ops allocate (views of their inputs do not count)."""

    def __init__(self, numel: int):
        super().__init__()
        self.numel, self.count = numel, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = [a for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        storages = {a.untyped_storage().data_ptr() for a in inputs}
        outs = out if isinstance(out, (tuple, list)) else (out,)
        self.count += sum(
            1
            for o in outs
            if isinstance(o, torch.Tensor)
            and o.numel() >= self.numel
            and o.untyped_storage().data_ptr() not in storages
        )
        return out


def test_a_pruned_step_makes_no_more_vocabulary_sized_tensors_than_the_stock_step(tmp_path):
    data = LMData(n=16)
    batch = batch_of(data, range(8))
    counts = {}
    for name in ("stock", "margin", "loss", "mms"):
        model = tiny_llama()
        model.train()
        if name == "stock":
            trainer = Trainer(model=model, args=margin_args(tmp_path, cls=TrainingArguments), train_dataset=data)
            inputs = batch
        else:
            trainer = MarginTrainer(model=model, args=lm_args(tmp_path, pruning=name), train_dataset=data)
            trainer.get_train_dataloader()
            inputs = tagged(batch, torch.ones(8))
        num_items = (batch["labels"][:, 1:] != -100).sum()
        with BigTensors(8 * 16 * VOCAB) as big:
            loss = trainer.compute_loss(model, inputs, num_items_in_batch=num_items)
            loss.backward()
        counts[name] = big.count
    assert all(counts[name] <= counts["stock"] for name in ("margin", "loss", "mms")), counts


class Packed(LMData):
    def __getitem__(self, i):
        item = super().__getitem__(i)
        item["position_ids"] = torch.cat([torch.arange(8), torch.arange(8)])  # two sequences in one row
        return item


def test_what_a_causal_lm_cannot_do_is_refused_naming_it(tmp_path):
    data = LMData()
    for overrides, match in (
        (dict(pruning="none", selection="mms", selection_oversample=2, max_steps=2), "selection='mms': .*causal"),
        (dict(pruning="none", selection="mms_cached", max_steps=2), "selection='mms_cached': .*causal"),
        (dict(pruning="none", mmr_alpha=1e-3, max_steps=2), "mmr_alpha: .*causal language model"),
        (dict(pruning="entropy"), "pruning='entropy': scoring a causal LM's tokens"),
    ):
        with pytest.raises(ValueError, match=match):
            MarginTrainer(model=tiny_llama(), args=lm_args(tmp_path, **overrides), train_dataset=data)
    trainer = MarginTrainer(model=tiny_llama(), args=lm_args(tmp_path), train_dataset=Packed())
    with pytest.raises(ValueError, match="pack several sequences"):
        trainer.train()


def test_pruning_a_lora_adapted_causal_lm_reads_the_frozen_head(tmp_path):
    import peft

    model = peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    trainer = MarginTrainer(model=model, args=lm_args(tmp_path), train_dataset=LMData())
    assert trainer.head_tap.layer is model.get_base_model().lm_head  # frozen, outside the adapter
    before = model.get_base_model().lm_head.weight.detach().clone()
    trainer.train()
    assert trainer.strategy.sampler.lengths[1] < 48 and trainer.strategy.keeper.cache.known_share() == 1.0
    assert torch.equal(model.get_base_model().lm_head.weight, before)  # the head stayed frozen
    assert any(p.requires_grad and "lora" in n for n, p in model.named_parameters())


def test_pruning_a_causal_lm_in_bf16_autocast(tmp_path):
    trainer = MarginTrainer(model=tiny_llama(), args=lm_args(tmp_path, bf16=True), train_dataset=LMData())
    trainer.train()
    assert trainer.strategy.sampler.lengths[1] < 48
    assert not trainer.strategy.keeper.cache.margins.isnan().any()
