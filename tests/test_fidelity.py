"""Drop-in fidelity: models, hooks and set-ups nobody here wrote, as a new user brings them."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from transformers import (
    BertConfig,
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForTokenClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    Trainer,
    TrainingArguments,
)

from hf_margin import MarginTrainer, find_classifier, minimal_margin_scores, multi_margin_penalty
from hf_margin.heads import effective_weight
from tests.conftest import ForwardRecorder, TinyTextDataset, check_selected, losses, margin_args, tiny_bert

BERT = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)


class TokenData(torch.utils.data.Dataset):
    """Per-token labels, span starts/ends and pre-training targets on random sequences."""

    def __init__(self, kind: str, n: int = 64, seq_len: int = 10):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(5, 100, (n, seq_len), generator=g)
        self.kind = kind

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):
        ids = self.ids[i]
        item = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if self.kind == "token":
            item["labels"] = ids % 3
        elif self.kind == "qa":
            item["start_positions"], item["end_positions"] = ids[0] % 5, ids[0] % 5 + 2
        else:
            item["labels"], item["next_sentence_label"] = ids.clone(), ids[0] % 2
        return item


MODELS = {
    "token": lambda: BertForTokenClassification(BertConfig(**BERT, num_labels=3)),
    "qa": lambda: BertForQuestionAnswering(BertConfig(**BERT)),
    "pretraining": lambda: BertForPreTraining(BertConfig(**BERT)),
}


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_defaults_train_any_model_exactly_like_trainer(tmp_path, kind):
    """With every feature off nothing of ours runs: no hooks, no extra log keys, the same losses and weights."""
    runs = []
    for cls, trainer_cls in ((TrainingArguments, Trainer), (None, MarginTrainer)):
        torch.manual_seed(0)
        model = MODELS[kind]()
        args = margin_args(tmp_path, **({"cls": cls} if cls else {}), output_dir=str(tmp_path / trainer_cls.__name__))
        trainer = trainer_cls(model=model, args=args, train_dataset=TokenData(kind))
        trainer.train()
        assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
        runs.append(trainer)
    stock, ours = runs
    strip = [{k: v for k, v in h.items() if not k.startswith("train_")} for h in stock.state.log_history]
    assert [{k: v for k, v in h.items() if not k.startswith("train_")} for h in ours.state.log_history] == strip
    assert set(ours.state.log_history[0]) == set(stock.state.log_history[0])
    for a, b in zip(ours.model.parameters(), stock.model.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["token", "qa"])
@pytest.mark.parametrize("overrides", [dict(selection="mms"), dict(mmr_alpha=1e-3), dict(selection="entropy")])
def test_margins_on_a_per_token_model_are_refused_at_set_up(tmp_path, kind, overrides):
    field = f"selection={overrides['selection']!r}" if "selection" in overrides else "mmr_alpha"
    with pytest.raises(ValueError, match=re.escape(f"{field}: margins need one prediction per sample")):
        MarginTrainer(model=MODELS[kind](), args=margin_args(tmp_path, **overrides), train_dataset=TokenData(kind))


def test_classifier_name_of_the_wrong_width_is_refused_at_set_up(tmp_path, text_data):
    args = margin_args(tmp_path, selection="mms", classifier_name="bert.pooler.dense")
    with pytest.raises(ValueError, match="classifier_name: .*32 outputs but the model has num_labels=3"):
        MarginTrainer(model=tiny_bert(num_labels=3), args=args, train_dataset=TinyTextDataset(num_labels=3))


# ---- gradient accumulation: exact for batch-mean classifiers and for models that honour num_items_in_batch ----


class PaddedLMData(torch.utils.data.Dataset):
    """Causal-LM samples of uneven length (right-padded, padding ignored with -100): token counts differ per batch."""

    def __init__(self, n: int = 16, seq_len: int = 12):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(5, 100, (n, seq_len), generator=g)
        self.lengths = torch.randint(3, seq_len + 1, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):
        mask = (torch.arange(self.ids.shape[1]) < self.lengths[i]).long()
        return {"input_ids": self.ids[i], "attention_mask": mask, "labels": self.ids[i].where(mask.bool(), -100)}


def _lm(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=100, n_positions=16, n_embd=32, n_layer=2, n_head=2, resid_pdrop=0.0)
    config.embd_pdrop = config.attn_pdrop = 0.0
    return GPT2LMHeadModel(config)


def test_gradient_accumulation_stays_stock_for_a_token_level_loss(tmp_path):
    params = {}
    for name, batch, accumulation, trainer_cls in (
        ("big", 8, 1, MarginTrainer),
        ("acc", 4, 2, MarginTrainer),
        ("stock", 4, 2, Trainer),
    ):
        args = margin_args(
            tmp_path,
            cls=TrainingArguments if trainer_cls is Trainer else margin_args.__defaults__[0],
            output_dir=str(tmp_path / name),
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=accumulation,
            max_steps=2,
            optim="sgd",
            learning_rate=0.5,
        )
        args.train_sampling_strategy = "sequential"
        trainer = trainer_cls(model=_lm(), args=args, train_dataset=PaddedLMData())
        trainer.train()
        params[name] = [p.detach().clone() for p in trainer.model.parameters()]
    for a, b, c in zip(params["acc"], params["big"], params["stock"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(a, c)


# ---- model_init and hyperparameter search: the head of the model that trains ----


def test_model_init_selects_and_regularises_with_the_trained_models_head(tmp_path):
    recorders = []

    def model_init():
        model = tiny_bert(num_labels=3, dropout=0.0)
        recorders.append(ForwardRecorder(model, "input_ids", model.classifier))
        return model

    data = TinyTextDataset(num_labels=3)
    args = margin_args(tmp_path, selection="mms", selection_oversample=4, max_steps=3, mmr_alpha=1e-2)
    trainer = MarginTrainer(model_init=model_init, args=args, train_dataset=data)
    trainer.train()
    assert trainer.head_tap.layer is trainer.model.classifier
    check_selected(recorders[-1], "mms", keep=8)  # with the weight of the model being trained
    assert all(h["mmr_penalty"] > 0 for h in trainer.state.log_history if "loss" in h)
    first = losses(trainer)
    trainer.train()  # a second run draws and selects what the first did
    assert losses(trainer) == first


def test_a_second_train_reseeds_uniform_selection_from_args_seed(tmp_path):
    data = TinyTextDataset()
    args = margin_args(tmp_path, selection="uniform", selection_oversample=3, max_steps=3)
    trainer = MarginTrainer(model_init=lambda: tiny_bert(dropout=0.0), args=args, train_dataset=data)
    trainer.train()
    first = losses(trainer)
    trainer.train()
    assert losses(trainer) == first
    trainer.args.seed = 8
    trainer.train()
    assert losses(trainer) != first


def test_hyperparameter_search_with_selection(tmp_path):
    import optuna  # noqa: F401  (the search backend; in the dev extra, so missing fails, never skips)

    args = margin_args(tmp_path, selection="mms", selection_oversample=2, max_steps=2, eval_strategy="no")
    data = TinyTextDataset(n=64, num_labels=3)
    trainer = MarginTrainer(
        model_init=lambda trial: tiny_bert(num_labels=3), args=args, train_dataset=data, eval_dataset=data
    )
    best = trainer.hyperparameter_search(
        hp_space=lambda trial: {"learning_rate": trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True)},
        compute_objective=lambda metrics: metrics["eval_loss"],
        n_trials=2,
        direction="minimize",
        backend="optuna",
    )
    assert best.run_id is not None and best.objective == best.objective  # two trials ran to a finite eval loss


# ---- multi-label, NaN ----


class MultiLabelData(TinyTextDataset):
    def __getitem__(self, i):
        item = super().__getitem__(i)
        item["labels"] = nn.functional.one_hot(item["labels"], 3).float()
        return item


@pytest.mark.parametrize(
    "overrides", [dict(selection="mms"), dict(selection="entropy"), dict(selection="loss"), dict(mmr_alpha=1e-3)]
)
def test_multi_label_targets_are_refused_before_training(tmp_path, overrides):
    field = f"selection={overrides['selection']!r}" if "selection" in overrides else "mmr_alpha"
    model = tiny_bert(num_labels=3)  # problem_type left for transformers to infer from the float labels
    with pytest.raises(ValueError, match=re.escape(f"{field}: margins need single-label")):
        MarginTrainer(model=model, args=margin_args(tmp_path, **overrides), train_dataset=MultiLabelData(num_labels=3))


@pytest.mark.parametrize("overrides", [dict(selection=c) for c in ("mms", "entropy", "loss", "mms_cached")])
def test_nan_logits_are_a_clear_error_for_every_criterion(tmp_path, text_data, overrides):
    model = tiny_bert(num_labels=3)
    with torch.no_grad():
        model.classifier.bias[1] = float("nan")
    pool = {} if overrides["selection"] == "mms_cached" else {"selection_oversample": 2}
    args = margin_args(tmp_path, **pool, **overrides)
    trainer = MarginTrainer(model=model, args=args, train_dataset=TinyTextDataset(num_labels=3))
    setting = re.escape(f"selection={overrides['selection']!r}: the model returned non-finite logits")
    with pytest.raises(FloatingPointError, match=setting):  # at the first log, without waiting in the step
        trainer.train()


# ---- PEFT: LoRA on the head itself, and the head as a saved module ----


def _lora(task_type: str | None):
    import peft  # in the dev extra: missing fails, never skips

    model = tiny_bert(num_labels=3, dropout=0.0)
    if task_type:
        config = peft.LoraConfig(task_type=task_type, r=4, target_modules=["query", "value"])
    else:
        config = peft.LoraConfig(r=4, target_modules=["query", "value", "classifier"], init_lora_weights=False)
    return peft.get_peft_model(model, config)


@pytest.mark.parametrize("task_type", [None, "SEQ_CLS"])
def test_peft_heads_resolve_to_the_effective_classifier(tmp_path, task_type):
    model = _lora(task_type)
    name, head = find_classifier(model)
    assert "lora_" not in name and "original_module" not in name
    ids = torch.randint(5, 100, (6, 8))
    features = []
    head.register_forward_pre_hook(lambda m, a: features.append(a[0]))
    logits = model(input_ids=ids).logits
    weight = effective_weight(head)
    assert weight.shape == (3, 32)
    bias = head.base_layer.bias if hasattr(head, "base_layer") else head.bias
    torch.testing.assert_close(features[0] @ weight.T + bias, logits)  # the weight that maps features to logits
    data = TinyTextDataset(num_labels=3)
    args = margin_args(tmp_path, selection="mms", selection_oversample=2, max_steps=2, mmr_alpha=1e-2)
    trainer = MarginTrainer(model=model, args=args, train_dataset=data)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert all(0 < h["mmr_penalty"] < 1e6 and 0 < h["mms_pool_mean"] < 1e6 for h in logs)


# ---- sequence classifiers of decoder language models: margins at the pooled position ----


class PaddedClassData(torch.utils.data.Dataset):
    def __init__(self, n: int = 48, seq_len: int = 10, pad: int = 0):
        g = torch.Generator().manual_seed(1)
        self.ids = torch.randint(5, 100, (n, seq_len), generator=g)
        self.lengths = torch.randint(3, seq_len + 1, (n,), generator=g)
        self.pad = pad

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):
        mask = (torch.arange(self.ids.shape[1]) < self.lengths[i]).long()
        return {
            "input_ids": self.ids[i].where(mask.bool(), self.pad),
            "attention_mask": mask,
            "labels": self.ids[i, 0] % 3,
        }


def _decoder_classifier(seed: int = 0) -> GPT2ForSequenceClassification:
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=100, n_positions=16, n_embd=32, n_layer=2, n_head=2, num_labels=3, pad_token_id=0)
    config.resid_pdrop = config.embd_pdrop = config.attn_pdrop = 0.0
    return GPT2ForSequenceClassification(config)


def test_decoder_sequence_classifier_margins_and_mmr_at_the_pooled_token(tmp_path):
    data = PaddedClassData()
    reference = _decoder_classifier()
    batch = {k: torch.stack([data[i][k] for i in range(8)]) for k in ("input_ids", "attention_mask", "labels")}
    out = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
    positions = batch["attention_mask"].sum(1) - 1
    features = out.hidden_states[-1][torch.arange(8), positions]
    expected = multi_margin_penalty(features, out.logits, batch["labels"], reference.score.weight)

    args = margin_args(tmp_path, mmr_alpha=1e-2, max_steps=1, optim="sgd")
    args.train_sampling_strategy = "sequential"
    trainer = MarginTrainer(model=_decoder_classifier(), args=args, train_dataset=data)
    trainer.train()
    log = trainer.state.log_history[0]
    assert log["mmr_penalty"] == pytest.approx(expected.item(), rel=1e-5)
    assert log["mms_train_mean"] == pytest.approx(
        minimal_margin_scores(out.logits, reference.score.weight).mean().item(), rel=1e-5
    )

    model = _decoder_classifier()
    recorder = ForwardRecorder(model, "input_ids", model.score)
    args = margin_args(tmp_path, selection="mms", selection_oversample=3, max_steps=2, selection_trim_padding=False)
    MarginTrainer(model=model, args=args, train_dataset=data).train()
    check_selected(recorder, "mms", keep=8)
