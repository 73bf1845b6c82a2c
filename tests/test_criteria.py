"""The criteria table: one entry per criterion, read by pool selection, pruning, ranking and the arguments.

A criterion added at run time is usable everywhere its needs allow, with no other edit; every built-in entry
agrees with a naive reference of its score and hard end.
"""

from __future__ import annotations

import argparse
import math

import pytest
import torch
from transformers import HfArgumentParser

from hf_margin import (
    PRUNING_CRITERIA,
    RANKING_CRITERIA,
    SELECTION_CRITERIA,
    Criterion,
    MarginTrainer,
    MarginTrainingArguments,
    get_criterion,
    register_criterion,
    score_dataset,
    unregister_criterion,
)
from hf_margin.criteria import criterion_names
from tests.conftest import (
    ForwardRecorder,
    TinyTextDataset,
    margin_args,
    naive_entropy,
    naive_loss,
    naive_mms,
    tiny_bert,
)


def logit_gap(logits, labels=None, weight=None):
    """The gap between the two largest logits, not divided by the distance of the head's rows."""
    top = logits.detach().float().topk(2, dim=1).values
    return top[:, 0] - top[:, 1]


@pytest.fixture
def gap_criterion():
    criterion = register_criterion(Criterion("logit_gap", logit_gap, "smallest", description="top-2 logit gap"))
    yield criterion
    unregister_criterion("logit_gap")


def test_a_criterion_added_at_run_time_is_a_choice_of_every_mechanism_that_can_use_it(gap_criterion):
    assert "logit_gap" in SELECTION_CRITERIA and "logit_gap" in PRUNING_CRITERIA and "logit_gap" in RANKING_CRITERIA
    assert "logit_gap" not in criterion_names("learned")  # it cannot say when a sample is learned
    parser = HfArgumentParser(MarginTrainingArguments)
    (args,) = parser.parse_args_into_dataclasses(["--output_dir", "x", "--selection", "logit_gap", "--use_cpu", "1"])
    assert args.selection == "logit_gap"
    with pytest.raises(ValueError, match="pruning_rule='learned' needs a criterion"):
        MarginTrainingArguments("x", pruning="logit_gap", pruning_rule="learned", use_cpu=True)


def test_a_criterion_added_at_run_time_selects_prunes_and_ranks(tmp_path, gap_criterion):
    data = TinyTextDataset(n=64, num_labels=3)
    model = tiny_bert(num_labels=3, dropout=0.0)
    recorder = ForwardRecorder(model, "input_ids", model.classifier)
    args = margin_args(tmp_path, selection="logit_gap", selection_oversample=2, max_steps=3)
    MarginTrainer(model=model, args=args, train_dataset=data).train()
    for scoring, training in recorder.steps():  # each batch: the 8 smallest gaps of its pool of 16
        gaps = logit_gap(scoring["logits"])
        assert torch.equal(training["inputs"], scoring["inputs"][gaps.argsort()[:8].sort().values])

    model = tiny_bert(num_labels=3, dropout=0.0)
    recorder = ForwardRecorder(model, "input_ids", model.classifier)
    args = margin_args(tmp_path, pruning="logit_gap", num_train_epochs=3, max_steps=-1, learning_rate=1e-9)
    trainer = MarginTrainer(model=model, args=args, train_dataset=data)
    trainer.train()
    rows = {tuple(r): i for i, r in enumerate(data.input_ids.tolist())}
    gaps = torch.empty(64)
    for call in recorder.calls[:8]:
        gaps[[rows[tuple(r)] for r in call["inputs"].tolist()]] = logit_gap(call["logits"])
    pass1 = {rows[tuple(r)] for c in recorder.calls[8:14] for r in c["inputs"].tolist()}
    assert set(gaps.argsort()[: round(0.3 * 64)].tolist()) <= pass1 < set(range(64))

    ranked = score_dataset(trainer, data, criterion="logit_gap")
    assert torch.equal(ranked.indices, torch.sort(ranked.scores, stable=True).indices)
    logits = trainer.predict(data).predictions
    torch.testing.assert_close(ranked.scores, logit_gap(torch.as_tensor(logits)))


def test_names_are_checked_against_the_table():
    with pytest.raises(ValueError, match="already registered"):
        register_criterion(Criterion("mms", logit_gap, "smallest"))
    with pytest.raises(ValueError, match="hardest"):
        Criterion("x", logit_gap, "middle")
    with pytest.raises(ValueError, match="no score"):
        Criterion("x", None, "smallest", needs_labels=True)
    with pytest.raises(ValueError, match="learned_above or learned_below"):
        Criterion("x", logit_gap, "smallest", learned_above=0.0, learned_below=1.0)


@pytest.mark.parametrize("name", ["mms", "margin", "loss", "entropy", "least_confidence", "breaking_ties"])
def test_every_built_in_criterion_scores_as_a_naive_loop_and_knows_its_hard_end(name):
    generator = torch.Generator().manual_seed(0)
    logits, weight = torch.randn(12, 4, generator=generator), torch.randn(4, 6, generator=generator)
    labels = torch.randint(0, 4, (12,), generator=generator)
    logits[torch.arange(0, 12, 2), labels[::2]] += 5.0  # half of the rows confidently right
    criterion = get_criterion(name)
    scores = criterion.scores(logits, labels=labels, weight=weight)
    p = logits.softmax(1)
    top = p.topk(2, dim=1).values
    naive, hard = {
        "mms": (naive_mms(logits, weight), "smallest"),
        "margin": (
            [
                float((row[y] - max(v for c, v in enumerate(row) if c != y)) / (weight[y] - weight[row_other]).norm())
                for row, y in zip(logits, labels.tolist())
                for row_other in [max((c for c in range(4) if c != y), key=lambda c, row=row: float(row[c]))]
            ],
            "smallest",
        ),
        "loss": (naive_loss(logits, labels), "largest"),
        "entropy": (naive_entropy(logits), "largest"),
        "least_confidence": ((1 - p.max(1).values).tolist(), "largest"),
        "breaking_ties": ((top[:, 0] - top[:, 1]).tolist(), "smallest"),
    }[name]
    torch.testing.assert_close(scores, torch.tensor(naive))
    assert criterion.hardest == hard and criterion.label_free == (name not in ("margin", "loss"))
    assert criterion.needs_head == (name in ("mms", "margin"))
    if criterion.says_learned:  # margin: p_y at least 9 times the runner-up's; loss: p_y above 0.9 (loss below 0.1)
        p_true = p.gather(1, labels[:, None]).squeeze(1)
        runner_up = p.scatter(1, labels[:, None], 0.0).max(1).values
        expected = p_true > 9 * runner_up if name == "margin" else p_true > math.exp(-0.1)
        values = criterion.learned_values(scores, logits, labels=labels, weight=weight)
        assert torch.equal(criterion.is_learned(values), expected)
        assert expected.any() and not expected.all()


def test_every_help_text_renders_and_help_exits_cleanly(capsys):
    parser = HfArgumentParser(MarginTrainingArguments)
    formatter = argparse.HelpFormatter("prog")
    for action in parser._actions:  # argparse %-formats each help text: a bare percent sign would raise
        if action.help:
            formatter._expand_help(action)
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args_into_dataclasses(["--help"])
    assert exit_info.value.code == 0
    shown = capsys.readouterr().out
    for name in ("--selection", "--pruning", "--pruning_rule", "--pruning_threshold", "--mmr_alpha"):
        assert name in shown
